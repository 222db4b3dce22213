//! The membership nemesis: changes the cluster's members while the workload runs and
//! while the round's other fault (a kill, a pause, a partition) hits the cluster.
//!
//! - `replace`: a fresh node (the next unused id, new ports, an empty data directory) is
//!   started with `--join` through a live member other than the one to go, and one change
//!   replaces a member by it: a random member, the leader one time in three.
//! - `shrink-grow`: one change removes a member (the leader one time in three), and once
//!   it is applied a second change adds a fresh node, so the cluster keeps its size. When
//!   an earlier shrink-grow could not add its node (the cluster is below its initial
//!   size), it adds one instead.
//!
//! A change goes to the members (the leader first) through
//! [`Client::change_membership`]. How it ends:
//!
//! - *applied* (acknowledged): the removed node's process is stopped at once, the new node
//!   becomes a member, and the workers' clients switch to the new members;
//! - *unknown* (`OutcomeUnknown`, or no answer in time): the member it may remove is not
//!   restarted by the heal; after the heal the change is resolved from the nodes' status
//!   — a newer configuration means it happened; if a majority of the old members still
//!   report the old one, a marker write is made, and if they still do after it was
//!   acknowledged, the old configuration's log went on past the change (a change in the
//!   log holds back every write until it is decided): it is settled as not applied, and
//!   its new node is stopped;
//! - *failed* (a clean error: it did not happen): recorded with the error; the new node is
//!   stopped. Should the status nevertheless show the change, that is an anomaly and makes
//!   the run invalid.
//!
//! Every change is resolved before the next fault. The nemesis also takes in any newer
//! configuration the nodes report before each fault and each heal, so a node removed by
//! a change it did not expect is never restarted, and a node added by one is restarted
//! (counted as `late`: an OmniPaxos follower that knows no leader keeps a change in a
//! buffer, not in the log, and proposes it if it becomes leader in that configuration,
//! possibly long after its caller was told the outcome is unknown).

use super::cluster::{MemberState, ProcCluster};
use super::faults::Fault;
use super::workload::Shared;
use super::Events;
use crate::client::{Client, ClientOptions};
use crate::error::Error;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How long a change may take before its outcome counts as unknown (the servers answer
/// `OutcomeUnknown` after their request timeout, 5 s by default).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long resolving an unknown change may take on a healed cluster.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The key of the resolution's marker writes (not part of the checked history).
const MARKER_KEY: &[u8] = b"nemesis/membership-marker";

/// The membership changes of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStats {
    /// Changes sent.
    pub attempted: usize,
    /// Acknowledged: the contacted node applied them.
    pub applied: usize,
    /// Outcome unknown, then found applied.
    pub unknown_applied: usize,
    /// Outcome unknown, then found not to have happened.
    pub unknown_not_applied: usize,
    /// Answered with an error (they did not happen).
    pub failed: usize,
    /// Answered with an error, yet applied according to the nodes: an anomaly.
    pub failed_but_applied: usize,
    /// Outcome unknown and still undecided after the heal.
    pub unresolved: usize,
    /// Changes settled as not applied (unknown, then not applied) that took effect later
    /// all the same: seen when the nodes report a configuration that adds a node the
    /// nemesis had stopped as never added.
    #[serde(default)]
    pub late: usize,
    /// Nodes that became members during the run.
    pub added: Vec<u64>,
    /// Members removed during the run.
    pub removed: Vec<u64>,
    /// The members and configuration at the end.
    pub final_members: Vec<u64>,
    pub final_config: u32,
}

impl MembershipStats {
    /// Changes that took effect.
    pub fn took_effect(&self) -> usize {
        self.applied + self.unknown_applied + self.failed_but_applied + self.late
    }

    /// One line for the summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "membership changes: {} applied, {} unknown→resolved ({} applied, {} not), {} failed",
            self.applied,
            self.unknown_applied + self.unknown_not_applied,
            self.unknown_applied,
            self.unknown_not_applied,
            self.failed
        );
        if self.late > 0 {
            s += &format!(
                ", {} applied LATE (after being settled as not applied)",
                self.late
            );
        }
        if self.unresolved > 0 {
            s += &format!(", {} UNRESOLVED", self.unresolved);
        }
        if self.failed_but_applied > 0 {
            s += &format!(
                ", ANOMALY: {} answered with an error but applied",
                self.failed_but_applied
            );
        }
        s += &format!(
            "; added {:?}, removed {:?}; members {:?} in configuration {}",
            self.added, self.removed, self.final_members, self.final_config
        );
        s
    }
}

/// How one change ended, as its caller saw it.
#[derive(Clone, Debug)]
enum Answer {
    Applied { config: u32, members: Vec<u64> },
    Unknown(String),
    Failed(String),
}

/// One membership change on its way.
struct Change {
    what: String,
    add: Option<u64>,
    remove: Option<u64>,
    /// The configuration in force when it was sent, and its members.
    before: u32,
    old_members: Vec<u64>,
    task: JoinHandle<Answer>,
    answer: Option<Answer>,
}

/// A membership fault in progress: its change on the way, and for `shrink-grow` whether
/// the node to add back is still to come.
pub(super) struct InFlight {
    change: Option<Change>,
    grow_pending: bool,
}

impl InFlight {
    /// The member a change whose outcome is not known yet may remove: the heal must not
    /// restart it (a removed node refuses to start).
    pub(super) fn hold(&self) -> Vec<u64> {
        match &self.change {
            Some(ch) if !matches!(ch.answer, Some(Answer::Failed(_))) => {
                ch.remove.into_iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The leader, or a member, with the members in the order to contact them.
async fn leader_and_members(c: &ProcCluster) -> (Option<u64>, Vec<u64>) {
    let members = c.members();
    let leader = c.leader().await.filter(|l| members.contains(l));
    let mut order = members;
    if let Some(l) = leader {
        order.retain(|&m| m != l);
        order.insert(0, l);
    }
    (leader, order)
}

/// A member to remove: the leader one time in three, else a random member.
fn victim<R: Rng>(leader: Option<u64>, members: &[u64], rng: &mut R) -> u64 {
    match leader {
        Some(l) if rng.gen_ratio(1, 3) => l,
        _ => *members.choose(rng).expect("members"),
    }
}

/// Starts a fresh node joining through a running member other than `avoid`.
fn start_joiner(c: &mut ProcCluster, order: &[u64], avoid: Option<u64>) -> Result<u64, String> {
    let live = c.live();
    let via = order
        .iter()
        .copied()
        .find(|m| Some(*m) != avoid && live.contains(m))
        .or_else(|| order.iter().copied().find(|m| Some(*m) != avoid))
        .ok_or("no member to join through")?;
    c.add_joiner(via)
        .map_err(|e| format!("starting a new node: {e}"))
}

/// Sends a change adding `add` and removing `remove` to the members (leader first).
fn send(
    c: &ProcCluster,
    order: &[u64],
    add: Option<u64>,
    remove: Option<u64>,
    what: String,
) -> Result<Change, String> {
    let endpoints: Vec<String> = order
        .iter()
        .map(|&id| c.node(id).client_addr.clone())
        .collect();
    let client = Client::with_options(
        &endpoints,
        ClientOptions {
            timeout: CHANGE_TIMEOUT,
            // Longer than the servers' request timeout: they say when it is unknown.
            attempt_timeout: Duration::from_secs(8),
            tls: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let add_arg: Vec<(u64, String)> = add.iter().map(|&id| (id, c.node(id).peer_addr())).collect();
    let remove_arg: Vec<u64> = remove.into_iter().collect();
    let task = tokio::spawn(async move {
        let r = tokio::time::timeout(
            CHANGE_TIMEOUT,
            client.change_membership(&add_arg, &remove_arg),
        )
        .await;
        match r {
            Err(_) => Answer::Unknown(format!("no answer within {CHANGE_TIMEOUT:?}")),
            Ok(Ok(r)) => Answer::Applied {
                config: r.config_id,
                members: r.members.iter().map(|m| m.id).collect(),
            },
            // A refusal: nothing was proposed.
            Ok(Err(e @ (Error::InvalidInput(_) | Error::Unavailable(_)))) => {
                Answer::Failed(e.to_string())
            }
            Ok(Err(e)) => Answer::Unknown(e.to_string()),
        }
    });
    Ok(Change {
        what,
        add,
        remove,
        before: c.config_id,
        old_members: c.members(),
        task,
        answer: None,
    })
}

/// Begins membership fault `fault`: starts the new node (replace), picks the member to
/// remove and sends the change. Returns it with a description for the event log.
pub(super) async fn begin<R: Rng>(
    fault: Fault,
    c: &mut ProcCluster,
    events: &Events,
    rng: &mut R,
) -> Result<(InFlight, String), String> {
    let (leader, order) = leader_and_members(c).await;
    if order.is_empty() {
        return Err("no members".into());
    }
    let old = victim(leader, &order, rng);
    let role = if Some(old) == leader {
        " (the leader)"
    } else {
        ""
    };
    match fault {
        Fault::Replace => {
            let new = start_joiner(c, &order, Some(old))?;
            let what = format!(
                "replace node {old}{role} by new node {new} (configuration {}, members {:?})",
                c.config_id,
                c.members()
            );
            let change = send(c, &order, Some(new), Some(old), what.clone()).inspect_err(|_| {
                c.retire(new);
            })?;
            events.membership.lock().unwrap().attempted += 1;
            Ok((
                InFlight {
                    change: Some(change),
                    grow_pending: false,
                },
                what,
            ))
        }
        Fault::ShrinkGrow if order.len() < c.size => {
            // An earlier shrink-grow could not add its node: grow back first.
            let mut f = InFlight {
                change: None,
                grow_pending: false,
            };
            grow(c, events, &mut f).await;
            let what = match &f.change {
                Some(ch) => format!("grow back to {} members: {}", c.size, ch.what),
                None => return Err("could not start a node to grow back".into()),
            };
            Ok((f, what))
        }
        Fault::ShrinkGrow => {
            let what = format!(
                "remove node {old}{role}, then add a new node (configuration {}, members {:?})",
                c.config_id,
                c.members()
            );
            let change = send(c, &order, None, Some(old), what.clone())?;
            events.membership.lock().unwrap().attempted += 1;
            Ok((
                InFlight {
                    change: Some(change),
                    grow_pending: true,
                },
                what,
            ))
        }
        _ => Err(format!("{fault} is not a membership fault")),
    }
}

/// Takes in a membership: updates the cluster's member states (stopping removed nodes) and the
/// workers' endpoints. Returns what changed.
fn take_in(
    c: &mut ProcCluster,
    shared: &Shared,
    events: &Events,
    config: u32,
    members: &[u64],
) -> String {
    let before: Vec<u64> = c.members();
    let notes = c.set_membership(config, members);
    let after = c.members();
    {
        let mut st = events.membership.lock().unwrap();
        st.added
            .extend(after.iter().filter(|id| !before.contains(id)).copied());
        st.removed
            .extend(before.iter().filter(|id| !after.contains(id)).copied());
    }
    shared.endpoints.set(c.endpoints());
    notes.join(", ")
}

/// Takes in a newer configuration than the nemesis knows, if a node reports one (a
/// change it did not expect to happen, or not yet).
pub(super) async fn sync(c: &mut ProcCluster, shared: &Shared, events: &Events) {
    if let Some((config, members)) = c.reported_membership().await {
        if config > c.config_id {
            let revived = members.iter().any(|&id| {
                (id as usize) <= c.nodes.len() && c.node(id).member_state == MemberState::Retired
            });
            let notes = take_in(c, shared, events, config, &members);
            let late = if revived {
                events.membership.lock().unwrap().late += 1;
                "LATE change: "
            } else {
                ""
            };
            events.log(
                "membership",
                format!(
                    "{late}nodes report configuration {config} with members {members:?}: {notes}"
                ),
            );
        }
    }
    // A new node asks only the node it joins through whether it was added: if that node
    // is gone (removed since), it would wait forever. Start it again through a member.
    let stuck: Vec<u64> = c
        .nodes
        .iter()
        .filter(|n| n.member_state != MemberState::Retired && n.child.is_some() && !n.paused)
        .filter(|n| n.join.as_deref().is_some_and(|j| !c.joinable(j)))
        .map(|n| n.id)
        .collect();
    for id in stuck {
        if c.status(id).await.is_none() {
            if let Err(e) = c.kill(id) {
                events.log("error", format!("restarting stuck joiner {id}: {e}"));
            }
            match c.spawn(id) {
                Ok(()) => events.log(
                    "membership",
                    format!(
                        "restarted node {id}: it was joining through a node that is gone; now \
                         through {}",
                        c.node(id).join.as_deref().unwrap_or("?")
                    ),
                ),
                Err(e) => events.log("error", format!("restarting node {id}: {e}")),
            }
        }
    }
}

/// Waits for the change's answer until `until`. An applied change is taken in at once
/// (the removed node stopped), and for shrink-grow the node to add back is started and
/// its change sent. Returns when nothing more can be done before the heal.
pub(super) async fn drive(
    f: &mut InFlight,
    cluster: &Mutex<ProcCluster>,
    shared: &Shared,
    events: &Events,
    until: Instant,
) {
    loop {
        let Some(ch) = f.change.as_mut() else { return };
        if ch.answer.is_none() {
            match tokio::time::timeout_at(until.into(), &mut ch.task).await {
                Err(_) => return,
                Ok(a) => ch.answer = Some(a.unwrap_or_else(|e| Answer::Unknown(e.to_string()))),
            }
        }
        let Some(Answer::Applied { config, members }) = ch.answer.clone() else {
            // Unknown or failed: settled after the heal.
            return;
        };
        let ch = f.change.take().expect("checked");
        let mut c = cluster.lock().await;
        applied(&mut c, shared, events, &ch, config, &members);
        if f.grow_pending && !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
            f.grow_pending = false;
            grow(&mut c, events, f).await;
        } else {
            f.grow_pending = false;
        }
    }
}

fn applied(
    c: &mut ProcCluster,
    shared: &Shared,
    events: &Events,
    ch: &Change,
    config: u32,
    members: &[u64],
) {
    events.membership.lock().unwrap().applied += 1;
    let notes = take_in(c, shared, events, config, members);
    events.log(
        "membership",
        format!(
            "applied: {}: configuration {config}, members {members:?}; {notes}",
            ch.what
        ),
    );
}

/// Starts the second change of shrink-grow: a fresh node added.
async fn grow(c: &mut ProcCluster, events: &Events, f: &mut InFlight) {
    let (_, order) = leader_and_members(c).await;
    let r = start_joiner(c, &order, None).and_then(|new| {
        let what = format!(
            "add new node {new} (configuration {}, members {:?})",
            c.config_id,
            c.members()
        );
        send(c, &order, Some(new), None, what).inspect_err(|_| c.retire(new))
    });
    match r {
        Ok(ch) => {
            events.membership.lock().unwrap().attempted += 1;
            events.log("membership", format!("sent: {}", ch.what));
            f.change = Some(ch);
        }
        Err(e) => events.log("error", format!("shrink-grow: {e}")),
    }
}

/// After the heal: waits for the answer, resolves an unknown outcome from the nodes'
/// status, stops or restarts what the outcome calls for, and for shrink-grow makes the
/// second change (and settles it too).
pub(super) async fn finish(
    mut f: InFlight,
    cluster: &Mutex<ProcCluster>,
    shared: &Shared,
    events: &Events,
) {
    while let Some(mut ch) = f.change.take() {
        let answer = match ch.answer.take() {
            Some(a) => a,
            None => (&mut ch.task)
                .await
                .unwrap_or_else(|e| Answer::Unknown(e.to_string())),
        };
        let took_effect = match answer {
            Answer::Applied { config, members } => {
                let mut c = cluster.lock().await;
                applied(&mut c, shared, events, &ch, config, &members);
                true
            }
            Answer::Failed(e) => {
                let mut c = cluster.lock().await;
                let reported = c.reported_membership().await;
                match reported {
                    Some((config, members)) if config > ch.before => {
                        events.membership.lock().unwrap().failed_but_applied += 1;
                        let notes = take_in(&mut c, shared, events, config, &members);
                        events.log(
                            "membership",
                            format!(
                                "ANOMALY: {} answered {e:?} but the nodes report configuration \
                                 {config} with members {members:?}; {notes}",
                                ch.what
                            ),
                        );
                        true
                    }
                    _ => {
                        events.membership.lock().unwrap().failed += 1;
                        let stopped = not_applied(&mut c, &ch);
                        events.log("membership", format!("failed: {}: {e}{stopped}", ch.what));
                        false
                    }
                }
            }
            Answer::Unknown(e) => {
                events.log(
                    "membership",
                    format!("outcome unknown: {}: {e}; resolving", ch.what),
                );
                match resolve(cluster, &ch).await {
                    Ok(Some((config, members))) => {
                        events.membership.lock().unwrap().unknown_applied += 1;
                        let mut c = cluster.lock().await;
                        let notes = take_in(&mut c, shared, events, config, &members);
                        events.log(
                            "membership",
                            format!(
                                "resolved: applied: {}: configuration {config}, members \
                                 {members:?}; {notes}",
                                ch.what
                            ),
                        );
                        true
                    }
                    Ok(None) => {
                        events.membership.lock().unwrap().unknown_not_applied += 1;
                        let mut c = cluster.lock().await;
                        let stopped = not_applied(&mut c, &ch);
                        events.log(
                            "membership",
                            format!(
                                "resolved: not applied: {} (configuration {} goes on){stopped}",
                                ch.what, ch.before
                            ),
                        );
                        false
                    }
                    Err(why) => {
                        events.membership.lock().unwrap().unresolved += 1;
                        events.log("error", format!("UNRESOLVED: {}: {why}", ch.what));
                        false
                    }
                }
            }
        };
        // The member the heal held back, if still a member, runs again.
        if let Some(old) = ch.remove {
            let mut c = cluster.lock().await;
            if c.node(old).member_state == MemberState::Member && c.node(old).child.is_none() {
                match c.spawn(old) {
                    Ok(()) => events.log("heal", format!("restarted held-back node {old}")),
                    Err(e) => events.log("error", format!("restarting node {old}: {e}")),
                }
            }
        }
        if took_effect && f.grow_pending {
            f.grow_pending = false;
            let mut c = cluster.lock().await;
            grow(&mut c, events, &mut f).await;
        }
    }
}

/// A change that did not happen: its new node will never be added; stop it.
fn not_applied(c: &mut ProcCluster, ch: &Change) -> String {
    match ch.add {
        Some(new) if c.node(new).member_state == MemberState::Joining => {
            c.retire(new);
            format!("; stopped node {new} (never added)")
        }
        _ => String::new(),
    }
}

/// Decides whether an unknown change happened, on a healed cluster: Some(configuration,
/// members) if the nodes report a newer configuration, None once a write went through
/// the old configuration after it (see the module docs).
async fn resolve(
    cluster: &Mutex<ProcCluster>,
    ch: &Change,
) -> Result<Option<(u32, Vec<u64>)>, String> {
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let quorum = ch.old_members.len() / 2 + 1;
    let mut last = String::from("no answer");
    let mut marker = 0u64;
    while Instant::now() < deadline {
        let (still_old, endpoints) = {
            let c = cluster.lock().await;
            if let Some((config, members)) = c.reported_membership().await {
                if config > ch.before {
                    return Ok(Some((config, members)));
                }
            }
            (
                old_config_answers(&c, ch).await,
                ch.old_members
                    .iter()
                    .map(|&id| c.node(id).client_addr.clone())
                    .collect::<Vec<_>>(),
            )
        };
        if still_old >= quorum {
            let client = Client::with_options(
                &endpoints,
                ClientOptions {
                    timeout: Duration::from_secs(3),
                    attempt_timeout: Duration::from_secs(1),
                    tls: None,
                },
            )
            .map_err(|e| e.to_string())?;
            marker += 1;
            match client
                .put(
                    MARKER_KEY,
                    format!("{}.{marker}", ch.before).as_bytes(),
                    false,
                )
                .await
            {
                Ok(_) => {
                    let c = cluster.lock().await;
                    if let Some((config, members)) = c.reported_membership().await {
                        if config > ch.before {
                            return Ok(Some((config, members)));
                        }
                    }
                    if old_config_answers(&c, ch).await >= quorum {
                        return Ok(None);
                    }
                }
                Err(e) => last = format!("marker write: {e}"),
            }
        } else {
            last = format!(
                "{still_old} of the old members {:?} answer in configuration {}",
                ch.old_members, ch.before
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not resolved within {RESOLVE_TIMEOUT:?}: {last}"))
}

/// How many of the change's old members answer, serving in its old configuration.
async fn old_config_answers(c: &ProcCluster, ch: &Change) -> usize {
    let answers = futures::future::join_all(ch.old_members.iter().map(|&id| c.status(id))).await;
    answers
        .into_iter()
        .flatten()
        .filter(|st| st.config_id == ch.before && (st.role == "leader" || st.role == "follower"))
        .count()
}
