//! The core's side of log compaction and state transfer: trimming its own log, going
//! silent to fetch a peer's state when it fell behind that peer's trimmed log, and
//! installing the fetched state. (The policy is in [`super::compaction`], the streaming in
//! `crate::transfer`.)
//!
//! All indexes here are global (counting across configurations) unless named local.
//!
//! Invariants:
//! - nothing is trimmed past the applied index, past what the [`compaction::Trimmer`]
//!   allows, or (by a peer's oversized sync) past a transfer hold;
//! - a node fetching a state is silent for consensus and answers no request; while it
//!   fetches, it tells every member the index the state is at or above
//!   ([`compaction::Note::Fetching`]), so that they hold their logs from there;
//! - a fetched state is installed only if it is ahead of this node's, and then OmniPaxos
//!   restarts on a log that starts where the state ends.

use super::{compaction, Core};
use crate::command::NodeId;
use crate::error::{Error, Result};
use crate::storage::LogStorage;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl<S: LogStorage> Core<S> {
    /// Why this node does not serve requests now, if it does not.
    pub(super) fn silenced(&self) -> Option<Error> {
        if let Some(why) = &self.removed {
            return Some(Error::Unavailable(why.clone()));
        }
        self.catching_up.map(|(p, _, _)| {
            Error::Unavailable(format!(
                "this node is catching up by fetching node {p}'s state; another node can \
                 serve this now"
            ))
        })
    }

    /// Trims the log as far as the compaction policy (and the transfer holds) allow.
    pub(super) fn maybe_trim(&mut self, now: Instant) {
        if self.silenced().is_some() {
            return;
        }
        let base = self.membership.base;
        let applied = self.sm.applied_index();
        let compacted = self.global(self.paxos.get_compacted_idx());
        let id = self.cfg.id;
        let peers = self
            .membership
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&p| p != id);
        if let Some(to) = self
            .trimmer
            .target(&self.cfg.compaction, peers, applied, compacted, now)
        {
            // Every machine's applied state must outlive the entries trimmed here.
            if let Err(e) = self.sm.make_durable() {
                tracing::error!("not trimming the log: the applied state is not durable: {e}");
                return;
            }
            self.paxos
                .handle_incoming(compaction::local_trim(id, to - base));
            let now_compacted = self.global(self.paxos.get_compacted_idx());
            if now_compacted < to {
                tracing::warn!(to, now_compacted, "log trim did not take effect");
            } else {
                tracing::debug!(from = compacted, to, "log trimmed");
            }
            self.trimmer.trimmed(now_compacted);
        }
    }

    /// A message to `peer` was over the frame limit: the log it needs (a sync from its
    /// decided index) is too long to send. Trim ours up to what this node applied — only
    /// peers that are behind needed those entries, and they get the state instead — but
    /// not past a transfer hold (another peer's fetched state is synced from there), and
    /// tell `peer` to fetch our state.
    pub(super) fn too_far_behind(&mut self, peer: NodeId) {
        if self.silenced().is_some() {
            return;
        }
        let base = self.membership.base;
        let applied = self.sm.applied_index();
        let to = self
            .trimmer
            .hold_floor()
            .map_or(applied, |h| h.min(applied));
        let compacted = self.global(self.paxos.get_compacted_idx());
        if to > compacted {
            // Every machine's applied state must outlive the entries trimmed here.
            if let Err(e) = self.sm.make_durable() {
                tracing::error!("not trimming the log: the applied state is not durable: {e}");
                return;
            }
            self.paxos
                .handle_incoming(compaction::local_trim(self.cfg.id, to - base));
            let now_compacted = self.global(self.paxos.get_compacted_idx());
            self.trimmer.trimmed(now_compacted);
            tracing::warn!(
                peer,
                from = compacted,
                to = now_compacted,
                "log trimmed so that a peer too far behind catches up by a state transfer"
            );
        }
        let compacted = self.global(self.paxos.get_compacted_idx());
        self.net
            .send_note(peer, compaction::Note::NeedState { compacted });
    }

    /// A peer's log (or configuration) starts at `compacted`, above our decided index:
    /// fetch its state, and ask every member to hold its log from `compacted` meanwhile
    /// (the state fetched is at or above it; see `compaction`, "Transfer holds").
    pub(super) fn need_state(&mut self, from: NodeId, compacted: u64, now: Instant) {
        let decided = self.global(self.paxos.get_decided_idx());
        if decided >= compacted || self.silenced().is_some() {
            return;
        }
        if self.reopen.is_none() {
            tracing::error!(
                from,
                "behind a compacted log, but this node cannot fetch a state"
            );
            return;
        }
        tracing::warn!(
            from,
            decided,
            peer_compacted = compacted,
            "this node is behind the peer's compacted log: fetching its state"
        );
        self.catching_up = Some((from, now, compacted));
        if let Some(m) = &self.metrics {
            m.transfers_started.fetch_add(1, Relaxed);
            m.transfer_fetching.store(1, Relaxed);
            m.event(
                "transfer",
                format!("behind node {from}'s trimmed log (decided {decided}): fetching its state"),
            );
        }
        self.fail_waiters();
        self.announce_fetch();
        self.net.fetch_state(from);
    }

    /// Tells every other member the index the state this node fetches is at or above
    /// ([`compaction::Note::Fetching`]), while it fetches one (unless its policy has no
    /// transfer holds: it then neither asks for them nor grants them).
    pub(super) fn announce_fetch(&self) {
        let Some((_, _, index)) = self.catching_up else {
            return;
        };
        if self.cfg.compaction.hold_bytes == 0 {
            return;
        }
        for p in (self.membership.ids().into_iter()).filter(|&p| p != self.cfg.id) {
            self.net.send_note(p, compaction::Note::Fetching { index });
        }
    }

    /// Answers every waiting request: this node stops serving for now.
    pub(super) fn fail_waiters(&mut self) {
        let why = self.silenced().map_or_else(
            || "this node stopped serving".to_string(),
            |e| e.to_string(),
        );
        self.give_up_waiters(&why);
    }

    /// Answers every waiting write "outcome unknown" and every waiting read
    /// "unavailable", saying `why`: this node cannot serve them.
    pub(super) fn give_up_waiters(&mut self, why: &str) {
        for (_, w) in std::mem::take(&mut self.writes) {
            for (reply, _) in w.replies {
                let _ = reply.send(Err(Error::OutcomeUnknown(format!(
                    "{why}; the write was in flight: retry with the same session to learn \
                     its outcome"
                ))));
            }
        }
        self.to_propose.clear();
        self.fail_reads(why);
    }

    /// The state fetch ended: install the staged state and restart OmniPaxos on a log that
    /// starts where it ends (in the configuration the state records).
    pub(super) fn state_fetched(&mut self, res: Result<u64>) {
        let Some((from, started, _)) = self.catching_up.take() else {
            return;
        };
        if let Some(m) = &self.metrics {
            m.transfer_fetching.store(0, Relaxed);
        }
        let current = self.sm.applied_index();
        let res = res.and_then(|staged| {
            if staged <= current {
                return Err(Error::Internal(format!(
                    "the fetched state (applied {staged}) is not ahead of this node's ({current})"
                )));
            }
            self.sm.install_staged()
        });
        let applied = match res {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    from,
                    "state transfer failed: {e}; retrying when asked again"
                );
                if let Some(m) = &self.metrics {
                    m.transfers_failed.fetch_add(1, Relaxed);
                    m.event(
                        "transfer",
                        format!("fetching node {from}'s state failed: {e}"),
                    );
                }
                return;
            }
        };
        if let Some(m) = &self.metrics {
            m.transfers_installed.fetch_add(1, Relaxed);
            m.event(
                "transfer",
                format!("installed node {from}'s state at applied index {applied}"),
            );
        }
        // The state is installed (durably); a failure from here on is finished by the
        // next start, which rebuilds the log from the state machine's position.
        let membership = match self.sm.membership() {
            Ok(m) => m.unwrap_or_else(|| self.membership.clone()),
            Err(e) => panic!("reading the installed membership failed: {e}"),
        };
        tracing::info!(
            from,
            applied,
            config = membership.config_id,
            secs = started.elapsed().as_secs_f64(),
            "state installed; following the log from here"
        );
        self.enter(membership);
    }
}
