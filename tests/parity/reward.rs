//! TRL 1.16.0 `RewardTrainer.compute_loss`: Bradley-Terry loss with optional margin and
//! centering term, TRL's reward metrics, and gradients w.r.t. both reward vectors.

use burn_rlhf::losses::BradleyTerryLossConfig;

use crate::common::{TestDevice, tensor, to_vec};
use crate::fixture::Case;
use crate::tolerance::{self, Kind};

/// Values and gradients: [`Kind::Values`]; metrics: [`Kind::Metrics`] (accuracy is
/// float32-rounded in TRL). See the `tolerance` table.
fn check(
    what: &str,
    actual: &[f64],
    expected: &[f64],
    dev: &TestDevice,
    metric: bool,
) -> Result<(), String> {
    let kind = if metric { Kind::Metrics } else { Kind::Values };
    tolerance::check(kind, dev, what, actual, expected)
}

pub fn compute_loss(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let chosen = case.input("rewards_chosen");
    let rejected = case.input("rewards_rejected");
    let margin = case.input_opt("margin");
    if case.config_bool("has_margin") != margin.is_some() {
        return Err("config.has_margin disagrees with inputs.margin".into());
    }
    let coef = case
        .config
        .get("center_rewards_coefficient")
        .and_then(|v| v.as_f64());

    let rc = tensor::<1>(chosen.values.clone(), chosen.shape(), dev, &device).require_grad();
    let rr = tensor::<1>(rejected.values.clone(), rejected.shape(), dev, &device).require_grad();
    let m = margin.map(|m| tensor::<1>(m.values.clone(), m.shape(), dev, &device));
    let loss = BradleyTerryLossConfig::new()
        .with_center_rewards_coefficient(coef)
        .init()
        .try_forward(rc.clone(), rr.clone(), m)
        .map_err(|e| e.to_string())?;
    let grads = loss.loss.backward();

    check(
        "loss",
        &to_vec(loss.loss),
        &case.expect("loss").values,
        dev,
        false,
    )?;
    check(
        "grad_rewards_chosen",
        &to_vec(rc.grad(&grads).unwrap()),
        &case.expect("grad_rewards_chosen").values,
        dev,
        false,
    )?;
    check(
        "grad_rewards_rejected",
        &to_vec(rr.grad(&grads).unwrap()),
        &case.expect("grad_rewards_rejected").values,
        dev,
        false,
    )?;

    let expected = case
        .expected_value("metrics")
        .as_object()
        .ok_or("no expected metrics")?;
    let host = loss.metrics.to_host();
    if host.len() != expected.len() {
        return Err(format!(
            "metric keys {:?} vs expected {:?}",
            host.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        ));
    }
    for (key, want) in expected {
        let got = host
            .get(key)
            .ok_or_else(|| format!("missing metric `{key}`"))?;
        check(
            &format!("metrics/{key}"),
            &[*got],
            &[want.as_f64().unwrap()],
            dev,
            true,
        )?;
    }
    Ok(())
}
