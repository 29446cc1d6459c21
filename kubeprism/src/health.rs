//! The health of one upstream as a pure state machine (no sockets, no clocks): active
//! check results and data-path dial results go in, a state and the next check interval
//! come out.
//!
//! Hysteresis: `fall` consecutive failures take a healthy upstream down and `rise`
//! consecutive successful checks bring a down one back, so one unready answer from a
//! loaded API server does not flap it. A *hard* failure — on the data path a failed dial
//! or a client's first bytes left unanswered, or a check refused or timed out — is
//! stronger evidence: it makes the upstream *suspect* at once, which takes it out of
//! rotation while another upstream is healthy, and the next check (run early) either
//! clears it or confirms it down.

use std::time::Duration;

use serde::Serialize;

/// Where an upstream stands for selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum HealthState {
    /// In rotation.
    Healthy,
    /// A dial just failed: out of rotation while a healthy upstream exists.
    Suspect,
    /// Confirmed down: used only when nothing better is left.
    Down,
}

impl HealthState {
    /// The inverse of `state as u8`.
    pub(crate) fn from_u8(n: u8) -> Self {
        match n {
            0 => HealthState::Healthy,
            1 => HealthState::Suspect,
            _ => HealthState::Down,
        }
    }
}

/// Thresholds and intervals of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successful checks that bring a down upstream back.
    pub rise: u32,
    /// Consecutive failures (checks or dials) that take an upstream down.
    pub fall: u32,
    /// Check interval while healthy with no failure pending.
    pub interval_up: Duration,
    /// Check interval otherwise: fast, so recovery and confirmation take well under 1 s.
    pub interval_down: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rise: 2,
            fall: 2,
            // Short enough that an upstream no client happens to use is still seen dead
            // within a second; a TCP connect (or TLS handshake) twice a second per
            // upstream is little next to what kubelet sends.
            interval_up: Duration::from_millis(500),
            interval_down: Duration::from_millis(200),
        }
    }
}

/// The health state machine of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
    thresholds: Thresholds,
}

impl Health {
    /// A new upstream starts healthy: optimistic, because refusing traffic to every
    /// upstream until its first check would fail the first clients after a restart.
    /// Its first check runs at once.
    pub fn new(thresholds: Thresholds) -> Self {
        Health {
            state: HealthState::Healthy,
            ok_streak: 0,
            fail_streak: 0,
            thresholds,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Applies an active check result; returns whether the state changed.
    pub fn on_check(&mut self, ok: bool) -> bool {
        let before = self.state;
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.state = match self.state {
                // A suspect was healthy until one dial failed; a good check clears it.
                HealthState::Healthy | HealthState::Suspect => HealthState::Healthy,
                HealthState::Down if self.ok_streak >= self.thresholds.rise => HealthState::Healthy,
                HealthState::Down => HealthState::Down,
            };
        } else {
            self.fail();
        }
        self.state != before
    }

    /// A hard failure (see the module's documentation); returns whether the state
    /// changed.
    pub fn on_hard_failure(&mut self) -> bool {
        let before = self.state;
        self.fail();
        if self.state == HealthState::Healthy {
            self.state = HealthState::Suspect;
        }
        self.state != before
    }

    fn fail(&mut self) {
        self.ok_streak = 0;
        self.fail_streak = self.fail_streak.saturating_add(1);
        if self.fail_streak >= self.thresholds.fall {
            self.state = HealthState::Down;
        }
    }

    /// How long until the next active check.
    pub fn next_interval(&self) -> Duration {
        if self.state == HealthState::Healthy && self.fail_streak == 0 {
            self.thresholds.interval_up
        } else {
            self.thresholds.interval_down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn health() -> Health {
        Health::new(Thresholds::default())
    }

    #[test]
    fn one_failed_check_does_not_flap_but_speeds_up_checks() {
        let mut h = health();
        assert!(!h.on_check(false));
        assert_eq!(h.state(), Healthy);
        assert_eq!(h.next_interval(), Thresholds::default().interval_down);
        assert!(!h.on_check(true));
        assert_eq!(h.next_interval(), Thresholds::default().interval_up);
        // Alternating slow answers never take it down.
        for _ in 0..10 {
            h.on_check(false);
            h.on_check(true);
        }
        assert_eq!(h.state(), Healthy);
    }

    #[test]
    fn fall_failures_take_it_down_and_rise_successes_bring_it_back() {
        let mut h = health();
        h.on_check(false);
        assert!(h.on_check(false));
        assert_eq!(h.state(), Down);
        assert!(!h.on_check(true));
        assert_eq!(h.state(), Down);
        assert!(h.on_check(true));
        assert_eq!(h.state(), Healthy);
    }

    #[test]
    fn a_dial_failure_makes_it_suspect_and_a_check_decides() {
        let mut h = health();
        assert!(h.on_hard_failure());
        assert_eq!(h.state(), Suspect);
        assert_eq!(h.next_interval(), Thresholds::default().interval_down);
        assert!(h.on_check(true));
        assert_eq!(h.state(), Healthy);

        h.on_hard_failure();
        assert!(h.on_check(false));
        assert_eq!(h.state(), Down);
        // Dial failures while down change nothing.
        assert!(!h.on_hard_failure());
    }

    #[test]
    fn states_round_trip_through_u8() {
        for state in [Healthy, Suspect, Down] {
            assert_eq!(HealthState::from_u8(state as u8), state);
        }
    }

    #[test]
    fn repeated_dial_failures_take_it_down_without_a_check() {
        let mut h = health();
        h.on_hard_failure();
        h.on_hard_failure();
        assert_eq!(h.state(), Down);
    }
}
