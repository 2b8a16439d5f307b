//! The fused LM-head op on a burn `Linear` (`[H, V]` weight, read in place) equals the
//! transposed-weight path (`[V, H]`): values, statistics and the gradients w.r.t. hidden states,
//! the `Linear`'s weight (in its own `[H, V]` layout) and bias, on every device under test; the
//! layout is part of the type, and with `H == V` the wrong layout gives different numbers.

use crate::common;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::tensor::{Int, Tensor};
use burn_rlhf::Error;
use burn_rlhf::logps::{
    FusedLogpsConfig, FusedLogpsOutput, LmHead, LmHeadLayout, LogpsImplementation,
};
use common::{Rng, TestDevice, assert_close, int_tensor, tensor, to_vec};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("BURN_RLHF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Host data of one case; `weight_hv` is `[H, V]` row-major (burn `Linear`).
struct Case {
    n: usize,
    h: usize,
    v: usize,
    hidden: Vec<f64>,
    weight_hv: Vec<f64>,
    bias: Option<Vec<f64>>,
    targets: Vec<i64>,
    g_lp: Vec<f64>,
    g_h: Vec<f64>,
}

impl Case {
    /// The same weight as `[V, H]` row-major, transposed on the host (an independent copy).
    fn weight_vh(&self) -> Vec<f64> {
        let (h, v) = (self.h, self.v);
        (0..v * h)
            .map(|i| self.weight_hv[(i % h) * v + i / h])
            .collect()
    }
}

fn make(seed: u64, n: usize, h: usize, v: usize, with_bias: bool) -> Case {
    let mut r = Rng::new(seed);
    Case {
        n,
        h,
        v,
        hidden: (0..n * h).map(|_| r.normal()).collect(),
        weight_hv: (0..h * v).map(|_| r.normal()).collect(),
        bias: with_bias.then(|| (0..v).map(|_| r.normal()).collect()),
        targets: (0..n)
            .map(|i| if i % 5 == 3 { -100 } else { r.below(v) as i64 })
            .collect(),
        g_lp: (0..n).map(|_| r.range(-1.0, 1.0)).collect(),
        g_h: (0..n).map(|_| r.range(-1.0, 1.0)).collect(),
    }
}

/// How the head is handed to the op.
#[derive(Clone, Copy, Debug)]
enum Head {
    /// A burn `Linear` built from `[H, V]` data, passed as `&linear`.
    Linear,
    /// A `Linear` whose weight is stored column-major (burn's `LinearLayout::Col`: an `[H, V]`
    /// transposed view of `[V, H]` memory), passed as `&linear`.
    LinearColMajor,
    /// The same weight transposed on the host to `[V, H]`, passed to `forward` (the old path).
    VocabMajor,
    /// The user glue this replaces: `linear.weight.val().transpose()` into `forward`.
    TransposedGlue,
}

/// Everything the op returns plus the gradients, as host vectors.
#[derive(Debug)]
struct Run {
    logps: Vec<f64>,
    entropy: Vec<f64>,
    log_sum_sq: Vec<f64>,
    mean_logits: Vec<f64>,
    top1: Vec<bool>,
    d_hidden: Vec<f64>,
    /// Always reported in `[H, V]` order, whatever layout the head had.
    d_weight_hv: Vec<f64>,
    d_bias: Option<Vec<f64>>,
}

fn linear_from(c: &Case, head: Head, dev: &TestDevice, device: &burn::tensor::Device) -> Linear {
    let weight = match head {
        Head::LinearColMajor => {
            // `[V, H]` memory seen as `[H, V]`, made a leaf (what `LinearLayout::Col` holds).
            let vh = tensor::<2>(c.weight_vh(), [c.v, c.h], dev, &dev.device);
            vh.transpose().autodiff()
        }
        _ => tensor::<2>(c.weight_hv.clone(), [c.h, c.v], dev, device),
    };
    Linear {
        weight: Param::from_tensor(weight),
        bias: c
            .bias
            .clone()
            .map(|b| Param::from_tensor(tensor::<1>(b, [c.v], dev, device))),
    }
}

fn run(c: &Case, head: Head, cfg: &FusedLogpsConfig, dev: &TestDevice) -> Run {
    let device = dev.autodiff();
    let hidden = tensor::<2>(c.hidden.clone(), [c.n, c.h], dev, &device).require_grad();
    let targets = int_tensor::<1>(c.targets.clone(), [c.n], &device);
    let op = cfg.init();
    let linear = linear_from(c, head, dev, &device);
    let weight_vh = tensor::<2>(c.weight_vh(), [c.v, c.h], dev, &device).require_grad();
    let bias = linear.bias.as_ref().map(|b| b.val());
    let out: FusedLogpsOutput = match head {
        Head::Linear | Head::LinearColMajor => op.forward_head(hidden.clone(), &linear, targets),
        Head::VocabMajor => op.forward(hidden.clone(), weight_vh.clone(), bias.clone(), targets),
        Head::TransposedGlue => op.forward(
            hidden.clone(),
            linear.weight.val().transpose(),
            bias.clone(),
            targets,
        ),
    };
    let entropy = out.entropy.clone().expect("with_stats");
    let objective = (out.logps.clone() * tensor::<1>(c.g_lp.clone(), [c.n], dev, &device)).sum()
        + (entropy.clone() * tensor::<1>(c.g_h.clone(), [c.n], dev, &device)).sum();
    let grads = objective.backward();
    let d_weight_hv = match head {
        Head::VocabMajor => {
            let g = weight_vh.grad(&grads).unwrap();
            assert_eq!(g.dims(), [c.v, c.h], "d weight keeps the [V, H] layout");
            to_vec(g.transpose())
        }
        _ => {
            let g = linear.weight.val().grad(&grads).unwrap();
            assert_eq!(
                g.dims(),
                [c.h, c.v],
                "d weight keeps the Linear's [H, V] layout"
            );
            to_vec(g)
        }
    };
    let d_bias = match head {
        Head::VocabMajor => bias.map(|b| to_vec(b.grad(&grads).unwrap())),
        _ => linear
            .bias
            .as_ref()
            .map(|b| to_vec(b.val().grad(&grads).unwrap())),
    };
    Run {
        logps: to_vec(out.logps),
        entropy: to_vec(entropy),
        log_sum_sq: to_vec(out.log_sum_sq_probs.unwrap()),
        mean_logits: to_vec(out.mean_logits.unwrap()),
        top1: out
            .is_top1
            .unwrap()
            .into_data()
            .try_to_vec::<bool>()
            .unwrap(),
        d_hidden: to_vec(hidden.grad(&grads).unwrap()),
        d_weight_hv,
        d_bias,
    }
}

fn assert_runs_close(what: &str, got: &Run, want: &Run, dev: &TestDevice) {
    let (rtol, atol) = if dev.has_f64() {
        (1e-9, 1e-10)
    } else {
        (1e-4, 1e-4)
    };
    assert_close(
        &format!("{what} logps"),
        &got.logps,
        &want.logps,
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} entropy"),
        &got.entropy,
        &want.entropy,
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} log_sum_sq_probs"),
        &got.log_sum_sq,
        &want.log_sum_sq,
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} mean_logits"),
        &got.mean_logits,
        &want.mean_logits,
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} d hidden"),
        &got.d_hidden,
        &want.d_hidden,
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} d weight"),
        &got.d_weight_hv,
        &want.d_weight_hv,
        rtol,
        atol,
    );
    match (&got.d_bias, &want.d_bias) {
        (Some(g), Some(w)) => assert_close(&format!("{what} d bias"), g, w, rtol, atol),
        (None, None) => {}
        other => panic!("{what}: bias gradient presence differs: {other:?}"),
    }
    if dev.has_f64() {
        // Ties are measure-zero with random normal data; compare the top-1 flags exactly.
        assert_eq!(got.top1, want.top1, "{what} is_top1");
    }
}

fn config(
    vocab_chunk: Option<usize>,
    token_chunk: Option<usize>,
    implementation: LogpsImplementation,
) -> FusedLogpsConfig {
    FusedLogpsConfig::new()
        .with_vocab_chunk_size(vocab_chunk)
        .with_token_chunk_size(token_chunk)
        .with_with_stats(true)
        .with_implementation(implementation)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    /// Linear head (either storage order) == host-transposed `[V, H]` weight through the
    /// materialized oracle and through the fused op, on random shapes and tilings
    /// (vocabulary chunks that do not divide V included).
    #[test]
    fn linear_head_equals_transposed_weight_path(
        seed in any::<u64>(),
        n in 1usize..12,
        h in 1usize..9,
        v in 1usize..40,
        vocab_chunk in 1usize..45,
        token_chunk in 1usize..14,
        with_bias in any::<bool>(),
    ) {
        let c = make(seed, n, h, v, with_bias);
        let auto = config(Some(vocab_chunk), Some(token_chunk), LogpsImplementation::Auto);
        let oracle = config(None, None, LogpsImplementation::Reference);
        for dev in common::devices() {
            let want = run(&c, Head::VocabMajor, &oracle, &dev);
            for head in [Head::Linear, Head::LinearColMajor, Head::VocabMajor] {
                let got = run(&c, head, &auto, &dev);
                assert_runs_close(&format!("{} {head:?}", dev.name), &got, &want, &dev);
            }
            let got = run(&c, Head::Linear, &oracle, &dev);
            assert_runs_close(&format!("{} Linear (oracle path)", dev.name), &got, &want, &dev);
        }
    }
}

/// `H == V`: a burn `Linear` equals the transposed-weight path (also the user glue it replaces),
/// while the same `[H, V]` tensor passed as `[V, H]` is accepted by shape and gives other
/// numbers: the layout must come from the type. Tiles: V = 24 in chunks of 7 (remainder 3),
/// token chunks of 4 over 10 rows.
#[test]
fn square_head_layout_matters() {
    let c = make(14, 10, 24, 24, true);
    let cfg = config(Some(7), Some(4), LogpsImplementation::Auto);
    for dev in common::devices() {
        let want = run(&c, Head::VocabMajor, &cfg, &dev);
        let got = run(&c, Head::Linear, &cfg, &dev);
        assert_runs_close(&format!("{} Linear", dev.name), &got, &want, &dev);
        let glue = run(&c, Head::TransposedGlue, &cfg, &dev);
        assert_runs_close(&format!("{} transpose glue", dev.name), &glue, &want, &dev);

        // The wrong layout: the Linear's [H, V] weight handed over as [V, H].
        let device = dev.autodiff();
        let hidden = tensor::<2>(c.hidden.clone(), [c.n, c.h], &dev, &device);
        let targets = int_tensor::<1>(c.targets.clone(), [c.n], &device);
        let weight_hv = tensor::<2>(c.weight_hv.clone(), [c.h, c.v], &dev, &device);
        let bias = c.bias.clone().map(|b| tensor::<1>(b, [c.v], &dev, &device));
        let op = cfg.init();
        let wrong = op.forward_head(
            hidden.clone(),
            LmHead::vocab_major(weight_hv.clone(), bias.clone()),
            targets.clone(),
        );
        let right = op.forward_head(hidden, LmHead::hidden_major(weight_hv, bias), targets);
        let (wrong, right) = (to_vec(wrong.logps), to_vec(right.logps));
        assert_close(
            &format!("{} hidden_major", dev.name),
            &right,
            &want.logps,
            1e-4,
            1e-4,
        );
        let max_gap = wrong
            .iter()
            .zip(&right)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            max_gap > 1.0,
            "{}: the [H, V] weight read as [V, H] should give different log-probs (max gap {max_gap})",
            dev.name
        );
    }
}

/// The causal entry point with a `Linear` equals `forward_causal` on the transposed weight, and
/// a `Linear` built by `LinearConfig` (both storage orders) is accepted as `&linear`.
#[test]
fn causal_linear_head_equals_forward_causal() {
    let (b, t, h, v) = (2, 6, 5, 13);
    let mut r = Rng::new(3);
    let hidden_v: Vec<f64> = (0..b * t * h).map(|_| r.normal()).collect();
    let labels_v: Vec<i64> = (0..b * t)
        .map(|i| if i % 4 == 0 { -100 } else { r.below(v) as i64 })
        .collect();
    for dev in common::devices() {
        let device = dev.autodiff();
        for layout in [LinearLayout::Row, LinearLayout::Col] {
            let linear = LinearConfig::new(h, v).with_layout(layout).init(&device);
            let op = FusedLogpsConfig::new()
                .with_vocab_chunk_size(Some(4))
                .init();
            let hidden = Tensor::<3>::from_data(
                burn::tensor::TensorData::new(hidden_v.clone(), [b, t, h]),
                &device,
            );
            let labels: Tensor<2, Int> = int_tensor::<2>(labels_v.clone(), [b, t], &device);
            let (got, _) = op.forward_causal_head(hidden.clone(), &linear, labels.clone());
            // The reference: the Linear's weight values, copied to [V, H] through the host.
            let w = linear.weight.val();
            let w_vh = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
            let bias = linear.bias.as_ref().map(|b| b.val());
            let (want, _) = op.forward_causal(hidden, w_vh, bias, labels);
            assert_eq!(got.logps.dims(), [b, t - 1]);
            assert_close(
                &format!("{} {layout:?}", dev.name),
                &to_vec(got.logps),
                &to_vec(want.logps),
                1e-5,
                1e-5,
            );
            assert_eq!(
                got.mask.into_data().try_to_vec::<bool>().unwrap(),
                want.mask.into_data().try_to_vec::<bool>().unwrap()
            );
        }
    }
}

#[test]
fn lm_head_reports_layout_and_sizes() {
    let device = burn::tensor::Device::flex();
    let linear = LinearConfig::new(4, 9).init(&device);
    let head = LmHead::from_linear(&linear);
    assert_eq!(head.layout(), LmHeadLayout::HiddenMajor);
    assert_eq!(head.sizes(), (4, 9));
    assert!(head.bias().is_some());
    let head = LmHead::vocab_major(Tensor::<2>::zeros([9, 4], &device), None);
    assert_eq!(head.layout(), LmHeadLayout::VocabMajor);
    assert_eq!(head.sizes(), (4, 9));
    let no_bias = LinearConfig::new(4, 9).with_bias(false).init(&device);
    assert!(LmHead::from(&no_bias).bias().is_none());
}

#[test]
fn linear_head_shape_errors_name_the_layout() {
    let device = burn::tensor::Device::flex();
    let op = FusedLogpsConfig::new().init();
    let hidden = Tensor::<2>::zeros([3, 4], &device);
    let targets = Tensor::<1, Int>::zeros([3], &device);
    // A PyTorch-layout [V, H] weight given as a burn Linear's [H, V].
    let err = op
        .try_forward_head(
            hidden.clone(),
            LmHead::hidden_major(Tensor::<2>::zeros([7, 4], &device), None),
            targets.clone(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "weight", .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("[7, 4]") && msg.contains("vocab_major"),
        "{msg}"
    );
    // A burn Linear's [H, V] weight given to the [V, H] entry point.
    let err = op
        .try_forward(
            hidden.clone(),
            Tensor::<2>::zeros([4, 7], &device),
            None,
            targets.clone(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "weight", .. }), "{err}");
    assert!(err.to_string().contains("hidden_major"), "{err}");
    // A Linear whose d_input is not the hidden size.
    let linear = LinearConfig::new(5, 7).init(&device);
    let err = op
        .try_forward_head(hidden.clone(), &linear, targets.clone())
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "weight", .. }), "{err}");
    // Bias of the wrong size, and a target beyond the Linear's d_output.
    let err = op
        .try_forward_head(
            hidden.clone(),
            LmHead::hidden_major(
                Tensor::<2>::zeros([4, 7], &device),
                Some(Tensor::<1>::zeros([4], &device)),
            ),
            targets,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "bias", .. }), "{err}");
    let linear = LinearConfig::new(4, 7).init(&device);
    let err = op
        .try_forward_head(
            hidden,
            &linear,
            int_tensor::<1>(vec![0, 7, 1], [3], &device),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::LabelOutOfRange { value: 7, .. }),
        "{err}"
    );
    let err = op
        .try_forward_causal_head(
            Tensor::<3>::zeros([2, 3, 4], &device),
            &LinearConfig::new(4, 7).init(&device),
            int_tensor::<2>(vec![0, 1, 2, 3, 9, 5], [2, 3], &device),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                arg: "labels",
                value: 9,
                ..
            }
        ),
        "{err}"
    );
}
