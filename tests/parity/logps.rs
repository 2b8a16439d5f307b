//! torchtune 0.6.1 `torchtune.rlhf.sequence_processing`: `logits_to_logps`,
//! `get_batch_log_probs`. Each case runs through both implementations (`Auto`: the lean op
//! where the device has it; `Reference`: plain tensor ops).

use burn::tensor::Tensor;
use burn_rlhf::logps::LogpsImplementation;
use burn_rlhf::logps::{LabelAlignment, SequenceReduction, TokenLogpsConfig};

use crate::common::{TestDevice, int_tensor, tensor, to_vec};
use crate::fixture::Case;
use crate::tolerance::{self, Kind};

const IMPLEMENTATIONS: [LogpsImplementation; 2] =
    [LogpsImplementation::Auto, LogpsImplementation::Reference];

/// Values and gradients: [`Kind::Values`] (the `tolerance` table).
fn check(what: &str, actual: &[f64], expected: &[f64], dev: &TestDevice) -> Result<(), String> {
    tolerance::check(Kind::Values, dev, what, actual, expected)
}

/// `logps = gather(log_softmax(logits / temperature), sequences)`, no shift.
pub fn logits_to_logps(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let logits = case.input("logits");
    let sequences = case.input("sequences");
    let grad_output = case.input("grad_output");
    let temperature = case.config_f64("temperature");
    let want_lp = case.expect("logprobs").values;
    let want_grad = case.expect("grad_logits").values;
    for implementation in IMPLEMENTATIONS {
        let x = tensor::<3>(logits.values.clone(), logits.shape(), dev, &device).require_grad();
        let labels = int_tensor::<2>(sequences.ints(), sequences.shape(), &device);
        let g = tensor::<2>(
            grad_output.values.clone(),
            grad_output.shape(),
            dev,
            &device,
        );
        let op = TokenLogpsConfig::new(LabelAlignment::Aligned)
            .with_temperature(temperature)
            .with_implementation(implementation)
            .init();
        let out = op.forward(x.clone(), labels);
        let objective: Tensor<1> = (out.logps.clone() * g).sum();
        let grads = objective.backward();
        check(
            &format!("{implementation:?} logprobs"),
            &to_vec(out.logps),
            &want_lp,
            dev,
        )?;
        check(
            &format!("{implementation:?} grad_logits"),
            &to_vec(x.grad(&grads).unwrap()),
            &want_grad,
            dev,
        )?;
    }
    Ok(())
}

/// Shifted (`logits[:, :-1]` vs `labels[:, 1:]`), `-100` ignored, sum or torchtune's
/// `masked_mean` (`sum / (count + 1e-8)`); gradient of `sum(logps)`.
pub fn get_batch_log_probs(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let logits = case.input("logits");
    let labels = case.input("labels");
    let average = case.config_bool("return_average_logprobs");
    let ignore = case.config_f64("label_pad_token_id") as i64;
    let want = case.expect("logps").values;
    let want_grad = case.expect("grad_logits").values;
    let reduction = if average {
        SequenceReduction::MeanEps(1e-8)
    } else {
        SequenceReduction::Sum
    };
    for implementation in IMPLEMENTATIONS {
        let x = tensor::<3>(logits.values.clone(), logits.shape(), dev, &device).require_grad();
        let y = int_tensor::<2>(labels.ints(), labels.shape(), &device);
        let op = TokenLogpsConfig::new(LabelAlignment::CausalShift)
            .with_ignore_index(ignore)
            .with_implementation(implementation)
            .init();
        let logps = op.forward(x.clone(), y).reduce(reduction);
        let grads = logps.clone().sum().backward();
        check(
            &format!("{implementation:?} logps"),
            &to_vec(logps),
            &want,
            dev,
        )?;
        check(
            &format!("{implementation:?} grad_logits"),
            &to_vec(x.grad(&grads).unwrap()),
            &want_grad,
            dev,
        )?;
    }
    Ok(())
}
