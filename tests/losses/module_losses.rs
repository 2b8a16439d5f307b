//! Loss ops are plain-data burn `Module`s (as burn-nn's `CrossEntropyLoss`): they live inside
//! a user's `#[derive(Module)]` struct, survive `valid()`, `to_device` and a record round trip
//! (the record holds the user's parameters; a loss's settings are configuration, kept by the
//! destination module), and compute the same loss afterwards.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData};
use burn_rlhf::losses::{DpoLoss, DpoLossConfig, DpoLossType, PreferenceBatch};
use burn_rlhf::rl::{Gae, GaeConfig, PpoLoss, PpoLossConfig};

#[derive(Module, Debug)]
struct Trainer {
    head: Linear,
    scale: Param<Tensor<1>>,
    dpo: DpoLoss,
    ppo: PpoLoss,
    gae: Gae,
}

fn v(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

fn batch(device: &Device) -> PreferenceBatch {
    let t = |x: [f64; 2]| Tensor::<1>::from_data(TensorData::new(x.to_vec(), [2]), device);
    PreferenceBatch::new(t([-1.0, -2.0]), t([-3.0, -1.5]))
        .with_ref_logps(t([-1.5, -2.0]), t([-2.5, -2.0]))
}

#[test]
fn a_loss_inside_a_user_module_round_trips_its_record() {
    let device = Device::flex();
    let dpo = DpoLossConfig::new()
        .with_beta(0.25)
        .with_loss_type(vec![DpoLossType::Hinge])
        .init();
    let make = |dpo: DpoLoss| Trainer {
        head: LinearConfig::new(3, 2).init(&device),
        scale: Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32], [1]),
            &device,
        )),
        dpo,
        ppo: PpoLossConfig::new().init(),
        gae: GaeConfig::new().init(),
    };
    let trained = make(dpo.clone());
    let want_loss = v(trained.dpo.forward(&batch(&device)).loss);
    // Closed form: hinge max(0, 1 - beta * delta) with delta = (pi_c - ref_c) - (pi_r - ref_r)
    // = (0.5 + 0.5, 0 - 0.5) = (1, -0.5): losses (0.75, 1.125), mean 0.9375.
    let hinge: Vec<f64> = [1.0, -0.5]
        .iter()
        .map(|d: &f64| (1.0 - 0.25 * d).max(0.0))
        .collect();
    let mean = (hinge[0] + hinge[1]) / 2.0;
    assert!(
        (want_loss[0] - mean).abs() < 1e-6,
        "{want_loss:?} vs {mean}"
    );

    let head_weight = v(trained.head.weight.val().flatten::<1>(0, 1));
    let bytes = trained.clone().into_record().into_bytes().unwrap();
    // A fresh module with other parameters (and the same loss settings) loads the record.
    let fresh = make(dpo).load_record(ModuleRecord::from_bytes(bytes).unwrap());
    assert_eq!(v(fresh.head.weight.val().flatten::<1>(0, 1)), head_weight);
    assert_eq!(v(fresh.scale.val()), vec![0.5]);
    assert_eq!(v(fresh.dpo.forward(&batch(&device)).loss), want_loss);
    // valid() and to_device keep the loss usable.
    let snapshot = fresh.valid().to_device(&device);
    assert_eq!(v(snapshot.dpo.forward(&batch(&device)).loss), want_loss);
}
