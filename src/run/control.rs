//! What can end a run before `max_iters`: SIGINT/SIGTERM, a loss that stopped being a
//! number, or a checkpoint that could not be written.
//!
//! The data loader ends its epoch at the next optimizer-step boundary once a stop is asked
//! for, the optimizer counts steps and watches the gradient norm, and the checkpoint policy
//! saves (or, after a divergence, refuses to) and stops Burn's Learner.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use burn::train::Interrupter;

/// Signals received by this process since it started.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// The last of them (SIGINT, SIGTERM, SIGHUP or SIGUSR1), 0 before any.
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the SIGINT/SIGTERM/SIGHUP/SIGUSR1 handler once per process (mpirun forwards
/// SIGUSR1 to every process it started, and Slurm sends it ahead of a job's time limit
/// with `--signal=USR1@seconds`). The first signal asks
/// running trainings to stop after the current step with a checkpoint; a second one exits at
/// once, which loses only the steps since the last checkpoint (files on disk are always
/// whole).
fn install_signal_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let stops = [SIGINT, SIGTERM, SIGHUP, SIGUSR1];
        let mut signals = match signal_hook::iterator::Signals::new(stops) {
            Ok(signals) => signals,
            Err(e) => return log::warn!("cannot install the SIGINT/SIGTERM handler: {e}"),
        };
        std::thread::spawn(move || {
            for signal in signals.forever() {
                LAST_SIGNAL.store(signal, Ordering::SeqCst);
                if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
                    eprintln!(
                        "\nkiln: second interrupt: exiting now; `kiln train --resume` continues \
                         from the last checkpoint"
                    );
                    std::process::exit(128 + signal);
                }
                eprintln!(
                    "\nkiln: interrupt: finishing this step and writing a checkpoint (interrupt \
                     again to quit at once)"
                );
            }
        });
    });
}

/// The signal that interrupted this process, if one did: its exit status is 128 + it.
pub fn interrupting_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The step at which the gradients stopped being finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    pub step: usize,
    pub grad_norm: f64,
}

/// Shared by the loader, the optimizer and the checkpoint policy of one run.
pub struct RunControl {
    signals_at_start: usize,
    steps: AtomicUsize,
    divergence: Mutex<Option<Divergence>>,
    interrupter: Interrupter,
    /// A replica of a data-parallel run stops only where all replicas agreed to, or they
    /// would wait on one another forever.
    replicated: bool,
    agreed_stop: AtomicBool,
    /// The global gradient norm of the last step (f64 bits), for metrics.jsonl.
    grad_norm: AtomicU64,
}

impl RunControl {
    /// A run that has done `start_step` optimizer steps; installs the signal handler.
    pub fn new(start_step: usize) -> Self {
        install_signal_handler();
        Self {
            signals_at_start: SIGNALS.load(Ordering::SeqCst),
            steps: AtomicUsize::new(start_step),
            divergence: Mutex::new(None),
            interrupter: Interrupter::new(),
            replicated: false,
            agreed_stop: AtomicBool::new(false),
            grad_norm: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    /// Records the global gradient norm of the step being taken.
    pub fn record_grad_norm(&self, norm: f64) {
        self.grad_norm.store(norm.to_bits(), Ordering::Relaxed);
    }

    /// The global gradient norm of the last step (NaN before the first).
    pub fn grad_norm(&self) -> f64 {
        f64::from_bits(self.grad_norm.load(Ordering::Relaxed))
    }

    /// A replica of a data-parallel run: stops follow [`RunControl::agree_stop`].
    pub fn replicated(self) -> Self {
        Self { replicated: true, ..self }
    }

    /// What this replica alone would stop for: a signal, or a failed checkpoint write.
    pub fn wants_stop(&self) -> bool {
        self.interrupted() || self.interrupter.should_stop()
    }

    /// All replicas agreed, at the same step, to stop.
    pub fn agree_stop(&self) {
        self.agreed_stop.store(true, Ordering::SeqCst);
    }

    /// Stopping because the replicas agreed to (after a signal to any of them).
    pub fn stop_agreed(&self) -> bool {
        self.agreed_stop.load(Ordering::SeqCst)
    }

    /// The handle Burn's Learner polls; a failed checkpoint write also stops it, with a message.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Optimizer steps done so far in the run (including those before a resume).
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    pub fn step_done(&self) {
        self.steps.fetch_add(1, Ordering::SeqCst);
    }

    /// SIGINT or SIGTERM arrived since the run started.
    pub fn interrupted(&self) -> bool {
        SIGNALS.load(Ordering::SeqCst) > self.signals_at_start
    }

    pub fn diverged(&self, grad_norm: f64) {
        let mut divergence = self.divergence.lock().expect("divergence lock");
        divergence.get_or_insert(Divergence { step: self.steps() + 1, grad_norm });
    }

    pub fn divergence(&self) -> Option<Divergence> {
        *self.divergence.lock().expect("divergence lock")
    }

    /// Why Burn's Learner was stopped by something other than kiln (a failed checkpoint write).
    pub fn failure(&self) -> Option<String> {
        if self.interrupted() || self.divergence().is_some() {
            return None;
        }
        match self.interrupter.get_message() {
            Some(message) => Some(recorder_reason(&message)),
            None if self.stop_agreed() => None,
            None => self.interrupter.should_stop().then(|| "unknown reason".into()),
        }
    }

    /// Training should end at the next step boundary.
    pub fn should_stop(&self) -> bool {
        let signalled = !self.replicated && self.interrupted();
        signalled
            || self.stop_agreed()
            || self.divergence().is_some()
            || self.interrupter.should_stop()
    }

    /// Tells the Learner to leave its epoch loop.
    pub fn stop_learner(&self) {
        if !self.interrupter.should_stop() {
            self.interrupter.stop(None);
        }
    }
}

/// The reason inside Burn's report of a failed checkpoint write, which shows kiln's error
/// in its `Debug` form: ``Recorder error: `Unknown("writing …: no space left …")` ``.
fn recorder_reason(message: &str) -> String {
    let inner = message
        .split_once("Unknown(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map(|(reason, _)| reason.replace("\\\"", "\""));
    inner.unwrap_or_else(|| message.to_string())
}
