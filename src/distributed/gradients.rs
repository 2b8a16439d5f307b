//! Gradients summed over ranks through any [`Reducer`]: the all-reduce of gradients for
//! reducers that carry host values (MPI across processes, threads of one process).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::Reducer;
use crate::error::{Error, Result};

/// Every rank's `grads` of `model`'s float parameters, summed over the ranks by `reducer` in
/// **one** call: each rank receives the same totals and takes the same optimizer step.
///
/// The gradients are flattened in the order `model` visits its parameters (the same on every
/// rank: the same model type), one device -> host read of all of them (as `f64`), one
/// [`Reducer::sum`], then one host -> device write per parameter in the gradient's dtype. A
/// parameter with no gradient on this rank (unused in its shard) is sent as zeros, so the
/// layout never differs between ranks; the result holds a gradient for every float parameter.
///
/// With the losses normalized by the step's global counts (see the [module docs](super)),
/// the summed gradients are the gradient of the whole step's batch: the same as one process
/// on the whole batch, up to the order of the `f64` additions.
///
/// Cost: the gradients travel through host memory as `f64` (8 bytes a parameter), which suits
/// models up to some hundred million parameters; larger ones want a device collective (NCCL,
/// burn's [`CollectiveReducer`](super::CollectiveReducer) on CUDA).
///
/// Errors: the reducer's ([`Error::Collective`]: a rank failed, the ranks disagree), a failed
/// read ([`Error::Backend`]).
pub fn sum_gradients<M: Module, R: Reducer + ?Sized>(
    reducer: &R,
    model: &M,
    mut grads: GradientsParams,
) -> Result<GradientsParams> {
    let mut collect = Collect {
        grads: &mut grads,
        flat: Vec::new(),
        layout: Vec::new(),
    };
    model.visit(&mut collect);
    let Collect { flat, layout, .. } = collect;
    let local = crate::host_reads::floats_cat(flat, "grads").map_err(Error::from)?;
    let total = reducer.sum(&local)?;
    if total.len() != local.len() {
        return Err(Error::Collective {
            op: "sum",
            world_size: reducer.world_size(),
            reason: format!(
                "the reducer returned {} values for {} gradient values",
                total.len(),
                local.len()
            ),
        });
    }
    let mut out = GradientsParams::new();
    let mut rebuild = Rebuild {
        out: &mut out,
        layout: layout.into_iter(),
        total: &total,
        offset: 0,
    };
    model.visit(&mut rebuild);
    Ok(out)
}

struct Slot {
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
}

struct Collect<'a> {
    grads: &'a mut GradientsParams,
    flat: Vec<Tensor<1>>,
    layout: Vec<Slot>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let n: usize = shape.iter().product();
        let (flat, dtype, device) = match self.grads.remove::<D>(param.id) {
            Some(grad) => {
                let (dtype, device) = (grad.dtype(), grad.device());
                (grad.reshape([n]), dtype, device)
            }
            None => {
                let device = value.device().without_autodiff();
                let dtype = value.dtype();
                let zeros =
                    Tensor::<1>::from_data(TensorData::new(vec![0.0f64; n], [n]), (&device, dtype));
                (zeros, dtype, device)
            }
        };
        self.flat.push(flat);
        self.layout.push(Slot {
            shape,
            dtype,
            device,
        });
    }
}

struct Rebuild<'a, I> {
    out: &'a mut GradientsParams,
    layout: I,
    total: &'a [f64],
    offset: usize,
}

impl<I: Iterator<Item = Slot>> ModuleVisitor for Rebuild<'_, I> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(slot) = self.layout.next() else {
            return;
        };
        let n: usize = slot.shape.iter().product();
        let values = self.total[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let grad = Tensor::<D>::from_data(
            TensorData::new(values, slot.shape),
            (&slot.device, slot.dtype),
        );
        self.out.register(param.id, grad);
    }
}
