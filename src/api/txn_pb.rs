//! A transaction ([`Txn`]) and its results in protobuf form (`paxosdb.v1.Kv/Txn`), both
//! ways: the server decodes requests and encodes results, the client library encodes
//! requests and decodes results, with the same four functions.
//!
//! gRPC carries etcd's operations: get, range, put (attached to a lease or not), delete
//! and delete range. The other key writes a [`Txn`] may hold (increment, append,
//! conditional set: what a Redis `MULTI` block queues) have no protobuf form; encoding
//! one is refused as invalid input.
//!
//! # Invariants
//!
//! - Decoding never guesses: a comparison without a target, an operation without a
//!   kind or a range without a prefix or key range is invalid input, naming its place.
//! - `decode(encode(txn)) == txn` for every transaction gRPC can carry, and the same for
//!   results (`api::txn_pb::tests`).

use super::pb;
use crate::command::{
    Compare, CompareOp, CompareTarget, KeyValue, ScanRange, Txn, TxnOp, TxnOpResult, Versioned,
    WriteOp, WriteResult,
};
use crate::error::{Error, Result};
use crate::kv::handle::TxnResult;

fn op_from_pb(op: i32) -> Result<CompareOp> {
    Ok(match pb::compare::Op::try_from(op) {
        Ok(pb::compare::Op::Equal) => CompareOp::Equal,
        Ok(pb::compare::Op::NotEqual) => CompareOp::NotEqual,
        Ok(pb::compare::Op::Less) => CompareOp::Less,
        Ok(pb::compare::Op::Greater) => CompareOp::Greater,
        Err(_) => return Err(Error::invalid(format!("unknown comparison operator {op}"))),
    })
}

fn op_to_pb(op: CompareOp) -> i32 {
    (match op {
        CompareOp::Equal => pb::compare::Op::Equal,
        CompareOp::NotEqual => pb::compare::Op::NotEqual,
        CompareOp::Less => pb::compare::Op::Less,
        CompareOp::Greater => pb::compare::Op::Greater,
    }) as i32
}

fn range_from_pb(r: pb::TxnRange, what: &str) -> Result<(ScanRange, u32)> {
    let range = match r.range {
        Some(pb::txn_range::Range::Prefix(p)) => ScanRange::Prefix(p),
        Some(pb::txn_range::Range::KeyRange(kr)) => ScanRange::Range {
            from: kr.from,
            to: (!kr.to.is_empty()).then_some(kr.to),
        },
        None => {
            return Err(Error::invalid(format!(
                "{what} needs a prefix or a key_range"
            )))
        }
    };
    Ok((range, r.limit))
}

fn range_to_pb(range: &ScanRange, limit: u32) -> pb::TxnRange {
    let range = match range {
        ScanRange::Prefix(p) => pb::txn_range::Range::Prefix(p.clone()),
        ScanRange::Range { from, to } => pb::txn_range::Range::KeyRange(pb::KeyRange {
            from: from.clone(),
            to: to.clone().unwrap_or_default(),
        }),
    };
    pb::TxnRange {
        range: Some(range),
        limit,
    }
}

fn versioned_to_pb(v: Option<Versioned>) -> Option<pb::Versioned> {
    v.map(|v| pb::Versioned {
        value: v.value,
        version: v.version,
    })
}

fn versioned_from_pb(v: Option<pb::Versioned>) -> Option<Versioned> {
    v.map(|v| Versioned {
        value: v.value,
        version: v.version,
    })
}

/// The transaction a `TxnRequest` asks for (its session aside).
pub fn txn_from_pb(req: pb::TxnRequest) -> Result<Txn> {
    let compare = (req.compare.into_iter().enumerate())
        .map(|(i, c)| {
            let target = match c.target {
                Some(pb::compare::Target::Value(v)) => CompareTarget::Value(v),
                Some(pb::compare::Target::Version(v)) => CompareTarget::Version(v),
                Some(pb::compare::Target::CreateRevision(v)) => CompareTarget::Create(v),
                None => {
                    return Err(Error::invalid(format!(
                        "compare[{i}] needs a value, a version or a create_revision"
                    )))
                }
            };
            Ok(Compare {
                key: c.key,
                op: op_from_pb(c.op)?,
                target,
            })
        })
        .collect::<Result<_>>()?;
    let ops = |ops: Vec<pb::TxnOp>, branch: &str| {
        (ops.into_iter().enumerate())
            .map(|(i, op)| {
                let what = format!("{branch}[{i}]");
                Ok(match op.op {
                    Some(pb::txn_op::Op::Get(g)) => TxnOp::Get { key: g.key },
                    Some(pb::txn_op::Op::Range(r)) => {
                        let (range, limit) = range_from_pb(r, &what)?;
                        TxnOp::Range { range, limit }
                    }
                    Some(pb::txn_op::Op::DeleteRange(r)) => TxnOp::DeleteRange {
                        range: range_from_pb(r, &what)?.0,
                    },
                    Some(pb::txn_op::Op::Put(p)) if p.lease != 0 => {
                        TxnOp::Write(WriteOp::PutLeased {
                            key: p.key,
                            value: p.value,
                            lease: p.lease,
                            return_prev: p.return_prev,
                        })
                    }
                    Some(pb::txn_op::Op::Put(p)) => TxnOp::Write(WriteOp::Put {
                        key: p.key,
                        value: p.value,
                        return_prev: p.return_prev,
                    }),
                    Some(pb::txn_op::Op::Delete(d)) => TxnOp::Write(WriteOp::Delete {
                        key: d.key,
                        return_prev: d.return_prev,
                    }),
                    None => return Err(Error::invalid(format!("{what} names no operation"))),
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok(Txn {
        compare,
        success: ops(req.success, "success")?,
        failure: ops(req.failure, "failure")?,
    })
}

/// `txn` as a `TxnRequest` in `session`.
pub fn txn_to_pb(txn: &Txn, session: pb::Session) -> Result<pb::TxnRequest> {
    let compare = (txn.compare.iter())
        .map(|c| pb::Compare {
            key: c.key.clone(),
            op: op_to_pb(c.op),
            target: Some(match &c.target {
                CompareTarget::Value(v) => pb::compare::Target::Value(v.clone()),
                CompareTarget::Version(v) => pb::compare::Target::Version(*v),
                CompareTarget::Create(v) => pb::compare::Target::CreateRevision(*v),
            }),
        })
        .collect();
    let ops = |ops: &[TxnOp]| {
        ops.iter()
            .map(|op| {
                let op = match op {
                    TxnOp::Get { key } => pb::txn_op::Op::Get(pb::TxnGet { key: key.clone() }),
                    TxnOp::Range { range, limit } => {
                        pb::txn_op::Op::Range(range_to_pb(range, *limit))
                    }
                    TxnOp::DeleteRange { range } => {
                        pb::txn_op::Op::DeleteRange(range_to_pb(range, 0))
                    }
                    TxnOp::Write(WriteOp::Put {
                        key,
                        value,
                        return_prev,
                    }) => pb::txn_op::Op::Put(pb::TxnPut {
                        key: key.clone(),
                        value: value.clone(),
                        return_prev: *return_prev,
                        lease: 0,
                    }),
                    // Lease 0 would read back as a plain put: the store refuses it anyway.
                    TxnOp::Write(WriteOp::PutLeased {
                        key,
                        value,
                        lease,
                        return_prev,
                    }) if *lease != 0 => pb::txn_op::Op::Put(pb::TxnPut {
                        key: key.clone(),
                        value: value.clone(),
                        return_prev: *return_prev,
                        lease: *lease,
                    }),
                    TxnOp::Write(WriteOp::Delete { key, return_prev }) => {
                        pb::txn_op::Op::Delete(pb::TxnDelete {
                            key: key.clone(),
                            return_prev: *return_prev,
                        })
                    }
                    TxnOp::Write(other) => {
                        return Err(Error::invalid(format!(
                            "a transaction over gRPC holds gets, ranges, puts, deletes and \
                             delete ranges; not {}",
                            other.name()
                        )))
                    }
                };
                Ok(pb::TxnOp { op: Some(op) })
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok(pb::TxnRequest {
        session: Some(session),
        compare,
        success: ops(&txn.success)?,
        failure: ops(&txn.failure)?,
    })
}

/// A transaction's results as a `TxnResponse`.
pub fn results_to_pb(done: TxnResult) -> Result<pb::TxnResponse> {
    let results = (done.results.into_iter())
        .map(|r| {
            let r = match r {
                TxnOpResult::Get(v) => pb::txn_result::Result::Get(pb::GetResponse {
                    kv: versioned_to_pb(v),
                    applied_index: 0,
                    expires_at_ms: 0,
                    ttl_ms: 0,
                    create_revision: 0,
                }),
                TxnOpResult::Range { items, more } => {
                    pb::txn_result::Result::Range(pb::ScanResponse {
                        items: (items.into_iter())
                            .map(|kv| pb::KeyValue {
                                key: kv.key,
                                value: kv.value,
                                version: kv.version,
                            })
                            .collect(),
                        more,
                        applied_index: 0,
                    })
                }
                TxnOpResult::DeleteRange { deleted } => {
                    pb::txn_result::Result::DeleteRange(pb::TxnDeleteRangeResult { deleted })
                }
                TxnOpResult::Write(WriteResult::Put { version, prev }) => {
                    pb::txn_result::Result::Put(pb::PutResponse {
                        version,
                        prev: versioned_to_pb(prev),
                    })
                }
                TxnOpResult::Write(WriteResult::Delete { deleted, prev }) => {
                    pb::txn_result::Result::Delete(pb::DeleteResponse {
                        deleted,
                        prev: versioned_to_pb(prev),
                    })
                }
                // A put whose lease was gone: it wrote nothing, the rest ran.
                TxnOpResult::Write(WriteResult::Rejected(why)) => {
                    pb::txn_result::Result::Rejected(why)
                }
                TxnOpResult::Write(other) => {
                    return Err(Error::Internal(format!(
                        "a gRPC transaction's operation was answered with {other:?}"
                    )))
                }
            };
            Ok(pb::TxnResult { result: Some(r) })
        })
        .collect::<Result<_>>()?;
    Ok(pb::TxnResponse {
        succeeded: done.succeeded,
        results,
    })
}

/// The results a `TxnResponse` carries.
pub fn results_from_pb(resp: pb::TxnResponse) -> Result<TxnResult> {
    let results = (resp.results.into_iter().enumerate())
        .map(|(i, r)| {
            Ok(match r.result {
                Some(pb::txn_result::Result::Get(g)) => TxnOpResult::Get(versioned_from_pb(g.kv)),
                Some(pb::txn_result::Result::Range(s)) => TxnOpResult::Range {
                    items: (s.items.into_iter())
                        .map(|kv| KeyValue {
                            key: kv.key,
                            value: kv.value,
                            version: kv.version,
                        })
                        .collect(),
                    more: s.more,
                },
                Some(pb::txn_result::Result::Put(p)) => TxnOpResult::Write(WriteResult::Put {
                    version: p.version,
                    prev: versioned_from_pb(p.prev),
                }),
                Some(pb::txn_result::Result::Delete(d)) => {
                    TxnOpResult::Write(WriteResult::Delete {
                        deleted: d.deleted,
                        prev: versioned_from_pb(d.prev),
                    })
                }
                Some(pb::txn_result::Result::Rejected(why)) => {
                    TxnOpResult::Write(WriteResult::Rejected(why))
                }
                Some(pb::txn_result::Result::DeleteRange(d)) => {
                    TxnOpResult::DeleteRange { deleted: d.deleted }
                }
                None => {
                    return Err(Error::Internal(format!(
                        "the server's transaction result {i} is empty"
                    )))
                }
            })
        })
        .collect::<Result<_>>()?;
    Ok(TxnResult {
        succeeded: resp.succeeded,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_and_its_results_survive_the_round_trip() {
        let txn = Txn {
            compare: vec![
                Compare::version(b"a", CompareOp::Equal, 0),
                Compare::value(b"b", CompareOp::Greater, b"x"),
            ],
            success: vec![
                TxnOp::put(b"a", b"1"),
                TxnOp::Write(WriteOp::PutLeased {
                    key: b"l".to_vec(),
                    value: b"2".to_vec(),
                    lease: 7,
                    return_prev: true,
                }),
                TxnOp::Get { key: b"b".to_vec() },
                TxnOp::Range {
                    range: ScanRange::Range {
                        from: b"p".to_vec(),
                        to: Some(b"q".to_vec()),
                    },
                    limit: 5,
                },
            ],
            failure: vec![
                TxnOp::delete(b"a"),
                TxnOp::DeleteRange {
                    range: ScanRange::Prefix(b"t/".to_vec()),
                },
            ],
        };
        let session = pb::Session {
            client_id: 1,
            seq: 2,
        };
        let req = txn_to_pb(&txn, session).unwrap();
        assert_eq!(req.session, Some(session));
        assert_eq!(txn_from_pb(req).unwrap(), txn);

        let done = TxnResult {
            succeeded: true,
            results: vec![
                TxnOpResult::Write(WriteResult::Put {
                    version: 3,
                    prev: None,
                }),
                TxnOpResult::Get(Some(Versioned {
                    value: b"y".to_vec(),
                    version: 2,
                })),
                TxnOpResult::Range {
                    items: vec![KeyValue {
                        key: b"p1".to_vec(),
                        value: b"v".to_vec(),
                        version: 1,
                    }],
                    more: true,
                },
                TxnOpResult::DeleteRange { deleted: 4 },
                TxnOpResult::Write(WriteResult::Rejected("lease 7 not found".into())),
            ],
        };
        assert_eq!(
            results_from_pb(results_to_pb(done.clone()).unwrap()).unwrap(),
            done
        );
    }

    #[test]
    fn what_grpc_cannot_carry_is_refused_by_name() {
        let incr = Txn {
            success: vec![TxnOp::Write(WriteOp::Incr {
                key: b"n".to_vec(),
                delta: 1,
            })],
            ..Txn::default()
        };
        let session = pb::Session {
            client_id: 1,
            seq: 1,
        };
        match txn_to_pb(&incr, session) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("incr"), "{m}"),
            other => panic!("an increment went over gRPC: {other:?}"),
        }
        let empty = pb::TxnRequest {
            success: vec![pb::TxnOp { op: None }],
            ..Default::default()
        };
        match txn_from_pb(empty) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("success[0]"), "{m}"),
            other => panic!("an empty operation was accepted: {other:?}"),
        }
    }
}
