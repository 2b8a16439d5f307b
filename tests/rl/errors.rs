//! Bad inputs of the RL family (advantages, KL, PPO/GRPO/RLOO losses, ppo_update): each case
//! calls the `try_` form and asserts the error variant and that the message names the argument.

use burn::module::{Module, Param};
use burn::optim::SgdConfig;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::rl::{
    AdaptiveKlController, GaeConfig, GroupAdvantageConfig, GrpoLossConfig, GrpoLossInput,
    GrpoLossType, KlPenaltyConfig, PolicyOutput, PpoLossConfig, PpoLossInput, PpoStepConfig,
    RlooAdvantageConfig, RlooLossConfig, Rollout, try_ppo_update,
};
use burn_rlhf::{Error, Normalizer, with_checked_mode};

fn dev() -> Device {
    Device::flex()
}
fn f1(n: usize) -> Tensor<1> {
    Tensor::zeros([n], &dev())
}
fn f2(d: [usize; 2]) -> Tensor<2> {
    Tensor::zeros(d, &dev())
}
fn b2(d: [usize; 2]) -> Tensor<2, Bool> {
    Tensor::<2, Int>::zeros(d, &dev()).equal_elem(0)
}
fn nan2(d: [usize; 2]) -> Tensor<2> {
    f2(d).add_scalar(f64::NAN)
}

#[test]
fn advantages_and_kl_bad_inputs() {
    let mut n = 0;
    for (gamma, lam) in [(-0.1, 0.9), (1.5, 0.9), (f64::NAN, 0.9)] {
        bad!(
            n,
            GaeConfig::new().with_gamma(gamma).with_lam(lam).try_init(),
            Error::Config { field: "gamma", .. },
            "gamma"
        );
    }
    for lam in [-0.1, 1.01, f64::INFINITY] {
        bad!(
            n,
            GaeConfig::new().with_lam(lam).try_init(),
            Error::Config { field: "lam", .. },
            "lam"
        );
    }
    let gae = GaeConfig::new().init();
    bad!(
        n,
        gae.try_forward(f2([2, 3]), f2([2, 4]), None),
        Error::Shape { arg: "values", .. },
        "values"
    );
    bad!(
        n,
        gae.try_forward(f2([2, 3]), f2([2, 3]), Some(b2([3, 2]))),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        gae.try_forward(f2([0, 3]), f2([0, 3]), None),
        Error::Empty { arg: "rewards", .. },
        "rewards"
    );
    bad!(
        n,
        gae.try_forward(f2([2, 0]), f2([2, 0]), None),
        Error::Empty { arg: "rewards", .. },
        "rewards"
    );
    let group = |g: usize| GroupAdvantageConfig::new().with_num_generations(g);
    bad!(
        n,
        group(4).try_forward(f2([6, 1])),
        Error::Config {
            field: "num_generations",
            ..
        },
        "num_generations"
    );
    bad!(
        n,
        group(0).try_forward(f2([6, 1])),
        Error::Config {
            field: "num_generations",
            ..
        },
        "num_generations"
    );
    bad!(
        n,
        group(2).try_forward(f2([0, 1])),
        Error::Empty {
            arg: "rewards_per_func",
            ..
        },
        "rewards_per_func"
    );
    bad!(
        n,
        group(2)
            .with_reward_weights(Some(vec![1.0, 2.0]))
            .try_forward(f2([4, 1])),
        Error::Config {
            field: "reward_weights",
            ..
        },
        "reward_weights"
    );
    bad!(
        n,
        group(2)
            .with_reward_weights(Some(vec![f64::NAN]))
            .try_forward(f2([4, 1])),
        Error::Config {
            field: "reward_weights",
            ..
        },
        "reward_weights"
    );
    let rloo = |g: usize| {
        RlooAdvantageConfig::new()
            .with_num_generations(g)
            .with_beta(0.0)
    };
    bad!(
        n,
        rloo(3).try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 5])),
        Error::Config {
            field: "num_generations",
            ..
        },
        "num_generations"
    );
    bad!(
        n,
        rloo(1).try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 5])),
        Error::Config {
            field: "num_generations",
            ..
        },
        "num_generations"
    );
    bad!(
        n,
        rloo(2).try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 6])),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        rloo(2).try_forward(f2([4, 1]), f2([3, 5]), None, b2([3, 5])),
        Error::Shape {
            arg: "old_logps",
            ..
        },
        "old_logps"
    );
    bad!(
        n,
        rloo(2)
            .with_beta(f64::NAN)
            .try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 5])),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        rloo(2)
            .with_reward_clip_range(Some([1.0, -1.0]))
            .try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 5])),
        Error::Config {
            field: "reward_clip_range",
            ..
        },
        "reward_clip_range"
    );
    bad!(
        n,
        rloo(2)
            .with_beta(0.1)
            .try_forward(f2([4, 1]), f2([4, 5]), None, b2([4, 5])),
        Error::MissingInput {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    bad!(
        n,
        rloo(2)
            .with_beta(0.1)
            .try_forward(f2([4, 1]), f2([4, 5]), Some(f2([4, 4])), b2([4, 5])),
        Error::Shape {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    for coef in [-1.0, f64::NAN] {
        bad!(
            n,
            KlPenaltyConfig::new().with_kl_coef(coef).try_init(),
            Error::Config {
                field: "kl_coef",
                ..
            },
            "kl_coef"
        );
    }
    let kl = KlPenaltyConfig::new().init();
    bad!(
        n,
        kl.try_forward(f1(2), f2([2, 3]), f2([2, 4]), None, None),
        Error::Shape {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    bad!(
        n,
        kl.try_forward(f1(3), f2([2, 3]), f2([2, 3]), None, None),
        Error::Shape { arg: "scores", .. },
        "scores"
    );
    bad!(
        n,
        kl.try_forward(f1(2), f2([2, 3]), f2([2, 3]), Some(b2([2, 2])), None),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        kl.try_forward(
            f1(2),
            f2([2, 3]),
            f2([2, 3]),
            None,
            Some(Tensor::zeros([3], &dev()))
        ),
        Error::Shape {
            arg: "score_index",
            ..
        },
        "score_index"
    );
    let idx = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3], [2]), &dev());
    bad!(
        n,
        kl.try_forward(f1(2), f2([2, 3]), f2([2, 3]), None, Some(idx)),
        Error::Config {
            field: "score_index",
            ..
        },
        "score_index"
    );
    bad!(
        n,
        kl.try_forward(f1(2), f2([2, 0]), f2([2, 0]), None, None),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    bad!(
        n,
        kl.with_kl_coef(f64::NAN)
            .try_forward(f1(2), f2([2, 3]), f2([2, 3]), None, None),
        Error::Config {
            field: "kl_coef",
            ..
        },
        "kl_coef"
    );
    bad!(
        n,
        AdaptiveKlController::try_new(0.1, 0.0, 100.0),
        Error::Config {
            field: "target",
            ..
        },
        "target"
    );
    bad!(
        n,
        AdaptiveKlController::try_new(0.1, 6.0, f64::NAN),
        Error::Config {
            field: "horizon",
            ..
        },
        "horizon"
    );
    bad!(
        n,
        AdaptiveKlController::try_new(-0.1, 6.0, 100.0),
        Error::Config {
            field: "init_value",
            ..
        },
        "init_value"
    );
    println!("advantages/KL: {n} bad-input cases");
    assert_eq!(n, 35);
}

#[test]
fn policy_losses_bad_inputs() {
    let mut n = 0;
    let p = PpoLossConfig::new;
    for eps in [0.0, 1.0, f64::NAN] {
        bad!(
            n,
            p().with_epsilon(eps).try_init(),
            Error::Config {
                field: "epsilon",
                ..
            },
            "epsilon"
        );
    }
    bad!(
        n,
        p().with_epsilon_high(Some(-0.1)).try_init(),
        Error::Config {
            field: "epsilon_high",
            ..
        },
        "epsilon_high"
    );
    bad!(
        n,
        p().with_dual_clip(Some(1.0)).try_init(),
        Error::Config {
            field: "dual_clip",
            ..
        },
        "dual_clip"
    );
    bad!(
        n,
        p().with_value_clip_range(0.0).try_init(),
        Error::Config {
            field: "value_clip_range",
            ..
        },
        "value_clip_range"
    );
    bad!(
        n,
        p().with_vf_coef(f64::NAN).try_init(),
        Error::Config {
            field: "vf_coef",
            ..
        },
        "vf_coef"
    );
    bad!(
        n,
        p().with_entropy_coef(f64::INFINITY).try_init(),
        Error::Config {
            field: "entropy_coef",
            ..
        },
        "entropy_coef"
    );
    bad!(
        n,
        p().with_normalizer(Normalizer::GlobalTokens(0.0))
            .try_init(),
        Error::Config { .. },
        "Normalizer::GlobalTokens"
    );
    let ppo = p().init();
    let inp = || PpoLossInput::new(f2([2, 3]), f2([2, 3]), f2([2, 3]));
    bad!(
        n,
        ppo.try_forward(PpoLossInput::new(f2([2, 3]), f2([2, 4]), f2([2, 3]))),
        Error::Shape {
            arg: "old_logps",
            ..
        },
        "old_logps"
    );
    bad!(
        n,
        ppo.try_forward(PpoLossInput::new(f2([2, 3]), f2([2, 3]), f2([1, 3]))),
        Error::Shape {
            arg: "advantages",
            ..
        },
        "advantages"
    );
    bad!(
        n,
        ppo.try_forward(inp().with_mask(b2([2, 2]))),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        ppo.try_forward(inp().with_values(f2([2, 4]), f2([2, 3]), f2([2, 3]))),
        Error::Shape { arg: "values", .. },
        "values"
    );
    bad!(
        n,
        ppo.try_forward(inp().with_values(f2([2, 3]), f2([2, 3]), f2([3, 3]))),
        Error::Shape { arg: "returns", .. },
        "returns"
    );
    bad!(
        n,
        ppo.try_forward(inp().with_entropy(f2([2, 1]))),
        Error::Shape { arg: "entropy", .. },
        "entropy"
    );
    bad!(
        n,
        ppo.try_forward(PpoLossInput::new(f2([0, 3]), f2([0, 3]), f2([0, 3]))),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    let g = GrpoLossConfig::new;
    bad!(
        n,
        g().with_epsilon(1.0).try_init(),
        Error::Config {
            field: "epsilon",
            ..
        },
        "epsilon"
    );
    bad!(
        n,
        g().with_beta(-1.0).try_init(),
        Error::Config { field: "beta", .. },
        "beta"
    );
    bad!(
        n,
        g().with_delta(Some(1.1)).try_init(),
        Error::Config { field: "delta", .. },
        "delta"
    );
    bad!(
        n,
        g().with_top_entropy_quantile(0.0).try_init(),
        Error::Config {
            field: "top_entropy_quantile",
            ..
        },
        "top_entropy_quantile"
    );
    bad!(
        n,
        g().with_sapo_temperature_neg(0.0).try_init(),
        Error::Config {
            field: "sapo_temperature_neg",
            ..
        },
        "sapo_temperature_neg"
    );
    bad!(
        n,
        g().with_vespo_k_pos(f64::NAN).try_init(),
        Error::Config {
            field: "vespo_k_pos",
            ..
        },
        "vespo_k_pos"
    );
    bad!(
        n,
        g().with_entropy_coef(f64::NAN).try_init(),
        Error::Config {
            field: "entropy_coef",
            ..
        },
        "entropy_coef"
    );
    bad!(
        n,
        g().with_off_policy_mask_threshold(Some(f64::NAN))
            .try_init(),
        Error::Config {
            field: "off_policy_mask_threshold",
            ..
        },
        "off_policy_mask_threshold"
    );
    bad!(
        n,
        g().with_max_completion_length(0).try_init(),
        Error::Config {
            field: "max_completion_length",
            ..
        },
        "max_completion_length"
    );
    bad!(
        n,
        g().with_gradient_accumulation_steps(0).try_init(),
        Error::Config {
            field: "gradient_accumulation_steps",
            ..
        },
        "gradient_accumulation_steps"
    );
    let grpo = g().with_loss_type(GrpoLossType::Grpo).init();
    let gi = || GrpoLossInput::new(f2([2, 3]), b2([2, 3]), f1(2));
    bad!(
        n,
        grpo.try_forward(GrpoLossInput::new(f2([2, 3]), b2([2, 4]), f1(2))),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        grpo.try_forward(GrpoLossInput::new(f2([2, 3]), b2([2, 3]), f1(3))),
        Error::Shape {
            arg: "advantages",
            ..
        },
        "advantages"
    );
    bad!(
        n,
        grpo.try_forward(gi().with_old_logps(f2([2, 4]))),
        Error::Shape {
            arg: "old_logps",
            ..
        },
        "old_logps"
    );
    bad!(
        n,
        grpo.try_forward(GrpoLossInput::new(f2([0, 3]), b2([0, 3]), f1(0))),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    let dapo = g().init();
    bad!(
        n,
        dapo.try_forward(gi()),
        Error::MissingInput {
            arg: "num_items_in_batch",
            ..
        },
        "num_items_in_batch"
    );
    bad!(
        n,
        dapo.try_forward(gi().with_num_items_in_batch(f64::NAN)),
        Error::Config {
            field: "num_items_in_batch",
            ..
        },
        "num_items_in_batch"
    );
    let kl_grpo = g().with_loss_type(GrpoLossType::Grpo).with_beta(0.1).init();
    bad!(
        n,
        kl_grpo.try_forward(gi()),
        Error::MissingInput {
            arg: "ref_logps",
            ..
        },
        "ref_logps"
    );
    let top = g()
        .with_loss_type(GrpoLossType::Grpo)
        .with_top_entropy_quantile(0.5)
        .init();
    bad!(
        n,
        top.try_forward(gi()),
        Error::MissingInput {
            arg: "entropies",
            ..
        },
        "entropies"
    );
    let r = RlooLossConfig::new;
    bad!(
        n,
        r().with_epsilon(-0.1).try_init(),
        Error::Config {
            field: "epsilon",
            ..
        },
        "epsilon"
    );
    bad!(
        n,
        r().with_normalizer(Normalizer::TokenMean).try_init(),
        Error::NormalizerKind { .. },
        "sequence"
    );
    let rl = r().init();
    bad!(
        n,
        rl.try_forward(f2([2, 3]), b2([2, 4]), f1(2), f1(2), None),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        rl.try_forward(f2([2, 3]), b2([2, 3]), f1(3), f1(2), None),
        Error::Shape {
            arg: "old_logps",
            ..
        },
        "old_logps"
    );
    bad!(
        n,
        rl.try_forward(f2([2, 3]), b2([2, 3]), f1(2), f1(1), None),
        Error::Shape {
            arg: "advantages",
            ..
        },
        "advantages"
    );
    bad!(
        n,
        rl.try_forward(f2([2, 3]), b2([2, 3]), f1(2), f1(2), Some(f2([2, 2]))),
        Error::Shape {
            arg: "entropies",
            ..
        },
        "entropies"
    );
    bad!(
        n,
        rl.try_forward(f2([0, 3]), b2([0, 3]), f1(0), f1(0), None),
        Error::Empty { arg: "logps", .. },
        "logps"
    );
    println!("PPO/GRPO/RLOO losses: {n} bad-input cases");
    assert_eq!(n, 41);
}

#[derive(Module, Debug)]
struct Lin {
    w: Param<Tensor<2>>,
}

#[test]
fn ppo_update_bad_inputs() {
    let mut n = 0;
    let device = dev().autodiff();
    let rollout = |b: usize, t: usize| {
        Rollout::new(
            Tensor::<2, Int>::zeros([b, 1], &device),
            Tensor::<2, Int>::zeros([b, t], &device).equal_elem(0),
            Tensor::zeros([b, t], &device),
            Tensor::zeros([b, t], &device),
        )
    };
    let loss = PpoLossConfig::new().init();
    let run = |r: &Rollout, config: PpoStepConfig| {
        let model = Lin {
            w: Param::from_tensor(Tensor::zeros([1, 1], &device)),
        };
        let mut optim = SgdConfig::new().init();
        let t = r.mask.dims()[1];
        try_ppo_update(model, &mut optim, &config, r, &loss, |m: &Lin, batch| {
            let b = batch.mask.dims()[0];
            PolicyOutput::new(m.w.val().reshape([1, 1]).expand([b, t]))
        })
        .map(|_| ())
        .map_err(|e| e.error)
    };
    let c = || PpoStepConfig::new().with_epochs(1);
    bad!(
        n,
        run(&rollout(0, 3), c()),
        Error::Empty { arg: "mask", .. },
        "mask"
    );
    let mut r = rollout(4, 3);
    r.old_logps = Tensor::zeros([4, 2], &device);
    bad!(
        n,
        run(&r, c()),
        Error::Shape {
            arg: "old_logps",
            ..
        },
        "old_logps"
    );
    let mut r = rollout(4, 3);
    r.advantages = Tensor::zeros([4, 2], &device);
    bad!(
        n,
        run(&r, c()),
        Error::Shape {
            arg: "advantages",
            ..
        },
        "advantages"
    );
    let mut r = rollout(4, 3);
    r.tokens = Tensor::zeros([3, 1], &device);
    bad!(
        n,
        run(&r, c()),
        Error::Shape { arg: "tokens", .. },
        "tokens"
    );
    let mut r = rollout(4, 3);
    r.returns = Some(Tensor::zeros([4, 4], &device));
    bad!(
        n,
        run(&r, c()),
        Error::Shape { arg: "returns", .. },
        "returns"
    );
    bad!(
        n,
        run(&rollout(4, 3), c().with_learning_rate(0.0)),
        Error::Config {
            field: "learning_rate",
            ..
        },
        "learning_rate"
    );
    bad!(
        n,
        run(&rollout(4, 3), c().with_max_grad_norm(Some(-1.0))),
        Error::Config {
            field: "max_grad_norm",
            ..
        },
        "max_grad_norm"
    );
    bad!(
        n,
        run(&rollout(4, 3), c().with_num_minibatches(3)),
        Error::Conflict {
            field: "num_minibatches",
            ..
        },
        "num_minibatches"
    );
    bad!(
        n,
        run(&rollout(4, 3), c().with_gradient_accumulation_steps(3)),
        Error::Conflict {
            field: "num_minibatches",
            ..
        },
        "gradient_accumulation_steps"
    );
    bad!(
        n,
        run(&rollout(4, 3), c().with_epochs(0)),
        Error::Config {
            field: "epochs",
            ..
        },
        "epochs"
    );
    // Issue 23: target_kl with a loss that reports no approx_kl would do nothing.
    let grpo = GrpoLossConfig::new().init();
    let model = Lin {
        w: Param::from_tensor(Tensor::zeros([1, 1], &device)),
    };
    let mut optim = SgdConfig::new().init();
    bad!(
        n,
        try_ppo_update(
            model,
            &mut optim,
            &c().with_target_kl(Some(0.01)),
            &rollout(4, 3),
            &grpo,
            |m: &Lin, batch| {
                let b = batch.mask.dims()[0];
                PolicyOutput::new(m.w.val().reshape([1, 1]).expand([b, 3]))
            }
        )
        .map(|_| ())
        .map_err(|e| e.error),
        Error::Conflict {
            field: "target_kl",
            ..
        },
        "target_kl"
    );
    println!("ppo_update: {n} bad-input cases");
    assert_eq!(n, 11);
}

#[test]
fn checked_mode_names_non_finite_arguments() {
    let mut n = 0;
    with_checked_mode(true, || {
        let gae = GaeConfig::new().init();
        bad!(
            n,
            gae.try_forward(nan2([2, 3]), f2([2, 3]), None),
            Error::NonFinite { arg: "rewards" },
            "rewards"
        );
        bad!(
            n,
            gae.try_forward(f2([2, 3]), nan2([2, 3]), None),
            Error::NonFinite { arg: "values" },
            "values"
        );
        let inf_rewards = f2([4, 1]).add_scalar(f64::INFINITY);
        bad!(
            n,
            GroupAdvantageConfig::new()
                .with_num_generations(2)
                .try_forward(inf_rewards.clone()),
            Error::NonFinite {
                arg: "rewards_per_func"
            },
            "rewards_per_func"
        );
        assert!(
            GroupAdvantageConfig::new()
                .with_num_generations(2)
                .try_forward(nan2([4, 1]))
                .is_ok(),
            "NaN = not scored, allowed"
        );
        let rloo = RlooAdvantageConfig::new().with_num_generations(2);
        bad!(
            n,
            rloo.try_forward(inf_rewards, f2([4, 3]), Some(f2([4, 3])), b2([4, 3])),
            Error::NonFinite {
                arg: "rewards_per_func"
            },
            "rewards_per_func"
        );
        bad!(
            n,
            rloo.try_forward(f2([4, 1]), nan2([4, 3]), Some(f2([4, 3])), b2([4, 3])),
            Error::NonFinite { arg: "old_logps" },
            "old_logps"
        );
        bad!(
            n,
            rloo.try_forward(f2([4, 1]), f2([4, 3]), Some(nan2([4, 3])), b2([4, 3])),
            Error::NonFinite { arg: "ref_logps" },
            "ref_logps"
        );
        let kl = KlPenaltyConfig::new().init();
        bad!(
            n,
            kl.try_forward(
                f1(2).add_scalar(f64::NAN),
                f2([2, 3]),
                f2([2, 3]),
                None,
                None
            ),
            Error::NonFinite { arg: "scores" },
            "scores"
        );
        bad!(
            n,
            kl.try_forward(f1(2), f2([2, 3]), nan2([2, 3]), None, None),
            Error::NonFinite { arg: "ref_logps" },
            "ref_logps"
        );
        let ppo = PpoLossConfig::new().init();
        bad!(
            n,
            ppo.try_forward(PpoLossInput::new(nan2([2, 3]), f2([2, 3]), f2([2, 3]))),
            Error::NonFinite { arg: "logps" },
            "logps"
        );
        bad!(
            n,
            ppo.try_forward(PpoLossInput::new(f2([2, 3]), f2([2, 3]), nan2([2, 3]))),
            Error::NonFinite { arg: "advantages" },
            "advantages"
        );
        bad!(
            n,
            ppo.try_forward(
                PpoLossInput::new(f2([2, 3]), f2([2, 3]), f2([2, 3])).with_values(
                    f2([2, 3]),
                    f2([2, 3]),
                    nan2([2, 3])
                )
            ),
            Error::NonFinite { arg: "returns" },
            "returns"
        );
        let grpo = GrpoLossConfig::new()
            .with_loss_type(GrpoLossType::Grpo)
            .init();
        bad!(
            n,
            grpo.try_forward(GrpoLossInput::new(
                f2([2, 3]),
                b2([2, 3]),
                f1(2).add_scalar(f64::NAN)
            )),
            Error::NonFinite { arg: "advantages" },
            "advantages"
        );
        bad!(
            n,
            grpo.try_forward(
                GrpoLossInput::new(f2([2, 3]), b2([2, 3]), f1(2)).with_old_logps(nan2([2, 3]))
            ),
            Error::NonFinite { arg: "old_logps" },
            "old_logps"
        );
        let rl = RlooLossConfig::new().init();
        bad!(
            n,
            rl.try_forward(
                f2([2, 3]),
                b2([2, 3]),
                f1(2).add_scalar(f64::NAN),
                f1(2),
                None
            ),
            Error::NonFinite { arg: "old_logps" },
            "old_logps"
        );
    });
    println!("RL checked mode: {n} non-finite cases");
    assert_eq!(n, 14);
}
