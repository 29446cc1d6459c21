//! One upstream: its address, health and counters, shared by the connections proxied to
//! it and by its health-check task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::balance::Candidate;
use crate::health::{Health, HealthState, Thresholds};
use crate::status::{UpstreamState, UpstreamStatus};
use crate::CheckError;

/// Counters of one upstream; monotonic except `active`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Client to upstream.
    pub bytes_sent: AtomicU64,
    /// Upstream to client.
    pub bytes_received: AtomicU64,
    pub dial_failures: AtomicU64,
    pub check_failures: AtomicU64,
    /// Smoothed dial latency (EWMA, 1/8 weight of the newest sample).
    pub dial_latency_us: AtomicU64,
    /// When the last latency sample was taken, ms after the upstream was made.
    pub dial_sampled_ms: AtomicU64,
}

#[derive(Debug)]
struct Checked {
    health: Health,
    last_latency: Option<Duration>,
    last_error: Option<String>,
    since: Instant,
}

/// An upstream in the set (or draining out of it).
#[derive(Debug)]
pub(crate) struct Upstream {
    pub name: String,
    created: Instant,
    pub addr: SocketAddr,
    pub counters: Counters,
    checked: Mutex<Checked>,
    /// `checked.health.state()`, for selection to read on every new connection without
    /// taking the lock (which the serving threads would contend for).
    state: AtomicU8,
    draining: AtomicBool,
    /// Wakes the health task early (after a failed dial, or to end it).
    pub kick: Notify,
    /// Which health task is current: a task ends when this moves on.
    epoch: AtomicU64,
}

impl Upstream {
    pub fn new(name: String, addr: SocketAddr, thresholds: Thresholds) -> Arc<Self> {
        Arc::new(Upstream {
            name,
            created: Instant::now(),
            addr,
            counters: Counters::default(),
            checked: Mutex::new(Checked {
                health: Health::new(thresholds),
                last_latency: None,
                last_error: None,
                since: Instant::now(),
            }),
            state: AtomicU8::new(HealthState::Healthy as u8),
            draining: AtomicBool::new(false),
            kick: Notify::new(),
            epoch: AtomicU64::new(0),
        })
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, Checked> {
        // The lock guards plain data that is valid after any panic.
        self.checked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> HealthState {
        HealthState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Publishes a new state (called with `checked` locked, so stores stay in order).
    fn publish(&self, state: HealthState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn candidate(&self, tried: bool) -> Candidate {
        let c = &self.counters;
        // The latency estimate halves for every second without a sample: an upstream
        // that lost the comparison after one slow dial gets tried again, instead of
        // being shunned for good on a stale figure.
        let idle_s = self
            .now_ms()
            .saturating_sub(c.dial_sampled_ms.load(Ordering::Relaxed))
            / 1000;
        Candidate {
            state: self.state(),
            active: c.active.load(Ordering::Relaxed),
            latency_us: c.dial_latency_us.load(Ordering::Relaxed) >> idle_s.min(63),
            tried,
        }
    }

    /// Moves to a new health-task epoch (ending the current task) and returns it.
    pub fn next_epoch(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.kick.notify_one();
        epoch
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn on_dial_success(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let c = &self.counters;
        // Lost updates between racing dials only blur an average; no CAS loop needed.
        let old = c.dial_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        c.dial_latency_us.store(new.max(1), Ordering::Relaxed);
        c.dial_sampled_ms.store(self.now_ms(), Ordering::Relaxed);
        c.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's connection failed on this upstream: the dial failed, or the upstream
    /// did not answer the client's first bytes.
    pub fn on_data_path_failure(&self, error: &str) {
        self.counters.dial_failures.fetch_add(1, Ordering::Relaxed);
        let mut checked = self.checked();
        checked.last_error = Some(error.to_string());
        if checked.health.on_hard_failure() {
            checked.since = Instant::now();
            self.publish(checked.health.state());
            tracing::warn!(upstream = %self.name, state = ?checked.health.state(), %error, "client connection failed");
            drop(checked);
            // Confirm or clear the suspicion now rather than at the next interval (only
            // on a change: a flood of failed dials must not become a flood of checks).
            self.kick.notify_one();
        }
    }

    /// Records a check result; returns how long to wait for the next one.
    pub fn on_check(&self, result: Result<(), CheckError>, latency: Duration) -> Duration {
        let mut checked = self.checked();
        if let Err(e @ CheckError::Local(_)) = &result {
            // Nothing learned about the upstream: its state stays, the check is retried
            // soon.
            checked.last_error = Some(format!("check: {e}"));
            return checked.health.thresholds().interval_down;
        }
        checked.last_latency = Some(latency);
        let ok = result.is_ok();
        if let Err(e) = &result {
            self.counters.check_failures.fetch_add(1, Ordering::Relaxed);
            checked.last_error = Some(format!("check: {e}"));
        }
        let changed = match &result {
            // A hung server's kernel still completes handshakes: a check that gets
            // no answer in time is as telling as a refused one.
            Err(CheckError::Refused(_) | CheckError::Timeout(_)) => {
                checked.health.on_hard_failure()
            }
            _ => checked.health.on_check(ok),
        };
        if changed {
            checked.since = Instant::now();
            let state = checked.health.state();
            self.publish(state);
            match &result {
                Ok(()) => tracing::info!(upstream = %self.name, ?state, "upstream state changed"),
                Err(e) => {
                    tracing::warn!(upstream = %self.name, ?state, error = %e, "upstream state changed")
                }
            }
        }
        checked.health.next_interval()
    }

    pub fn status(&self) -> UpstreamStatus {
        let c = &self.counters;
        let checked = self.checked();
        let state = if self.is_draining() {
            UpstreamState::Draining
        } else {
            checked.health.state().into()
        };
        UpstreamStatus {
            name: self.name.clone(),
            address: self.addr,
            state,
            state_for: checked.since.elapsed(),
            active: c.active.load(Ordering::Relaxed),
            total: c.total.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            dial_failures: c.dial_failures.load(Ordering::Relaxed),
            check_failures: c.check_failures.load(Ordering::Relaxed),
            dial_latency: Duration::from_micros(c.dial_latency_us.load(Ordering::Relaxed)),
            check_latency: checked.last_latency,
            last_error: checked.last_error.clone(),
        }
    }
}

/// Holds one active connection on an upstream; releases it when dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(pub Arc<Upstream>);

impl ActiveGuard {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        upstream.counters.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(upstream)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Arc<Upstream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        Upstream::new("a:1".into(), addr, Thresholds::default())
    }

    #[test]
    fn refused_and_timed_out_checks_are_hard_failures_a_not_ready_one_is_not() {
        for hard in [
            CheckError::Timeout(500),
            CheckError::Refused("refused".into()),
        ] {
            let u = upstream();
            u.on_check(Err(hard), Duration::from_millis(500));
            assert_eq!(u.state(), HealthState::Suspect);
            assert_eq!(u.status().check_failures, 1);
        }
        let u = upstream();
        u.on_check(Err(CheckError::NotReady(503)), Duration::from_millis(1));
        assert_eq!(u.state(), HealthState::Healthy);
    }

    #[test]
    fn a_check_that_failed_for_local_reasons_changes_nothing() {
        let u = upstream();
        for _ in 0..5 {
            let wait = u.on_check(
                Err(CheckError::Local("too many open files".into())),
                Duration::ZERO,
            );
            assert_eq!(wait, Thresholds::default().interval_down);
        }
        let status = u.status();
        assert_eq!(status.state, UpstreamState::Healthy);
        assert_eq!(status.check_failures, 0);
        assert!(status.last_error.unwrap().contains("local"));
    }

    #[test]
    fn the_latency_estimate_fades_without_samples() {
        let u = upstream();
        u.on_dial_success(Duration::from_millis(8));
        assert_eq!(u.candidate(false).latency_us, 8000);
        // As if the sample were three seconds old.
        u.counters.dial_sampled_ms.store(0, Ordering::Relaxed);
        let idle = Upstream {
            created: Instant::now() - Duration::from_secs(3),
            ..Arc::try_unwrap(u).unwrap()
        };
        assert_eq!(idle.candidate(false).latency_us, 1000);
    }
}
