//! The state-transfer loop, reproduced and bounded: a hand-driven three-node cluster (real
//! [`Core`]s over the simulation's storage and the KV store's memory backend, in virtual
//! time, delivering every message at once) where one node falls behind the trimmed logs
//! and catches up by a state transfer that takes longer than it takes the others to write
//! more than they keep (`keep_bytes`).
//!
//! Without transfer holds, the installed state is already behind every member's trimmed
//! log: the node is told to fetch a state again, and under steady writes it loops for
//! good. With them (see `node::compaction`, "Transfer holds"), the members keep their logs
//! from the state's index while the transfer runs, and the node follows the log after one
//! transfer. A fetcher that never finishes pins the logs only for the hold's time (or up
//! to its bytes), not for ever.
//!
//! Deterministic: no randomness, virtual time, one message order.

use super::net::Outbox;
use super::storage::{Durable, SimStorage};
use crate::command::{Command, KvCommand, NodeId, WriteOp};
use crate::kv::KvStore;
use crate::node::{CompactionPolicy, Core, CoreConfig, Event, NodeStatus};
use crate::transfer::{Import, Transferable};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TICK: Duration = Duration::from_millis(10);
/// Bytes of each write's value (one write per tick: 20 KB a second).
const VALUE: usize = 200;

/// A state fetch under way.
struct Fetch {
    from: usize,
    due: Duration,
    imports: Vec<Box<dyn Import>>,
}

struct Cluster {
    cores: Vec<Core<SimStorage>>,
    kvs: Vec<KvStore>,
    outboxes: Vec<Outbox>,
    /// Nodes cut off from every other (their messages and notes are lost both ways).
    cut: Vec<bool>,
    base: Instant,
    now: Duration,
    /// How long a state transfer takes (virtual time); `None`: it never ends.
    transfer_time: Option<Duration>,
    fetches: Vec<Option<Fetch>>,
    /// Transfers started and installed, per node.
    started: Vec<u64>,
    installed: Vec<u64>,
    seq: u64,
    /// Replies of the writes, dropped as they come (a write may time out: that is fine).
    replies: Vec<oneshot::Receiver<crate::error::Result<crate::machine::Outcome>>>,
}

impl Cluster {
    fn new(policy: CompactionPolicy, transfer_time: Option<Duration>) -> Cluster {
        let n = 3;
        let mut c = Cluster {
            cores: Vec::new(),
            kvs: Vec::new(),
            outboxes: Vec::new(),
            cut: vec![false; n],
            base: Instant::now(),
            now: Duration::ZERO,
            transfer_time,
            fetches: (0..n).map(|_| None).collect(),
            started: vec![0; n],
            installed: vec![0; n],
            seq: 0,
            replies: Vec::new(),
        };
        for i in 0..n {
            let id = i as NodeId + 1;
            let durable = Durable::new();
            durable.lock().unwrap().id = id;
            let kv = KvStore::open_memory(durable.lock().unwrap().kv.clone()).unwrap();
            let outbox = Outbox::default();
            let cfg = CoreConfig {
                id,
                members: super::members(n as NodeId),
                tick: TICK,
                election_ticks: 10,
                request_timeout: Duration::from_secs(5),
                repropose_after: Duration::from_secs(1),
                max_batch_commands: 4096,
                max_batch_bytes: 1 << 20,
                first_batch_id: id << 40,
                compaction: policy,
            };
            let storage = SimStorage(durable.clone());
            let mut core =
                Core::new(cfg, storage, Box::new(kv.clone()), Box::new(outbox.clone())).unwrap();
            core.set_reopen(Box::new(move || Ok(SimStorage(durable.clone()))));
            c.cores.push(core);
            c.kvs.push(kv);
            c.outboxes.push(outbox);
        }
        c
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn status(&self, i: usize) -> NodeStatus {
        self.cores[i].status()
    }

    /// One write through node 1 (forwarded to the leader if it is not).
    fn write(&mut self) {
        self.seq += 1;
        let cmd: Command = KvCommand {
            client_id: 77,
            seq: self.seq,
            op: WriteOp::Put {
                key: format!("k{}", self.seq % 50).into_bytes(),
                value: vec![b'v'; VALUE],
                return_prev: false,
            },
            user: None,
        }
        .encode();
        let (reply, rx) = oneshot::channel();
        let at = self.at();
        self.cores[0].handle(Event::Write { cmd, reply }, at);
        self.replies.push(rx);
        self.replies.retain_mut(|r| r.try_recv().is_err());
    }

    /// Delivers what every core sent, until nothing more is sent.
    fn settle(&mut self) {
        let at = self.at();
        for _ in 0..10 {
            let mut quiet = true;
            for i in 0..self.cores.len() {
                self.cores[i].step(at);
                let sent = self.outboxes[i].take_all();
                quiet &= sent.msgs.is_empty() && sent.notes.is_empty() && sent.fetches.is_empty();
                let from = i as NodeId + 1;
                for (config, msg) in sent.msgs {
                    let to = msg.get_receiver() as usize - 1;
                    if !self.cut[i] && !self.cut[to] {
                        self.cores[to].handle(Event::Peer { config, msg }, at);
                    }
                }
                for (to, note) in sent.notes {
                    let to = to as usize - 1;
                    if !self.cut[i] && !self.cut[to] {
                        self.cores[to].handle(Event::Note { from, note }, at);
                    }
                }
                for peer in sent.fetches {
                    self.start_fetch(i, peer as usize - 1);
                }
            }
            if quiet {
                break;
            }
        }
    }

    /// Node `i` fetches `from`'s state: the copy is of this moment, it ends after
    /// `transfer_time` (or a stalled fetch fails at once if the two are cut apart).
    fn start_fetch(&mut self, i: usize, from: usize) {
        self.started[i] += 1;
        let at = self.at();
        if self.cut[i] || self.cut[from] {
            let err = crate::error::Error::Unavailable("unreachable".into());
            self.cores[i].handle(Event::StateFetched(Err(err)), at);
            return;
        }
        let mut import = Transferable::importer(&self.kvs[i]).unwrap();
        Transferable::export(&self.kvs[from], &mut |b| import.part(b)).unwrap();
        let due = match self.transfer_time {
            Some(t) => self.now + t,
            None => Duration::MAX,
        };
        self.fetches[i] = Some(Fetch {
            from,
            due,
            imports: vec![import],
        });
    }

    fn finish_fetches(&mut self) {
        let at = self.at();
        for i in 0..self.cores.len() {
            if !self.fetches[i].as_ref().is_some_and(|f| f.due <= self.now) {
                continue;
            }
            let f = self.fetches[i].take().unwrap();
            let _ = f.from;
            let applied = f.imports.into_iter().try_fold(u64::MAX, |a, imp| {
                Ok::<_, crate::error::Error>(a.min(imp.finish()?))
            });
            if applied.is_ok() {
                self.installed[i] += 1;
            }
            self.cores[i].handle(Event::StateFetched(applied), at);
        }
    }

    /// Advances one tick: timers, one write, delivery, transfers.
    fn tick(&mut self, write: bool) {
        self.now += TICK;
        let at = self.at();
        for c in &mut self.cores {
            c.tick(at);
        }
        if write {
            self.write();
        }
        self.finish_fetches();
        self.settle();
    }

    fn run(&mut self, d: Duration, write: bool) {
        let end = self.now + d;
        while self.now < end {
            self.tick(write);
        }
    }

    /// Node `i` follows the log again: not fetching, and within `slack` entries of the
    /// leader's applied index.
    fn following(&self, i: usize, slack: u64) -> bool {
        let s = self.status(i);
        let top = (0..self.cores.len())
            .map(|j| self.status(j).applied_index)
            .max()
            .unwrap_or(0);
        s.catching_up_from.is_none() && s.applied_index + slack >= top
    }
}

/// The policy of the reproduction: trim in small steps, keep only about 4 KiB of log for
/// laggards (20 writes, 0.2 s of them), while a transfer takes 1 s.
fn policy() -> CompactionPolicy {
    CompactionPolicy {
        every_entries: 5,
        keep_entries: u64::MAX,
        keep_bytes: 4096,
    }
}

/// What happened to node 3 after it came back: the transfers it started and installed
/// before it followed the log again (or the time ran out), and whether it did.
#[derive(Debug)]
struct Rejoin {
    started: u64,
    installed: u64,
    rejoined: bool,
    secs: f64,
}

/// Node 3 is cut off for 2 s under steady writes, then comes back; the others keep
/// writing. Runs at most `limit` after it came back.
fn rejoin(transfer_time: Duration, limit: Duration) -> (Cluster, Rejoin) {
    let mut c = Cluster::new(policy(), Some(transfer_time));
    c.run(Duration::from_secs(1), true);
    assert!(c.status(0).leader.is_some(), "a leader is elected");
    c.cut[2] = true;
    c.run(Duration::from_secs(2), true);
    let behind = c.status(2).decided_index;
    let compacted = (0..2).map(|j| c.status(j).compacted_index).min().unwrap();
    assert!(
        behind < compacted,
        "node 3 (decided {behind}) is behind the others' trimmed logs ({compacted})"
    );
    c.cut[2] = false;
    let back = c.now;
    let mut rejoined = false;
    while c.now < back + limit {
        c.tick(true);
        if c.started[2] > 0 && c.following(2, 5) {
            rejoined = true;
            break;
        }
    }
    let r = Rejoin {
        started: c.started[2],
        installed: c.installed[2],
        rejoined,
        secs: (c.now - back).as_secs_f64(),
    };
    (c, r)
}

/// The reproduction: a transfer (1 s) longer than the others take to write past their
/// kept log (0.2 s). Node 3 must follow the log again after one transfer.
#[test]
#[ignore = "the reproduction of the transfer loop: fails until transfer holds"]
fn a_transfer_longer_than_the_kept_log_does_not_loop() {
    let (c, r) = rejoin(Duration::from_secs(1), Duration::from_secs(20));
    eprintln!("transfer 1 s, 4 KiB kept: {r:?}");
    assert!(
        r.rejoined,
        "node 3 never followed the log again within {} s: {r:?}, status {:?}",
        r.secs,
        c.status(2)
    );
    assert_eq!((r.started, r.installed), (1, 1), "{r:?}");
}

/// The control: a transfer (0.1 s) shorter than the time the kept log covers (0.2 s)
/// brings node 3 back with one transfer (the harness itself does not loop).
#[test]
fn a_transfer_shorter_than_the_kept_log_rejoins_at_once() {
    let (c, r) = rejoin(Duration::from_millis(100), Duration::from_secs(20));
    eprintln!("transfer 0.1 s, 4 KiB kept: {r:?}");
    assert!(r.rejoined, "{r:?}, status {:?}", c.status(2));
    assert_eq!((r.started, r.installed), (1, 1), "{r:?}");
}
