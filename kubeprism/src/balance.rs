//! Choosing an upstream for a new connection, as pure functions over a snapshot.
//!
//! Power of two choices: among the best tier of untried upstreams (healthy, else
//! suspect, else down as a last resort), pick two at random and take the one with the
//! lower cost `(outstanding + 1) × dial latency`. This keeps load even like
//! least-outstanding does, prefers the faster server, and does not herd every new
//! connection onto the one upstream that just looked least loaded.

use crate::health::HealthState;

/// What selection knows of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub state: HealthState,
    /// Connections currently proxied to it.
    pub active: u64,
    /// Smoothed dial latency in microseconds (0 when unknown).
    pub latency_us: u64,
    /// Already tried (and failed) for this client connection.
    pub tried: bool,
}

impl Candidate {
    fn cost(&self) -> u128 {
        // Unknown latency counts as 1 µs: a new upstream gets a fair share at once.
        u128::from(self.active.saturating_add(1)) * u128::from(self.latency_us.max(1))
    }
}

/// A small xorshift generator: selection needs cheap, not strong, randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant for a handful of upstreams.
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The index of the upstream to dial next, or `None` when every one has been tried.
pub fn choose(candidates: &[Candidate], rng: &mut Rng) -> Option<usize> {
    let tier = candidates
        .iter()
        .filter(|c| !c.tried)
        .map(|c| c.state)
        .min()?;
    let eligible: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.tried && c.state == tier)
        .map(|(i, _)| i)
        .collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0]),
        n => {
            let a = rng.below(n);
            // A second, different index: an offset in 1..n from the first.
            let b = (a + 1 + rng.below(n - 1)) % n;
            let (a, b) = (eligible[a], eligible[b]);
            Some(if candidates[b].cost() < candidates[a].cost() {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn c(state: HealthState, active: u64, latency_us: u64) -> Candidate {
        Candidate {
            state,
            active,
            latency_us,
            tried: false,
        }
    }

    #[test]
    fn healthy_first_then_suspect_then_down() {
        let mut rng = Rng::new(7);
        let mut cands = vec![c(Down, 0, 1), c(Suspect, 0, 1), c(Healthy, 50, 900)];
        assert_eq!(choose(&cands, &mut rng), Some(2));
        cands[2].tried = true;
        assert_eq!(choose(&cands, &mut rng), Some(1));
        cands[1].tried = true;
        assert_eq!(choose(&cands, &mut rng), Some(0));
        cands[0].tried = true;
        assert_eq!(choose(&cands, &mut rng), None);
        assert_eq!(choose(&[], &mut rng), None);
    }

    #[test]
    fn load_spreads_and_favours_the_less_loaded_and_faster() {
        let mut rng = Rng::new(42);
        let mut counts = [0usize; 3];
        let mut active = [0u64; 3];
        // Connections that stay open: power of two choices keeps them close to even.
        for _ in 0..3000 {
            let cands: Vec<_> = active.iter().map(|&a| c(Healthy, a, 100)).collect();
            let i = choose(&cands, &mut rng).unwrap();
            counts[i] += 1;
            active[i] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 30, "{counts:?}");

        // A ten times slower upstream gets much less of the new traffic.
        let mut slow = 0;
        let mut active = [0u64; 2];
        for _ in 0..1000 {
            let cands = [c(Healthy, active[0], 100), c(Healthy, active[1], 1000)];
            let i = choose(&cands, &mut rng).unwrap();
            active[i] += 1;
            slow += usize::from(i == 1);
        }
        assert!(slow < 200, "slow upstream got {slow} of 1000");
    }

    #[test]
    fn rng_never_sticks_and_stays_in_range() {
        let mut rng = Rng::new(0);
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[rng.below(5)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
