//! N phones calling Roomline over UDP with plain RTP or SDES-SRTP, for `scripts/bench`'s
//! SRTP figure (sipp cannot speak SRTP), or with Opus (`--opus`) for its passthrough
//! figure. Not a test: it prints one JSON line of figures.
//!
//! ```text
//! srtp_phones --target 127.0.0.1:5060 --calls 20 [--srtp] [--opus] [--rate 20] [--hold 30]
//!             [--called-base 15550000001] [--caller-base 15551000001] [--ip 127.0.0.1]
//! ```
//! `--opus` offers only `opus/48000/2` (payload type 111, RFC 7587, in-band FEC) and sends
//! one second of a 1 kHz tone encoded once at start with libopus (16 kHz, 20 ms packets,
//! on the 48 kHz clock), over and over: the phone's own encoder costs nothing during the
//! measurement.
//! Each phone sends an INVITE (PCMU; RTP/SAVP with an `AES_CM_128_HMAC_SHA1_80` key under
//! `--srtp`, else RTP/AVP), ACKs the 200, then sends a 1 kHz PCMU tone every 20 ms
//! (protected with its key under `--srtp`) and unprotects/counts what the bridge sends;
//! `--hold` seconds after the last call started, every phone hangs up (BYE). The calls
//! start at `--rate` per second. Output: calls answered, packets sent, received, and
//! received packets that failed SRTP authentication. The SRTP here is Roomline's own
//! `media::srtp` (the phone side's cost is not what the bench measures: it measures the
//! bridge's CPU).

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use roomline::media::g711::G711;
use roomline::media::sdes;
use roomline::media::srtp::{MasterKey, SrtpContext, SrtpSuite};

struct Phone {
    call_id: String,
    rtp: UdpSocket,
    invite: String,
    sent_invite: Option<Instant>,
    tries: u32,
    key: Option<MasterKey>,
    /// (remote RTP address, to-header with tag, tx, rx contexts)
    up: Option<Up>,
    seq: u16,
    ts: u32,
    next_rtp: Instant,
    bye_sent: bool,
    done: bool,
}

struct Up {
    to: SocketAddr,
    to_header: String,
    tx: Option<SrtpContext>,
    rx: Option<SrtpContext>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: SocketAddr = arg(&args, "--target")
        .unwrap_or_else(|| "127.0.0.1:5060".into())
        .parse()
        .expect("--target IP:PORT");
    let n: usize = arg(&args, "--calls").map_or(10, |v| v.parse().expect("--calls"));
    let srtp = args.iter().any(|a| a == "--srtp");
    let opus = args.iter().any(|a| a == "--opus");
    let rate: f64 = arg(&args, "--rate").map_or(20.0, |v| v.parse().expect("--rate"));
    let hold =
        Duration::from_secs_f64(arg(&args, "--hold").map_or(30.0, |v| v.parse().expect("--hold")));
    let called_base: u64 =
        arg(&args, "--called-base").map_or(15_550_000_001, |v| v.parse().expect("number"));
    let caller_base: u64 =
        arg(&args, "--caller-base").map_or(15_551_000_001, |v| v.parse().expect("number"));
    let ip = arg(&args, "--ip").unwrap_or_else(|| "127.0.0.1".into());

    let sip = UdpSocket::bind(format!("{ip}:0")).expect("SIP socket");
    sip.set_nonblocking(true).expect("nonblocking");
    let local = sip.local_addr().expect("local address");
    let tag: u32 = rand::random();
    let mut tone = Vec::new();
    let samples: Vec<i16> = (0..160)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / 8000.0).sin()) as i16
        })
        .collect();
    G711::Pcmu.encode(&samples, &mut tone);
    // Opus: one second of 1 kHz at 16 kHz, 50 packets played in a loop
    let opus_tone: Vec<Vec<u8>> = if opus {
        let mut enc = roomline::media::opus::encoder(&roomline::media::opus::EncoderSettings {
            rate_hz: 16_000,
            complexity: 5,
            bitrate: 32_000,
            fec: true,
            loss_percent: 5,
            dtx: false,
            cbr: false,
            max_bandwidth: opus::Bandwidth::Wideband,
        })
        .expect("Opus encoder");
        let pcm: Vec<i16> = (0..16_000)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / 16_000.0).sin())
                    as i16
            })
            .collect();
        pcm.chunks(320)
            .map(|f| enc.encode_vec(f, 400).expect("Opus packet"))
            .collect()
    } else {
        Vec::new()
    };
    let (pt, ts_step, media) = if opus {
        (
            111u8,
            960u32,
            "111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1;maxplaybackrate=16000;sprop-maxcapturerate=16000;stereo=0",
        )
    } else {
        (0, 160, "0\r\na=rtpmap:0 PCMU/8000")
    };

    let start = Instant::now();
    let mut phones: Vec<Phone> = Vec::with_capacity(n);
    let mut by_call: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        let rtp = UdpSocket::bind(format!("{ip}:0")).expect("RTP socket");
        rtp.set_nonblocking(true).expect("nonblocking");
        let port = rtp.local_addr().expect("rtp address").port();
        let key = srtp.then(|| MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80));
        let (proto, crypto) = match &key {
            Some(k) => ("RTP/SAVP", format!("a=crypto:{}\r\n", sdes::format(1, k))),
            None => ("RTP/AVP", String::new()),
        };
        let called = called_base + i as u64;
        let caller = caller_base + i as u64;
        let call_id = format!("srtpbench-{tag:08x}-{i}");
        let sdp = format!(
            "v=0\r\no=bench {i} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} {proto} {media}\r\na=ptime:20\r\n{crypto}a=sendrecv\r\n"
        );
        let invite = format!(
            "INVITE sip:{called}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{tag:08x}-{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{caller}@{ip}>;tag=p{i}\r\nTo: <sip:{called}@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:phone@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        by_call.insert(call_id.clone(), i);
        phones.push(Phone {
            call_id,
            rtp,
            invite,
            sent_invite: None,
            tries: 0,
            key,
            up: None,
            seq: rand::random(),
            ts: rand::random(),
            next_rtp: start,
            bye_sent: false,
            done: false,
        });
    }
    let last_start = start + Duration::from_secs_f64(n as f64 / rate);
    let hang_up_at = last_start + hold;
    let (mut sent, mut received, mut failed, mut answered) = (0u64, 0u64, 0u64, 0usize);
    let mut buf = vec![0u8; 2048];
    let mut pkt = Vec::with_capacity(256);
    loop {
        let now = Instant::now();
        // INVITEs at the rate, retransmitted every second (UDP)
        for (i, p) in phones.iter_mut().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let resend = p
                .sent_invite
                .is_some_and(|t| now >= t + Duration::from_secs(1));
            if p.up.is_none() && p.tries < 5 && now >= due && (p.sent_invite.is_none() || resend) {
                let _ = sip.send_to(p.invite.as_bytes(), target);
                p.sent_invite = Some(now);
                p.tries += 1;
            }
        }
        // SIP responses
        while let Ok((len, _)) = sip.recv_from(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]).to_string();
            let Some(&i) = header(&msg, "Call-ID").and_then(|c| by_call.get(c)) else {
                continue;
            };
            let p = &mut phones[i];
            let cseq = header(&msg, "CSeq").unwrap_or("");
            if msg.starts_with("BYE ") {
                // the bridge hung up: answer and stop
                let reply = format!(
                    "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
                    header(&msg, "Via").unwrap_or(""),
                    header(&msg, "From").unwrap_or(""),
                    header(&msg, "To").unwrap_or(""),
                    p.call_id
                );
                let _ = sip.send_to(reply.as_bytes(), target);
                p.done = true;
                continue;
            }
            if cseq.ends_with("BYE") {
                p.done = true;
                continue;
            }
            if !msg.starts_with("SIP/2.0 200") || !cseq.ends_with("INVITE") {
                continue;
            }
            let to_header = header(&msg, "To").unwrap_or("").to_string();
            let ack = format!(
                "ACK sip:{}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ack-{tag:08x}-{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag=p{i}\r\nTo: {to_header}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                called_base + i as u64,
                caller_base + i as u64,
                p.call_id
            );
            let _ = sip.send_to(ack.as_bytes(), target);
            if p.up.is_some() {
                continue; // a retransmitted 200
            }
            let body = msg.split("\r\n\r\n").nth(1).unwrap_or("");
            let port: u16 = body
                .lines()
                .find_map(|l| l.strip_prefix("m=audio "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = match (
                &p.key,
                body.lines().find_map(|l| l.strip_prefix("a=crypto:")),
            ) {
                (Some(k), Some(v)) => match sdes::parse(v.trim()) {
                    Ok(a) => (Some(SrtpContext::new(k)), Some(SrtpContext::new(&a.key))),
                    Err(_) => (None, None),
                },
                _ => (None, None),
            };
            answered += 1;
            p.next_rtp = now;
            p.up = Some(Up {
                to: SocketAddr::new(target.ip(), port),
                to_header,
                tx,
                rx,
            });
        }
        // RTP both ways
        for p in phones.iter_mut() {
            let Some(up) = p.up.as_mut() else { continue };
            if p.done || p.bye_sent {
                continue;
            }
            while now >= p.next_rtp {
                pkt.clear();
                pkt.extend_from_slice(&[0x80, pt]);
                pkt.extend_from_slice(&p.seq.to_be_bytes());
                pkt.extend_from_slice(&p.ts.to_be_bytes());
                pkt.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
                if opus {
                    // each phone plays the loop in order (from wherever its numbering starts)
                    pkt.extend_from_slice(&opus_tone[usize::from(p.seq) % opus_tone.len()]);
                } else {
                    pkt.extend_from_slice(&tone);
                }
                let mut len = pkt.len();
                if let Some(tx) = up.tx.as_mut() {
                    pkt.resize(len + 16, 0);
                    len = tx.protect_rtp(&mut pkt, len).unwrap_or(len);
                }
                let _ = p.rtp.send_to(&pkt[..len], up.to);
                sent += 1;
                p.seq = p.seq.wrapping_add(1);
                p.ts = p.ts.wrapping_add(ts_step);
                p.next_rtp += Duration::from_millis(20);
            }
            while let Ok((len, _)) = p.rtp.recv_from(&mut buf) {
                let rtcp = len > 1 && (192..=223).contains(&buf[1]);
                if rtcp {
                    continue;
                }
                match up.rx.as_mut() {
                    Some(rx) => match rx.unprotect_rtp(&mut buf, len) {
                        Ok(_) => received += 1,
                        Err(_) => failed += 1,
                    },
                    None => received += 1,
                }
            }
        }
        // the end
        if now >= hang_up_at {
            for (i, p) in phones.iter_mut().enumerate() {
                let Some(up) = p.up.as_ref() else { continue };
                if p.bye_sent || p.done {
                    continue;
                }
                let bye = format!(
                    "BYE sip:{}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-bye-{tag:08x}-{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag=p{i}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
                    called_base + i as u64,
                    caller_base + i as u64,
                    up.to_header,
                    p.call_id
                );
                let _ = sip.send_to(bye.as_bytes(), target);
                p.bye_sent = true;
            }
            let settled = phones.iter().all(|p| p.done || p.up.is_none());
            if settled || now >= hang_up_at + Duration::from_secs(5) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{{\"calls\": {n}, \"srtp\": {srtp}, \"opus\": {opus}, \"answered\": {answered}, \"rtp_sent\": {sent}, \"rtp_received\": {received}, \"srtp_failed\": {failed}}}"
    );
}
