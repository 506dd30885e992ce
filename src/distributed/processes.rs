//! A run's processes: where this one stands among them, the device it drives, the folder it
//! works in, and the check that they all end with the same weights.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{BackendName, DistributedSection, RunSpec};
use crate::run::start::{StartMode, Started};
use crate::tokenizer::Tokenizer;

/// This process's place among those a launcher started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processes {
    /// `0..size`, MPI's rank in the world.
    pub rank: usize,
    pub size: usize,
    /// Among the processes of this machine.
    pub local_rank: usize,
    pub local_size: usize,
}

impl Processes {
    /// A process no launcher started, or the only one it started.
    pub const SOLE: Processes = Processes { rank: 0, size: 1, local_rank: 0, local_size: 1 };

    /// This process's place: [`Processes::SOLE`] unless an MPI launcher started it (with the
    /// `distributed` feature).
    pub fn current() -> Processes {
        #[cfg(feature = "distributed")]
        return super::mpi::processes();
        #[cfg(not(feature = "distributed"))]
        Processes::SOLE
    }
}

/// Puts this process's place into `spec`: its rank and the process count, and, when the
/// launcher runs several processes on this machine of a GPU backend with no
/// `[distributed] devices`, the device of its local rank (`backend.device + local rank`),
/// unless the launcher gave each process devices of its own (Slurm's `--gpus-per-task`
/// leaves each one `CUDA_VISIBLE_DEVICES` with fewer devices than processes).
pub fn take_place(spec: &mut RunSpec) -> Result<()> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|devices| devices.split(',').filter(|d| !d.trim().is_empty()).count());
    place(spec, Processes::current(), visible)
}

fn place(spec: &mut RunSpec, processes: Processes, visible_gpus: Option<usize>) -> Result<()> {
    #[cfg(not(feature = "distributed"))]
    if let Some(size) = launched_processes().filter(|&size| size > 1) {
        bail!(
            "a launcher started {size} processes, but this kiln was built without the \
             `distributed` feature, so each would train alone: build it with \
             cargo build --release --features distributed"
        );
    }
    spec.distributed.processes = processes.size;
    spec.distributed.process_rank = processes.rank;
    if processes.size > 1 && spec.model.as_gpt().is_none() {
        bail!(
            "model.kind = \"seq2seq\" under a launcher that started {} processes: \
             data-parallel training covers model.kind = \"gpt\"",
            processes.size
        );
    }
    let gpu = matches!(spec.backend.name, BackendName::Cuda | BackendName::Wgpu);
    if processes.local_size == 1 || !gpu {
        return Ok(());
    }
    if !spec.distributed.devices.is_empty() {
        bail!(
            "distributed.devices = {:?}: the launcher started {} processes on this machine, which \
             would all drive these devices. Either start one process per machine (Open MPI: \
             mpirun --map-by ppr:1:node) or leave distributed.devices empty for one process \
             per device",
            spec.distributed.devices,
            processes.local_size
        );
    }
    let own_devices = spec.backend.name == BackendName::Cuda
        && visible_gpus.is_some_and(|visible| visible < processes.local_size);
    if !own_devices {
        spec.backend.device += processes.local_rank;
    }
    Ok(())
}

/// The process count an MPI launcher or Slurm's srun announces in the environment.
#[cfg(not(feature = "distributed"))]
fn launched_processes() -> Option<usize> {
    let slurm_step = std::env::var_os("SLURM_STEP_ID").is_some();
    let names = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", if slurm_step { "SLURM_NTASKS" } else { "" }];
    names.iter().find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// Opens the run as `mode` says. Process 0 (or a run of one process) opens the folder the
/// config names; each other process works in a scratch folder of its own (see
/// [`super::scratch`]), removed when the returned guard drops.
pub fn start_run(
    spec: &mut RunSpec,
    mode: &StartMode,
    fit: impl FnOnce() -> Result<Box<dyn Tokenizer>>,
) -> Result<(Started, Option<tempfile::TempDir>)> {
    if spec.distributed.processes == 1 {
        return Ok((crate::run::start::start(spec, mode, fit)?, None));
    }
    #[cfg(feature = "distributed")]
    return super::scratch::start_run(spec, mode, fit);
    #[cfg(not(feature = "distributed"))]
    unreachable!("one process without the `distributed` feature")
}

/// Waits until every process has called this, without keeping a core busy (a no-op for
/// one process).
pub fn idle_barrier(processes: usize) {
    #[cfg(feature = "distributed")]
    if processes > 1 {
        super::mpi::idle_barrier();
    }
    let _ = processes;
}

/// Fails unless every process ends with the weights process 0 saves, bit for bit; process 0
/// tells how many processes agreed.
pub fn check_final_weights<B: Backend, M: Module<B>>(
    model: &M,
    section: &DistributedSection,
) -> Result<()> {
    let processes = section.processes;
    if processes == 1 {
        return Ok(());
    }
    let mut digest = WeightDigest(Sha256::new());
    model.visit(&mut digest);
    let digest: [u8; 32] = digest.0.finalize().into();
    #[cfg(feature = "distributed")]
    super::mpi::same_everywhere(&digest, "the final weights")?;
    if section.process_rank > 0 {
        return Ok(());
    }
    eprintln!(
        "kiln: the final weights are the same on all {processes} processes (sha256 {})",
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
    );
    Ok(())
}

/// SHA-256 over every float parameter's bytes, in the module's order.
struct WeightDigest(Sha256);

impl<B: Backend> ModuleVisitor<B> for WeightDigest {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.update(param.val().into_data().as_bytes());
    }
}

/// The first key, in sorted order, whose value differs: `(key, ours, theirs)`.
pub fn first_difference(
    ours: &Value,
    theirs: &Value,
    path: &str,
) -> Option<(String, String, String)> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                first_difference(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    &path,
                )
            })
        }
        _ if ours == theirs => None,
        _ => Some((path.to_string(), ours.to_string(), theirs.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_differing_key_is_named() {
        let ours = serde_json::json!({"model": {"n_layer": 2, "d_model": 64}, "seed": 1});
        let theirs = serde_json::json!({"model": {"n_layer": 2, "d_model": 32}, "seed": 2});
        let (key, a, b) = first_difference(&ours, &theirs, "").unwrap();
        assert_eq!((key.as_str(), a.as_str(), b.as_str()), ("model.d_model", "64", "32"));
        assert_eq!(first_difference(&ours, &ours, ""), None);
    }

    fn spec(backend: &str, devices: &[usize]) -> RunSpec {
        let mut spec = RunSpec::from_toml(include_str!("../../configs/tiny.toml"), "tiny").unwrap();
        spec.backend.name = BackendName::try_from(backend.to_string()).unwrap();
        spec.distributed.devices = devices.to_vec();
        spec
    }

    #[test]
    fn each_process_of_a_gpu_machine_takes_the_device_of_its_local_rank() {
        let third = Processes { rank: 6, size: 8, local_rank: 2, local_size: 4 };
        let mut gpu = spec("cuda", &[]);
        place(&mut gpu, third, None).unwrap();
        let d = &gpu.distributed;
        assert_eq!((d.processes, d.process_rank, gpu.backend.device), (8, 6, 2));
        // Slurm's --gpus-per-task: each process sees only its own GPU, as device 0.
        let mut own = spec("cuda", &[]);
        place(&mut own, third, Some(1)).unwrap();
        assert_eq!(own.backend.device, 0);
        let mut cpu = spec("ndarray", &[]);
        place(&mut cpu, third, None).unwrap();
        assert_eq!(cpu.backend.device, 0);
        let error = place(&mut spec("wgpu", &[0, 1]), third, None).unwrap_err().to_string();
        assert!(error.contains("distributed.devices = [0, 1]") && error.contains("4 processes"));
        let mut alone = spec("cuda", &[0, 1]);
        place(&mut alone, Processes { local_rank: 0, local_size: 1, ..third }, Some(8)).unwrap();
        assert_eq!((alone.backend.device, alone.distributed.replicas()), (0, 16));
        let text = include_str!("../../configs/multi30k-cpu.toml");
        let mut seq2seq = RunSpec::from_toml(text, "multi30k-cpu.toml").unwrap();
        let error = place(&mut seq2seq, third, None).unwrap_err().to_string();
        assert!(error.contains("model.kind = \"seq2seq\""), "{error}");
    }
}
