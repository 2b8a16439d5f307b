//! Checked mode: non-finite inputs are `Error::NonFinite` naming the argument; outside checked
//! mode they propagate (never silently masked). One test function, since the mode is global.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_rlhf::logps::{LabelAlignment, TokenLogpsConfig};
use burn_rlhf::losses::{DpoLossConfig, PreferenceBatch};
use burn_rlhf::{Error, set_checked_mode};

#[test]
fn checked_mode_rejects_non_finite_inputs_and_unchecked_propagates_them() {
    let _serial = crate::serial();
    let device = Device::flex();
    let logits = || {
        Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, f32::NAN, 2.0, 0.5, 0.25], [1, 2, 3]),
            &device,
        )
    };
    let labels = || Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 2], [1, 2]), &device);
    let op = TokenLogpsConfig::new(LabelAlignment::Aligned).init();
    let v = |x: f32| Tensor::<1>::from_data(TensorData::new(vec![x, -1.0], [2]), &device);
    let dpo = DpoLossConfig::new().init();

    set_checked_mode(true);
    let err = op.try_forward(logits(), labels(), None).unwrap_err();
    assert!(matches!(err, Error::NonFinite { arg: "logits" }), "{err}");
    let batch = PreferenceBatch::new(v(-2.0), v(-3.0)).with_ref_logps(v(f32::INFINITY), v(-1.0));
    let err = dpo.try_forward(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                arg: "ref_chosen_logps"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ref_chosen_logps"));

    set_checked_mode(false);
    let out = op.try_forward(logits(), labels(), None).unwrap();
    let lp: Vec<f32> = out.logps.into_data().try_into_vec::<f32>().unwrap();
    assert!(
        lp[0].is_nan(),
        "NaN in a row propagates to that row: {lp:?}"
    );
    assert!(lp[1].is_finite(), "other rows are unaffected: {lp:?}");
    let loss = dpo
        .try_forward(&PreferenceBatch::new(v(f32::NAN), v(-3.0)).with_ref_logps(v(-1.0), v(-1.0)))
        .unwrap();
    assert!(
        loss.loss.into_scalar::<f32>().is_nan(),
        "unchecked: NaN propagates to the loss"
    );
}
