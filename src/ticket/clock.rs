//! Where the ticket store gets the time: the system clocks in service, a
//! hand-driven clock in tests.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A source of time. Expiry is computed on the monotonic [`Clock::now`];
/// [`Clock::wall`] only turns deadlines into Unix times for reports.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time.
    fn now(&self) -> Instant;
    /// Wall-clock time, read at the same moment as [`Clock::now`].
    fn wall(&self) -> SystemTime;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    wall_base: SystemTime,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at `wall` (its monotonic side starts at the
    /// current instant).
    pub fn new(wall: SystemTime) -> Self {
        ManualClock {
            base: Instant::now(),
            wall_base: wall,
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        if let Ok(mut o) = self.offset.lock() {
            *o += by;
        }
    }

    fn offset(&self) -> Duration {
        self.offset.lock().map(|o| *o).unwrap_or_default()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.offset()
    }

    fn wall(&self) -> SystemTime {
        self.wall_base + self.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_sides_together() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let c = ManualClock::new(wall);
        let t0 = c.now();
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now() - t0, Duration::from_secs(5));
        assert_eq!(c.wall(), wall + Duration::from_secs(5));
    }
}
