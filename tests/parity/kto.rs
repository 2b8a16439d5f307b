//! TRL 1.16 `KTOTrainer._compute_loss` (`kto/`) through [`KtoLoss`], from per-token log-probs.

use burn_rlhf::logps::GatheredLogps;
use burn_rlhf::losses::{KtoLossConfig, KtoLossType, UnpairedBatch, kto_kl_estimate};

use crate::common::{TestDevice, bool_tensor, to_vec};
use crate::dpo::{case_dtype, check_metrics, float, grad_or_zeros};
use crate::fixture::Case;
use crate::tolerance::{Kind, tol};

pub fn kto_compute_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let dtype = case_dtype(case, dev);
    let loss_type: KtoLossType = serde_json::from_value(case.config["loss_type"].clone()).unwrap();
    let loss = KtoLossConfig::new()
        .with_loss_type(loss_type)
        .with_beta(case.config_f64("beta"))
        .with_desirable_weight(case.config_f64("desirable_weight"))
        .with_undesirable_weight(case.config_f64("undesirable_weight"))
        .try_init()
        .map_err(|e| format!("config rejected: {e}"))?;

    let lp = case.input("token_logps");
    let mask = case.input("mask");
    let x = float::<2>(&lp, dtype, &device).require_grad();
    let tokens = GatheredLogps {
        logps: x.clone(),
        mask: bool_tensor::<2>(mask.bools(), mask.shape(), &device),
    };
    let label = case.input("label");
    let desirable = bool_tensor::<1>(label.bools(), label.shape(), &device);
    let mut batch = UnpairedBatch::from_tokens(
        &tokens,
        float::<1>(&case.input("ref_logps"), dtype, &device),
        desirable,
    );
    if case.config_bool("calculate_KL") {
        let kl_lp = case.input("KL_token_logps");
        let kl_mask = case.input("KL_mask");
        // TRL scores the KL completions under no_grad: plain (non-autodiff) device.
        let kl_tokens = GatheredLogps {
            logps: float::<2>(&kl_lp, dtype, &dev.device),
            mask: bool_tensor::<2>(kl_mask.bools(), kl_mask.shape(), &dev.device),
        };
        let kl = kto_kl_estimate(
            kl_tokens.sum(),
            float::<1>(&case.input("ref_KL_logps"), dtype, &dev.device),
        );
        batch = batch.with_kl(kl);
    }
    let out = loss
        .try_forward(&batch)
        .map_err(|e| format!("forward: {e}"))?;
    let grads = out.loss.backward();
    let values = tol(Kind::Values, dev);
    values.check(
        "loss",
        &to_vec(out.loss.clone()),
        &case.expect("loss").values,
    )?;
    check_metrics(case, &out, tol(Kind::Metrics, dev))?;
    values.check(
        "grad_token_logps",
        &grad_or_zeros(&x, &grads),
        &case.expect("grad_token_logps").values,
    )
}
