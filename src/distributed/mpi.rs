//! The processes of a run as an MPI launcher started them, and what they trade, through
//! rsmpi over the system's MPI library (Open MPI or MPICH).
//!
//! A launcher (`mpirun`/`mpiexec`, Slurm's `srun`) starts the same `kiln` once per process
//! and says so in the environment; [`Session::from_launcher`] then initializes MPI. Every
//! process calls the collectives below in the same order, from its first replica: the
//! start of the run, the settings check, one all-reduce per optimizer step and the final
//! weights' digest. MPI's default error handler ends the whole job when a process dies, and
//! a process that fails on its own ends it with [`Session::abort`]: the others would wait
//! for it in their next collective.

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use serde_json::Value;

use super::Processes;

/// Set once MPI is initialized.
static PROCESSES: OnceLock<Processes> = OnceLock::new();

/// What launchers set in each process they start: Open MPI's mpirun, MPICH's Hydra (PMI),
/// PMIx launchers, and Slurm's srun inside a job step.
const LAUNCHER_VARIABLES: [&str; 4] =
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_ID"];

/// Floats per MPI call: MPI counts elements in a C int.
const CHUNK: usize = 1 << 28;

/// MPI for the life of the process: finalized when dropped.
pub struct Session {
    _universe: Universe,
}

impl Session {
    /// MPI, initialized when a launcher started this process; `None` outside one.
    pub fn from_launcher() -> Result<Option<Session>> {
        if !LAUNCHER_VARIABLES.iter().any(|name| std::env::var_os(name).is_some()) {
            return Ok(None);
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .context("MPI was initialized twice")?;
        if matches!(threading, Threading::Single | Threading::Funneled) {
            bail!(
                "the MPI library offers {threading:?} threading; kiln calls MPI from its \
                 training thread, which needs MPI_THREAD_SERIALIZED or more"
            );
        }
        let world = universe.world();
        let machine = world.split_shared(world.rank());
        let processes = Processes {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: machine.rank() as usize,
            local_size: machine.size() as usize,
        };
        PROCESSES.get_or_init(|| processes);
        Ok(Some(Session { _universe: universe }))
    }

    /// Ends every process of the job with `code`.
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

/// This process's place in the job: [`Processes::SOLE`] unless a launcher started it.
pub fn processes() -> Processes {
    PROCESSES.get().copied().unwrap_or(Processes::SOLE)
}

/// Process 0's `bytes`, on every process (what the others pass is ignored).
pub fn broadcast_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    broadcast_from(0, &mut bytes);
    bytes
}

fn broadcast_from(rank: usize, bytes: &mut Vec<u8>) {
    let world = SimpleCommunicator::world();
    let root = world.process_at_rank(rank as i32);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    root.broadcast_into(&mut bytes[..]);
}

/// Replaces `values` by their mean over all processes (`scratch` is kept between calls).
/// Every process gets the same bits: MPI reduces each element in one order for all.
pub fn mean(values: &mut [f32], scratch: &mut Vec<f32>) {
    let world = SimpleCommunicator::world();
    scratch.resize(values.len().min(CHUNK), 0.0);
    let processes = world.size() as f32;
    for chunk in values.chunks_mut(CHUNK) {
        let sum = &mut scratch[..chunk.len()];
        world.all_reduce_into(&*chunk, sum, SystemOperation::sum());
        chunk.iter_mut().zip(sum.iter()).for_each(|(value, sum)| *value = sum / processes);
    }
}

/// Fails on every process unless every process's `agreement` equals process 0's; the error
/// names the first process that differs and the first key it differs in.
pub fn agree(agreement: &Value) -> Result<()> {
    let world = SimpleCommunicator::world();
    let rank = world.rank() as usize;
    let ours = serde_json::to_vec(agreement).context("writing the settings to compare")?;
    let zero: Value = serde_json::from_slice(&broadcast_bytes(ours))
        .context("reading process 0's settings: is every process the same kiln?")?;
    let difference = super::first_difference(&zero, agreement, "");
    let differs = if difference.is_some() { rank as u64 } else { u64::MAX };
    let mut first = u64::MAX;
    world.all_reduce_into(&differs, &mut first, SystemOperation::min());
    if first == u64::MAX {
        return Ok(());
    }
    let mut why = match difference {
        Some((key, zero, this)) => {
            format!("{key} is {this} on process {rank} but {zero} on process 0")
        }
        None => String::new(),
    }
    .into_bytes();
    broadcast_from(first as usize, &mut why);
    bail!(
        "{}; every process needs the same config, data and kiln, and the same checkpoint to \
         resume from",
        String::from_utf8_lossy(&why)
    )
}

/// Fails on every process unless every process's `digest` equals process 0's.
pub fn same_everywhere(digest: &[u8; 32], what: &str) -> Result<()> {
    let world = SimpleCommunicator::world();
    let mut all = vec![0u8; 32 * world.size() as usize];
    world.all_gather_into(&digest[..], &mut all[..]);
    let mut digests = all.chunks_exact(32);
    let zero = digests.next().unwrap_or_default();
    match digests.position(|other| other != zero) {
        Some(index) => bail!("{what} of process {} differ from process 0's", index + 1),
        None => Ok(()),
    }
}

/// Waits, mostly asleep, until every process has called this. A process waiting in a plain
/// collective keeps a core busy, which would slow a process being timed on the same machine.
pub fn idle_barrier() {
    let mut request = SimpleCommunicator::world().immediate_barrier();
    loop {
        match request.test() {
            Ok(_) => return,
            Err(pending) => request = pending,
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Seconds each of `steps` means of a vector of `floats` over the processes took, after
/// `warmup` untimed ones, as [`super::Exchange`] takes them between processes.
pub fn time_means(floats: usize, warmup: usize, steps: usize) -> Vec<f64> {
    let mut values: Vec<f32> = (0..floats).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let mut scratch = Vec::new();
    let mut seconds = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        idle_barrier();
        let started = std::time::Instant::now();
        mean(&mut values, &mut scratch);
        if step >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    seconds
}
