//! The `dpo_learner` example, shortened (feature `train`): DPO through burn-train's `Learner`
//! with the crate's adapters reaches >= 0.9 held-out reward accuracy; the reference is not a
//! parameter of the learner's model; TRL-named metrics reach burn-train's logs; the adapters'
//! errors are typed.

#[path = "../../examples/dpo_learner.rs"]
pub mod dpo_learner;

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::Error;
use burn_rlhf::losses::{CpoLossConfig, DpoLossConfig, KtoLossConfig};
use burn_rlhf::train::{KtoModel, PreferenceInput, PreferenceModel, UnpairedInput};

fn short(out: &str, precompute_ref: bool) -> dpo_learner::Options {
    dpo_learner::Options {
        steps: 60,
        sft_steps: 40,
        batch: 16,
        seed: 0,
        out: std::env::temp_dir().join(out),
        precompute_ref,
        heldout: 64,
        d_model: 32,
    }
}

#[test]
fn learner_reaches_the_heldout_accuracy() {
    let _serial = crate::serial();
    let s = dpo_learner::run(&short("burn-rlhf-dpo-learner", false)).unwrap();
    println!("{s:#?}");
    assert!(
        s.heldout_reward_accuracy >= 0.9,
        "held-out reward accuracy {}",
        s.heldout_reward_accuracy
    );
    // The learner's model holds the policy's parameters only.
    assert_eq!(s.params.0, s.params.1);
    // The TRL-named metrics reached burn-train's logs (train and validation splits).
    let get = |k: &str| s.metrics.iter().find(|(key, ..)| key == k).unwrap().clone();
    let (_, train_acc, valid_acc) = get("rewards/accuracies");
    let (train_acc, valid_acc) = (train_acc.unwrap(), valid_acc.unwrap());
    assert!(
        (0.0..=1.0).contains(&train_acc) && train_acc > 0.5,
        "{train_acc}"
    );
    // The validation epoch runs on the held-out pairs with the trained policy: its
    // rewards/accuracies is the held-out accuracy above, up to the validation batching.
    assert!(
        (valid_acc - s.heldout_reward_accuracy).abs() < 1e-9,
        "{valid_acc}"
    );
    let (_, _, margins) = get("rewards/margins");
    assert!(margins.unwrap() > 0.0);
}

#[test]
fn precomputed_reference_trains_without_a_reference_model() {
    let _serial = crate::serial();
    let s = dpo_learner::run(&dpo_learner::Options {
        steps: 30,
        ..short("burn-rlhf-dpo-learner-precomputed", true)
    })
    .unwrap();
    assert!(
        s.heldout_reward_accuracy > 0.7,
        "{}",
        s.heldout_reward_accuracy
    );
}

fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

#[test]
fn adapter_errors_are_typed() {
    let _serial = crate::serial();
    let device = Device::flex();
    let model = dpo_learner::common::toy::TinyLm::new(8, 1, &device);
    let rows: &[&[i64]] = &[
        &[1, 2, 3, 4, 10, 4, 3, 2, 1, 11],
        &[1, 1, 2, 2, 10, 2, 2, 1, 1, 11],
    ];
    let input = PreferenceInput {
        chosen_ids: ids(rows, &device),
        chosen_labels: ids(rows, &device),
        rejected_ids: ids(rows, &device),
        rejected_labels: ids(rows, &device),
        ref_chosen_logps: None,
        ref_rejected_logps: None,
    };
    // DPO without a reference model and without precomputed log-probs.
    let dpo = PreferenceModel::<_, dpo_learner::common::toy::TinyLm>::new(
        model.clone(),
        None,
        DpoLossConfig::new().init(),
    );
    assert!(matches!(
        dpo.try_forward(input.clone()),
        Err(Error::MissingInput { .. })
    ));
    // A reference-free objective needs none.
    let cpo = PreferenceModel::<_, dpo_learner::common::toy::TinyLm>::new(
        model.clone(),
        None,
        CpoLossConfig::new().init(),
    );
    assert!(cpo.try_forward(input.clone()).is_ok());
    // Rejected rows of another batch size.
    let bad = PreferenceInput {
        rejected_ids: ids(&rows[..1], &device),
        rejected_labels: ids(&rows[..1], &device),
        ..input
    };
    assert!(matches!(
        cpo.try_forward(bad),
        Err(Error::Shape {
            arg: "rejected_ids",
            ..
        })
    ));
    // KTO without the mismatched KL rows.
    let kto = KtoModel::new(model.clone(), Some(model.valid()), &KtoLossConfig::new());
    let unpaired = UnpairedInput {
        ids: ids(rows, &device),
        labels: ids(rows, &device),
        desirable: Tensor::<1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &device),
        kl_ids: None,
        kl_labels: None,
        ref_logps: None,
        ref_kl_logps: None,
    };
    assert!(matches!(
        kto.try_forward(unpaired),
        Err(Error::MissingInput { .. })
    ));
}
