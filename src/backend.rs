//! The one place a concrete Burn backend is named.
//!
//! Everything else is generic: a job implements [`TrainJob`] (over an autodiff backend with
//! kiln's kernels) or [`ForwardJob`] (over a plain one, for the commands that only run a
//! model forward), and [`dispatch_train`] / [`dispatch`] monomorphise it, in one `match`,
//! for the backend and precision a `[backend]` section names.

use crate::config::{BackendName, BackendSection};
use crate::kernels::{KernelBackend, TrainBackend};

#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "wgpu", feature = "tch")))]
compile_error!("kiln needs at least one backend feature: ndarray, flex, wgpu, tch or cuda");

/// A computation that trains: it runs on an autodiff backend.
pub trait TrainJob {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device) -> Self::Output;
}

/// A computation that only runs models forward (generate, eval, inspect, export…).
pub trait ForwardJob {
    type Output;
    fn run<B: KernelBackend>(self, device: B::Device) -> Self::Output;
}

/// Expands `$body` once per backend compiled in, with `$B` the backend type the section
/// names (wrapped in `$wrap`) and `$device` its device.
macro_rules! on_backend {
    ($section:expr, |$B:ident, $device:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use burn::tensor::{bf16, f16};
        let section: &BackendSection = $section;
        match (section.name, section.precision) {
            #[cfg(feature = "ndarray")]
            (BackendName::Ndarray, _) => {
                type $B = burn::backend::NdArray<f32>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "flex")]
            (BackendName::Flex, _) => {
                type $B = burn::backend::Flex<f32>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            (BackendName::Wgpu, _) => {
                use burn::backend::wgpu::WgpuDevice;
                type $B = burn::backend::Wgpu;
                let $device = match section.device {
                    0 => WgpuDevice::DefaultDevice,
                    index => WgpuDevice::DiscreteGpu(index),
                };
                $body
            }
            #[cfg(feature = "tch")]
            (BackendName::TchCpu | BackendName::Cuda, precision) => {
                let $device = libtorch_device(section)?;
                match precision {
                    crate::config::Precision::F32 => {
                        type $B = burn::backend::LibTorch<f32>;
                        $body
                    }
                    crate::config::Precision::F16 => {
                        type $B = burn::backend::LibTorch<f16>;
                        $body
                    }
                    crate::config::Precision::Bf16 => {
                        type $B = burn::backend::LibTorch<bf16>;
                        $body
                    }
                }
            }
            #[allow(unreachable_patterns)]
            (name, _) => anyhow::bail!(
                "backend.name = {name:?}: not compiled into this binary; rebuild with \
                 `--features {}`",
                name.feature()
            ),
        }
    }};
}

/// Runs `job` on the autodiff backend a `[backend]` section names.
pub fn dispatch_train<J: TrainJob>(section: &BackendSection, job: J) -> anyhow::Result<J::Output> {
    Ok(on_backend!(section, |B, device| job.run::<burn::backend::Autodiff<B>>(device)))
}

/// Runs `job` on the backend a `[backend]` section names.
pub fn dispatch<J: ForwardJob>(section: &BackendSection, job: J) -> anyhow::Result<J::Output> {
    Ok(on_backend!(section, |B, device| job.run::<B>(device)))
}

/// The devices of a data-parallel run's replicas on this node: `indices` of the backend
/// `base` belongs to (all of them the one CPU device on the CPU backends), or `base` alone.
pub fn replica_devices<B: burn::prelude::Backend>(
    section: &BackendSection,
    base: &B::Device,
    indices: &[usize],
) -> anyhow::Result<Vec<B::Device>> {
    use burn::tensor::backend::Device;
    if indices.is_empty() {
        return Ok(vec![base.clone()]);
    }
    indices
        .iter()
        .map(|&index| {
            #[cfg(feature = "tch")]
            if section.name == BackendName::Cuda {
                cuda_device(index).map_err(|e| anyhow::anyhow!("distributed.devices: {e}"))?;
            }
            let _ = section;
            let mut id = base.to_id();
            id.index_id = u16::try_from(index).map_err(|_| {
                anyhow::anyhow!("distributed.devices: {index} is not a device index")
            })?;
            Ok(B::Device::from_id(id))
        })
        .collect()
}

#[cfg(feature = "tch")]
fn libtorch_device(
    section: &BackendSection,
) -> anyhow::Result<burn::backend::libtorch::LibTorchDevice> {
    match section.name {
        BackendName::Cuda => cuda_device(section.device),
        _ => Ok(burn::backend::libtorch::LibTorchDevice::Cpu),
    }
}

/// The CUDA device `index`, or an error when libtorch sees no such device (instead of the
/// abort libtorch gives on first use).
#[cfg(feature = "tch")]
fn cuda_device(index: usize) -> anyhow::Result<burn::backend::libtorch::LibTorchDevice> {
    let count = tch::Cuda::device_count().max(0) as usize;
    if index >= count {
        let hint = match count {
            0 => {
                "; check `nvidia-smi`, and that kiln was built against a CUDA build of libtorch \
                 (scripts/setup-venv.sh)"
            }
            _ => "",
        };
        anyhow::bail!("backend.device = {index}: libtorch sees {count} CUDA device(s){hint}");
    }
    Ok(burn::backend::libtorch::LibTorchDevice::Cuda(index))
}
