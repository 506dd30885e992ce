//! Data-parallel training across devices and processes.
//!
//! Every replica holds the whole model and trains on its own share of each step: replica `r`
//! of `R` takes micro-batch `i·R + r` of the run, so the `R` replicas of one step together see
//! what one device with an `R`-times larger batch would. Before every optimizer step the
//! gradients are averaged over all replicas, so every replica takes the same step from the
//! same weights:
//!
//! 1. the replicas of one process (one per `[distributed] devices`, a thread each) average
//!    theirs with burn-collective's all-reduce;
//! 2. with several processes, started by an MPI launcher (`mpirun`, `srun`), each process's
//!    first replica trades that average for the mean over processes ([`mpi`]'s
//!    `MPI_Allreduce`);
//! 3. the first replica hands the result to the others of its process (burn-collective's
//!    broadcast).
//!
//! All three move one flat vector per step: every gradient, then a stop flag, so that a
//! signal to any process stops all of them at the same step.
//!
//! Replica 0 (process 0, first device) writes the run: checkpoints, metrics, the progress
//! bar, the final model. The other processes work in a scratch copy ([`start_run`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{DistributedSection, RunSpec};

#[cfg(feature = "distributed")]
mod mpi;
#[cfg(feature = "distributed")]
mod scratch;
#[cfg(feature = "distributed")]
pub use mpi::{time_means, Session};

mod processes;
pub use processes::{
    check_final_weights, first_difference, idle_barrier, start_run, take_place, Processes,
};

/// One replica's place in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// `0..world`: `process_rank · local_replicas + local`.
    pub rank: usize,
    pub world: usize,
    /// Index into this process's devices.
    pub local: usize,
}

impl Replica {
    /// The only replica of a run on one device.
    pub const SOLE: Replica = Replica { rank: 0, world: 1, local: 0 };

    /// The replica on local device `local` of this process.
    pub fn on(section: &DistributedSection, local: usize) -> Self {
        Self {
            rank: section.process_rank * section.local_replicas() + local,
            world: section.replicas(),
            local,
        }
    }

    /// Replica 0 writes the run's checkpoints, metrics, summary and final model.
    pub fn writes_run(&self) -> bool {
        self.rank == 0
    }
}

/// How long replicas wait for one another.
pub fn timeout(section: &DistributedSection) -> Duration {
    Duration::from_secs(section.timeout_secs)
}

/// What every process of a run must agree on, as they check it before the first step: the
/// data, model and training settings, the seed, the shape of the run, the step it starts
/// from (a resumed run needs the same checkpoint everywhere), the parameter count and the
/// tokenizer. `run.name`, `run.artifacts_dir` and `[backend]` may differ.
pub fn agreement(spec: &RunSpec, start_step: usize, parameters: usize) -> serde_json::Value {
    serde_json::json!({
        "data": spec.data,
        "model": spec.model,
        "training": spec.training,
        "run.seed": spec.run.seed,
        "processes": spec.distributed.processes,
        "devices per process": spec.distributed.local_replicas(),
        "start step (--resume)": start_step,
        "parameters": parameters,
    })
}

#[cfg(not(feature = "distributed"))]
#[path = "disabled.rs"]
mod exchange;
#[cfg(feature = "distributed")]
mod exchange;

pub use exchange::Exchange;

/// Runs `replica_run` on this process's replicas, one per device of `devices` (a thread each,
/// the first on the calling thread), each with its own copy of `model` and, when the run
/// has more than one replica, its [`Exchange`] with the others. Returns every replica's
/// result, in device order, once all are done; an error names the replica it came from.
pub fn launch<B, M, T>(
    section: &DistributedSection,
    devices: &[B::Device],
    agreement: &serde_json::Value,
    model: M,
    replica_run: impl Fn(Replica, M, &B::Device, Option<Arc<Exchange>>) -> Result<T> + Sync,
) -> Result<Vec<T>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
    T: Send,
{
    if section.replicas() == 1 {
        let run = || replica_run(Replica::SOLE, model, &devices[0], None);
        return Ok(vec![on_a_pool_of_its_own(run)??]);
    }
    #[cfg(not(feature = "distributed"))]
    unreachable!(
        "the config check refuses {} replicas without the `distributed` feature ({agreement})",
        section.replicas()
    );
    #[cfg(feature = "distributed")]
    {
        let joined = |local: usize, model: M, device: &B::Device| -> Result<T> {
            let replica = Replica::on(section, local);
            let exchange = Exchange::join::<B::InnerBackend>(replica, device, section, agreement)?;
            let exchange = Arc::new(exchange);
            let result = replica_run(replica, model, device, Some(exchange.clone()))?;
            exchange.leave::<B::InnerBackend>()?;
            Ok(result)
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = devices[1..]
                .iter()
                .enumerate()
                .map(|(i, device)| {
                    let (model, joined) = (model.clone().fork(device), &joined);
                    scope.spawn(move || joined(i + 1, model, device))
                })
                .collect();
            let mut results = vec![joined(0, model, &devices[0])?];
            for (i, other) in others.into_iter().enumerate() {
                let which = format!("the replica on distributed.devices[{}]", i + 1);
                match other.join() {
                    Ok(result) => results.push(result.with_context(|| which)?),
                    Err(_) => anyhow::bail!("{which} panicked"),
                }
            }
            Ok(results)
        })
    }
}

/// Runs `run` on a worker of a new rayon pool of the process's cores, waiting for it.
///
/// A parallel loop started on a thread outside rayon's pool hands its work to the pool and
/// puts the thread to sleep until the pool is done: two context switches for every kernel
/// of every step. Started on a worker, the worker takes a share itself and the others steal
/// the rest (measured on 2 cores: `small.toml` on ndarray 52 → 42 ms a step). The pool is the
/// run's own, so threads that use rayon's global pool meanwhile never wait behind it.
fn on_a_pool_of_its_own<R: Send>(run: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("kiln-kernels-{i}"))
        .build()
        .context("could not start the threads of the training's kernels")?;
    Ok(pool.install(run))
}

#[cfg(test)]
mod tests {
    use super::*;

    use rayon::prelude::*;

    #[test]
    fn a_sole_replica_runs_on_a_worker_of_its_own_pool() {
        assert_eq!(rayon::current_thread_index(), None, "the test starts outside any pool");
        let worker = on_a_pool_of_its_own(|| {
            let inside = rayon::current_thread_index().is_some();
            // A parallel loop from the worker runs on that pool, the worker taking part.
            let sum: u64 = (0..1000u64).into_par_iter().sum();
            (inside, sum)
        });
        assert_eq!(worker.expect("a pool starts"), (true, 499_500));
    }

    #[test]
    fn ranks_count_devices_then_processes() {
        let section = DistributedSection {
            devices: vec![0, 1],
            processes: 2,
            process_rank: 1,
            ..Default::default()
        };
        assert_eq!(Replica::on(&section, 1), Replica { rank: 3, world: 4, local: 1 });
        assert!(!Replica::on(&section, 0).writes_run());
        assert!(Replica::on(&DistributedSection::default(), 0).writes_run());
    }
}
