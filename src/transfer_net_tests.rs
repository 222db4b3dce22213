//! State transfer over real TCP on loopback, between two RocksDB state machines in
//! temporary directories, with faults injected by [`crate::fault_proxy`] on the wire or by
//! killing the serving task: the real `accept_loop` → `serve` on one side and the real
//! `fetch` → importer on the other.

use super::{fetch_with_stall, Import, States, Transferable};
use crate::command::WriteOp;
use crate::config::Member;
use crate::error::{Error, Result};
use crate::fault_proxy::{Action, Dir, Proxy};
use crate::kv::transfer::StatePart;
use crate::kv::transfer_tests::{
    apply, assert_same, cmd, dump, inactive_is_empty, populate, put, Kind, Place,
};
use crate::kv::KvStore;
use crate::machine::StateMachine;
use crate::membership::Membership;
use crate::transport::{accept_loop, PeerTable, TransportConfig};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The serving node's id; the fetching node is 2.
const SERVER: u64 = 1;
/// The stall limit of these tests (production: [`super::STALL`]).
const STALL: Duration = Duration::from_millis(300);
/// A limit no test reaches: a fetch that ends did not end by stalling.
const NO_STALL: Duration = Duration::from_secs(30);

fn fetch_cfg() -> TransportConfig {
    TransportConfig {
        id: 2,
        listeners: vec![],
        max_frame: 16 << 20,
        max_queue_bytes: 64 << 20,
        bind_ip: None,
        incarnation: 2,
        tls: None,
    }
}

/// Runs a real peer listener of node 1 that serves `source`; aborting the handle kills
/// it and every connection it serves.
async fn serve_state(source: Arc<dyn Transferable>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let members = [
        Member {
            id: SERVER,
            addr: addr.to_string(),
        },
        Member {
            id: 2,
            addr: "127.0.0.1:1".into(),
        },
    ];
    let cfg = TransportConfig {
        id: SERVER,
        incarnation: 1,
        ..fetch_cfg()
    };
    let (events, _) = mpsc::channel();
    let task = tokio::spawn(accept_loop(
        listener,
        cfg,
        events,
        PeerTable::default(),
        Arc::new(|_, _| Ok(())),
        States::new(vec![source]),
        Arc::new(RwLock::new(Membership::initial(&members))),
    ));
    (addr, task)
}

/// Fetches from `addr` into `kv`'s staging area; never hangs the test.
async fn fetch(addr: SocketAddr, kv: &KvStore, stall: Duration) -> (Result<u64>, Duration) {
    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(60),
        fetch_with_stall(
            &addr.to_string(),
            &fetch_cfg(),
            SERVER,
            States::new(vec![Arc::new(kv.clone())]),
            stall,
        ),
    )
    .await
    .expect("a fetch ends by itself");
    (res, started.elapsed())
}

/// A source of about 5 MB (six chunks or more) with sessions and several versions, and a
/// receiver with a different, shorter history. Returns a command of a session of the
/// source and its answer, to retry on the receiver after the transfer.
fn stores() -> (
    Place,
    KvStore,
    Place,
    KvStore,
    (crate::command::KvCommand, crate::command::WriteResult),
) {
    let (pa, pb) = (Place::new(Kind::Rocks), Place::new(Kind::Rocks));
    let (mut a, mut b) = (pa.open(), pb.open());
    let retry = populate(&mut a, "A");
    for e in 0..5u64 {
        let pairs = (0..256u64)
            .map(|i| {
                (
                    format!("bulk{e}-{i:03}").into_bytes(),
                    vec![b'a' + e as u8; 4000],
                )
            })
            .collect();
        apply(&mut a, &[cmd(20, e + 1, WriteOp::MultiPut { pairs })]);
    }
    apply(&mut a, &[cmd(1, 3, put("a", "A-3"))]);
    apply(
        &mut b,
        &[cmd(1, 1, put("a", "B-only")), cmd(5, 1, put("q", "q"))],
    );
    (pa, a, pb, b, retry)
}

/// The fetch failed and left `b` as it was: same live state, nothing to install.
fn untouched(b: &mut KvStore, live: &[StatePart]) {
    assert_eq!(dump(b), live, "the live state is untouched");
    let err = b.install_staged().unwrap_err();
    assert!(
        err.to_string().contains("no completely staged state"),
        "{err}"
    );
    assert_eq!(dump(b), live);
}

/// A fetch that completes and installs makes `b` equal to `a`.
/// A fetch through `addr` that fails because the stream broke (at once, not by
/// stalling), leaving `b`'s live state as `live` and nothing installable.
async fn broken_stream(addr: SocketAddr, b: &mut KvStore, live: &[StatePart]) {
    let (res, took) = fetch(addr, b, NO_STALL).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("state stream from node 1")),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    untouched(b, live);
}

async fn fetch_and_install(addr: SocketAddr, a: &KvStore, b: &mut KvStore) {
    let (res, _) = fetch(addr, b, NO_STALL).await;
    assert_eq!(res.unwrap(), a.applied_index());
    b.install_staged().unwrap();
    assert_same(a, b);
}

#[tokio::test]
async fn a_fetch_over_tcp_copies_data_versions_and_sessions() {
    let (_pa, a, _pb, mut b, (retry, answer)) = stores();
    let live = dump(&b);
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    let (res, _) = fetch(addr, &b, NO_STALL).await;
    assert_eq!(res.unwrap(), a.applied_index());
    assert_eq!(dump(&b), live, "a fetch only stages");
    b.install_staged().unwrap();
    // Byte for byte: keys, values with their versions, the revision, the sessions.
    assert_same(&a, &b);
    assert!(inactive_is_empty(&b));
    // The sessions came along: a retry on the receiver gets the original answer.
    assert_eq!(apply(&mut b, &[retry]), vec![answer]);
}

/// Stops an export after `after` parts until released (the serving side is then stuck
/// mid-stream, with those parts on their way).
struct Gated {
    kv: KvStore,
    after: usize,
    reached: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Transferable for Gated {
    fn machine(&self) -> crate::machine::Machine {
        crate::machine::Machine::Kv
    }

    fn importer(&self) -> Result<Box<dyn Import>> {
        Transferable::importer(&self.kv)
    }

    fn export(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut n = 0;
        Transferable::export(&self.kv, pinned, &mut |p| {
            if n == self.after {
                let _ = self.reached.lock().unwrap().send(());
                let _ = self
                    .release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
            }
            n += 1;
            sink(p)
        })
    }
}

#[tokio::test]
async fn a_sender_that_dies_mid_stream_fails_the_fetch_and_the_next_one_succeeds() {
    let (_pa, a, _pb, mut b, _) = stores();
    let live = dump(&b);

    // The serving task is killed after it handed out 3 chunks.
    let (reached_tx, reached) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let gated = Gated {
        kv: a.clone(),
        after: 3,
        reached: Mutex::new(reached_tx),
        release: Mutex::new(release_rx),
    };
    let (addr, server) = serve_state(Arc::new(gated)).await;
    let fetching = {
        let b = b.clone();
        tokio::spawn(async move { fetch(addr, &b, NO_STALL).await })
    };
    tokio::task::spawn_blocking(move || reached.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the export reached chunk 3");
    server.abort();
    let _ = server.await;
    let (res, took) = fetching.await.unwrap();
    drop(release);
    let err = res.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("state stream from node 1")),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "failed at once, not by stalling: {took:?}"
    );
    untouched(&mut b, &live);

    // The connection is cut on the wire after 2 chunks went through.
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    let proxy = Proxy::start(
        addr,
        Arc::new(|conn, dir, frame| match (conn, dir, frame) {
            (0, Dir::ToClient, 2) => Action::Cut,
            _ => Action::Forward,
        }),
    )
    .await;
    broken_stream(proxy.addr, &mut b, &live).await;

    // The next fetch (through the same proxy, now forwarding) starts over and completes.
    fetch_and_install(proxy.addr, &a, &mut b).await;
}

#[tokio::test]
async fn a_sender_that_pauses_past_the_stall_limit_fails_the_fetch_in_bounded_time() {
    let (_pa, a, _pb, mut b, _) = stores();
    let live = dump(&b);
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    let proxy = Proxy::start(
        addr,
        Arc::new(|conn, dir, frame| match (conn, dir, frame) {
            (0, Dir::ToClient, 2) => Action::Pause(Duration::from_secs(5)),
            _ => Action::Forward,
        }),
    )
    .await;
    let (res, took) = fetch(proxy.addr, &b, STALL).await;
    let err = res.unwrap_err();
    assert_eq!(
        err,
        Error::Unavailable(format!("no state frame from node 1 for {STALL:?}"))
    );
    assert!(took >= STALL, "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the stall limit ended it: {took:?}"
    );
    untouched(&mut b, &live);
    fetch_and_install(proxy.addr, &a, &mut b).await;
}

#[tokio::test]
async fn a_sender_that_pauses_within_the_stall_limit_is_waited_for() {
    let (_pa, a, _pb, mut b, _) = stores();
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    // The first four frames each come 600 ms late: 2.4 s of pauses in all, each well
    // within a limit of 1.5 s (which leaves room for a loaded machine's own delays).
    let (limit, pause) = (Duration::from_millis(1500), Duration::from_millis(600));
    let proxy = Proxy::start(
        addr,
        Arc::new(move |_, dir, frame| match dir {
            Dir::ToClient if frame < 4 => Action::Pause(pause),
            _ => Action::Forward,
        }),
    )
    .await;
    let (res, took) = fetch(proxy.addr, &b, limit).await;
    assert_eq!(res.unwrap(), a.applied_index());
    assert!(took >= pause * 4, "the pauses happened: {took:?}");
    assert!(took > limit, "the limit is per frame, not per transfer");
    b.install_staged().unwrap();
    assert_same(&a, &b);
}

#[tokio::test]
async fn a_damaged_or_cut_chunk_on_the_wire_is_refused() {
    let (_pa, a, _pb, mut b, _) = stores();
    let live = dump(&b);
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    let proxy = Proxy::start(
        addr,
        Arc::new(|conn, dir, frame| match (conn, dir, frame) {
            (0, Dir::ToClient, 1) => Action::Corrupt,
            (1, Dir::ToClient, 1) => Action::Truncate,
            _ => Action::Forward,
        }),
    )
    .await;
    // One flipped bit in the middle of chunk 1 (inside a value): its CRC refuses it.
    let (res, _) = fetch(proxy.addr, &b, NO_STALL).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, Error::Storage(m) if m.contains("state chunk 1 is corrupt")),
        "{err}"
    );
    untouched(&mut b, &live);
    // Half of chunk 1, then the connection closes.
    broken_stream(proxy.addr, &mut b, &live).await;
    fetch_and_install(proxy.addr, &a, &mut b).await;
}

#[tokio::test]
async fn a_receiver_that_dies_mid_import_discards_the_staged_slot_on_restart() {
    let (_pa, a, pb, b, _) = stores();
    let live = dump(&b);
    let (addr, _server) = serve_state(Arc::new(a.clone())).await;
    let mut proxy = Proxy::start(
        addr,
        Arc::new(|conn, dir, frame| match (conn, dir, frame) {
            (0, Dir::ToClient, 3) => Action::Pause(Duration::from_secs(60)),
            _ => Action::Forward,
        }),
    )
    .await;
    let fetching = {
        let b = b.clone();
        let addr = proxy.addr;
        tokio::spawn(async move { fetch(addr, &b, NO_STALL).await })
    };
    proxy.wait_seen(0, Dir::ToClient, 3).await;
    // Chunks 0..3 reach the staging slot while chunk 3 is held back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while inactive_is_empty(&b) {
        assert!(Instant::now() < deadline, "nothing was staged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The receiving process dies: its fetch and every handle on its database go away.
    fetching.abort();
    assert!(fetching.await.unwrap_err().is_cancelled());
    drop(b);
    let mut b = pb.open();
    assert!(
        inactive_is_empty(&b),
        "the restart discarded the partial import"
    );
    untouched(&mut b, &live);
    // A new fetch (a new connection, forwarded) completes.
    fetch_and_install(proxy.addr, &a, &mut b).await;
}

/// The production limit is still 60 s.
#[test]
fn the_production_stall_limit_is_a_minute() {
    assert_eq!(super::STALL, Duration::from_secs(60));
}
