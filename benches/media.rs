//! Media cost per 20 ms frame, one call's worth: `cargo bench --bench media`.
//!
//! Phone -> room: PCMU -> Opus at 8 kHz, G.722 -> Opus at 16 kHz (decode + encode).
//! Room -> phone: N remote Opus tracks decoded at the phone rate, mixed, encoded to PCMU.
//! An Opus phone's call both ways through the phone leg (`PhoneMedia`: RTP in and out,
//! jitter buffer, decoding, mixer), with one room track: passthrough (issue 19) against
//! the same call transcoded (the room-bound frame and the mix encoded at 16 kHz).
//! Plain `std::time` measurement (no criterion); prints microseconds per frame, the median
//! of several runs, and asserts nothing about time.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use roomline::livekit::SampleRate;
use roomline::media::g711::G711;
use roomline::media::g722::{G722Decoder, G722Encoder};
use roomline::media::mixer::{Mixer, MixerConfig};

const FRAMES: usize = 500; // 10 s of audio per run
const RUNS: usize = 7;

fn tone(freqs: &[f64], rate: u32, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let v: f64 = freqs
                .iter()
                .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
                .sum::<f64>()
                / freqs.len() as f64;
            (v * 0.3 * 32767.0) as i16
        })
        .collect()
}

/// The encoder the LiveKit side uses (`livekit::audio::OpusEncoder`): VoIP, 32 kbit/s,
/// in-band FEC, 5 % expected loss, the complexity Roomline uses at that rate.
fn opus_encoder(rate: u32) -> opus::Encoder {
    let rate = if rate == 8000 {
        SampleRate::Hz8000
    } else {
        SampleRate::Hz16000
    };
    opus_encoder_at(rate.hz(), roomline::livekit::opus_complexity(rate))
}

fn opus_encoder_at(rate: u32, complexity: i32) -> opus::Encoder {
    roomline::livekit::opus_encoder(rate, complexity).expect("opus encoder")
}

/// Median microseconds per frame of `run`, which processes `FRAMES` frames.
fn measure(mut run: impl FnMut()) -> f64 {
    run(); // warm-up
    let mut per_frame: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e6 / FRAMES as f64
        })
        .collect();
    per_frame.sort_by(f64::total_cmp);
    per_frame[RUNS / 2]
}

fn pcmu_to_opus() -> f64 {
    pcmu_to_opus_at(roomline::livekit::opus_complexity(SampleRate::Hz8000))
}

fn pcmu_to_opus_at(complexity: i32) -> f64 {
    let pcm = tone(&[440.0, 1000.0], 8000, 160 * FRAMES);
    let mut payloads = Vec::new();
    for frame in pcm.chunks(160) {
        let mut p = Vec::new();
        G711::Pcmu.encode(frame, &mut p);
        payloads.push(p);
    }
    let mut enc = opus_encoder_at(8000, complexity);
    let mut pcm = Vec::with_capacity(160);
    let mut out = vec![0u8; 1500];
    measure(|| {
        for p in &payloads {
            pcm.clear();
            G711::Pcmu.decode(black_box(p), &mut pcm);
            black_box(enc.encode(&pcm, &mut out).expect("encode"));
        }
    })
}

fn g722_to_opus() -> f64 {
    let pcm = tone(&[440.0, 1000.0, 5000.0], 16_000, 320 * FRAMES);
    let mut g722 = G722Encoder::new();
    let mut payloads = Vec::new();
    for frame in pcm.chunks(320) {
        let mut p = Vec::new();
        g722.encode(frame, &mut p);
        payloads.push(p);
    }
    let mut dec = G722Decoder::new();
    let mut enc = opus_encoder(16_000);
    let mut pcm = Vec::with_capacity(320);
    let mut out = vec![0u8; 1500];
    measure(|| {
        for p in &payloads {
            pcm.clear();
            dec.decode(black_box(p), &mut pcm);
            black_box(enc.encode(&pcm, &mut out).expect("encode"));
        }
    })
}

/// `tracks` remote Opus tracks (encoded at 48 kHz as browsers send them, decoded at the
/// phone's 8 kHz), mixed, to PCMU.
fn opus_to_pcmu(tracks: usize) -> f64 {
    let freqs = [300.0, 500.0, 700.0, 900.0];
    let streams: Vec<Vec<Vec<u8>>> = (0..tracks)
        .map(|k| {
            let pcm = tone(&[freqs[k % 4]], 48_000, 960 * FRAMES);
            let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                .expect("opus");
            pcm.chunks(960)
                .map(|f| enc.encode_vec(f, 1500).expect("encode"))
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..tracks).map(|k| format!("TR_{k}")).collect();
    let mut decoders: Vec<opus::Decoder> = (0..tracks)
        .map(|_| opus::Decoder::new(8000, opus::Channels::Mono).expect("decoder"))
        .collect();
    let mut decoded = vec![0i16; 160];
    let mut mixed = vec![0i16; 160];
    let mut pcmu = Vec::with_capacity(160);
    #[allow(clippy::needless_range_loop)] // frame f of every stream
    measure(|| {
        let t0 = Instant::now();
        let mut mixer = Mixer::new(MixerConfig::default(), "sip_caller", t0);
        for (k, name) in names.iter().enumerate() {
            mixer
                .add_track(name.clone(), format!("user{k}"))
                .expect("under the track limit");
        }
        for f in 0..FRAMES {
            for (k, dec) in decoders.iter_mut().enumerate() {
                let n = dec
                    .decode(black_box(&streams[k][f]), &mut decoded, false)
                    .expect("decode");
                mixer.push(&names[k], &decoded[..n]).expect("track");
            }
            let now = t0 + Duration::from_millis(20 * f as u64);
            while mixer.poll_frame(now, &mut mixed).is_some() {
                pcmu.clear();
                G711::Pcmu.encode(&mixed, &mut pcmu);
                black_box(&pcmu);
            }
        }
    })
}

/// An Opus phone's call through `PhoneMedia` with one remote Opus track, both ways: the
/// phone's RTP in, its frame for the room out (encoded at 16 kHz unless passed through),
/// the room track decoded at 16 kHz (as the participant does) and pushed with its packet
/// (or without: transcoded), the phone's RTP out.
fn opus_phone(passthrough: bool) -> f64 {
    use roomline::media::plc::PhoneCodec;
    use roomline::media::rtp::{RtpPacket, SeqNo, Ssrc};
    use roomline::media::session::{PhoneMedia, PhoneMediaConfig, RoomPayload};
    let phone_pcm = tone(&[1000.0], 16_000, 320 * FRAMES);
    let mut phone_enc = opus_encoder(16_000);
    let phone_rtp: Vec<Vec<u8>> = phone_pcm
        .chunks(320)
        .enumerate()
        .map(|(k, f)| {
            let payload = phone_enc.encode_vec(f, 1500).expect("encode");
            RtpPacket::new(111, SeqNo(k as u16), 960 * k as u32, Ssrc(7), payload)
                .to_bytes()
                .expect("rtp")
        })
        .collect();
    let room_pcm = tone(&[440.0], 48_000, 960 * FRAMES);
    let mut room_enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("opus");
    let room: Vec<Vec<u8>> = room_pcm
        .chunks(960)
        .map(|f| room_enc.encode_vec(f, 1500).expect("encode"))
        .collect();
    let phone: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("address");
    let mut decoded = vec![0i16; 320];
    let mut frame = Vec::with_capacity(320);
    let mut out = vec![0u8; 1500];
    measure(|| {
        let t0 = Instant::now();
        let mut c = PhoneMediaConfig::new(PhoneCodec::Opus, Ssrc(1), "sip_caller");
        c.remote_rtp = Some(phone);
        let mut pm = PhoneMedia::new(c, t0, std::time::SystemTime::now());
        let mut up_enc = opus_encoder(16_000);
        let mut dec = opus::Decoder::new(16_000, opus::Channels::Mono).expect("decoder");
        for f in 0..FRAMES {
            let now = t0 + Duration::from_millis(20 * f as u64);
            pm.handle_rtp(now, phone, black_box(&phone_rtp[f]));
            let n = dec.decode(&room[f], &mut decoded, false).expect("decode");
            let packet = passthrough.then(|| room[f].clone());
            pm.push_room_audio_coded("TR_room", "agent", &decoded[..n], packet);
            pm.handle_timeout(now);
            while let Some(t) = pm.poll_transmit(now) {
                pm.recycle(black_box(t).bytes);
            }
            while pm.poll_phone_frame_into(now, &mut frame).is_some() {
                match pm.take_room_payload() {
                    RoomPayload::Opus(p) if passthrough => {
                        black_box(p);
                    }
                    _ => {
                        black_box(up_enc.encode(&frame, &mut out).expect("encode"));
                    }
                }
            }
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!("media cost, microseconds per 20 ms frame (median of {RUNS} runs of {FRAMES} frames)");
    let up_pcmu = pcmu_to_opus();
    println!("  PCMU -> Opus (8 kHz)                 {up_pcmu:8.1}");
    let up_g722 = g722_to_opus();
    println!("  G.722 -> Opus (16 kHz)               {up_g722:8.1}");
    let mut down = Vec::new();
    for tracks in [1, 2, 4] {
        let us = opus_to_pcmu(tracks);
        let label = format!("Opus -> mix -> PCMU, {tracks} remote track(s)");
        println!("  {label:<37}{us:8.1}");
        down.push(us);
    }
    println!(
        "  per call, PCMU with 1 remote track   {:8.1}  (target <= 150)",
        up_pcmu + down[0]
    );
    let passed = opus_phone(true);
    let transcoded = opus_phone(false);
    println!("  per call, Opus phone, transcoded     {transcoded:8.1}");
    println!("  per call, Opus phone, passthrough    {passed:8.1}");
    println!(
        "Opus encoder complexity (in use: {} at 8 kHz, {} at 16 kHz), PCMU -> Opus:",
        roomline::livekit::opus_complexity(SampleRate::Hz8000),
        roomline::livekit::opus_complexity(SampleRate::Hz16000)
    );
    for c in [10, 8, 6, 5, 3, 1, 0] {
        println!(
            "  complexity {c:>2}                        {:8.1}",
            pcmu_to_opus_at(c)
        );
    }
}
