//! Overload, big values and hostile clients on real processes (issue #8): every scenario
//! that used to take a node or the cluster down, now with bounds that hold.
//!
//! The script:
//! - a follower down while 40 MiB of 1 MiB values were written (more than a peer frame
//!   of 16 MiB) comes back and catches up by a state transfer, with every node's memory
//!   bounded, instead of wedging the leader with a sync message that can never be sent;
//! - a burst of 1,000 connections each pipelining two 64 KiB SETs into one node gets
//!   `+OK` or a retryable `-BUSY` for every SET, no node dies, every node's peak memory
//!   stays far below the burst's size, and every acknowledged SET is readable;
//! - connections beyond the limit are refused with the protocol's own error (RESP, HTTP),
//!   idle ones are closed after the idle timeout, an HTTP client that never finishes its
//!   headers is cut off, and the node keeps serving;
//! - a disk that fills up (a small tmpfs, as root): below the free-space floor the node
//!   refuses client writes with `-BUSY` and still serves reads; when replication fills it
//!   completely, it exits with code 3 and a clear line instead of a panic; with space back
//!   it restarts and catches up.
//!
//! Each prints the figures the closing note of issue #8 reports (peak RSS, time to
//! recovery, other clients' latency).

mod common;

use common::{eventually, Cluster};
use paxosdb::client::Client;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Peak resident memory of process `pid` so far, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn pid(c: &Cluster, id: u64) -> u32 {
    c.nodes[id as usize - 1]
        .child
        .as_ref()
        .expect("node running")
        .id()
}

/// Every running node's peak RSS in MiB, by id.
fn peaks(c: &Cluster) -> Vec<(u64, u64)> {
    c.running()
        .into_iter()
        .map(|id| (id, peak_rss_mib(pid(c, id))))
        .collect()
}

/// True while node `id`'s process runs.
fn alive(c: &mut Cluster, id: u64) -> bool {
    c.nodes[id as usize - 1]
        .child
        .as_mut()
        .is_some_and(|ch| matches!(ch.try_wait(), Ok(None)))
}

/// One RESP request as a multibulk of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one single-line reply (`+…`, `-…`, `:…`), without its CRLF.
async fn line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(s.trim_end().to_string())
}

fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Issue #8.1: a lagging follower used to wedge the cluster: the sync message for it was
/// over the frame limit, failed to send, and was rebuilt forever; the leader grew to 2 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_on_big_values_catches_up_by_state_transfer() {
    let mut c = Cluster::start_with(3, &[("PAXOSDB_MAX_FRAME_BYTES", "16777216")]).await;
    let leader = c.leader().await;
    let down = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(down);
    let client = c.client_for(leader);
    let mut writers = Vec::new();
    for w in 0..8u8 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..5u8 {
                let value = vec![w * 16 + i; 1 << 20];
                client
                    .put(format!("big/{w}/{i}").as_bytes(), &value, false)
                    .await
                    .expect("write through the leader");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let target = c.applied(leader).await.unwrap();
    let started = Instant::now();
    c.restart(down).await;
    c.wait_applied(down, target, Duration::from_secs(60)).await;
    let caught_up = started.elapsed();
    let log = c.log_of(down);
    assert!(
        log.contains("state installed"),
        "expected a state transfer:\n{log}"
    );
    // Its copy is complete: every value, read locally on it.
    let local = c.client_for(down);
    for w in 0..8u8 {
        for i in 0..5u8 {
            let (v, _) = local
                .get(format!("big/{w}/{i}").as_bytes(), true)
                .await
                .unwrap();
            let v = v.expect("present on the caught-up node");
            assert_eq!(v.value.len(), 1 << 20);
            assert!(v.value.iter().all(|b| *b == w * 16 + i));
        }
    }
    // And it follows the log again.
    local.put(b"after", b"yes", false).await.unwrap();
    let peaks = peaks(&c);
    eprintln!("lagging follower: caught up in {caught_up:?}; peak RSS MiB by node {peaks:?}");
    for (id, mib) in peaks {
        assert!(mib < 768, "node {id} peaked at {mib} MiB");
    }
}

/// Issue #8.2: 2,000 connections pipelining 64 KiB SETs into one node used to OOM-kill
/// both followers. Now writes beyond `max_inflight_bytes` are refused with `-BUSY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_big_writes_gets_busy_refusals_and_every_node_survives() {
    let mut c = Cluster::start_with(3, &[("PAXOSDB_MAX_INFLIGHT_BYTES", "16777216")]).await;
    let leader = c.leader().await;
    let target = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != target).unwrap();
    let addr = c.nodes[target as usize - 1].resp_addr.clone();

    // Another client reads through another node during the burst.
    let reader = c.client_for(other);
    reader.put(b"probe", b"p", false).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                reader.get(b"probe", false).await.expect("probe read");
                lat.push(t.elapsed());
            }
            lat
        })
    };

    let value = vec![b'v'; 64 * 1024];
    let started = Instant::now();
    // Connect first (a debug build accepts slowly while it parses; a flood of SYNs over a
    // full accept queue would measure the kernel, not the node), then send at once.
    let mut socks = Vec::new();
    for _ in 0..1000 {
        socks.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut tasks = Vec::new();
    for (i, s) in socks.into_iter().enumerate() {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = BufReader::new(s);
            let keys = [format!("burst/{i}/0"), format!("burst/{i}/1")];
            let mut req = Vec::new();
            for k in &keys {
                req.extend(resp(&[b"SET", k.as_bytes(), &value]));
            }
            r.get_mut().write_all(&req).await.expect("send");
            let mut replies = Vec::new();
            for k in keys {
                let reply = line(&mut r)
                    .await
                    .unwrap_or_else(|e| format!("(error: {e})"));
                replies.push((k, reply));
            }
            replies
        }));
    }
    let (mut ok, mut busy, mut unknown, mut elsewhere, mut acked) = (0, 0, 0, 0, Vec::new());
    for t in tasks {
        for (k, reply) in t.await.unwrap() {
            if reply == "+OK" {
                ok += 1;
                acked.push(k);
            } else if reply.starts_with("-BUSY") {
                busy += 1;
            } else if reply.starts_with("-TRYAGAIN") {
                // Nothing was applied; another node can serve it. With four clusters
                // starving two cores at once (this file's tests run in parallel) the
                // target can fall behind its peers' compacted logs and fetch a state, or
                // (rarely: idle links carry keep-alives and the contact window is at
                // least a second) hear from no peer for a whole window.
                elsewhere += 1;
            } else if reply.starts_with("-ERR outcome unknown") {
                // Admitted, but not decided within the request timeout (a starved CPU
                // in CI): reported as unknown, never as failed, which is right.
                unknown += 1;
            } else {
                let log = c.log_of(target);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("unexpected reply to SET {k}: {reply}\n{}", tail.join("\n"));
            }
        }
    }
    let burst = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = probe.await.unwrap();
    let peaks = peaks(&c);
    eprintln!(
        "burst of 2000 x 64 KiB SETs into node {target}: {ok} OK, {busy} BUSY, {unknown} \
         unknown, {elsewhere} TRYAGAIN in {burst:?}; \
         other clients' read p99 {:?} over {} reads; peak RSS MiB by node {peaks:?}",
        p99(lat.clone()),
        lat.len()
    );
    for id in 1..=3 {
        assert!(alive(&mut c, id), "node {id} died:\n{}", c.log_of(id));
    }
    assert!(busy > 0, "the in-flight bound never engaged");
    assert!(ok > 0, "nothing was admitted");
    for (id, mib) in peaks {
        assert!(
            mib < 512,
            "node {id} peaked at {mib} MiB for a 128 MiB burst"
        );
    }
    // Every acknowledged SET is there, read through the leader.
    let check = c.client_for(leader);
    for k in acked {
        let (v, _) = check.get(k.as_bytes(), false).await.unwrap();
        assert_eq!(v.expect("acknowledged SET present").value.len(), 64 * 1024);
    }
}

/// Issue #8.3: ~20k idle sockets used to exhaust a node's file descriptors, and it
/// panicked when RocksDB could not open its WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_are_refused_and_idle_ones_closed() {
    let mut c = Cluster::start_with(
        3,
        &[
            ("PAXOSDB_MAX_CONNECTIONS", "40"),
            ("PAXOSDB_IDLE_TIMEOUT_MS", "3000"),
            ("PAXOSDB_HEADER_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let n = &c.nodes[0];
    let (resp_addr, http_addr) = (n.resp_addr.clone(), n.http_addr.clone());
    // 120 connections at once: at most 40 are served, the rest refused in Redis' words.
    let mut held = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..120 {
        let s = TcpStream::connect(&resp_addr).await.expect("connect");
        let mut r = BufReader::new(s);
        r.get_mut().write_all(&resp(&[b"PING"])).await.unwrap();
        match line(&mut r).await.as_deref() {
            Ok("+PONG") => {
                served += 1;
                held.push(r);
            }
            Ok("-ERR max number of clients reached") => refused += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    eprintln!("connections: {served} served, {refused} refused at a limit of 40");
    assert!(
        served <= 40 && refused >= 80,
        "{served} served, {refused} refused"
    );
    // HTTP shares the limit: refused with a 503 and Retry-After.
    let mut h = TcpStream::connect(&http_addr).await.unwrap();
    h.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), h.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after"),
        "{answer}"
    );
    // Writes through another node go on, and the crowded node applies them.
    let other = c.client_for(2);
    other.put(b"during", b"crowd", false).await.unwrap();
    // Idle connections are closed after the idle timeout.
    let closed_after = Instant::now();
    for r in &mut held {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
            .await
            .expect("an idle connection is closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got data");
    }
    eprintln!("idle connections closed after {:?}", closed_after.elapsed());
    drop(held);
    // Places are free again: a new client is served.
    let s = TcpStream::connect(&resp_addr).await.unwrap();
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(&resp(&[b"GET", b"during"]))
        .await
        .unwrap();
    assert_eq!(line(&mut r).await.unwrap(), "$5");
    // An HTTP client that never finishes its headers is cut off.
    let mut slow = TcpStream::connect(&http_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        cut.is_ok(),
        "a client slow to send headers is never cut off"
    );
    assert!(alive(&mut c, 1));
}

/// A tmpfs mounted over a node's data directory for one test; unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// Moves `dir` onto a new tmpfs of `mib` MiB; the error says why it could not.
    fn mount(dir: &std::path::Path, mib: u64) -> Result<SmallDisk, String> {
        let saved = dir.with_extension("saved");
        std::fs::rename(dir, &saved).unwrap();
        std::fs::create_dir(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            std::fs::remove_dir(dir).unwrap();
            std::fs::rename(&saved, dir).unwrap();
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(saved.join("."))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Issue #8.8: a full disk used to panic the node thread. Now: below the free-space floor
/// the node refuses client writes (retryable) and serves reads; a disk that replication
/// keeps filling stops the node at half the floor with exit code 3 and a clear line; with
/// space back it restarts and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_then_stops_the_node_cleanly() {
    if !common::running_as_root() {
        // As root (CI) this test must run; elsewhere it cannot mount a tmpfs.
        common::skip(
            "a_full_disk_refuses_writes_then_stops_the_node_cleanly",
            "mounting a small tmpfs needs root",
        );
        return;
    }
    let mut c = Cluster::start_with(
        3,
        &[
            ("PAXOSDB_MIN_FREE_DISK_BYTES", "50331648"),
            ("PAXOSDB_MAX_FRAME_BYTES", "16777216"),
        ],
    )
    .await;
    let leader = c.leader().await;
    let f = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(f);
    let disk = match SmallDisk::mount(c.data_dir(f), 160) {
        Ok(d) => d,
        Err(why) => {
            // Root without the right to mount (a container without CAP_SYS_ADMIN).
            common::skip(
                "a_full_disk_refuses_writes_then_stops_the_node_cleanly",
                &why,
            );
            return;
        }
    };
    // Leave 32 MiB: under the 48 MiB floor.
    let filler = c.data_dir(f).join("filler");
    let fill = disk.free().saturating_sub(32 << 20);
    std::fs::write(&filler, vec![1u8; fill as usize]).unwrap();
    c.restart(f).await;
    c.wait_for_leader().await;

    // Below the floor: a write through it is refused at once, retryably, and not applied.
    let addr = c.nodes[f as usize - 1].resp_addr.clone();
    let refusal = eventually(Duration::from_secs(10), "writes refused", || {
        let addr = addr.clone();
        async move {
            let mut r = BufReader::new(TcpStream::connect(&addr).await.ok()?);
            r.get_mut()
                .write_all(&resp(&[b"SET", b"refused", b"x"]))
                .await
                .ok()?;
            let reply = line(&mut r).await.ok()?;
            reply.starts_with("-BUSY").then_some(reply)
        }
    })
    .await;
    assert!(refusal.contains("nearly full"), "{refusal}");
    let lc = c.client_for(leader);
    assert!(lc.get(b"refused", false).await.unwrap().0.is_none());
    // Reads are served.
    lc.put(b"readable", b"yes", false).await.unwrap();
    let (v, _) = c.client_for(f).get(b"readable", false).await.unwrap();
    assert_eq!(v.unwrap().value, b"yes");

    // Replication fills the rest: the node stops with code 3 and says why.
    let value = vec![3u8; 1 << 20];
    let mut written = 0;
    let status = loop {
        if let Some(st) = c.nodes[f as usize - 1]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
        {
            break st;
        }
        assert!(written < 200, "node {f} never stopped:\n{}", c.log_of(f));
        lc.put(format!("fill/{written}").as_bytes(), &value, false)
            .await
            .expect("the majority keeps taking writes");
        written += 1;
    };
    c.nodes[f as usize - 1].child = None;
    let log = c.log_of(f);
    assert_eq!(status.code(), Some(3), "exit status {status:?}:\n{log}");
    assert!(
        log.contains("disk holding the data directory is full"),
        "{log}"
    );
    // It stopped at its reserve (half the floor), before RocksDB met a full disk: a write
    // failing there leaves RocksDB's file writers broken (and Debian's build aborts on the
    // next use instead of exiting with code 3).
    assert!(log.contains("reached its reserve"), "{log}");
    assert!(disk.free() > 8 << 20, "free at the stop: {}", disk.free());

    // Space is back: it restarts and catches up.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    c.restart(f).await;
    let target = c.applied(leader).await.unwrap();
    c.wait_applied(f, target, Duration::from_secs(60)).await;
    let (v, _) = c
        .client_for(f)
        .get(format!("fill/{}", written - 1).as_bytes(), true)
        .await
        .unwrap();
    assert_eq!(v.expect("caught up").value.len(), 1 << 20);
    eprintln!(
        "full disk: stopped after {written} MiB written, back in {:?}",
        started.elapsed()
    );
    let client = Client::new(&[c.nodes[f as usize - 1].client_addr.clone()]).unwrap();
    client.put(b"after", b"space", false).await.unwrap();
    drop(c);
    drop(disk);
}
