//! Applying decided entries, in log order, and answering the requests waiting for them.
//!
//! Invariants: an entry is applied exactly once, at its global index (the state machine
//! refuses any other); a waiter is answered only by the entry carrying its very command
//! or barrier; a stop sign is applied like an entry (it records the next membership) and
//! ends this configuration's log.

use super::Core;
use crate::command::LogEntry;
use crate::error::Result;
use crate::membership::Membership;
use crate::storage::LogStorage;
use omnipaxos::storage::StopSign;
use omnipaxos::util::LogEntry as PaxosEntry;

impl<S: LogStorage> Core<S> {
    /// Applies decided entries in order and answers their waiters.
    pub(super) fn apply_decided(&mut self) {
        if self.silenced().is_some() {
            return;
        }
        loop {
            let base = self.membership.base;
            let decided = self.paxos.get_decided_idx() as u64;
            let from = self.sm.applied_index().saturating_sub(base);
            if from >= decided {
                return;
            }
            let to = decided.min(from + 1024);
            let entries = match self.paxos.read_entries(from as usize..to as usize) {
                Some(e) if !e.is_empty() => e,
                _ => {
                    let each: Vec<String> = (from..to)
                        .map(|i| {
                            format!(
                                "{i}: {:?}",
                                self.paxos.read(i as usize).map(|e| match e {
                                    PaxosEntry::Decided(_) => "decided".to_string(),
                                    PaxosEntry::Undecided(_) => "undecided".to_string(),
                                    PaxosEntry::StopSign(_, d) => format!("stopsign decided={d}"),
                                    other => format!("{other:?}"),
                                })
                            )
                        })
                        .collect();
                    tracing::error!(
                        "decided entries [{from}, {to}) cannot be read: {}; compacted {}, reconfigured {:?}",
                        each.join(", "),
                        self.paxos.get_compacted_idx(),
                        self.paxos.is_reconfigured().map(|s| s.next_config.configuration_id)
                    );
                    return;
                }
            };
            for (i, entry) in entries.into_iter().enumerate() {
                let index = base + from + i as u64;
                let res = match entry {
                    PaxosEntry::Decided(e) => self.apply_one(index, e),
                    PaxosEntry::StopSign(ss, true) => {
                        // The configuration ends here; the next one has its own log.
                        if let Err(err) = self.apply_stop_sign(index, ss) {
                            panic!("applying the stop sign at {index} failed: {err}");
                        }
                        return;
                    }
                    other => {
                        tracing::error!("entry {index} is not applicable here: {other:?}");
                        return;
                    }
                };
                if let Err(err) = res {
                    // A state machine that cannot apply must not go on: stop here so that
                    // nothing is answered from a state that skipped one.
                    panic!("applying entry {index} failed: {err}");
                }
            }
        }
    }

    fn apply_one(&mut self, index: u64, entry: LogEntry) -> Result<()> {
        let commands: Vec<&crate::machine::Command> = entry.commands.iter().collect();
        let results = self.sm.apply(index, &commands)?;
        let bytes = entry.commands.iter().map(|c| c.size() as u64).sum::<u64>() + 24;
        self.trimmer.applied(index, bytes);
        for (cmd, result) in entry.commands.iter().zip(results) {
            // Only a waiter for this very command: a waiter for another command under the
            // same session (a reused seq) must wait for its own entry, which refuses it,
            // instead of taking this one's answer (a retry's duplicate entry can be decided
            // after the original answered and the seq was reused).
            let key = (cmd.machine, cmd.client_id, cmd.seq);
            if self.writes.get(&key).is_some_and(|w| w.cmd == *cmd) {
                for (reply, _) in self.writes.remove(&key).into_iter().flat_map(|w| w.replies) {
                    let _ = reply.send(Ok(result.clone()));
                }
            }
        }
        Ok(())
    }

    /// Records the next membership (atomically with the applied index) and switches to it.
    fn apply_stop_sign(&mut self, index: u64, ss: StopSign) -> Result<()> {
        let members = Membership::decode_members(
            ss.metadata.as_deref(),
            &ss.next_config.nodes,
            super::solo::paxos_nodes,
        )?;
        let next = Membership {
            config_id: ss.next_config.configuration_id,
            base: index + 1,
            members,
        };
        self.sm.apply_membership(index, &next)?;
        // The switch discards the old configuration's log: every machine's state must
        // outlive it, as before a trim (found by the simulation: a SQL state whose
        // unsynced commits a machine crash lost needed entries of the discarded log).
        self.sm.make_durable()?;
        tracing::info!(
            config = next.config_id,
            base = next.base,
            members = %next.describe(),
            "membership change applied"
        );
        self.enter(next);
        Ok(())
    }
}
