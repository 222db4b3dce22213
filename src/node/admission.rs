//! Admission control: the bounds a node puts on the client work it holds.
//!
//! Every client write is charged its size (plus a fixed overhead) against one byte budget
//! per node (`max_inflight_bytes`) from the moment [`NodeHandle`](super::NodeHandle)
//! accepts it until its answer is back; a linearizable read is charged a fixed
//! [`READ_COST`] while it waits for its barrier. When the budget is spent, the request is
//! refused at once with [`Error::Overloaded`] — nothing of it reached the node thread, so
//! nothing of it can be applied — and the client retries after a pause. The same door
//! closes for writes (not reads) while the data directory's file system is nearly full.
//!
//! Why here and not deeper: once a write is in the node thread's queue it is going to be
//! proposed, copied into a log entry, replicated to every follower and held by each of
//! them until applied. Bounding what enters bounds all of those copies, on every node
//! (followers hold what leaders send them, and leaders only send what some node admitted).
//!
//! Invariants:
//! - a write's [`Ticket`] travels with it to the node thread and stays with its waiter
//!   until the waiter is answered or expires (not merely until the client stops waiting),
//!   so the bytes of writes the node holds never exceed the budget;
//! - a refusal happens before anything is sent to the node thread: an `Overloaded` write
//!   certainly changed nothing;
//! - a write always fits in an empty budget (its cost is capped at the budget), so a big
//!   write is delayed by load, never refused for good.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a waiting linearizable read is charged (its waiter and reply channel).
pub const READ_COST: usize = 256;
/// What a write is charged beyond the bytes of its operation.
pub const WRITE_OVERHEAD: usize = 256;

/// The budget of one node, shared by every listener.
pub struct Admission {
    budget: Arc<Semaphore>,
    capacity: usize,
    /// Set while the data directory's file system has less free space than the floor.
    disk_low: AtomicBool,
    /// Requests refused at the door, for `/metrics`.
    pub refused: AtomicU64,
}

/// A share of a byte budget (this one, or the transport's peer inbox); given back when
/// dropped.
pub struct Ticket(#[allow(dead_code)] OwnedSemaphorePermit);

impl From<OwnedSemaphorePermit> for Ticket {
    fn from(p: OwnedSemaphorePermit) -> Ticket {
        Ticket(p)
    }
}

impl Admission {
    pub fn new(capacity_bytes: u64) -> Arc<Admission> {
        let capacity = capacity_bytes.min(Semaphore::MAX_PERMITS as u64) as usize;
        Arc::new(Admission {
            budget: Arc::new(Semaphore::new(capacity)),
            capacity,
            disk_low: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        })
    }

    /// Admits a write of `bytes` (its operation's size), or refuses it.
    pub fn write(&self, bytes: usize) -> Result<Ticket> {
        if self.disk_low.load(Relaxed) {
            self.refused.fetch_add(1, Relaxed);
            return Err(Error::Overloaded(
                "the data directory's file system is nearly full (below min_free_disk_bytes); \
                 this node takes no writes until space is freed"
                    .into(),
            ));
        }
        self.take(bytes + WRITE_OVERHEAD)
    }

    /// Admits a linearizable read, or refuses it.
    pub fn read(&self) -> Result<Ticket> {
        self.take(READ_COST)
    }

    fn take(&self, cost: usize) -> Result<Ticket> {
        let cost = cost.min(self.capacity).min(u32::MAX as usize) as u32;
        match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => Ok(Ticket(p)),
            Err(_) => {
                self.refused.fetch_add(1, Relaxed);
                Err(Error::Overloaded(format!(
                    "this node holds its limit of {} bytes of requests in flight \
                     (max_inflight_bytes); retry shortly",
                    self.capacity
                )))
            }
        }
    }

    /// Bytes of requests admitted and not answered yet.
    pub fn in_flight(&self) -> u64 {
        (self.capacity - self.budget.available_permits()) as u64
    }

    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(low, Relaxed);
    }

    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_beyond_its_bytes_and_recovers_when_tickets_return() {
        let a = Admission::new(10_000);
        let t1 = a.write(4_000).unwrap();
        let t2 = a.write(4_000).unwrap();
        assert_eq!(a.in_flight(), 2 * (4_000 + WRITE_OVERHEAD as u64));
        let e = a.write(4_000).err().expect("over budget");
        assert!(matches!(e, Error::Overloaded(_)), "{e}");
        assert!(e.is_retryable());
        drop(t1);
        let _t3 = a.write(4_000).unwrap();
        drop(t2);
        assert_eq!(a.refused.load(Relaxed), 1);
    }

    #[test]
    fn a_write_bigger_than_the_budget_fits_an_empty_one() {
        let a = Admission::new(1_000);
        let t = a.write(50_000).unwrap();
        assert!(a.read().is_err());
        drop(t);
        a.read().unwrap();
    }

    #[test]
    fn a_nearly_full_disk_refuses_writes_not_reads() {
        let a = Admission::new(1 << 20);
        a.set_disk_low(true);
        assert!(matches!(a.write(10), Err(Error::Overloaded(_))));
        a.read().unwrap();
        a.set_disk_low(false);
        a.write(10).unwrap();
    }
}
