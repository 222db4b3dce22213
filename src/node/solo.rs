//! A configuration of one member: the single-node database, run by OmniPaxos with an
//! in-memory *witness* as its second node.
//!
//! A single-node database is an ordinary configuration whose only member is this node:
//! the same log, state machines, on-disk format and write path as every cluster member,
//! and it grows into a cluster by the usual membership changes (and shrinks back into one
//! the same way). OmniPaxos 0.2.4, though, refuses a configuration of one node ("Need
//! more than 1 node"), and even past that check its leader only leaves the Prepare phase
//! when a peer's `Promise` arrives and only decides when a peer's `Accepted` arrives.
//!
//! So the OmniPaxos configuration of a one-member membership has two nodes: the member
//! and a witness ([`witness_id`]), a second OmniPaxos instance in this process over an
//! in-memory log ([`MemStorage`]). The node thread hands the witness every message
//! addressed to it and the witness's answers back to its own instance, in the same round
//! ([`Witness::exchange`]): a write is appended and fsynced by the member, accepted by the
//! witness in memory, and decided in that round — one fsync, no network.
//!
//! Why this is safe although the witness forgets everything at a restart: with two
//! nodes, every quorum (prepare or accept) is both of them, so every decision and every
//! leader's promise quorum includes the member, whose promise and accepted log are
//! durable. Two quorums always intersect in the member; what the witness says adds
//! nothing to safety and can take nothing away — it is the member's own durable state
//! that decides, exactly as a quorum of one would.
//!
//! The witness never leads: it is never ticked, so it never starts an election, and the
//! member takes the lead at once when the instance is built (`try_become_leader`). It
//! starts at the member's decided index (an empty log whose prefix counts as compacted),
//! so a leader always syncs it from entries its own log still holds, and it trims what
//! it has seen decided every round, so it holds no more than the entries in flight.
//!
//! ## Linearizable reads without a log entry
//!
//! A linearizable read takes no log entry anywhere (see [`super::reads`]): the leader's
//! read round is confirmed by a majority of the members, and a node alone is its own
//! majority, so its round is confirmed at once. The read index is the end of the
//! node's *accepted* log, not its decided index: the decided index is stored unsynced,
//! and after a restart it can lie below writes acknowledged before the crash until the
//! node's leadership decides its log again; a read arriving then waits for that.
//!
//! # Invariants
//!
//! - A witness exists exactly while the membership in force has one member, this node
//!   ([`paxos_nodes`] is the only place the OmniPaxos node list of a membership is made);
//!   with two or more members everything is OmniPaxos' own between real peers.
//! - The witness's messages never leave the process, and nothing from the network
//!   reaches it: its id is not a member, and messages addressed to it are taken out of
//!   the outgoing queue before it reaches the transport.
//! - The witness never proposes or leads (it is never ticked and gets no client
//!   commands).
//! - It holds at most the entries not yet decided (it trims to its decided index every
//!   exchange).

use super::{compaction, quirks, CoreConfig};
use crate::command::{LogEntry, NodeId};
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::storage::memory::MemStorage;
use omnipaxos::messages::Message;
use omnipaxos::storage::{Storage, StorageOp};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};

/// The OmniPaxos node ids of a configuration whose members are `members`: the members,
/// and with one member its witness too.
pub(super) fn paxos_nodes(members: &[NodeId]) -> Vec<NodeId> {
    match members {
        [only] => vec![*only, witness_id(*only)],
        _ => members.to_vec(),
    }
}

/// The id of the witness of a configuration whose only member is `member`: any id but
/// the member's will do (no other node is in that configuration); a small one keeps
/// OmniPaxos' per-node tables small.
pub fn witness_id(member: NodeId) -> NodeId {
    member + 1
}

/// True when `m` is a configuration of this one node.
pub(super) fn alone(m: &Membership, me: NodeId) -> bool {
    matches!(m.members.as_slice(), [only] if only.id == me)
}

/// The in-memory second node of a one-member configuration (see the module docs).
pub struct Witness {
    id: NodeId,
    paxos: OmniPaxos<LogEntry, MemStorage>,
}

impl Witness {
    /// The witness of membership `m` if it has one member, this node; its log starts at
    /// `decided` (local index), the member's decided index.
    pub(super) fn for_membership(
        cfg: &CoreConfig,
        m: &Membership,
        decided: usize,
    ) -> Result<Option<Witness>> {
        if !alone(m, cfg.id) {
            return Ok(None);
        }
        let id = witness_id(cfg.id);
        let mut storage = MemStorage::default();
        storage
            .write_atomically(vec![
                StorageOp::Trim(decided),
                StorageOp::SetCompactedIdx(decided),
                StorageOp::SetDecidedIndex(decided),
            ])
            .map_err(|e| Error::Internal(format!("witness log: {e}")))?;
        let config = OmniPaxosConfig {
            cluster_config: ClusterConfig {
                configuration_id: m.config_id,
                nodes: paxos_nodes(&[cfg.id]),
                flexible_quorum: None,
            },
            server_config: ServerConfig {
                pid: id,
                election_tick_timeout: cfg.election_ticks,
                resend_message_tick_timeout: cfg.election_ticks * 5,
                ..Default::default()
            },
        };
        let paxos = config
            .build(storage)
            .map_err(|e| Error::Config(format!("OmniPaxos configuration of the witness: {e}")))?;
        Ok(Some(Witness { id, paxos }))
    }

    /// Delivers the messages in `outgoing` addressed to the witness, and the witness's
    /// answers to `member`, until neither has anything more for the other; what remains in
    /// `outgoing` is for real peers. Then trims the witness's log to its decided index.
    pub(super) fn exchange<S: Storage<LogEntry>>(
        &mut self,
        member: &mut OmniPaxos<LogEntry, S>,
        outgoing: &mut Vec<Message<LogEntry>>,
    ) {
        // Each pass is one step of the protocol (prepare → promise → sync → accepted →
        // decide); a handful is all one round can need.
        for _ in 0..8 {
            let (to_witness, rest): (Vec<_>, Vec<_>) = std::mem::take(outgoing)
                .into_iter()
                .partition(|m| m.get_receiver() == self.id);
            *outgoing = rest;
            if to_witness.is_empty() {
                break;
            }
            for mut msg in to_witness {
                let witness = &self.paxos;
                quirks::fix_stop_sign_sync(&mut msg, |i| witness.read(i));
                self.paxos.handle_incoming(msg);
            }
            let mut answers = Vec::new();
            self.paxos.take_outgoing_messages(&mut answers);
            for mut msg in answers {
                quirks::fix_stop_sign_sync(&mut msg, |i| member.read(i));
                // As for a peer's message: never a compaction request (only the member
                // trims its own log), never a sync from below its trimmed log.
                let compacted = member.get_compacted_idx() as u64;
                if compaction::guard(&msg, compacted) == compaction::Verdict::Deliver {
                    member.handle_incoming(msg);
                }
            }
            member.take_outgoing_messages(outgoing);
        }
        let decided = self.paxos.get_decided_idx();
        if decided > self.paxos.get_compacted_idx() {
            self.paxos
                .handle_incoming(compaction::local_trim(self.id, decided as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CompactionPolicy, Core, CoreConfig, Event, Network};
    use crate::command::{KvCommand, LogEntry, WriteOp};
    use crate::config::Member;
    use crate::kv::KvStore;
    use crate::machine::StateMachine;
    use crate::storage::rocks::RocksStorage;
    use omnipaxos::ballot_leader_election::Ballot;
    use omnipaxos::messages::Message;
    use omnipaxos::storage::Storage;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    /// The network of a node alone: it must never be used (the witness's messages stay in
    /// the process); what is sent anyway is kept for the assertion.
    #[derive(Clone, Default)]
    struct Nobody(Arc<Mutex<Vec<String>>>);

    impl Network for Nobody {
        fn send(&self, msg: Message<LogEntry>) {
            self.0.lock().unwrap().push(format!("{msg:?}"));
        }
    }

    fn config() -> CoreConfig {
        CoreConfig {
            id: 1,
            members: vec![Member {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            tick: Duration::from_millis(10),
            election_ticks: 10,
            request_timeout: Duration::from_secs(60),
            repropose_after: Duration::from_secs(60),
            max_batch_commands: 16,
            max_batch_bytes: 1 << 20,
            first_batch_id: 1,
            compaction: CompactionPolicy::OFF,
        }
    }

    fn put(seq: u64, key: &str) -> crate::machine::Command {
        KvCommand {
            client_id: 7,
            seq,
            op: WriteOp::Put {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                return_prev: false,
            },
            user: None,
        }
        .encode()
    }

    /// A single node's log, state and core on a real RocksDB in `dir`.
    fn open(dir: &std::path::Path) -> (RocksStorage, KvStore) {
        let db = crate::storage::db::open_db(dir).unwrap();
        (
            RocksStorage::open(db.clone()).unwrap(),
            KvStore::open(db).unwrap(),
        )
    }

    fn read(core: &mut Core<RocksStorage>) -> oneshot::Receiver<crate::Result<()>> {
        let (reply, rx) = oneshot::channel();
        core.handle(Event::ReadBarrier { reply }, Instant::now());
        rx
    }

    #[test]
    fn a_lone_node_answers_a_read_in_its_round_without_a_log_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, kv) = open(dir.path());
        let net = Nobody::default();
        let mut core = Core::new(
            config(),
            storage,
            Box::new(kv.clone()),
            Box::new(net.clone()),
        )
        .unwrap();
        let mut writes = Vec::new();
        for seq in 1..=3 {
            let (reply, rx) = oneshot::channel();
            core.handle(
                Event::Write {
                    cmd: put(seq, &format!("k{seq}")),
                    reply,
                },
                Instant::now(),
            );
            writes.push(rx);
        }
        core.step(Instant::now());
        for mut rx in writes {
            assert!(
                matches!(rx.try_recv(), Ok(Ok(_))),
                "a write decided in one round"
            );
        }
        let before = core.status();
        // Answered in the next round, which appends nothing: no entry, so no fsync.
        let mut reads: Vec<_> = (0..10).map(|_| read(&mut core)).collect();
        core.step(Instant::now());
        for rx in &mut reads {
            assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        }
        let after = core.status();
        assert_eq!(
            after.decided_index, before.decided_index,
            "no barrier entry"
        );
        assert_eq!(kv.get(b"k3").unwrap().0.unwrap().value, b"v");
        assert!(
            net.0.lock().unwrap().is_empty(),
            "{:?}",
            net.0.lock().unwrap()
        );
    }

    /// After a crash the decided index (stored unsynced) and the state can lie below
    /// entries the node accepted, synced and may have acknowledged: a read must not be
    /// answered from that state, but wait for its log to be decided and applied again.
    #[test]
    fn after_a_restart_a_read_waits_for_the_whole_accepted_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut storage, kv) = open(dir.path());
        // What a power loss can leave: three entries accepted in the node's own round and
        // synced, the decided index and the applied state not.
        let ballot = Ballot::with(1, 1, 0, 1);
        storage.set_promise(ballot).unwrap();
        storage.set_accepted_round(ballot).unwrap();
        let entries: Vec<LogEntry> = (1..=3)
            .map(|seq| LogEntry {
                proposer: 1,
                batch_id: 100 + seq,
                commands: vec![put(seq, &format!("k{seq}"))],
            })
            .collect();
        storage.append_entries(entries).unwrap();
        assert_eq!(storage.get_decided_idx().unwrap(), 0);
        assert_eq!(kv.applied_index(), 0);

        let mut core = Core::new(
            config(),
            storage,
            Box::new(kv.clone()),
            Box::new(Nobody::default()),
        )
        .unwrap();
        let mut rx = read(&mut core);
        assert!(
            rx.try_recv().is_err(),
            "a read answered from a state that lacks the accepted log"
        );
        let mut answer = None;
        for _ in 0..10 {
            core.step(Instant::now());
            if let Ok(a) = rx.try_recv() {
                answer = Some(a);
                break;
            }
        }
        assert!(matches!(answer, Some(Ok(()))), "{answer:?}");
        assert!(core.status().applied_index >= 3, "{:?}", core.status());
        assert_eq!(kv.get(b"k3").unwrap().0.unwrap().value, b"v");
        // Once the state holds the log again, a read is answered in the next round.
        let mut rx = read(&mut core);
        core.step(Instant::now());
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
    }
}
