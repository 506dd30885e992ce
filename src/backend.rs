//! Backend names, feature gates, and the one place a concrete Burn backend is named.
//!
//! Everything else is generic over `B: Backend` / `B: AutodiffBackend`; a job implements
//! [`BackendJob`] and [`dispatch`] monomorphises it, in one `match`, for the backend and
//! precision the config asks for.

use burn::tensor::backend::AutodiffBackend;

use crate::config::{BackendSection, ConfigError};

#[cfg(not(any(
    feature = "ndarray",
    feature = "flex",
    feature = "wgpu",
    feature = "tch"
)))]
compile_error!("kiln needs at least one backend feature: ndarray, flex, wgpu, tch or cuda");

/// The backend used when a config does not name one: the GPU when libtorch-CUDA was
/// compiled in, otherwise the first CPU backend compiled in.
pub const DEFAULT: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "ndarray") {
    "ndarray"
} else if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "tch") {
    "tch-cpu"
} else {
    "wgpu"
};

/// A backend that needs no GPU, for work such as reading records.
pub const CPU: &str = if cfg!(feature = "ndarray") {
    "ndarray"
} else if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "tch") {
    "tch-cpu"
} else {
    "wgpu"
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendName {
    /// Pure-Rust CPU backend (burn-ndarray).
    Ndarray,
    /// Burn's newer pure-Rust CPU backend (burn-flex).
    Flex,
    /// wgpu: Vulkan, Metal or DX12 GPUs (or Mesa's lavapipe on a CPU).
    Wgpu,
    /// libtorch on its CPU device.
    TchCpu,
    /// libtorch on a CUDA device.
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

/// Every backend: its config name, the Cargo feature that compiles it in, whether it is
/// compiled into this binary, and the precisions it runs.
const BACKENDS: &[(BackendName, &str, &str, bool, &[Precision])] = &[
    (
        BackendName::Ndarray,
        "ndarray",
        "ndarray",
        cfg!(feature = "ndarray"),
        &[Precision::F32],
    ),
    (
        BackendName::Flex,
        "flex",
        "flex",
        cfg!(feature = "flex"),
        &[Precision::F32],
    ),
    (
        BackendName::Wgpu,
        "wgpu",
        "wgpu",
        cfg!(feature = "wgpu"),
        &[Precision::F32],
    ),
    (
        BackendName::TchCpu,
        "tch-cpu",
        "tch",
        cfg!(feature = "tch"),
        &[Precision::F32, Precision::F16, Precision::Bf16],
    ),
    (
        BackendName::Cuda,
        "cuda",
        "cuda",
        cfg!(feature = "cuda"),
        &[Precision::F32, Precision::F16, Precision::Bf16],
    ),
];

impl BackendName {
    /// The backend called `name`, if it is compiled in; otherwise what was expected.
    pub fn parse(name: &str) -> Result<Self, String> {
        let Some(&(backend, _, feature, compiled, _)) = BACKENDS.iter().find(|b| b.1 == name)
        else {
            let names: Vec<_> = BACKENDS.iter().map(|b| format!("{:?}", b.1)).collect();
            return Err(format!("one of {}", names.join(", ")));
        };
        if !compiled {
            return Err(format!("a backend compiled into this binary; rebuild with `cargo run --release --features {feature} -- …`"));
        }
        Ok(backend)
    }

    pub fn as_str(self) -> &'static str {
        BACKENDS.iter().find(|b| b.0 == self).map_or("?", |b| b.1)
    }

    fn precisions(self) -> &'static [Precision] {
        BACKENDS.iter().find(|b| b.0 == self).map_or(&[], |b| b.4)
    }
}

impl Precision {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err("one of \"f32\", \"f16\", \"bf16\"".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

/// A validated `[backend]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    pub name: BackendName,
    pub precision: Precision,
    /// GPU index (wgpu, cuda); ignored by the CPU backends.
    pub device: usize,
}

impl BackendChoice {
    /// Checks names, the feature and the precision; errors name the key and what was expected.
    pub fn from_section(section: &BackendSection) -> Result<Self, ConfigError> {
        let invalid = |key, value: &str, expected| ConfigError::Invalid {
            key,
            value: format!("{value:?}"),
            expected,
        };
        let name = BackendName::parse(&section.name)
            .map_err(|e| invalid("backend.name", &section.name, e))?;
        let precision = Precision::parse(&section.precision)
            .map_err(|e| invalid("backend.precision", &section.precision, e))?;
        if !name.precisions().contains(&precision) {
            let can: Vec<&str> = name.precisions().iter().map(|p| p.as_str()).collect();
            let expected = format!(
                "a precision the {} backend runs: {}",
                name.as_str(),
                can.join(", ")
            );
            return Err(invalid("backend.precision", &section.precision, expected));
        }
        Ok(Self {
            name,
            precision,
            device: section.device,
        })
    }

    /// `ndarray`, `tch-cpu bf16`, `cuda:1 f16`…
    pub fn describe(&self) -> String {
        let mut s = self.name.as_str().to_string();
        if matches!(self.name, BackendName::Wgpu | BackendName::Cuda) && self.device > 0 {
            s += &format!(":{}", self.device);
        }
        if self.precision != Precision::F32 {
            s += &format!(" {}", self.precision.as_str());
        }
        s
    }
}

/// A computation that can run on any autodiff backend.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendChoice) -> Self::Output;
}

/// Runs `job` on the backend a `[backend]` section asks for.
pub fn dispatch<J: BackendJob>(section: &BackendSection, job: J) -> anyhow::Result<J::Output> {
    let choice = BackendChoice::from_section(section)?;
    #[allow(unused_imports)]
    use burn::tensor::{bf16, f16};
    match (choice.name, choice.precision) {
        #[cfg(feature = "ndarray")]
        (BackendName::Ndarray, _) => Ok(job
            .run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
                Default::default(),
                choice,
            )),
        #[cfg(feature = "flex")]
        (BackendName::Flex, _) => Ok(job
            .run::<burn::backend::Autodiff<burn::backend::Flex<f32>>>(Default::default(), choice)),
        #[cfg(feature = "wgpu")]
        (BackendName::Wgpu, _) => {
            use burn::backend::wgpu::WgpuDevice;
            let device = if choice.device == 0 {
                WgpuDevice::DefaultDevice
            } else {
                WgpuDevice::DiscreteGpu(choice.device)
            };
            Ok(job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(device, choice))
        }
        #[cfg(feature = "tch")]
        (BackendName::TchCpu | BackendName::Cuda, precision) => {
            use burn::backend::libtorch::LibTorchDevice;
            use burn::backend::{Autodiff, LibTorch};
            let device = match choice.name {
                BackendName::Cuda => cuda_device(choice.device)?,
                _ => LibTorchDevice::Cpu,
            };
            Ok(match precision {
                Precision::F32 => job.run::<Autodiff<LibTorch<f32>>>(device, choice),
                Precision::F16 => job.run::<Autodiff<LibTorch<f16>>>(device, choice),
                Precision::Bf16 => job.run::<Autodiff<LibTorch<bf16>>>(device, choice),
            })
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("BackendChoice::from_section only accepts compiled-in backends"),
    }
}

/// The devices of a data-parallel run's replicas on this node: `indices` of the backend
/// `base` belongs to (all of them the one CPU device on the CPU backends), or `base` alone.
pub fn replica_devices<B: burn::prelude::Backend>(
    choice: &BackendChoice,
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
            if choice.name == BackendName::Cuda {
                cuda_device(index).map_err(|e| anyhow::anyhow!("distributed.devices: {e}"))?;
            }
            let _ = choice;
            let mut id = base.to_id();
            id.index_id = u16::try_from(index).map_err(|_| {
                anyhow::anyhow!("distributed.devices: {index} is not a device index")
            })?;
            Ok(B::Device::from_id(id))
        })
        .collect()
}

/// The CUDA device `index`, or an error when libtorch sees no such device (instead of the
/// abort libtorch gives on first use).
#[cfg(feature = "tch")]
fn cuda_device(index: usize) -> anyhow::Result<burn::backend::libtorch::LibTorchDevice> {
    let count = tch::Cuda::device_count().max(0) as usize;
    if index >= count {
        anyhow::bail!(
            "backend.device = {index}: libtorch sees {count} CUDA device(s){}",
            if count == 0 {
                "; check `nvidia-smi`, and that kiln was built against a CUDA build of libtorch (scripts/setup-venv.sh)"
            } else {
                ""
            }
        );
    }
    Ok(burn::backend::libtorch::LibTorchDevice::Cuda(index))
}
