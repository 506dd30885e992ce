//! A replica's line to the others: gradients averaged between the devices of a process
//! (burn-collective) and between processes ([`super::mpi`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use super::Replica;
use crate::config::DistributedSection;

/// A replica's line to the others: registered with burn-collective when its process has
/// several; the first replica of each process also trades with the other processes.
pub struct Exchange {
    replica: Replica,
    local_replicas: usize,
    processes: usize,
    /// The receive buffer of the all-reduce between processes, kept between steps.
    scratch: Mutex<Vec<f32>>,
    watch: Arc<Watch>,
}

impl Exchange {
    /// Joins the run's other replicas from `device` (of the inner, non-autodiff backend
    /// `B`); returns once this process's replicas have registered and every process has
    /// the `agreement` of process 0.
    pub fn join<B: Backend>(
        replica: Replica,
        device: &B::Device,
        section: &DistributedSection,
        agreement: &serde_json::Value,
    ) -> Result<Self> {
        let exchange = Self {
            replica,
            local_replicas: section.local_replicas(),
            processes: section.processes,
            scratch: Mutex::new(Vec::new()),
            watch: Watch::start(super::timeout(section)),
        };
        if exchange.local_replicas > 1 {
            let config = CollectiveConfig::default().with_num_devices(exchange.local_replicas);
            exchange.guarded("joining the other devices", || {
                burn_collective::register::<B>(exchange.peer(), device.clone(), config)
            })?;
        }
        if exchange.processes > 1 && replica.local == 0 {
            super::mpi::agree(agreement)?;
        }
        Ok(exchange)
    }

    /// The gradients averaged over all replicas, and whether any replica wants to stop.
    pub fn average<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: GradientsParams,
        stop: bool,
    ) -> Result<(GradientsParams, bool)> {
        let (mut flat, layout) = gather(module, grads, stop);
        if self.local_replicas > 1 {
            flat = self.local_mean(flat)?;
        }
        if self.processes > 1 {
            flat = self.mean_over_processes(flat)?;
        }
        Ok(layout.scatter(module, flat))
    }

    /// Leaves the collective once training is over.
    pub fn leave<B: Backend>(&self) -> Result<()> {
        if self.local_replicas == 1 {
            return Ok(());
        }
        self.guarded("leaving the other devices", || {
            burn_collective::finish_collective::<B>(self.peer())
        })
    }

    fn peer(&self) -> PeerId {
        PeerId::from(self.replica.local)
    }

    fn local_mean<B: Backend>(&self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let mean = self.guarded("averaging gradients with the other devices", || {
            burn_collective::all_reduce::<B>(
                self.peer(),
                flat.into_primitive().tensor(),
                ReduceOperation::Mean,
            )
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(mean)))
    }

    /// The first replica of the process trades `flat` for the mean over processes and
    /// hands it to the process's other replicas.
    fn mean_over_processes<B: Backend>(&self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let device = flat.device();
        let mean = match self.replica.local {
            0 => {
                let mut values = flat
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .context("reading gradients back from the device")?;
                let ticket =
                    self.watch.begin(self.replica, "averaging gradients with the other processes");
                super::mpi::mean(&mut values, &mut self.scratch.lock().expect("scratch lock"));
                self.watch.end(ticket);
                let len = values.len();
                Some(Tensor::<B, 1>::from_data(TensorData::new(values, [len]), &device))
            }
            _ => None,
        };
        if self.local_replicas == 1 {
            return mean.context("a process's only replica trades with the others");
        }
        let shared = self.guarded("receiving the mean over processes", || {
            burn_collective::broadcast::<B>(self.peer(), mean.map(|t| t.into_primitive().tensor()))
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(shared)))
    }

    /// Runs one collective call under the watch; its error names what was being done.
    fn guarded<T>(
        &self,
        what: &'static str,
        call: impl FnOnce() -> Result<T, burn_collective::CollectiveError>,
    ) -> Result<T> {
        let ticket = self.watch.begin(self.replica, what);
        let result = call();
        self.watch.end(ticket);
        result.map_err(|e| {
            anyhow::anyhow!(
                "replica {} of {}: {what} failed: {e:?}", self.replica.rank, self.replica.world
            )
        })
    }
}

/// A step's gradients as one vector `[g_1 … g_n, stop]`, so that each trade between
/// replicas is one message; the [`Layout`] puts it back into the gradients of `module`.
fn gather<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    stop: bool,
) -> (Tensor<B::InnerBackend, 1>, Layout) {
    let mut gather =
        Gather::<B> { grads: &mut grads, pieces: Vec::new(), offsets: HashMap::new(), len: 0 };
    module.visit(&mut gather);
    let (mut pieces, offsets) = (gather.pieces, gather.offsets);
    let device = module.devices().into_iter().next().expect("a model has a device");
    pieces.push(Tensor::from_floats([if stop { 1.0 } else { 0.0 }], &device));
    (Tensor::cat(pieces, 0), Layout(offsets))
}

/// Offset of each parameter's gradient in the vector.
struct Layout(HashMap<ParamId, usize>);

impl Layout {
    /// `module`'s gradients, and whether any replica asked to stop (the averaged flag is
    /// above 0).
    fn scatter<B: AutodiffBackend, M: AutodiffModule<B>>(
        mut self,
        module: &M,
        flat: Tensor<B::InnerBackend, 1>,
    ) -> (GradientsParams, bool) {
        let len = flat.dims()[0];
        let stop = flat.clone().narrow(0, len - 1, 1).into_scalar().elem::<f32>() > 0.0;
        let mut scatter =
            Scatter::<B> { flat, offsets: &mut self.0, grads: GradientsParams::new() };
        module.visit(&mut scatter);
        (scatter.grads, stop)
    }
}

struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    pieces: Vec<Tensor<B::InnerBackend, 1>>,
    offsets: HashMap<ParamId, usize>,
    len: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // A tied weight is visited once per use: its gradient is taken (removed) on the first.
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let elements = grad.shape().num_elements();
            self.offsets.insert(param.id, self.len);
            self.pieces.push(grad.reshape([elements]));
            self.len += elements;
        }
    }
}

struct Scatter<'a, B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offsets: &'a mut HashMap<ParamId, usize>,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(offset) = self.offsets.remove(&param.id) {
            let shape = param.shape();
            let grad = self.flat.clone().narrow(0, offset, shape.num_elements()).reshape(shape);
            self.grads.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

/// One thread per process that ends it when a collective call has waited too long: a
/// replica that hangs would otherwise leave the others blocked for good (one that dies ends
/// the job through MPI, or its process). Checkpoints are written whole or not at all, so
/// exiting loses only the current steps.
struct Watch {
    timeout: Duration,
    /// Calls under way: ticket, start, caller, what it does.
    waiting: Mutex<Vec<(u64, Instant, Replica, &'static str)>>,
    tickets: std::sync::atomic::AtomicU64,
}

impl Watch {
    fn start(timeout: Duration) -> Arc<Self> {
        static WATCH: OnceLock<Arc<Watch>> = OnceLock::new();
        WATCH
            .get_or_init(|| {
                let watch = Arc::new(Watch {
                    timeout,
                    waiting: Mutex::new(Vec::new()),
                    tickets: Default::default(),
                });
                let watched = watch.clone();
                std::thread::spawn(move || watched.run());
                watch
            })
            .clone()
    }

    fn begin(&self, replica: Replica, what: &'static str) -> u64 {
        let ticket = self.tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.waiting.lock().expect("watch lock").push((ticket, Instant::now(), replica, what));
        ticket
    }

    fn end(&self, ticket: u64) {
        self.waiting.lock().expect("watch lock").retain(|(t, ..)| *t != ticket);
    }

    /// Ends the process now (and with it an MPI job): the replicas cannot go on without the
    /// others.
    fn abort(&self, why: &str) -> ! {
        eprintln!("\nkiln: error: {why}\nExiting; checkpoints on disk are whole, so start the run again with --resume to continue.");
        std::process::exit(3);
    }

    fn run(&self) {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let waiting = self.waiting.lock().expect("watch lock");
            if let Some((_, since, replica, what)) =
                waiting.iter().find(|(_, since, ..)| since.elapsed() > self.timeout)
            {
                self.abort(&format!(
                    "replica {} of {} has been {what} for {:.0}s without an answer: another replica stopped \
                     (distributed.timeout_secs = {}).",
                    replica.rank,
                    replica.world,
                    since.elapsed().as_secs_f64(),
                    self.timeout.as_secs()
                ));
            }
        }
    }
}
