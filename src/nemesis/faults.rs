//! The faults the nemesis injects, and how each is applied and healed.
//!
//! Every fault is applied to the current cluster (the leader is asked for where a fault
//! targets it) and healed by [`heal_all`], which restarts killed nodes, resumes paused ones
//! and flushes the firewall chain. Partition shapes (links cut in both directions; `L` is
//! the leader):
//!
//! - `partition-leader`: L cut from everyone;
//! - `partition-halves`: a random minority cut from the majority;
//! - `quorum-loss`: one follower H stays connected to everyone, every other link is cut
//!   (no node but H is quorum-connected, and L loses its quorum on 5 nodes);
//! - `constrained-election`: L keeps a link to one follower F only, F is connected to L
//!   only, the rest stay connected among themselves (a new leader must come from them);
//! - `chained`: only the link between L and one follower is cut (L — X — F: F hears of L
//!   only through others).
//!
//! The `membership` family changes the cluster's members while the workload runs (run by
//! [`super::membership`], not by [`apply`]); a change is made while the round's other
//! fault, if any, hits the cluster:
//!
//! - `replace`: a fresh node (next id, new ports, empty data directory) is started with
//!   `--join`, and one change replaces a member by it (the leader one time in three); the
//!   removed node is stopped once the change is applied;
//! - `shrink-grow`: one change removes a member (the leader one time in three), a second
//!   adds a fresh node, so the cluster keeps its size.
//!
//! The `transfer` family (`kill-transfer-sender`, `pause-transfer-sender`,
//! `pause-past-retention`) waits for the moment it aims at — a state transfer under way, a
//! follower behind the others' trimmed logs — and is run by [`super::transfer_faults`].
//! It needs the tiny log budget and is not part of `all`.

use super::cluster::ProcCluster;
use super::firewall::{Endpoint, Firewall};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    KillRandom,
    KillLeader,
    KillMajority,
    PauseRandom,
    PauseLeader,
    PartitionLeader,
    PartitionHalves,
    QuorumLoss,
    ConstrainedElection,
    Chained,
    Replace,
    ShrinkGrow,
    KillTransferSender,
    PauseTransferSender,
    PausePastRetention,
}

/// The fault families that `--nemesis` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Kill,
    Pause,
    Partition,
    Membership,
    /// Aimed at state transfers ([`super::transfer_faults`]); needs the tiny log budget.
    Transfer,
}

impl Fault {
    /// Every fault, the `transfer` family included.
    pub const ALL: [Fault; 15] = [
        Fault::KillRandom,
        Fault::KillLeader,
        Fault::KillMajority,
        Fault::PauseRandom,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::PartitionHalves,
        Fault::QuorumLoss,
        Fault::ConstrainedElection,
        Fault::Chained,
        Fault::Replace,
        Fault::ShrinkGrow,
        Fault::KillTransferSender,
        Fault::PauseTransferSender,
        Fault::PausePastRetention,
    ];

    /// What `--nemesis all` means: every fault that runs under any log budget (all but
    /// the `transfer` family, which needs the tiny one).
    pub fn all() -> impl Iterator<Item = Fault> {
        Fault::ALL
            .into_iter()
            .filter(|f| f.family() != Family::Transfer)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillRandom => "kill-random",
            Fault::KillLeader => "kill-leader",
            Fault::KillMajority => "kill-majority",
            Fault::PauseRandom => "pause-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::QuorumLoss => "quorum-loss",
            Fault::ConstrainedElection => "constrained-election",
            Fault::Chained => "chained",
            Fault::Replace => "replace",
            Fault::ShrinkGrow => "shrink-grow",
            Fault::KillTransferSender => "kill-transfer-sender",
            Fault::PauseTransferSender => "pause-transfer-sender",
            Fault::PausePastRetention => "pause-past-retention",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Fault::KillRandom | Fault::KillLeader | Fault::KillMajority => Family::Kill,
            Fault::PauseRandom | Fault::PauseLeader => Family::Pause,
            Fault::Replace | Fault::ShrinkGrow => Family::Membership,
            Fault::KillTransferSender | Fault::PauseTransferSender | Fault::PausePastRetention => {
                Family::Transfer
            }
            _ => Family::Partition,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Partition => "partition",
            Family::Membership => "membership",
            Family::Transfer => "transfer",
        }
    }
}

/// Parses `--nemesis`: a comma-separated list of families (`kill`, `pause`, `partition`,
/// `membership`, `transfer`), single faults (`kill-leader`, `quorum-loss`, ...), `all`
/// (every family but `transfer`), or `none`.
pub fn parse_faults(spec: &str) -> Result<BTreeSet<Fault>, String> {
    let mut out = BTreeSet::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "all" => out.extend(Fault::all()),
            "kill" | "pause" | "partition" | "membership" | "transfer" => {
                out.extend(Fault::ALL.into_iter().filter(|f| f.family().name() == word))
            }
            _ => match Fault::ALL.into_iter().find(|f| f.name() == word) {
                Some(f) => {
                    out.insert(f);
                }
                None => {
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    return Err(format!(
                        "unknown nemesis {word:?}; use all, none, kill, pause, partition, membership, transfer or one of {}",
                        names.join(", ")
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// A node's peer endpoint, for the firewall.
fn peer(c: &ProcCluster, id: u64) -> Endpoint {
    let n = c.node(id);
    Endpoint {
        ip: n.ip,
        port: n.peer_port,
    }
}

/// Cuts every link between a node of `a` and a node of `b`.
fn cut_between(c: &ProcCluster, fw: &Firewall, a: &[u64], b: &[u64]) -> Result<(), String> {
    for &x in a {
        for &y in b {
            if x != y {
                fw.cut(peer(c, x), peer(c, y))?;
            }
        }
    }
    Ok(())
}

/// Applies `fault`; returns a description of what was done (for the event log).
pub async fn apply<R: Rng>(
    fault: Fault,
    c: &mut ProcCluster,
    fw: Option<&Firewall>,
    rng: &mut R,
) -> Result<String, String> {
    if fault.family() == Family::Membership || fault.family() == Family::Transfer {
        return Err(format!("{fault} is made by its own procedure, not here"));
    }
    let ids = c.ids();
    let n = ids.len();
    // The leader, or a random live node when none is known.
    let leader = match c.leader().await {
        Some(l) => l,
        None => *c.live().choose(rng).or(ids.choose(rng)).expect("nodes"),
    };
    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    match fault {
        Fault::KillRandom | Fault::KillLeader => {
            // A random node that is running (the round's other fault may have killed one).
            let running = c.running();
            let target = if fault == Fault::KillLeader {
                leader
            } else {
                *running.choose(rng).or(ids.choose(rng)).unwrap()
            };
            c.kill(target)?;
            Ok(format!("killed node {target} (leader was {leader})"))
        }
        Fault::KillMajority => {
            let mut victims = ids.clone();
            victims.shuffle(rng);
            victims.truncate(n / 2 + 1);
            victims.sort();
            // Every victim is killed even if one fails: the others are down either way.
            let failed: Vec<String> = victims.iter().filter_map(|&v| c.kill(v).err()).collect();
            if !failed.is_empty() {
                return Err(format!(
                    "killing {victims:?} (leader was {leader}): {}",
                    failed.join("; ")
                ));
            }
            Ok(format!("killed nodes {victims:?} (leader was {leader})"))
        }
        Fault::PauseRandom | Fault::PauseLeader => {
            // A random node that is running and not paused (the round's other fault may
            // have killed one).
            let live = c.live();
            let target = if fault == Fault::PauseLeader {
                leader
            } else {
                *live.choose(rng).or(ids.choose(rng)).unwrap()
            };
            c.pause(target)?;
            Ok(format!("paused node {target} (leader was {leader})"))
        }
        _ => {
            let fw = fw.ok_or("no firewall")?;
            let mut others = others;
            others.shuffle(rng);
            let what = match fault {
                Fault::PartitionLeader => {
                    cut_between(c, fw, &[leader], &others)?;
                    format!("isolated leader {leader}")
                }
                Fault::PartitionHalves => {
                    let mut all = ids.clone();
                    all.shuffle(rng);
                    let (minority, majority) = all.split_at(n / 2);
                    cut_between(c, fw, minority, majority)?;
                    format!("split {minority:?} | {majority:?} (leader {leader})")
                }
                Fault::QuorumLoss => {
                    let hub = others[0];
                    let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != hub).collect();
                    for (i, &x) in rest.iter().enumerate() {
                        cut_between(c, fw, &[x], &rest[i + 1..])?;
                    }
                    format!("quorum loss: only node {hub} connected to all (leader {leader})")
                }
                Fault::ConstrainedElection => {
                    let f = others[0];
                    let rest = &others[1..];
                    cut_between(c, fw, &[leader, f], rest)?;
                    format!("constrained election: leader {leader} linked to {f} only, {f} to {leader} only, {rest:?} among themselves")
                }
                Fault::Chained => {
                    let f = others[0];
                    cut_between(c, fw, &[leader], &[f])?;
                    format!("chained: link {leader} - {f} cut")
                }
                _ => unreachable!(),
            };
            Ok(what)
        }
    }
}

/// Undoes every fault: restarts killed nodes (but those in `hold`: a node an unresolved
/// membership change may have removed, which would refuse to start), resumes paused ones,
/// removes all cuts. Returns a description of what was healed (empty if nothing was
/// broken).
pub fn heal_all(
    c: &mut ProcCluster,
    fw: Option<&Firewall>,
    hold: &[u64],
) -> Result<String, String> {
    let mut parts = Vec::new();
    let paused = c.paused();
    for &id in &paused {
        c.resume(id)?;
    }
    if !paused.is_empty() {
        parts.push(format!("resumed {paused:?}"));
    }
    let mut killed = c.killed();
    killed.retain(|id| !hold.contains(id));
    for &id in &killed {
        c.spawn(id)
            .map_err(|e| format!("restarting node {id}: {e}"))?;
    }
    if !killed.is_empty() {
        parts.push(format!("restarted {killed:?}"));
    }
    if let Some(fw) = fw {
        let rules = fw.rules();
        fw.heal()?;
        if rules > 0 {
            parts.push(format!("removed {rules} firewall rules"));
        }
    }
    Ok(parts.join(", "))
}
