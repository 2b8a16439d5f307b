//! Parameter utilities for the data-parallel examples: cast a model to f64 and compare two
//! models parameter by parameter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, FloatDType, Tensor};

use super::rng::Rng;
use super::toy::{TinyLm, warm_up};

/// The data-parallel examples' start from `seed`: burn's seed on `base`, the examples' seeded
/// generator, and a `TinyLm` of width `d_model` warmed up with `sft_steps` SFT steps (f32,
/// 32 rows a step, 40% of the completions follow the rule), then cast to f64. Returns the
/// policy and the generator (for the data that follows).
pub fn warmed_up_f64(d_model: usize, sft_steps: usize, seed: u64, base: &Device) -> (TinyLm, Rng) {
    let device = base.clone().autodiff();
    base.seed(seed);
    let mut rng = Rng((0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1);
    let warm = warm_up(
        TinyLm::new(d_model, 1, &device),
        &device,
        sft_steps,
        32,
        0.4,
        &mut rng,
        |_, _| {},
    );
    (warm.map(&mut ToF64), rng)
}

/// Casts every float parameter to f64 (a fresh leaf that requires grad).
pub struct ToF64;
impl ModuleMapper for ToF64 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.cast(FloatDType::F64).detach().require_grad())
    }
}

/// Every float parameter of `m`, flattened in visiting order (as `f64`).
pub fn flat_params<M: Module>(m: &M) -> Vec<f64> {
    let mut c = Collect(vec![]);
    m.visit(&mut c);
    c.0.concat()
}

struct Collect(Vec<Vec<f64>>);
impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(
            param
                .val()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .unwrap(),
        );
    }
}

/// Max `|a - b|` over all float parameters of two models with the same structure.
pub fn max_abs_diff<M: Module>(a: &M, b: &M) -> f64 {
    let (mut ca, mut cb) = (Collect(vec![]), Collect(vec![]));
    a.visit(&mut ca);
    b.visit(&mut cb);
    ca.0.iter()
        .zip(&cb.0)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}
