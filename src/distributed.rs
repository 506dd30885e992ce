//! Data-parallel training across devices and machines.
//!
//! Every replica holds the whole model and trains on its own share of each step: replica `r`
//! of `R` takes micro-batch `i·R + r` of the run, so the `R` replicas of one step together see
//! what one device with an `R`-times larger batch would. Before every optimizer step the
//! gradients are averaged across replicas by burn-collective (threads on one machine,
//! websockets between machines), so every replica takes the same step from the same weights.
//!
//! Replica 0 (node 0, first device) writes the run: checkpoints, metrics, the progress bar.
//! The others write nothing but, on each node's first device, the final model.

use std::time::Duration;

use crate::config::DistributedSection;

/// One replica's place in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// `0..world`: `node_rank · local_replicas + local`.
    pub rank: usize,
    pub world: usize,
    /// Index into this node's devices.
    pub local: usize,
}

impl Replica {
    /// The only replica of a run on one device.
    pub const SOLE: Replica = Replica { rank: 0, world: 1, local: 0 };

    /// The replica on local device `local` of this node.
    pub fn on(section: &DistributedSection, local: usize) -> Self {
        Self { rank: section.node_rank * section.local_replicas() + local, world: section.replicas(), local }
    }

    /// Replica 0 writes the run's checkpoints, metrics and summary.
    pub fn writes_run(&self) -> bool {
        self.rank == 0
    }

    /// The first replica of each node writes that node's final model.
    pub fn writes_final_model(&self) -> bool {
        self.local == 0
    }
}

/// The port of a `host:port` address, if it has one.
pub fn port_of(address: &str) -> Option<u16> {
    let (host, port) = address.rsplit_once(':')?;
    (!host.is_empty()).then_some(())?;
    port.parse().ok()
}

/// How long replicas wait for one another.
pub fn timeout(section: &DistributedSection) -> Duration {
    Duration::from_secs(section.timeout_secs)
}

#[cfg(feature = "distributed")]
pub use exchange::{host_coordinator, renumber_params, Exchange};

#[cfg(not(feature = "distributed"))]
pub use disabled::Exchange;

#[cfg(feature = "distributed")]
mod exchange {
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use burn::module::{ModuleMapper, Param, ParamId};
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

    use super::{port_of, Replica};
    use crate::config::DistributedSection;

    /// A replica's line to the others: registered with burn-collective, and watched, so that
    /// a replica whose peers are gone ends with an error instead of waiting forever.
    pub struct Exchange {
        peer: PeerId,
        replica: Replica,
        watch: Arc<Watch>,
    }

    impl Exchange {
        /// Registers the replica on `device` (of the inner, non-autodiff backend `B`); returns
        /// once every replica of the run has registered.
        pub fn join<B: Backend>(replica: Replica, device: &B::Device, section: &DistributedSection) -> Result<Self> {
            let mut config = CollectiveConfig::default().with_num_devices(section.local_replicas());
            if section.nodes > 1 {
                let ws = |address: &str| format!("ws://{address}").parse().expect("any string is an address");
                let port = port_of(&section.node_address).context("distributed.node_address has no port")?;
                config = config
                    .with_num_nodes(section.nodes as u32)
                    .with_global_address(ws(&section.coordinator))
                    .with_node_address(ws(&section.node_address))
                    .with_data_service_port(port);
            }
            let exchange = Self { peer: PeerId::from(replica.rank), replica, watch: Watch::start(super::timeout(section)) };
            exchange.guarded("joining the other replicas", || burn_collective::register::<B>(exchange.peer, device.clone(), config))?;
            Ok(exchange)
        }

        /// The gradients averaged over all replicas (`B`: the autodiff backend's inner one).
        pub fn mean_grads<B: Backend>(&self, grads: GradientsParams) -> Result<GradientsParams> {
            self.guarded("exchanging gradients", || grads.all_reduce::<B>(self.peer, ReduceOperation::Mean))
        }

        /// True when any replica says `yes`: how replicas agree to stop at the same step.
        pub fn any<B: Backend>(&self, yes: bool, device: &B::Device) -> Result<bool> {
            let flag = Tensor::<B, 1>::from_floats([if yes { 1.0 } else { 0.0 }], device).into_primitive().tensor();
            let sum = self.guarded("agreeing on a stop", || burn_collective::all_reduce::<B>(self.peer, flag, ReduceOperation::Sum))?;
            Ok(Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(sum)).into_scalar().elem::<f32>() > 0.0)
        }

        /// Leaves the collective once training is over.
        pub fn leave<B: Backend>(&self) -> Result<()> {
            self.guarded("leaving the other replicas", || burn_collective::finish_collective::<B>(self.peer))
        }

        /// Runs one collective call under the watch; its error names what was being done.
        fn guarded<T>(&self, what: &'static str, call: impl FnOnce() -> Result<T, burn_collective::CollectiveError>) -> Result<T> {
            let ticket = self.watch.begin(self.replica, what);
            let result = call();
            self.watch.end(ticket);
            result.map_err(|e| anyhow::anyhow!("replica {} of {}: {what} failed: {e:?}", self.replica.rank, self.replica.world))
        }
    }

    /// One thread per process that ends it when a collective call has waited too long: a
    /// peer that was killed or cut off would otherwise leave the others blocked for good.
    /// Checkpoints are written whole or not at all, so exiting loses only the current steps.
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
                    let watch = Arc::new(Watch { timeout, waiting: Mutex::new(Vec::new()), tickets: Default::default() });
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

        fn run(&self) {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let waiting = self.waiting.lock().expect("watch lock");
                if let Some((_, since, replica, what)) = waiting.iter().find(|(_, since, ..)| since.elapsed() > self.timeout) {
                    eprintln!(
                        "\nkiln: error: replica {} of {} has been {what} for {:.0}s without an answer: another node or device \
                         stopped, or the network between them is down (distributed.timeout_secs = {}). Exiting; checkpoints \
                         on disk are whole, so restart every node with --resume to continue.",
                        replica.rank,
                        replica.world,
                        since.elapsed().as_secs_f64(),
                        self.timeout.as_secs()
                    );
                    std::process::exit(3);
                }
            }
        }
    }

    /// Gives every parameter an id from its position in the model. Burn draws parameter ids at
    /// random, per process; burn-collective pairs gradients across machines by id, so every
    /// node must number the same parameters the same way.
    pub fn renumber_params<B: Backend, M: Module<B>>(model: M) -> M {
        struct Renumber(u64);
        impl<B: Backend> ModuleMapper<B> for Renumber {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let (_, tensor, mapper) = param.consume();
                self.0 += 1;
                Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
            }
        }
        model.map(&mut Renumber(0))
    }

    /// Node 0 hosts burn-collective's global coordinator on the port of `coordinator`, on a
    /// thread of its own for the life of the process.
    pub fn host_coordinator(section: &DistributedSection) -> Result<()> {
        let port = port_of(&section.coordinator).context("distributed.coordinator has no port")?;
        // burn-collective only logs a failed bind; try it first for an error that says so.
        std::net::TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("distributed.coordinator = {:?}: cannot listen on port {port}", section.coordinator))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the coordinator's runtime")?;
        std::thread::spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)));
        Ok(())
    }
}

/// Without the `distributed` feature no replica ever joins others (the config check refuses
/// more than one); the type exists so the optimizer reads the same either way.
#[cfg(not(feature = "distributed"))]
mod disabled {
    use anyhow::Result;
    use burn::optim::GradientsParams;
    use burn::prelude::*;

    pub enum Exchange {}

    impl Exchange {
        pub fn mean_grads<B: Backend>(&self, _: GradientsParams) -> Result<GradientsParams> {
            match *self {}
        }
        pub fn any<B: Backend>(&self, _: bool, _: &B::Device) -> Result<bool> {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_devices_then_nodes() {
        let section = DistributedSection { devices: vec![0, 1], nodes: 2, node_rank: 1, ..Default::default() };
        assert_eq!(Replica::on(&section, 1), Replica { rank: 3, world: 4, local: 1 });
        assert!(!Replica::on(&section, 0).writes_run());
        assert!(Replica::on(&section, 0).writes_final_model());
        assert_eq!(port_of("10.0.0.1:3000"), Some(3000));
        assert_eq!(port_of(":3000"), None);
        assert_eq!(port_of("localhost"), None);
    }
}
