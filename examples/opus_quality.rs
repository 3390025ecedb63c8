//! The phone-to-room audio path at each Opus complexity, for `scripts/bench/opus_quality`:
//! reads mono 16-bit PCM at the phone rate, sends it through what a call does to it
//! (G.711 mu-law at 8 kHz; nothing at 16 kHz, where G.722 is near-transparent), then
//! through Roomline's Opus encoder (`roomline::livekit::opus_encoder`) at each
//! complexity and back through an Opus decoder at the same rate, and writes each result
//! next to the reference (the audio before Opus). Prints the encoder's cost per 20 ms
//! frame. The quality score is computed by the script (PESQ).
//!
//!   opus_quality IN.raw RATE OUTDIR [COMPLEXITY ...]
//!
//! Writes OUTDIR/ref.raw and OUTDIR/c<N>.raw (s16le, RATE); prints
//! `complexity <N> encode_us <median us per frame>` lines.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::time::Instant;

use roomline::media::g711::{linear_to_ulaw, ulaw_to_linear};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: opus_quality IN.raw RATE OUTDIR [COMPLEXITY ...]");
        std::process::exit(64);
    }
    let raw = std::fs::read(&args[1]).unwrap_or_else(|e| die(&format!("{}: {e}", args[1])));
    let rate: u32 = args[2]
        .parse()
        .unwrap_or_else(|_| die("RATE: 8000 or 16000"));
    if rate != 8000 && rate != 16000 {
        die("RATE: 8000 or 16000");
    }
    let out = std::path::PathBuf::from(&args[3]);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
    let complexities: Vec<i32> = if args.len() > 4 {
        args[4..]
            .iter()
            .map(|c| c.parse().unwrap_or_else(|_| die("COMPLEXITY: 0-10")))
            .collect()
    } else {
        (0..=10).collect()
    };
    let frame = (rate / 50) as usize;
    let mut pcm: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    pcm.truncate(pcm.len() / frame * frame);
    // what the phone leg does to the audio before the room side sees it
    let reference: Vec<i16> = if rate == 8000 {
        pcm.iter()
            .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
            .collect()
    } else {
        pcm
    };
    write(&out.join("ref.raw"), &reference);
    for c in complexities {
        let mut enc = roomline::livekit::opus_encoder(rate, c).unwrap_or_else(|e| die(&e));
        let mut dec = opus::Decoder::new(rate, opus::Channels::Mono)
            .unwrap_or_else(|e| die(&format!("opus decoder: {e}")));
        let mut packet = vec![0u8; 1500];
        let mut decoded = Vec::with_capacity(reference.len());
        let mut buf = vec![0i16; frame];
        let mut costs = Vec::with_capacity(reference.len() / frame);
        for f in reference.chunks_exact(frame) {
            let t = Instant::now();
            let n = enc
                .encode(f, &mut packet)
                .unwrap_or_else(|e| die(&format!("encode: {e}")));
            costs.push(t.elapsed().as_secs_f64() * 1e6);
            let m = dec
                .decode(&packet[..n], &mut buf, false)
                .unwrap_or_else(|e| die(&format!("decode: {e}")));
            decoded.extend_from_slice(&buf[..m]);
        }
        write(&out.join(format!("c{c}.raw")), &decoded);
        costs.sort_by(f64::total_cmp);
        println!("complexity {c} encode_us {:.1}", costs[costs.len() / 2]);
    }
}

fn write(path: &std::path::Path, pcm: &[i16]) {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
}

fn die(msg: &str) -> ! {
    eprintln!("opus_quality: {msg}");
    std::process::exit(1);
}
