//! Leases through the Rust client (`paxosdb.v1.Lease`, etcd's model; see
//! [`crate::kv::lease`]): [`Client::lease_grant`], [`Client::lease_keep_alive`],
//! [`Client::lease_revoke`], [`Client::lease_time_to_live`], [`Client::leases`],
//! [`Client::put_with_lease`], and [`Client::keep_alive_forever`], a task that keeps a
//! lease alive until its [`KeepAliveHandle`] is dropped — what leader election and
//! service registration need.
//!
//! A lease that no longer exists (expired or revoked) is an answer, not an error:
//! `Ok(None)` from a keep-alive or a time-to-live read, `Ok(false)` from a revoke.
//!
//! # Invariants
//!
//! - Grant, keep-alive and revoke are writes: each runs in one pooled session, and every
//!   retry of it (on another node, after a timeout) repeats that session, so the cluster
//!   applies it at most once and answers a retry with the first answer. A timeout after
//!   an attempt that may have arrived is [`Error::OutcomeUnknown`], as for a put.
//! - A [`KeepAliveHandle`]'s task has at most one keep-alive in flight, sends the next one
//!   a third of the time to live after the last one was sent (at once after a retryable
//!   failure, with a short backoff), and ends when the handle is dropped, when the lease is
//!   found gone, or when a keep-alive is refused for good. Its status only moves forward:
//!   once [`KeepAliveStatus::Lost`] or [`KeepAliveStatus::Failed`], it stays so.
//! - [`KeepAliveStatus::Alive::safe_until`] is never later than the lease's end as the
//!   cluster counts it, unless the lease is revoked or the leader's clock runs ahead of
//!   this machine's: the keep-alive's entry is stamped by the leader after it was sent, and
//!   a lease's time never runs while the cluster has no leader.

use super::Client;
use crate::api::pb;
use crate::command::{LeaseInfo, MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS};
use crate::error::{Error, Result};
use crate::kv::handle::PutResult;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// What [`Client::lease_time_to_live`] reads of a live lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Its id, granted time to live and deadline (in the log's time: ms since the Unix
    /// epoch, the leader's clock).
    pub info: LeaseInfo,
    /// The time it had left when read (the deadline minus the log's time the answer
    /// reflects, or minus the answering node's clock where that is later).
    pub remaining: Duration,
    /// The keys attached to it, in key order, if they were asked for (at most 1000; a
    /// reader held to a key prefix sees those inside it).
    pub keys: Vec<Vec<u8>>,
    /// More keys are attached than listed.
    pub more_keys: bool,
}

/// A lease's time to live as the wire's ms, checked as the cluster checks it (1 s to a
/// year; a fraction of a ms counts as a whole one), so that a bad one is refused before
/// anything is sent.
pub(crate) fn lease_ttl_ms(ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ms) {
        return Err(Error::invalid(format!(
            "a lease's time to live must be between {} s and {} days; {ttl:?} was asked",
            MIN_LEASE_TTL_MS / 1000,
            MAX_LEASE_TTL_MS / 86_400_000
        )));
    }
    Ok(ms)
}

/// Refuses lease id 0 (which names no lease) before anything is sent.
pub(crate) fn lease_id(id: u64) -> Result<u64> {
    if id == 0 {
        return Err(Error::invalid("lease id 0 names no lease"));
    }
    Ok(id)
}

fn lease_client(ch: Channel) -> pb::lease_client::LeaseClient<Channel> {
    pb::lease_client::LeaseClient::new(ch).max_decoding_message_size(super::MAX_RESPONSE)
}

impl Client {
    /// Grants a lease of `ttl` (1 s to a year; else [`Error::InvalidInput`] at once); the
    /// cluster picks its id. Keys put with it ([`Client::put_with_lease`]) are deleted when
    /// it ends: when it is revoked, or `ttl` after the last grant or keep-alive, by the
    /// log's time (time without a leader does not count).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseInfo> {
        self.lease_grant_with_id(0, ttl).await
    }

    /// [`Client::lease_grant`] with the id chosen (0: the cluster picks it); an id that is
    /// live already is [`Error::InvalidInput`].
    pub async fn lease_grant_with_id(&self, id: u64, ttl: Duration) -> Result<LeaseInfo> {
        let ttl_ms = lease_ttl_ms(ttl)?;
        self.write(|ch, session| {
            let req = self.request(pb::LeaseGrantRequest {
                session: Some(session),
                id,
                ttl_ms,
            });
            async move { lease_client(ch).grant(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            LeaseInfo {
                id: r.id,
                ttl_ms: r.ttl_ms,
                deadline: r.deadline_ms,
            }
        })
    }

    /// Renews lease `id` for its whole time to live; `None` when it no longer exists
    /// (expired or revoked: its keys are gone or going).
    pub async fn lease_keep_alive(&self, id: u64) -> Result<Option<LeaseInfo>> {
        let id = lease_id(id)?;
        self.write(|ch, session| {
            let req = self.request(pb::LeaseKeepAliveRequest {
                session: Some(session),
                id,
            });
            async move { lease_client(ch).keep_alive(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            r.found.then_some(LeaseInfo {
                id: r.id,
                ttl_ms: r.ttl_ms,
                deadline: r.deadline_ms,
            })
        })
    }

    /// Ends lease `id` now, deleting its keys (watchers see a `delete` for each); whether
    /// it was live. A user held to a key prefix may not revoke
    /// ([`Error::PermissionDenied`]).
    pub async fn lease_revoke(&self, id: u64) -> Result<bool> {
        let id = lease_id(id)?;
        self.write(|ch, session| {
            let req = self.request(pb::LeaseRevokeRequest {
                session: Some(session),
                id,
            });
            async move { lease_client(ch).revoke(req).await }
        })
        .await
        .map(|r| r.into_inner().revoked)
    }

    /// Reads lease `id` linearizably: its time to live, deadline and the time it has left,
    /// and with `keys` the keys attached to it; `None` when it does not exist.
    pub async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<Option<LeaseTimeToLive>> {
        let id = lease_id(id)?;
        self.call(false, |ch| {
            let req = self.request(pb::LeaseTimeToLiveRequest {
                id,
                keys,
                stale: false,
            });
            async move { lease_client(ch).time_to_live(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            r.found.then(|| LeaseTimeToLive {
                info: LeaseInfo {
                    id: r.id,
                    ttl_ms: r.ttl_ms,
                    deadline: r.deadline_ms,
                },
                remaining: Duration::from_millis(r.remaining_ms),
                keys: r.keys,
                more_keys: r.more_keys,
            })
        })
    }

    /// One page of the live leases, in id order from `from` on, at most `limit` (0: the
    /// server's default, 1000; at most 10000); and whether more exist (continue from the
    /// last id + 1).
    pub async fn leases_page(&self, from: u64, limit: u32) -> Result<(Vec<LeaseInfo>, bool)> {
        self.call(false, |ch| {
            let req = self.request(pb::LeaseLeasesRequest {
                from,
                limit,
                stale: false,
            });
            async move { lease_client(ch).leases(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            let leases = (r.leases.into_iter())
                .map(|l| LeaseInfo {
                    id: l.id,
                    ttl_ms: l.ttl_ms,
                    deadline: l.deadline_ms,
                })
                .collect();
            (leases, r.more)
        })
    }

    /// Every live lease, in id order, read page by page (each page linearizable; a
    /// lease granted or ended meanwhile may or may not be listed). At most 100,000.
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let (page, more) = self.leases_page(from, 0).await?;
            let next = page.last().and_then(|l| l.id.checked_add(1));
            all.extend(page);
            match next {
                Some(n) if more => from = n,
                _ => return Ok(all),
            }
        }
    }

    /// Stores `value` under `key` attached to lease `lease`: the key is deleted when the
    /// lease ends (watchers see `expire`, or `delete` after a revoke). A lease that does
    /// not exist is [`Error::InvalidInput`], and nothing is written. A later write of the
    /// key without a lease detaches it.
    pub async fn put_with_lease(&self, key: &[u8], value: &[u8], lease: u64) -> Result<PutResult> {
        self.put_leased(key, value, lease, false).await
    }

    /// [`Client::put_with_lease`], answering the previous value if `return_prev`.
    pub(crate) async fn put_leased(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
        return_prev: bool,
    ) -> Result<PutResult> {
        let lease = lease_id(lease)?;
        self.put_raw(key, value, return_prev, 0, lease).await
    }

    /// Keeps lease `id` alive until the returned handle is dropped: a task renews it at
    /// once and then every third of its time to live, retrying (in a new session each
    /// time, as each keep-alive is a new write) while the cluster cannot answer. The
    /// handle says when the lease was lost ([`KeepAliveHandle::lost`]). Dropping the
    /// handle stops the renewals; the lease then ends its time to live later (revoke it
    /// to end it at once). Must be called within a Tokio runtime.
    pub fn keep_alive_forever(&self, id: u64) -> KeepAliveHandle {
        let client = self.clone();
        KeepAliveHandle::spawn(id, move || {
            let client = client.clone();
            async move { client.lease_keep_alive(id).await }
        })
    }
}

/// Where a [`KeepAliveHandle`]'s renewals stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAliveStatus {
    /// No keep-alive has answered yet.
    Starting,
    /// Renewed: the last renewal's answer and how many there were.
    Alive {
        info: LeaseInfo,
        renewals: u64,
        /// The lease lives at least until then, by this machine's clock: when the last
        /// successful keep-alive was sent, plus the time to live (see the module's
        /// invariants). A leader holding a lock should stop acting as one by then unless a
        /// later renewal moved it.
        safe_until: Instant,
    },
    /// The lease no longer exists (it expired or was revoked): its keys are gone or
    /// going. The renewals stopped.
    Lost,
    /// A keep-alive was refused for good (credentials, rights, a bad id); the renewals
    /// stopped and the lease will expire.
    Failed(Error),
}

impl KeepAliveStatus {
    /// True once the renewals stopped ([`KeepAliveStatus::Lost`] or
    /// [`KeepAliveStatus::Failed`]).
    pub fn is_over(&self) -> bool {
        matches!(self, KeepAliveStatus::Lost | KeepAliveStatus::Failed(_))
    }
}

/// Keeps a lease alive while it is held ([`Client::keep_alive_forever`],
/// [`crate::embed::Kv::keep_alive_forever`]); dropping it stops the renewals.
#[derive(Debug)]
pub struct KeepAliveHandle {
    id: u64,
    status: tokio::sync::watch::Receiver<KeepAliveStatus>,
    task: tokio::task::JoinHandle<()>,
}

/// The first pause after a keep-alive that failed with a retryable error; it doubles up
/// to [`RETRY_MAX`] while they keep failing.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl KeepAliveHandle {
    /// Starts the renewal task of lease `id`; `renew` sends one keep-alive.
    pub(crate) fn spawn<F, Fut>(id: u64, renew: F) -> KeepAliveHandle
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<LeaseInfo>>> + Send + 'static,
    {
        let (tx, status) = tokio::sync::watch::channel(KeepAliveStatus::Starting);
        let task = tokio::spawn(renew_until_over(id, renew, tx));
        KeepAliveHandle { id, status, task }
    }

    /// The lease kept alive.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The renewals as they stand now.
    pub fn status(&self) -> KeepAliveStatus {
        self.status.borrow().clone()
    }

    /// True once the lease is known lost or the renewals were refused for good.
    pub fn is_over(&self) -> bool {
        self.status.borrow().is_over()
    }

    /// Waits for the next renewal or for the end of the renewals, and returns the status
    /// then (once over, at once and always the same).
    pub async fn next(&mut self) -> KeepAliveStatus {
        // An error: the task ended, and its last status was seen already.
        let _ = self.status.changed().await;
        self.status.borrow_and_update().clone()
    }

    /// Waits until the renewals stop: [`KeepAliveStatus::Lost`] or
    /// [`KeepAliveStatus::Failed`].
    pub async fn lost(&mut self) -> KeepAliveStatus {
        loop {
            let s = self.next().await;
            if s.is_over() {
                return s;
            }
        }
    }
}

impl Drop for KeepAliveHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The renewal task: renews lease `id` every third of its time to live until it is gone
/// or a keep-alive is refused for good, reporting each answer on `tx`.
async fn renew_until_over<F, Fut>(
    id: u64,
    renew: F,
    tx: tokio::sync::watch::Sender<KeepAliveStatus>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<LeaseInfo>>>,
{
    let mut renewals = 0;
    let mut backoff = RETRY_MIN;
    loop {
        let sent = tokio::time::Instant::now();
        match renew().await {
            Ok(Some(info)) => {
                renewals += 1;
                backoff = RETRY_MIN;
                let ttl = Duration::from_millis(info.ttl_ms);
                tx.send_replace(KeepAliveStatus::Alive {
                    info,
                    renewals,
                    safe_until: (sent + ttl).into_std(),
                });
                tokio::time::sleep_until(sent + ttl / 3).await;
            }
            Ok(None) => {
                tracing::warn!(lease = id, "the lease is gone (expired or revoked)");
                tx.send_replace(KeepAliveStatus::Lost);
                return;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(lease = id, "keep-alive failed, retrying: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::warn!(lease = id, "keep-alive refused; renewals stop: {e}");
                tx.send_replace(KeepAliveStatus::Failed(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_lease_ttl_is_checked_before_anything_is_sent() {
        assert_eq!(lease_ttl_ms(Duration::from_secs(30)).unwrap(), 30_000);
        assert_eq!(lease_ttl_ms(Duration::from_micros(999_001)).unwrap(), 1000);
        for bad in [
            Duration::ZERO,
            Duration::from_millis(999),
            Duration::from_secs(366 * 86_400),
            Duration::MAX,
        ] {
            assert!(
                matches!(lease_ttl_ms(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        assert!(lease_id(0).is_err());
    }

    fn info(id: u64) -> LeaseInfo {
        LeaseInfo {
            id,
            ttl_ms: 3000,
            deadline: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_renews_every_third_of_the_ttl_until_the_lease_is_gone() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let mut h = KeepAliveHandle::spawn(7, move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Ok(Some(info(7))),
                    2 => Err(Error::Unavailable("no leader".into())),
                    3 => Ok(Some(info(7))),
                    _ => Ok(None),
                }
            }
        });
        assert_eq!(h.id(), 7);
        let start = tokio::time::Instant::now().into_std();
        match h.next().await {
            KeepAliveStatus::Alive { renewals: 1, .. } => {}
            other => panic!("{other:?}"),
        }
        match h.next().await {
            KeepAliveStatus::Alive {
                renewals: 2,
                safe_until,
                ..
            } => {
                // The second keep-alive went a third of the ttl after the first.
                assert_eq!(safe_until - start, Duration::from_millis(1000 + 3000));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.lost().await, KeepAliveStatus::Lost);
        assert!(h.is_over());
        // Over: the same answer at once, again.
        assert_eq!(h.next().await, KeepAliveStatus::Lost);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_the_renewals_and_dropping_the_handle_stops_them() {
        let mut refused =
            KeepAliveHandle::spawn(1, || async { Err(Error::PermissionDenied("no".into())) });
        assert!(matches!(
            refused.lost().await,
            KeepAliveStatus::Failed(Error::PermissionDenied(_))
        ));

        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let mut h = KeepAliveHandle::spawn(2, move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(Some(info(2))) }
        });
        h.next().await;
        drop(h);
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "renewed after the drop"
        );
    }
}
