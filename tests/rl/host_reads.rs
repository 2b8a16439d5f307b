//! The device -> host reads of the default hot paths, pinned (issue 15): the token and fused
//! log-probs, every loss forward and backward, metrics (one transfer when asked), gradient
//! clipping and the PPO update's loop. [`host_reads::count`] counts every read the library
//! makes on this thread; `every_read_goes_through_host_reads` checks that no source file reads
//! around it, so the counts below cover all of them.
//!
//! The label range checks always run on the CPU backends (the labels are host memory: the
//! read is a copy, not a device sync), so the log-prob ops make one read here on flex, in
//! debug and release builds alike: `CHECKS` is that one read. On a GPU they read nothing
//! outside checked mode (an out-of-range label is a NaN log-prob there).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use burn_rlhf::host_reads;
use burn_rlhf::logps::FusedLogpsConfig;
use burn_rlhf::logps::{GatheredLogps, LabelAlignment, TokenLogpsConfig};
use burn_rlhf::losses::{
    BcoLossConfig, BradleyTerryLossConfig, CpoLossConfig, DpoLossConfig, KtoLossConfig,
    OrpoLossConfig, PreferenceBatch, RunningMoments, SftLossConfig, UnpairedBatch,
};
use burn_rlhf::rl::{
    GrpoLossConfig, GrpoLossInput, PolicyOutput, PpoLossConfig, PpoLossInput, PpoStepConfig,
    Rollout, clip_grad_norm, clip_grad_norm_on_device, try_ppo_update,
};
use burn_rlhf::with_checked_mode;

/// Reads of the label range check on a CPU device (every build profile).
const CHECKS: u64 = 1;

fn dev() -> Device {
    Device::flex().autodiff()
}

/// Reads made by `f` on this thread (checked mode off).
fn reads<T>(f: impl FnOnce() -> T) -> u64 {
    with_checked_mode(false, || {
        let before = host_reads::count();
        let out = f();
        drop(out);
        host_reads::count() - before
    })
}

fn logps(b: usize, t: usize) -> GatheredLogps {
    let lp = Tensor::<2>::random([b, t], Distribution::Uniform(-3.0, -0.1), &dev()).require_grad();
    let mask = Tensor::<2, Bool>::from_data(
        TensorData::new(
            (0..b * t).map(|i| i % t < t - 1).collect::<Vec<_>>(),
            [b, t],
        ),
        &dev(),
    );
    GatheredLogps { logps: lp, mask }
}

fn seq(b: usize, low: f64) -> Tensor<1> {
    Tensor::<1>::random([b], Distribution::Uniform(low, low + 1.0), &dev())
}

#[test]
fn token_and_fused_logps_read_nothing_but_the_optional_check() {
    let (b, t, v, h) = (2, 6, 11, 8);
    let labels = Tensor::<2, Int>::random([b, t], Distribution::Uniform(0.0, v as f64), &dev());
    let n = reads(|| {
        let logits =
            Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 1.0), &dev()).require_grad();
        let out = TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .init()
            .forward(logits, labels.clone());
        out.logps.sum().backward()
    });
    assert_eq!(n, CHECKS, "token log-probs, forward + backward");

    let n = reads(|| {
        let hidden =
            Tensor::<2>::random([b * t, h], Distribution::Normal(0.0, 1.0), &dev()).require_grad();
        let head: Linear = LinearConfig::new(h, v).init(&dev());
        let targets = labels.clone().reshape([b * t]);
        let out = FusedLogpsConfig::new()
            .init()
            .forward_head(hidden, &head, targets);
        out.logps.sum().backward()
    });
    assert_eq!(n, CHECKS, "fused log-probs, forward + backward");

    // The explicit check is one read, and checked mode turns it on too.
    let explicit = reads(|| {
        let logits = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 1.0), &dev());
        TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .with_check_labels(true)
            .init()
            .forward(logits, labels.clone())
    });
    assert_eq!(explicit, 1);
}

#[test]
fn every_loss_forward_and_backward_reads_nothing() {
    let b = 4;
    let pair = move || {
        PreferenceBatch::from_tokens(logps(b, 5), logps(b, 5))
            .with_ref_logps(seq(b, -4.0), seq(b, -4.0))
    };
    type Loss<'a> = Box<dyn Fn() -> Tensor<1> + 'a>;
    let cases: Vec<(&str, Loss)> = vec![
        (
            "dpo",
            Box::new(move || DpoLossConfig::new().init().forward(&pair()).loss),
        ),
        (
            "cpo",
            Box::new(move || CpoLossConfig::new().init().forward(&pair()).loss),
        ),
        (
            "orpo",
            Box::new(move || OrpoLossConfig::new().init().forward(&pair()).loss),
        ),
        (
            "kto",
            Box::new(move || {
                let batch = UnpairedBatch::new(
                    logps(b, 5).sum(),
                    seq(b, -4.0),
                    Tensor::<1, Bool>::from_data(
                        TensorData::from([true, false, true, false]),
                        &dev(),
                    ),
                )
                .with_kl(seq(1, 0.0));
                KtoLossConfig::new().init().forward(&batch).loss
            }),
        ),
        (
            "bco (train = false)",
            Box::new(move || {
                let batch = UnpairedBatch::new(
                    logps(b, 5).sum(),
                    seq(b, -4.0),
                    Tensor::<1, Bool>::from_data(
                        TensorData::from([true, false, true, false]),
                        &dev(),
                    ),
                );
                let mut running = RunningMoments::default();
                BcoLossConfig::new()
                    .init()
                    .forward(&batch, &mut running, false)
                    .loss
            }),
        ),
        (
            "bradley-terry",
            Box::new(move || {
                let chosen = seq(b, 0.0).require_grad();
                BradleyTerryLossConfig::new()
                    .init()
                    .forward(chosen, seq(b, -0.5), None)
                    .loss
            }),
        ),
        (
            "sft",
            Box::new(move || SftLossConfig::new().init().forward(&logps(b, 5)).loss),
        ),
        (
            "ppo",
            Box::new(move || {
                let g = logps(b, 5);
                let old = g.logps.clone().detach().add_scalar(0.05);
                let adv = Tensor::<2>::random([b, 5], Distribution::Normal(0.0, 1.0), &dev());
                PpoLossConfig::new()
                    .init()
                    .forward(PpoLossInput::new(g.logps, old, adv).with_mask(g.mask))
                    .loss
            }),
        ),
        (
            "grpo",
            Box::new(move || {
                let g = logps(b, 5);
                let old = g.logps.clone().detach().add_scalar(0.05);
                GrpoLossConfig::new()
                    .init()
                    .forward(
                        GrpoLossInput::new(g.logps, g.mask, seq(b, -0.5))
                            .with_old_logps(old)
                            .with_num_items_in_batch(16.0),
                    )
                    .loss
            }),
        ),
    ];
    for (name, loss) in cases {
        let n = reads(|| loss().backward());
        assert_eq!(n, 0, "{name}: forward + backward");
    }
    // BCO's training step updates its running reward mean: one read, documented.
    let n = reads(|| {
        let batch = UnpairedBatch::new(
            logps(b, 5).sum(),
            seq(b, -4.0),
            Tensor::<1, Bool>::from_data(TensorData::from([true, false, true, false]), &dev()),
        );
        BcoLossConfig::new()
            .init()
            .forward(&batch, &mut RunningMoments::default(), true)
            .loss
    });
    assert_eq!(n, 1, "bco (train = true)");
}

#[test]
fn metrics_are_read_in_one_transfer_when_asked() {
    let batch = PreferenceBatch::from_tokens(logps(4, 5), logps(4, 5))
        .with_ref_logps(seq(4, -4.0), seq(4, -4.0));
    let out = DpoLossConfig::new().init().forward(&batch);
    assert!(
        out.metrics.len() >= 6,
        "{:?}",
        out.metrics.keys().collect::<Vec<_>>()
    );
    let mut host = Default::default();
    let n = reads(|| host = out.metrics.to_host());
    assert_eq!(n, 1, "one transfer for {} metrics", out.metrics.len());
    // The values are the tensors' own.
    let margin = out.metrics.get("rewards/margins").unwrap().clone();
    assert_eq!(host["rewards/margins"], margin.into_scalar::<f64>());
}

#[derive(Module, Debug)]
struct Table {
    logps: Param<Tensor<2>>,
}

#[test]
fn gradient_clipping_and_the_ppo_update_loop() {
    let (b, t) = (8, 4);
    let table = Table {
        logps: Param::from_tensor(Tensor::<2>::random(
            [b, t],
            Distribution::Uniform(-2.0, -0.5),
            &dev(),
        )),
    };
    let grads = || {
        let g = table.logps.val().mul_scalar(3.0).sum().backward();
        GradientsParams::from_grads(g, &table)
    };
    let mut g = grads();
    assert_eq!(reads(|| clip_grad_norm_on_device(&table, &mut g, 0.1)), 0);
    let mut g = grads();
    assert_eq!(reads(|| clip_grad_norm(&table, &mut g, 0.1)), 1);

    let index = Tensor::<2, Int>::from_data(
        TensorData::new((0..b as i64).collect::<Vec<_>>(), [b, 1]),
        &dev(),
    );
    let mask = Tensor::<2, Bool>::from_data(
        TensorData::new((0..b * t).map(|i| i % t != 3).collect::<Vec<_>>(), [b, t]),
        &dev(),
    );
    let old = table.logps.val().detach().add_scalar(0.02);
    let adv = Tensor::<2>::random([b, t], Distribution::Normal(0.0, 1.0), &dev());
    let rollout = Rollout::new(index, mask, old, adv);
    let loss = PpoLossConfig::new().init();
    let run = |config: PpoStepConfig| {
        reads(|| {
            let mut optim = SgdConfig::new().init();
            try_ppo_update(
                table.clone(),
                &mut optim,
                &config,
                &rollout,
                &loss,
                |m, batch| {
                    let n = batch.len();
                    PolicyOutput::new(m.logps.val().select(0, batch.tokens.clone().reshape([n])))
                },
            )
            .map(|(_, stats)| stats.optimizer_steps)
            .unwrap()
        })
    };
    // 2 epochs x 4 minibatches x 2 micro-batches, clipping on: the row token counts once,
    // the metrics once at the end, nothing inside the loop.
    let config = PpoStepConfig::new()
        .with_epochs(2)
        .with_num_minibatches(4)
        .with_gradient_accumulation_steps(2)
        .with_max_grad_norm(Some(0.5));
    assert_eq!(run(config.clone()), 2);
    // Early stopping reads the minibatch's approx_kl: one read per optimizer step taken.
    let with_kl = reads(|| {
        let mut optim = SgdConfig::new().init();
        try_ppo_update(
            table.clone(),
            &mut optim,
            &config.clone().with_target_kl(Some(1e9)),
            &rollout,
            &loss,
            |m, batch| {
                let n = batch.len();
                PolicyOutput::new(m.logps.val().select(0, batch.tokens.clone().reshape([n])))
            },
        )
        .unwrap()
        .1
        .optimizer_steps
    });
    assert_eq!(with_kl, 2 + 8, "one approx_kl read per optimizer step (8)");
}

#[test]
fn checked_mode_reads_and_the_counter_sees_it() {
    let batch = PreferenceBatch::from_tokens(logps(4, 5), logps(4, 5))
        .with_ref_logps(seq(4, -4.0), seq(4, -4.0));
    let before = host_reads::count();
    with_checked_mode(true, || DpoLossConfig::new().init().forward(&batch));
    assert!(
        host_reads::count() > before,
        "checked mode's finite-input checks read the inputs"
    );
}

/// Every read in `src/` (outside unit tests) goes through `host_reads`, so the counts above
/// see all of them. burn-train's metric adapter is the one exception: burn-train's `Metric`
/// API reads the value itself (`try_into_scalar`), once per logged metric.
#[test]
fn every_read_goes_through_host_reads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    let mut offenders = vec![];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == "host_reads.rs" || rel == "test_util.rs" || !rel.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests (`#[cfg(test)]`, `#[cfg(all(test, ..))]`) sit at the bottom of a file.
            let end = ["#[cfg(test)]", "#[cfg(all(test"]
                .iter()
                .filter_map(|m| text.find(m))
                .min()
                .unwrap_or(text.len());
            let code = &text[..end];
            for (i, line) in code.lines().enumerate() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                let reads = [".into_data()", ".into_scalar", ".to_data()", ".into_data\n"]
                    .iter()
                    .any(|p| line.contains(p));
                let allowed = rel == "train/metric.rs" && line.contains("try_into_scalar");
                if reads && !allowed {
                    offenders.push(format!("src/{rel}:{}: {line}", i + 1));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "reads outside host_reads:\n{}",
        offenders.join("\n")
    );
}
