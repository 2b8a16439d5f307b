//! Closed-form gradient properties of the RL losses, GAE against a written-out recursion, and
//! normalizer invariance under micro-batching (whole-batch gradient = sum of micro-batch
//! gradients with a global count; also through `ppo_update`'s gradient accumulation).
//!
//! Every expected value is computed here from the formulas, in f64 on the flex device.

#[path = "../../examples/common/mod.rs"]
pub mod examples_common;

use burn::module::{Module, Param};
use burn::optim::SgdConfig;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn_rlhf::Normalizer;
use burn_rlhf::rl::{
    GaeConfig, GaeMasking, GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType,
    KlEstimator, PolicyOutput, PpoLossConfig, PpoLossInput, PpoStepConfig, Rollout, ScaleRewards,
    Whitening, kl_estimate, ppo_update,
};
use examples_common::rng::Rng;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn t2(values: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), (&dev(), DType::F64))
}

fn t1(values: Vec<f64>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (&dev(), DType::F64))
}

fn mask(values: Vec<bool>, shape: [usize; 2]) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

proptest! {
    #![proptest_config(config())]

    /// d/d logp of `max(-A rho, -A clip(rho))` is `-A rho` where the unclipped term is active
    /// and 0 where the clip is active (rho above 1+eps with A > 0, below 1-eps with A < 0).
    #[test]
    fn clipped_surrogate_gradient(
        logp in -3.0f64..0.0, delta in -0.8f64..0.8, adv in prop_oneof![-3.0f64..-0.05, 0.05f64..3.0],
        eps_low in 0.05f64..0.4, eps_high in 0.05f64..0.4,
    ) {
        let old = logp - delta;
        let rho = delta.exp();
        prop_assume!((rho - (1.0 + eps_high)).abs() > 1e-6 && (rho - (1.0 - eps_low)).abs() > 1e-6);
        let x = t2(vec![logp], [1, 1]).require_grad();
        let loss = PpoLossConfig::new()
            .with_epsilon(eps_low)
            .with_epsilon_high(Some(eps_high))
            .with_normalizer(Normalizer::Sum)
            .init()
            .forward(PpoLossInput::new(x.clone(), t2(vec![old], [1, 1]), t2(vec![adv], [1, 1])));
        let clipped = (adv > 0.0 && rho > 1.0 + eps_high) || (adv < 0.0 && rho < 1.0 - eps_low);
        let want_loss = if clipped {
            -adv * rho.clamp(1.0 - eps_low, 1.0 + eps_high)
        } else {
            -adv * rho
        };
        let want_grad = if clipped { 0.0 } else { -adv * rho };
        let grads = loss.loss.backward();
        let got_loss = host(loss.loss)[0];
        let got_grad = host(x.grad(&grads).unwrap())[0];
        prop_assert!(close(got_loss, want_loss, 1e-12), "loss {got_loss} vs {want_loss}");
        prop_assert!(close(got_grad, want_grad, 1e-12), "grad {got_grad} vs {want_grad}");
    }

    /// Dual clip: for A < 0 the per-token loss is `min(max(-A rho, -A clip(rho)), -c A)`; its
    /// gradient is 0 once `-A rho` exceeds the cap.
    #[test]
    fn dual_clip_gradient(logp in -3.0f64..0.0, delta in -0.5f64..2.0, adv in -3.0f64..-0.05, c in 1.5f64..4.0) {
        let rho = delta.exp();
        prop_assume!((rho - c).abs() > 1e-6 && (rho - 1.2).abs() > 1e-6);
        let x = t2(vec![logp], [1, 1]).require_grad();
        let loss = PpoLossConfig::new()
            .with_dual_clip(Some(c))
            .with_normalizer(Normalizer::Sum)
            .init()
            .forward(PpoLossInput::new(x.clone(), t2(vec![logp - delta], [1, 1]), t2(vec![adv], [1, 1])));
        // A < 0: the clip is active below 1 - 0.2; unclipped -A rho otherwise, capped at -c A.
        let (want_loss, want_grad) = if rho < 0.8 {
            (-adv * 0.8, 0.0)
        } else if rho > c {
            (-c * adv, 0.0)
        } else {
            (-adv * rho, -adv * rho)
        };
        let grads = loss.loss.backward();
        prop_assert!(close(host(loss.loss)[0], want_loss, 1e-12));
        prop_assert!(close(host(x.grad(&grads).unwrap())[0], want_grad, 1e-12));
    }

    /// Value loss `0.5 max((v-R)^2, (clip(v, v_old +- c) - R)^2)`: gradient `v - R` when the
    /// unclipped square wins or v is inside the range, else 0.
    #[test]
    fn clipped_value_loss_gradient(v in -3.0f64..3.0, v_old in -3.0f64..3.0, ret in -3.0f64..3.0, c in 0.05f64..1.0) {
        let vc = v.clamp(v_old - c, v_old + c);
        let (u, k) = ((v - ret).powi(2), (vc - ret).powi(2));
        prop_assume!((u - k).abs() > 1e-9 || vc == v);
        prop_assume!((v - (v_old - c)).abs() > 1e-9 && (v - (v_old + c)).abs() > 1e-9);
        let values = t2(vec![v], [1, 1]).require_grad();
        let zero = t2(vec![0.0], [1, 1]);
        let out = PpoLossConfig::new()
            .with_value_clip_range(c)
            .with_vf_coef(1.0)
            .with_normalizer(Normalizer::Sum)
            .init()
            .forward(
                PpoLossInput::new(zero.clone(), zero.clone(), zero)
                    .with_values(values.clone(), t2(vec![v_old], [1, 1]), t2(vec![ret], [1, 1])),
            );
        let want_loss = 0.5 * u.max(k);
        let want_grad = if u >= k || vc == v { v - ret } else { 0.0 };
        let grads = out.loss.backward();
        prop_assert!(close(host(out.loss)[0], want_loss, 1e-12));
        prop_assert!(close(host(values.grad(&grads).unwrap())[0], want_grad, 1e-12));
    }

    /// k1 = logp - ref (d/dlogp = 1), k2 = (logp - ref)^2 / 2 (d = logp - ref),
    /// k3 = e^(ref-logp) - (ref - logp) - 1 (d = 1 - e^(ref-logp)).
    #[test]
    fn kl_estimator_gradients(logp in -5.0f64..0.0, reference in -5.0f64..0.0) {
        let d = logp - reference;
        let cases = [
            (KlEstimator::K1, d, 1.0),
            (KlEstimator::K2, 0.5 * d * d, d),
            (KlEstimator::K3, (-d).exp() + d - 1.0, 1.0 - (-d).exp()),
            (KlEstimator::Abs, d.abs(), d.signum()),
        ];
        for (estimator, want, want_grad) in cases {
            if estimator == KlEstimator::Abs && d.abs() < 1e-9 {
                continue;
            }
            let x = t1(vec![logp]).require_grad();
            let kl = kl_estimate(x.clone(), t1(vec![reference]), estimator);
            let grads = kl.clone().sum().backward();
            prop_assert!(close(host(kl)[0], want, 1e-12), "{estimator:?} value");
            prop_assert!(close(host(x.grad(&grads).unwrap())[0], want_grad, 1e-12), "{estimator:?} grad");
        }
    }

    /// GAE equals the written-out backward recursion (mask ignored, no whitening), including
    /// lengths that span several 128-column scan blocks.
    #[test]
    fn gae_matches_recursion(
        (t, rewards, values) in (1usize..300).prop_flat_map(|t| (
            Just(t),
            proptest::collection::vec(-2.0f64..2.0, 2 * t),
            proptest::collection::vec(-2.0f64..2.0, 2 * t),
        )),
        gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0,
    ) {
        let gae = GaeConfig::new()
            .with_gamma(gamma)
            .with_lam(lam)
            .with_masking(GaeMasking::IgnoreMask)
            .with_whitening(Whitening::None)
            .init();
        let out = gae.forward(t2(rewards.clone(), [2, t]), t2(values.clone(), [2, t]), None);
        let (adv, ret) = (host(out.advantages), host(out.returns));
        for row in 0..2 {
            let mut last = 0.0;
            for k in (0..t).rev() {
                let i = row * t + k;
                let next = if k + 1 < t { values[i + 1] } else { 0.0 };
                last = rewards[i] + gamma * next - values[i] + gamma * lam * last;
                prop_assert!(close(adv[i], last, 1e-9), "adv[{row},{k}] {} vs {last}", adv[i]);
                prop_assert!(close(ret[i], last + values[i], 1e-9));
            }
        }
    }

    /// Group advantages `(r - mean_g) / (std_g + 1e-4)` with Bessel-corrected std.
    #[test]
    fn group_advantages_closed_form(rewards in proptest::collection::vec(-3.0f64..3.0, 8)) {
        let out = GroupAdvantageConfig::new()
            .with_num_generations(4)
            .with_scale_rewards(ScaleRewards::Group)
            .forward(t2(rewards.clone(), [8, 1]));
        let adv = host(out.advantages);
        for g in rewards.chunks(4).enumerate() {
            let mean = g.1.iter().sum::<f64>() / 4.0;
            let std = (g.1.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
            for (j, x) in g.1.iter().enumerate() {
                prop_assert!(close(adv[g.0 * 4 + j], (x - mean) / (std + 1e-4), 1e-9));
            }
        }
    }

    /// With `GlobalTokens(total)` the gradients of micro-batch losses (rows split at `split`)
    /// concatenate to the whole-batch gradient, for PPO and GRPO, whatever the per-row token
    /// counts; the losses sum to the whole loss.
    #[test]
    fn global_normalizer_is_microbatch_invariant(
        data in proptest::collection::vec((-3.0f64..0.0, -0.5f64..0.5, -2.0f64..2.0, proptest::bool::weighted(0.7)), 24),
        split in 1usize..4,
    ) {
        let (b, t) = (4, 6);
        let logp: Vec<f64> = data.iter().map(|d| d.0).collect();
        let old: Vec<f64> = data.iter().map(|d| d.0 - d.1).collect();
        let adv: Vec<f64> = data.iter().map(|d| d.2).collect();
        let m: Vec<bool> = data.iter().map(|d| d.3).collect();
        let total = m.iter().filter(|&&x| x).count() as f64;
        prop_assume!(total > 0.0);
        let normalizer = Normalizer::GlobalTokens(total);
        let ppo = PpoLossConfig::new().with_epsilon(0.2).init().with_normalizer(normalizer);
        let grpo = GrpoLossConfig::new().with_loss_type(GrpoLossType::Grpo).with_normalizer(Some(normalizer)).init();
        let run = |rows: std::ops::Range<usize>, which: u8| -> (f64, Vec<f64>) {
            let r = rows.len();
            let s = rows.start * t..rows.end * t;
            let x = t2(logp[s.clone()].to_vec(), [r, t]).require_grad();
            let o = t2(old[s.clone()].to_vec(), [r, t]);
            let mk = mask(m[s.clone()].to_vec(), [r, t]);
            let out = if which == 0 {
                ppo.forward(PpoLossInput::new(x.clone(), o, t2(adv[s].to_vec(), [r, t])).with_mask(mk))
            } else {
                let a = t2((rows.clone()).map(|i| adv[i * t]).collect(), [r, 1]);
                grpo.forward(GrpoLossInput::with_token_advantages(x.clone(), mk, a).with_old_logps(o))
            };
            let grads = out.loss.backward();
            (host(out.loss)[0], host(x.grad(&grads).unwrap()))
        };
        for which in [0u8, 1] {
            let (whole_loss, whole_grad) = run(0..b, which);
            let (l1, g1) = run(0..split, which);
            let (l2, g2) = run(split..b, which);
            prop_assert!(close(l1 + l2, whole_loss, 1e-12));
            let parts: Vec<f64> = g1.into_iter().chain(g2).collect();
            for (p, w) in parts.iter().zip(&whole_grad) {
                prop_assert!(close(*p, *w, 1e-12), "grad {p} vs {w}");
            }
        }
    }
}

/// A linear "policy" for the step test: log-probs = x @ w (any differentiable map will do).
#[derive(Module, Debug)]
struct Linear1 {
    w: Param<Tensor<2>>,
}

/// `ppo_update` with 1 or 2 (or 4) micro-batches per minibatch takes the same SGD step: the
/// step normalizes every micro-batch by the minibatch's global token count and sums gradients.
#[test]
fn ppo_update_gradient_accumulation_is_exact() {
    let device = dev();
    let (b, t, f) = (4, 5, 3);
    let mut rng = Rng(1);
    let mut next = || (rng.next_u64() % 10_000) as f64 / 10_000.0 - 0.5;
    let feats: Vec<f64> = (0..b * t * f).map(|_| next()).collect();
    let w0: Vec<f64> = (0..f).map(|_| next()).collect();
    let adv: Vec<f64> = (0..b * t).map(|_| next() * 2.0).collect();
    let old: Vec<f64> = (0..b * t).map(|_| next() * 0.1 - 1.0).collect();
    let mask_v: Vec<bool> = (0..b * t).map(|i| i % 7 != 3 && i % 5 != 4).collect();
    let x = Tensor::<3>::from_data(TensorData::new(feats, [b, t, f]), (&device, DType::F64));
    let rows = Tensor::<2, Int>::from_data(
        TensorData::new((0..b as i64).collect::<Vec<_>>(), [b, 1]),
        &device,
    );
    let rollout = Rollout::new(rows, mask(mask_v, [b, t]), t2(old, [b, t]), t2(adv, [b, t]));
    let loss = PpoLossConfig::new().init();
    let run = |gas: usize| -> (Vec<f64>, BTreeMap<String, f64>) {
        let model = Linear1 {
            w: Param::from_tensor(t2(w0.clone(), [f, 1])),
        };
        let mut optim = SgdConfig::new().init();
        let config = PpoStepConfig::new()
            .with_epochs(1)
            .with_num_minibatches(1)
            .with_gradient_accumulation_steps(gas)
            .with_learning_rate(0.5)
            .with_max_grad_norm(None);
        let (model, stats) = ppo_update(
            model,
            &mut optim,
            &config,
            &rollout,
            &loss,
            |m: &Linear1, batch| {
                let idx: Vec<i64> = batch
                    .tokens
                    .clone()
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec()
                    .unwrap();
                let n = idx.len();
                let sel = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device);
                let xb = x.clone().select(0, sel).reshape([n * t, f]);
                PolicyOutput::new(xb.matmul(m.w.val()).reshape([n, t]))
            },
        );
        assert_eq!(stats.optimizer_steps, 1);
        (host(model.w.val()), stats.metrics)
    };
    let (base, base_metrics) = run(1);
    for gas in [2, 4] {
        let (other, metrics) = run(gas);
        for (a, e) in other.iter().zip(&base) {
            assert!(close(*a, *e, 1e-12), "gas {gas}: {a} vs {e}");
        }
        // Issue 23: the reported loss terms are the minibatch's values (the sum of the
        // micro-batch shares), not a share divided by the number of micro-batches.
        for key in ["loss", "policy_loss"] {
            assert!(
                close(metrics[key], base_metrics[key], 1e-12),
                "gas {gas}: {key} {} vs {}",
                metrics[key],
                base_metrics[key]
            );
        }
    }
    assert!(
        base.iter().zip(&w0).any(|(a, b)| (a - b).abs() > 1e-6),
        "the step moved the weights"
    );
}

/// Issue 23: the gradient norm of f16 gradients is accumulated in f32 (torch's
/// `vector_norm`): a norm of 600 (squares up to 3.6e5, past f16's 65504) is finite and right.
#[test]
fn clip_grad_norm_of_f16_gradients_does_not_overflow() {
    use burn::optim::GradientsParams;
    use burn_rlhf::rl::clip_grad_norm;
    let device = dev().autodiff();
    let model = Linear1 {
        w: Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32; 4], [4, 1]),
            (&device, DType::F16),
        )),
    };
    // loss = sum(w * c) with c = 300: each gradient entry is 300, the norm 600.
    let c = Tensor::<2>::from_data(
        TensorData::new(vec![300.0f32; 4], [4, 1]),
        (&device, DType::F16),
    );
    let loss = (model.w.val() * c).sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let norm = clip_grad_norm(&model, &mut grads, 1.0);
    assert!((norm - 600.0).abs() < 1.0, "norm {norm}");
}
