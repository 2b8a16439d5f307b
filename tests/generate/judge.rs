//! The model judge: soft labels equal the normalized choice-token probabilities computed by
//! hand on a fixed model; swapping A and B gives `1 - P`; the batch path equals one item at a
//! time; malformed templates and items are typed errors.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_rlhf::Error;
use burn_rlhf::generate::{
    CausalLm, JudgePiece, JudgeSlot, JudgeTemplate, ModelJudge, PairwiseItem, PointwiseItem,
};

const V: usize = 9;
const PAD: i64 = 8;
const A: i64 = 4;
const B: i64 = 5;
const YES: i64 = 6;
const NO: i64 = 7;

/// A fixed, order-sensitive model: the logits after position `t` are
/// `sum_{s <= t, real} 0.6^(t - s) E[token_s]` with a fixed table `E` (padding contributes
/// nothing). Computed on the host, so the test can redo it by hand.
struct DecayLm;

fn table(token: i64, v: usize) -> f64 {
    (((token as usize * 7 + v * 3) % 11) as f64 - 5.0) / 3.0
}

/// The next-token logits after the last token of `row` (no padding), by hand.
fn logits_by_hand(row: &[i64]) -> Vec<f64> {
    let mut z = vec![0.0; V];
    for &tok in row {
        for (v, zv) in z.iter_mut().enumerate() {
            *zv = 0.6 * *zv + table(tok, v);
        }
    }
    z
}

impl CausalLm for DecayLm {
    fn logits(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let ids: Vec<i64> = ids.into_data().convert::<i64>().try_into_vec().unwrap();
        let mask: Vec<bool> = mask.into_data().convert::<bool>().try_into_vec().unwrap();
        let mut out = vec![0.0f64; b * t * V];
        for r in 0..b {
            let mut z = vec![0.0; V];
            for s in 0..t {
                if mask[r * t + s] {
                    for (v, zv) in z.iter_mut().enumerate() {
                        *zv = 0.6 * *zv + table(ids[r * t + s], v);
                    }
                }
                out[(r * t + s) * V..(r * t + s + 1) * V].copy_from_slice(&z);
            }
        }
        Tensor::<3>::from_data(
            TensorData::new(out, [b, t, V]),
            (&device, burn::tensor::DType::F64),
        )
    }
}

fn pairwise_template() -> JudgeTemplate {
    JudgeTemplate::new(vec![
        JudgePiece::Tokens(vec![0]),
        JudgePiece::Slot(JudgeSlot::Principle),
        JudgePiece::Tokens(vec![A]),
        JudgePiece::Slot(JudgeSlot::OptionA),
        JudgePiece::Tokens(vec![B]),
        JudgePiece::Slot(JudgeSlot::OptionB),
        JudgePiece::Tokens(vec![3]),
    ])
}

/// `p_first / (p_first + p_second)` from logits.
fn two_way(z: &[f64], first: i64, second: i64) -> f64 {
    1.0 / (1.0 + (z[second as usize] - z[first as usize]).exp())
}

fn by_hand(principle: &[i64], first: &[i64], second: &[i64]) -> f64 {
    let prompt = |a: &[i64], b: &[i64]| {
        let mut r = vec![0];
        r.extend_from_slice(principle);
        r.push(A);
        r.extend_from_slice(a);
        r.push(B);
        r.extend_from_slice(b);
        r.push(3);
        r
    };
    let p_ab = two_way(&logits_by_hand(&prompt(first, second)), A, B);
    let p_ba_b = two_way(&logits_by_hand(&prompt(second, first)), B, A);
    0.5 * (p_ab + p_ba_b)
}

#[test]
fn pairwise_soft_labels_are_the_normalized_choice_probabilities() {
    let device = Device::flex();
    let judge = ModelJudge::new([A, B], (YES, Some(NO)), PAD);
    let template = pairwise_template();
    let items = [
        PairwiseItem {
            principle: &[1, 2],
            prompt: &[],
            first: &[3, 1],
            second: &[2, 2, 0],
        },
        PairwiseItem {
            principle: &[2],
            prompt: &[],
            first: &[0],
            second: &[1, 3, 3, 1],
        },
        PairwiseItem {
            principle: &[],
            prompt: &[],
            first: &[2, 1],
            second: &[1, 2],
        },
    ];
    let got = judge
        .try_pairwise(&DecayLm, &template, &items, &device)
        .unwrap();
    for (i, it) in items.iter().enumerate() {
        let want = by_hand(it.principle, it.first, it.second);
        assert!(
            (got[i] - want).abs() < 1e-12,
            "item {i}: {} vs {want}",
            got[i]
        );
        assert!(got[i] > 0.0 && got[i] < 1.0);
    }
    // The labels are not all 0.5: the model is order-sensitive and tells the items apart.
    assert!(got.iter().any(|p| (p - 0.5).abs() > 0.05), "{got:?}");
    // Swapping A and B gives 1 - P.
    let swapped: Vec<PairwiseItem> = items
        .iter()
        .map(|it| PairwiseItem {
            principle: it.principle,
            prompt: it.prompt,
            first: it.second,
            second: it.first,
        })
        .collect();
    let back = judge
        .try_pairwise(&DecayLm, &template, &swapped, &device)
        .unwrap();
    for (p, q) in got.iter().zip(&back) {
        assert!((p + q - 1.0).abs() < 1e-12, "{p} + {q}");
    }
    // The batch path equals one item at a time (different lengths, so different padding).
    for (i, it) in items.iter().enumerate() {
        let one = judge
            .try_pairwise(&DecayLm, &template, &[*it], &device)
            .unwrap();
        assert!(
            (one[0] - got[i]).abs() < 1e-12,
            "item {i}: {} vs {}",
            one[0],
            got[i]
        );
    }
    // One order only: the first reading.
    let single = judge
        .clone()
        .with_both_orders(false)
        .try_pairwise(&DecayLm, &template, &items[..1], &device)
        .unwrap();
    let row = [0, 1, 2, A, 3, 1, B, 2, 2, 0, 3];
    let want = two_way(&logits_by_hand(&row), A, B);
    assert!((single[0] - want).abs() < 1e-12);
}

#[test]
fn pointwise_is_the_yes_probability() {
    let device = Device::flex();
    let template = JudgeTemplate::new(vec![
        JudgePiece::Slot(JudgeSlot::Principle),
        JudgePiece::Tokens(vec![2]),
        JudgePiece::Slot(JudgeSlot::Completion),
        JudgePiece::Tokens(vec![3]),
    ]);
    let items = [
        PointwiseItem {
            principle: &[1],
            prompt: &[],
            completion: &[0, 2],
        },
        PointwiseItem {
            principle: &[],
            prompt: &[],
            completion: &[3],
        },
    ];
    let normalized = ModelJudge::new([A, B], (YES, Some(NO)), PAD)
        .try_pointwise(&DecayLm, &template, &items, &device)
        .unwrap();
    let full = ModelJudge::new([A, B], (YES, None), PAD)
        .try_pointwise(&DecayLm, &template, &items, &device)
        .unwrap();
    for (i, it) in items.iter().enumerate() {
        let mut row = it.principle.to_vec();
        row.push(2);
        row.extend_from_slice(it.completion);
        row.push(3);
        let z = logits_by_hand(&row);
        assert!((normalized[i] - two_way(&z, YES, NO)).abs() < 1e-12);
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((full[i] - (z[YES as usize] - lse).exp()).abs() < 1e-12);
    }
}

#[test]
fn malformed_templates_and_items_are_typed_errors() {
    let device = Device::flex();
    let judge = ModelJudge::new([A, B], (YES, Some(NO)), PAD);
    let item = PairwiseItem {
        principle: &[1],
        prompt: &[],
        first: &[2],
        second: &[3],
    };
    // No option B slot.
    let no_b = JudgeTemplate::new(vec![
        JudgePiece::Slot(JudgeSlot::OptionA),
        JudgePiece::Tokens(vec![3]),
    ]);
    let err = judge
        .try_pairwise(&DecayLm, &no_b, &[item], &device)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "template",
                ..
            }
        ),
        "{err}"
    );
    // A pointwise slot in a pairwise template.
    let mut pieces = pairwise_template().pieces().to_vec();
    pieces.push(JudgePiece::Slot(JudgeSlot::Completion));
    let err = judge
        .try_pairwise(&DecayLm, &JudgeTemplate::new(pieces), &[item], &device)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "template",
                ..
            }
        ),
        "{err}"
    );
    // An empty completion.
    let empty = PairwiseItem {
        principle: &[1],
        prompt: &[],
        first: &[2],
        second: &[],
    };
    let err = judge
        .try_pairwise(&DecayLm, &pairwise_template(), &[empty], &device)
        .unwrap_err();
    assert!(matches!(&err, Error::Empty { arg: "items", .. }), "{err}");
    // No item.
    let err = judge
        .try_pairwise(&DecayLm, &pairwise_template(), &[], &device)
        .unwrap_err();
    assert!(matches!(&err, Error::Empty { .. }), "{err}");
    // The same token for both answers; a token outside the vocabulary.
    let err = ModelJudge::new([A, A], (YES, None), PAD)
        .try_pairwise(&DecayLm, &pairwise_template(), &[item], &device)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "choice_tokens",
                ..
            }
        ),
        "{err}"
    );
    let err = ModelJudge::new([A, 40], (YES, None), PAD)
        .try_pairwise(&DecayLm, &pairwise_template(), &[item], &device)
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    // A pointwise template without its completion slot.
    let err = judge
        .try_pointwise(
            &DecayLm,
            &JudgeTemplate::new(vec![JudgePiece::Tokens(vec![1])]),
            &[PointwiseItem {
                principle: &[],
                prompt: &[],
                completion: &[1],
            }],
            &device,
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Config {
                field: "template",
                ..
            }
        ),
        "{err}"
    );
}
