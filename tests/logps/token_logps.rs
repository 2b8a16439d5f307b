//! Token log-probs, sequence reductions, entropy and the normalizer, on every device under test.
//!
//! Expected values are written out in closed form here, computed on the host in f64:
//! `logp = z[label] - logsumexp(z)`, `z = logits / T`, and
//! `d logp / d logits = (onehot(label) - softmax(z)) / T`.

use crate::common;

use burn::tensor::{Bool, Int, Tensor};
use burn_rlhf::logps::has_native_kernel;
use burn_rlhf::logps::{LabelAlignment, SequenceReduction, TokenLogpsConfig};
use burn_rlhf::logps::{LogpsImplementation, ld_dpo_sequence_logps, token_entropy};
use burn_rlhf::{Error, Normalizer};
use common::{Rng, TestDevice, assert_close, bool_tensor, int_tensor, tensor, to_vec};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("BURN_RLHF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Host-side closed form for one row: (log-prob of `label`, gradient row of `g * logp`).
fn closed_form_row(row: &[f64], label: usize, temperature: f64, g: f64) -> (f64, Vec<f64>) {
    let z: Vec<f64> = row.iter().map(|x| x / temperature).collect();
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    let grad = z
        .iter()
        .enumerate()
        .map(|(v, zv)| g * ((if v == label { 1.0 } else { 0.0 }) - (zv - lse).exp()) / temperature)
        .collect();
    (z[label] - lse, grad)
}

struct Problem {
    b: usize,
    t: usize,
    v: usize,
    logits: Vec<f64>,
    labels: Vec<i64>,
    mask: Vec<bool>,
    upstream: Vec<f64>,
}

fn problem(seed: u64, b: usize, t: usize, v: usize, magnitude: f64, ignore_frac: f64) -> Problem {
    let mut rng = Rng::new(seed);
    let logits = (0..b * t * v).map(|_| rng.normal() * magnitude).collect();
    let labels = (0..b * t)
        .map(|_| {
            if rng.uniform() < ignore_frac {
                -100
            } else {
                rng.below(v) as i64
            }
        })
        .collect();
    let mask = (0..b * t).map(|_| rng.uniform() > 0.2).collect();
    let upstream = (0..b * t).map(|_| rng.range(-2.0, 2.0)).collect();
    Problem {
        b,
        t,
        v,
        logits,
        labels,
        mask,
        upstream,
    }
}

/// Expected (logps, grad) for `problem` under `alignment`, host f64.
fn expected(
    p: &Problem,
    alignment: LabelAlignment,
    temperature: f64,
    use_mask: bool,
) -> (Vec<f64>, Vec<f64>) {
    let cols = match alignment {
        LabelAlignment::CausalShift => p.t - 1,
        LabelAlignment::Aligned => p.t,
    };
    let offset = p.t - cols; // label index = row index + offset
    let mut lp = vec![0.0; p.b * cols];
    let mut grad = vec![0.0; p.b * p.t * p.v];
    for b in 0..p.b {
        for c in 0..cols {
            let li = b * p.t + c + offset;
            let label = p.labels[li];
            if label == -100 || (use_mask && !p.mask[li]) {
                continue;
            }
            let row_start = (b * p.t + c) * p.v;
            let row = &p.logits[row_start..row_start + p.v];
            let g = p.upstream[b * cols + c];
            let (value, g_row) = closed_form_row(row, label as usize, temperature, g);
            lp[b * cols + c] = value;
            grad[row_start..row_start + p.v].copy_from_slice(&g_row);
        }
    }
    (lp, grad)
}

fn run(
    p: &Problem,
    dev: &TestDevice,
    alignment: LabelAlignment,
    temperature: f64,
    use_mask: bool,
    implementation: LogpsImplementation,
) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let device = dev.autodiff();
    let logits = tensor::<3>(p.logits.clone(), [p.b, p.t, p.v], dev, &device).require_grad();
    let labels = int_tensor::<2>(p.labels.clone(), [p.b, p.t], &device);
    let op = TokenLogpsConfig::new(alignment)
        .with_temperature(temperature)
        .with_implementation(implementation)
        .init();
    let out = if use_mask {
        op.forward_masked(
            logits.clone(),
            labels,
            bool_tensor::<2>(p.mask.clone(), [p.b, p.t], &device),
        )
    } else {
        op.forward(logits.clone(), labels)
    };
    let cols = out.logps.dims()[1];
    let upstream: Vec<f64> = p.upstream[..p.b * cols].to_vec();
    let g = tensor::<2>(upstream, [p.b, cols], dev, &device);
    let grads = (out.logps.clone() * g).sum().backward();
    let mask: Vec<bool> = out
        .mask
        .into_data()
        .convert::<bool>()
        .try_into_vec::<bool>()
        .unwrap();
    (
        to_vec(out.logps),
        to_vec(logits.grad(&grads).unwrap()),
        mask,
    )
}

fn check_problem(p: &Problem, alignment: LabelAlignment, temperature: f64, use_mask: bool) {
    let (want_lp, want_grad) = expected(p, alignment, temperature, use_mask);
    let max_lp = want_lp.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for dev in common::devices() {
        for implementation in [LogpsImplementation::Auto, LogpsImplementation::Reference] {
            let (lp, grad, _) = run(p, &dev, alignment, temperature, use_mask, implementation);
            let (rtol, atol_lp, atol_g) = if dev.has_f64() {
                (1e-9, 1e-9 * max_lp, 1e-12)
            } else {
                (1e-4, 1e-5 * max_lp, 1e-5)
            };
            let what = format!(
                "{} {implementation:?} {alignment:?} T={temperature}",
                dev.name
            );
            assert_close(&format!("{what} logps"), &lp, &want_lp, rtol, atol_lp);
            assert_close(&format!("{what} grad"), &grad, &want_grad, rtol, atol_g);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// Values and gradients equal the closed form on random shapes, temperatures, masks, and
    /// logits up to magnitude 1e4; masked and ignored positions are 0.
    #[test]
    fn gradient_matches_closed_form(
        seed in any::<u64>(),
        b in 1usize..4,
        t in 2usize..6,
        v in 1usize..40,
        magnitude in prop::sample::select(vec![0.1, 1.0, 30.0, 1e4]),
        temperature in prop::sample::select(vec![0.3, 0.7, 1.0, 2.5]),
        ignore_frac in 0.0f64..0.6,
        shift in any::<bool>(),
        use_mask in any::<bool>(),
    ) {
        let p = problem(seed, b, t, v, magnitude, ignore_frac);
        let alignment = if shift { LabelAlignment::CausalShift } else { LabelAlignment::Aligned };
        check_problem(&p, alignment, temperature, use_mask);
    }
}

/// Ignored positions: value exactly 0.0 and gradient exactly 0.0 (not merely small).
#[test]
fn ignored_positions_are_exactly_zero() {
    let mut p = problem(7, 2, 5, 11, 3.0, 0.0);
    for i in [0usize, 3, 6, 9] {
        p.labels[i] = -100;
    }
    for dev in common::devices() {
        for implementation in [LogpsImplementation::Auto, LogpsImplementation::Reference] {
            let (lp, grad, mask) = run(
                &p,
                &dev,
                LabelAlignment::Aligned,
                1.0,
                false,
                implementation,
            );
            for i in [0usize, 3, 6, 9] {
                assert!(!mask[i]);
                assert_eq!(
                    lp[i].to_bits(),
                    0.0f64.to_bits(),
                    "{} value at {i}",
                    dev.name
                );
                // Exactly zero; the sign bit may be set (-0.0 = -softmax * 0 on a primitive path).
                assert!(
                    grad[i * 11..(i + 1) * 11].iter().all(|g| *g == 0.0),
                    "{} grad row {i}",
                    dev.name
                );
            }
        }
    }
}

/// An all-ignored batch gives zeros and zero gradients, no NaN.
#[test]
fn all_ignored_is_zero_not_nan() {
    let mut p = problem(3, 2, 4, 9, 1.0, 0.0);
    p.labels.iter_mut().for_each(|l| *l = -100);
    check_problem(&p, LabelAlignment::CausalShift, 1.0, false);
    let dev = &common::devices()[0];
    let (lp, grad, _) = run(
        &p,
        dev,
        LabelAlignment::CausalShift,
        1.0,
        false,
        LogpsImplementation::Auto,
    );
    assert!(lp.iter().chain(&grad).all(|x| *x == 0.0));
}

/// The shifted mask is the label mask moved one step left: position c of the output is
/// valid iff label c+1 is not ignored (and mask c+1 is set).
#[test]
fn causal_shift_moves_the_mask_with_the_labels() {
    let mut p = problem(11, 1, 5, 6, 1.0, 0.0);
    p.labels = vec![-100, -100, 2, 3, -100];
    p.mask = vec![true, true, true, false, true];
    let dev = &common::devices()[0];
    let (_, _, mask) = run(
        &p,
        dev,
        LabelAlignment::CausalShift,
        1.0,
        true,
        LogpsImplementation::Auto,
    );
    assert_eq!(mask, vec![false, true, false, false]);
}

/// The lean op runs only where the crate lists the backend; ndarray (enabled only on burn in
/// the dev-dependencies, as an application would) falls back to the reference path and gives
/// the closed-form results without panicking.
#[test]
fn unlisted_backend_falls_back_without_panicking() {
    #[allow(deprecated)]
    let ndarray = burn::tensor::Device::ndarray();
    assert!(!has_native_kernel(&ndarray));
    assert!(!has_native_kernel(&ndarray.clone().autodiff()));
    assert!(has_native_kernel(&burn::tensor::Device::flex()));
    assert!(has_native_kernel(&burn::tensor::Device::flex().autodiff()));
    let dev = TestDevice {
        name: "ndarray",
        device: ndarray,
    };
    let p = problem(5, 2, 4, 7, 2.0, 0.3);
    let (want_lp, want_grad) = expected(&p, LabelAlignment::CausalShift, 0.8, true);
    let (lp, grad, _) = run(
        &p,
        &dev,
        LabelAlignment::CausalShift,
        0.8,
        true,
        LogpsImplementation::Auto,
    );
    assert_close("ndarray logps", &lp, &want_lp, 1e-9, 1e-12);
    assert_close("ndarray grad", &grad, &want_grad, 1e-9, 1e-12);
}

/// Without autodiff (inference / reference model), the op returns the same values.
#[test]
fn no_autodiff_forward_matches() {
    let p = problem(21, 2, 6, 13, 4.0, 0.2);
    let (want, _) = expected(&p, LabelAlignment::CausalShift, 1.0, false);
    for dev in common::devices() {
        let device = dev.device.clone();
        let logits = tensor::<3>(p.logits.clone(), [p.b, p.t, p.v], &dev, &device);
        let labels = int_tensor::<2>(p.labels.clone(), [p.b, p.t], &device);
        let out = TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .init()
            .forward(logits, labels);
        assert_close(dev.name, &to_vec(out.logps), &want, dev.rtol(1e-9), 1e-9);
    }
}

#[test]
fn bad_inputs_give_errors_naming_the_argument() {
    let device = burn::tensor::Device::flex();
    let logits = Tensor::<3>::zeros([2, 4, 5], &device);
    let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();

    let wrong = Tensor::<2, Int>::zeros([2, 3], &device);
    let err = op.try_forward(logits.clone(), wrong, None).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "labels", .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("labels") && msg.contains("[2, 4]") && msg.contains("[2, 3]"),
        "{msg}"
    );

    let labels = Tensor::<2, Int>::zeros([2, 4], &device);
    let bad_mask = Tensor::<2, Bool>::empty([4, 2], &device);
    let err = op
        .try_forward(logits.clone(), labels.clone(), Some(bad_mask))
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "mask", .. }), "{err}");

    let out_of_range = int_tensor::<2>(vec![0, 1, 2, 5, 0, -100, 1, -3], [2, 4], &device);
    let err = op
        .try_forward(logits.clone(), out_of_range, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                value: 5,
                position: 3,
                vocab_size: 5,
                ..
            }
        ),
        "{err}"
    );

    let one_step = Tensor::<3>::zeros([2, 1, 5], &device);
    let err = op
        .try_forward(one_step, Tensor::<2, Int>::zeros([2, 1], &device), None)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "logits", .. }), "{err}");

    for temperature in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = TokenLogpsConfig::new(LabelAlignment::Aligned)
            .with_temperature(temperature)
            .try_init()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "temperature",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn sequence_reductions_match_closed_form() {
    let values = vec![
        -1.0, -2.0, -3.0, -4.0, -0.5, -0.25, 0.0, 0.0, -7.0, 0.0, 0.0, 0.0,
    ];
    let mask = vec![
        true, true, false, true, true, true, false, false, false, false, false, false,
    ];
    // rows: [-1,-2,(masked),-4] -> sum -7 / 3 tokens; [-0.5,-0.25] -> -0.75 / 2; no token -> 0.
    for dev in common::devices() {
        let device = dev.device.clone();
        let x = || tensor::<2>(values.clone(), [3, 4], &dev, &device);
        let m = || bool_tensor::<2>(mask.clone(), [3, 4], &device);
        assert_close(
            "sum",
            &to_vec(SequenceReduction::Sum.reduce(x(), m())),
            &[-7.0, -0.75, 0.0],
            1e-6,
            0.0,
        );
        assert_close(
            "mean",
            &to_vec(SequenceReduction::Mean.reduce(x(), m())),
            &[-7.0 / 3.0, -0.375, 0.0],
            1e-6,
            0.0,
        );
        assert_close(
            "mean eps",
            &to_vec(SequenceReduction::MeanEps(1e-8).reduce(x(), m())),
            &[-7.0 / (3.0 + 1e-8), -0.75 / (2.0 + 1e-8), 0.0],
            dev.rtol(1e-12),
            0.0,
        );
    }
}

#[test]
fn ld_dpo_weights_the_tail_of_the_longer_completion() {
    // chosen has 4 valid tokens (after one prompt position), rejected 2: shared length 2.
    let chosen = vec![0.0, -1.0, -2.0, -3.0, -4.0];
    let chosen_mask = vec![false, true, true, true, true];
    let rejected = vec![-1.0, -10.0, 0.0, 0.0, 0.0];
    let rejected_mask = vec![true, true, false, false, false];
    let alpha = 0.25;
    for dev in common::devices() {
        let device = dev.device.clone();
        let (c, r) = ld_dpo_sequence_logps(
            tensor::<2>(chosen.clone(), [1, 5], &dev, &device),
            bool_tensor::<2>(chosen_mask.clone(), [1, 5], &device),
            tensor::<2>(rejected.clone(), [1, 5], &dev, &device),
            bool_tensor::<2>(rejected_mask.clone(), [1, 5], &device),
            alpha,
        )
        .unwrap();
        assert_close(
            "chosen",
            &to_vec(c),
            &[-1.0 - 2.0 + alpha * (-3.0 - 4.0)],
            1e-6,
            0.0,
        );
        assert_close("rejected", &to_vec(r), &[-11.0], 1e-6, 0.0);
    }
    let device = burn::tensor::Device::flex();
    let z = || Tensor::<2>::zeros([1, 2], &device);
    let m = || Tensor::<2, Bool>::empty([1, 2], &device);
    assert!(matches!(
        ld_dpo_sequence_logps(z(), m(), z(), m(), 1.5),
        Err(Error::Config {
            field: "ld_alpha",
            ..
        })
    ));
}

/// Entropy `H = lse(z) - sum p z` and its gradient `dH/dx_j = -p_j (z_j - sum_k p_k z_k) / T`.
#[test]
fn entropy_matches_closed_form() {
    let p = problem(99, 2, 3, 6, 3.0, 0.0);
    let temperature = 0.9;
    for dev in common::devices() {
        let device = dev.autodiff();
        let logits = tensor::<3>(p.logits.clone(), [2, 3, 6], &dev, &device).require_grad();
        let h = token_entropy(logits.clone(), temperature).unwrap();
        let grads = h.clone().sum().backward();
        let (mut want_h, mut want_g) = (vec![], vec![]);
        for row in p.logits.chunks(6) {
            let z: Vec<f64> = row.iter().map(|x| x / temperature).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let probs: Vec<f64> = z.iter().map(|v| (v - lse).exp()).collect();
            let mean_z: f64 = probs.iter().zip(&z).map(|(p, z)| p * z).sum();
            want_h.push(lse - mean_z);
            want_g.extend(
                probs
                    .iter()
                    .zip(&z)
                    .map(|(p, z)| -p * (z - mean_z) / temperature),
            );
        }
        // f32: z - logsumexp(z) carries ~1e-6 |z| absolute error into every log p.
        let atol = if dev.has_f64() { 1e-9 } else { 1e-4 };
        assert_close(
            &format!("{} entropy", dev.name),
            &to_vec(h),
            &want_h,
            dev.rtol(1e-9),
            atol,
        );
        assert_close(
            &format!("{} entropy grad", dev.name),
            &to_vec(logits.grad(&grads).unwrap()),
            &want_g,
            dev.rtol(1e-9),
            atol,
        );
    }
}

/// The normalizer's promise: a batch split into micro-batches, each reduced with the global
/// count, gives the same summed gradient as the whole batch (token-mean and sequence-mean).
#[test]
fn normalizer_global_counts_make_micro_batches_exact() {
    let (b, t, v) = (6, 5, 7);
    let p = problem(1234, b, t, v, 2.0, 0.35);
    for dev in common::devices() {
        let device = dev.autodiff();
        let labels_all = int_tensor::<2>(p.labels.clone(), [b, t], &device);
        let op = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
        let whole_logits = tensor::<3>(p.logits.clone(), [b, t, v], &dev, &device).require_grad();
        let whole = op.forward(whole_logits.clone(), labels_all.clone());
        let tokens = burn_rlhf::global_token_count(std::slice::from_ref(&whole.mask));
        let cases = [
            (Normalizer::TokenMean, Normalizer::GlobalTokens(tokens)),
            (
                Normalizer::SequenceMean,
                Normalizer::GlobalSequences(b as f64),
            ),
        ];
        for (local, global) in cases {
            let whole_logits =
                tensor::<3>(p.logits.clone(), [b, t, v], &dev, &device).require_grad();
            let whole = op.forward(whole_logits.clone(), labels_all.clone());
            let whole_loss = local.reduce_tokens(whole.logps.clone().neg(), whole.mask.clone());
            let want = to_vec(whole_logits.grad(&whole_loss.backward()).unwrap());
            for k in [2usize, 3] {
                let rows = b / k;
                let mut summed = vec![0.0; b * t * v];
                for part in 0..k {
                    let logits = tensor::<3>(
                        p.logits[part * rows * t * v..(part + 1) * rows * t * v].to_vec(),
                        [rows, t, v],
                        &dev,
                        &device,
                    )
                    .require_grad();
                    let labels = labels_all.clone().narrow(0, part * rows, rows);
                    let out = op.forward(logits.clone(), labels);
                    let loss = global.reduce_tokens(out.logps.neg(), out.mask);
                    let g = to_vec(logits.grad(&loss.backward()).unwrap());
                    summed[part * rows * t * v..(part + 1) * rows * t * v].copy_from_slice(&g);
                }
                assert_close(
                    &format!("{} {global:?} k={k}", dev.name),
                    &summed,
                    &want,
                    dev.rtol(1e-9),
                    1e-12,
                );
            }
        }
    }
}

#[test]
fn normalizer_rejects_bad_counts_and_shapes() {
    let device = burn::tensor::Device::flex();
    for n in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            Normalizer::GlobalTokens(n).validate(),
            Err(Error::Config { .. })
        ));
    }
    let terms = Tensor::<2>::zeros([2, 3], &device);
    let mask = Tensor::<2, Bool>::empty([3, 2], &device);
    assert!(matches!(
        Normalizer::Sum.try_reduce_tokens(terms, mask),
        Err(Error::Shape { arg: "mask", .. })
    ));
    assert!(matches!(
        Normalizer::TokenMean.try_reduce_sequences(Tensor::<1>::zeros([3], &device)),
        Err(Error::NormalizerKind { .. })
    ));
}

/// Issue 22: an out-of-range label never unwinds and never reads out of bounds, in every
/// build profile. CPU backends (flex, ndarray): always `Error::LabelOutOfRange` (the labels
/// are host memory). GPU devices (wgpu here): outside checked mode a NaN log-prob at exactly
/// that position (the others are the in-range values); in checked mode the typed error. The
/// same for the lean op and the fused op (causal and per-row forms).
#[test]
fn out_of_range_labels_give_the_documented_outcome_on_every_device() {
    use burn_rlhf::logps::FusedLogpsConfig;
    for dev in common::devices() {
        let device = dev.device.clone();
        let host_memory = dev.name == "flex" || dev.name == "ndarray";
        let (b, t, v, h) = (2, 4, 5, 3);
        let values: Vec<f64> = (0..b * t * v)
            .map(|i| ((i * 7) % 11) as f64 * 0.3)
            .collect();
        // label 5 == V at [1, 2] (scored after the causal shift), -3 at [0, 3]
        let label_values = vec![0i64, 1, 2, -3, 4, 3, 5, 0];
        for checked in [false, true] {
            burn_rlhf::with_checked_mode(checked, || {
                let logits = tensor(values.clone(), [b, t, v], &dev, &device);
                let labels = int_tensor(label_values.clone(), [b, t], &device);
                let lean = TokenLogpsConfig::new(LabelAlignment::CausalShift)
                    .init()
                    .try_forward(logits, labels, None);
                let hidden = tensor(
                    (0..b * t * h).map(|i| (i % 5) as f64 * 0.2).collect(),
                    [b, t, h],
                    &dev,
                    &device,
                );
                let weight = tensor(
                    (0..v * h).map(|i| (i % 7) as f64 * 0.1 - 0.3).collect(),
                    [v, h],
                    &dev,
                    &device,
                );
                let labels = int_tensor(label_values.clone(), [b, t], &device);
                let fused = FusedLogpsConfig::new()
                    .init()
                    .try_forward_causal(hidden, weight, None, labels)
                    .map(|(g, _)| g);
                for (name, out) in [("lean", lean), ("fused", fused)] {
                    if host_memory || checked {
                        match out {
                            Err(Error::LabelOutOfRange { arg, value, .. }) => {
                                assert_eq!(arg, "labels", "{}/{name}", dev.name);
                                assert!(value == -3 || value == 5, "{}/{name}: {value}", dev.name);
                            }
                            other => panic!(
                                "{}/{name} (checked {checked}): expected LabelOutOfRange, got {:?}",
                                dev.name,
                                other.map(|g| to_vec(g.logps))
                            ),
                        }
                    } else {
                        let out = out.unwrap_or_else(|e| panic!("{}/{name}: {e}", dev.name));
                        let lp = to_vec(out.logps);
                        // shifted coordinates: [0, 2] holds label[0, 3] = -3, [1, 1] label[1, 2] = 5
                        for (i, x) in lp.iter().enumerate() {
                            let bad = i == 2 || i == (t - 1) + 1;
                            assert_eq!(
                                x.is_nan(),
                                bad,
                                "{}/{name}: position {i}: {lp:?}",
                                dev.name
                            );
                        }
                    }
                }
            });
        }
    }
}
