//! Rate-limited log lines for events an outsider can cause at will: failed logins, failed
//! TLS handshakes, plaintext on a TLS port, refused peers.
//!
//! Each such event is worth a line on the node — an operator must be able to see that
//! someone is knocking — but a client that fails in a loop must not be able to fill the
//! disk or drown every other line. A [`RateLimited`] lets one line through per period and
//! counts the events it held back; the next line that goes through says how many were
//! suppressed since the one before (`N more suppressed`), so no event goes uncounted.
//!
//! Invariants:
//! - at most one line per period per [`RateLimited`] (plus none at all while nothing
//!   happens): the log grows with time, never with the number of failures;
//! - every event is either shown or counted in the next line's suppressed number.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of event whose log lines are rate limited.
pub struct RateLimited {
    every: Duration,
    /// When the last line went out, and the events held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one event. `Some(n)`: write a line now; `n` events were suppressed since
    /// the last line (say so in it). `None`: suppressed (counted for the next line).
    pub fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.is_some_and(|t| t.elapsed() < self.every) {
            st.1 += 1;
            return None;
        }
        st.0 = Some(Instant::now());
        Some(std::mem::take(&mut st.1))
    }

    /// The period, in whole seconds, for the text of a line.
    pub fn every_secs(&self) -> u64 {
        self.every.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let r = RateLimited::new(Duration::from_millis(200));
        assert_eq!(r.admit(), Some(0));
        let held = (0..100).filter(|_| r.admit().is_none()).count();
        assert_eq!(held, 100, "a burst within the period is held back");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(r.admit(), Some(100), "the next line counts them");
        assert_eq!(r.admit(), None);
    }
}
