//! Property fuzzing of every public loss / entry point: random small shapes (batch of one,
//! zero valid tokens, all-ignored labels, equal rewards within a group), random finite values
//! with extremes (|x| up to 1e4 for log-prob margins and logits), every loss type and option.
//! The `try_` forms never panic, and for finite inputs the loss, per-example terms, metrics and
//! gradients (flex autodiff, f32) are finite.
//!
//! Cases per property: `BURN_RLHF_PROPTEST_CASES` (default 256). Nightly-style run:
//! `BURN_RLHF_PROPTEST_CASES=20000 cargo test --release --test fuzz_losses`.
//!
//! Value ranges: exponentials of log-ratios (f-divergences other than reverse KL, AlphaPO,
//! WPO weights) overflow f32 for log-ratios of a few hundred, where the math itself leaves the
//! float range; those options are fuzzed with |log-ratio| <= 20. PPO/GRPO/RLOO importance
//! ratios and the k3 estimator are bounded (`rl::LOG_RATIO_LIMIT`) and fuzzed with
//! |log-ratio| up to 200. Everything else uses the full 1e4 range.
//!
//! Every property generates valid configurations only (so its cases reach the assertions);
//! `invalid_configs` generates arbitrary ones and checks that `try_init` returns (never
//! panics) and that a rejection names a config field.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn_rlhf::Normalizer;
use burn_rlhf::logps::{FusedLogpsConfig, LogpsImplementation, token_entropy};
use burn_rlhf::logps::{GatheredLogps, LabelAlignment, SequenceReduction, TokenLogpsConfig};
use burn_rlhf::losses::{
    BcoLossConfig, CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType, FDivergenceType,
    KtoLossConfig, KtoLossType, LossOutput, OrpoLossConfig, PreferenceBatch, RunningMoments,
    UnpairedBatch, kto_kl_estimate,
};
use burn_rlhf::rl::{
    GaeConfig, GaeMasking, GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput, GrpoLossType,
    ImportanceSamplingLevel, KlEstimator, KlPenaltyConfig, PpoLossConfig, PpoLossInput,
    RewardAggregation, RlooAdvantageConfig, RlooLossConfig, ScaleRewards, Whitening, kl_estimate,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("BURN_RLHF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn ad() -> Device {
    Device::flex().autodiff()
}
fn t1(v: &[f64]) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), (&ad(), DType::F32))
}
fn t2(v: &[f64], d: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(v[..d[0] * d[1]].to_vec(), d),
        (&ad(), DType::F32),
    )
}
fn m2(v: &[bool], d: [usize; 2]) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(v[..d[0] * d[1]].to_vec(), d), &ad())
}
fn m1(v: &[bool]) -> Tensor<1, Bool> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &ad())
}
fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}
fn finite<const D: usize>(what: &str, t: Tensor<D>) -> Result<(), TestCaseError> {
    let v = host(t);
    prop_assert!(v.iter().all(|x| x.is_finite()), "{what} not finite: {v:?}");
    Ok(())
}
/// Loss, per-example terms and metrics finite; returns the gradients of the loss.
fn check_output(out: &LossOutput) -> Result<burn::tensor::Gradients, TestCaseError> {
    finite("loss", out.loss.clone())?;
    finite("per_example", out.per_example.clone())?;
    for (k, v) in out.metrics.to_host() {
        prop_assert!(v.is_finite(), "metric {k} = {v}");
    }
    Ok(out.loss.backward())
}
macro_rules! grads_finite {
    ($grads:expr, $($leaf:expr),+) => {{
        $(
            if let Some(g) = $leaf.grad(&$grads) {
                finite(concat!("grad of ", stringify!($leaf)), g)?;
            }
        )+
    }};
}
/// Runs `f`, turning a panic into a test failure (the `try_` forms must not panic).
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| TestCaseError::fail(format!("{what} panicked")))
}

/// Raw randomness every property slices from: values in [-1, 1], flags.
fn raw() -> impl Strategy<Value = (Vec<f64>, Vec<bool>)> {
    (
        prop::collection::vec(-1.0f64..=1.0, 64),
        prop::collection::vec(any::<bool>(), 64),
    )
}
fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1.0), Just(30.0), Just(2500.0)]
}
/// Per-token log-probs (<= 0) and masks for `b` rows of `t` tokens.
fn gathered(vals: &[f64], flags: &[bool], b: usize, t: usize, scale: f64) -> GatheredLogps {
    let lp: Vec<f64> = vals[..b * t].iter().map(|x| -x.abs() * scale).collect();
    GatheredLogps {
        logps: t2(&lp, [b, t]).require_grad(),
        mask: m2(flags, [b, t]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn token_logps_and_reductions(
        (b, t, v) in (1usize..=3, 1usize..=4, 1usize..=5),
        (vals, flags) in raw(),
        labels in prop::collection::vec(-1i64..5, 12),
        causal in any::<bool>(), reference in any::<bool>(),
        temperature in prop_oneof![Just(0.5), Just(1.0), Just(3.0)],
        logit_scale in prop_oneof![Just(1.0), Just(1e4)],
    ) {
        let logits_v: Vec<f64> = (0..b * t * v).map(|i| vals[i % 64] * logit_scale).collect();
        let logits = Tensor::<3>::from_data(TensorData::new(logits_v, [b, t, v]), (&ad(), DType::F32)).require_grad();
        // -1 -> ignored; all-ignored rows happen often.
        let lab: Vec<i64> = labels[..b * t].iter().map(|&l| if l < 0 { -100 } else { l % v as i64 }).collect();
        let lab = Tensor::<2, Int>::from_data(TensorData::new(lab, [b, t]), &ad());
        let op = TokenLogpsConfig::new(if causal { LabelAlignment::CausalShift } else { LabelAlignment::Aligned })
            .with_temperature(temperature)
            .with_implementation(if reference { LogpsImplementation::Reference } else { LogpsImplementation::Auto })
            .init();
        let mask = m2(&flags, [b, t]);
        let out = no_panic("TokenLogps::try_forward", || op.try_forward(logits.clone(), lab, Some(mask)))?;
        let Ok(out) = out else { prop_assert!(causal && t < 2); return Ok(()); };
        finite("logps", out.logps.clone())?;
        let mut total = out.logps.clone().sum();
        for r in [SequenceReduction::Sum, SequenceReduction::Mean, SequenceReduction::MeanEps(1e-8)] {
            let s = r.try_reduce(out.logps.clone(), out.mask.clone()).unwrap();
            finite("reduction", s.clone())?;
            total = total + s.sum();
        }
        for n in [Normalizer::Sum, Normalizer::TokenMean, Normalizer::SequenceMean, Normalizer::GlobalTokens(3.0), Normalizer::GlobalSequences(2.0)] {
            let s = n.try_reduce_tokens(out.logps.clone(), out.mask.clone()).unwrap();
            finite("normalizer", s.clone())?;
            total = total + s;
        }
        let h = token_entropy(logits.clone(), temperature).unwrap();
        finite("entropy", h.clone())?;
        let grads = (total + h.sum()).backward();
        grads_finite!(grads, logits);
    }

    #[test]
    fn fused_logps(
        (n, h, v) in (1usize..=4, 1usize..=3, 1usize..=5),
        (vals, flags) in raw(),
        with_bias in any::<bool>(), with_stats in any::<bool>(), reference in any::<bool>(),
        softcap in prop_oneof![Just(None), Just(Some(30.0))],
        chunk in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(2))],
        big in any::<bool>(),
    ) {
        // |hidden . weight| up to 1e4 with `big`.
        let s = if big { (1e4 / h as f64).sqrt() } else { 1.0 };
        let hidden = t2(&vals[..n * h].iter().map(|x| x * s).collect::<Vec<_>>(), [n, h]).require_grad();
        let weight = t2(&vals[16..16 + v * h].iter().map(|x| x * s).collect::<Vec<_>>(), [v, h]).require_grad();
        let bias = t1(&vals[40..40 + v]).require_grad();
        let targets: Vec<i64> = (0..n).map(|i| if flags[i] { -100 } else { (i % v) as i64 }).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &ad());
        let op = FusedLogpsConfig::new()
            .with_with_stats(with_stats)
            .with_final_logit_softcapping(softcap)
            .with_vocab_chunk_size(chunk)
            .with_token_chunk_size(chunk)
            .with_implementation(if reference { LogpsImplementation::Reference } else { LogpsImplementation::Auto })
            .init();
        let out = no_panic("FusedLogps::try_forward", || op.try_forward(hidden.clone(), weight.clone(), with_bias.then(|| bias.clone()), targets))?.unwrap();
        finite("logps", out.logps.clone())?;
        let mut total = out.logps.clone().sum();
        if let Some(e) = out.entropy.clone() {
            finite("entropy", e.clone())?;
            total = total + e.sum();
        }
        for x in [out.log_sum_sq_probs.clone(), out.mean_logits.clone()].into_iter().flatten() {
            finite("stat", x)?;
        }
        let grads = total.backward();
        grads_finite!(grads, hidden, weight, bias);
    }

    #[test]
    fn dpo_family(
        (b, tc, tr) in (1usize..=3, 1usize..=3, 1usize..=3),
        (vals, flags) in raw(),
        types in prop::collection::vec(0usize..15, 1..=2),
        scale in scale(),
        fdiv in 0usize..4, beta in prop_oneof![Just(0.01), Just(0.1), Just(2.0)],
        ld in prop_oneof![Just(None), Just(Some(0.0)), Just(Some(0.5))],
        wpo in any::<bool>(), cdpo in any::<bool>(), with_ref in any::<bool>(),
    ) {
        let types: Vec<DpoLossType> = types.iter().map(|&i| DpoLossType::ALL[i]).collect();
        // Only valid combinations are generated (invalid ones have their own property below):
        // an f-divergence only with loss types that accept one, WPO not with the sorted AOT.
        let fdiv = if types.iter().all(|t| t.accepts_f_divergence()) {
            [FDivergenceType::ReverseKl, FDivergenceType::ForwardKl, FDivergenceType::JsDivergence, FDivergenceType::AlphaDivergence][fdiv]
        } else {
            FDivergenceType::ReverseKl
        };
        let wpo = wpo && !types.iter().any(|t| t.is_batch_coupled());
        let scale = if fdiv != FDivergenceType::ReverseKl || wpo { scale.min(5.0) } else { scale };
        let needs_eps = types.iter().any(|t| t.reads_label_smoothing());
        let eps = if types.contains(&DpoLossType::ExoPair) { 1e-3 } else if needs_eps { 0.1 } else { 0.0 };
        let config = DpoLossConfig::new()
            .with_loss_type(types.clone())
            .with_beta(beta)
            .with_label_smoothing(eps)
            .with_f_divergence_type(fdiv)
            .with_ld_alpha(ld)
            .with_use_weighting(wpo)
            .with_cdpo_label_smoothing(if cdpo && types.contains(&DpoLossType::Sigmoid) { 0.2 } else { 0.0 });
        let loss = config.try_init().map_err(|e| TestCaseError::fail(format!("generated an invalid config: {e}")))?;
        let chosen = gathered(&vals, &flags, b, tc, scale);
        let rejected = gathered(&vals[20..], &flags[20..], b, tr, scale);
        let (cl, rl) = (chosen.logps.clone(), rejected.logps.clone());
        let mut batch = PreferenceBatch::try_from_tokens(chosen, rejected).unwrap();
        if with_ref {
            let r: Vec<f64> = vals[40..40 + 2 * b].iter().map(|x| -x.abs() * scale * 3.0).collect();
            batch = batch.with_ref_logps(t1(&r[..b]), t1(&r[b..]));
        }
        let sq = |t: usize, off: usize| t2(&vals[off..off + b * t].iter().map(|x| -x.abs() * 3.0).collect::<Vec<_>>(), [b, t]);
        batch = batch.with_log_sum_sq_probs(sq(tc, 5), sq(tr, 25));
        let out = no_panic("DpoLoss::try_forward", || loss.try_forward(&batch))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, cl, rl);
    }

    #[test]
    fn cpo_orpo(
        (b, tc, tr) in (1usize..=3, 1usize..=3, 1usize..=3),
        (vals, flags) in raw(),
        loss_type in 0usize..4, scale in scale(),
        alpha in prop_oneof![Just(0.0), Just(0.5)], cpo_alpha in prop_oneof![Just(0.0), Just(1.0)],
        smoothing in prop_oneof![Just(0.0), Just(0.2)], beta in prop_oneof![Just(0.1), Just(2.0)],
    ) {
        let loss_type = [CpoLossType::Sigmoid, CpoLossType::Hinge, CpoLossType::Ipo, CpoLossType::Simpo][loss_type];
        let scale = if alpha != 0.0 { scale.min(5.0) } else { scale };
        // A fresh graph per loss (burn has no retain_graph).
        let make = || {
            let chosen = gathered(&vals, &flags, b, tc, scale);
            let rejected = gathered(&vals[20..], &flags[20..], b, tr, scale);
            let (cl, rl) = (chosen.logps.clone(), rejected.logps.clone());
            (PreferenceBatch::try_from_tokens(chosen, rejected).unwrap(), cl, rl)
        };
        let (batch, cl, rl) = make();
        // label_smoothing only where CPO reads it (valid configs only; see `invalid_configs`).
        let smoothing = if matches!(loss_type, CpoLossType::Sigmoid | CpoLossType::Simpo) { smoothing } else { 0.0 };
        let config = CpoLossConfig::new().with_loss_type(loss_type).with_alpha(alpha).with_cpo_alpha(cpo_alpha).with_label_smoothing(smoothing).with_beta(beta);
        let cpo = config.try_init().map_err(|e| TestCaseError::fail(format!("generated an invalid config: {e}")))?;
        let out = no_panic("CpoLoss::try_forward", || cpo.try_forward(&batch))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, cl, rl);
        let (batch, cl, rl) = make();
        let orpo = OrpoLossConfig::new().with_beta(beta).init();
        let out = no_panic("OrpoLoss::try_forward", || orpo.try_forward(&batch))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, cl, rl);
    }

    #[test]
    fn kto_bco(
        b in 1usize..=4, (vals, flags) in raw(), scale in scale(),
        apo in any::<bool>(), beta in prop_oneof![Just(0.1), Just(2.0)], train in any::<bool>(),
    ) {
        let logps = t1(&vals[..b].iter().map(|x| -x.abs() * scale).collect::<Vec<_>>()).require_grad();
        let reference = t1(&vals[10..10 + b].iter().map(|x| -x.abs() * scale).collect::<Vec<_>>());
        let kl = kto_kl_estimate(t1(&vals[20..20 + b]).mul_scalar(scale), t1(&vals[30..30 + b]).mul_scalar(scale));
        let batch = UnpairedBatch::new(logps.clone(), reference, m1(&flags[..b])).with_kl(kl);
        let kto = KtoLossConfig::new().with_loss_type(if apo { KtoLossType::ApoZeroUnpaired } else { KtoLossType::Kto }).with_beta(beta).init();
        let out = no_panic("KtoLoss::try_forward", || kto.try_forward(&batch))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, logps);
        let bco = BcoLossConfig::new().with_beta(beta).init();
        let mut running = RunningMoments::default();
        let out = no_panic("BcoLoss::try_forward", || bco.try_forward(&batch, &mut running, train))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, logps);
    }

    #[test]
    fn advantages_and_kl(
        (p, g, t) in (1usize..=2, 1usize..=3, 1usize..=4),
        (vals, flags) in raw(), scale in scale(), equal in any::<bool>(),
        gamma in prop_oneof![Just(0.0), Just(0.9), Just(1.0)], lam in prop_oneof![Just(0.0), Just(0.95), Just(1.0)],
        zero_outside in any::<bool>(), whitening in 0usize..3, with_mask in any::<bool>(),
        scale_rewards in 0usize..3, normalize_then_sum in any::<bool>(), estimator in 0usize..4,
    ) {
        let n = p * g;
        // Equal rewards within each group (zero std) half of the time.
        let rewards: Vec<f64> = (0..n * 2).map(|i| if equal { vals[(i / (2 * g)) % 64] * scale } else { vals[i % 64] * scale }).collect();
        let rpf = t2(&rewards, [n, 2]);
        let group = GroupAdvantageConfig::new()
            .with_num_generations(g)
            .with_scale_rewards([ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None][scale_rewards])
            .with_multi_objective_aggregation(if normalize_then_sum { RewardAggregation::NormalizeThenSum } else { RewardAggregation::SumThenNormalize });
        let out = no_panic("GroupAdvantageConfig::try_forward", || group.try_forward(rpf.clone()))?.unwrap();
        finite("group advantages", out.advantages)?;
        for (k, v) in out.metrics.to_host() { prop_assert!(v.is_finite(), "metric {k} = {v}"); }
        let mask = m2(&flags, [n, t]);
        let old = t2(&vals.iter().map(|x| -x.abs() * 20.0).collect::<Vec<_>>(), [n, t]);
        let reference = t2(&vals[8..].iter().map(|x| -x.abs() * 20.0).collect::<Vec<_>>(), [n, t]);
        let rloo = RlooAdvantageConfig::new().with_num_generations(g).with_normalize_advantages(equal);
        let res = no_panic("RlooAdvantageConfig::try_forward", || rloo.try_forward(rpf.clone(), old.clone(), Some(reference.clone()), mask.clone()))?;
        if g < 2 { prop_assert!(res.is_err()); } else {
            let out = res.unwrap();
            finite("rloo advantages", out.group.advantages)?;
            for (k, v) in out.group.metrics.to_host() { prop_assert!(v.is_finite(), "metric {k} = {v}"); }
        }
        let r = t2(&vals[16..].iter().map(|x| x * scale).collect::<Vec<_>>(), [n, t]);
        let values = t2(&vals[32..].iter().map(|x| x * scale).collect::<Vec<_>>(), [n, t]);
        let gae = GaeConfig::new().with_gamma(gamma).with_lam(lam)
            .with_masking(if zero_outside { GaeMasking::ZeroOutside } else { GaeMasking::IgnoreMask })
            .with_whitening([Whitening::ZeroMean, Whitening::KeepMean, Whitening::None][whitening])
            .init();
        let out = no_panic("Gae::try_forward", || gae.try_forward(r, values, with_mask.then(|| mask.clone())))?.unwrap();
        finite("gae advantages", out.advantages)?;
        finite("gae returns", out.returns)?;
        let estimator = [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3, KlEstimator::Abs][estimator];
        let pen = KlPenaltyConfig::new().with_estimator(estimator).init();
        let scores = t1(&vals[48..48 + n].iter().map(|x| x * scale).collect::<Vec<_>>());
        let out = no_panic("KlPenalty::try_forward", || pen.try_forward(scores, old.clone(), reference.clone(), with_mask.then(|| mask.clone()), None))?.unwrap();
        finite("kl rewards", out.rewards)?;
        finite("kl", kl_estimate(old, reference, estimator))?;
    }

    #[test]
    fn ppo_grpo_rloo(
        (b, t) in (1usize..=3, 1usize..=4),
        (vals, flags) in raw(), adv_scale in scale(),
        loss_type in 0usize..8, sequence_level in any::<bool>(), beta in prop_oneof![Just(0.0), Just(0.04)],
        dual in any::<bool>(), with_values in any::<bool>(), top in prop_oneof![Just(1.0), Just(0.5)],
        delta in prop_oneof![Just(None), Just(Some(3.0))], token_adv in any::<bool>(),
    ) {
        let lp_v: Vec<f64> = vals.iter().map(|x| -x.abs() * 50.0).collect();
        // old = logps + up to +-200: ratios far past f32's exp range (e^88.7), where an
        // unbounded exp gave inf and NaN gradients (the ratio is bounded at e^20).
        let old_v: Vec<f64> = lp_v.iter().zip(vals.iter().rev()).map(|(l, x)| l + x * 200.0).collect();
        let logps = t2(&lp_v, [b, t]).require_grad();
        let old = t2(&old_v, [b, t]);
        let mask = m2(&flags, [b, t]);
        let adv2 = t2(&vals[8..].iter().map(|x| x * adv_scale).collect::<Vec<_>>(), [b, t]);
        let entropy = t2(&vals[24..].iter().map(|x| x.abs() * 3.0).collect::<Vec<_>>(), [b, t]).require_grad();
        let values = t2(&vals[40..].iter().map(|x| x * adv_scale).collect::<Vec<_>>(), [b, t]).require_grad();

        let ppo = PpoLossConfig::new().with_dual_clip(dual.then_some(3.0)).with_entropy_coef(0.01).init();
        let mut input = PpoLossInput::new(logps.clone(), old.clone(), adv2.clone()).with_mask(mask.clone()).with_entropy(entropy.clone());
        if with_values { input = input.with_values(values.clone(), values.clone().detach(), adv2.clone()); }
        let out = no_panic("PpoLoss::try_forward", || ppo.try_forward(input))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, logps, entropy, values);

        let loss_type = [GrpoLossType::Grpo, GrpoLossType::Bnpo, GrpoLossType::DrGrpo, GrpoLossType::Dapo, GrpoLossType::Cispo, GrpoLossType::Sapo, GrpoLossType::Luspo, GrpoLossType::Vespo][loss_type];
        let grpo = GrpoLossConfig::new().with_loss_type(loss_type).with_beta(beta).with_top_entropy_quantile(top).with_delta(delta)
            .with_importance_sampling_level(if sequence_level { ImportanceSamplingLevel::Sequence } else { ImportanceSamplingLevel::Token })
            .with_entropy_coef(0.01).with_off_policy_mask_threshold(Some(0.5));
        {
            let grpo = grpo.try_init().map_err(|e| TestCaseError::fail(format!("generated an invalid config: {e}")))?;
            let adv = t1(&vals[50..50 + b].iter().map(|x| x * adv_scale).collect::<Vec<_>>());
            let input = if token_adv { GrpoLossInput::with_token_advantages(logps.clone(), mask.clone(), adv2.clone()) } else { GrpoLossInput::new(logps.clone(), mask.clone(), adv) };
            let input = input.with_old_logps(old.clone()).with_ref_logps(old.clone().add_scalar(0.5)).with_entropies(entropy.clone()).with_num_items_in_batch(3.0);
            let out = no_panic("GrpoLoss::try_forward", || grpo.try_forward(input))?.unwrap();
            let grads = check_output(&out)?;
            grads_finite!(grads, logps, entropy);
        }

        let rloo = RlooLossConfig::new().init();
        let summed = burn_rlhf::logps::SequenceReduction::Sum.try_reduce(old.clone(), mask.clone()).unwrap();
        // old sequence log-probs within +-200 of the new ones.
        let old_seq = summed + t1(&vals[56..56 + b]).mul_scalar(200.0);
        let adv = t1(&vals[60..60 + b].iter().map(|x| x * adv_scale).collect::<Vec<_>>());
        let logps_r = t2(&old_v, [b, t]).require_grad();
        let out = no_panic("RlooLoss::try_forward", || rloo.try_forward(logps_r.clone(), mask.clone(), old_seq, adv, Some(entropy.clone())))?.unwrap();
        let grads = check_output(&out)?;
        grads_finite!(grads, logps_r);
    }

    #[test]
    fn invalid_configs(
        types in prop::collection::vec(0usize..15, 0..=3),
        beta in prop_oneof![Just(0.1), Just(0.0), Just(-1.0), Just(f64::NAN)],
        eps in prop_oneof![Just(0.0), Just(0.1), Just(0.7), Just(1.5), Just(f64::INFINITY)],
        fdiv in 0usize..4, wpo in any::<bool>(), cdpo in prop_oneof![Just(0.0), Just(0.2), Just(0.9)],
        normalizer in 0usize..5, weights in prop_oneof![Just(None), Just(Some(vec![1.0])), Just(Some(vec![f64::NAN, 1.0]))],
    ) {
        let types: Vec<DpoLossType> = types.iter().map(|&i| DpoLossType::ALL[i]).collect();
        let fdiv = [FDivergenceType::ReverseKl, FDivergenceType::ForwardKl, FDivergenceType::JsDivergence, FDivergenceType::AlphaDivergence][fdiv];
        let normalizer = [Normalizer::SequenceMean, Normalizer::TokenMean, Normalizer::GlobalSequences(0.0), Normalizer::Constant(f64::NAN), Normalizer::Sum][normalizer];
        let fields = ["beta", "loss_type", "loss_weights", "label_smoothing", "cdpo_label_smoothing",
            "f_divergence_type", "use_weighting", "normalizer", "Normalizer::GlobalSequences", "Normalizer::Constant"];
        let dpo = DpoLossConfig::new().with_loss_type(types).with_beta(beta).with_label_smoothing(eps)
            .with_f_divergence_type(fdiv).with_use_weighting(wpo).with_cdpo_label_smoothing(cdpo)
            .with_normalizer(normalizer).with_loss_weights(weights);
        if let Err(e) = no_panic("DpoLossConfig::try_init", || dpo.try_init())? {
            let msg = e.to_string();
            prop_assert!(fields.iter().any(|f| msg.contains(f)), "error names no field: {msg}");
        }
        let cpo = CpoLossConfig::new().with_beta(beta).with_label_smoothing(eps).with_normalizer(normalizer);
        if let Err(e) = no_panic("CpoLossConfig::try_init", || cpo.try_init())? {
            let msg = e.to_string();
            prop_assert!(fields.iter().any(|f| msg.contains(f)), "error names no field: {msg}");
        }
        let grpo = GrpoLossConfig::new().with_beta(beta).with_epsilon(eps).with_top_entropy_quantile(cdpo);
        if let Err(e) = no_panic("GrpoLossConfig::try_init", || grpo.try_init())? {
            let msg = e.to_string();
            prop_assert!(["beta", "epsilon", "top_entropy_quantile"].iter().any(|f| msg.contains(f)), "{msg}");
        }
    }
}
