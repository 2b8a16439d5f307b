//! TR-DPO's soft update of the reference model.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// TR-DPO's soft reference update: every float parameter of `reference` becomes
/// `alpha * policy + (1 - alpha) * reference` (parameters matched by id: `reference` is a
/// `valid()` copy of `policy` or of an ancestor of it, as [`Module::valid`] keeps ids).
/// Parameters of `reference` that `policy` does not have are left unchanged.
pub fn soft_update<M: Module>(ref_model: M, policy: &M, alpha: f64) -> M {
    struct Collect(BTreeMap<burn::module::ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().detach();
            let n = t.shape().num_elements();
            self.0.insert(param.id, t.reshape([n]));
        }
    }
    struct Mix(BTreeMap<burn::module::ParamId, Tensor<1>>, f64);
    impl ModuleMapper for Mix {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(p) = self.0.remove(&param.id) else {
                return param;
            };
            let alpha = self.1;
            param.map(|r| {
                let p = p.to_device(&r.device()).cast(r.dtype()).reshape(r.dims());
                r.mul_scalar(1.0 - alpha) + p.mul_scalar(alpha)
            })
        }
    }
    let mut collect = Collect(BTreeMap::new());
    policy.visit(&mut collect);
    ref_model.map(&mut Mix(collect.0, alpha))
}
