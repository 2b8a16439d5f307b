//! Which devices are compiled in, and which of them run the crate's native kernels.

use burn::tensor::Device;

/// True when the crate has a native implementation of its custom ops (lean token log-probs)
/// for this device's backend: Flex with the crate's `flex` feature, CubeCL devices (wgpu,
/// CUDA) with the crate's `wgpu` or `cuda` feature. Elsewhere (for example a backend enabled
/// only on the application's own `burn` dependency, or the deprecated ndarray backend) the
/// crate uses its pure-tensor implementation: same results, no panic, more memory.
pub fn has_native_kernel(device: &Device) -> bool {
    let inner = device.clone().without_autodiff();
    match inner.as_dispatch() {
        #[cfg(feature = "flex")]
        burn::backend::DispatchDevice::Flex(_) => true,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        burn::backend::DispatchDevice::Cube(_) => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A short name for the device's backend: `"flex"`, `"cube"` (wgpu/CUDA), `"ndarray"`, ...
pub(crate) fn backend_name(device: &Device) -> &'static str {
    let inner = device.clone().without_autodiff();
    let name = format!("{:?}", inner.as_dispatch());
    for (key, short) in [
        ("Flex", "flex"),
        ("Cube", "cube"),
        ("NdArray", "ndarray"),
        ("LibTorch", "libtorch"),
        ("Remote", "remote"),
    ] {
        if name.starts_with(key) {
            return short;
        }
    }
    "other"
}

/// True when the device's tensors live in host memory (the CPU backends `flex` and
/// `ndarray`): reading one back is a plain copy, with no device synchronization. The crate
/// then always runs the checks that read an index tensor (label / target range, attended rows,
/// score positions), in every build profile.
pub(crate) fn is_host_memory(device: &Device) -> bool {
    matches!(backend_name(device), "flex" | "ndarray")
}
