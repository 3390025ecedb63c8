//! The shells' clock, read in one place. Protocol cores take time as input; the tasks
//! around them read tokio's clock here, so a test that pauses tokio's clock drives every
//! timer of the code under test. The wall clock (Unix times in health output, RTCP's NTP
//! timestamps, digest nonces) is read only by `wall`.
//!
//! `clippy.toml` denies `std::time::Instant::now` and `SystemTime::now` everywhere else.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now on tokio's clock (paused and advanced by tests), as a `std` instant for the
/// sans-IO cores.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the wall clock"
)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    wall().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> i64 {
    wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn now_follows_a_paused_tokio_clock() {
        let t0 = now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(now() - t0, Duration::from_secs(30));
    }

    #[test]
    fn unix_times_agree() {
        let (s, ms) = (unix_secs(), unix_millis());
        assert!(s > 1_600_000_000, "{s}");
        assert!((ms / 1000).abs_diff(s as i64) <= 1, "{ms} {s}");
    }
}
