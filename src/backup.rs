//! Backups: a consistent online copy of a node's whole database in one checksummed file,
//! and a new cluster seeded from it.
//!
//! **Taking one** ([`serve`], behind gRPC `Cluster.Backup`, HTTP `GET /v1/backup` and
//! `paxosdb backup FILE`). The node first passes a read barrier, so the copy holds every
//! write acknowledged before the request. Then it pins a view of every state machine at
//! one applied index: in the node thread, between two applied entries, every machine makes
//! what it applied durable (so its stored applied index is the node's), and one export
//! thread per machine takes its point-in-time view — a RocksDB snapshot, an SQLite read
//! transaction — and reports the applied index of that view (the `pinned` callback of
//! [`crate::transfer::Transferable::export`]). The node thread waits for those reports
//! (a few milliseconds) and applies nothing meanwhile; every view must be at the node's
//! applied index, or the backup fails. Then the node goes on applying while the views are
//! streamed, one machine after the other, each through a channel of a few parts, so the
//! reader's pace (the network, the client's disk) paces the export and memory holds a few
//! parts, never the state.
//!
//! **The file.** [`MAGIC`], then records, each `[length u32 LE][CRC-32 of the payload u32
//! LE][payload]`, the payload a [`Record`]: one [`Header`] (format, paxosdb version, node,
//! applied index, machines, membership, time); the machines' parts, in the encoding of a
//! state transfer (each machine's chunks carry their own CRCs, and its end record counts
//! and a digest over its whole state); and an [`End`] with the number and bytes of parts
//! and a CRC-32 over every byte of the file before it.
//!
//! **Verifying and restoring** ([`verify`], [`restore`]). Both read the file with a
//! [`Decoder`] and hand each machine's parts to that machine's importer — the code that
//! stages a state transfer, with every check it makes — into a scratch directory beside the
//! file (verify, removed afterwards) or into a new node's data directory (restore). Restore
//! then installs the states, drops the membership they recorded (the new cluster is the one
//! `--id` and `--peers` name, in configuration 1), records the node's identity with a new
//! incarnation, and makes everything durable. A server started on that directory begins
//! its log where the backup ends (`node::paxos::build` starts the log where the state
//! ends). Run it once per node of the new cluster, each with its own `--id` and the same
//! `--peers`: every node then starts from the same state at the same index.
//!
//! # Invariants
//!
//! - a backup holds every machine at one applied index, and every write acknowledged
//!   before it was requested;
//! - a byte changed anywhere in a file fails a record's CRC, the file's CRC or a machine's
//!   own checks, and a file cut short anywhere is "truncated": either way it is refused
//!   with the byte offset, before restore records anything a server would start from; a
//!   record longer than [`MAX_RECORD`] is refused before it is read, so a corrupt length
//!   cannot make a reader allocate more;
//! - restore writes only into a data directory that is missing or empty, and removes what
//!   it wrote if it fails; until it is done, a [`RESTORING`] file in the directory makes a
//!   server refuse it (a restore killed half way cannot clean up).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::machine::{Machine, NodeId};
use crate::node::NodeHandle;
use crate::transfer::{Import, States, IN_FLIGHT};
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"PAXOSDB BACKUP\n\0";
/// The file format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The longest record a backup holds. A part is about 1 MiB, but a key-value pair larger
/// than that travels in a part of its own, so parts are as large as the largest value a
/// node accepts; this bound sits above every frame a node can send (a record is read as
/// its bytes arrive, never allocated from its length).
pub const MAX_RECORD: usize = 1 << 30;
/// How long the node thread waits for the machines to pin their views.
const PIN_WAIT: Duration = Duration::from_secs(10);

/// What a backup holds, written first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The paxosdb version that wrote it.
    pub version: String,
    /// The node it was taken from.
    pub node: NodeId,
    /// Every machine's state in it is the state after this many log entries.
    pub applied: u64,
    /// The machines whose states follow, in order.
    pub machines: Vec<Machine>,
    /// The membership the node reported just before the views were pinned
    /// (`Membership::describe`), for the reader; restore does not use it.
    pub members: String,
    pub config_id: u32,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// The last record: what a complete file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub parts: u64,
    pub part_bytes: u64,
    /// CRC-32 over every byte of the file before this record.
    pub crc: u32,
}

/// One record of a backup file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Header(Header),
    /// A part of one machine's state, in that machine's transfer encoding.
    Part {
        machine: Machine,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    End(End),
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_RECORD as u64)
}

/// Encodes a backup file record by record, keeping the file's running CRC.
#[derive(Default)]
pub struct Encoder {
    crc: crc32fast::Hasher,
    parts: u64,
    part_bytes: u64,
}

impl Encoder {
    /// The magic and the header record.
    pub fn header(&mut self, h: &Header) -> Result<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        self.crc.update(MAGIC);
        out.extend(self.record(&Record::Header(h.clone()))?);
        Ok(out)
    }

    pub fn part(&mut self, machine: Machine, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.parts += 1;
        self.part_bytes += bytes.len() as u64;
        self.record(&Record::Part { machine, bytes })
    }

    /// The end record; nothing follows it.
    pub fn end(self) -> Result<Vec<u8>> {
        let end = End {
            parts: self.parts,
            part_bytes: self.part_bytes,
            crc: self.crc.clone().finalize(),
        };
        frame(&Record::End(end))
    }

    fn record(&mut self, r: &Record) -> Result<Vec<u8>> {
        let out = frame(r)?;
        self.crc.update(&out);
        Ok(out)
    }
}

fn frame(r: &Record) -> Result<Vec<u8>> {
    let payload = codec()
        .serialize(r)
        .map_err(|e| Error::Internal(format!("encoding a backup record: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend(crc32fast::hash(&payload).to_le_bytes());
    out.extend(payload);
    Ok(out)
}

/// Reads a backup file record by record and checks it as it goes: the magic, each
/// record's length and CRC, the header's format, and at the end the counts and the file
/// CRC in the end record, and that nothing follows it.
pub struct Decoder<R> {
    r: R,
    crc: crc32fast::Hasher,
    offset: u64,
    header: Header,
    parts: u64,
    part_bytes: u64,
    ended: bool,
}

/// A file that is not a complete, intact backup: nothing was done with it.
fn bad(offset: u64, what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("not a valid backup: {what} (at byte {offset})"))
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the magic and the header.
    pub fn open(r: R) -> Result<Decoder<R>> {
        let mut d = Decoder {
            r,
            crc: crc32fast::Hasher::new(),
            offset: 0,
            header: Header::default(),
            parts: 0,
            part_bytes: 0,
            ended: false,
        };
        let mut magic = [0u8; 16];
        d.fill(
            &mut magic,
            "the file is shorter than a backup's first bytes",
        )?;
        if &magic != MAGIC {
            return Err(Error::InvalidInput(
                "not a paxosdb backup: the file does not start with a backup's first bytes".into(),
            ));
        }
        d.crc.update(&magic);
        match d.record()? {
            Record::Header(h) if h.format == FORMAT => d.header = h,
            Record::Header(h) => {
                return Err(Error::InvalidInput(format!(
                    "backup format {} (written by paxosdb {}) is not one this paxosdb {} \
                     reads (format {FORMAT})",
                    h.format,
                    h.version,
                    env!("CARGO_PKG_VERSION")
                )))
            }
            _ => return Err(bad(16, "the first record is not the header")),
        }
        Ok(d)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next part, or `None` after the end record, once it and the file checked out.
    pub fn next_part(&mut self) -> Result<Option<(Machine, Vec<u8>)>> {
        if self.ended {
            return Ok(None);
        }
        let at = self.offset;
        match self.record()? {
            Record::Part { machine, bytes } => {
                self.parts += 1;
                self.part_bytes += bytes.len() as u64;
                Ok(Some((machine, bytes)))
            }
            Record::End(end) => {
                let crc = self.crc.clone().finalize();
                if end.crc != crc {
                    return Err(bad(at, "the file's checksum does not match its content"));
                }
                if (end.parts, end.part_bytes) != (self.parts, self.part_bytes) {
                    return Err(bad(
                        at,
                        format!(
                            "the end record counts {} parts of {} bytes, the file holds {} of {}",
                            end.parts, end.part_bytes, self.parts, self.part_bytes
                        ),
                    ));
                }
                let mut more = [0u8; 1];
                if self.r.read(&mut more)? != 0 {
                    return Err(bad(self.offset, "bytes follow the end record"));
                }
                self.ended = true;
                Ok(None)
            }
            Record::Header(_) => Err(bad(at, "a second header")),
        }
    }

    /// One record, its length and CRC checked; folded into the file CRC unless it is
    /// the end record (which holds that CRC).
    fn record(&mut self) -> Result<Record> {
        let at = self.offset;
        let mut head = [0u8; 8];
        self.fill(&mut head, "the file ends before its end record: truncated")?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err(bad(
                at,
                format!("a record of {len} bytes, more than a backup's {MAX_RECORD}"),
            ));
        }
        // Grown as bytes arrive: a length is not trusted with an allocation.
        let mut payload = Vec::with_capacity(len.min(1 << 20));
        let n = (&mut self.r).take(len as u64).read_to_end(&mut payload)?;
        self.offset += n as u64;
        if n < len {
            return Err(bad(self.offset, "the file ends inside a record: truncated"));
        }
        if crc32fast::hash(&payload) != crc {
            return Err(bad(at, "a record's checksum does not match its content"));
        }
        let r: Record = codec()
            .deserialize(&payload)
            .map_err(|e| bad(at, format!("a record that does not decode ({e})")))?;
        if !matches!(r, Record::End(_)) {
            self.crc.update(&head);
            self.crc.update(&payload);
        }
        Ok(r)
    }

    fn fill(&mut self, buf: &mut [u8], short: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => return Err(bad(self.offset + got as u64, short)),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.offset += got as u64;
        Ok(())
    }
}

/// Streams a backup of this node (see the module docs): the file's bytes, about a part at
/// a time. An error is the stream's last item; the bytes before it are no valid file (it
/// has no end record), so a client that stores them anyway has a file every reader
/// refuses as truncated.
/// `done` is called once the backup ended, with whether it was sent whole.
pub fn serve(
    node: NodeHandle,
    states: States,
    id: NodeId,
    done: impl FnOnce(bool) + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        let started = Instant::now();
        match produce(&node, &states, id, &tx).await {
            Ok((applied, bytes)) => {
                tracing::info!(
                    applied,
                    bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "backup sent"
                );
                done(true);
            }
            Err(e) => {
                tracing::warn!("backup failed: {e}");
                let _ = tx.send(Err(e)).await;
                done(false);
            }
        }
    });
    rx
}

type Parts = tokio::sync::mpsc::Receiver<Result<Vec<u8>>>;

/// Takes and sends the backup; returns its applied index and size.
async fn produce(
    node: &NodeHandle,
    states: &States,
    id: NodeId,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>>>,
) -> Result<(u64, u64)> {
    node.read_barrier().await?;
    let membership = node.status().await?.membership;
    // One export thread per machine, each waiting for the node thread's go.
    let (pins_tx, pins_rx) = std::sync::mpsc::channel::<Result<(Machine, u64)>>();
    let mut gos = Vec::new();
    let mut streams: Vec<(Machine, Parts, tokio::task::JoinHandle<()>)> = Vec::new();
    for m in states.all() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        let (pins, m) = (pins_tx.clone(), m.clone());
        let machine = m.machine();
        let thread = tokio::task::spawn_blocking(move || {
            if go_rx.recv().is_err() {
                return; // the backup ended before the views were pinned
            }
            let pinned = std::cell::Cell::new(false);
            let res = m.export(
                &mut |applied| {
                    pinned.set(true);
                    let _ = pins.send(Ok((machine, applied)));
                },
                &mut |bytes| {
                    parts_tx
                        .blocking_send(Ok(bytes))
                        .map_err(|_| Error::Unavailable("the backup's reader went away".into()))
                },
            );
            if let Err(e) = res {
                match pinned.get() {
                    false => drop(pins.send(Err(e))),
                    true => drop(parts_tx.blocking_send(Err(e))),
                }
            }
        });
        gos.push(go_tx);
        streams.push((machine, parts_rx, thread));
    }
    drop(pins_tx);
    let n = streams.len();
    let (applied, pins) = node
        .between(move |applied| -> Result<(u64, Vec<(Machine, u64)>)> {
            let applied = applied?;
            for go in gos {
                let _ = go.send(());
            }
            let deadline = Instant::now() + PIN_WAIT;
            let mut pins = Vec::with_capacity(n);
            while pins.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match pins_rx.recv_timeout(left) {
                    Ok(pin) => pins.push(pin?),
                    Err(_) => {
                        return Err(Error::Unavailable(format!(
                            "backup: the state machines did not take their views within \
                             {PIN_WAIT:?}"
                        )))
                    }
                }
            }
            Ok((applied, pins))
        })
        .await??;
    // After a crash between two machines' commits, one may be an entry ahead until the
    // node applies that entry again: nothing to copy consistently yet, retry.
    if let Some((m, at)) = pins.iter().find(|(_, at)| *at != applied) {
        return Err(Error::Unavailable(format!(
            "backup: the {m:?} state is at applied index {at}, the node at {applied}; \
             retry once the node applied its next entry"
        )));
    }
    let header = Header {
        format: FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: id,
        applied,
        machines: streams.iter().map(|(m, _, _)| *m).collect(),
        members: membership.describe(),
        config_id: membership.config_id,
        created_unix_ms: crate::metrics::unix_ms(),
    };
    let gone = || Error::Unavailable("the backup's reader went away".into());
    let mut enc = Encoder::default();
    let mut sent = 0u64;
    let first = enc.header(&header)?;
    sent += first.len() as u64;
    tx.send(Ok(first)).await.map_err(|_| gone())?;
    for (machine, mut parts, thread) in streams {
        while let Some(part) = parts.recv().await {
            let rec = enc.part(machine, part?)?;
            sent += rec.len() as u64;
            tx.send(Ok(rec)).await.map_err(|_| gone())?;
        }
        // The stream ends when its thread does: a thread that died (a panic) ended it
        // early, and what it sent is not the whole state.
        thread.await.map_err(|e| {
            Error::Internal(format!(
                "backup: the {machine:?} export ended abnormally: {e}"
            ))
        })?;
    }
    let end = enc.end()?;
    sent += end.len() as u64;
    tx.send(Ok(end)).await.map_err(|_| gone())?;
    Ok((applied, sent))
}

/// What a checked backup holds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub header: Header,
    /// Bytes of the file.
    pub bytes: u64,
    pub parts: u64,
}

/// Reads a whole backup into the staging areas of `states`, every machine's importer
/// checking its parts; returns the summary once every staged state checked out at the
/// header's applied index.
fn stage<R: Read>(mut dec: Decoder<R>, states: &States) -> Result<Summary> {
    // What the importers refuse is the backup's fault; a disk error is this machine's.
    let corrupt = |m: Machine, e: Error| match e {
        e @ Error::Storage(_) => e,
        e => Error::InvalidInput(format!("the backup's {m:?} state: {e}")),
    };
    let mut importers: Vec<(Machine, Option<Box<dyn Import>>)> = states
        .all()
        .iter()
        .map(|m| Ok((m.machine(), Some(m.importer()?))))
        .collect::<Result<_>>()?;
    if let Some(m) = (importers.iter()).find(|(m, _)| !dec.header().machines.contains(m)) {
        return Err(Error::InvalidInput(format!(
            "the backup holds no {:?} state (it holds {:?})",
            m.0,
            dec.header().machines
        )));
    }
    while let Some((machine, bytes)) = dec.next_part()? {
        let (_, imp) = (importers.iter_mut())
            .find(|(m, _)| *m == machine)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "the backup holds state of a {machine:?} machine this paxosdb lacks"
                ))
            })?;
        (imp.as_mut().expect("taken only below"))
            .part(bytes)
            .map_err(|e| corrupt(machine, e))?;
    }
    let applied = dec.header().applied;
    for (machine, imp) in importers {
        let at = (imp.expect("not taken yet"))
            .finish()
            .map_err(|e| corrupt(machine, e))?;
        if at != applied {
            return Err(Error::InvalidInput(format!(
                "the backup's {machine:?} state is at applied index {at}, its header says \
                 {applied}"
            )));
        }
    }
    Ok(Summary {
        header: dec.header().clone(),
        bytes: dec.offset(),
        parts: dec.parts,
    })
}

fn open_file(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::InvalidInput(format!("cannot read backup {}: {e}", path.display())))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, f))
}

/// Removes a directory tree when dropped, unless disarmed (`None`); one that existed
/// before (empty) is made again, empty.
struct Scratch {
    dir: Option<PathBuf>,
    existed: bool,
}

impl Scratch {
    fn of(dir: Option<&Path>) -> Scratch {
        Scratch {
            dir: dir.map(Path::to_path_buf),
            existed: dir.is_some_and(Path::is_dir),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&p);
            if self.existed {
                let _ = std::fs::create_dir(&p);
            }
        }
    }
}

/// Checks a backup end to end: restores it into a scratch directory beside the file
/// (removed afterwards, so it needs about the space the restored database takes there).
pub fn verify(path: &Path) -> Result<Summary> {
    let dec = Decoder::open(open_file(path)?)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent.join(format!(
        ".paxosdb-verify-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _scratch = Scratch::of(Some(&dir));
    let stores = crate::server::open_stores(&dir, None)?;
    stage(dec, &stores.states)
}

/// The file a restore under way keeps in the data directory (see [`restore`]); a server
/// refuses a directory holding it.
pub const RESTORING: &str = "RESTORING";

/// What [`restore`] made.
#[derive(Clone, Debug)]
pub struct Restored {
    pub summary: Summary,
    pub data_dir: PathBuf,
}

/// Seeds the data directory of `cfg` (missing or empty) from the backup at `path`, as
/// node `cfg.id` of a new cluster of `cfg.peers` (see the module docs).
pub fn restore(path: &Path, cfg: &Config) -> Result<Restored> {
    cfg.validate()?;
    let dec = Decoder::open(open_file(path)?)?;
    let dir = &cfg.data_dir;
    let empty =
        |d: &Path| -> Result<bool> { Ok(!d.exists() || std::fs::read_dir(d)?.next().is_none()) };
    if !empty(dir)? {
        return Err(Error::Config(format!(
            "data directory {} is not empty: restore seeds a new node, in a missing or \
             empty directory",
            dir.display()
        )));
    }
    if let Some(sql) = &cfg.sql_dir {
        if !empty(sql)? {
            return Err(Error::Config(format!(
                "SQL directory {} is not empty: restore seeds a new node",
                sql.display()
            )));
        }
    }
    let mut cleanup = Scratch::of(Some(dir));
    let mut sql_cleanup = Scratch::of(cfg.sql_dir.as_deref());
    // Until the last step, a marker says the directory is not a node: a restore killed
    // half way (no error returned, nothing cleaned up) leaves a directory a server
    // refuses, not one holding the old cluster's membership.
    std::fs::create_dir_all(dir)?;
    let marker = dir.join(RESTORING);
    std::fs::write(&marker, b"paxosdb restore under way\n")?;
    crate::storage::db::sync_dir(dir)?;
    let mut stores = crate::server::open_stores(dir, cfg.sql_dir.as_deref())?;
    let summary = stage(dec, &stores.states)?;
    // The secondary machine first, the KV store (which records the membership) last, as
    // a joining node does.
    stores.sql.install_staged()?;
    crate::machine::StateMachine::install_staged(&mut stores.kv)?;
    stores.sql.forget_membership()?;
    stores.kv.forget_membership()?;
    crate::server::check_identity(&stores.db, cfg, false)?;
    drop(stores);
    std::fs::remove_file(&marker)?;
    crate::storage::db::sync_dir(dir)?;
    cleanup.dir = None;
    sql_cleanup.dir = None;
    Ok(Restored {
        summary,
        data_dir: dir.clone(),
    })
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
