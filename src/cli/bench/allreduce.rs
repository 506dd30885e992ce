//! `kiln bench allreduce`: the time of the mean of one gradient vector over the processes an
//! MPI launcher started, as a data-parallel run takes it once per optimizer step.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct AllreduceBenchArgs {
    /// Floats in the vector (124439808: GPT-2 small's gradients).
    #[arg(long, default_value_t = 124_439_808)]
    floats: usize,
    /// Timed exchanges.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed exchanges first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[cfg(not(feature = "distributed"))]
pub fn run(_: AllreduceBenchArgs) -> Result<()> {
    bail!(
        "this kiln was built without the `distributed` feature: build it with \
         cargo build --release --features distributed, then run mpirun -np 2 kiln bench allreduce"
    )
}

#[cfg(feature = "distributed")]
pub fn run(args: AllreduceBenchArgs) -> Result<()> {
    let processes = crate::distributed::Processes::current();
    if processes.size == 1 {
        bail!(
            "one process: run it under an MPI launcher, e.g. mpirun -np 2 kiln bench allreduce \
             (with a kiln built with --features distributed)"
        );
    }
    if args.steps == 0 || args.floats == 0 {
        bail!("--steps {} --floats {}: expected at least one of each", args.steps, args.floats);
    }
    let mut seconds = crate::distributed::time_means(args.floats, args.warmup, args.steps);
    if processes.rank > 0 {
        return Ok(());
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    let megabytes = args.floats as f64 * 4.0 / 1e6;
    // A ring all-reduce moves 2(p-1)/p of the vector in and out of each process.
    let p = processes.size as f64;
    let bus = 2.0 * (p - 1.0) / p * megabytes / 1e3 / median;
    println!(
        "kiln bench allreduce: mean of {} floats ({megabytes:.0} MB) over {} processes ({} on this machine), MPI_Allreduce",
        args.floats, processes.size, processes.local_size
    );
    println!(
        "per exchange: median {:.3} s, min {:.3} s, max {:.3} s over {} exchanges; bus bandwidth {bus:.2} GB/s",
        median,
        seconds[0],
        seconds[seconds.len() - 1],
        seconds.len()
    );
    Ok(())
}
