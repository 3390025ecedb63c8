//! Stops of the whole machine, as a real-time test sees them. These test machines are
//! virtual and shared: now and then every process on them stops for a while (seen: 0.6 to
//! 8 s, at any load; the room side's tone player, the phone and the daemon all fall
//! behind at the same moment). No bridge carries audio through a stop of the machine it
//! runs on, so a test that counts the frames of a tone allows, for each tone, the frames
//! of the stops that overlapped it, and nothing else. A stop of the daemon alone (a
//! Roomline bug) is not seen here: this thread keeps running through it.
//!
//! `PauseWatch::start()` runs a thread that sleeps 5 ms at a time and records every
//! wake-up more than [`STOP`] late; `stops_between(a, b)` sums the recorded stops that
//! overlap `[a, b]` (Unix seconds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A wake-up later than this counts as a stop of the machine.
pub const STOP: Duration = Duration::from_millis(100);

/// The watch; the thread ends when this is dropped.
pub struct PauseWatch {
    stops: Arc<Mutex<Vec<(f64, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl PauseWatch {
    pub fn start() -> PauseWatch {
        let stops = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stops, stop) = (stops.clone(), stop.clone());
            std::thread::spawn(move || {
                let tick = Duration::from_millis(5);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    let now = Instant::now();
                    let gap = now.duration_since(last).saturating_sub(tick);
                    if gap > STOP {
                        let end = unix_now();
                        stops.lock().unwrap().push((end - gap.as_secs_f64(), end));
                    }
                    last = now;
                }
            })
        };
        PauseWatch {
            stops,
            stop,
            thread: Some(thread),
        }
    }

    /// Every stop so far, as (start, end) in Unix seconds.
    pub fn stops(&self) -> Vec<(f64, f64)> {
        self.stops.lock().unwrap().clone()
    }

    /// Seconds of stops overlapping `[from, to]` (Unix seconds).
    pub fn stops_between(&self, from: f64, to: f64) -> f64 {
        self.stops()
            .iter()
            .map(|&(a, b)| (b.min(to) - a.max(from)).max(0.0))
            .sum()
    }
}

impl Drop for PauseWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
