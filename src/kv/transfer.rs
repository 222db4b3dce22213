//! State transfer of the key-value state machine: a peer's whole state, streamed in
//! checksummed chunks, staged beside the live state and switched in atomically.
//!
//! This module owns the wire format ([`StatePart`]: [`StateChunk`]s, then one
//! [`StateEnd`]), the sender side ([`KvStore::export`]) and the receiver side
//! ([`KvStore::importer`], [`Importer`]); the bytes are staged and installed by
//! `kv::staging` (`StateMachine::install_staged` makes them live).
//!
//! Invariants:
//! - Neither side holds the whole state in memory: the sender reads one RocksDB snapshot
//!   and hands out a chunk (about [`CHUNK_BYTES`]) at a time; the receiver writes each
//!   chunk to the staging slot as it arrives.
//! - An export is one point-in-time copy: both spaces (kv, then sm, each in key order) and
//!   the applied index in its [`StateEnd`] come from the same view.
//! - Every chunk carries a CRC-32 over its sequence number, space and pairs; the end
//!   carries the number of chunks and pairs and a 64-bit digest over all pairs in order.
//!   The importer refuses a chunk that fails its CRC, comes out of order (seq, space or
//!   key order), or an end that does not match what arrived; a refused chunk changes
//!   nothing, so the same importer can take a correct copy of it.
//! - The live state is untouched until `install_staged`; a staged state becomes
//!   installable only once [`Importer::finish`] verified it and made it durable.

use super::backend::Space;
use super::staging::StageTarget;
use super::{read_counter, Backend, KvStore, K_APPLIED};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Target payload size of one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes a pair counts for in a chunk beyond its key and value (its two lengths).
const PAIR_OVERHEAD: usize = 16;

/// Some consecutive pairs of one space, in key order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChunk {
    /// 0 for the first chunk, then +1.
    pub seq: u64,
    /// 0 = kv (user data), 1 = sm (state machine metadata).
    pub space: u8,
    #[serde(with = "byte_pairs")]
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// CRC-32 over `seq`, `space` and `pairs`.
    pub crc: u32,
}

/// The end of a transfer: what the receiver must have received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateEnd {
    /// The applied index of the transferred state.
    pub applied: u64,
    /// Number of chunks sent.
    pub chunks: u64,
    /// Number of pairs over all chunks.
    pub pairs: u64,
    /// Digest over all pairs in order (see [`Digest`]).
    pub digest: u64,
}

/// One message of a transfer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatePart {
    Chunk(StateChunk),
    End(StateEnd),
}

/// Serializes the pairs as byte strings (`serde_bytes`), not sequences of numbers.
mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(pairs: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let pairs: Vec<(ByteBuf, ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect())
    }
}

fn chunk_crc(seq: u64, space: u8, pairs: &[(Vec<u8>, Vec<u8>)]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&[space]);
    for (k, v) in pairs {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    h.finalize()
}

impl StateChunk {
    /// Bytes of keys and values it carries.
    pub fn payload_bytes(&self) -> u64 {
        self.pairs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// A chunk with its CRC.
    pub(super) fn seal(seq: u64, space: u8, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> StateChunk {
        let crc = chunk_crc(seq, space, &pairs);
        StateChunk {
            seq,
            space,
            pairs,
            crc,
        }
    }

    /// Checks the CRC: an error names the chunk whose bytes were damaged.
    pub fn verify(&self) -> Result<()> {
        let crc = chunk_crc(self.seq, self.space, &self.pairs);
        if crc != self.crc {
            return Err(Error::Storage(format!(
                "state chunk {} is corrupt: its CRC is {:#010x} but its contents hash to {crc:#010x}",
                self.seq, self.crc
            )));
        }
        Ok(())
    }
}

/// The running digest over all pairs of a transfer: FNV-1a (64 bit) over, per pair, its
/// space, key length, value length and the CRC-32 of key and value. Deterministic across
/// processes and machines.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Digest(u64);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    fn mix(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn add(&mut self, space: u8, k: &[u8], v: &[u8]) {
        let mut crc = crc32fast::Hasher::new();
        crc.update(k);
        crc.update(v);
        self.mix(u64::from(space));
        self.mix(k.len() as u64);
        self.mix(v.len() as u64);
        self.mix(u64::from(crc.finalize()));
    }
}

fn space_of(code: u8) -> Result<Space> {
    match code {
        0 => Ok(Space::Kv),
        1 => Ok(Space::Sm),
        _ => Err(Error::invalid(format!(
            "state chunk names unknown space {code}"
        ))),
    }
}

fn space_name(code: u8) -> &'static str {
    if code == 0 {
        "kv"
    } else {
        "sm"
    }
}

/// Cuts the exported pairs into chunks and hands them to the sink.
struct Chunker<'a> {
    sink: &'a mut dyn FnMut(StatePart) -> Result<()>,
    seq: u64,
    pairs: u64,
    digest: Digest,
    cur: Vec<(Vec<u8>, Vec<u8>)>,
    cur_bytes: usize,
}

impl Chunker<'_> {
    fn push(&mut self, space: u8, k: &[u8], v: &[u8]) -> Result<()> {
        let size = k.len() + v.len() + PAIR_OVERHEAD;
        if !self.cur.is_empty() && self.cur_bytes + size > CHUNK_BYTES {
            self.flush(space)?;
        }
        self.digest.add(space, k, v);
        self.pairs += 1;
        self.cur.push((k.to_vec(), v.to_vec()));
        self.cur_bytes += size;
        Ok(())
    }

    fn flush(&mut self, space: u8) -> Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let pairs = std::mem::take(&mut self.cur);
        self.cur_bytes = 0;
        (self.sink)(StatePart::Chunk(StateChunk::seal(self.seq, space, pairs)))?;
        self.seq += 1;
        Ok(())
    }
}

impl KvStore {
    /// Streams a consistent point-in-time copy of both spaces (kv, then sm) to `sink`,
    /// chunk by chunk (about [`CHUNK_BYTES`] each), then a [`StateEnd`] whose `applied` is
    /// the applied index of that same view. `sink` may block (back-pressure); an `Err`
    /// from it aborts the export.
    pub fn export(&self, sink: &mut dyn FnMut(StatePart) -> Result<()>) -> Result<()> {
        self.export_pinned(&mut |_| {}, sink)
    }

    /// [`KvStore::export`], calling `pinned` with the view's applied index once the view
    /// is taken (see [`crate::transfer::Transferable::export`]).
    pub fn export_pinned(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(StatePart) -> Result<()>,
    ) -> Result<()> {
        self.backend.detached_view(|view| {
            let applied = read_counter(view.get(Space::Sm, K_APPLIED)?)?;
            pinned(applied);
            let mut out = Chunker {
                sink: &mut *sink,
                seq: 0,
                pairs: 0,
                digest: Digest::new(),
                cur: Vec::new(),
                cur_bytes: 0,
            };
            for (code, space) in [(0u8, Space::Kv), (1u8, Space::Sm)] {
                view.scan_from(space, &[], &mut |k, v| {
                    out.push(code, k, v)?;
                    Ok(true)
                })?;
                out.flush(code)?;
            }
            let end = StateEnd {
                applied,
                chunks: out.seq,
                pairs: out.pairs,
                digest: out.digest.0,
            };
            sink(StatePart::End(end))
        })
    }

    /// Starts receiving a state into the inactive slot (clears it first; forgets any
    /// unfinished import, whose importer can no longer write).
    pub fn importer(&self) -> Result<Importer> {
        let target = self.backend.stage_begin()?;
        Ok(Importer {
            backend: self.backend.clone(),
            target,
            next_seq: 0,
            space: 0,
            last_key: None,
            pairs: 0,
            digest: Digest::new(),
        })
    }
}

/// The receiving side of one transfer (see the module docs).
pub struct Importer {
    backend: Backend,
    target: StageTarget,
    next_seq: u64,
    /// The space of the last chunk.
    space: u8,
    /// The last key received in `space`.
    last_key: Option<Vec<u8>>,
    pairs: u64,
    digest: Digest,
}

impl Importer {
    /// Verifies (crc, seq in order, space order) and writes one chunk to the staging slot
    /// (unsynced batch ok).
    pub fn chunk(&mut self, c: StateChunk) -> Result<()> {
        c.verify()?;
        if c.seq != self.next_seq {
            return Err(Error::invalid(format!(
                "state chunk {} arrived out of order: chunk {} was expected",
                c.seq, self.next_seq
            )));
        }
        let space = space_of(c.space)?;
        if c.space < self.space {
            return Err(Error::invalid(format!(
                "state chunk {} of space {} arrived after space {}",
                c.seq,
                space_name(c.space),
                space_name(self.space)
            )));
        }
        let mut last = if c.space == self.space {
            self.last_key.as_deref()
        } else {
            None
        };
        let mut digest = self.digest;
        for (k, v) in &c.pairs {
            if last.is_some_and(|l| l >= k.as_slice()) {
                return Err(Error::invalid(format!(
                    "state chunk {} has key {:?} out of order in space {}",
                    c.seq,
                    String::from_utf8_lossy(k),
                    space_name(c.space)
                )));
            }
            last = Some(k);
            digest.add(c.space, k, v);
        }
        let last_key = last.map(<[u8]>::to_vec);
        let n = c.pairs.len() as u64;
        self.backend.stage_write(&self.target, space, c.pairs)?;
        self.next_seq += 1;
        self.space = c.space;
        self.last_key = last_key;
        self.pairs += n;
        self.digest = digest;
        Ok(())
    }

    /// Verifies counts and the digest over all pairs, makes the staged state durable
    /// (synced write of a "staged complete, applied = N" marker after the data) and
    /// returns its applied index. The live state is unchanged.
    pub fn finish(self, end: StateEnd) -> Result<u64> {
        if end.chunks != self.next_seq {
            return Err(Error::invalid(format!(
                "state transfer ends after {} chunks but {} arrived",
                end.chunks, self.next_seq
            )));
        }
        if end.pairs != self.pairs {
            return Err(Error::invalid(format!(
                "state transfer ends after {} pairs but {} arrived",
                end.pairs, self.pairs
            )));
        }
        if end.digest != self.digest.0 {
            return Err(Error::Storage(format!(
                "state transfer digest mismatch: the sender's is {:#018x}, the received pairs' {:#018x}",
                end.digest, self.digest.0
            )));
        }
        let staged = read_counter(self.backend.stage_get(&self.target, Space::Sm, K_APPLIED)?)?;
        if staged != end.applied {
            return Err(Error::invalid(format!(
                "state transfer ends with applied index {} but the state received has {staged}",
                end.applied
            )));
        }
        self.backend.stage_complete(&self.target, end.applied)?;
        Ok(end.applied)
    }
}

/// The KV store as the transfer layer moves it: each [`StatePart`] is one opaque part.
impl crate::transfer::Transferable for KvStore {
    fn machine(&self) -> crate::machine::Machine {
        crate::machine::Machine::Kv
    }

    fn export(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.export_pinned(pinned, &mut |part| sink(bincode::serialize(&part)?))
    }

    fn importer(&self) -> Result<Box<dyn crate::transfer::Import>> {
        Ok(Box::new(KvImport {
            importer: KvStore::importer(self)?,
            end: None,
        }))
    }
}

/// Receives the KV store's parts: chunks go to the [`Importer`] as they come; the end is
/// kept for [`crate::transfer::Import::finish`].
struct KvImport {
    importer: Importer,
    end: Option<StateEnd>,
}

impl crate::transfer::Import for KvImport {
    fn part(&mut self, bytes: Vec<u8>) -> Result<()> {
        let part: StatePart = bincode::deserialize(&bytes)
            .map_err(|e| Error::Unavailable(format!("undecodable key-value state part: {e}")))?;
        match part {
            StatePart::Chunk(_) | StatePart::End(_) if self.end.is_some() => Err(
                Error::Unavailable("key-value state part after its end".into()),
            ),
            StatePart::Chunk(c) => self.importer.chunk(c),
            StatePart::End(end) => {
                self.end = Some(end);
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        let end = self.end.ok_or_else(|| {
            Error::Unavailable("the key-value state ended without its end".into())
        })?;
        self.importer.finish(end)
    }
}
