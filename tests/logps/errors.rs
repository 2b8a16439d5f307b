//! Bad inputs of the log-prob family (token, fused, sequence reductions, entropy, normalizer):
//! each case calls the `try_` form and asserts the error variant and that the message names
//! the argument (and, for shape errors, the given shape).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::logps::{FusedLogpsConfig, ld_dpo_sequence_logps, token_entropy};
use burn_rlhf::logps::{LabelAlignment, SequenceReduction, TokenLogpsConfig};
use burn_rlhf::{Error, Normalizer, with_checked_mode};

fn dev() -> Device {
    Device::flex()
}
fn f2(d: [usize; 2]) -> Tensor<2> {
    Tensor::zeros(d, &dev())
}
fn f3(d: [usize; 3]) -> Tensor<3> {
    Tensor::zeros(d, &dev())
}
fn i2(d: [usize; 2]) -> Tensor<2, Int> {
    Tensor::zeros(d, &dev())
}
fn b2(d: [usize; 2]) -> Tensor<2, Bool> {
    Tensor::<2, Int>::zeros(d, &dev()).equal_elem(0)
}
fn labels(values: Vec<i64>, d: [usize; 2]) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, d), &dev())
}

#[test]
fn token_logps_bad_inputs() {
    let mut n = 0;
    let causal = TokenLogpsConfig::new(LabelAlignment::CausalShift).init();
    let aligned = TokenLogpsConfig::new(LabelAlignment::Aligned).init();
    let logits = || f3([2, 4, 5]);
    bad!(
        n,
        causal.try_forward(logits(), i2([2, 3]), None),
        Error::Shape { arg: "labels", .. },
        "labels"
    );
    bad!(
        n,
        causal.try_forward(logits(), i2([3, 4]), None),
        Error::Shape { arg: "labels", .. },
        "labels"
    );
    bad!(
        n,
        causal.try_forward(logits(), i2([2, 4]), Some(b2([4, 2]))),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        aligned.try_forward(logits(), labels(vec![0, 1, 2, 5, 0, 0, 0, 0], [2, 4]), None),
        Error::LabelOutOfRange {
            arg: "labels",
            value: 5,
            ..
        },
        "labels"
    );
    bad!(
        n,
        aligned.try_forward(
            logits(),
            labels(vec![0, 1, 2, -3, 0, 0, 0, 0], [2, 4]),
            None
        ),
        Error::LabelOutOfRange {
            arg: "labels",
            value: -3,
            ..
        },
        "labels"
    );
    bad!(
        n,
        aligned.try_forward(f3([0, 4, 5]), i2([0, 4]), None),
        Error::Empty { arg: "logits", .. },
        "logits"
    );
    bad!(
        n,
        aligned.try_forward(f3([2, 4, 0]), i2([2, 4]), None),
        Error::Empty { arg: "logits", .. },
        "logits"
    );
    bad!(
        n,
        causal.try_forward(f3([2, 1, 5]), i2([2, 1]), None),
        Error::Shape { arg: "logits", .. },
        "logits"
    );
    // A custom ignore index: -100 is now out of range.
    let custom = TokenLogpsConfig::new(LabelAlignment::Aligned)
        .with_ignore_index(-1)
        .init();
    bad!(
        n,
        custom.try_forward(
            logits(),
            labels(vec![-100, 1, 2, 3, 0, 0, 0, -1], [2, 4]),
            None
        ),
        Error::LabelOutOfRange {
            value: -100,
            ignore_index: -1,
            ..
        },
        "labels"
    );
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        bad!(
            n,
            TokenLogpsConfig::new(LabelAlignment::Aligned)
                .with_temperature(t)
                .try_init(),
            Error::Config {
                field: "temperature",
                ..
            },
            "temperature"
        );
    }
    println!("token log-probs: {n} bad-input cases");
    assert_eq!(n, 13);
}

#[test]
fn fused_logps_bad_inputs() {
    let mut n = 0;
    let op = FusedLogpsConfig::new().init();
    let targets = |n: usize| Tensor::<1, Int>::zeros([n], &dev());
    bad!(
        n,
        op.try_forward(f2([3, 4]), f2([7, 5]), None, targets(3)),
        Error::Shape { arg: "weight", .. },
        "weight"
    );
    bad!(
        n,
        op.try_forward(
            f2([3, 4]),
            f2([7, 4]),
            Some(Tensor::zeros([6], &dev())),
            targets(3)
        ),
        Error::Shape { arg: "bias", .. },
        "bias"
    );
    bad!(
        n,
        op.try_forward(f2([3, 4]), f2([7, 4]), None, targets(2)),
        Error::Shape { arg: "targets", .. },
        "targets"
    );
    let out_of_range = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 7, 1], [3]), &dev());
    bad!(
        n,
        op.try_forward(f2([3, 4]), f2([7, 4]), None, out_of_range),
        Error::LabelOutOfRange {
            arg: "targets",
            value: 7,
            ..
        },
        "targets"
    );
    bad!(
        n,
        op.try_forward(f2([0, 4]), f2([7, 4]), None, targets(0)),
        Error::Empty { arg: "hidden", .. },
        "hidden"
    );
    bad!(
        n,
        op.try_forward(f2([3, 4]), f2([0, 4]), None, targets(3)),
        Error::Empty { arg: "hidden", .. },
        "hidden"
    );
    bad!(
        n,
        op.try_forward_causal(f3([2, 4, 3]), f2([7, 3]), None, i2([2, 3])),
        Error::Shape { arg: "labels", .. },
        "labels"
    );
    bad!(
        n,
        op.try_forward_causal(f3([2, 1, 3]), f2([7, 3]), None, i2([2, 1])),
        Error::Shape { arg: "hidden", .. },
        "hidden"
    );
    bad!(
        n,
        op.try_forward_causal(f3([2, 4, 3]), f2([7, 5]), None, i2([2, 4])),
        Error::Shape { arg: "weight", .. },
        "weight"
    );
    let c = FusedLogpsConfig::new;
    bad!(
        n,
        c().with_temperature(0.0).try_init(),
        Error::Config {
            field: "temperature",
            ..
        },
        "temperature"
    );
    bad!(
        n,
        c().with_temperature(f64::NAN).try_init(),
        Error::Config {
            field: "temperature",
            ..
        },
        "temperature"
    );
    bad!(
        n,
        c().with_logit_scale(-1.0).try_init(),
        Error::Config {
            field: "logit_scale",
            ..
        },
        "logit_scale"
    );
    bad!(
        n,
        c().with_final_logit_softcapping(Some(0.0)).try_init(),
        Error::Config {
            field: "final_logit_softcapping",
            ..
        },
        "final_logit_softcapping"
    );
    bad!(
        n,
        c().with_vocab_chunk_size(Some(0)).try_init(),
        Error::Config {
            field: "vocab_chunk_size",
            ..
        },
        "vocab_chunk_size"
    );
    bad!(
        n,
        c().with_token_chunk_size(Some(0)).try_init(),
        Error::Config {
            field: "token_chunk_size",
            ..
        },
        "token_chunk_size"
    );
    println!("fused log-probs: {n} bad-input cases");
    assert_eq!(n, 15);
}

#[test]
fn sequence_entropy_and_normalizer_bad_inputs() {
    let mut n = 0;
    for r in [
        SequenceReduction::Sum,
        SequenceReduction::Mean,
        SequenceReduction::MeanEps(1e-8),
    ] {
        bad!(
            n,
            r.try_reduce(f2([2, 3]), b2([2, 4])),
            Error::Shape { arg: "mask", .. },
            "mask"
        );
    }
    for eps in [0.0, -1e-8, f64::NAN] {
        bad!(
            n,
            SequenceReduction::MeanEps(eps).try_reduce(f2([2, 3]), b2([2, 3])),
            Error::Config { field: "eps", .. },
            "eps"
        );
    }
    for alpha in [-0.1, 1.5, f64::NAN] {
        bad!(
            n,
            ld_dpo_sequence_logps(f2([2, 3]), b2([2, 3]), f2([2, 4]), b2([2, 4]), alpha),
            Error::Config {
                field: "ld_alpha",
                ..
            },
            "ld_alpha"
        );
    }
    bad!(
        n,
        ld_dpo_sequence_logps(f2([2, 3]), b2([2, 4]), f2([2, 4]), b2([2, 4]), 0.5),
        Error::Shape {
            arg: "chosen_mask",
            ..
        },
        "chosen_mask"
    );
    bad!(
        n,
        ld_dpo_sequence_logps(f2([2, 3]), b2([2, 3]), f2([2, 4]), b2([2, 3]), 0.5),
        Error::Shape {
            arg: "rejected_mask",
            ..
        },
        "rejected_mask"
    );
    bad!(
        n,
        ld_dpo_sequence_logps(f2([2, 3]), b2([2, 3]), f2([3, 4]), b2([3, 4]), 0.5),
        Error::Shape {
            arg: "rejected_logps",
            ..
        },
        "rejected_logps"
    );
    for t in [0.0, -2.0, f64::INFINITY] {
        bad!(
            n,
            token_entropy(f3([2, 3, 4]), t),
            Error::Config {
                field: "temperature",
                ..
            },
            "temperature"
        );
    }
    bad!(
        n,
        token_entropy(f3([2, 3, 0]), 1.0),
        Error::Empty { arg: "logits", .. },
        "logits"
    );
    let normalizers = [
        (Normalizer::Constant(0.0), "Normalizer::Constant"),
        (Normalizer::Constant(f64::NAN), "Normalizer::Constant"),
        (Normalizer::GlobalTokens(-1.0), "Normalizer::GlobalTokens"),
        (
            Normalizer::GlobalSequences(f64::INFINITY),
            "Normalizer::GlobalSequences",
        ),
    ];
    for (norm, name) in normalizers {
        bad!(
            n,
            norm.try_reduce_tokens(f2([2, 3]), b2([2, 3])),
            Error::Config { .. },
            name
        );
        bad!(
            n,
            norm.try_reduce_sequences(Tensor::zeros([2], &dev())),
            Error::Config { .. },
            name
        );
    }
    bad!(
        n,
        Normalizer::Sum.try_reduce_tokens(f2([2, 3]), b2([3, 2])),
        Error::Shape { arg: "mask", .. },
        "mask"
    );
    bad!(
        n,
        Normalizer::SequenceMean.try_reduce_tokens(f2([0, 3]), b2([0, 3])),
        Error::Empty { arg: "terms", .. },
        "terms"
    );
    bad!(
        n,
        Normalizer::SequenceMean.try_reduce_sequences(Tensor::zeros([0], &dev())),
        Error::Empty { arg: "terms", .. },
        "terms"
    );
    bad!(
        n,
        Normalizer::TokenMean.try_reduce_sequences(Tensor::zeros([2], &dev())),
        Error::NormalizerKind { .. },
        "TokenMean"
    );
    bad!(
        n,
        Normalizer::GlobalTokens(4.0).try_reduce_sequences(Tensor::zeros([2], &dev())),
        Error::NormalizerKind { .. },
        "GlobalTokens"
    );
    println!("sequence reductions, entropy, normalizer: {n} bad-input cases");
    assert_eq!(n, 29);
}

/// Checked mode: every log-prob entry point names the non-finite argument. One test function,
/// since the mode is global (the other tests of this binary use finite inputs only).
#[test]
fn checked_mode_names_non_finite_arguments() {
    let mut n = 0;
    let nan2 = |d: [usize; 2]| f2(d).add_scalar(f64::NAN);
    let nan3 = |d: [usize; 3]| f3(d).add_scalar(f64::INFINITY);
    with_checked_mode(true, || {
        let op = TokenLogpsConfig::new(LabelAlignment::Aligned).init();
        bad!(
            n,
            op.try_forward(nan3([2, 3, 4]), i2([2, 3]), None),
            Error::NonFinite { arg: "logits" },
            "logits"
        );
        let fused = FusedLogpsConfig::new().init();
        let t = || Tensor::<1, Int>::zeros([3], &dev());
        bad!(
            n,
            fused.try_forward(nan2([3, 4]), f2([5, 4]), None, t()),
            Error::NonFinite { arg: "hidden" },
            "hidden"
        );
        bad!(
            n,
            fused.try_forward(f2([3, 4]), nan2([5, 4]), None, t()),
            Error::NonFinite { arg: "weight" },
            "weight"
        );
        bad!(
            n,
            fused.try_forward(
                f2([3, 4]),
                f2([5, 4]),
                Some(Tensor::<1>::zeros([5], &dev()).add_scalar(f64::NAN)),
                t()
            ),
            Error::NonFinite { arg: "bias" },
            "bias"
        );
        bad!(
            n,
            SequenceReduction::Sum.try_reduce(nan2([2, 3]), b2([2, 3])),
            Error::NonFinite { arg: "token_logps" },
            "token_logps"
        );
        bad!(
            n,
            token_entropy(nan3([2, 3, 4]), 1.0),
            Error::NonFinite { arg: "logits" },
            "logits"
        );
        bad!(
            n,
            ld_dpo_sequence_logps(nan2([2, 3]), b2([2, 3]), f2([2, 3]), b2([2, 3]), 0.5),
            Error::NonFinite {
                arg: "chosen_logps"
            },
            "chosen_logps"
        );
        bad!(
            n,
            ld_dpo_sequence_logps(f2([2, 3]), b2([2, 3]), nan2([2, 3]), b2([2, 3]), 0.5),
            Error::NonFinite {
                arg: "rejected_logps"
            },
            "rejected_logps"
        );
    });
    assert!(
        SequenceReduction::Sum
            .try_reduce(nan2([2, 3]), b2([2, 3]))
            .is_ok(),
        "unchecked: propagates"
    );
    println!("log-probs checked mode: {n} non-finite cases");
    assert_eq!(n, 8);
}
