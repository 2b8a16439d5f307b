//! Per-token entropy of the model's predictive distribution.

use burn::tensor::Tensor;

use crate::error::{Result, check_positive};

/// Per-token entropy `H = -sum_v p_v log p_v` of `p = softmax(logits / temperature)`.
///
#[cfg_attr(
    doc,
    doc = r#"$$H_{b,t} = -\sum_v p_{b,t,v} \log p_{b,t,v},\quad \log p = z - \operatorname{logsumexp}(z),\ z = \text{logits}/T$$"#
)]
#[cfg_attr(
    not(doc),
    doc = "`H = -sum_v p_v log p_v`, `log p = z - logsumexp(z)`, `z = logits / T`"
)]
///
/// Differentiable (for entropy bonuses); computed with a max-shifted log-softmax, so logits of
/// any magnitude give a finite result. Mask the output yourself (it is per logits position; with
/// a causal shift drop the last column to align it with shifted labels).
///
/// Errors: `temperature` not finite and > 0 ([`Error::Config`](crate::Error::Config)), an empty
/// vocabulary `V = 0` ([`Error::Empty`](crate::Error::Empty)); in checked mode non-finite
/// logits ([`Error::NonFinite`](crate::Error::NonFinite)).
///
/// # Shapes
/// - logits: `[B, T, V]` -> output `[B, T]`
pub fn token_entropy(logits: Tensor<3>, temperature: f64) -> Result<Tensor<2>> {
    check_positive("temperature", temperature)?;
    let [b, t, v] = logits.dims();
    crate::error::check_non_empty(
        "logits",
        v,
        &format!("shape {:?} has no vocabulary (V = 0)", [b, t, v]),
    )?;
    crate::error::check_finite(&logits, "logits")?;
    let z = logits.mul_scalar(1.0 / temperature);
    // log p = z - logsumexp(z) is finite everywhere (burn's log_softmax may be evaluated as
    // log(softmax) = -inf where p underflows, and 0 * -inf = NaN); -sum p log p is a sum of
    // non-negative terms, so f32 keeps its relative precision for low-entropy rows.
    let logp = crate::reduce::log_softmax(z, 2);
    let p = logp.clone().exp();
    Ok((p * logp).sum_dim(2).squeeze_dim::<2>(2).neg())
}
