//! Membership changes seen from the core: proposing one, and entering a new membership
//! (after applying its stop sign, or after installing a state that records it).
//!
//! A change is proposed as an OmniPaxos stop sign naming the next configuration, with the
//! members' addresses as metadata; while it is pending, OmniPaxos refuses new entries, so
//! writes wait (they are re-proposed in the next configuration). One change at a time,
//! and only while a leader is known (see `propose_change`).
//! The caller is answered when this node applies the stop sign; after the request timeout
//! it is told the outcome is unknown (the change may still be decided).

use super::{Core, Event, PendingChange};
use crate::command::NodeId;
use crate::config::Member;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::storage::LogStorage;
use omnipaxos::ClusterConfig;
use std::time::Instant;
use tokio::sync::oneshot;

impl<S: LogStorage> Core<S> {
    /// Proposes adding `add` and removing `remove`.
    pub(super) fn propose_change(
        &mut self,
        add: Vec<Member>,
        remove: Vec<NodeId>,
        reply: oneshot::Sender<Result<Membership>>,
        now: Instant,
    ) {
        if let Some(e) = self.silenced() {
            let _ = reply.send(Err(e));
            return;
        }
        if self.change.is_some() {
            let _ = reply.send(Err(Error::Unavailable(
                "another membership change is in progress on this node; retry when it ends".into(),
            )));
            return;
        }
        // OmniPaxos keeps a change proposed where no leader is known in a local buffer and
        // proposes it only if this node becomes leader, maybe much later (nemesis). Then
        // "not decided within the timeout" would not mean "dropped". So: only with a
        // leader, to which it is forwarded (or which this node is).
        if self.paxos.get_current_leader().is_none() {
            let _ = reply.send(Err(Error::Unavailable(format!(
                "no leader is known yet in configuration {}; nothing was changed, retry",
                self.membership.config_id
            ))));
            return;
        }
        let members = match self.membership.changed(&add, &remove) {
            Ok(m) => m,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let target = self.membership.config_id + 1;
        let next = ClusterConfig {
            configuration_id: target,
            nodes: super::solo::paxos_nodes(&members.iter().map(|m| m.id).collect::<Vec<_>>()),
            flexible_quorum: None,
        };
        let metadata = Membership::encode_members(&members);
        if let Err(e) = self.paxos.reconfigure(next.clone(), Some(metadata.clone())) {
            let _ = reply.send(Err(Error::Unavailable(format!(
                "a membership change is already being decided: {e:?}"
            ))));
            return;
        }
        tracing::info!(
            target,
            members = %Membership { config_id: target, base: 0, members }.describe(),
            "membership change proposed"
        );
        self.change = Some(PendingChange {
            target,
            next,
            metadata,
            proposed_at: now,
            reply,
            deadline: now + self.cfg.request_timeout,
        });
    }

    /// Times out a pending change, or proposes it again when it may have been lost.
    ///
    /// A follower forwards the stop sign to the leader it knows once; OmniPaxos never
    /// resends it, and drops it where it lands on a node that is no longer leader and
    /// knows none (it keeps it there in case it becomes leader). So, like a write, an
    /// undecided change is proposed again after `repropose_after`. That is safe: every
    /// copy names the same configuration, a node that accepted a stop sign refuses
    /// another (`reconfigure` errs, ignored here), and only one stop sign can be decided
    /// in a configuration.
    pub(super) fn tend_change(&mut self, now: Instant) {
        if let Some(c) = self.change.as_mut() {
            let due = now.duration_since(c.proposed_at) >= self.cfg.repropose_after;
            if c.deadline > now && due && self.paxos.get_current_leader().is_some() {
                c.proposed_at = now;
                let (next, metadata) = (c.next.clone(), c.metadata.clone());
                if self.paxos.reconfigure(next, Some(metadata)).is_ok() {
                    tracing::info!(target = c.target, "membership change proposed again");
                }
            }
        }
        if self.change.as_ref().is_some_and(|c| c.deadline <= now) {
            let c = self.change.take().expect("checked");
            let _ = c.reply.send(Err(Error::OutcomeUnknown(
                "the membership change was not decided within the request timeout; it may \
                 still be: check `paxosdb status` before retrying"
                    .into(),
            )));
        }
    }

    /// Switches to membership `next`: this node's OmniPaxos instance restarts in that
    /// configuration, or the node stops serving if it is no longer a member.
    pub(super) fn enter(&mut self, next: Membership) {
        if let Some(m) =
            (self.metrics.as_ref()).filter(|_| next.config_id != self.membership.config_id)
        {
            m.event(
                "membership",
                format!(
                    "configuration {}: members {}",
                    next.config_id,
                    next.describe()
                ),
            );
        }
        self.membership = next.clone();
        self.net.set_membership(&next);
        self.contact.restart();
        if let Some(c) = self.change.take() {
            if c.target <= next.config_id {
                let _ = c.reply.send(Ok(next.clone()));
            } else {
                self.change = Some(c);
            }
        }
        if !next.contains(self.cfg.id) {
            self.removed = Some(removed_message(self.cfg.id, &next));
            tracing::warn!("{}", self.removed.as_deref().unwrap_or_default());
            if let Some(c) = self.change.take() {
                let _ = c.reply.send(Err(Error::Unavailable(
                    self.removed.clone().unwrap_or_default(),
                )));
            }
            self.fail_waiters();
            return;
        }
        if let Err(e) = self.rebuild() {
            panic!(
                "restarting OmniPaxos in configuration {} failed: {e}",
                next.config_id
            );
        }
        // What was proposed in the old configuration and not decided goes again.
        for (key, w) in self.writes.iter_mut() {
            if w.proposed_at.take().is_some() {
                self.to_propose.push(*key);
            }
        }
        self.reads_enter_config();
    }
}

/// What a removed node says when asked to serve.
pub fn removed_message(id: NodeId, m: &Membership) -> String {
    format!(
        "node {id} was removed from the cluster in configuration {} (members: {}); it no \
         longer serves requests. To reuse it, start it with an empty data directory and \
         --join, then `paxosdb cluster add-node`",
        m.config_id,
        m.describe()
    )
}

impl Event {
    /// A membership change request.
    pub fn change(
        add: Vec<Member>,
        remove: Vec<NodeId>,
    ) -> (Event, oneshot::Receiver<Result<Membership>>) {
        let (reply, rx) = oneshot::channel();
        (Event::ChangeMembership { add, remove, reply }, rx)
    }
}
