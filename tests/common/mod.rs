//! Shared test harness: the same test bodies run on every device compiled in.
//!
//! `BURN_RLHF_TEST_DEVICES` (comma-separated: `flex`, `ndarray`, `wgpu`) picks a subset;
//! unset, every compiled device runs. `flex` always exists in tests (dev-dependency);
//! `ndarray` is enabled only on burn (not on burn-rlhf), so it exercises the fallback path a
//! user gets when their backend is not one burn-rlhf lists; `wgpu` needs `--features wgpu`,
//! `cuda` needs `--features cuda` (and a CUDA machine: see `scripts/gpu-check.sh`).

use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};

/// A device under test.
#[derive(Clone, Debug)]
pub struct TestDevice {
    pub name: &'static str,
    pub device: Device,
}

impl TestDevice {
    /// Whether f64 tensors can be computed here (flex, ndarray: yes). wgpu is treated as f32
    /// only: on lavapipe burn reports F64 support (the Vulkan adapter has `shaderFloat64`), but
    /// the WGSL path has no f64 and returns garbage (seen: a DPO gradient of 5e-322 for -0.005).
    pub fn has_f64(&self) -> bool {
        self.name != "wgpu" && self.device.supports_dtype(FloatDType::F64)
    }
    /// The float dtype tests use: f64 where supported, else f32.
    pub fn float(&self) -> FloatDType {
        if self.has_f64() {
            FloatDType::F64
        } else {
            FloatDType::F32
        }
    }
    pub fn autodiff(&self) -> Device {
        self.device.clone().autodiff()
    }
    /// Relative tolerance for comparing against f64 expectations in this device's dtype.
    pub fn rtol(&self, f64_rtol: f64) -> f64 {
        if self.has_f64() {
            f64_rtol
        } else {
            f64_rtol.max(1e-4)
        }
    }
}

fn all_devices() -> Vec<TestDevice> {
    #[allow(unused_mut)]
    let mut devices = vec![TestDevice {
        name: "flex",
        device: Device::flex(),
    }];
    #[allow(deprecated)]
    devices.push(TestDevice {
        name: "ndarray",
        device: Device::ndarray(),
    });
    #[cfg(feature = "wgpu")]
    devices.push(TestDevice {
        name: "wgpu",
        device: Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
    });
    #[cfg(feature = "cuda")]
    devices.push(TestDevice {
        name: "cuda",
        device: Device::cuda(0),
    });
    devices
}

/// The devices to run on (see the module docs).
pub fn devices() -> Vec<TestDevice> {
    let all = all_devices();
    match std::env::var("BURN_RLHF_TEST_DEVICES") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            for w in &wanted {
                assert!(
                    all.iter().any(|d| d.name == w),
                    "BURN_RLHF_TEST_DEVICES names `{w}`, which is not compiled in (have: {:?})",
                    all.iter().map(|d| d.name).collect::<Vec<_>>()
                );
            }
            all.into_iter()
                .filter(|d| wanted.iter().any(|w| w == d.name))
                .collect()
        }
        _ => all,
    }
}

/// Float tensor from f64 values in the device's test dtype (f64 where supported, else f32).
pub fn tensor<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    dev: &TestDevice,
    device: &Device,
) -> Tensor<D> {
    let dtype: burn::tensor::DType = dev.float().into();
    Tensor::<D>::from_data(TensorData::new(values, shape), (device, dtype))
}

pub fn int_tensor<const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Int> {
    Tensor::<D, Int>::from_data(TensorData::new(values, shape), device)
}

pub fn bool_tensor<const D: usize>(
    values: Vec<bool>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Bool> {
    Tensor::<D, Bool>::from_data(TensorData::new(values, shape), device)
}

/// Host copy of a float tensor as f64.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// `|a - e| <= atol + rtol |e|` elementwise, with a message naming `what` and the worst index.
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], rtol: f64, atol: f64) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs expected {}",
        actual.len(),
        expected.len()
    );
    if let Err(msg) = check_close(what, actual, expected, rtol, atol) {
        panic!("{msg}");
    }
}

/// Non-panicking form of [`assert_close`].
pub fn check_close(
    what: &str,
    actual: &[f64],
    expected: &[f64],
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "{what}: length {} vs expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let excess = (a - e).abs() - (atol + rtol * e.abs());
        let within = excess <= 0.0; // false for NaN
        if !within && worst.is_none_or(|(_, w)| excess > w || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{what}: mismatch at index {i}: got {} expected {} (rtol {rtol:e}, atol {atol:e})",
            actual[i], expected[i]
        )),
    }
}

/// The one seeded generator of the tests and examples (`examples/common/rng.rs`).
#[path = "../../examples/common/rng.rs"]
mod rng;
pub use rng::Rng;
