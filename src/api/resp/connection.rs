//! Buffered reading of requests and writing of replies on one client connection.
//!
//! Pipelining: a client may send many requests before reading any reply. The connection
//! hands out every complete request already buffered ([`Connection::next_request`]) before
//! reading again, and replies are queued ([`Connection::queue`]) and written together by
//! [`Connection::flush`], so replies leave in request order and a pipeline costs one write
//! per batch rather than one per command.
//!
//! Memory stays bounded (invariants): the read buffer never holds more than one frame's
//! limit (`max_frame`) plus one read; queued replies are written out once they pass
//! [`FLUSH_AT`] (the caller checks [`Connection::queued`] after every command), so a
//! pipeline of many large replies holds at most about one reply (itself capped by
//! `max_reply_bytes`) plus [`FLUSH_AT`]; and a large reply that was encoded as it was
//! built ([`Frame::Encoded`]) is queued as it is, without being copied again.

use super::frame::{parse_request, Encoded, Frame, FrameError, FrameLimits};
use crate::api::conn::Guarded;
use crate::api::tls::ClientStream;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Queued reply bytes after which the caller should flush before running more commands.
pub const FLUSH_AT: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// An encoded reply at least this large is queued without copying.
const KEEP_AS_IS: usize = 64 * 1024;

pub struct Connection {
    stream: Guarded<ClientStream>,
    rbuf: Vec<u8>,
    /// Bytes of `rbuf` already parsed.
    consumed: usize,
    /// Large encoded replies and the small ones queued before them, in order; written
    /// before `wbuf`.
    chunks: VecDeque<Encoded>,
    /// Small replies queued after the last chunk.
    wbuf: Vec<u8>,
    /// Bytes in `chunks` and `wbuf`.
    queued: usize,
    limits: FrameLimits,
}

impl Connection {
    pub fn new(stream: Guarded<ClientStream>, limits: FrameLimits) -> Connection {
        Connection {
            stream,
            rbuf: Vec::with_capacity(16 * 1024),
            consumed: 0,
            chunks: VecDeque::new(),
            wbuf: Vec::with_capacity(16 * 1024),
            queued: 0,
            limits,
        }
    }

    /// The next complete request already buffered, if any (`Ok(None)`: read more first).
    /// Blank requests are skipped. An error is a protocol error: reply and close.
    pub fn next_request(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
        loop {
            match parse_request(&self.rbuf[self.consumed..], &self.limits) {
                Ok((args, used)) => {
                    self.consumed += used;
                    if !args.is_empty() {
                        return Ok(Some(args));
                    }
                }
                Err(FrameError::Incomplete) => return Ok(None),
                Err(FrameError::Protocol(m)) => return Err(m),
            }
        }
    }

    /// Reads more bytes; `false` when the client has closed its side.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.consumed > 0 {
            self.rbuf.drain(..self.consumed);
            self.consumed = 0;
        }
        if self.rbuf.capacity() > FLUSH_AT && self.rbuf.len() < READ_CHUNK {
            self.rbuf.shrink_to(2 * READ_CHUNK);
        }
        self.rbuf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        Ok(n > 0)
    }

    /// Queues a reply.
    pub fn queue(&mut self, frame: Frame, resp3: bool) {
        match frame {
            Frame::Encoded(e) if e.len() >= KEEP_AS_IS => {
                if !self.wbuf.is_empty() {
                    let before = std::mem::replace(&mut self.wbuf, Vec::with_capacity(16 * 1024));
                    self.chunks.push_back(Encoded::from_vec(before));
                }
                self.queued += e.len();
                self.chunks.push_back(e);
            }
            f => {
                let before = self.wbuf.len();
                f.encode(&mut self.wbuf, resp3);
                self.queued += self.wbuf.len() - before;
            }
        }
    }

    /// Bytes of replies queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Writes every queued reply, in order.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while let Some(chunk) = self.chunks.front() {
            self.stream.write_all(chunk.as_bytes()).await?;
            self.queued -= chunk.len();
            self.chunks.pop_front();
        }
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.queued -= self.wbuf.len();
            self.wbuf.clear();
            if self.wbuf.capacity() > 4 * FLUSH_AT {
                self.wbuf.shrink_to(16 * 1024);
            }
        }
        Ok(())
    }

    /// Closes the connection after writing what is queued.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
