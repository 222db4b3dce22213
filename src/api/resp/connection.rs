//! Buffered reading of requests and writing of replies on one client connection.
//!
//! Pipelining: a client may send many requests before reading any reply. The connection
//! hands out every complete request already buffered ([`Connection::next_request`]) before
//! reading again, and replies are queued ([`Connection::queue`]) and written together by
//! [`Connection::flush`], so replies leave in request order and a pipeline costs one write
//! per batch rather than one per command.
//!
//! Memory stays bounded: the read buffer never holds more than one frame's limit
//! (`max_frame`) plus one read, and queued replies are flushed once they pass
//! [`FLUSH_AT`].

use super::frame::{parse_request, Frame, FrameError, FrameLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Queued reply bytes after which the caller should flush before running more commands.
pub const FLUSH_AT: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

pub struct Connection {
    stream: TcpStream,
    rbuf: Vec<u8>,
    /// Bytes of `rbuf` already parsed.
    consumed: usize,
    wbuf: Vec<u8>,
    limits: FrameLimits,
}

impl Connection {
    pub fn new(stream: TcpStream, limits: FrameLimits) -> Connection {
        Connection {
            stream,
            rbuf: Vec::with_capacity(16 * 1024),
            consumed: 0,
            wbuf: Vec::with_capacity(16 * 1024),
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
    pub fn queue(&mut self, frame: &Frame, resp3: bool) {
        frame.encode(&mut self.wbuf, resp3);
    }

    /// Bytes of replies queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes every queued reply.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
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
