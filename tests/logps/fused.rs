//! Fused LM-head log-probs: the tiled op equals the materialized-logits oracle (values and all
//! gradients) on random shapes, chunkings and options, on every device under test; and a loss
//! computed from hidden states through the fused op equals the same loss through materialized
//! logits and the token gather (the two paths share one loss core and cannot drift).

use crate::common;

use burn::tensor::{Int, Tensor};
use burn_rlhf::Normalizer;
use burn_rlhf::logps::{FusedLogpsConfig, LogpsImplementation};
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use common::{Rng, TestDevice, assert_close, int_tensor, tensor, to_vec};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("BURN_RLHF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Case {
    n: usize,
    h: usize,
    v: usize,
    hidden: Vec<f64>,
    weight: Vec<f64>,
    bias: Option<Vec<f64>>,
    targets: Vec<i64>,
    g_lp: Vec<f64>,
    g_h: Vec<f64>,
}

fn make(seed: u64, n: usize, h: usize, v: usize, with_bias: bool, ignore_frac: f64) -> Case {
    let mut r = Rng::new(seed);
    Case {
        n,
        h,
        v,
        hidden: (0..n * h).map(|_| r.normal()).collect(),
        weight: (0..v * h).map(|_| r.normal()).collect(),
        bias: with_bias.then(|| (0..v).map(|_| r.normal()).collect()),
        targets: (0..n)
            .map(|_| {
                if r.uniform() < ignore_frac {
                    -100
                } else {
                    r.below(v) as i64
                }
            })
            .collect(),
        g_lp: (0..n).map(|_| r.range(-1.0, 1.0)).collect(),
        g_h: (0..n).map(|_| r.range(-1.0, 1.0)).collect(),
    }
}

/// (logps, entropy, d hidden, d weight, d bias)
type Run = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Option<Vec<f64>>);

fn run(c: &Case, cfg: &FusedLogpsConfig, dev: &TestDevice) -> Run {
    let device = dev.autodiff();
    let hidden = tensor::<2>(c.hidden.clone(), [c.n, c.h], dev, &device).require_grad();
    let weight = tensor::<2>(c.weight.clone(), [c.v, c.h], dev, &device).require_grad();
    let bias = c
        .bias
        .clone()
        .map(|b| tensor::<1>(b, [c.v], dev, &device).require_grad());
    let targets = int_tensor::<1>(c.targets.clone(), [c.n], &device);
    let out = cfg
        .init()
        .forward(hidden.clone(), weight.clone(), bias.clone(), targets);
    let entropy = out.entropy.clone().expect("with_stats");
    let objective = (out.logps.clone() * tensor::<1>(c.g_lp.clone(), [c.n], dev, &device)).sum()
        + (entropy.clone() * tensor::<1>(c.g_h.clone(), [c.n], dev, &device)).sum();
    let grads = objective.backward();
    (
        to_vec(out.logps),
        to_vec(entropy),
        to_vec(hidden.grad(&grads).unwrap()),
        to_vec(weight.grad(&grads).unwrap()),
        bias.map(|b| to_vec(b.grad(&grads).unwrap())),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn fused_equals_materialized_oracle(
        seed in any::<u64>(),
        n in 1usize..14,
        h in 1usize..10,
        v in 1usize..45,
        vocab_chunk in 1usize..50,
        token_chunk in 1usize..16,
        temperature in prop::sample::select(vec![0.5, 1.0, 1.7]),
        softcap in prop::sample::select(vec![None, Some(3.0), Some(30.0)]),
        logit_scale in prop::sample::select(vec![0.5, 1.0, 2.0]),
        with_bias in any::<bool>(),
        ignore_frac in prop::sample::select(vec![0.0, 0.3, 1.0]),
    ) {
        let c = make(seed, n, h, v, with_bias, ignore_frac);
        let cfg = |implementation| FusedLogpsConfig::new()
            .with_temperature(temperature)
            .with_final_logit_softcapping(softcap)
            .with_logit_scale(logit_scale)
            .with_vocab_chunk_size(Some(vocab_chunk))
            .with_token_chunk_size(Some(token_chunk))
            .with_with_stats(true)
            .with_implementation(implementation);
        for dev in common::devices() {
            let want = run(&c, &cfg(LogpsImplementation::Reference), &dev);
            let got = run(&c, &cfg(LogpsImplementation::Auto), &dev);
            let (rtol, atol) = if dev.has_f64() { (1e-9, 1e-10) } else { (1e-4, 1e-4) };
            let name = dev.name;
            assert_close(&format!("{name} logps"), &got.0, &want.0, rtol, atol);
            assert_close(&format!("{name} entropy"), &got.1, &want.1, rtol, atol);
            assert_close(&format!("{name} d hidden"), &got.2, &want.2, rtol, atol);
            assert_close(&format!("{name} d weight"), &got.3, &want.3, rtol, atol);
            if let (Some(g), Some(w)) = (&got.4, &want.4) {
                assert_close(&format!("{name} d bias"), g, w, rtol, atol);
            }
            if ignore_frac == 1.0 {
                prop_assert!(got.0.iter().chain(&got.2).chain(&got.3).all(|x| *x == 0.0));
            }
        }
    }
}

/// The same per-token loss from hidden states: fused op vs materialized logits + token gather.
#[test]
fn fused_and_unfused_paths_give_the_same_loss_and_gradients() {
    let (b, t, h, v) = (3, 6, 5, 23);
    let mut r = Rng::new(77);
    let hidden_v: Vec<f64> = (0..b * t * h).map(|_| r.normal()).collect();
    let weight_v: Vec<f64> = (0..v * h).map(|_| r.normal() * 0.7).collect();
    let labels_v: Vec<i64> = (0..b * t)
        .map(|i| if i % 4 == 0 { -100 } else { r.below(v) as i64 })
        .collect();
    for dev in common::devices() {
        let nll = |g: burn_rlhf::logps::GatheredLogps| {
            Normalizer::TokenMean.reduce_tokens(g.logps.neg(), g.mask)
        };
        let results = both_paths(
            &dev,
            (&hidden_v, &weight_v, &labels_v),
            [b, t, h, v],
            7,
            &nll,
        );
        let rtol = dev.rtol(1e-10);
        assert_close(
            &format!("{} loss", dev.name),
            &results[0].0,
            &results[1].0,
            rtol,
            1e-12,
        );
        assert_close(
            &format!("{} d hidden", dev.name),
            &results[0].1,
            &results[1].1,
            rtol,
            1e-10,
        );
        assert_close(
            &format!("{} d weight", dev.name),
            &results[0].2,
            &results[1].2,
            rtol,
            1e-10,
        );
    }
}

#[test]
fn fused_rejects_bad_shapes_and_options() {
    use burn_rlhf::Error;
    let device = burn::tensor::Device::flex();
    let op = FusedLogpsConfig::new().init();
    let hidden = Tensor::<2>::zeros([4, 3], &device);
    let err = op
        .try_forward(
            hidden.clone(),
            Tensor::<2>::zeros([5, 2], &device),
            None,
            Tensor::<1, Int>::zeros([4], &device),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "weight", .. }), "{err}");
    assert!(err.to_string().contains("[5, 2]"), "{err}");
    let err = op
        .try_forward(
            hidden.clone(),
            Tensor::<2>::zeros([5, 3], &device),
            Some(Tensor::<1>::zeros([4], &device)),
            Tensor::<1, Int>::zeros([4], &device),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "bias", .. }), "{err}");
    let err = op
        .try_forward(
            hidden.clone(),
            Tensor::<2>::zeros([5, 3], &device),
            None,
            Tensor::<1, Int>::zeros([3], &device),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "targets", .. }), "{err}");
    let err = op
        .try_forward(
            hidden,
            Tensor::<2>::zeros([5, 3], &device),
            None,
            int_tensor::<1>(vec![0, 9, 1, 2], [4], &device),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::LabelOutOfRange { value: 9, .. }),
        "{err}"
    );
    assert!(matches!(
        FusedLogpsConfig::new()
            .with_vocab_chunk_size(Some(0))
            .try_init(),
        Err(Error::Config {
            field: "vocab_chunk_size",
            ..
        })
    ));
    assert!(matches!(
        FusedLogpsConfig::new().with_temperature(0.0).try_init(),
        Err(Error::Config {
            field: "temperature",
            ..
        })
    ));
    assert!(matches!(
        FusedLogpsConfig::new()
            .with_final_logit_softcapping(Some(-1.0))
            .try_init(),
        Err(Error::Config { .. })
    ));
}

/// A DPO, a KTO and a GRPO batch computed from hidden states through the fused op give the same
/// loss and gradients (w.r.t. hidden states and LM-head weight) as through materialized logits
/// and the token gather: the losses consume one `GatheredLogps` type from either path.
#[test]
fn dpo_kto_grpo_from_fused_and_unfused_paths_agree() {
    use burn::tensor::Bool;
    use burn_rlhf::logps::GatheredLogps;
    use burn_rlhf::losses::{DpoLossConfig, KtoLossConfig, PreferenceBatch, UnpairedBatch};
    use burn_rlhf::rl::{GrpoLossConfig, GrpoLossInput, GrpoLossType};

    let (pairs, t, h, v) = (3, 7, 6, 29);
    let rows = 2 * pairs;
    let mut r = Rng::new(2024);
    let hidden_v: Vec<f64> = (0..rows * t * h).map(|_| r.normal()).collect();
    let weight_v: Vec<f64> = (0..v * h).map(|_| r.normal() * 0.6).collect();
    // prompt (2 tokens, ignored) + completion; a ragged tail of -100 per row.
    let labels_v: Vec<i64> = (0..rows * t)
        .map(|i| {
            let (row, col) = (i / t, i % t);
            if col < 2 || col >= t - (row % 3) {
                -100
            } else {
                r.below(v) as i64
            }
        })
        .collect();
    let reference_v: Vec<f64> = (0..rows).map(|_| r.range(-30.0, -10.0)).collect();
    let advantages_v: Vec<f64> = (0..rows).map(|_| r.range(-1.0, 1.0)).collect();
    for dev in common::devices() {
        let device = dev.autodiff();
        let split = |g: &GatheredLogps, s: usize| GatheredLogps {
            logps: g.logps.clone().narrow(0, s, pairs),
            mask: g.mask.clone().narrow(0, s, pairs),
        };
        let reference = tensor::<1>(reference_v.clone(), [rows], &dev, &device);
        let losses: Vec<(&str, LossOf)> = vec![
            (
                "dpo",
                Box::new(|g: GatheredLogps| {
                    let batch = PreferenceBatch::from_tokens(split(&g, 0), split(&g, pairs))
                        .with_ref_logps(
                            reference.clone().narrow(0, 0, pairs),
                            reference.clone().narrow(0, pairs, pairs),
                        );
                    DpoLossConfig::new().init().forward(&batch).loss
                }),
            ),
            (
                "kto",
                Box::new(|g: GatheredLogps| {
                    let desirable = Tensor::<1, Bool>::cat(
                        vec![
                            Tensor::<1, Bool>::full([pairs], true, &device),
                            Tensor::<1, Bool>::full([pairs], false, &device),
                        ],
                        0,
                    );
                    let batch = UnpairedBatch::new(g.sum(), reference.clone(), desirable)
                        .with_kl(tensor::<1>(vec![0.3], [1], &dev, &device));
                    KtoLossConfig::new().init().forward(&batch).loss
                }),
            ),
            (
                "grpo",
                Box::new(|g: GatheredLogps| {
                    let advantages = tensor::<1>(advantages_v.clone(), [rows], &dev, &device);
                    let input = GrpoLossInput::new(g.logps, g.mask, advantages);
                    GrpoLossConfig::new()
                        .with_loss_type(GrpoLossType::Grpo)
                        .init()
                        .forward(input)
                        .loss
                }),
            ),
        ];
        for (name, loss_of) in &losses {
            let results = both_paths(
                &dev,
                (&hidden_v, &weight_v, &labels_v),
                [rows, t, h, v],
                8,
                loss_of,
            );
            let rtol = dev.rtol(1e-9);
            let atol = if dev.has_f64() { 1e-11 } else { 1e-5 };
            let what = format!("{} {name}", dev.name);
            assert_close(
                &format!("{what} loss"),
                &results[0].0,
                &results[1].0,
                rtol,
                atol,
            );
            assert_close(
                &format!("{what} d hidden"),
                &results[0].1,
                &results[1].1,
                rtol,
                atol,
            );
            assert_close(
                &format!("{what} d weight"),
                &results[0].2,
                &results[1].2,
                rtol,
                atol,
            );
        }
    }
}

/// A loss as a function of the gathered log-probs (the shared loss core's input).
type LossOf<'a> = Box<dyn Fn(burn_rlhf::logps::GatheredLogps) -> Tensor<1> + 'a>;

/// (loss, d hidden, d weight) of `loss_of` applied to the log-probs of the same hidden states,
/// LM-head weight and labels, through the fused op (`[0]`, vocabulary chunk `vocab_chunk`) and
/// through materialized logits + the token gather (`[1]`).
fn both_paths(
    dev: &TestDevice,
    (hidden_v, weight_v, labels_v): (&[f64], &[f64], &[i64]),
    [b, t, h, v]: [usize; 4],
    vocab_chunk: usize,
    loss_of: &dyn Fn(burn_rlhf::logps::GatheredLogps) -> Tensor<1>,
) -> Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let device = dev.autodiff();
    [true, false]
        .into_iter()
        .map(|fused| {
            let hidden = tensor::<3>(hidden_v.to_vec(), [b, t, h], dev, &device).require_grad();
            let weight = tensor::<2>(weight_v.to_vec(), [v, h], dev, &device).require_grad();
            let labels: Tensor<2, Int> = int_tensor::<2>(labels_v.to_vec(), [b, t], &device);
            let gathered = if fused {
                FusedLogpsConfig::new()
                    .with_vocab_chunk_size(Some(vocab_chunk))
                    .init()
                    .forward_causal(hidden.clone(), weight.clone(), None, labels)
                    .0
            } else {
                let logits = hidden
                    .clone()
                    .matmul(weight.clone().transpose().unsqueeze_dim::<3>(0));
                TokenLogpsConfig::new(LabelAlignment::CausalShift)
                    .init()
                    .forward(logits, labels)
            };
            let loss = loss_of(gathered);
            let grads = loss.backward();
            (
                to_vec(loss),
                to_vec(hidden.grad(&grads).unwrap()),
                to_vec(weight.grad(&grads).unwrap()),
            )
        })
        .collect()
}
