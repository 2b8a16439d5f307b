//! Reliability classes (issue "every try_ form returns"): one test per defect class, each
//! covering every entry point of the class rather than a single instance.
//!
//! 1. Finite inputs never give a NaN/inf gradient (importance ratios whose `exp` overflows,
//!    `MeanEps` with an `eps` that underflows, the k3 KL) in f32 and f16.
//! 2. `try_` forms return `Err` instead of unwinding: mixed float dtypes, non-finite token
//!    log-probs in checked mode, Bool masks stored as `U8` (what `Tensor::select` returns on
//!    flex) work everywhere and give the same result as a native mask.
//! 3. Checked mode covers the reward loss, the heads, `Normalizer`, the NLL term and WPO
//!    inputs, and can be scoped to one thread.
//! 4. Invalid configs are rejected at construction.
//! 5. Free functions have `try_` forms whose errors name the caller's argument.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor, TensorData};
use burn_rlhf::heads::{RewardHeadConfig, ValueHeadConfig};
use burn_rlhf::logps::FusedLogpsConfig;
use burn_rlhf::logps::{GatheredLogps, SequenceReduction};
use burn_rlhf::losses::{
    BcoLossConfig, BradleyTerryLossConfig, CpoLossConfig, DpoLossConfig, DpoLossType,
    KtoLossConfig, OrpoLossConfig, PreferenceBatch, UnpairedBatch, try_kto_kl_estimate,
};
use burn_rlhf::rl::{
    GaeConfig, GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType, KlEstimator,
    KlPenaltyConfig, PpoLossConfig, PpoLossInput, PpoStepConfig, RlooAdvantageConfig,
    RlooLossConfig, Whitening, try_clip_grad_norm, try_discounted_returns, try_kl_estimate,
    try_masked_mean, try_whiten,
};
use burn_rlhf::{Error, Normalizer, checked_mode, with_checked_mode};

fn dev() -> Device {
    Device::flex()
}

fn f32_2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

fn typed<const D: usize>(values: Vec<f64>, shape: [usize; D], dtype: FloatDType) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (&dev(), DType::from(dtype)))
}

fn mask2(values: Vec<bool>, shape: [usize; 2]) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(values, shape), &dev())
}

/// The same mask stored as `U8` (flex's `select` on a Bool tensor returns that storage).
fn u8_mask<const D: usize>(mask: Tensor<D, Bool>) -> Tensor<D, Bool> {
    let rows = mask.dims()[0];
    let index = Tensor::<1, Int>::from_data(
        TensorData::new((0..rows as i64).collect::<Vec<_>>(), [rows]),
        &mask.device(),
    );
    let selected = mask.select(0, index);
    assert_eq!(
        selected.dtype(),
        DType::U8,
        "flex select no longer returns U8"
    );
    selected
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

// ---------------------------------------------------------------------------------------------
// 1. Finite inputs -> finite gradients
// ---------------------------------------------------------------------------------------------

/// Log-probs whose ratio to `old` is `e^{±100}` (overflows f32's `exp` at ~88.7) next to
/// ordinary ones.
fn extreme_pair(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let logps = f32_2(vec![-1.0, -2.0, -0.5, -3.0], [2, 2], device).require_grad();
    let old = f32_2(vec![-101.0, -2.1, 99.5, -3.0], [2, 2], device);
    (logps, old)
}

#[test]
fn importance_ratios_have_finite_gradients_for_every_rl_loss() {
    let device = dev().autodiff();
    // PPO (plain, dual clip), both advantage signs.
    for dual_clip in [None, Some(3.0)] {
        for sign in [1.0f32, -1.0] {
            let (logps, old) = extreme_pair(&device);
            let adv = f32_2(vec![sign, -sign, sign, 0.5], [2, 2], &device);
            let loss = PpoLossConfig::new()
                .with_dual_clip(dual_clip)
                .init()
                .forward(PpoLossInput::new(logps.clone(), old, adv));
            let grads = loss.loss.backward();
            let g = host(logps.grad(&grads).unwrap());
            assert!(
                all_finite(&g),
                "PPO dual_clip {dual_clip:?} sign {sign}: {g:?}"
            );
            assert!(all_finite(&host(loss.loss)));
        }
    }
    // Every GRPO loss type, token and sequence ratios, with the KL term on.
    let types = [
        GrpoLossType::Grpo,
        GrpoLossType::Bnpo,
        GrpoLossType::DrGrpo,
        GrpoLossType::Dapo,
        GrpoLossType::Cispo,
        GrpoLossType::Sapo,
        GrpoLossType::Luspo,
        GrpoLossType::Vespo,
    ];
    for loss_type in types {
        for sign in [1.0f32, -1.0] {
            let (logps, old) = extreme_pair(&device);
            let reference = f32_2(vec![-90.0, -2.0, 80.0, -3.0], [2, 2], &device);
            let adv = Tensor::<1>::from_data(TensorData::new(vec![sign, -sign], [2]), &device);
            let input = GrpoLossInput::new(logps.clone(), mask2(vec![true; 4], [2, 2]), adv)
                .with_old_logps(old)
                .with_ref_logps(reference)
                .with_num_items_in_batch(4.0);
            let out = GrpoLossConfig::new()
                .with_loss_type(loss_type)
                .with_beta(0.04)
                .init()
                .forward(input);
            let grads = out.loss.backward();
            let g = host(logps.grad(&grads).unwrap());
            assert!(all_finite(&g), "GRPO {loss_type:?} sign {sign}: {g:?}");
            assert!(all_finite(&host(out.loss)), "GRPO {loss_type:?} loss");
        }
    }
    // RLOO (sequence ratio).
    let (logps, _) = extreme_pair(&device);
    let old = Tensor::<1>::from_data(TensorData::new(vec![-200.0f32, 150.0], [2]), &device);
    let adv = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, -1.0], [2]), &device);
    let out = RlooLossConfig::new().init().forward(
        logps.clone(),
        mask2(vec![true; 4], [2, 2]),
        old,
        adv,
        None,
    );
    let grads = out.loss.backward();
    assert!(all_finite(&host(logps.grad(&grads).unwrap())), "RLOO");
}

/// Inside the bound the ratio's gradient is exactly the closed form: PPO with one token,
/// `A = 1`, ratio `e^{0.05}` inside the clip range: `d(-r A)/d logp = -r`.
#[test]
fn bounded_ratio_keeps_the_exact_gradient_inside_the_bound() {
    let device = dev().autodiff();
    let logps = f32_2(vec![-1.0], [1, 1], &device).require_grad();
    let old = f32_2(vec![-1.05], [1, 1], &device);
    let adv = f32_2(vec![1.0], [1, 1], &device);
    let out = PpoLossConfig::new()
        .init()
        .forward(PpoLossInput::new(logps.clone(), old, adv));
    let g = host(logps.grad(&out.loss.backward()).unwrap());
    let want = -(0.05f64).exp();
    assert!((g[0] - want).abs() < 1e-6, "{} vs {want}", g[0]);
}

#[test]
fn half_precision_log_ratios_do_not_overflow() {
    // e^{12} overflows f16 (max 65504); the RL losses upcast half inputs to f32. With a
    // positive advantage the clipped branch wins, so the true gradient is 0 (before: 0 * inf).
    // (With a negative advantage the true gradient, -A e^{12} = 1.6e5, is itself outside
    // f16's range: no implementation can return it in the input dtype.)
    let device = dev().autodiff();
    let half =
        |v: Vec<f64>| Tensor::<2>::from_data(TensorData::new(v, [1, 2]), (&device, DType::F16));
    let logps = half(vec![-1.0, -2.0]).require_grad();
    let old = half(vec![-13.0, -2.0]);
    let adv = half(vec![1.0, -1.0]);
    let out = PpoLossConfig::new()
        .init()
        .forward(PpoLossInput::new(logps.clone(), old, adv));
    let g = host(logps.grad(&out.loss.backward()).unwrap());
    assert!(all_finite(&g), "{g:?}");
    assert_eq!(g[0], 0.0, "clipped branch: no gradient");
    // Second token: ratio 1, A = -1, token mean over 2: d(-r A / 2)/d logp = 0.5.
    assert!((g[1] - 0.5).abs() < 1e-3, "{g:?}");
    assert!(all_finite(&host(out.loss)));
}

#[test]
fn mean_eps_underflowing_eps_gives_zero_not_nan() {
    let device = dev().autodiff();
    // Row 1 has no valid token; eps = 1e-50 is 0 in f32 (and 1e-8 is 0 in f16).
    for (dtype, eps) in [(FloatDType::F32, 1e-50), (FloatDType::F16, 1e-8)] {
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![-1.0, -3.0, -2.0, -4.0], [2, 2]),
            (&device, DType::from(dtype)),
        )
        .require_grad();
        let mask = mask2(vec![true, true, false, false], [2, 2]);
        let out = SequenceReduction::MeanEps(eps).reduce(x.clone(), mask);
        let v = host(out.clone());
        assert!(all_finite(&v), "{dtype:?}: {v:?}");
        assert_eq!(v[1], 0.0);
        assert!((v[0] + 2.0).abs() < 1e-3, "{v:?}");
        let g = host(x.grad(&out.sum().backward()).unwrap());
        assert!(all_finite(&g), "{dtype:?}: {g:?}");
        assert_eq!(&g[2..], &[0.0, 0.0]);
    }
}

#[test]
fn k3_kl_is_finite_for_large_log_ratios() {
    let device = dev().autodiff();
    let logps = f32_2(vec![-100.0, -1.0], [1, 2], &device).require_grad();
    let reference = f32_2(vec![-1.0, -100.0], [1, 2], &device);
    let kl = try_kl_estimate(logps.clone(), reference, KlEstimator::K3).unwrap();
    assert!(all_finite(&host(kl.clone())));
    let g = host(logps.grad(&kl.sum().backward()).unwrap());
    assert!(all_finite(&g), "{g:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. try_ forms return Err: mixed dtypes, checked mode inside builders, U8 masks
// ---------------------------------------------------------------------------------------------

#[test]
fn mixed_float_dtypes_are_errors_not_panics() {
    let f32v = |n| typed::<1>(vec![-1.0; n], [n], FloatDType::F32);
    let f64v = |n| typed::<1>(vec![-1.0; n], [n], FloatDType::F64);
    let f32m = |s: [usize; 2]| typed::<2>(vec![-1.0; s[0] * s[1]], s, FloatDType::F32);
    let f64m = |s: [usize; 2]| typed::<2>(vec![-1.0; s[0] * s[1]], s, FloatDType::F64);
    let mut n = 0;
    let mut expect = |r: Result<(), Error>, arg: &str| {
        match r {
            Err(Error::DType { arg: a, .. }) => assert_eq!(a, arg),
            other => panic!("expected a dtype error naming `{arg}`, got {other:?}"),
        }
        n += 1;
    };
    // DPO with f64 reference log-probs and an f32 policy.
    let batch = PreferenceBatch::new(f32v(2), f32v(2)).with_ref_logps(f64v(2), f64v(2));
    expect(
        DpoLossConfig::new().init().try_forward(&batch).map(drop),
        "ref_chosen_logps",
    );
    expect(
        CpoLossConfig::new()
            .with_cpo_alpha(0.0)
            .init()
            .try_pair_terms(f32v(2), f64v(2))
            .map(drop),
        "rejected_logps",
    );
    expect(
        OrpoLossConfig::new()
            .init()
            .try_odds_ratio(f32v(2), f64v(2))
            .map(drop),
        "rejected_logps",
    );
    let flags = Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &dev());
    let unpaired = UnpairedBatch::new(f32v(2), f64v(2), flags.clone());
    expect(
        KtoLossConfig::new()
            .with_loss_type(burn_rlhf::losses::KtoLossType::ApoZeroUnpaired)
            .init()
            .try_forward(&unpaired)
            .map(drop),
        "ref_logps",
    );
    expect(
        try_kto_kl_estimate(f32v(2), f64v(2)).map(drop),
        "ref_kl_logps",
    );
    expect(
        BradleyTerryLossConfig::new()
            .init()
            .try_forward(f32v(2), f64v(2), None)
            .map(drop),
        "rewards_rejected",
    );
    // RL: f64 rewards with f32 values, f64 reference with f32 policy.
    expect(
        GaeConfig::new()
            .init()
            .try_forward(f64m([1, 3]), f32m([1, 3]), None)
            .map(drop),
        "values",
    );
    expect(
        PpoLossConfig::new()
            .init()
            .try_forward(PpoLossInput::new(f32m([1, 2]), f64m([1, 2]), f32m([1, 2])))
            .map(drop),
        "old_logps",
    );
    expect(
        GrpoLossConfig::new()
            .with_loss_type(GrpoLossType::Grpo)
            .with_beta(0.1)
            .init()
            .try_forward(
                GrpoLossInput::new(f32m([1, 2]), mask2(vec![true; 2], [1, 2]), f32v(1))
                    .with_ref_logps(f64m([1, 2])),
            )
            .map(drop),
        "ref_logps",
    );
    expect(
        RlooLossConfig::new()
            .init()
            .try_forward(
                f32m([2, 2]),
                mask2(vec![true; 4], [2, 2]),
                f64v(2),
                f32v(2),
                None,
            )
            .map(drop),
        "old_logps",
    );
    expect(
        KlPenaltyConfig::new()
            .init()
            .try_forward(f32v(1), f32m([1, 2]), f64m([1, 2]), None, None)
            .map(drop),
        "ref_logps",
    );
    expect(
        try_kl_estimate(f32m([1, 2]), f64m([1, 2]), KlEstimator::K1).map(drop),
        "ref_logps",
    );
    // The fused LM-head op with an f64 weight and f32 hidden states.
    let hidden = typed::<3>(vec![0.1; 2 * 3 * 4], [2, 3, 4], FloatDType::F32);
    let weight = typed::<2>(vec![0.1; 5 * 4], [5, 4], FloatDType::F64);
    let labels = Tensor::<2, Int>::zeros([2, 3], &dev());
    expect(
        FusedLogpsConfig::new()
            .init()
            .try_forward_causal(hidden, weight, None, labels)
            .map(drop),
        "weight",
    );
    println!("mixed dtypes: {n} cases");
}

#[test]
fn builders_in_checked_mode_return_non_finite_errors() {
    with_checked_mode(true, || {
        let logps = typed::<2>(vec![-1.0, f64::NAN, -2.0, -1.0], [2, 2], FloatDType::F32);
        let mask = mask2(vec![true; 4], [2, 2]);
        let bad = GatheredLogps {
            logps,
            mask: mask.clone(),
        };
        let good = GatheredLogps {
            logps: typed::<2>(vec![-1.0; 4], [2, 2], FloatDType::F32),
            mask,
        };
        let err = PreferenceBatch::try_from_tokens(bad.clone(), good.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    arg: "chosen_tokens.logps"
                }
            ),
            "{err}"
        );
        let err = PreferenceBatch::try_from_tokens(good, bad.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    arg: "rejected_tokens.logps"
                }
            ),
            "{err}"
        );
        let flags = Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &dev());
        let reference = typed::<1>(vec![-1.0; 2], [2], FloatDType::F32);
        let err = UnpairedBatch::try_from_tokens(&bad, reference, flags).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    arg: "tokens.logps"
                }
            ),
            "{err}"
        );
    });
}

/// Every masked entry point accepts a `U8`-stored mask and gives the native mask's result.
#[test]
fn u8_stored_masks_work_at_every_masked_entry_point() {
    let device = dev();
    let native = mask2(vec![true, true, false, true, false, false], [2, 3]);
    let x = || {
        typed::<2>(
            vec![-1.0, -2.0, -3.0, -0.5, -0.25, -4.0],
            [2, 3],
            FloatDType::F32,
        )
    };
    let same = |what: &str, a: Vec<f64>, b: Vec<f64>| assert_eq!(a, b, "{what}");
    let both = |f: &dyn Fn(Tensor<2, Bool>) -> Vec<f64>, what: &str| {
        same(what, f(native.clone()), f(u8_mask(native.clone())));
    };
    both(
        &|m| host(Normalizer::TokenMean.reduce_tokens(x(), m)),
        "Normalizer",
    );
    both(
        &|m| host(SequenceReduction::Mean.reduce(x(), m)),
        "SequenceReduction",
    );
    both(
        &|m| host(SequenceReduction::MeanEps(1e-8).reduce(x(), m)),
        "MeanEps",
    );
    both(
        &|m| host(try_masked_mean(x(), m, None).unwrap()),
        "masked_mean",
    );
    both(
        &|m| host(try_whiten(x(), Some(m), Whitening::ZeroMean).unwrap()),
        "whiten",
    );
    both(
        &|m| host(try_discounted_returns(x(), m, 0.9).unwrap()),
        "discounted_returns",
    );
    both(
        &|m| {
            host(
                GaeConfig::new()
                    .init()
                    .forward(x(), x(), Some(m))
                    .advantages,
            )
        },
        "GAE",
    );
    both(
        &|m| {
            host(
                PpoLossConfig::new()
                    .init()
                    .forward(PpoLossInput::new(x(), x().sub_scalar(0.1), x()).with_mask(m))
                    .loss,
            )
        },
        "PPO",
    );
    both(
        &|m| {
            let adv = typed::<1>(vec![1.0, -1.0], [2], FloatDType::F32);
            host(
                GrpoLossConfig::new()
                    .with_loss_type(GrpoLossType::Grpo)
                    .init()
                    .forward(GrpoLossInput::new(x(), m, adv).with_old_logps(x()))
                    .loss,
            )
        },
        "GRPO",
    );
    both(
        &|m| {
            let v = |a: f64, b: f64| typed::<1>(vec![a, b], [2], FloatDType::F32);
            host(
                RlooLossConfig::new()
                    .init()
                    .forward(x(), m, v(-1.0, -2.0), v(1.0, -1.0), None)
                    .loss,
            )
        },
        "RLOO",
    );
    both(
        &|m| {
            let scores = typed::<1>(vec![1.0, 0.5], [2], FloatDType::F32);
            host(
                KlPenaltyConfig::new()
                    .init()
                    .forward(scores, x(), x().sub_scalar(0.2), Some(m), None)
                    .rewards,
            )
        },
        "KlPenalty",
    );
    both(
        &|m| {
            let tokens = GatheredLogps {
                logps: x(),
                mask: m,
            };
            let batch = PreferenceBatch::from_tokens(tokens.clone(), tokens);
            host(DpoLossConfig::rpo(1.0).init().forward(&batch).loss)
        },
        "DPO + sft",
    );
    let hidden = || {
        typed::<3>(
            (0..24).map(|i| i as f64 * 0.1).collect(),
            [2, 3, 4],
            FloatDType::F32,
        )
    };
    let head = RewardHeadConfig::new(4).init(&device);
    both(&|m| host(head.forward(hidden(), m)), "RewardHead");
    let value = ValueHeadConfig::new(4).init(&device);
    both(&|m| host(value.forward_masked(hidden(), m)), "ValueHead");
    // The KTO desirable flags: a [B] Bool selected from a larger one.
    let flags = Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &device);
    let kto = |d: Tensor<1, Bool>| {
        let l = typed::<1>(vec![-1.0, -2.0], [2], FloatDType::F32);
        let kl = typed::<1>(vec![0.1], [1], FloatDType::F32);
        host(
            KtoLossConfig::new()
                .init()
                .forward(&UnpairedBatch::new(l.clone(), l.sub_scalar(0.5), d).with_kl(kl))
                .loss,
        )
    };
    same("KTO", kto(flags.clone()), kto(u8_mask(flags)));
}

// ---------------------------------------------------------------------------------------------
// 3. Checked mode everywhere, and scoped
// ---------------------------------------------------------------------------------------------

#[test]
fn checked_mode_covers_reward_loss_heads_normalizer_nll_and_wpo() {
    let device = dev();
    let nan1 = || typed::<1>(vec![1.0, f64::NAN], [2], FloatDType::F32);
    let ok1 = || typed::<1>(vec![1.0, 0.5], [2], FloatDType::F32);
    let nan2 = || typed::<2>(vec![-1.0, f64::NAN, -1.0, -1.0], [2, 2], FloatDType::F32);
    let ok2 = || typed::<2>(vec![-1.0; 4], [2, 2], FloatDType::F32);
    let all = || mask2(vec![true; 4], [2, 2]);
    let non_finite = |r: Result<(), Error>, arg: &str| match r {
        Err(Error::NonFinite { arg: a }) => assert_eq!(a, arg),
        other => panic!("expected NonFinite naming `{arg}`, got {other:?}"),
    };
    with_checked_mode(true, || {
        let bt = BradleyTerryLossConfig::new().init();
        non_finite(
            bt.try_forward(nan1(), ok1(), None).map(drop),
            "rewards_chosen",
        );
        non_finite(
            bt.try_forward(ok1(), ok1(), Some(nan1())).map(drop),
            "margin",
        );
        let hidden = typed::<3>(vec![f64::NAN; 2 * 2 * 4], [2, 2, 4], FloatDType::F32);
        let head = RewardHeadConfig::new(4).init(&device);
        non_finite(head.try_forward(hidden.clone(), all()).map(drop), "hidden");
        let value = ValueHeadConfig::new(4).init(&device);
        non_finite(value.try_forward(hidden, None).map(drop), "hidden");
        non_finite(
            Normalizer::TokenMean
                .try_reduce_tokens(nan2(), all())
                .map(drop),
            "terms",
        );
        non_finite(
            Normalizer::Sum.try_reduce_sequences(nan1()).map(drop),
            "terms",
        );
        // NLL term: non-finite nll_tokens.
        let tokens = |t: Tensor<2>| GatheredLogps {
            logps: t,
            mask: all(),
        };
        let batch = PreferenceBatch::new(ok1(), ok1()).with_nll_tokens(tokens(nan2()));
        let cpo = CpoLossConfig::new().init();
        non_finite(cpo.try_forward(&batch).map(drop), "nll_tokens");
        // WPO inputs.
        let batch = PreferenceBatch::from_tokens(tokens(ok2()), tokens(ok2()))
            .with_ref_logps(ok1(), ok1())
            .with_log_sum_sq_probs(nan2(), ok2());
        let wpo = DpoLossConfig::new().with_use_weighting(true).init();
        non_finite(wpo.try_forward(&batch).map(drop), "chosen_log_sum_sq_probs");
        // A masked-out NaN is not an error (masked positions are never read).
        let masked_nan = mask2(vec![true, false, true, true], [2, 2]);
        assert!(
            Normalizer::TokenMean
                .try_reduce_tokens(nan2(), masked_nan)
                .is_ok()
        );
    });
}

#[test]
fn checked_mode_can_be_scoped_to_one_thread() {
    let default = checked_mode();
    with_checked_mode(true, || {
        assert!(checked_mode());
        // Another thread keeps the process default while this one is checked.
        let other = std::thread::spawn(checked_mode).join().unwrap();
        assert_eq!(other, default);
        with_checked_mode(false, || assert!(!checked_mode()));
        assert!(checked_mode(), "the outer scope is restored");
    });
    assert_eq!(checked_mode(), default);
    // Restored after a panic too.
    let _ = std::panic::catch_unwind(|| with_checked_mode(true, || panic!("boom")));
    assert_eq!(checked_mode(), default);
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid configs rejected at construction
// ---------------------------------------------------------------------------------------------

#[test]
fn per_token_normalizers_are_rejected_at_init_by_every_sequence_loss() {
    for n in [Normalizer::TokenMean, Normalizer::GlobalTokens(8.0)] {
        let is_kind = |r: Result<(), Error>, what: &str| {
            assert!(
                matches!(r, Err(Error::NormalizerKind { .. })),
                "{what} with {n:?}: {r:?}"
            )
        };
        is_kind(
            DpoLossConfig::new().with_normalizer(n).try_init().map(drop),
            "DPO",
        );
        is_kind(
            CpoLossConfig::new().with_normalizer(n).try_init().map(drop),
            "CPO",
        );
        is_kind(
            OrpoLossConfig::new()
                .with_normalizer(n)
                .try_init()
                .map(drop),
            "ORPO",
        );
        is_kind(
            KtoLossConfig::new().with_normalizer(n).try_init().map(drop),
            "KTO",
        );
        is_kind(
            BcoLossConfig::new().with_normalizer(n).try_init().map(drop),
            "BCO",
        );
        is_kind(
            BradleyTerryLossConfig::new()
                .with_normalizer(n)
                .try_init()
                .map(drop),
            "BT",
        );
        is_kind(
            RlooLossConfig::new()
                .with_normalizer(n)
                .try_init()
                .map(drop),
            "RLOO",
        );
    }
}

#[test]
fn step_and_advantage_configs_are_validated_at_construction() {
    let config_err = |r: Result<(), Error>, field: &str| match r {
        Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a config error naming `{field}`, got {other:?}"),
    };
    config_err(
        PpoStepConfig::new()
            .with_target_kl(Some(f64::NAN))
            .validate(),
        "target_kl",
    );
    config_err(
        PpoStepConfig::new().with_target_kl(Some(-1.0)).validate(),
        "target_kl",
    );
    config_err(PpoStepConfig::new().with_epochs(0).validate(), "epochs");
    config_err(
        GroupAdvantageConfig::new()
            .with_num_generations(0)
            .try_init()
            .map(drop),
        "num_generations",
    );
    config_err(
        GroupAdvantageConfig::new()
            .with_reward_weights(Some(vec![f64::INFINITY]))
            .try_init()
            .map(drop),
        "reward_weights",
    );
    config_err(
        RlooAdvantageConfig::new()
            .with_num_generations(1)
            .try_init()
            .map(drop),
        "num_generations",
    );
    config_err(
        RlooAdvantageConfig::new()
            .with_beta(f64::NAN)
            .try_init()
            .map(drop),
        "beta",
    );
    config_err(
        RlooAdvantageConfig::new()
            .with_reward_clip_range(Some([1.0, -1.0]))
            .try_init()
            .map(drop),
        "reward_clip_range",
    );
    assert!(GroupAdvantageConfig::new().try_init().is_ok());
    assert!(RlooAdvantageConfig::new().try_init().is_ok());
}

#[derive(Module, Debug)]
struct Tiny {
    weight: Param<Tensor<1>>,
}

#[test]
fn clip_grad_norm_rejects_a_non_positive_max_norm() {
    let device = dev().autodiff();
    let model = Tiny {
        weight: Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(vec![3.0f32, 4.0], [2]),
            &device,
        )),
    };
    let loss = model.weight.val().square().sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    for bad in [-1.0, 0.0, f64::NAN] {
        let err = try_clip_grad_norm(&model, &mut grads, bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "max_norm",
                    ..
                }
            ),
            "{err}"
        );
    }
    // A valid call clips to the closed form: grad = 2w = [6, 8], norm 10 -> scaled to 1.
    let norm = try_clip_grad_norm(&model, &mut grads, 1.0).unwrap();
    assert!((norm - 10.0).abs() < 1e-4);
    let g = host(grads.get::<1>(model.weight.id).unwrap());
    let scale = 1.0 / (10.0 + 1e-6);
    assert!(
        (g[0] - 6.0 * scale).abs() < 1e-5 && (g[1] - 8.0 * scale).abs() < 1e-5,
        "{g:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. try_ forms of free functions; errors name the caller's argument
// ---------------------------------------------------------------------------------------------

#[test]
fn free_functions_have_try_forms_that_name_the_argument() {
    let x = typed::<2>(vec![1.0; 6], [2, 3], FloatDType::F32);
    let wrong = mask2(vec![true; 4], [2, 2]);
    let shape_err = |r: Result<(), Error>, arg: &str| match r {
        Err(Error::Shape { arg: a, .. }) => assert_eq!(a, arg),
        other => panic!("expected a shape error naming `{arg}`, got {other:?}"),
    };
    shape_err(
        try_masked_mean(x.clone(), wrong.clone(), None).map(drop),
        "mask",
    );
    shape_err(
        try_whiten(x.clone(), Some(wrong.clone()), Whitening::ZeroMean).map(drop),
        "mask",
    );
    shape_err(
        try_discounted_returns(x.clone(), wrong, 1.0).map(drop),
        "mask",
    );
    let y = typed::<2>(vec![1.0; 4], [2, 2], FloatDType::F32);
    shape_err(
        try_kl_estimate(x.clone(), y, KlEstimator::K3).map(drop),
        "ref_logps",
    );
    let v2 = typed::<1>(vec![-1.0; 2], [2], FloatDType::F32);
    let v3 = typed::<1>(vec![-1.0; 3], [3], FloatDType::F32);
    shape_err(
        try_kto_kl_estimate(v2.clone(), v3.clone()).map(drop),
        "ref_kl_logps",
    );
    shape_err(
        CpoLossConfig::new()
            .init()
            .try_pair_terms(v2.clone(), v3.clone())
            .map(drop),
        "rejected_logps",
    );
    shape_err(
        OrpoLossConfig::new()
            .init()
            .try_odds_ratio(v2, v3)
            .map(drop),
        "rejected_logps",
    );
    let err = burn_rlhf::rl::try_whiten_with(x, 0.0, -1.0, Whitening::ZeroMean).unwrap_err();
    assert!(matches!(err, Error::Config { field: "var", .. }), "{err}");
}

/// The fused causal op reports a bad label in the caller's `labels`, at its position there.
#[test]
fn fused_causal_label_error_names_labels_and_their_position() {
    let (b, t, h, v) = (2, 4, 3, 5);
    let hidden = typed::<3>(vec![0.1; b * t * h], [b, t, h], FloatDType::F32);
    let weight = typed::<2>(vec![0.1; v * h], [v, h], FloatDType::F32);
    let mut labels = vec![1i64; b * t];
    labels[t] = 99; // row 1, column 0: never scored under the causal shift -> no error
    labels[t + 2] = 7; // row 1, column 2: out of range -> position 6 in `labels`
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, t]), &dev());
    let err = FusedLogpsConfig::new()
        .init()
        .try_forward_causal(hidden, weight, None, labels)
        .unwrap_err();
    match err {
        Error::LabelOutOfRange {
            arg,
            value,
            position,
            ..
        } => {
            assert_eq!((arg, value, position), ("labels", 7, t + 2));
        }
        other => panic!("{other:?}"),
    }
}

/// DPO `sft` with `nll_normalizer = GlobalTokens(n)`: the NLL enters as `Σ -logp / n`, added to
/// the normalized pair loss (closed form on a two-pair batch, reference-free).
#[test]
fn separate_nll_normalizer_matches_the_closed_form() {
    let c = [-1.0f64, -2.0];
    let r = [-3.0f64, -1.5];
    let tokens = |values: Vec<f64>| GatheredLogps {
        logps: typed::<2>(values, [2, 2], FloatDType::F64),
        mask: mask2(vec![true, true, true, false], [2, 2]),
    };
    // Row sums equal c and r: [-0.4, -0.6] -> -1.0; [-2.0, x] -> -2.0.
    let chosen = tokens(vec![-0.4, -0.6, -2.0, 0.0]);
    let rejected = tokens(vec![-1.0, -2.0, -1.5, 0.0]);
    let batch = PreferenceBatch::from_tokens(chosen, rejected);
    let beta = 0.1;
    let out = DpoLossConfig::new()
        .with_beta(beta)
        .with_loss_type(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
        .with_normalizer(Normalizer::GlobalSequences(4.0))
        .with_nll_normalizer(Some(Normalizer::GlobalTokens(10.0)))
        .init()
        .forward(&batch);
    let softplus = |x: f64| (1.0 + (-x).exp()).ln();
    let pair: f64 = (0..2).map(|i| softplus(beta * (c[i] - r[i]))).sum::<f64>() / 4.0;
    let nll = (0.4 + 0.6 + 2.0) / 10.0;
    let got = host(out.loss)[0];
    assert!(
        (got - (pair + nll)).abs() < 1e-12,
        "{got} vs {}",
        pair + nll
    );
}

/// Issue 22: the reward-model adapter accepts `U8`-stored masks (what flex's `select` returns)
/// for either of its two masks: they are made canonical before they are concatenated.
#[cfg(feature = "train")]
#[test]
fn reward_model_accepts_u8_masks() {
    use burn::nn::{Embedding, EmbeddingConfig};
    use burn_rlhf::heads::{RewardHead, RewardHeadConfig};
    use burn_rlhf::losses::BradleyTerryLossConfig;
    use burn_rlhf::train::{RewardInput, RewardModel, SequenceRewardModel};

    #[derive(Module, Debug)]
    struct Scorer {
        embed: Embedding,
        head: RewardHead,
    }
    impl SequenceRewardModel for Scorer {
        fn rewards(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<1> {
            self.head.forward_reward(self.embed.forward(ids), mask)
        }
    }
    let device = dev();
    let model = RewardModel::new(
        Scorer {
            embed: EmbeddingConfig::new(7, 4).init(&device),
            head: RewardHeadConfig::new(4).init(&device),
        },
        &BradleyTerryLossConfig::new(),
    );
    let ids = |rows: usize, t: usize| {
        Tensor::<2, Int>::from_data(
            TensorData::new(
                (0..(rows * t) as i64).map(|i| i % 7).collect::<Vec<_>>(),
                [rows, t],
            ),
            &device,
        )
    };
    let chosen_mask = mask2(vec![true, true, true, true, true, false], [2, 3]);
    let rejected_mask = mask2(vec![true, true, true, false], [2, 2]);
    let reference = model
        .try_forward(RewardInput {
            chosen_ids: ids(2, 3),
            chosen_mask: chosen_mask.clone(),
            rejected_ids: ids(2, 2),
            rejected_mask: rejected_mask.clone(),
            margin: None,
        })
        .unwrap();
    let expected = host(reference.loss.clone());
    for (u8_chosen, u8_rejected) in [(true, false), (false, true), (true, true)] {
        let out = model
            .try_forward(RewardInput {
                chosen_ids: ids(2, 3),
                chosen_mask: if u8_chosen {
                    u8_mask(chosen_mask.clone())
                } else {
                    chosen_mask.clone()
                },
                rejected_ids: ids(2, 2),
                rejected_mask: if u8_rejected {
                    u8_mask(rejected_mask.clone())
                } else {
                    rejected_mask.clone()
                },
                margin: None,
            })
            .unwrap_or_else(|e| panic!("u8 chosen {u8_chosen}, rejected {u8_rejected}: {e}"));
        assert_eq!(host(out.loss), expected);
    }
}
