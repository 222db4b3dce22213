//! The client workloads of a nemesis run, and the final check of the set workload.
//!
//! Each worker is one logical client with one operation in flight, speaking one protocol
//! (gRPC, HTTP or RESP, see [`super::clients`]) for the whole run; the workers are dealt
//! the enabled protocols in turn, and [`Shared::per_protocol`] counts their operations. Every operation is
//! recorded as a [`check::Operation`]: invoked at `call`, and `Ok` / `Fail` / `Info` at
//! `ret`. An error that leaves the outcome open (a timeout, a lost connection, anything
//! but a refusal) is `Info`, and the worker continues as a *new* client id (the old
//! operation may still be in flight, so that process never returns). A worker's client
//! talks to the cluster's current members ([`Endpoints`]): after a membership change,
//! its next operation goes through a client for the new members.
//!
//! - *register*: get / put / compare-and-swap on a handful of keys, with values unique in
//!   the run. Keys are retired after a few hundred operations so that each key's history
//!   stays small enough to check.
//! - *set*: every worker adds unique elements to a few keys by CAS-append (read the value,
//!   compare-and-swap it for itself plus `,element`). The keys exist before the workers
//!   start. After the run, a linearizable read of every key must show each acknowledged
//!   element exactly once, no element twice, and no element whose every attempt
//!   certainly failed; elements whose outcome is unknown may be present or absent.

use super::clients::{NodeAddrs, OpError, ProtoClient, Protocol, Read, Timeouts};
use crate::check::{Input, Operation, Outcome, Output};
use crate::client::{Client, ClientOptions};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Register keys in use at once.
pub const REGISTER_KEYS: u64 = 5;
/// Operations on each register key before it is retired.
pub const OPS_PER_KEY: u64 = 250;
/// Set keys in use at once.
pub const SET_KEYS: u64 = 4;
/// A new generation of set keys starts this often (keeps values short).
pub const SET_GENERATION: Duration = Duration::from_secs(10);
/// The initial value of every set key.
pub const SET_EMPTY: &str = "s";

/// The client endpoints of the cluster's current members (every protocol), renewed by
/// the nemesis after every membership change; workers rebuild their clients when they
/// change.
pub struct Endpoints {
    /// (version, endpoints); the version grows with every change.
    current: Mutex<(u64, Vec<NodeAddrs>)>,
    timeouts: Timeouts,
    stale: bool,
}

impl Endpoints {
    pub fn new(endpoints: Vec<NodeAddrs>, timeouts: Timeouts, stale: bool) -> Endpoints {
        Endpoints {
            current: Mutex::new((0, endpoints)),
            timeouts,
            stale,
        }
    }

    /// Sets the members' endpoints (a no-op when unchanged).
    pub fn set(&self, endpoints: Vec<NodeAddrs>) {
        let mut cur = self.current.lock().unwrap();
        if cur.1 != endpoints && !endpoints.is_empty() {
            cur.0 += 1;
            cur.1 = endpoints;
        }
    }

    /// The members' gRPC endpoints.
    pub fn list(&self) -> Vec<String> {
        self.current
            .lock()
            .unwrap()
            .1
            .iter()
            .map(|n| n.grpc.clone())
            .collect()
    }

    fn version(&self) -> u64 {
        self.current.lock().unwrap().0
    }

    /// The current members' endpoints, with their version.
    pub fn current(&self) -> (u64, Vec<NodeAddrs>) {
        self.current.lock().unwrap().clone()
    }

    /// The workers' timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A gRPC client for the current endpoints, starting at the `rotate`-th, with its
    /// version.
    pub fn client(&self, rotate: usize) -> crate::error::Result<(u64, Client)> {
        let (version, mut eps) = self.current.lock().unwrap().clone();
        let n = eps.len().max(1);
        eps.rotate_left(rotate % n);
        let grpc: Vec<String> = eps.into_iter().map(|n| n.grpc).collect();
        Ok((
            version,
            Client::with_options(
                &grpc,
                ClientOptions {
                    timeout: self.timeouts.op,
                    attempt_timeout: self.timeouts.attempt,
                    tls: None,
                },
            )?,
        ))
    }

    /// A client of `protocol` for the current endpoints, starting at the `rotate`-th.
    fn proto_client(
        &self,
        protocol: Protocol,
        rotate: usize,
    ) -> crate::error::Result<(u64, ProtoClient)> {
        let (version, eps) = self.current.lock().unwrap().clone();
        Ok((
            version,
            ProtoClient::new(protocol, &eps, rotate, self.timeouts, self.stale)?,
        ))
    }
}

/// A worker's client (of the protocol the worker speaks), rebuilt for the new members
/// after a membership change.
pub struct WorkerClient {
    rotate: usize,
    version: u64,
    client: ProtoClient,
}

impl WorkerClient {
    pub fn new(
        endpoints: &Endpoints,
        protocol: Protocol,
        rotate: usize,
    ) -> crate::error::Result<WorkerClient> {
        let (version, client) = endpoints.proto_client(protocol, rotate)?;
        Ok(WorkerClient {
            rotate,
            version,
            client,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.client.protocol()
    }

    /// The client for the current members.
    fn get(&mut self, endpoints: &Endpoints) -> &mut ProtoClient {
        if endpoints.version() != self.version {
            if let Ok((version, client)) = endpoints.proto_client(self.protocol(), self.rotate) {
                self.version = version;
                self.client = client;
            }
        }
        &mut self.client
    }
}

/// Operations of one protocol, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl OpCounts {
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

/// Shared state of the workers: the clock, the history, the stop signal.
pub struct Shared {
    pub start: Instant,
    pub history: Mutex<Vec<Operation>>,
    pub elements: Mutex<Vec<Element>>,
    pub stop: AtomicBool,
    /// Operations started, and the limit (0 = none).
    pub started: AtomicU64,
    pub op_limit: u64,
    /// Next fresh client id (after an `Info`).
    pub next_process: AtomicU64,
    /// Set keys generations created before the run.
    pub set_generations: u64,
    /// Deliberately unsafe: workers read the contacted node's local copy (no leadership
    /// proof), to show that the checks catch stale reads.
    pub stale_reads: bool,
    /// The current members' endpoints.
    pub endpoints: Endpoints,
    /// The workers' operations by protocol.
    pub per_protocol: Mutex<BTreeMap<Protocol, OpCounts>>,
}

impl Shared {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records a worker's operation, made over `protocol`.
    fn record(&self, op: Operation, protocol: Protocol) {
        {
            let mut counts = self.per_protocol.lock().unwrap();
            let c = counts.entry(protocol).or_default();
            match op.outcome {
                Outcome::Ok(_) => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Info => c.info += 1,
            }
        }
        self.history.lock().unwrap().push(op);
    }

    /// Claims the next operation; false when the run is over.
    fn next_op(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        if self.op_limit > 0 && n >= self.op_limit {
            self.stop.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn fresh_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }
}

/// How a write's error is recorded: a refusal certainly did nothing; anything else
/// (timeout, lost connection, internal error) may have taken effect (see
/// [`super::clients`]).
fn write_error_outcome(e: &OpError) -> Outcome {
    match e {
        OpError::Refused(_) => Outcome::Fail,
        OpError::Unknown(_) => Outcome::Info,
    }
}

/// One worker of the register workload.
pub async fn register_worker(
    shared: Arc<Shared>,
    mut client: WorkerClient,
    mut rng: StdRng,
    id: u64,
) {
    let mut process = id;
    let mut seq = 0u64;
    let protocol = client.protocol();
    // The last value (and version) this worker read of each key: what its CAS expects.
    let mut last_seen: HashMap<Vec<u8>, Read> = HashMap::new();
    while shared.next_op() {
        let client = client.get(&shared.endpoints);
        let n = shared.started.load(Ordering::Relaxed);
        let generation = n / (REGISTER_KEYS * OPS_PER_KEY);
        let key = format!("r/{generation}/{}", rng.gen_range(0..REGISTER_KEYS)).into_bytes();
        seq += 1;
        let value = format!("{process}.{seq}").into_bytes();
        let roll = rng.gen_range(0..10);
        let call = shared.now();
        let (input, outcome) = if roll < 4 {
            let r = client.get(&key, shared.stale_reads).await;
            let out = match r {
                Ok(v) => {
                    let value = v.as_ref().map(|r| r.value.clone());
                    if let Some(v) = v {
                        last_seen.insert(key.clone(), v);
                    }
                    Outcome::Ok(Output::Value(value))
                }
                // A read changes nothing; its failure is recorded as unknown all the same.
                Err(_) => Outcome::Info,
            };
            (Input::Get, out)
        } else if roll < 7 || !last_seen.contains_key(&key) {
            let r = client.put(&key, &value).await;
            let out = match r {
                Ok(()) => Outcome::Ok(Output::Written),
                Err(e) => write_error_outcome(&e),
            };
            (Input::Put(value.clone()), out)
        } else {
            let expect = last_seen[&key].clone();
            let r = client.cas(&key, &expect, &value).await;
            let out = match r {
                Ok(swapped) => Outcome::Ok(Output::Swapped(swapped)),
                Err(e) => write_error_outcome(&e),
            };
            (
                Input::Cas {
                    expect: expect.value,
                    new: value.clone(),
                },
                out,
            )
        };
        let info = outcome == Outcome::Info;
        shared.record(
            Operation {
                client: process,
                key,
                input,
                call,
                ret: (!info).then(|| shared.now()),
                outcome,
            },
            protocol,
        );
        if info {
            process = shared.fresh_process();
            client.new_session();
        }
    }
}

/// The name of set key `slot` of generation `generation`.
pub fn set_key(generation: u64, slot: u64) -> String {
    format!("set/{generation}/{slot}")
}

/// What became of one element the set workload tried to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElementStatus {
    /// A compare-and-swap adding it was acknowledged: it must be there, once.
    Acked,
    /// Its last attempt had an unknown outcome: it may be there (once) or not.
    Unknown,
    /// Every attempt certainly failed: it must not be there.
    Absent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Element {
    pub element: String,
    pub key: String,
    pub status: ElementStatus,
}

/// One worker of the set workload.
pub async fn set_worker(shared: Arc<Shared>, mut client: WorkerClient, mut rng: StdRng, id: u64) {
    let mut process = id;
    let mut seq = 0u64;
    let protocol = client.protocol();
    'elements: while shared.next_op() {
        seq += 1;
        let element = format!("{process}.{seq}");
        let slot = rng.gen_range(0..SET_KEYS);
        let mut status = ElementStatus::Absent;
        let mut key = String::new();
        for _attempt in 0..8 {
            let client = client.get(&shared.endpoints);
            let generation = (shared.start.elapsed().as_secs() / SET_GENERATION.as_secs())
                .min(shared.set_generations - 1);
            key = set_key(generation, slot);
            let call = shared.now();
            let read = client.get(key.as_bytes(), shared.stale_reads).await;
            let (ret, outcome) = match &read {
                Ok(v) => (
                    Some(shared.now()),
                    Outcome::Ok(Output::Value(v.as_ref().map(|r| r.value.clone()))),
                ),
                Err(_) => (None, Outcome::Info),
            };
            let op = Operation {
                client: process,
                key: key.clone().into_bytes(),
                input: Input::Get,
                call,
                ret,
                outcome,
            };
            shared.record(op, protocol);
            let current = match read {
                Ok(v) => v,
                Err(_) => {
                    process = shared.fresh_process();
                    client.new_session();
                    // Nothing was attempted for this element: forget it.
                    continue 'elements;
                }
            };
            let Some(current) = current else {
                // Set keys are created before the run; absence is itself suspicious and
                // shows up in the history check. Do not create the key here.
                break;
            };
            let mut new = current.value.clone();
            new.extend_from_slice(format!(",{element}").as_bytes());
            let call = shared.now();
            let r = client.cas(key.as_bytes(), &current, &new).await;
            let outcome = match &r {
                Ok(swapped) => Outcome::Ok(Output::Swapped(*swapped)),
                Err(e) => write_error_outcome(e),
            };
            let info = outcome == Outcome::Info;
            shared.record(
                Operation {
                    client: process,
                    key: key.clone().into_bytes(),
                    input: Input::Cas {
                        expect: current.value,
                        new,
                    },
                    call,
                    ret: (!info).then(|| shared.now()),
                    outcome: outcome.clone(),
                },
                protocol,
            );
            match outcome {
                Outcome::Ok(Output::Swapped(true)) => {
                    status = ElementStatus::Acked;
                    break;
                }
                Outcome::Ok(_) => continue, // someone else appended first: read again
                Outcome::Fail => break,
                Outcome::Info => {
                    status = ElementStatus::Unknown;
                    process = shared.fresh_process();
                    client.new_session();
                    break;
                }
            }
        }
        shared.elements.lock().unwrap().push(Element {
            element,
            key,
            status,
        });
    }
}

/// The verdict of the set workload's final read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReport {
    pub acked: usize,
    pub unknown: usize,
    pub absent: usize,
    /// Unknown-outcome elements found present.
    pub unknown_present: usize,
    /// Acknowledged elements missing from the final read.
    pub lost: Vec<String>,
    /// Elements present more than once.
    pub duplicated: Vec<String>,
    /// Elements present although every attempt certainly failed, or never attempted.
    pub unexpected: Vec<String>,
    /// Keys that could not be read at the end, or that did not hold a set.
    pub unreadable: Vec<String>,
}

impl SetReport {
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.unreadable.is_empty()
    }
}

/// Checks the final values of the set keys (`None` = could not be read, `Some(None)` =
/// absent) against what the workers recorded.
pub fn check_set(
    elements: &[Element],
    finals: &BTreeMap<String, Option<Option<Vec<u8>>>>,
) -> SetReport {
    let mut report = SetReport::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (key, value) in finals {
        let value = match value {
            Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
            _ => {
                report.unreadable.push(key.clone());
                continue;
            }
        };
        let mut parts = value.split(',');
        if parts.next() != Some(SET_EMPTY) {
            report.unreadable.push(key.clone());
            continue;
        }
        for e in parts {
            *seen.entry(e.to_string()).or_default() += 1;
        }
    }
    let mut known = BTreeMap::new();
    for e in elements {
        known.insert(e.element.as_str(), &e.status);
        let count = seen.get(&e.element).copied().unwrap_or(0);
        match e.status {
            ElementStatus::Acked => {
                report.acked += 1;
                if count == 0 {
                    report.lost.push(e.element.clone());
                }
            }
            ElementStatus::Unknown => {
                report.unknown += 1;
                if count > 0 {
                    report.unknown_present += 1;
                }
            }
            ElementStatus::Absent => {
                report.absent += 1;
                if count > 0 {
                    report.unexpected.push(e.element.clone());
                }
            }
        }
    }
    for (e, count) in &seen {
        if *count > 1 {
            report.duplicated.push(e.clone());
        }
        if !known.contains_key(e.as_str()) {
            report.unexpected.push(e.clone());
        }
    }
    report
}
