//! SRTP cost per packet: `cargo bench --bench srtp`. Protect and unprotect of one 20 ms
//! PCMU packet (12-octet header + 160 octets) in each suite, in place in a reused buffer,
//! and what that is as a share of one core for a call (50 packets a second each way).
//! Plain `std::time` measurement; prints the median of several runs, asserts nothing.
#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::hint::black_box;
use std::time::Instant;

use roomline::media::srtp::{MAX_RTP_OVERHEAD, MasterKey, SUITES, SrtpContext};

const PACKETS: usize = 200_000;
const RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn packet(seq: u16, buf: &mut [u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = 0; // PCMU
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    buf[12..172].fill(0xd5);
    172
}

fn main() {
    println!("SRTP, nanoseconds per 172-octet PCMU packet (median of {RUNS} runs of {PACKETS})");
    println!("  suite                      protect  unprotect  core per call");
    for suite in SUITES {
        let master = MasterKey::generate(suite);
        let mut protect = Vec::new();
        let mut unprotect = Vec::new();
        let mut seq: u16 = 0;
        for _ in 0..=RUNS {
            let mut tx = SrtpContext::new(&master);
            let mut rx = SrtpContext::new(&master);
            // the plain packets are written before the clock starts; both loops work in
            // place on them
            let mut packets: Vec<([u8; 172 + MAX_RTP_OVERHEAD], usize)> = (0..PACKETS)
                .map(|_| {
                    let mut buf = [0u8; 172 + MAX_RTP_OVERHEAD];
                    let n = packet(seq, &mut buf);
                    seq = seq.wrapping_add(1);
                    (buf, n)
                })
                .collect();
            let t = Instant::now();
            for (p, n) in &mut packets {
                *n = tx.protect_rtp(black_box(p), *n).expect("protect");
            }
            protect.push(t.elapsed().as_secs_f64() * 1e9 / PACKETS as f64);
            let t = Instant::now();
            for (p, n) in &mut packets {
                *n = rx.unprotect_rtp(black_box(p), *n).expect("unprotect");
            }
            unprotect.push(t.elapsed().as_secs_f64() * 1e9 / PACKETS as f64);
        }
        // the first run is the warm-up
        let p = median(protect.split_off(1));
        let u = median(unprotect.split_off(1));
        // 50 packets a second each way; ns per second over 1e9 ns, as a percentage
        let share = (p + u) * 50.0 / 1e9 * 100.0;
        println!("  {:<26}{p:8.0}  {u:9.0}  {share:12.4} %", suite.name());
    }
}
