//! The AdamW [`Update`] on ndarray in one pass over the parameter, its gradient and moments,
//! writing the parameter and moments in place, where Burn's operations make twelve passes,
//! each into a fresh tensor.

use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use ndarray::Zip;

use super::{Slot, Update, Updated};
use crate::model::fused::moved_as;

/// [`super::fused_update`] for `NdArray<f32>` with f32 tensors.
pub(super) fn update<B: Backend, const D: usize>(
    slot: Slot<B, D>,
    u: Update,
) -> Result<Updated<B, D>, Slot<B, D>> {
    if [&slot.param, &slot.grad, &slot.moment_1, &slot.moment_2]
        .iter()
        .any(|t| t.dtype() != DType::F32)
    {
        return Err(slot);
    }
    let slot: Slot<NdArray<f32>, D> = moved_as(slot)?;
    let [param, grad, moment_1, moment_2] =
        [slot.param, slot.grad, slot.moment_1, slot.moment_2].map(|t| t.into_primitive().tensor());
    let (
        NdArrayTensor::F32(param),
        NdArrayTensor::F32(grad),
        NdArrayTensor::F32(moment_1),
        NdArrayTensor::F32(moment_2),
    ) = (param, grad, moment_1, moment_2)
    else {
        unreachable!("every tensor was checked to be f32");
    };
    let (beta1, beta2, decay, step_size, epsilon) = (
        u.beta1 as f32,
        u.beta2 as f32,
        u.decay as f32,
        u.step_size as f32,
        u.epsilon as f32,
    );
    let (rest1, rest2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
    // `into_owned` and `view_mut` copy an array first where another tensor shares it (a
    // checkpoint being written from it, say): writing it in place must change nothing else.
    let [mut param, mut moment_1, mut moment_2] =
        [param, moment_1, moment_2].map(|t| t.into_owned());
    Zip::from(param.view_mut())
        .and(moment_1.view_mut())
        .and(moment_2.view_mut())
        .and(grad.view())
        .for_each(|p, m, v, &g| {
            *m = beta1 * *m + rest1 * g;
            *v = beta2 * *v + rest2 * (g * g);
            *p = *p * decay - step_size * *m / (v.sqrt() + epsilon);
        });
    let updated = [param, moment_1, moment_2].map(|t| {
        Tensor::<NdArray<f32>, D>::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(t)))
    });
    Ok(super::updated_as(updated))
}
