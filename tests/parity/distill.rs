//! TRL 1.16 distillation: `DistillationTrainer`'s `_chunked_divergence_loss` (`fused_*`:
//! student and teacher hidden states and LM heads) and GKD's `generalized_jsd_loss` (`gkd_*`:
//! full logits). The fused cases run through `DistillationLoss::try_forward_fused` (`Auto`,
//! with small tiles so that the row and vocabulary tiling is exercised, and `Reference`, which
//! materializes both heads' logits); the GKD cases through the logits path
//! (`DistillationLoss::try_forward`, and `DistillationLoss::try_elementwise` for
//! `reduction = "none"`).

use burn::tensor::Tensor;
use burn_rlhf::Normalizer;
use burn_rlhf::logps::{LmHead, LogpsImplementation};
use burn_rlhf::losses::DistillationLossConfig;

use crate::common::{TestDevice, bool_tensor, tensor, to_vec};
use crate::fixture::{Array, Case};
use crate::tolerance::{self, Kind};

fn loss_config(case: &Case) -> DistillationLossConfig {
    let c = &case.config;
    DistillationLossConfig::new()
        .with_beta(case.config_f64("beta"))
        .with_temperature(case.config_f64("temperature"))
        .with_student_logit_scale(c["student_logit_scale"].as_f64().unwrap_or(1.0))
        .with_teacher_logit_scale(c["teacher_logit_scale"].as_f64().unwrap_or(1.0))
        .with_student_final_logit_softcapping(c["student_final_logit_softcapping"].as_f64())
        .with_teacher_final_logit_softcapping(c["teacher_final_logit_softcapping"].as_f64())
}

/// `num_items_in_batch` as TRL gets it (a number or null).
fn num_items(case: &Case) -> Option<f64> {
    case.inputs
        .get("num_items_in_batch")
        .and_then(|v| v.as_f64())
}

/// TRL's `_chunked_divergence_loss`: loss, `entropy_sum`, `n_valid` and the student's
/// gradients against TRL (float32 inside TRL: [`Kind::Float32Accumulated`]) and against the
/// fixture's float64 closed form ([`Kind::ReferenceF64`], f64 devices).
pub fn chunked_divergence(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let input = |k: &str| case.input(k);
    let (sh, th, sw, tw) = (
        input("student_hidden"),
        input("teacher_hidden"),
        input("student_weight"),
        input("teacher_weight"),
    );
    let (sb, tb) = (
        case.input_opt("student_bias"),
        case.input_opt("teacher_bias"),
    );
    let mask = input("completion_mask");
    let [b, k] = mask.shape::<2>();
    let mask_bool: Vec<bool> = mask.values.iter().map(|&x| x != 0.0).collect();
    let normalizer = match num_items(case) {
        Some(n) => Normalizer::GlobalTokens(n),
        None => Normalizer::TokenMean,
    };
    let c = &case.config;
    // Tiles: the fixture's patched sizes where it has them, else small ones (tiling changes
    // only round-off).
    let (vocab_chunk, token_chunk) = if case.config_bool("chunk_sizes_patched") {
        (
            c["vocab_chunk_size"].as_u64().map(|x| x as usize),
            c["token_chunk_size"].as_u64().map(|x| x as usize),
        )
    } else {
        (Some(8), Some(5))
    };
    for implementation in [LogpsImplementation::Auto, LogpsImplementation::Reference] {
        let tag = format!("{implementation:?}");
        let t = |a: &Array| tensor::<2>(a.values.clone(), a.shape(), dev, &device);
        let t3 = |a: &Array| tensor::<3>(a.values.clone(), a.shape(), dev, &device);
        let t1 = |a: &Array| tensor::<1>(a.values.clone(), a.shape(), dev, &device);
        let student_hidden = t3(&sh).require_grad();
        let student_weight = t(&sw).require_grad();
        let student_bias = sb.as_ref().map(|x| t1(x).require_grad());
        // The teacher's tensors track gradients too: none may reach them.
        let teacher_hidden = t3(&th).require_grad();
        let teacher_weight = t(&tw).require_grad();
        let teacher_bias = tb.as_ref().map(|x| t1(x).require_grad());
        let loss = loss_config(case)
            .with_normalizer(normalizer)
            .with_vocab_chunk_size(vocab_chunk)
            .with_token_chunk_size(token_chunk)
            .with_implementation(implementation)
            .init();
        let terms = loss
            .try_terms_fused(
                student_hidden.clone(),
                LmHead::vocab_major(student_weight.clone(), student_bias.clone()),
                teacher_hidden.clone(),
                LmHead::vocab_major(teacher_weight.clone(), teacher_bias.clone()),
                bool_tensor::<2>(mask_bool.clone(), [b, k], &device),
            )
            .map_err(|e| format!("{tag}: {e}"))?;
        let out = loss.try_reduce(&terms).map_err(|e| format!("{tag}: {e}"))?;
        let grads = out.loss.backward();
        let loss_value = to_vec(out.loss.clone());
        let entropy_sum = vec![to_vec(terms.entropy.clone()).iter().sum::<f64>()];
        let n_valid = to_vec(out.metrics.get("num_tokens").unwrap().clone())[0];
        let want_n = case.expected_value("n_valid").as_f64().unwrap();
        if n_valid != want_n {
            return Err(format!("{tag} n_valid: {n_valid} vs TRL {want_n}"));
        }
        let grad = |x: &Tensor<2>| x.grad(&grads).map(to_vec);
        let g_hidden = student_hidden
            .grad(&grads)
            .map(to_vec)
            .ok_or(format!("{tag}: no gradient reached student_hidden"))?;
        let g_weight = grad(&student_weight).ok_or(format!("{tag}: no student weight grad"))?;
        let g_bias = student_bias.as_ref().map(|x| {
            x.grad(&grads)
                .map(to_vec)
                .unwrap_or_else(|| panic!("{tag}: no student bias grad"))
        });
        if teacher_hidden.grad(&grads).is_some()
            || teacher_weight.grad(&grads).is_some()
            || teacher_bias
                .as_ref()
                .is_some_and(|x| x.grad(&grads).is_some())
        {
            return Err(format!("{tag}: a gradient reached the teacher"));
        }
        let trl = |what: &str, actual: &[f64], want: &Array| {
            tolerance::check(
                Kind::Float32Accumulated,
                dev,
                &format!("{tag} {what}"),
                actual,
                &want.values,
            )
        };
        trl("loss", &loss_value, &case.expect("loss"))?;
        trl("entropy_sum", &entropy_sum, &case.expect("entropy_sum"))?;
        trl(
            "grad_student_hidden",
            &g_hidden,
            &case.expect("grad_student_hidden"),
        )?;
        trl(
            "grad_student_weight",
            &g_weight,
            &case.expect("grad_student_weight"),
        )?;
        match (case.expect_opt("grad_student_bias"), &g_bias) {
            (Some(want), Some(got)) => trl("grad_student_bias", got, &want)?,
            (None, None) => {}
            _ => return Err(format!("{tag}: student bias gradient presence differs")),
        }
        case.mark_compared("reference_fp64");
        if dev.has_f64() {
            let strict = |what: &str, actual: &[f64]| -> Result<(), String> {
                match case.expect_nested("reference_fp64", what) {
                    Some(want) => tolerance::check(
                        Kind::ReferenceF64,
                        dev,
                        &format!("{tag} reference_fp64 {what}"),
                        actual,
                        &want.values,
                    ),
                    None => Ok(()),
                }
            };
            strict("loss", &loss_value)?;
            strict("entropy_sum", &entropy_sum)?;
            strict("per_token_divergence", &to_vec(terms.divergence.clone()))?;
            strict("per_token_entropy", &to_vec(terms.entropy.clone()))?;
            strict("grad_student_hidden", &g_hidden)?;
            strict("grad_student_weight", &g_weight)?;
            if let Some(g) = &g_bias {
                strict("grad_student_bias", g)?;
            }
        }
    }
    Ok(())
}

/// GKD's `generalized_jsd_loss(student_logits, teacher_logits, labels, beta, temperature,
/// reduction, num_items_in_batch)`, float64 in TRL: [`Kind::Values`] against TRL and
/// [`Kind::ReferenceF64`] against the closed form. TRL's reductions map onto the crate's
/// normalizers (`num_items_in_batch` first, whatever `reduction` says; `batchmean` = the token
/// mean with labels, `Constant(size(0))` without; `mean` = `Constant(n_valid V)`; `sum`);
/// `none` compares `DistillationLoss::try_elementwise` on the rows TRL keeps.
pub fn generalized_jsd(case: &Case, dev: &TestDevice) -> Result<(), String> {
    let device = dev.autodiff();
    let s = case.input("student_logits");
    let tl = case.input("teacher_logits");
    let v = *s.shape.last().unwrap();
    let first_dim = s.shape[0];
    let rows = s.values.len() / v;
    // [N, V] logits are one sequence of N positions.
    let (b, t) = if s.shape.len() == 3 {
        (s.shape[0], s.shape[1])
    } else {
        (1, rows)
    };
    let labels = case.input_opt("labels");
    let valid: Vec<bool> = match &labels {
        Some(l) => l.values.iter().map(|&x| x != -100.0).collect(),
        None => vec![true; rows],
    };
    let n_valid = valid.iter().filter(|&&x| x).count();
    let reduction = case.config["reduction"].as_str().unwrap().to_string();
    let normalizer = match (num_items(case), reduction.as_str()) {
        (Some(n), _) => Some(Normalizer::GlobalTokens(n)),
        (None, "batchmean") if labels.is_some() => Some(Normalizer::TokenMean),
        (None, "batchmean") => Some(Normalizer::Constant(first_dim.max(1) as f64)),
        (None, "sum") => Some(Normalizer::Sum),
        (None, "mean") => Some(Normalizer::Constant((n_valid * v) as f64)),
        (None, "none") => None,
        (None, other) => return Err(format!("unknown reduction {other}")),
    };
    let student = tensor::<3>(s.values.clone(), [b, t, v], dev, &device).require_grad();
    let teacher = tensor::<3>(tl.values.clone(), [b, t, v], dev, &device).require_grad();
    let config = loss_config(case);
    let (loss_values, grads) = match normalizer {
        Some(normalizer) => {
            let out = config
                .with_normalizer(normalizer)
                .init()
                .try_forward(
                    student.clone(),
                    teacher.clone(),
                    bool_tensor::<2>(valid.clone(), [b, t], &device),
                )
                .map_err(|e| e.to_string())?;
            (to_vec(out.loss.clone()), out.loss.backward())
        }
        None => {
            let terms = config
                .init()
                .try_elementwise(student.clone(), teacher.clone())
                .map_err(|e| e.to_string())?;
            // TRL keeps the valid rows ([n_valid, V]) with labels, every element without.
            let all = to_vec(terms.clone());
            let kept: Vec<f64> = all
                .chunks(v)
                .zip(&valid)
                .filter(|(_, ok)| **ok)
                .flat_map(|(row, _)| row.iter().copied())
                .collect();
            // The upstream gradient of the kept rows, scattered back to [B, T, V].
            let g_out = case.input("grad_output");
            let mut g_full = vec![0.0; rows * v];
            let mut next = g_out.values.chunks(v);
            for (r, ok) in valid.iter().enumerate() {
                if *ok {
                    g_full[r * v..(r + 1) * v].copy_from_slice(next.next().unwrap());
                }
            }
            let g = tensor::<3>(g_full, [b, t, v], dev, &device);
            (kept, (terms * g).sum().backward())
        }
    };
    let g_student = student
        .grad(&grads)
        .map(to_vec)
        .ok_or("no gradient reached student_logits")?;
    if teacher.grad(&grads).is_some() {
        return Err("a gradient reached the teacher logits".into());
    }
    let check = |kind, what: &str, actual: &[f64], want: &Array| {
        tolerance::check(kind, dev, what, actual, &want.values)
    };
    check(Kind::Values, "loss", &loss_values, &case.expect("loss"))?;
    check(
        Kind::Values,
        "grad_student_logits",
        &g_student,
        &case.expect("grad_student_logits"),
    )?;
    case.mark_compared("reference_fp64");
    if dev.has_f64() {
        for (what, actual) in [("loss", &loss_values), ("grad_student_logits", &g_student)] {
            if let Some(want) = case.expect_nested("reference_fp64", what) {
                check(
                    Kind::ReferenceF64,
                    &format!("reference_fp64 {what}"),
                    actual,
                    &want,
                )?;
            }
        }
    }
    Ok(())
}
