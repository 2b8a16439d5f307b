//! Bad inputs of the preference family (DPO, CPO, ORPO, KTO, BCO and their batches): each case
//! calls the `try_` form and asserts the error variant and that the message names the argument.

use burn::tensor::{Bool, Device, Int, Tensor};
use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{
    BcoLossConfig, CpoLossConfig, CpoLossType, DpoLossConfig, DpoLossType, FDivergenceType,
    KtoLossConfig, OrpoLossConfig, PreferenceBatch, RunningMoments, UnpairedBatch,
};
use burn_rlhf::{Error, Normalizer, with_checked_mode};

fn dev() -> Device {
    Device::flex()
}
fn v(n: usize) -> Tensor<1> {
    Tensor::<1>::zeros([n], &dev()).sub_scalar(1.0)
}
fn nan(n: usize) -> Tensor<1> {
    v(n).add_scalar(f64::NAN)
}
fn tokens(b: usize, t: usize, mask_t: usize) -> GatheredLogps {
    GatheredLogps {
        logps: Tensor::zeros([b, t], &dev()),
        mask: Tensor::<2, Int>::zeros([b, mask_t], &dev()).equal_elem(0),
    }
}
fn flags(n: usize) -> Tensor<1, Bool> {
    Tensor::<1, Int>::zeros([n], &dev()).equal_elem(0)
}
fn pair(b: usize) -> PreferenceBatch {
    PreferenceBatch::new(v(b), v(b)).with_ref_logps(v(b), v(b))
}

#[test]
fn dpo_bad_configs() {
    let mut n = 0;
    let c = DpoLossConfig::new;
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        bad!(
            n,
            c().with_beta(beta).try_init(),
            Error::Config { field: "beta", .. },
            "beta"
        );
    }
    bad!(
        n,
        c().with_loss_type(vec![]).try_init(),
        Error::Config {
            field: "loss_type",
            ..
        },
        "loss_type"
    );
    bad!(
        n,
        c().with_loss_weights(Some(vec![1.0, 2.0])).try_init(),
        Error::Config {
            field: "loss_weights",
            ..
        },
        "loss_weights"
    );
    bad!(
        n,
        c().with_loss_weights(Some(vec![f64::NAN])).try_init(),
        Error::Config {
            field: "loss_weights",
            ..
        },
        "loss_weights"
    );
    let exo = || c().with_loss_type(vec![DpoLossType::ExoPair]);
    bad!(
        n,
        exo().try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        exo().with_label_smoothing(1.0).try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    let robust = || c().with_loss_type(vec![DpoLossType::Robust]);
    bad!(
        n,
        robust().with_label_smoothing(0.5).try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_loss_type(vec![DpoLossType::Aot])
            .with_label_smoothing(1.5)
            .try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_loss_type(vec![DpoLossType::Aot])
            .with_label_smoothing(f64::NAN)
            .try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_label_smoothing(0.1).try_init(),
        Error::Conflict {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_cdpo_label_smoothing(0.6).try_init(),
        Error::Config {
            field: "cdpo_label_smoothing",
            ..
        },
        "cdpo_label_smoothing"
    );
    bad!(
        n,
        c().with_loss_type(vec![DpoLossType::Hinge])
            .with_cdpo_label_smoothing(0.1)
            .try_init(),
        Error::Conflict {
            field: "cdpo_label_smoothing",
            ..
        },
        "cdpo_label_smoothing"
    );
    bad!(
        n,
        c().with_loss_type(vec![DpoLossType::BcoPair])
            .with_f_divergence_type(FDivergenceType::ForwardKl)
            .try_init(),
        Error::Conflict {
            field: "f_divergence_type",
            ..
        },
        "f_divergence_type"
    );
    bad!(
        n,
        c().with_f_divergence_type(FDivergenceType::AlphaDivergence)
            .with_f_alpha_divergence_coef(f64::NAN)
            .try_init(),
        Error::Config {
            field: "f_alpha_divergence_coef",
            ..
        },
        "f_alpha_divergence_coef"
    );
    bad!(
        n,
        c().with_loss_type(vec![DpoLossType::Aot])
            .with_use_weighting(true)
            .try_init(),
        Error::Conflict {
            field: "use_weighting",
            ..
        },
        "use_weighting"
    );
    for alpha in [-0.5, 1.5, f64::NAN] {
        bad!(
            n,
            c().with_ld_alpha(Some(alpha)).try_init(),
            Error::Config {
                field: "ld_alpha",
                ..
            },
            "ld_alpha"
        );
    }
    bad!(
        n,
        c().with_discopop_tau(0.0).try_init(),
        Error::Config {
            field: "discopop_tau",
            ..
        },
        "discopop_tau"
    );
    bad!(
        n,
        c().with_normalizer(Normalizer::GlobalSequences(0.0))
            .try_init(),
        Error::Config { .. },
        "GlobalSequences"
    );
    println!("DPO configs: {n} bad-input cases");
    assert_eq!(n, 23);
}

#[test]
fn dpo_bad_batches() {
    let mut n = 0;
    let dpo = DpoLossConfig::new().init();
    bad!(
        n,
        dpo.try_forward(&PreferenceBatch::new(v(3), v(2))),
        Error::Shape {
            arg: "rejected_logps",
            ..
        },
        "rejected_logps"
    );
    bad!(
        n,
        dpo.try_forward(&PreferenceBatch::new(v(3), v(3)).with_ref_logps(v(2), v(3))),
        Error::Shape {
            arg: "ref_chosen_logps",
            ..
        },
        "ref_chosen_logps"
    );
    bad!(
        n,
        dpo.try_forward(&PreferenceBatch::new(v(3), v(3)).with_ref_logps(v(3), v(4))),
        Error::Shape {
            arg: "ref_rejected_logps",
            ..
        },
        "ref_rejected_logps"
    );
    bad!(
        n,
        dpo.try_forward(&pair(3).with_token_counts(v(3), v(1))),
        Error::Shape {
            arg: "rejected_token_counts",
            ..
        },
        "rejected_token_counts"
    );
    bad!(
        n,
        dpo.try_forward(&pair(0)),
        Error::Empty {
            arg: "chosen_logps",
            ..
        },
        "chosen_logps"
    );
    let mut one_ref = PreferenceBatch::new(v(2), v(2));
    one_ref.ref_chosen_logps = Some(v(2));
    bad!(
        n,
        dpo.try_forward(&one_ref),
        Error::MissingInput { .. },
        "ref_rejected_logps"
    );
    bad!(
        n,
        PreferenceBatch::try_from_tokens(tokens(2, 4, 3), tokens(2, 4, 4)),
        Error::Shape {
            arg: "chosen_tokens.mask",
            ..
        },
        "chosen_tokens.mask"
    );
    bad!(
        n,
        PreferenceBatch::try_from_tokens(tokens(2, 4, 4), tokens(2, 4, 5)),
        Error::Shape {
            arg: "rejected_tokens.mask",
            ..
        },
        "rejected_tokens.mask"
    );
    let mut bad_mask = pair(2);
    bad_mask.nll_tokens = Some(tokens(2, 4, 3));
    bad!(
        n,
        dpo.try_forward(&bad_mask),
        Error::Shape {
            arg: "nll_tokens.mask",
            ..
        },
        "nll_tokens.mask"
    );
    let mut mismatch = pair(2);
    mismatch.chosen_tokens = Some(tokens(3, 4, 4));
    bad!(
        n,
        dpo.try_forward(&mismatch),
        Error::Shape {
            arg: "chosen_tokens",
            ..
        },
        "chosen_tokens"
    );
    let wrong_sq = PreferenceBatch::from_tokens(tokens(2, 4, 4), tokens(2, 5, 5))
        .with_log_sum_sq_probs(Tensor::zeros([2, 4], &dev()), Tensor::zeros([2, 4], &dev()));
    bad!(
        n,
        dpo.try_forward(&wrong_sq),
        Error::Shape {
            arg: "rejected_log_sum_sq_probs",
            ..
        },
        "rejected_log_sum_sq_probs"
    );
    let ipo = DpoLossConfig::new()
        .with_loss_type(vec![DpoLossType::Ipo])
        .init();
    bad!(
        n,
        ipo.try_forward(&pair(2)),
        Error::MissingInput { .. },
        "chosen_token_counts"
    );
    let sft = DpoLossConfig::rpo(1.0).init();
    bad!(
        n,
        sft.try_forward(&pair(2)),
        Error::MissingInput {
            arg: "chosen_tokens",
            ..
        },
        "chosen_tokens"
    );
    let ld = DpoLossConfig::new().with_ld_alpha(Some(0.5)).init();
    bad!(
        n,
        ld.try_forward(&pair(2)),
        Error::MissingInput { .. },
        "chosen_tokens"
    );
    let wpo = DpoLossConfig::new().with_use_weighting(true).init();
    bad!(
        n,
        wpo.try_forward(&PreferenceBatch::from_tokens(
            tokens(2, 3, 3),
            tokens(2, 3, 3)
        )),
        Error::MissingInput { .. },
        "chosen_log_sum_sq_probs"
    );
    bad!(
        n,
        DpoLossConfig::new()
            .with_normalizer(Normalizer::TokenMean)
            .try_init(),
        Error::NormalizerKind { .. },
        "TokenMean"
    );
    bad!(
        n,
        dpo.implicit_rewards(&PreferenceBatch::new(v(2), v(3))),
        Error::Shape {
            arg: "rejected_logps",
            ..
        },
        "rejected_logps"
    );
    println!("DPO batches: {n} bad-input cases");
    assert_eq!(n, 17);
}

#[test]
fn cpo_orpo_bad_inputs() {
    let mut n = 0;
    let c = CpoLossConfig::new;
    bad!(
        n,
        c().with_beta(0.0).try_init(),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        c().with_label_smoothing(0.6).try_init(),
        Error::Config {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_loss_type(CpoLossType::Hinge)
            .with_label_smoothing(0.1)
            .try_init(),
        Error::Conflict {
            field: "label_smoothing",
            ..
        },
        "label_smoothing"
    );
    bad!(
        n,
        c().with_cpo_alpha(-1.0).try_init(),
        Error::Config {
            field: "cpo_alpha",
            ..
        },
        "cpo_alpha"
    );
    bad!(
        n,
        c().with_simpo_gamma(f64::NAN).try_init(),
        Error::Config {
            field: "simpo_gamma",
            ..
        },
        "simpo_gamma"
    );
    bad!(
        n,
        c().with_alpha(f64::INFINITY).try_init(),
        Error::Config { field: "alpha", .. },
        "alpha"
    );
    let cpo = c().with_cpo_alpha(0.0).init();
    bad!(
        n,
        cpo.try_forward(&PreferenceBatch::new(v(2), v(3))),
        Error::Shape {
            arg: "rejected_logps",
            ..
        },
        "rejected_logps"
    );
    bad!(
        n,
        cpo.try_forward(&PreferenceBatch::new(v(0), v(0))),
        Error::Empty {
            arg: "chosen_logps",
            ..
        },
        "chosen_logps"
    );
    let simpo = CpoLossConfig::simpo().init();
    bad!(
        n,
        simpo.try_forward(&PreferenceBatch::new(v(2), v(2))),
        Error::MissingInput { .. },
        "chosen_token_counts"
    );
    let with_nll = c().with_cpo_alpha(1.0).init();
    bad!(
        n,
        with_nll.try_forward(&PreferenceBatch::new(v(2), v(2))),
        Error::MissingInput {
            arg: "chosen_tokens",
            ..
        },
        "chosen_tokens"
    );
    let o = OrpoLossConfig::new;
    bad!(
        n,
        o().with_beta(-0.1).try_init(),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        o().with_normalizer(Normalizer::Constant(-1.0)).try_init(),
        Error::Config { .. },
        "Normalizer::Constant"
    );
    let orpo = o().init();
    bad!(
        n,
        orpo.try_forward(&PreferenceBatch::new(v(2), v(2))),
        Error::MissingInput { .. },
        "chosen_token_counts"
    );
    bad!(
        n,
        orpo.try_forward(&PreferenceBatch::new(v(2), v(2)).with_token_counts(v(2), v(2))),
        Error::MissingInput {
            arg: "chosen_tokens",
            ..
        },
        "chosen_tokens"
    );
    bad!(
        n,
        orpo.try_forward(&PreferenceBatch::new(v(2), v(2)).with_token_counts(v(2), v(3))),
        Error::Shape {
            arg: "rejected_token_counts",
            ..
        },
        "rejected_token_counts"
    );
    println!("CPO/ORPO: {n} bad-input cases");
    assert_eq!(n, 15);
}

#[test]
fn kto_bco_bad_inputs() {
    let mut n = 0;
    let k = KtoLossConfig::new;
    bad!(
        n,
        k().with_beta(0.0).try_init(),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        k().with_desirable_weight(-1.0).try_init(),
        Error::Config {
            field: "desirable_weight",
            ..
        },
        "desirable_weight"
    );
    bad!(
        n,
        k().with_undesirable_weight(f64::NAN).try_init(),
        Error::Config {
            field: "undesirable_weight",
            ..
        },
        "undesirable_weight"
    );
    let kto = k().init();
    let kl = || Tensor::<1>::zeros([1], &dev());
    bad!(
        n,
        kto.try_forward(&UnpairedBatch::new(v(3), v(2), flags(3)).with_kl(kl())),
        Error::Shape {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    bad!(
        n,
        kto.try_forward(&UnpairedBatch::new(v(3), v(3), flags(2)).with_kl(kl())),
        Error::Shape {
            arg: "desirable",
            ..
        },
        "desirable"
    );
    bad!(
        n,
        kto.try_forward(&UnpairedBatch::new(v(3), v(3), flags(3)).with_kl(v(2))),
        Error::Shape { arg: "kl", .. },
        "kl"
    );
    bad!(
        n,
        kto.try_forward(&UnpairedBatch::new(v(0), v(0), flags(0)).with_kl(kl())),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    bad!(
        n,
        kto.try_forward(&UnpairedBatch::new(v(3), v(3), flags(3))),
        Error::MissingInput { arg: "kl", .. },
        "kto_kl_estimate"
    );
    bad!(
        n,
        UnpairedBatch::try_from_tokens(&tokens(2, 3, 4), v(2), flags(2)),
        Error::Shape {
            arg: "tokens.mask",
            ..
        },
        "tokens.mask"
    );
    bad!(
        n,
        k().with_normalizer(Normalizer::TokenMean).try_init(),
        Error::NormalizerKind { .. },
        "TokenMean"
    );
    let b = BcoLossConfig::new;
    bad!(
        n,
        b().with_beta(f64::NAN).try_init(),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        b().with_normalizer(Normalizer::GlobalTokens(0.0))
            .try_init(),
        Error::Config { .. },
        "Normalizer::GlobalTokens"
    );
    let bco = b().init();
    let mut running = RunningMoments::default();
    bad!(
        n,
        bco.try_forward(
            &UnpairedBatch::new(v(3), v(2), flags(3)),
            &mut running,
            true
        ),
        Error::Shape {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    bad!(
        n,
        bco.try_forward(
            &UnpairedBatch::new(v(0), v(0), flags(0)),
            &mut running,
            true
        ),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    bad!(
        n,
        b().with_normalizer(Normalizer::GlobalTokens(4.0))
            .try_init(),
        Error::NormalizerKind { .. },
        "GlobalTokens"
    );
    println!("KTO/BCO: {n} bad-input cases");
    assert_eq!(n, 15);
}

#[test]
fn checked_mode_names_non_finite_arguments() {
    let mut n = 0;
    let dpo = DpoLossConfig::new().init();
    with_checked_mode(true, || {
        bad!(
            n,
            dpo.try_forward(&PreferenceBatch::new(nan(2), v(2))),
            Error::NonFinite {
                arg: "chosen_logps"
            },
            "chosen_logps"
        );
        bad!(
            n,
            dpo.try_forward(&PreferenceBatch::new(v(2), nan(2))),
            Error::NonFinite {
                arg: "rejected_logps"
            },
            "rejected_logps"
        );
        bad!(
            n,
            dpo.try_forward(&PreferenceBatch::new(v(2), v(2)).with_ref_logps(v(2), nan(2))),
            Error::NonFinite {
                arg: "ref_rejected_logps"
            },
            "ref_rejected_logps"
        );
        bad!(
            n,
            dpo.try_forward(&pair(2).with_token_counts(nan(2), v(2))),
            Error::NonFinite {
                arg: "chosen_token_counts"
            },
            "chosen_token_counts"
        );
        let kto = KtoLossConfig::new().init();
        let kl = Tensor::<1>::zeros([1], &dev());
        bad!(
            n,
            kto.try_forward(&UnpairedBatch::new(nan(2), v(2), flags(2)).with_kl(kl.clone())),
            Error::NonFinite { arg: "logps" },
            "logps"
        );
        bad!(
            n,
            kto.try_forward(&UnpairedBatch::new(v(2), nan(2), flags(2)).with_kl(kl)),
            Error::NonFinite { arg: "ref_logps" },
            "ref_logps"
        );
        bad!(
            n,
            kto.try_forward(&UnpairedBatch::new(v(2), v(2), flags(2)).with_kl(nan(1))),
            Error::NonFinite { arg: "kl" },
            "kl"
        );
        let bco = BcoLossConfig::new().init();
        bad!(
            n,
            bco.try_forward(
                &UnpairedBatch::new(nan(2), v(2), flags(2)),
                &mut RunningMoments::default(),
                true
            ),
            Error::NonFinite { arg: "logps" },
            "logps"
        );
    });
    println!("preference checked mode: {n} non-finite cases");
    assert_eq!(n, 8);
}
