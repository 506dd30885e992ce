//! The AdamW [`Update`] in libtorch's fused element-wise kernels (`lerp_`, `addcdiv_`), writing
//! the parameter and moments in place: six kernels for a matrix where Burn's operations run
//! twelve, each into a fresh tensor. It serves every libtorch device, CUDA included.

use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use half::{bf16, f16};

use super::{Slot, Update, Updated};
use crate::model::fused::moved_as;

/// [`super::fused_update`] for `LibTorch<E>`, E being any of its float types.
pub(super) fn update<B: Backend, const D: usize>(
    slot: Slot<B, D>,
    update: Update,
) -> Result<Updated<B, D>, Slot<B, D>> {
    update_as::<B, f32, D>(slot, update)
        .or_else(|slot| update_as::<B, f16, D>(slot, update))
        .or_else(|slot| update_as::<B, bf16, D>(slot, update))
}

fn update_as<B: Backend, E: TchElement, const D: usize>(
    slot: Slot<B, D>,
    u: Update,
) -> Result<Updated<B, D>, Slot<B, D>> {
    let slot: Slot<LibTorch<E>, D> = moved_as(slot)?;
    let [mut param, grad, mut moment_1, mut moment_2] =
        [slot.param, slot.grad, slot.moment_1, slot.moment_2].map(writable);
    if u.decay != 1.0 {
        let _ = param.g_mul_scalar_(u.decay);
    }
    let _ = moment_1.lerp_(&grad, 1.0 - u.beta1);
    let _ = moment_2.lerp_(&grad.square(), 1.0 - u.beta2);
    let mut denominator = moment_2.sqrt();
    let _ = denominator.g_add_scalar_(u.epsilon);
    let _ = param.addcdiv_(&(&moment_1 * -u.step_size), &denominator);
    let updated = [param, moment_1, moment_2].map(|t| {
        Tensor::<LibTorch<E>, D>::from_primitive(TensorPrimitive::Float(TchTensor::new(t)))
    });
    Ok(super::updated_as(updated))
}

/// `t`'s libtorch tensor, copied first where another Burn tensor shares its storage (a
/// checkpoint being written from it, say): writing it in place must change nothing else.
fn writable<E: TchElement, const D: usize>(t: Tensor<LibTorch<E>, D>) -> tch::Tensor {
    let t = t.into_primitive().tensor();
    if t.can_mut() {
        t.tensor
    } else {
        t.tensor.copy()
    }
}
