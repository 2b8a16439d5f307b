//! Parameter utilities for the data-parallel examples: cast a model to f64 and compare two
//! models parameter by parameter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{FloatDType, Tensor};

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
