//! The seam between the replica core and the state machines it drives.
//!
//! The core (`node/`: OmniPaxos, the log, batching, compaction, catch-up, membership)
//! orders [`Command`]s without knowing what they mean: a command is a session (`client_id`,
//! `seq`), the [`Machine`] it is for, and opaque `payload` bytes that only that machine
//! decodes. A [`LogEntry`] carries a batch of them. After an entry is decided, the core
//! hands each machine the commands meant for it, and each machine returns one opaque
//! [`Outcome`] per command, which the core passes back to whoever waits for it. The typed
//! vocabulary lives beside each machine: `kv` (`WriteOp`/`WriteResult`, `KvHandle`) and
//! `sql` (`Request`/`StatementResult`).
//!
//! The shape follows toydb's `raft::State`: opaque bytes in the log, the adapter beside
//! the state machine, a small trait between them.
//!
//! # Invariants
//!
//! - Every node applies the same commands in the same order; a machine's outcome depends
//!   only on its state and the command (never on a clock, a random source or the node),
//!   so every node computes the same outcome. (The SQL machine also reads the user table
//!   as of the entry, kept by the KV machine: replicated state too; see `sql::store`,
//!   *Rights at apply*.)
//! - A machine applies an entry's commands atomically with advancing its own applied
//!   index, its session records and the membership it records; an index it already
//!   applied is never applied again.
//! - Bytes of a payload the machine cannot decode give the same `Outcome::Rejected` on
//!   every node (nothing changes), never a panic.

use crate::error::{Error, Result};
use crate::membership::Membership;
use omnipaxos::macros::Entry;
use serde::{Deserialize, Serialize};

/// A node's identifier within the cluster (never 0).
pub type NodeId = u64;

/// Which state machine a command is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Machine {
    /// The key-value store (`kv`), also holding users.
    Kv,
    /// The SQL database (`sql`).
    Sql,
    /// Not a state machine: the log's clock. A command for it is a stamp, the wall-clock
    /// time (ms since the Unix epoch, 8 bytes big-endian) of the leader that appended the
    /// entry, then (since protocol 8) the leader's reign, 16 bytes ([`Command::clock`],
    /// [`Stamp`]). [`Machines::apply`] gives every machine the entry's
    /// stamp; the log's time is the largest stamp applied so far, so it never goes back,
    /// and it is the only time a machine may use (apply stays deterministic). A new variant
    /// at the end, so that entries written before it decode unchanged.
    Clock,
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Entry)]
pub struct LogEntry {
    /// The node that proposed the entry.
    pub proposer: NodeId,
    /// The proposer's sequence number for this batch; with `proposer` it names the entry.
    pub batch_id: u64,
    /// The client commands, applied in order. None: a pure read barrier.
    pub commands: Vec<Command>,
}

/// A client command as replicated: a session, a machine, and bytes only it decodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    /// The authenticated user the command runs as (`None`: no user, while the cluster
    /// has none, or the node itself). The machine checks the user's rights again when it
    /// applies the command, against the replicated user table as of that log position.
    pub user: Option<String>,
    pub machine: Machine,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What a clock stamp carries: the stamping leader's time and which reign of leadership
/// it stamped in, so that apply can tell a leader change (leases do not count the time
/// without a leader; see `kv::lease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, by the leader's clock.
    pub time: u64,
    /// The leader's ballot (configuration, round, node) packed into 128 bits; 0 in stamps
    /// written before reigns were recorded.
    pub reign: u128,
}

impl Stamp {
    /// A stamp of a leader whose ballot is `(config, n, pid)`.
    pub fn new(time: u64, config: u32, n: u32, pid: u64) -> Stamp {
        Stamp {
            time,
            reign: (u128::from(config) << 96) | (u128::from(n) << 64) | u128::from(pid),
        }
    }
}

impl Command {
    /// A clock stamp, as the leader appending the entry reads its clock.
    pub fn clock(stamp: Stamp) -> Command {
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&stamp.time.to_be_bytes());
        payload.extend_from_slice(&stamp.reign.to_be_bytes());
        Command {
            client_id: 0,
            seq: 0,
            user: None,
            machine: Machine::Clock,
            payload,
        }
    }

    /// The stamp a clock command carries (`None`: not a stamp, or a malformed one). A
    /// stamp of 8 bytes (written before reigns) has reign 0.
    pub fn stamp(&self) -> Option<Stamp> {
        if self.machine != Machine::Clock {
            return None;
        }
        let p = self.payload.as_slice();
        let time = u64::from_be_bytes(p.get(..8)?.try_into().ok()?);
        let reign = match p.len() {
            8 => 0,
            24 => u128::from_be_bytes(p[8..].try_into().ok()?),
            _ => return None,
        };
        Some(Stamp { time, reign })
    }

    /// Bytes the command takes in a log entry, roughly (bounds batches).
    pub fn size(&self) -> usize {
        self.payload.len() + 24
    }
}

/// What applying a command gave, as the core passes it back to the waiting client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or recalled for a retry): the machine's encoded result.
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not applied, and never will be: the data does not allow it, or the payload is not
    /// valid. Nothing changed.
    Rejected(String),
    /// The session can no longer tell this command's outcome: an unknown outcome, not a
    /// failure (see the KV store's sessions).
    Superseded(String),
    /// Not applied: the user the command runs as may not do this (any more) at this log
    /// position. Nothing changed.
    Denied(String),
    /// Not applied: the session's seq already named another command. Nothing changed.
    SessionReused(String),
}

/// Applies a batch of decoded commands for a machine's `apply`: `decoded` holds each
/// command's typed form or why its payload is not valid; `run` applies the valid ones (in
/// order, moved, not copied) and returns one outcome each. Invalid ones are rejected in
/// their place.
pub fn apply_decoded<T>(
    decoded: Vec<std::result::Result<T, String>>,
    run: impl FnOnce(Vec<T>) -> Result<Vec<Outcome>>,
) -> Result<Vec<Outcome>> {
    let mut valid = Vec::with_capacity(decoded.len());
    let mut invalid = Vec::with_capacity(decoded.len());
    for d in decoded {
        match d {
            Ok(t) => {
                valid.push(t);
                invalid.push(None);
            }
            Err(why) => invalid.push(Some(why)),
        }
    }
    let mut outcomes = run(valid)?.into_iter();
    Ok(invalid
        .into_iter()
        .map(|why| match why {
            Some(why) => Outcome::Rejected(why),
            None => outcomes.next().expect("one outcome per valid command"),
        })
        .collect())
}

/// A state machine the core applies decided entries to.
pub trait StateMachine: Send + 'static {
    /// Which commands are this machine's.
    fn machine(&self) -> Machine;
    /// Number of log entries applied so far (the next entry to apply has this index).
    fn applied_index(&self) -> u64;
    /// Applies `commands` (this machine's commands of the log entry at `index`, in log
    /// order; possibly none) atomically with advancing the applied index to `index + 1`.
    /// `index` must equal `applied_index()`. Returns one outcome per command.
    fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>>;
    /// [`StateMachine::apply`] of an entry that carries a clock stamp (`stamp`: the
    /// largest in the entry). By default the machine has no use for time.
    fn apply_at(
        &mut self,
        index: u64,
        stamp: Option<Stamp>,
        commands: &[&Command],
    ) -> Result<Vec<Outcome>> {
        let _ = stamp;
        self.apply(index, commands)
    }
    /// The earliest log time at which something this machine holds expires, if any: the
    /// leader stamps the log when its clock passes it, so that the expiry is applied.
    fn next_deadline(&self) -> Option<u64> {
        None
    }
    /// The log's time as of this machine's applied index (0: it keeps none).
    fn log_time(&self) -> u64 {
        0
    }
    /// Whether applying `cmd` (one of this machine's) reads the log's time, so that its
    /// entry must carry a fresh stamp (a deadline relative to now).
    fn needs_time(&self, cmd: &Command) -> bool {
        let _ = cmd;
        false
    }
    /// Makes every applied entry durable: the core calls it before trimming the log past
    /// the applied index. The KV store's default: nothing to do, its apply batches share
    /// the log's ordered, synced RocksDB write-ahead log.
    fn make_durable(&mut self) -> Result<()> {
        Ok(())
    }
    /// Atomically replaces the live state by the completely staged one and returns the
    /// new applied index. Fails, changing nothing, if no complete staged state exists.
    /// An error always means the old state is still live and loaded: a failure after the
    /// switch (loading the installed state) panics, which stops the node; its restart
    /// opens the installed state.
    fn install_staged(&mut self) -> Result<u64> {
        Err(Error::Internal(
            "state transfer is not supported by this state machine".into(),
        ))
    }
    /// The membership set by the last applied configuration change (`None`: the initial
    /// one, from the server's configuration).
    fn membership(&self) -> Result<Option<Membership>> {
        Ok(None)
    }
    /// Applies the configuration change decided at `index` (a stop sign): records `m`
    /// atomically with advancing the applied index past it.
    fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        let _ = (index, m);
        Err(Error::Internal(
            "membership changes are not supported by this state machine".into(),
        ))
    }
}

/// Every state machine of a node, driven as one by the core: the first (primary) one
/// records the membership; each keeps its own applied index.
///
/// An entry is applied to each machine in turn, each in its own atomic commit, so a crash
/// can leave one machine an entry ahead of another. The core resumes from the smallest
/// applied index ([`Machines::applied_index`]), and a machine already past an entry skips
/// it: each machine applies each entry exactly once. A stop sign is applied to the
/// secondary machines first and to the primary last, so the membership the node restarts
/// in is never newer than an entry some machine still has to apply from the old
/// configuration's log.
pub struct Machines {
    all: Vec<Box<dyn StateMachine>>,
}

impl<T: StateMachine> From<Box<T>> for Machines {
    fn from(primary: Box<T>) -> Machines {
        Machines { all: vec![primary] }
    }
}

impl Machines {
    /// Adds a secondary machine (commands for a machine that is not here are rejected).
    pub fn with(mut self, m: Box<dyn StateMachine>) -> Machines {
        self.all.push(m);
        self
    }

    /// The next entry some machine still has to apply.
    pub fn applied_index(&self) -> u64 {
        (self.all.iter().map(|m| m.applied_index()).min()).expect("at least one machine")
    }

    /// Applies the entry at `index` (its `commands`) to every machine that has not yet;
    /// returns one outcome per command, in order.
    pub fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; commands.len()];
        // Every stamp of an entry is its appending leader's: the latest counts.
        let stamp = (commands.iter().filter_map(|c| c.stamp())).max_by_key(|s| s.time);
        for (i, c) in commands.iter().enumerate() {
            if c.machine == Machine::Clock {
                out[i] = Some(Outcome::Done(Vec::new()));
            }
        }
        for m in &mut self.all {
            let which = m.machine();
            let (positions, mine): (Vec<usize>, Vec<&Command>) = commands
                .iter()
                .enumerate()
                .filter(|(_, c)| c.machine == which)
                .map(|(i, c)| (i, *c))
                .unzip();
            if m.applied_index() > index {
                // Applied before the node restarted: nobody here waits for these.
                for i in positions {
                    out[i] = Some(Outcome::Superseded(
                        "applied before this node restarted".into(),
                    ));
                }
                continue;
            }
            let results = m.apply_at(index, stamp, &mine)?;
            for (i, r) in positions.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        let here: Vec<Machine> = self.all.iter().map(|m| m.machine()).collect();
        Ok(out
            .into_iter()
            .zip(commands)
            .map(|(o, c)| {
                o.unwrap_or_else(|| match here.contains(&c.machine) {
                    false => {
                        Outcome::Rejected(format!("this node has no {:?} state machine", c.machine))
                    }
                    true => Outcome::Rejected(format!(
                        "the {:?} state machine gave no outcome for this command",
                        c.machine
                    )),
                })
            })
            .collect())
    }

    /// Whether an entry of `commands` must carry a clock stamp: something expires (the
    /// log's time must keep up), or a command reads the time ([`StateMachine::needs_time`]).
    /// Otherwise entries go unstamped and the log's time does not move.
    pub fn needs_stamp(&self, commands: &[Command]) -> bool {
        self.next_deadline().is_some()
            || commands
                .iter()
                .any(|c| (self.all.iter()).any(|m| m.machine() == c.machine && m.needs_time(c)))
    }

    /// The log's time as the machines applied it (the largest any keeps).
    pub fn log_time(&self) -> u64 {
        self.all.iter().map(|m| m.log_time()).max().unwrap_or(0)
    }

    /// The earliest deadline of any machine (see [`StateMachine::next_deadline`]).
    pub fn next_deadline(&self) -> Option<u64> {
        self.all.iter().filter_map(|m| m.next_deadline()).min()
    }

    /// Records the membership decided at `index` (a stop sign): secondaries first.
    pub fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        for sm in self.all.iter_mut().rev() {
            if sm.applied_index() <= index {
                sm.apply_membership(index, m)?;
            }
        }
        Ok(())
    }

    /// The membership the primary recorded.
    pub fn membership(&self) -> Result<Option<Membership>> {
        self.all[0].membership()
    }

    /// Installs every machine's staged state; returns the new applied index. An error
    /// means nothing changed. Once one machine has installed, a failure of the next
    /// cannot be reported so (the node would go on as if none had): it stops the node,
    /// like a crash between two installs, which a restart handles (every machine resumes
    /// from its own applied index and skips what it already holds).
    pub fn install_staged(&mut self) -> Result<u64> {
        let mut applied = Vec::with_capacity(self.all.len());
        for m in self.all.iter_mut().rev() {
            match m.install_staged() {
                Ok(a) => applied.push(a),
                Err(e) if applied.is_empty() => return Err(e),
                Err(e) => panic!(
                    "installing the fetched {:?} state failed after another state machine \
                     installed its part: {e}; restart the node",
                    m.machine()
                ),
            }
        }
        Ok(applied.into_iter().min().expect("at least one machine"))
    }

    /// Makes everything applied durable (before the log is trimmed past it).
    pub fn make_durable(&mut self) -> Result<()> {
        self.all.iter_mut().try_for_each(|m| m.make_durable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A machine that records what it was given in a journal shared by the test.
    struct Journal {
        which: Machine,
        applied: u64,
        membership: Option<Membership>,
        /// The applied index of a completely staged state, if any.
        staged: Option<u64>,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl StateMachine for Journal {
        fn machine(&self) -> Machine {
            self.which
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>> {
            assert_eq!(index, self.applied, "{:?} applies in order", self.which);
            self.applied = index + 1;
            let mut seen = self.seen.lock().unwrap();
            seen.push(format!("{:?}@{index}:{}", self.which, commands.len()));
            Ok(commands
                .iter()
                .map(|c| Outcome::Done(c.payload.clone()))
                .collect())
        }
        fn membership(&self) -> Result<Option<Membership>> {
            Ok(self.membership.clone())
        }
        fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
            self.applied = index + 1;
            self.membership = Some(m.clone());
            let mut seen = self.seen.lock().unwrap();
            seen.push(format!("{:?}@{index}:membership", self.which));
            Ok(())
        }
        fn install_staged(&mut self) -> Result<u64> {
            let staged =
                (self.staged.take()).ok_or_else(|| Error::Storage("nothing staged".into()))?;
            self.applied = staged;
            let mut seen = self.seen.lock().unwrap();
            seen.push(format!("{:?}:installed@{staged}", self.which));
            Ok(staged)
        }
    }

    fn journal(which: Machine, applied: u64, seen: &Arc<Mutex<Vec<String>>>) -> Journal {
        Journal {
            which,
            applied,
            membership: None,
            staged: None,
            seen: seen.clone(),
        }
    }

    fn cmd(machine: Machine, payload: &[u8]) -> Command {
        Command {
            client_id: 1,
            seq: 1,
            user: None,
            machine,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn commands_go_to_their_machine_and_outcomes_keep_the_entry_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut ms = Machines::from(Box::new(journal(Machine::Kv, 0, &seen)))
            .with(Box::new(journal(Machine::Sql, 0, &seen)));
        let (a, b, c) = (
            cmd(Machine::Sql, b"a"),
            cmd(Machine::Kv, b"b"),
            cmd(Machine::Sql, b"c"),
        );
        let out = ms.apply(0, &[&a, &b, &c]).unwrap();
        let done = |p: &[u8]| Outcome::Done(p.to_vec());
        assert_eq!(out, vec![done(b"a"), done(b"b"), done(b"c")]);
        // An entry without commands for a machine still advances it.
        ms.apply(1, &[&b]).unwrap();
        assert_eq!(ms.applied_index(), 2);
        assert_eq!(
            *seen.lock().unwrap(),
            ["Kv@0:1", "Sql@0:2", "Kv@1:1", "Sql@1:0"]
        );
    }

    /// After a crash between two machines' commits, the node resumes at the smallest
    /// applied index and the machine already past the entry does not apply it again.
    #[test]
    fn a_machine_ahead_after_a_crash_skips_what_it_applied() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut ms = Machines::from(Box::new(journal(Machine::Kv, 8, &seen)))
            .with(Box::new(journal(Machine::Sql, 7, &seen)));
        assert_eq!(ms.applied_index(), 7);
        let (k, s) = (cmd(Machine::Kv, b"k"), cmd(Machine::Sql, b"s"));
        let out = ms.apply(7, &[&k, &s]).unwrap();
        assert_eq!(out[1], Outcome::Done(b"s".to_vec()));
        assert!(matches!(out[0], Outcome::Superseded(_)), "{out:?}");
        assert_eq!(ms.applied_index(), 8);
        assert_eq!(*seen.lock().unwrap(), ["Sql@7:1"]);
    }

    /// The first machine to install (the last one) failing changes nothing: the error
    /// goes to the caller, which keeps following its old log.
    #[test]
    fn a_failed_install_before_any_machine_installed_is_an_error() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut kv = journal(Machine::Kv, 3, &seen);
        kv.staged = Some(9);
        let mut ms = Machines::from(Box::new(kv)).with(Box::new(journal(Machine::Sql, 3, &seen)));
        assert!(ms.install_staged().is_err());
        assert_eq!(ms.applied_index(), 3);
        assert!(seen.lock().unwrap().is_empty(), "nothing installed");
    }

    /// Once a machine has installed, a failure of the next cannot be reported as
    /// "nothing changed": it stops the node (a restart resumes every machine from its own
    /// applied index).
    #[test]
    #[should_panic(expected = "after another state machine installed its part")]
    fn a_failed_install_after_another_machine_installed_stops_the_node() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sql = journal(Machine::Sql, 3, &seen);
        sql.staged = Some(9);
        let mut ms = Machines::from(Box::new(journal(Machine::Kv, 3, &seen))).with(Box::new(sql));
        let _ = ms.install_staged();
    }

    #[test]
    fn both_machines_install_and_the_node_resumes_at_the_smaller_index() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut kv, mut sql) = (
            journal(Machine::Kv, 3, &seen),
            journal(Machine::Sql, 3, &seen),
        );
        (kv.staged, sql.staged) = (Some(9), Some(8));
        let mut ms = Machines::from(Box::new(kv)).with(Box::new(sql));
        assert_eq!(ms.install_staged().unwrap(), 8);
        assert_eq!(*seen.lock().unwrap(), ["Sql:installed@8", "Kv:installed@9"]);
    }

    #[test]
    fn a_command_for_a_machine_the_node_lacks_is_rejected_the_same_everywhere() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut ms = Machines::from(Box::new(journal(Machine::Kv, 0, &seen)));
        let s = cmd(Machine::Sql, b"s");
        let out = ms.apply(0, &[&s]).unwrap();
        assert_eq!(
            out,
            vec![Outcome::Rejected(
                "this node has no Sql state machine".into()
            )]
        );
    }

    /// The primary records a membership change last: a crash in between restarts the
    /// node in the old configuration, whose log still holds the stop sign.
    #[test]
    fn a_stop_sign_reaches_the_secondaries_before_the_primary() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut ms = Machines::from(Box::new(journal(Machine::Kv, 3, &seen)))
            .with(Box::new(journal(Machine::Sql, 3, &seen)));
        let m = Membership::initial(&[crate::config::Member {
            id: 1,
            addr: "a".into(),
        }]);
        ms.apply_membership(3, &m).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["Sql@3:membership", "Kv@3:membership"]
        );
        assert_eq!(ms.membership().unwrap(), Some(m));
        assert_eq!(ms.applied_index(), 4);
    }
}
