//! Data parallel through burn-train (feature `train`): the `dpo_multi_device` example,
//! shortened (two replicas under burn-train's `MultiDevice` strategy end at the parameters of
//! single-device training on the whole batch), and the adapters' reducer path: the gradients
//! of two concurrent `TrainStep::step` calls with a shared [`ThreadReducer`] sum to the
//! gradient of one step on the whole batch (KTO with its global KL, SFT with its global token
//! count, the reward model with its global pair count), and an epoch that burn's split cuts
//! unequally (9 items, batch 4, 2 devices): refused at setup, and trained to the end with
//! [`EqualShards`].

#[path = "../../examples/dpo_multi_device.rs"]
pub mod dpo_multi_device;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use burn::train::TrainStep;
use burn_rlhf::distributed::{EqualShards, ThreadReducer, check_loader_split};
use burn_rlhf::losses::{BradleyTerryLossConfig, DpoLossConfig, KtoLossConfig};
use burn_rlhf::train::{
    KtoModel, PreferenceItem, PreferenceModel, RewardInput, RewardItem, RewardModel,
    SequenceRewardModel, SftInput, SftItem, SftModel, TokenBatcher, UnpairedInput, UnpairedItem,
};
use dpo_multi_device::common::rng::Rng;
use dpo_multi_device::common::toy::{EOS, PROMPT, TinyLm, make_pairs};

use burn::data::dataloader::batcher::Batcher;

#[test]
fn two_replicas_match_single_device_training() {
    let _serial = crate::serial();
    let args = dpo_multi_device::Args {
        replicas: 2,
        steps: 4,
        batch: 4,
        sft_steps: 30,
        heldout: 32,
        d_model: 16,
        out: std::env::temp_dir().join("burn-rlhf-dpo-multi-device"),
        ..dpo_multi_device::Args::default()
    };
    let s = dpo_multi_device::run(&args).unwrap();
    println!("{s:#?}");
    assert!(s.max_param_diff <= 1e-5, "{}", s.max_param_diff);
    assert!(s.max_param_move > 1e-4, "training moved the parameters");
    assert_eq!(s.reducer_calls, args.steps as u64, "one reduction per step");
    assert!(
        (s.accuracy_single - s.accuracy_replicas).abs() <= 1.0 / args.heldout as f64,
        "same held-out accuracy: {} vs {}",
        s.accuracy_single,
        s.accuracy_replicas
    );
}

/// All float gradients of `model`'s parameters, in visiting order.
fn flat_grads(model: &TinyLm, grads: &GradientsParams) -> Vec<f64> {
    struct Collect<'a>(&'a GradientsParams, Vec<f64>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.extend(
                    g.into_data()
                        .convert::<f64>()
                        .try_into_vec::<f64>()
                        .unwrap(),
                );
            }
        }
    }
    let mut c = Collect(grads, vec![]);
    model.visit(&mut c);
    c.1
}

/// The summed gradients of the `shards` inputs run as concurrent training steps (one thread
/// each, as burn-train's workers) vs the gradient of one training step on `whole`.
fn check_adapter<M: TrainStep + Send>(
    what: &str,
    policy: &TinyLm,
    whole: M::Input,
    shards: Vec<M::Input>,
    model: impl Fn(Option<ThreadReducer>) -> M,
) where
    M::Input: Send,
{
    let want = flat_grads(policy, &model(None).step(whole).grads);
    let reducer = ThreadReducer::new(shards.len()).unwrap();
    let per_shard: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .into_iter()
            .map(|input| {
                let m = model(Some(reducer.clone()));
                scope.spawn(move || m.step(input).grads)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| flat_grads(policy, &h.join().unwrap()))
            .collect()
    });
    let got: Vec<f64> = (0..want.len())
        .map(|i| per_shard.iter().map(|g| g[i]).sum())
        .collect();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    println!("{what}: max |grad diff| {diff:e} (scale {scale:e})");
    assert!(
        scale > 1e-6 && diff <= 1e-5 * scale,
        "{what}: {diff:e} vs {scale:e}"
    );
    assert_eq!(reducer.calls(), 1, "{what}: one reduction per step");
}

fn batch<I, O>(items: &[I]) -> O
where
    I: Clone,
    TokenBatcher: Batcher<I, O>,
{
    TokenBatcher::new(EOS).batch(items.to_vec(), &Device::flex().autodiff())
}

/// The shards' inputs stacked into one (KTO's mismatched KL rows are built per shard, as
/// each rank builds its own; the whole-batch step must see the same rows).
fn stack(shards: &[UnpairedInput]) -> UnpairedInput {
    let cat2 = |f: &dyn Fn(&UnpairedInput) -> Tensor<2, Int>| {
        Tensor::cat(shards.iter().map(f).collect(), 0)
    };
    UnpairedInput {
        ids: cat2(&|s| s.ids.clone()),
        labels: cat2(&|s| s.labels.clone()),
        desirable: Tensor::cat(shards.iter().map(|s| s.desirable.clone()).collect(), 0),
        kl_ids: Some(cat2(&|s| s.kl_ids.clone().unwrap())),
        kl_labels: Some(cat2(&|s| s.kl_labels.clone().unwrap())),
        ref_logps: None,
        ref_kl_logps: None,
    }
}

#[test]
fn kto_adapter_with_reducer_sums_to_the_whole_batch_gradient() {
    let _serial = crate::serial();
    let device = Device::flex().autodiff();
    device.seed(3);
    let policy = TinyLm::new(16, 1, &device);
    let reference = policy.valid();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let pairs = make_pairs(10, &mut rng);
    let items: Vec<UnpairedItem> = pairs
        .chosen
        .iter()
        .chain(&pairs.rejected)
        .enumerate()
        .map(|(i, row)| UnpairedItem {
            prompt: row[..=PROMPT].to_vec(),
            completion: row[PROMPT + 1..].to_vec(),
            desirable: i < 10,
        })
        .collect();
    // Interleave desirable and undesirable items so that both shards hold both.
    let items: Vec<UnpairedItem> = (0..10)
        .flat_map(|i| [items[i].clone(), items[10 + i].clone()])
        .collect();
    let config = KtoLossConfig::new();
    let shards: Vec<UnpairedInput> = [0..8, 8..20].map(|r| batch(&items[r])).to_vec();
    let whole = stack(&shards);
    check_adapter("kto", &policy, whole, shards, |reducer| {
        let m = KtoModel::new(policy.clone(), Some(reference.clone()), &config);
        match reducer {
            Some(r) => m.with_reducer(r),
            None => m,
        }
    });
}

#[test]
fn sft_adapter_with_reducer_sums_to_the_whole_batch_gradient() {
    let _serial = crate::serial();
    let device = Device::flex().autodiff();
    device.seed(5);
    let policy = TinyLm::new(16, 1, &device);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pairs = make_pairs(12, &mut rng);
    // Completions of different lengths, so the shards' token counts differ.
    let items: Vec<SftItem> = pairs
        .chosen
        .iter()
        .enumerate()
        .map(|(i, row)| SftItem {
            prompt: row[..=PROMPT].to_vec(),
            completion: row[PROMPT + 1 + i % 3..].to_vec(),
        })
        .collect();
    let shards: Vec<SftInput> = [0..5, 5..12].map(|r| batch(&items[r])).to_vec();
    check_adapter("sft", &policy, batch(&items), shards, |reducer| {
        let m = SftModel::new(policy.clone());
        match reducer {
            Some(r) => m.with_reducer(r),
            None => m,
        }
    });
}

/// A reward model for the adapter: the mean hidden activation of each sequence.
impl SequenceRewardModel for TinyLm {
    fn rewards(
        &self,
        input_ids: Tensor<2, Int>,
        _attention_mask: Tensor<2, burn::tensor::Bool>,
    ) -> Tensor<1> {
        let h = self.hidden(input_ids);
        let [n, t, d] = h.dims();
        h.sum_dim(2)
            .sum_dim(1)
            .reshape([n])
            .div_scalar((t * d) as f64)
    }
}

#[test]
fn reward_adapter_with_reducer_sums_to_the_whole_batch_gradient() {
    let _serial = crate::serial();
    let device = Device::flex().autodiff();
    device.seed(9);
    let model = TinyLm::new(16, 1, &device);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ 9);
    let pairs = make_pairs(12, &mut rng);
    let items: Vec<RewardItem> = (0..12)
        .map(|i| RewardItem {
            chosen: pairs.chosen[i].clone(),
            rejected: pairs.rejected[i].clone(),
            margin: None,
        })
        .collect();
    let config = BradleyTerryLossConfig::new().with_center_rewards_coefficient(Some(0.01));
    let shards: Vec<RewardInput> = [0..5, 5..12].map(|r| batch(&items[r])).to_vec();
    check_adapter("reward", &model, batch(&items), shards, |reducer| {
        let m = RewardModel::new(model.clone(), &config);
        match reducer {
            Some(r) => m.with_reducer(r),
            None => m,
        }
    });
}

/// burn's split of 9 items over 2 devices with batch 4 gives 1 and 2 steps: the setup check
/// refuses it before training; the drop-last shards (8 items) train to the end of the epoch.
#[test]
fn unequal_epoch_is_refused_at_setup_and_equal_shards_train_it() {
    use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
    use burn::data::dataset::{Dataset, InMemDataset};
    use burn::optim::AdamConfig;
    use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};
    use std::sync::Arc;

    let _serial = crate::serial();
    let (batch_size, devices_n) = (4, 2);
    let device = Device::flex().autodiff();
    device.seed(13);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ 13);
    let items = dpo_multi_device::items(9, &mut rng);
    let loader = |dataset: Arc<dyn Dataset<PreferenceItem>>| -> Arc<dyn DataLoader<_>> {
        DataLoaderBuilder::new(TokenBatcher::new(EOS))
            .batch_size(batch_size)
            .build(dataset)
    };

    // Without the helper: refused at setup, naming the steps and the fix.
    let whole: Arc<dyn Dataset<PreferenceItem>> = Arc::new(InMemDataset::new(items.clone()));
    let err = check_loader_split(&loader(whole), batch_size, devices_n).unwrap_err();
    println!("refused: {err}");
    let text = err.to_string();
    assert!(
        text.contains("[1, 2]") && text.contains("EqualShards"),
        "{text}"
    );

    // With the helper: 8 items, one full batch per device, and the epoch completes.
    let shards = EqualShards::drop_last(items.len(), batch_size, devices_n).unwrap();
    assert_eq!((shards.kept(), shards.dropped(), shards.steps()), (8, 1, 1));
    let kept: Arc<dyn Dataset<PreferenceItem>> =
        Arc::new(shards.truncate(InMemDataset::new(items)).unwrap());
    let train = loader(kept.clone());
    assert_eq!(
        check_loader_split(&train, batch_size, devices_n).unwrap(),
        1
    );

    let policy = TinyLm::new(16, 1, &device);
    let reference = policy.valid();
    // A reducer that would wait 60 s for a missing device (the first round as long): the run
    // must not need it.
    let reducer = ThreadReducer::new(devices_n)
        .unwrap()
        .with_timeout(std::time::Duration::from_secs(60));
    let out = std::env::temp_dir().join("burn-rlhf-equal-shards");
    let started = std::time::Instant::now();
    let trained = SupervisedTraining::new(&out, train, loader(kept))
        .renderer(Box::new(burn::train::renderer::CliMetricsRenderer::new()))
        .with_application_logger(None)
        .num_epochs(1)
        .with_training_strategy(
            ExecutionStrategy::multi(
                vec![device.clone(); devices_n],
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        )
        .launch(Learner::new(
            PreferenceModel::new(policy.clone(), Some(reference), DpoLossConfig::new().init())
                .with_reducer(reducer.clone()),
            AdamConfig::new().init(),
            1e-3,
        ))
        .model
        .policy;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "equal shards: 1 step per device, {} reduction(s), {seconds:.1} s",
        reducer.calls()
    );
    assert_eq!(reducer.calls(), 1, "one step, one reduction");
    assert!(
        seconds < 30.0,
        "no rank waited for a missing one ({seconds:.1} s)"
    );
    assert!(dpo_multi_device::common::params::max_abs_diff(&trained, &policy) > 0.0);
}
