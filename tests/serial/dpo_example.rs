//! The `dpo` example, shortened: the loss falls and the held-out reward accuracy rises on
//! flex; the precomputed-reference option gives the same first-step loss; unknown flags and
//! losses are clear errors; every loss family runs end to end (a few steps each).

#[path = "../../examples/dpo.rs"]
pub mod dpo;

fn short(loss: &str) -> dpo::Args {
    dpo::Args {
        loss: loss.into(),
        steps: 60,
        sft_steps: 40,
        batch: 16,
        quiet: true,
        heldout: 64,
        d_model: 32,
        ..dpo::Args::default()
    }
}

#[test]
fn dpo_learns_the_preference() {
    let _serial = crate::serial();
    let s = dpo::run(&short("sigmoid")).unwrap();
    let acc = |range: std::ops::Range<usize>| {
        let v: Vec<f64> = s.history[range]
            .iter()
            .map(|(_, m)| m["rewards/accuracies"])
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let n = s.history.len();
    let (early, late) = (acc(0..2), acc(n - 10..n));
    println!(
        "loss {} -> {}, train accuracy {early} -> {late}, held-out {}",
        s.first_loss, s.last_loss, s.heldout_reward_accuracy
    );
    let late_loss = s.history[n - 10..]
        .iter()
        .map(|(_, m)| m["loss"])
        .sum::<f64>()
        / 10.0;
    assert!(
        late_loss < s.first_loss * 0.85,
        "loss should fall: {} -> {late_loss}",
        s.first_loss
    );
    assert!(
        late > 0.8 && late > early + 0.2,
        "training reward accuracy should rise: {early} -> {late}"
    );
    assert!(
        s.heldout_reward_accuracy > 0.75,
        "held-out reward accuracy {}",
        s.heldout_reward_accuracy
    );
}

#[test]
fn precomputed_reference_gives_the_same_first_step_loss() {
    let _serial = crate::serial();
    let args = dpo::Args {
        steps: 1,
        ..short("sigmoid")
    };
    let live = dpo::run(&args).unwrap();
    let pre = dpo::run(&dpo::Args {
        precompute_ref: true,
        ..args
    })
    .unwrap();
    assert!(
        (live.first_loss - pre.first_loss).abs() < 1e-6,
        "{} vs {}",
        live.first_loss,
        pre.first_loss
    );
}

#[test]
fn every_loss_family_runs_end_to_end() {
    let _serial = crate::serial();
    for loss in dpo::LOSSES {
        let s = dpo::run(&dpo::Args {
            steps: 2,
            sft_steps: 1,
            batch: 4,
            heldout: 8,
            ..short(loss)
        })
        .unwrap_or_else(|e| panic!("{loss}: {e}"));
        assert!(
            s.first_loss.is_finite() && s.last_loss.is_finite(),
            "{loss}: {s:?}"
        );
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let _serial = crate::serial();
    let argv = |v: &[&str]| {
        std::iter::once("dpo")
            .chain(v.iter().copied())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let err = dpo::Args::parse(&argv(&["--loss", "nope"])).unwrap_err();
    assert!(
        err.contains("--loss nope") && err.contains("sigmoid"),
        "{err}"
    );
    let err = dpo::Args::parse(&argv(&["--steps", "many"])).unwrap_err();
    assert!(err.contains("--steps"), "{err}");
    let err = dpo::Args::parse(&argv(&["--frobnicate"])).unwrap_err();
    assert!(err.contains("unknown flag"), "{err}");
    let err = dpo::run(&dpo::Args {
        device: "tpu".into(),
        ..short("sigmoid")
    })
    .unwrap_err();
    assert!(err.contains("--device tpu"), "{err}");
}

/// Issue 23: the examples' `TinyLm` (burn's transformer with its autoregressive cache,
/// positions counted from the first real token, padding masked) samples the same tokens and
/// log-probs (1e-5) through the KV-cache path as through the full forward, with left-padded
/// prompts of different lengths, greedy and sampled with truncation.
#[test]
fn tiny_lm_cached_and_uncached_sampling_agree_with_left_padding() {
    let _serial = crate::serial();
    use burn::tensor::Device;
    use burn_rlhf::generate::{Prompts, SamplerConfig};
    let device = Device::flex();
    device.seed(5);
    let model = dpo::common::toy::TinyLm::new(32, 2, &device);
    let prompts = Prompts::left_padded(
        &[vec![1, 2, 3, 4, 10], vec![5, 10], vec![7, 8, 10]],
        dpo::common::toy::EOS,
        &device,
    );
    let host = |t: burn::tensor::Tensor<2>| -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()
    };
    for greedy in [true, false] {
        let sampler = SamplerConfig::new()
            .with_num_generations(2)
            .with_max_new_tokens(5)
            .with_greedy(greedy)
            .with_temperature(0.9)
            .with_top_k(Some(6))
            .with_top_p(0.95)
            .init();
        let full = sampler.sample(&model, &prompts, 17);
        let cached = sampler.sample_cached(&model, &prompts, 17);
        assert_eq!(full.completions(), cached.completions(), "greedy {greedy}");
        for (name, a, b) in [
            ("logps", full.logps.clone(), cached.logps.clone()),
            (
                "sampling_logps",
                full.sampling_logps.clone(),
                cached.sampling_logps.clone(),
            ),
        ] {
            let (a, b) = (host(a), host(b));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "greedy {greedy}: {name} differ by {worst}");
        }
    }
}
