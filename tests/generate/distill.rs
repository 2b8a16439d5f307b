//! On-policy distillation (GKD): the per-batch coin, the off-policy batch and its loss against
//! a closed form computed on the host, the on-policy batch, and exact gradient accumulation of
//! the distillation loss under `Normalizer::GlobalTokens`.

use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_rlhf::Normalizer;
use burn_rlhf::generate::{
    CausalLm, Generation, OnPolicyDistillationConfig, Prompts, SamplerConfig,
};
use burn_rlhf::losses::DistillationLossConfig;

use crate::sampler::{MeanLm, V};

fn host<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    x.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

#[test]
fn the_coin_follows_lmbda() {
    for (lmbda, lo, hi) in [(0.0, 0.0, 0.0), (0.3, 0.27, 0.33), (1.0, 1.0, 1.0)] {
        let step = OnPolicyDistillationConfig::new()
            .with_lmbda(lmbda)
            .with_seed(5)
            .init();
        let on = (0..4000).filter(|&s| step.on_policy(s)).count() as f64 / 4000.0;
        assert!(
            (lo..=hi).contains(&on),
            "lmbda {lmbda}: on-policy share {on}"
        );
    }
    assert!(
        OnPolicyDistillationConfig::new()
            .with_lmbda(1.5)
            .try_init()
            .is_err()
    );
}

/// Forward KL(teacher || student) per token from logits rows, on the host.
fn forward_kl(student: &[f64], teacher: &[f64]) -> f64 {
    let lsm = |z: &[f64]| {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        z.iter().map(|x| x - lse).collect::<Vec<f64>>()
    };
    let (ls, lt) = (lsm(student), lsm(teacher));
    lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum()
}

#[test]
fn an_off_policy_step_trains_on_the_dataset_completions() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let student = MeanLm::new(&ad);
    let teacher = {
        device.seed(11);
        MeanLm::new(&device)
    };
    let prompts = Prompts::left_padded(&[vec![1, 2, 3], vec![4, 5]], 0, &device);
    let completions = vec![vec![6, 7, 0], vec![3, 0]];
    let sampler = SamplerConfig::new()
        .with_num_generations(1)
        .with_max_new_tokens(3)
        .with_eos_token_ids(vec![0])
        .with_pad_token_id(0)
        .init();
    let gkd = OnPolicyDistillationConfig::new()
        .with_lmbda(0.0)
        .with_loss(DistillationLossConfig::new().with_beta(0.0))
        .with_learning_rate(1e-2)
        .init();
    // The closed form on the host: forward KL at every completion token, token mean.
    let batch = Generation::try_from_completions(&prompts, &completions, 0).unwrap();
    let (ids, mask) = (batch.ids(), batch.attention_mask());
    let s_logits = host(student.valid().logits(ids.clone(), mask.clone()));
    let t_logits = host(teacher.logits(ids, mask));
    let width = 3 + 3; // prompt (left-padded to 3) + completion (right-padded to 3)
    let mut want = 0.0;
    let mut count = 0;
    for (row, comp) in completions.iter().enumerate() {
        for j in 0..comp.len() {
            // Position 3 + j - 1 predicts completion token j.
            let at = (row * width + 2 + j) * V;
            want += forward_kl(&s_logits[at..at + V], &t_logits[at..at + V]);
            count += 1;
        }
    }
    want /= count as f64;
    let before = host(student.head.weight.val().inner());
    let mut optim = AdamConfig::new().init();
    let out = gkd
        .try_step(
            student,
            &teacher,
            &mut optim,
            &sampler,
            &prompts,
            &completions,
            0,
        )
        .unwrap();
    assert!(!out.on_policy);
    assert_eq!(out.metrics["on_policy"], 0.0);
    assert_eq!(out.metrics["num_tokens"], 5.0);
    assert!(
        (out.metrics["loss"] - want).abs() <= 1e-5 * want.abs().max(1e-3),
        "loss {} vs closed form {want}",
        out.metrics["loss"]
    );
    let comp_ids: Vec<i64> = out
        .batch
        .completion_ids
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(comp_ids, [6, 7, 0, 3, 0, 0]);
    let after = host(out.student.head.weight.val().inner());
    assert!(
        before.iter().zip(&after).any(|(a, b)| a != b),
        "the student moved"
    );
}

#[test]
fn an_on_policy_step_samples_the_student() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let student = MeanLm::new(&ad);
    let teacher = MeanLm::new(&device);
    let prompts = Prompts::left_padded(&[vec![1, 2], vec![3, 4]], 0, &device);
    let sampler = SamplerConfig::new()
        .with_num_generations(1)
        .with_max_new_tokens(4)
        .with_eos_token_ids(vec![0])
        .with_pad_token_id(0)
        .init();
    let gkd = OnPolicyDistillationConfig::new().with_lmbda(1.0).init();
    let mut optim = AdamConfig::new().init();
    let out = gkd
        .try_step(
            student,
            &teacher,
            &mut optim,
            &sampler,
            &prompts,
            &[vec![5], vec![6]],
            3,
        )
        .unwrap();
    assert!(out.on_policy);
    assert_eq!(out.batch.len(), 2);
    assert_eq!(
        out.batch.completion_ids.dims()[1],
        out.batch.max_new_tokens.min(4)
    );
    // A sampler drawing several completions per prompt is refused.
    let two = SamplerConfig::new().with_num_generations(2).init();
    let err = gkd
        .try_step(
            out.student,
            &teacher,
            &mut optim,
            &two,
            &prompts,
            &[vec![5], vec![6]],
            4,
        )
        .unwrap_err();
    assert!(err.to_string().contains("num_generations"), "{err}");
}

/// Two micro-batches normalized by the step's token count (`GlobalTokens`) sum to the gradient
/// of the whole batch's token mean (TRL's `num_items_in_batch`).
#[test]
fn global_tokens_accumulation_is_exact() {
    let device = Device::flex().autodiff();
    let (b, t, v) = (4, 3, 6);
    let vals: Vec<f64> = (0..b * t * v)
        .map(|i| ((i * 37 % 23) as f64 - 11.0) / 5.0)
        .collect();
    let teach: Vec<f64> = (0..b * t * v)
        .map(|i| ((i * 17 % 19) as f64 - 9.0) / 4.0)
        .collect();
    let mask: Vec<bool> = (0..b * t).map(|i| i % 5 != 3).collect();
    let total = mask.iter().filter(|&&m| m).count() as f64;
    let grad = |rows: std::ops::Range<usize>, normalizer| {
        let s = Tensor::<3>::from_data(
            TensorData::new(vals.clone(), [b, t, v]),
            (&device, burn::tensor::DType::F64),
        )
        .require_grad();
        let tt = Tensor::<3>::from_data(
            TensorData::new(teach.clone(), [b, t, v]),
            (&device, burn::tensor::DType::F64),
        );
        let m = Tensor::<2, Bool>::from_data(TensorData::new(mask.clone(), [b, t]), &device);
        let r = rows.clone();
        let loss = DistillationLossConfig::new()
            .with_beta(0.3)
            .with_normalizer(normalizer)
            .init()
            .forward(
                s.clone().slice([r.clone(), 0..t, 0..v]),
                tt.slice([r.clone(), 0..t, 0..v]),
                m.slice([r, 0..t]),
            )
            .loss;
        host(s.grad(&loss.backward()).unwrap())
    };
    let whole = grad(0..b, Normalizer::TokenMean);
    let first = grad(0..2, Normalizer::GlobalTokens(total));
    let second = grad(2..b, Normalizer::GlobalTokens(total));
    for (i, w) in whole.iter().enumerate() {
        let sum = first[i] + second[i];
        assert!(
            (sum - w).abs() <= 1e-12 + 1e-10 * w.abs(),
            "[{i}] {sum} vs {w}"
        );
    }
}
