//! Exponential backoff with jitter, so that sidecars that lost the bus together do not all
//! come back in the same millisecond.

use std::time::Duration;

pub struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
    rng: u64,
}

/// A seed that differs between processes and calls.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    nanos ^ (u64::from(std::process::id()) << 32) ^ (&raw const local as u64)
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            current: first,
            rng: seed() | 1,
        }
    }

    /// The next wait: the current step, less up to a half of it at random; the step doubles up
    /// to the cap.
    pub fn next(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.current;
        self.current = (self.current * 2).min(self.cap);
        let half = step.as_micros() as u64 / 2;
        let jitter = if half == 0 { 0 } else { self.rng % half };
        step - Duration::from_micros(jitter)
    }

    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_to_the_cap_and_jitters_down_only() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps = [100, 200, 400, 400, 400];
        for ms in steps {
            let d = b.next();
            let step = Duration::from_millis(ms);
            assert!(d <= step && d >= step / 2, "{d:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
