//! The mean of one vector over the machines of a run, once per optimizer step, over TCP.
//!
//! burn-collective 0.21 has a multi-node all-reduce of its own, but only the first one after
//! registering completes: `SyncService::sync` (`global/node/sync.rs`) clears a copy of its
//! list of synced peers rather than the list, so every later sync waits forever (the same
//! code is on Burn's main branch). kiln moves the one vector per step between machines
//! itself, in the simplest shape there is: node 0 listens at `distributed.coordinator`, every
//! other node keeps one connection to it, sends its vector each step (little-endian f32) and
//! reads back the mean, which node 0 computes by adding the vectors in node order, so every
//! node receives the same bits. A peer that vanished is an error at once, a silent one after
//! `distributed.timeout_secs`.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::DistributedSection;

/// Floats per read or write: large models move in pieces of 4 MiB.
const CHUNK: usize = 1 << 20;
/// Longest hello or welcome accepted: anything longer is not a kiln node talking.
const MAX_MESSAGE: u32 = 16 << 20;

/// This node's connections to the others: on node 0 one per other node (node 1 first), on
/// any other node the one to node 0.
pub struct NodeLink {
    node_rank: usize,
    nodes: usize,
    peers: Vec<TcpStream>,
    timeout: Duration,
    /// Node 0's buffer for the vector being read, kept between steps.
    incoming: Vec<f32>,
}

/// What a node says when it connects to node 0.
#[derive(Serialize, Deserialize)]
struct Hello {
    node_rank: usize,
    agreement: Value,
}

/// Node 0's answer: why the node may not join, if it may not.
#[derive(Serialize, Deserialize)]
struct Welcome {
    refused: Option<String>,
}

impl NodeLink {
    /// Connects this node to the others; returns once all of them are connected and agree
    /// (see [`super::agreement`]).
    pub fn connect(section: &DistributedSection, agreement: &Value) -> Result<Self> {
        let timeout = super::timeout(section);
        let peers = match section.node_rank {
            0 => host(section, agreement, timeout)?,
            rank => vec![join(section, rank, agreement, timeout)?],
        };
        Ok(Self {
            node_rank: section.node_rank,
            nodes: section.nodes,
            peers,
            timeout,
            incoming: Vec::new(),
        })
    }

    /// Replaces `values` by their mean over all nodes.
    pub fn mean(&mut self, values: &mut [f32]) -> Result<()> {
        if self.node_rank > 0 {
            write_floats(&mut self.peers[0], values).map_err(|e| self.peer_error(0, e))?;
            return read_floats(&mut self.peers[0], values).map_err(|e| self.peer_error(0, e));
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        incoming.resize(values.len(), 0.0);
        for i in 0..self.peers.len() {
            read_floats(&mut self.peers[i], &mut incoming).map_err(|e| self.peer_error(i, e))?;
            values.iter_mut().zip(&incoming).for_each(|(value, other)| *value += other);
        }
        self.incoming = incoming;
        let nodes = self.nodes as f32;
        values.iter_mut().for_each(|value| *value /= nodes);
        for i in 0..self.peers.len() {
            write_floats(&mut self.peers[i], values).map_err(|e| self.peer_error(i, e))?;
        }
        Ok(())
    }

    /// What went wrong with `peers[index]`, in the user's terms.
    fn peer_error(&self, index: usize, error: std::io::Error) -> anyhow::Error {
        let node = if self.node_rank == 0 { index + 1 } else { 0 };
        let what = match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "node {node} sent nothing for {}s (distributed.timeout_secs): it hangs or the network between the nodes is down",
                self.timeout.as_secs()
            ),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                format!("node {node} closed its connection: it stopped, failed or was killed")
            }
            _ => format!("exchanging gradients with node {node}: {error}"),
        };
        anyhow!("node {} of {}: {what}. Restart every node with --resume to continue from the last checkpoint", self.node_rank, self.nodes)
    }
}

/// Node 0: listens at the coordinator address until every other node has connected and
/// agreed, or `timeout` has passed. Refused nodes are reported and may connect again.
fn host(
    section: &DistributedSection,
    agreement: &Value,
    timeout: Duration,
) -> Result<Vec<TcpStream>> {
    let address = &section.coordinator;
    let listener = TcpListener::bind(address).with_context(|| {
        format!("distributed.coordinator = {address:?}: node 0 cannot listen there (it must be an address of this machine, with a free port)")
    })?;
    listener.set_nonblocking(true).context("configuring the coordinator's socket")?;
    eprintln!("kiln: node 0 waits at {address} for {} other node(s)", section.nodes - 1);
    let deadline = Instant::now() + timeout;
    let mut spokes: Vec<Option<TcpStream>> = (1..section.nodes).map(|_| None).collect();
    while spokes.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, from)) => match admit(stream, agreement, &spokes, timeout) {
                Ok((rank, stream)) => {
                    eprintln!("kiln: node {rank} joined from {from}");
                    spokes[rank - 1] = Some(stream);
                }
                Err(e) => {
                    eprintln!("kiln: warning: node 0 turned away a connection from {from}: {e:#}")
                }
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> =
                        (1..section.nodes).filter(|rank| spokes[rank - 1].is_none()).collect();
                    bail!(
                        "node 0 waited {}s at distributed.coordinator = {address:?}, but node(s) {missing:?} did not join \
                         (distributed.timeout_secs): start kiln on every node with the same config and its own distributed.node_rank",
                        timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("accepting nodes at distributed.coordinator = {address:?}")
                })
            }
        }
    }
    Ok(spokes.into_iter().flatten().collect())
}

/// Reads a connecting node's hello, checks it against node 0's own, and answers it.
fn admit(
    mut stream: TcpStream,
    agreement: &Value,
    spokes: &[Option<TcpStream>],
    timeout: Duration,
) -> Result<(usize, TcpStream)> {
    stream.set_nonblocking(false)?;
    configure(&stream, timeout)?;
    let hello: Hello = read_message(&mut stream)?;
    let rank = hello.node_rank;
    let refused = if rank == 0 || rank > spokes.len() {
        Some(format!("its distributed.node_rank = {rank} is not one of 1..{}", spokes.len()))
    } else if spokes[rank - 1].is_some() {
        Some(format!(
            "node {rank} has joined already: two nodes have distributed.node_rank = {rank}"
        ))
    } else {
        first_difference(agreement, &hello.agreement, "").map(|(key, ours, theirs)| {
            format!("{key} is {theirs} on node {rank} but {ours} on node 0; every node needs the same config apart from node_rank, and the same checkpoint to resume from")
        })
    };
    write_message(&mut stream, &Welcome { refused: refused.clone() })?;
    match refused {
        Some(why) => bail!("{why}"),
        None => Ok((rank, stream)),
    }
}

/// Any other node: connects to node 0 (retrying until `timeout`, as node 0 may start later)
/// and says hello.
fn join(
    section: &DistributedSection,
    rank: usize,
    agreement: &Value,
    timeout: Duration,
) -> Result<TcpStream> {
    let address = &section.coordinator;
    let deadline = Instant::now() + timeout;
    let mut hub = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "node {rank} could not reach node 0 at distributed.coordinator = {address:?} within {}s (distributed.timeout_secs)",
                        timeout.as_secs()
                    )
                })
            }
        }
    };
    configure(&hub, timeout)?;
    write_message(&mut hub, &Hello { node_rank: rank, agreement: agreement.clone() })
        .context("greeting node 0")?;
    let welcome: Welcome =
        read_message(&mut hub).context("waiting for node 0 to accept this node")?;
    if let Some(why) = welcome.refused {
        bail!("node 0 at {address} refused node {rank}: {why}");
    }
    Ok(hub)
}

fn configure(stream: &TcpStream, timeout: Duration) -> Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(())
}

/// The first key, in sorted order, whose value differs: `(key, ours, theirs)`.
fn first_difference(ours: &Value, theirs: &Value, path: &str) -> Option<(String, String, String)> {
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

/// A length-prefixed JSON message.
fn write_message(stream: &mut TcpStream, message: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(message)?;
    stream.write_all(&(bytes.len() as u32).to_le_bytes())?;
    stream.write_all(&bytes)?;
    Ok(())
}

fn read_message<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        bail!("a message of {len} bytes: this is not a kiln node (or not the same kiln version)");
    }
    let mut bytes = vec![0u8; len as usize];
    stream.read_exact(&mut bytes)?;
    serde_json::from_slice(&bytes)
        .context("a message that is not a kiln node's (or not the same kiln version's)")
}

fn write_floats(stream: &mut TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(4 * CHUNK.min(values.len()));
    for chunk in values.chunks(CHUNK) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|value| value.to_le_bytes()));
        stream.write_all(&bytes)?;
    }
    Ok(())
}

fn read_floats(stream: &mut TcpStream, values: &mut [f32]) -> std::io::Result<()> {
    let mut bytes = vec![0u8; 4 * CHUNK.min(values.len())];
    for chunk in values.chunks_mut(CHUNK) {
        let bytes = &mut bytes[..4 * chunk.len()];
        stream.read_exact(bytes)?;
        for (value, le) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes([le[0], le[1], le[2], le[3]]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(node_rank: usize, port: u16) -> DistributedSection {
        DistributedSection {
            nodes: 3,
            node_rank,
            coordinator: format!("127.0.0.1:{port}"),
            timeout_secs: 20,
            ..Default::default()
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port")
    }

    #[test]
    fn three_nodes_get_the_same_mean() {
        let port = free_port();
        let agreement = serde_json::json!({"model": {"n_layer": 2}});
        let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let nodes: Vec<_> = (0..3)
                .map(|rank| {
                    let agreement = &agreement;
                    scope.spawn(move || {
                        let mut link = NodeLink::connect(&section(rank, port), agreement).unwrap();
                        // Two steps, the second larger than one chunk.
                        let mut small = vec![rank as f32; 3];
                        link.mean(&mut small).unwrap();
                        let mut large = vec![rank as f32 * 3.0; CHUNK + 5];
                        link.mean(&mut large).unwrap();
                        assert!(large.iter().all(|&v| v == 3.0));
                        small
                    })
                })
                .collect();
            nodes.into_iter().map(|node| node.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r == &vec![1.0; 3]), "{results:?}");
    }

    #[test]
    fn a_node_with_another_config_is_refused_by_name() {
        let port = free_port();
        let ours = serde_json::json!({"model": {"n_layer": 2, "d_model": 64}});
        let theirs = serde_json::json!({"model": {"n_layer": 2, "d_model": 32}});
        let mut two = section(0, port);
        two.nodes = 2;
        two.timeout_secs = 2;
        let hub = std::thread::spawn({
            let two = two.clone();
            move || NodeLink::connect(&two, &ours).err().map(|e| format!("{e:#}"))
        });
        two.node_rank = 1;
        let refused =
            NodeLink::connect(&two, &theirs).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(refused.contains("model.d_model is 32 on node 1 but 64 on node 0"), "{refused}");
        let waited = hub.join().unwrap().unwrap_or_default();
        assert!(waited.contains("node(s) [1] did not join"), "{waited}");
    }

    #[test]
    fn a_vanished_node_is_named() {
        let port = free_port();
        let agreement = serde_json::json!({});
        let mut two = section(1, port);
        two.nodes = 2;
        let spoke = std::thread::spawn({
            let (two, agreement) = (two.clone(), agreement.clone());
            move || drop(NodeLink::connect(&two, &agreement).unwrap())
        });
        two.node_rank = 0;
        let mut hub = NodeLink::connect(&two, &agreement).unwrap();
        spoke.join().unwrap();
        let error = format!("{:#}", hub.mean(&mut [1.0]).unwrap_err());
        assert!(error.contains("node 1 closed its connection"), "{error}");
    }
}
