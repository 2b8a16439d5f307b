//! Distillation: closed-form values and gradients of the divergences (both KL directions named
//! and told apart), and the fused two-head op against the materialized loss (values and
//! gradients, proptest) on every test device.

use burn::tensor::{Tensor, TensorData};
use burn_rlhf::Normalizer;
use burn_rlhf::logps::{LmHead, LogpsImplementation};
use burn_rlhf::losses::DistillationLossConfig;
use proptest::prelude::*;

use crate::common::{self, TestDevice, assert_close, bool_tensor, tensor, to_vec};

fn cases(default: u32) -> u32 {
    std::env::var("BURN_RLHF_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(a, b)| a * (a.ln() - b.ln())).sum()
}

/// The closed form of one row's divergence and its gradient with respect to the student's
/// logits (temperature 1), written from the definitions: `KL(p || q) = sum p log(p / q)`.
fn closed_form(zs: &[f64], zt: &[f64], beta: f64) -> (f64, Vec<f64>) {
    let (ps, pt) = (softmax(zs), softmax(zt));
    if beta == 0.0 {
        // Forward KL(teacher || student); d/dz_s = p_s - p_t.
        let g = ps.iter().zip(&pt).map(|(s, t)| s - t).collect();
        (kl(&pt, &ps), g)
    } else if beta == 1.0 {
        // Reverse KL(student || teacher); d/dz_s = p_s (log p_s - log p_t - D).
        let d = kl(&ps, &pt);
        let g = ps
            .iter()
            .zip(&pt)
            .map(|(s, t)| s * (s.ln() - t.ln() - d))
            .collect();
        (d, g)
    } else {
        let m: Vec<f64> = ps
            .iter()
            .zip(&pt)
            .map(|(s, t)| (1.0 - beta) * s + beta * t)
            .collect();
        let kl_s = kl(&ps, &m);
        let d = beta * kl(&pt, &m) + (1.0 - beta) * kl_s;
        let g = ps
            .iter()
            .zip(&m)
            .map(|(s, mm)| (1.0 - beta) * s * (s.ln() - mm.ln() - kl_s))
            .collect();
        (d, g)
    }
}

/// Both KL directions on a case where they differ, against the closed form: the loss and the
/// gradient of the student's logits (sum normalizer, one row).
#[test]
fn kl_directions_match_the_closed_form_and_differ() {
    let zs = [1.5, -0.5, 0.25, 2.0, -1.0];
    let zt = [0.0, 1.0, -2.0, 0.5, 0.75];
    let forward = closed_form(&zs, &zt, 0.0).0;
    let reverse = closed_form(&zs, &zt, 1.0).0;
    assert!(
        (forward - reverse).abs() > 0.05,
        "the case must tell the directions apart: {forward} vs {reverse}"
    );
    for dev in common::devices() {
        let device = dev.autodiff();
        for beta in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let (want, want_grad) = closed_form(&zs, &zt, beta);
            let s = tensor::<3>(zs.to_vec(), [1, 1, 5], &dev, &device).require_grad();
            let t = tensor::<3>(zt.to_vec(), [1, 1, 5], &dev, &device);
            let out = DistillationLossConfig::new()
                .with_beta(beta)
                .with_normalizer(Normalizer::Sum)
                .init()
                .forward(s.clone(), t, bool_tensor::<2>(vec![true], [1, 1], &device));
            let grads = out.loss.backward();
            let (rtol, atol) = if dev.has_f64() {
                (1e-12, 1e-14)
            } else {
                (1e-5, 1e-6)
            };
            let name = format!("{} beta {beta}", dev.name);
            assert_close(&name, &to_vec(out.loss), &[want], rtol, atol);
            assert_close(
                &format!("{name} grad"),
                &to_vec(s.grad(&grads).unwrap()),
                &want_grad,
                rtol,
                atol,
            );
        }
    }
}

/// A `beta` outside `[0, 1]` is rejected at construction (TRL's fused function returns 0
/// silently there); a teacher with another vocabulary is a shape error naming it.
#[test]
fn bad_configs_and_vocabularies_are_typed_errors() {
    for beta in [-0.1, 1.5, f64::NAN] {
        let err = DistillationLossConfig::new()
            .with_beta(beta)
            .try_init()
            .unwrap_err();
        assert!(err.to_string().contains("beta"), "{err}");
    }
    let device = burn::tensor::Device::flex();
    let loss = DistillationLossConfig::new().init();
    let hidden = Tensor::<3>::zeros([1, 2, 3], &device);
    let err = loss
        .try_forward_fused(
            hidden.clone(),
            LmHead::vocab_major(Tensor::zeros([7, 3], &device), None),
            hidden,
            LmHead::vocab_major(Tensor::zeros([8, 3], &device), None),
            Tensor::<2, burn::tensor::Bool>::from_data(
                TensorData::new(vec![true, true], [1, 2]),
                &device,
            ),
        )
        .unwrap_err();
    assert!(err.to_string().contains("teacher_head"), "{err}");
    let err = loss
        .try_forward(
            Tensor::zeros([1, 2, 7], &device),
            Tensor::zeros([1, 2, 8], &device),
            Tensor::<2, burn::tensor::Bool>::from_data(
                TensorData::new(vec![true, true], [1, 2]),
                &device,
            ),
        )
        .unwrap_err();
    assert!(err.to_string().contains("teacher_logits"), "{err}");
}

struct Case {
    b: usize,
    t: usize,
    hs: usize,
    ht: usize,
    v: usize,
    values: [Vec<f64>; 6],
    mask: Vec<bool>,
}

fn make(seed: u64, (b, t, hs, ht, v): (usize, usize, usize, usize, usize), mask_frac: f64) -> Case {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut vals = |k: usize, scale: f64| (0..k).map(|_| scale * (2.0 * next() - 1.0)).collect();
    let values = [
        vals(b * t * hs, 1.5),
        vals(v * hs, 1.0),
        vals(v, 0.5),
        vals(b * t * ht, 1.5),
        vals(v * ht, 1.0),
        vals(v, 0.5),
    ];
    let mask = (0..b * t).map(|_| next() >= mask_frac).collect();
    Case {
        b,
        t,
        hs,
        ht,
        v,
        values,
        mask,
    }
}

/// Loss, student d hidden / d weight / d bias.
fn run(c: &Case, cfg: &DistillationLossConfig, dev: &TestDevice, biases: bool) -> [Vec<f64>; 4] {
    let device = dev.autodiff();
    let [sh, sw, sb, th, tw, tb] = &c.values;
    let t = |x: &Vec<f64>, shape: [usize; 2]| tensor::<2>(x.clone(), shape, dev, &device);
    let student_hidden = tensor::<3>(sh.clone(), [c.b, c.t, c.hs], dev, &device).require_grad();
    let teacher_hidden = tensor::<3>(th.clone(), [c.b, c.t, c.ht], dev, &device);
    let w = t(sw, [c.v, c.hs]).require_grad();
    let bias = tensor::<1>(sb.clone(), [c.v], dev, &device).require_grad();
    let student = LmHead::vocab_major(w.clone(), biases.then(|| bias.clone()));
    // The teacher in burn's `Linear` layout ([H, V]).
    let tw_hv = t(tw, [c.v, c.ht]).transpose();
    let teacher = LmHead::hidden_major(
        tw_hv,
        biases.then(|| tensor::<1>(tb.clone(), [c.v], dev, &device)),
    );
    let out = cfg.init().forward_fused(
        student_hidden.clone(),
        student,
        teacher_hidden,
        teacher,
        bool_tensor::<2>(c.mask.clone(), [c.b, c.t], &device),
    );
    let grads = out.loss.backward();
    [
        to_vec(out.loss),
        to_vec(student_hidden.grad(&grads).unwrap()),
        to_vec(w.grad(&grads).unwrap()),
        if biases {
            to_vec(bias.grad(&grads).unwrap())
        } else {
            vec![]
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    /// The fused op (tiles over rows and vocabulary, hand-written backward) equals the loss
    /// on materialized logits: value and the student's gradients.
    #[test]
    fn fused_equals_materialized(
        seed in any::<u64>(),
        b in 1usize..4,
        t in 1usize..5,
        hs in 1usize..7,
        ht in 1usize..9,
        v in 2usize..30,
        vocab_chunk in 1usize..32,
        token_chunk in 1usize..9,
        beta in prop::sample::select(vec![0.0, 0.1, 0.5, 0.8, 1.0]),
        temperature in prop::sample::select(vec![0.7, 1.0, 2.0]),
        softcap in prop::sample::select(vec![None, Some(4.0)]),
        scale in prop::sample::select(vec![0.5, 1.0, 1.5]),
        biases in any::<bool>(),
        mask_frac in prop::sample::select(vec![0.0, 0.4, 1.0]),
    ) {
        let c = make(seed, (b, t, hs, ht, v), mask_frac);
        let cfg = |implementation| DistillationLossConfig::new()
            .with_beta(beta)
            .with_temperature(temperature)
            .with_student_logit_scale(scale)
            .with_student_final_logit_softcapping(softcap)
            .with_teacher_final_logit_softcapping(softcap.map(|x| x + 1.0))
            .with_vocab_chunk_size(Some(vocab_chunk))
            .with_token_chunk_size(Some(token_chunk))
            .with_implementation(implementation);
        for dev in common::devices() {
            let want = run(&c, &cfg(LogpsImplementation::Reference), &dev, biases);
            let got = run(&c, &cfg(LogpsImplementation::Auto), &dev, biases);
            let (rtol, atol) = if dev.has_f64() { (1e-9, 1e-11) } else { (1e-4, 1e-5) };
            for (what, g, w) in [("loss", &got[0], &want[0]), ("d hidden", &got[1], &want[1]),
                ("d weight", &got[2], &want[2]), ("d bias", &got[3], &want[3])] {
                assert_close(&format!("{} {what}", dev.name), g, w, rtol, atol);
            }
            if mask_frac == 1.0 {
                prop_assert!(got.iter().flatten().all(|x| *x == 0.0));
            }
        }
    }
}
