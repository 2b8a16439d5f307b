//! Half-precision inputs: accumulate in f32.
//!
//! Logits, hidden states and weights may arrive in f16 or bf16. Sums of exponentials over a
//! 32k-256k vocabulary in half precision lose most of their digits (and f16 overflows past
//! 65504: the fp16 NaN-reward class of TRL 878), so every op of this crate that reduces over
//! the vocabulary first upcasts its half-precision inputs to f32; outputs are then f32 and the
//! gradient flows back to the inputs in their own dtype (burn's `cast` is differentiable).

use burn::tensor::{DType, FloatDType, Tensor};

use crate::error::{Error, Result};

/// Checks that the tensor's dtype can be computed on its device, and upcasts f16/bf16 to f32.
pub(crate) fn accumulate_in_f32<const D: usize>(
    tensor: Tensor<D>,
    arg: &'static str,
) -> Result<Tensor<D>> {
    let dtype = tensor.dtype();
    let device = tensor.device();
    if !device.supports_dtype(dtype) {
        return Err(Error::UnsupportedDType {
            arg,
            dtype: format!("{dtype:?}"),
            device: format!("{device:?}"),
        });
    }
    Ok(match dtype {
        DType::F16 | DType::BF16 => tensor.cast(FloatDType::F32),
        _ => tensor,
    })
}
