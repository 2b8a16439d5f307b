//! Reward modeling: closed-form Bradley-Terry gradients (proptest) and last-attended-token
//! pooling (right/left padding, pad == eos, single-token sequences, empty rows).
//!
//! Every expected value here is written by hand from the formulas, never taken from the crate.

use crate::common;

use burn::module::Param;
use burn::tensor::{Bool, Device, FloatDType, Tensor};
use burn_rlhf::Error;
use burn_rlhf::heads::{
    RewardHeadConfig, last_attended_index, pool_last_attended, try_last_attended_index,
    try_pool_last_attended,
};
use burn_rlhf::losses::{BradleyTerryForm, BradleyTerryLossConfig};
use common::{TestDevice, assert_close, bool_tensor, tensor, to_vec};
use proptest::prelude::*;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `-log σ(x) = softplus(-x)`, evaluated stably on the host.
fn neg_log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    }
}

#[derive(Debug, Clone)]
struct BtCase {
    chosen: Vec<f64>,
    rejected: Vec<f64>,
    margin: Option<Vec<f64>>,
    coef: Option<f64>,
    form: BradleyTerryForm,
}

fn bt_case() -> impl Strategy<Value = BtCase> {
    (1usize..=5).prop_flat_map(|b| {
        (
            prop::collection::vec(-8.0f64..8.0, b),
            prop::collection::vec(-8.0f64..8.0, b),
            prop::option::of(prop::collection::vec(-1.0f64..3.0, b)),
            prop::option::of(0.0f64..1.0),
            prop_oneof![
                Just(BradleyTerryForm::LogSigmoid),
                Just(BradleyTerryForm::LogExp)
            ],
        )
            .prop_map(|(chosen, rejected, margin, coef, form)| BtCase {
                chosen,
                rejected,
                margin,
                coef,
                form,
            })
    })
}

/// Runs the loss on `dev` and compares the loss and both gradients with the closed form:
///
/// `L = (1/B) Σ_i [softplus(-x_i) + λ s_i²]`, `x_i = c_i - r_i - m_i`, `s_i = c_i + r_i`,
/// `dL/dc_i = (1/B) (-σ(-x_i) + 2 λ s_i)`, `dL/dr_i = (1/B) (σ(-x_i) + 2 λ s_i)`,
/// `dL/dm_i = (1/B) σ(-x_i)`.
fn check_bt_closed_form(case: &BtCase, dev: &TestDevice) {
    let device = dev.autodiff();
    let b = case.chosen.len();
    let lambda = case.coef.unwrap_or(0.0);
    let margin = case.margin.clone().unwrap_or_else(|| vec![0.0; b]);
    let mut want_loss = 0.0;
    let (mut want_dc, mut want_dr, mut want_dm) = (vec![0.0; b], vec![0.0; b], vec![0.0; b]);
    for i in 0..b {
        let x = case.chosen[i] - case.rejected[i] - margin[i];
        let s = case.chosen[i] + case.rejected[i];
        want_loss += (neg_log_sigmoid(x) + lambda * s * s) / b as f64;
        want_dc[i] = (-sigmoid(-x) + 2.0 * lambda * s) / b as f64;
        want_dr[i] = (sigmoid(-x) + 2.0 * lambda * s) / b as f64;
        want_dm[i] = sigmoid(-x) / b as f64;
    }

    let c = tensor::<1>(case.chosen.clone(), [b], dev, &device).require_grad();
    let r = tensor::<1>(case.rejected.clone(), [b], dev, &device).require_grad();
    let m = case
        .margin
        .clone()
        .map(|m| tensor::<1>(m, [b], dev, &device).require_grad());
    let loss = BradleyTerryLossConfig::new()
        .with_center_rewards_coefficient(case.coef)
        .with_form(case.form)
        .init()
        .forward(c.clone(), r.clone(), m.clone());
    let grads = loss.loss.backward();
    let (rtol, atol) = if dev.has_f64() {
        (1e-10, 1e-13)
    } else {
        (1e-4, 1e-6)
    };
    assert_close("loss", &to_vec(loss.loss), &[want_loss], rtol, atol);
    assert_close(
        "dL/d chosen",
        &to_vec(c.grad(&grads).unwrap()),
        &want_dc,
        rtol,
        atol,
    );
    assert_close(
        "dL/d rejected",
        &to_vec(r.grad(&grads).unwrap()),
        &want_dr,
        rtol,
        atol,
    );
    if let Some(m) = m {
        assert_close(
            "dL/d margin",
            &to_vec(m.grad(&grads).unwrap()),
            &want_dm,
            rtol,
            atol,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bradley_terry_matches_closed_form_gradients(case in bt_case()) {
        for dev in common::devices() {
            check_bt_closed_form(&case, &dev);
        }
    }
}

#[test]
fn bradley_terry_extreme_differences_stay_finite() {
    // |x| = 1e4: -log σ(1e4) = ln(1 + e^-1e4) ≈ 0, -log σ(-1e4) = 1e4 (+ ln(1 + e^-1e4)).
    for dev in common::devices() {
        let device = dev.autodiff();
        let c = tensor::<1>(vec![1e4, -5e3], [2], &dev, &device).require_grad();
        let r = tensor::<1>(vec![0.0, 5e3], [2], &dev, &device).require_grad();
        let out = BradleyTerryLossConfig::new()
            .init()
            .forward(c.clone(), r.clone(), None);
        let grads = out.loss.backward();
        assert_close("loss", &to_vec(out.loss), &[(0.0 + 1e4) / 2.0], 1e-6, 0.0);
        // σ(-1e4) = 0 and σ(1e4) = 1 to every digit of f64/f32.
        assert_close(
            "grad chosen",
            &to_vec(c.grad(&grads).unwrap()),
            &[0.0, -0.5],
            0.0,
            1e-12,
        );
        assert_close(
            "grad rejected",
            &to_vec(r.grad(&grads).unwrap()),
            &[0.0, 0.5],
            0.0,
            1e-12,
        );
    }
}

#[test]
fn bradley_terry_metrics_by_hand() {
    for dev in common::devices() {
        let device = dev.device.clone();
        let c = tensor::<1>(vec![1.0, 0.5, -2.0, 3.0], [4], &dev, &device);
        let r = tensor::<1>(vec![0.0, 0.5, -1.0, -4.0], [4], &dev, &device);
        let m = tensor::<1>(vec![10.0, 10.0, 10.0, 10.0], [4], &dev, &device);
        let out = BradleyTerryLossConfig::new().init().forward(c, r, Some(m));
        let h = out.metrics.to_host();
        // r_c > r_r: pairs 0 and 3 (the tie in pair 1 counts as wrong).
        assert_eq!(h["accuracy"], 0.5);
        // mean(r_c - r_r) = (1 + 0 - 1 + 7) / 4, without the margin.
        assert_close("margin", &[h["margin"]], &[1.75], 1e-6, 0.0);
        assert_eq!(h["min_reward"], -4.0);
        assert_eq!(h["max_reward"], 3.0);
        assert_close(
            "mean_reward",
            &[h["mean_reward"]],
            &[(1.0 + 0.5 - 2.0 + 3.0 + 0.0 + 0.5 - 1.0 - 4.0) / 8.0],
            1e-6,
            1e-7,
        );
        assert_eq!(out.per_example.dims(), [4]);
    }
}

#[test]
fn stacked_layout_is_chosen_then_rejected() {
    for dev in common::devices() {
        let device = dev.device.clone();
        let loss = BradleyTerryLossConfig::new().init();
        let stacked = tensor::<1>(vec![2.0, -1.0, 0.5, 1.0], [4], &dev, &device);
        let out = loss.forward_stacked(stacked, None);
        // pairs (2.0, 0.5) and (-1.0, 1.0).
        let want = (neg_log_sigmoid(1.5) + neg_log_sigmoid(-2.0)) / 2.0;
        assert_close("loss", &to_vec(out.loss), &[want], dev.rtol(1e-12), 1e-12);
    }
}

// ----------------------------------------------------------------------------------------
// Pooling
// ----------------------------------------------------------------------------------------

fn mask_rows(rows: &[&[u8]], device: &Device) -> Tensor<2, Bool> {
    let t = rows[0].len();
    bool_tensor(
        rows.iter()
            .flat_map(|r| r.iter().map(|&v| v != 0))
            .collect(),
        [rows.len(), t],
        device,
    )
}

/// Hidden states whose value at `[b, t, h]` is `100 b + 10 t + h`, so a pooled row tells
/// which position it came from.
fn coded_hidden(b: usize, t: usize, h: usize, dev: &TestDevice, device: &Device) -> Tensor<3> {
    let mut v = Vec::new();
    for i in 0..b {
        for j in 0..t {
            for k in 0..h {
                v.push((100 * i + 10 * j + k) as f64);
            }
        }
    }
    tensor::<3>(v, [b, t, h], dev, device)
}

fn ints(t: Tensor<1, burn::tensor::Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap()
}

#[test]
fn pooling_right_and_left_padding() {
    for dev in common::devices() {
        let device = dev.device.clone();
        // Right padded (lengths 3, 5, 1) and left padded (lengths 2, 5, 1).
        let mask = mask_rows(
            &[
                &[1, 1, 1, 0, 0],
                &[1, 1, 1, 1, 1],
                &[1, 0, 0, 0, 0],
                &[0, 0, 0, 1, 1],
                &[0, 0, 0, 0, 1],
            ],
            &device,
        );
        assert_eq!(ints(last_attended_index(mask.clone())), vec![2, 4, 0, 4, 4]);
        let pooled = pool_last_attended(coded_hidden(5, 5, 2, &dev, &device), mask);
        let want: Vec<f64> = [(0, 2), (1, 4), (2, 0), (3, 4), (4, 4)]
            .iter()
            .flat_map(|&(b, t)| (0..2).map(move |k| (100 * b + 10 * t + k) as f64))
            .collect();
        assert_close("pooled", &to_vec(pooled), &want, 0.0, 0.0);
    }
}

#[test]
fn pooling_reads_the_eos_when_pad_equals_eos() {
    // Token ids with pad_token_id == eos_token_id == 2: `[7, 5, 2, 2, 2]`, the first `2` is the
    // real eos (attended), the rest is padding. "First pad token - 1" (transformers 35352)
    // would read position 1 (the `5`); the attention mask says the last real token is 2.
    let input_ids = [[7i64, 5, 2, 2, 2], [2, 2, 9, 4, 2]];
    let attention = [[1u8, 1, 1, 0, 0], [0, 0, 1, 1, 1]];
    let first_pad_minus_one: Vec<i64> = input_ids
        .iter()
        .map(|row| {
            row.iter()
                .position(|&x| x == 2)
                .map_or(row.len() as i64 - 1, |p| p as i64 - 1)
        })
        .collect();
    assert_eq!(
        first_pad_minus_one,
        vec![1, -1],
        "the naive rule is wrong here"
    );
    for dev in common::devices() {
        let device = dev.device.clone();
        let mask = mask_rows(&[&attention[0], &attention[1]], &device);
        assert_eq!(ints(last_attended_index(mask)), vec![2, 4]);
    }
}

#[test]
fn pooling_single_token_sequences() {
    for dev in common::devices() {
        let device = dev.device.clone();
        let mask = mask_rows(&[&[1, 0, 0], &[0, 1, 0], &[0, 0, 1]], &device);
        assert_eq!(ints(try_last_attended_index(mask).unwrap()), vec![0, 1, 2]);
        let mask = mask_rows(&[&[1], &[1]], &device);
        let pooled = try_pool_last_attended(coded_hidden(2, 1, 3, &dev, &device), mask).unwrap();
        assert_close(
            "pooled",
            &to_vec(pooled),
            &[0.0, 1.0, 2.0, 100.0, 101.0, 102.0],
            0.0,
            0.0,
        );
    }
}

#[test]
fn pooling_rejects_rows_without_attended_token() {
    for dev in common::devices() {
        let device = dev.device.clone();
        let mask = mask_rows(&[&[1, 1, 0], &[0, 0, 0], &[0, 1, 1]], &device);
        // Issue 22: the check always runs on the CPU backends (release builds too); on a GPU
        // it runs in checked mode, and otherwise the empty row is NaN (no read).
        let host_memory = dev.name == "flex" || dev.name == "ndarray";
        // The head's parameters use the device's default float dtype (f32).
        let hidden32 = || coded_hidden(3, 3, 2, &dev, &device).cast(FloatDType::F32);
        let head = RewardHeadConfig::new(2).init(&device);
        for checked in [false, true] {
            burn_rlhf::with_checked_mode(checked, || {
                let pooled =
                    try_pool_last_attended(coded_hidden(3, 3, 2, &dev, &device), mask.clone());
                let scores = head.try_forward(hidden32(), mask.clone());
                if host_memory || checked {
                    match pooled.map(to_vec) {
                        Err(Error::Empty { arg, what }) => {
                            assert_eq!(arg, "attention_mask");
                            assert!(what.contains("[1]"), "{what}");
                        }
                        other => panic!("{}: expected Error::Empty, got {other:?}", dev.name),
                    }
                    assert!(
                        matches!(scores, Err(Error::Empty { .. })),
                        "{}: {:?}",
                        dev.name,
                        scores.map(to_vec)
                    );
                } else {
                    let pooled = to_vec(pooled.unwrap());
                    assert!(
                        pooled[..2].iter().all(|x| x.is_finite())
                            && pooled[2..4].iter().all(|x| x.is_nan())
                            && pooled[4..].iter().all(|x| x.is_finite()),
                        "{}: {pooled:?}",
                        dev.name
                    );
                    let scores = to_vec(scores.unwrap());
                    assert!(scores[1].is_nan() && scores[0].is_finite(), "{scores:?}");
                }
            });
        }
        // Unchecked: the empty row is NaN, the others are finite.
        let head = RewardHeadConfig::new(2)
            .with_check_attended(false)
            .init(&device);
        let scores = to_vec(head.forward(hidden32(), mask));
        assert!(
            scores[0].is_finite() && scores[1].is_nan() && scores[2].is_finite(),
            "{scores:?}"
        );
        // Shape errors name the argument.
        let err = try_pool_last_attended(
            coded_hidden(3, 3, 2, &dev, &device),
            mask_rows(&[&[1, 1]], &device),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    arg: "attention_mask",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn reward_head_scores_the_last_attended_hidden_state() {
    for dev in common::devices() {
        let device = dev.autodiff();
        // K = 2 scores with weight [[1, 0], [0, 2], [1, 1]] (H = 3) and bias [0.5, -1].
        let mut head = RewardHeadConfig::new(3)
            .with_num_scores(2)
            .with_bias(true)
            .init(&device);
        head.linear.weight = Param::from_tensor(tensor::<2>(
            vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0],
            [3, 2],
            &dev,
            &device,
        ));
        head.linear.bias = Some(Param::from_tensor(tensor::<1>(
            vec![0.5, -1.0],
            [2],
            &dev,
            &device,
        )));
        let hidden = coded_hidden(2, 4, 3, &dev, &device).require_grad();
        let mask = mask_rows(&[&[1, 1, 0, 0], &[0, 1, 1, 1]], &device);
        let scores = head.forward(hidden.clone(), mask);
        // Row 0 reads t = 1: h = [10, 11, 12]; row 1 reads t = 3: h = [130, 131, 132].
        let want = [
            10.0 + 12.0 + 0.5,
            2.0 * 11.0 + 12.0 - 1.0,
            130.0 + 132.0 + 0.5,
            2.0 * 131.0 + 132.0 - 1.0,
        ];
        assert_close(
            "scores",
            &to_vec(scores.clone()),
            &want,
            dev.rtol(1e-12),
            1e-9,
        );
        // d sum(scores) / d hidden = row sums of W at the read positions, 0 elsewhere.
        let grads = scores.sum().backward();
        let g = to_vec(hidden.grad(&grads).unwrap());
        let mut want_g = vec![0.0; 2 * 4 * 3];
        for (b, t) in [(0usize, 1usize), (1, 3)] {
            want_g[(b * 4 + t) * 3..(b * 4 + t) * 3 + 3].copy_from_slice(&[1.0, 2.0, 2.0]);
        }
        assert_close("grad hidden", &g, &want_g, 0.0, 0.0);
        assert!(matches!(
            head.try_forward_reward(hidden, mask_rows(&[&[1, 0, 0, 0], &[1, 0, 0, 0]], &device)),
            Err(Error::Config { .. })
        ));
    }
}
