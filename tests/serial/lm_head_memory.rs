//! No `V x H` copy on flex: the fused op on a burn `Linear` head (`[H, V]`), forward and
//! backward, allocates far less than one copy of the weight beyond the gradients it returns.
//! Control: the same measurement of a head whose `[V, H]` weight is first made contiguous (what
//! the kernel used to do with a transposed weight, once per pass) shows at least one such copy,
//! so the measurement can see one.
//!
//! The counting global allocator sees the whole process: the binary runs its tests one at a
//! time (`crate::SERIAL`).

#[path = "../../examples/common/mod.rs"]
pub mod examples_common;

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_rlhf::logps::FusedLogpsConfig;
use examples_common::alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[test]
fn linear_head_makes_no_weight_copy_on_flex() {
    let _serial = crate::serial();
    let (n, h, v) = (64, 128, 8192);
    let weight_bytes = h * v * 4;
    let device = Device::flex();
    device.seed(1);
    let ad = device.clone().autodiff();
    let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
    let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), &ad);
    let linear = LinearConfig::new(h, v).with_bias(false).init(&ad);
    let op = FusedLogpsConfig::new().with_check_targets(false).init();

    // Peak heap above the level before the step, minus the gradients every variant returns.
    let measure = |copy: bool| -> usize {
        device.sync().unwrap();
        let before = alloc::reset_peak();
        let hh = hidden.clone().autodiff().require_grad();
        let out = if copy {
            // `mul_scalar` writes a fresh contiguous [V, H] tensor: one V x H copy.
            let w_vh = linear.weight.val().transpose().mul_scalar(1.0);
            op.forward(hh.clone(), w_vh, None, targets.clone())
        } else {
            op.forward_head(hh.clone(), &linear, targets.clone())
        };
        let grads = out.logps.sum().backward();
        let dh = hh.grad(&grads).unwrap();
        let dw = linear.weight.val().grad(&grads).unwrap();
        assert_eq!(dw.dims(), [h, v]);
        let _ = dh.clone().slice([0..1, 0..1]).into_scalar::<f32>()
            + dw.clone().slice([0..1, 0..1]).into_scalar::<f32>();
        device.sync().unwrap();
        let returned = (n * h + h * v) * 4;
        alloc::peak()
            .saturating_sub(before)
            .saturating_sub(returned)
    };
    measure(false); // warm-up (thread pools, caches)
    let linear_extra = measure(false);
    let copy_extra = measure(true);
    eprintln!(
        "weight {weight_bytes} B; peak extra: Linear head {linear_extra} B, with one copy {copy_extra} B"
    );
    assert!(
        copy_extra >= weight_bytes,
        "a V x H copy should show ({copy_extra} B < {weight_bytes} B): the measurement cannot \
         see copies"
    );
    assert!(
        linear_extra < weight_bytes / 2,
        "Linear head: {linear_extra} B extra, a V x H copy is {weight_bytes} B"
    );
}

/// The fused distillation op never allocates the two heads' `[N, V]` logits: forward and
/// backward at N = 512, V = 8192 stay far below one logits tensor beyond the gradients it
/// returns, while the materialized loss (control, same measurement) needs at least two.
#[test]
fn fused_distillation_allocates_no_logits_on_flex() {
    use burn::tensor::Bool;
    use burn_rlhf::logps::LmHead;
    use burn_rlhf::losses::DistillationLossConfig;
    let _serial = crate::serial();
    let (n, h, v) = (512, 32, 8192);
    let logits_bytes = n * v * 4;
    let device = Device::flex();
    device.seed(2);
    let dist = Distribution::Normal(0.0, 1.0);
    let s_hidden = Tensor::<3>::random([1, n, h], dist, &device);
    let t_hidden = Tensor::<3>::random([1, n, h], dist, &device);
    let s_weight = Tensor::<2>::random([v, h], dist, &device).mul_scalar(0.1);
    let t_weight = Tensor::<2>::random([v, h], dist, &device).mul_scalar(0.1);
    let mask = Tensor::<2, Bool>::ones([1, n], &device.clone().autodiff());
    let loss = DistillationLossConfig::new().with_beta(0.5).init();
    let measure = |fused: bool| -> usize {
        device.sync().unwrap();
        let before = alloc::reset_peak();
        let sh = s_hidden.clone().autodiff().require_grad();
        let sw = s_weight.clone().autodiff().require_grad();
        let (th, tw) = (t_hidden.clone().autodiff(), t_weight.clone().autodiff());
        let out = if fused {
            loss.forward_fused(
                sh.clone(),
                LmHead::vocab_major(sw.clone(), None),
                th,
                LmHead::vocab_major(tw, None),
                mask.clone(),
            )
        } else {
            loss.forward(
                sh.clone()
                    .matmul(sw.clone().transpose().unsqueeze_dim::<3>(0)),
                th.matmul(tw.transpose().unsqueeze_dim::<3>(0)),
                mask.clone(),
            )
        };
        let grads = out.loss.backward();
        let (dh, dw) = (sh.grad(&grads).unwrap(), sw.grad(&grads).unwrap());
        let _ = dh.slice([0..1, 0..1, 0..1]).into_scalar::<f32>()
            + dw.slice([0..1, 0..1]).into_scalar::<f32>();
        device.sync().unwrap();
        alloc::peak()
            .saturating_sub(before)
            .saturating_sub((n * h + v * h) * 4)
    };
    measure(true); // warm-up
    let fused = measure(true);
    let materialized = measure(false);
    eprintln!(
        "logits {logits_bytes} B; peak extra: fused {fused} B, materialized {materialized} B"
    );
    assert!(
        materialized >= 2 * logits_bytes,
        "the materialized control should hold two logits tensors ({materialized} B)"
    );
    assert!(
        fused < logits_bytes / 2,
        "fused: {fused} B extra, one [N, V] logits tensor is {logits_bytes} B"
    );
}
