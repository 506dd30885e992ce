//! Backend names, feature gates, and the one place a concrete Burn backend is named.
//!
//! Everything else is generic over `B: Backend` / `B: AutodiffBackend`; a job implements
//! [`BackendJob`] and [`dispatch`] monomorphises it for the backend the config asks for.

use burn::tensor::backend::AutodiffBackend;

#[cfg(not(feature = "ndarray"))]
compile_error!("kiln needs at least one backend feature: build with `--features ndarray`");

/// The backend used when a config has no `[backend]` section.
pub const DEFAULT: &str = "ndarray";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendName {
    /// Pure-Rust CPU backend (burn-ndarray); Cargo feature `ndarray`, on by default.
    Ndarray,
}

impl BackendName {
    /// Every backend name kiln knows, with the Cargo feature that compiles it in.
    const KNOWN: &'static [(&'static str, &'static str)] = &[("ndarray", "ndarray")];

    pub fn parse(name: &str) -> Result<Self, String> {
        let Some((_, feature)) = Self::KNOWN.iter().find(|(n, _)| *n == name) else {
            let names: Vec<_> = Self::KNOWN.iter().map(|(n, _)| format!("{n:?}")).collect();
            return Err(format!("one of {}", names.join(", ")));
        };
        match name {
            #[cfg(feature = "ndarray")]
            "ndarray" => Ok(Self::Ndarray),
            _ => Err(format!(
                "a backend compiled into this binary; rebuild with `cargo run --release --features {feature} -- …`"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
        }
    }
}

/// A computation that can run on any autodiff backend.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendName) -> Self::Output;
}

/// Runs `job` on the backend called `name`.
pub fn dispatch<J: BackendJob>(name: &str, job: J) -> anyhow::Result<J::Output> {
    let backend = BackendName::parse(name)
        .map_err(|expected| anyhow::anyhow!("backend.name = {name:?}: expected {expected}"))?;
    match backend {
        #[cfg(feature = "ndarray")]
        BackendName::Ndarray => {
            type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
            Ok(job.run::<B>(Default::default(), backend))
        }
    }
}
