//! Half-precision inputs: accumulate in f32.
//!
//! Logits, hidden states and weights may arrive in f16 or bf16. Sums of exponentials over a
//! 32k-256k vocabulary in half precision lose most of their digits (and f16 overflows past
//! 65504: the fp16 NaN-reward class of TRL 878), so every op of this crate that reduces over
//! the vocabulary first upcasts its half-precision inputs to f32; outputs are then f32 and the
//! gradient flows back to the inputs in their own dtype (burn's `cast` is differentiable).

use burn::tensor::{DType, Device, FloatDType, Tensor};

use crate::error::{Error, Result};

/// Checks that the tensor's dtype can be computed on its device, and upcasts f16/bf16 to f32.
pub(crate) fn accumulate_in_f32<const D: usize>(
    tensor: Tensor<D>,
    arg: &'static str,
) -> Result<Tensor<D>> {
    let dtype = tensor.dtype();
    check_dtype(&tensor.device(), dtype, arg)?;
    Ok(match dtype {
        DType::F16 | DType::BF16 => tensor.cast(FloatDType::F32),
        _ => tensor,
    })
}

/// f16/bf16 -> f32 (differentiable), any other dtype unchanged. For losses whose math
/// overflows in half precision (`exp` of a log-ratio): inputs already share one dtype (checked
/// by the caller), so casting each keeps them consistent.
pub(crate) fn upcast_half<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    match tensor.dtype() {
        DType::F16 | DType::BF16 => tensor.cast(FloatDType::F32),
        _ => tensor,
    }
}

/// [`Error::UnsupportedDType`] when `device` cannot compute `dtype` (it may still store it:
/// bf16 on wgpu/Vulkan).
pub(crate) fn check_dtype(device: &Device, dtype: DType, arg: &'static str) -> Result<()> {
    if device.supports_dtype(dtype) {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            arg,
            dtype: format!("{dtype:?}"),
            device: format!("{device:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dtype the device cannot compute is an error naming the argument. (Such a tensor can
    /// rarely be built in a test: ndarray refuses to create f16, wgpu's server thread panics
    /// on bf16; so the check is tested on its own.)
    #[test]
    fn unsupported_dtype_is_an_error() {
        #[allow(deprecated)]
        let ndarray = Device::ndarray();
        let err = check_dtype(&ndarray, DType::F16, "logits").unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedDType { arg: "logits", .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("logits") && err.to_string().contains("F16"),
            "{err}"
        );
        assert!(check_dtype(&Device::flex(), DType::BF16, "logits").is_ok());
    }
}
