//! Helpers for the unit tests at the bottom of the source files.

use burn::tensor::{Device, FloatDType, Tensor, TensorData};

/// An f64 vector tensor on `device`.
pub(crate) fn t(values: &[f64], device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, FloatDType::F64.into()),
    )
}

/// A tensor's values as f64.
pub(crate) fn v<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    x.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// Asserts `got` equals `want` elementwise to 1e-12 relative (absolute below 1).
#[track_caller]
pub(crate) fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}
