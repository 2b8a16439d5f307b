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

/// Flex primitives for the fused ops' kernel tests.
#[cfg(feature = "flex")]
pub(crate) mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    /// An f64 flex primitive of `shape`.
    pub(crate) fn t<const D: usize>(values: Vec<f64>, shape: [usize; D]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// A primitive's values as f64.
    pub(crate) fn host(x: FlexTensor) -> Vec<f64> {
        x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
    }

    /// `|a - b| <= atol + 1e-9 |b|` elementwise, naming `what` and the index.
    #[track_caller]
    pub(crate) fn assert_close(what: &str, a: &[f64], b: &[f64], atol: f64) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= atol + 1e-9 * y.abs(),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// A deterministic stream of values in `[-1, 1)` (an LCG) from `seed`.
    pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }
}
