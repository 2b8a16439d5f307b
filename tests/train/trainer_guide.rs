//! The trainer guide of `examples/README.md`, compiled and run: a complete DPO training step
//! for a burn model with a `Linear` LM head, in four crate calls per step (plus two lines of
//! set-up). Keep this file and the guide in sync.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_rlhf::prelude::*;

/// Any burn model with a `Linear` head: here an embedding and the head.
#[derive(Module, Debug)]
struct MyModel {
    embed: Embedding,
    lm_head: Linear,
}

impl MyModel {
    fn new(device: &Device) -> Self {
        Self {
            embed: EmbeddingConfig::new(11, 8).init(device),
            lm_head: LinearConfig::new(8, 11).init(device),
        }
    }
    fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed.forward(ids)
    }
}

#[test]
fn dpo_step_in_four_crate_calls() {
    let device = Device::flex().autodiff();
    let mut policy = MyModel::new(&device);
    let reference = policy.valid(); // frozen copy, no autodiff
    let mut optim = AdamConfig::new().init();
    // ids [2B, T]: chosen rows first, then rejected; labels = ids with -100 on the prompt.
    let rows = [[1i64, 2, 3, 4], [1, 5, 6, 7], [1, 2, 9, 9], [1, 5, 9, 9]];
    let ids = Tensor::<2, Int>::from_data(TensorData::new(rows.concat(), [4, 4]), &device);
    let labels = ids
        .clone()
        .slice([0..4, 0..1])
        .mul_scalar(0)
        .sub_scalar(100);
    let labels = Tensor::cat(vec![labels, ids.clone().slice([0..4, 1..4])], 1);

    // --- the guide ---------------------------------------------------------------------
    let logps = FusedLogpsConfig::new().init();
    let dpo = DpoLossConfig::new().init();
    let mut margins = Vec::new();
    for _ in 0..30 {
        let (tokens, _) =
            logps.forward_causal_head(policy.hidden(ids.clone()), &policy.lm_head, labels.clone());
        let (ref_tokens, _) = logps.forward_causal_head(
            reference.hidden(ids.clone().inner()),
            &reference.lm_head,
            labels.clone().inner(),
        );
        let batch = PreferenceBatch::from_stacked(tokens).with_stacked_ref_logps(ref_tokens.sum());
        let out = dpo.forward(&batch);
        // ------------------------------------------------------------------------------
        margins.push(out.metrics.to_host()["rewards/margins"]);
        let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
        policy = optim.step(1e-2, policy, grads);
    }
    // The step trains: the reward margin starts at 0 (policy == reference) and grows.
    assert!(margins[0].abs() < 1e-6, "{margins:?}");
    assert!(margins[29] > 0.1, "{margins:?}");
}
