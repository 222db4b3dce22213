//! Writes the seed corpus of the `peer_frame` target: real peer streams (a `Hello` frame,
//! then `PeerMsg` frames) encoded with `transport::write_frame`, as a node sends
//! them. `cargo run --example peer_seeds -- corpus/peer_frame` (from `fuzz/`).

use futures::executor::block_on;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::ballot_leader_election::{
    BLEMessage, HeartbeatMsg, HeartbeatReply, HeartbeatRequest,
};
use omnipaxos::messages::sequence_paxos::{
    AcceptDecide, Accepted, Decide, PaxosMessage, PaxosMsg, Prepare,
};
use omnipaxos::messages::Message;
use omnipaxos::util::SequenceNumber;
use paxosdb::command::{Command, LogEntry, SetCond, WriteOp};
use paxosdb::node::Note;
use paxosdb::transport::{write_frame, Hello, PeerMsg, Purpose, MAX_HELLO_FRAME};

const LIMIT: usize = 256 * 1024 * 1024;

fn hello(from: u64, to: u64) -> Hello {
    Hello {
        magic: 0x7061_786f_7364_6231,
        version: 2,
        from,
        to,
        listeners: vec![
            ("grpc".into(), "127.0.0.1:7001".into()),
            ("http".into(), "127.0.0.1:8001".into()),
        ],
        pid: 4242,
        incarnation: 0x1234_5678_9abc_def0,
        purpose: Purpose::Replication,
    }
}

fn ballot(n: u32, pid: u64) -> Ballot {
    Ballot {
        config_id: 1,
        n,
        priority: 0,
        pid,
    }
}

fn paxos(msg: PaxosMsg<LogEntry>) -> Message<LogEntry> {
    Message::SequencePaxos(PaxosMessage {
        from: 1,
        to: 2,
        msg,
    })
}

fn entry(batch_id: u64) -> LogEntry {
    let cmd = |seq, op| Command {
        client_id: 77,
        seq,
        op,
    };
    LogEntry {
        proposer: 1,
        batch_id,
        commands: vec![
            cmd(
                1,
                WriteOp::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    return_prev: false,
                },
            ),
            cmd(
                2,
                WriteOp::Set {
                    key: b"a\xff".to_vec(),
                    value: vec![0; 8],
                    cond: SetCond::IfAbsent,
                },
            ),
            cmd(
                3,
                WriteOp::Incr {
                    key: b"n".to_vec(),
                    delta: -5,
                },
            ),
            cmd(
                4,
                WriteOp::MultiPut {
                    pairs: vec![(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), vec![])],
                },
            ),
            cmd(
                5,
                WriteOp::Delete {
                    key: b"k".to_vec(),
                    return_prev: true,
                },
            ),
        ],
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or("corpus/peer_frame".into());
    std::fs::create_dir_all(&dir).unwrap();
    let seq = SequenceNumber {
        session: 1,
        counter: 3,
    };
    let messages: Vec<(&str, Message<LogEntry>)> = vec![
        (
            "heartbeat",
            Message::BLE(BLEMessage {
                from: 1,
                to: 2,
                msg: HeartbeatMsg::Request(HeartbeatRequest { round: 9 }),
            }),
        ),
        (
            "heartbeat_reply",
            Message::BLE(BLEMessage {
                from: 1,
                to: 2,
                msg: HeartbeatMsg::Reply(HeartbeatReply {
                    round: 9,
                    ballot: ballot(3, 1),
                    leader: ballot(3, 1),
                    happy: true,
                }),
            }),
        ),
        (
            "prepare",
            paxos(PaxosMsg::Prepare(Prepare {
                n: ballot(4, 1),
                decided_idx: 10,
                n_accepted: ballot(3, 1),
                accepted_idx: 12,
            })),
        ),
        (
            "accept_decide",
            paxos(PaxosMsg::AcceptDecide(AcceptDecide {
                n: ballot(4, 1),
                seq_num: seq,
                decided_idx: 12,
                entries: vec![entry(1), entry(2)],
            })),
        ),
        (
            "accepted",
            paxos(PaxosMsg::Accepted(Accepted {
                n: ballot(4, 1),
                accepted_idx: 14,
            })),
        ),
        (
            "decide",
            paxos(PaxosMsg::Decide(Decide {
                n: ballot(4, 1),
                seq_num: seq,
                decided_idx: 14,
            })),
        ),
        (
            "proposal_forward",
            paxos(PaxosMsg::ProposalForward(vec![entry(3)])),
        ),
    ];
    let mut messages: Vec<(&str, PeerMsg)> = messages
        .into_iter()
        .map(|(n, m)| (n, PeerMsg::Paxos(m)))
        .collect();
    messages.push((
        "progress",
        PeerMsg::Note(Note::Progress {
            applied: 100,
            compacted: 40,
        }),
    ));
    messages.push((
        "need_state",
        PeerMsg::Note(Note::NeedState { compacted: 40 }),
    ));
    let mut all = Vec::new();
    block_on(write_frame(&mut all, &hello(1, 2), MAX_HELLO_FRAME)).unwrap();
    for (name, m) in &messages {
        let mut out = Vec::new();
        block_on(write_frame(&mut out, &hello(1, 2), MAX_HELLO_FRAME)).unwrap();
        block_on(write_frame(&mut out, m, LIMIT)).unwrap();
        std::fs::write(format!("{dir}/{name}"), &out).unwrap();
        block_on(write_frame(&mut all, m, LIMIT)).unwrap();
    }
    std::fs::write(format!("{dir}/stream"), &all).unwrap();
    let mut h = Vec::new();
    block_on(write_frame(&mut h, &hello(3, 1), MAX_HELLO_FRAME)).unwrap();
    std::fs::write(format!("{dir}/hello_only"), &h).unwrap();
}
