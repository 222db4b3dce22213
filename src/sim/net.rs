//! The simulated network: captured messages in flight, link faults and partitions.
//!
//! A node's `Core` sends through an [`Outbox`] (its `Network`): the message is only queued.
//! The world then hands it to [`SimNet::submit`], which drops and delays it with the
//! seeded probabilities of the current [`Weather`]. Node-level notes (progress, "fetch my
//! state") travel the same way, on the same links, under the same rules, as OmniPaxos
//! messages ([`Packet`]); state fetches asked for through the outbox are run by the world
//! (see `world`). Random delays reorder messages across
//! links; on one directed link delivery is FIFO, like the production transport (one TCP
//! connection per direction, which may lose a message when its queue is full or the
//! connection breaks, but never reorders or duplicates). A message crosses a link only if
//! the link is up both when it is sent and when it arrives (a broken connection loses
//! what was in it).
//!
//! `chaos` weather goes beyond what the transport can do: it also duplicates messages and
//! reorders them on the same link. OmniPaxos assumes FIFO links, and with chaos it can
//! trip its own assertions (a delayed `AcceptSync` applied after the follower decided
//! further), so chaos is an opt-in stress mode, not part of the default checks.
//!
//! Links are directed (`up[from][to]`), which gives one-way partitions. [`Shape`] builds
//! the partitions: a full split, a one-way cut, and the three partial-connectivity shapes
//! of the OmniPaxos paper (quorum-loss, constrained election, chained).

use crate::command::{LogEntry, NodeId};
use crate::node::{Network, Note};
use omnipaxos::messages::Message;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a core sent since the world last looked.
#[derive(Default)]
pub struct Sent {
    /// OmniPaxos messages, each with the configuration the core was in when it sent it
    /// (what the production transport tags a message with).
    pub msgs: Vec<(u32, Message<LogEntry>)>,
    /// Notes: (to, note).
    pub notes: Vec<(NodeId, Note)>,
    /// State fetches asked for: the peer to fetch from.
    pub fetches: Vec<NodeId>,
}

/// A node's `Network`: queues what the core sends, for the world to route, tagged with
/// the configuration the core announced last ([`Network::set_membership`]).
#[derive(Clone, Default)]
pub struct Outbox(pub Arc<Mutex<Sent>>, Arc<Mutex<u32>>);

impl Network for Outbox {
    fn send(&self, msg: Message<LogEntry>) {
        let config = *self.1.lock().unwrap();
        self.0.lock().unwrap().msgs.push((config, msg));
    }
    fn set_membership(&self, m: &crate::membership::Membership) {
        *self.1.lock().unwrap() = m.config_id;
    }
    fn send_note(&self, to: NodeId, note: Note) {
        self.0.lock().unwrap().notes.push((to, note));
    }
    fn fetch_state(&self, from: NodeId) {
        self.0.lock().unwrap().fetches.push(from);
    }
}

impl Outbox {
    /// The OmniPaxos messages sent (notes and fetches stay).
    #[cfg(test)]
    pub fn take(&self) -> Vec<Message<LogEntry>> {
        let msgs = std::mem::take(&mut self.0.lock().unwrap().msgs);
        msgs.into_iter().map(|(_, m)| m).collect()
    }

    /// Everything sent.
    pub fn take_all(&self) -> Sent {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Message-level fault probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weather {
    pub drop: f64,
    pub duplicate: f64,
    /// Probability that a message takes a long detour (up to `max_delay`).
    pub slow: f64,
    pub max_delay: Duration,
    /// Reorder within a link (and duplicate): beyond the production transport.
    pub chaos: bool,
}

impl Weather {
    /// No loss, no duplicates, 1–5 ms latency.
    pub const CALM: Weather = Weather {
        drop: 0.0,
        duplicate: 0.0,
        slow: 0.0,
        max_delay: Duration::from_millis(5),
        chaos: false,
    };

    /// Random bad weather; duplicates only with `chaos`.
    pub fn random(rng: &mut StdRng, chaos: bool) -> Weather {
        Weather {
            chaos,
            drop: *[0.0, 0.01, 0.05, 0.2].choose(rng).unwrap(),
            duplicate: if chaos {
                *[0.0, 0.01, 0.05].choose(rng).unwrap()
            } else {
                0.0
            },
            slow: *[0.0, 0.05, 0.2].choose(rng).unwrap(),
            max_delay: Duration::from_millis(rng.gen_range(20..400)),
        }
    }
}

/// A partition shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Two sides that cannot talk to each other.
    Split,
    /// One direction of one link is cut.
    OneWay,
    /// Only one node remains connected to all others; the others only to it.
    QuorumLoss,
    /// The leader keeps a link to one node only; the others stay connected.
    ConstrainedElection,
    /// A line: each node talks only to its neighbours (A–B–C, A and C cut).
    Chained,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Split,
        Shape::OneWay,
        Shape::QuorumLoss,
        Shape::ConstrainedElection,
        Shape::Chained,
    ];
}

/// What crosses a link: an OmniPaxos message or a node-level note.
#[derive(Clone, Debug)]
pub enum Packet {
    /// An OmniPaxos message of the sender's configuration `config`.
    Paxos {
        config: u32,
        msg: Message<LogEntry>,
    },
    Note(Note),
}

struct InFlight {
    from: usize,
    to: usize,
    packet: Packet,
}

/// Messages in flight and the state of every link. Nodes are indexes `0..n` (id - 1).
pub struct SimNet {
    n: usize,
    up: Vec<Vec<bool>>,
    /// Per directed link: when its last message arrives (FIFO unless chaos).
    last_at: Vec<Vec<Duration>>,
    queue: BTreeMap<(Duration, u64), InFlight>,
    next_seq: u64,
    pub weather: Weather,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

impl SimNet {
    pub fn new(n: usize) -> SimNet {
        SimNet {
            n,
            up: vec![vec![true; n]; n],
            last_at: vec![vec![Duration::ZERO; n]; n],
            queue: BTreeMap::new(),
            next_seq: 0,
            weather: Weather::CALM,
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    pub fn link_up(&self, from: usize, to: usize) -> bool {
        self.up[from][to]
    }

    /// Routes one message of configuration `config` sent at `now`.
    pub fn submit(&mut self, rng: &mut StdRng, now: Duration, config: u32, msg: Message<LogEntry>) {
        let (from, to) = (idx(msg.get_sender()), idx(msg.get_receiver()));
        self.submit_packet(rng, now, from, to, Packet::Paxos { config, msg });
    }

    /// A new node (index `n`, the next one) joins the network, linked both ways to every
    /// node (a joining process dials the members).
    pub fn add_node(&mut self) {
        self.n += 1;
        for row in &mut self.up {
            row.push(true);
        }
        self.up.push(vec![true; self.n]);
        for row in &mut self.last_at {
            row.push(Duration::ZERO);
        }
        self.last_at.push(vec![Duration::ZERO; self.n]);
    }

    /// Routes one packet sent at `now` on link (`from`, `to`) (node indexes).
    pub fn submit_packet(
        &mut self,
        rng: &mut StdRng,
        now: Duration,
        from: usize,
        to: usize,
        packet: Packet,
    ) {
        self.sent += 1;
        if to >= self.n || !self.up[from][to] || rng.gen_bool(self.weather.drop) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.gen_bool(self.weather.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let max = if rng.gen_bool(self.weather.slow) {
                self.weather.max_delay.as_micros() as u64
            } else {
                5_000
            };
            let mut at = now + Duration::from_micros(rng.gen_range(1_000..=max.max(1_000)));
            if !self.weather.chaos {
                at = at.max(self.last_at[from][to] + Duration::from_micros(1));
                self.last_at[from][to] = at;
            }
            let packet = packet.clone();
            self.queue
                .insert((at, self.next_seq), InFlight { from, to, packet });
            self.next_seq += 1;
        }
    }

    /// A crashed node's connections break: what was in flight to or from it is lost.
    pub fn drop_node(&mut self, node: usize) {
        let before = self.queue.len();
        self.queue.retain(|_, m| m.from != node && m.to != node);
        self.dropped += (before - self.queue.len()) as u64;
    }

    /// When the next message arrives, if any is in flight.
    pub fn next_time(&self) -> Option<Duration> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    /// The next packet due at `now` whose link is still up: (from, to, packet).
    pub fn pop_due(&mut self, now: Duration) -> Option<(usize, usize, Packet)> {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                return None;
            }
            let m = entry.remove();
            if self.up[m.from][m.to] {
                return Some((m.from, m.to, m.packet));
            }
            self.dropped += 1;
        }
        None
    }

    /// Replaces the link matrix. A link that goes down loses what is in flight on it (the
    /// connection broke). Returns the links (from, to) that came back up: both ends are
    /// told `Reconnected`, as the real transport does after it dials again.
    #[allow(clippy::needless_range_loop)]
    pub fn set_links(&mut self, up: Vec<Vec<bool>>) -> Vec<(usize, usize)> {
        let mut healed = Vec::new();
        for a in 0..self.n {
            for b in 0..self.n {
                if self.up[a][b] && !up[a][b] {
                    let before = self.queue.len();
                    self.queue.retain(|_, m| (m.from, m.to) != (a, b));
                    self.dropped += (before - self.queue.len()) as u64;
                }
                if !self.up[a][b] && up[a][b] {
                    healed.push((a, b));
                }
            }
        }
        self.up = up;
        healed
    }

    /// Every link up.
    pub fn all_up(&self) -> Vec<Vec<bool>> {
        vec![vec![true; self.n]; self.n]
    }

    /// Builds the link matrix of `shape` among the nodes `active` (the others keep all
    /// their links: removed nodes are stopped, and a joining node is not cut off by a
    /// shape drawn before it came); `leader` is the current leader, if known.
    pub fn shape(
        &self,
        shape: Shape,
        leader: Option<usize>,
        active: &[usize],
        rng: &mut StdRng,
    ) -> Vec<Vec<bool>> {
        let mut order: Vec<usize> = active.to_vec();
        let n = order.len();
        order.shuffle(rng);
        let mut up = vec![vec![true; self.n]; self.n];
        let cut = |up: &mut Vec<Vec<bool>>, a: usize, b: usize| {
            up[a][b] = false;
            up[b][a] = false;
        };
        match shape {
            Shape::Split => {
                let k = rng.gen_range(1..n);
                for &a in &order[..k] {
                    for &b in &order[k..] {
                        cut(&mut up, a, b);
                    }
                }
            }
            Shape::OneWay => up[order[0]][order[1]] = false,
            Shape::QuorumLoss => {
                // The hub is not the leader when possible: the leader loses its quorum.
                let hub = *order.iter().find(|&&x| Some(x) != leader).unwrap();
                for (k, &a) in active.iter().enumerate() {
                    for &b in &active[k + 1..] {
                        if a != hub && b != hub {
                            cut(&mut up, a, b);
                        }
                    }
                }
            }
            Shape::ConstrainedElection => {
                let l = leader.filter(|l| active.contains(l)).unwrap_or(order[0]);
                let keep = *order.iter().find(|&&x| x != l).unwrap();
                for &b in active {
                    if b != l && b != keep {
                        cut(&mut up, l, b);
                    }
                }
            }
            Shape::Chained => {
                for i in 0..n {
                    for j in i + 2..n {
                        cut(&mut up, order[i], order[j]);
                    }
                }
            }
        }
        up
    }
}

/// Node id → index.
pub fn idx(id: NodeId) -> usize {
    (id - 1) as usize
}
