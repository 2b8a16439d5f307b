//! Half precision: f16/bf16 logits, hidden states and weights give log-probs computed with f32
//! accumulation. Tolerances (documented in the README):
//! - against an f32 run on the *same* (half-rounded) values: 1e-5 relative (the only
//!   difference is f32 summation order);
//! - against the f32 run on the unrounded values: the rounding of the inputs dominates,
//!   |delta logp| <= 0.05 (f16) / 0.5 (bf16) for logits of magnitude ~5.
//!
//! Gradients come back in the input's dtype.

use crate::common;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use burn_rlhf::logps::FusedLogpsConfig;
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use common::{Rng, assert_close, int_tensor, to_vec};

fn f32_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), (device, DType::F32))
}

fn logits_and_labels(seed: u64, b: usize, t: usize, v: usize, scale: f64) -> (Vec<f32>, Vec<i64>) {
    let mut r = Rng::new(seed);
    let logits = (0..b * t * v)
        .map(|_| (r.normal() * scale) as f32)
        .collect();
    let labels = (0..b * t)
        .map(|i| if i % 5 == 0 { -100 } else { r.below(v) as i64 })
        .collect();
    (logits, labels)
}

#[test]
fn half_precision_token_logps_accumulate_in_f32() {
    let device = Device::flex().autodiff();
    let (b, t, v) = (2, 7, 301);
    let (values, labels_v) = logits_and_labels(1, b, t, v, 5.0);
    for (half, loose) in [(FloatDType::F16, 0.05), (FloatDType::BF16, 0.5)] {
        assert!(device.supports_dtype(half));
        let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
        let labels = || int_tensor::<2>(labels_v.clone(), [b, t], &device);
        let half_logits = f32_tensor::<3>(values.clone(), [b, t, v], &device)
            .cast(half)
            .require_grad();
        let out = op.forward(half_logits.clone(), labels());
        assert_eq!(out.logps.dtype(), DType::F32, "{half:?}: log-probs are f32");
        let grads = out.logps.clone().sum().backward();
        let grad_half = half_logits.grad(&grads).unwrap();
        assert_eq!(
            grad_half.dtype(),
            DType::from(half),
            "gradient in the input dtype"
        );

        // Same rounded values in f32: equal up to summation order.
        let rounded = half_logits
            .clone()
            .inner()
            .cast(FloatDType::F32)
            .autodiff()
            .require_grad();
        let out32 = op.forward(rounded.clone(), labels());
        let grads32 = out32.logps.clone().sum().backward();
        assert_close(
            &format!("{half:?} vs f32 on rounded values"),
            &to_vec(out.logps.clone()),
            &to_vec(out32.logps),
            1e-5,
            1e-5,
        );
        let g32 = rounded
            .grad(&grads32)
            .unwrap()
            .cast(half)
            .cast(FloatDType::F32);
        assert_close(
            &format!("{half:?} grad"),
            &to_vec(grad_half.cast(FloatDType::F32)),
            &to_vec(g32),
            1e-2,
            1e-3,
        );

        // Against the unrounded f32 run: within the input rounding.
        let exact = op.forward(
            f32_tensor::<3>(values.clone(), [b, t, v], &device),
            labels(),
        );
        assert_close(
            &format!("{half:?} vs unrounded f32"),
            &to_vec(out.logps),
            &to_vec(exact.logps),
            0.0,
            loose,
        );
    }
}

#[test]
fn half_precision_extreme_logits_stay_finite() {
    let device = Device::flex();
    let (b, t, v) = (1, 3, 50);
    for (half, magnitude) in [(FloatDType::F16, 60000.0), (FloatDType::BF16, 1e38)] {
        let mut r = Rng::new(9);
        let values: Vec<f32> = (0..b * t * v)
            .map(|_| (r.range(-1.0, 1.0) * magnitude) as f32)
            .collect();
        let logits = f32_tensor::<3>(values, [b, t, v], &device).cast(half);
        let labels = int_tensor::<2>(vec![3, 7, 11], [b, t], &device);
        let lp = to_vec(
            TokenLogpsConfig::new(LabelAlignment::Aligned)
                .init()
                .forward(logits, labels)
                .logps,
        );
        assert!(
            lp.iter().all(|x| x.is_finite() && *x <= 0.0),
            "{half:?}: {lp:?}"
        );
    }
}

#[test]
fn half_precision_fused_logps_accumulate_in_f32() {
    let device = Device::flex().autodiff();
    let (n, h, v) = (9, 16, 203);
    let mut r = Rng::new(4);
    let hidden_v: Vec<f32> = (0..n * h).map(|_| r.normal() as f32).collect();
    let weight_v: Vec<f32> = (0..v * h).map(|_| (r.normal() * 0.5) as f32).collect();
    let targets_v: Vec<i64> = (0..n)
        .map(|i| if i == 4 { -100 } else { r.below(v) as i64 })
        .collect();
    for half in [FloatDType::F16, FloatDType::BF16] {
        let op = FusedLogpsConfig::new()
            .with_vocab_chunk_size(Some(64))
            .with_with_stats(true)
            .init();
        let targets = || int_tensor::<1>(targets_v.clone(), [n], &device);
        let hh = f32_tensor::<2>(hidden_v.clone(), [n, h], &device)
            .cast(half)
            .require_grad();
        let ww = f32_tensor::<2>(weight_v.clone(), [v, h], &device)
            .cast(half)
            .require_grad();
        let out = op.forward(hh.clone(), ww.clone(), None, targets());
        assert_eq!(out.logps.dtype(), DType::F32);
        let grads = out.logps.clone().sum().backward();
        assert_eq!(hh.grad(&grads).unwrap().dtype(), DType::from(half));
        assert_eq!(ww.grad(&grads).unwrap().dtype(), DType::from(half));
        let h32 = hh.clone().inner().cast(FloatDType::F32);
        let w32 = ww.clone().inner().cast(FloatDType::F32);
        let out32 = op.forward(h32, w32, None, targets());
        assert_close(
            &format!("{half:?} fused vs f32 on rounded values"),
            &to_vec(out.logps),
            &to_vec(out32.logps),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{half:?} entropy"),
            &to_vec(out.entropy.unwrap()),
            &to_vec(out32.entropy.unwrap()),
            1e-5,
            1e-5,
        );
    }
}

/// Three losses (DPO sigmoid, KTO, GRPO) on log-probs gathered from f16/bf16 logits: computed
/// in f32 (the gathered log-probs are f32), equal to the f32 pipeline on the same rounded
/// logits up to summation order (1e-5), gradients returned in the logits' dtype.
#[test]
fn half_precision_logits_through_three_losses() {
    use burn::tensor::Bool;
    use burn_rlhf::logps::GatheredLogps;
    use burn_rlhf::losses::{DpoLossConfig, KtoLossConfig, PreferenceBatch, UnpairedBatch};
    use burn_rlhf::rl::{GrpoLossConfig, GrpoLossInput, GrpoLossType};

    let device = Device::flex().autodiff();
    let (pairs, t, v) = (2, 6, 97);
    let rows = 2 * pairs;
    let (values, labels_v) = logits_and_labels(11, rows, t, v, 4.0);
    let f32_vec = |x: Vec<f64>| {
        Tensor::<1>::from_data(
            TensorData::new(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), [x.len()]),
            (&device, DType::F32),
        )
    };
    let split = |g: &GatheredLogps, s: usize| GatheredLogps {
        logps: g.logps.clone().narrow(0, s, pairs),
        mask: g.mask.clone().narrow(0, s, pairs),
    };
    let reference = || f32_vec(vec![-20.0, -18.0, -22.0, -19.0]);
    let desirable = || {
        Tensor::<1, Bool>::from_data(
            TensorData::new(vec![true, true, false, false], [rows]),
            &device,
        )
    };
    let losses: Vec<(&str, LossOf)> = vec![
        (
            "dpo",
            Box::new(|g| {
                let r = reference();
                let batch = PreferenceBatch::from_tokens(split(&g, 0), split(&g, pairs))
                    .with_ref_logps(r.clone().narrow(0, 0, pairs), r.narrow(0, pairs, pairs));
                DpoLossConfig::new().init().forward(&batch).loss
            }),
        ),
        (
            "kto",
            Box::new(|g| {
                KtoLossConfig::new()
                    .init()
                    .forward(
                        &UnpairedBatch::new(g.sum(), reference(), desirable())
                            .with_kl(f32_vec(vec![0.2])),
                    )
                    .loss
            }),
        ),
        (
            "grpo",
            Box::new(|g| {
                let input =
                    GrpoLossInput::new(g.logps, g.mask, f32_vec(vec![0.5, -0.5, 1.0, -1.0]));
                GrpoLossConfig::new()
                    .with_loss_type(GrpoLossType::Grpo)
                    .init()
                    .forward(input)
                    .loss
            }),
        ),
    ];
    let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
    for half in [FloatDType::F16, FloatDType::BF16] {
        for (name, loss_of) in &losses {
            let half_logits = f32_tensor::<3>(values.clone(), [rows, t, v], &device)
                .cast(half)
                .require_grad();
            let loss = loss_of(op.forward(
                half_logits.clone(),
                int_tensor::<2>(labels_v.clone(), [rows, t], &device),
            ));
            assert_eq!(
                loss.dtype(),
                DType::F32,
                "{half:?} {name}: the loss is computed in f32"
            );
            let grads = loss.clone().backward();
            let grad = half_logits.grad(&grads).unwrap();
            assert_eq!(grad.dtype(), DType::from(half));
            let rounded = half_logits
                .clone()
                .inner()
                .cast(FloatDType::F32)
                .autodiff()
                .require_grad();
            let loss32 = loss_of(op.forward(
                rounded.clone(),
                int_tensor::<2>(labels_v.clone(), [rows, t], &device),
            ));
            let grads32 = loss32.clone().backward();
            assert_close(
                &format!("{half:?} {name} loss"),
                &to_vec(loss),
                &to_vec(loss32),
                1e-5,
                1e-6,
            );
            let g32 = rounded
                .grad(&grads32)
                .unwrap()
                .cast(half)
                .cast(FloatDType::F32);
            assert_close(
                &format!("{half:?} {name} grad"),
                &to_vec(grad.cast(FloatDType::F32)),
                &to_vec(g32),
                1e-2,
                1e-4,
            );
        }
    }
}

/// A loss as a function of the gathered log-probs (the shared loss core's input).
type LossOf<'a> = Box<dyn Fn(burn_rlhf::logps::GatheredLogps) -> Tensor<1> + 'a>;
