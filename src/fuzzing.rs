//! What the fuzz targets (`fuzz/`, `scripts/fuzz`) exercise, as plain functions so that
//! every crash the fuzzer finds replays as a regression test (`tests/fuzz_regressions.rs`
//! runs each file of `fuzz/regressions/<target>/` through these). Not part of the API.

mod sip_message_impl {
    #![allow(unused_imports)]
    use crate::sip::{body, endpoint, message, sdp, uri};

    /// Fuzz target: a received SIP message, through everything the endpoint does with bytes
    /// from the network before a call sees them: the strict parser, then the typed views of
    /// the headers, the body (SDP, multipart, INFO DTMF), the 400 built from a broken request.
    pub fn run(data: &[u8]) {
        match message::parse(data) {
            Ok(m) => {
                let _ = uri::Via::top(m.headers_named("Via"));
                for name in ["From", "To", "Contact", "Record-Route", "Route"] {
                    for v in m.headers_named(name) {
                        for e in uri::split_list(v) {
                            if let Ok(n) = uri::NameAddr::parse(e) {
                                let _ = n.uri();
                            }
                        }
                    }
                }
                if let message::StartLine::Request { uri: u, .. } = &m.start {
                    let _ = uri::Uri::parse(u);
                }
                let _ = uri::tokens(m.headers_named("Require"));
                if let Some(s) = body::sdp(&m) {
                    let _ = sdp::parse(&String::from_utf8_lossy(&s));
                }
                let _ = body::info_dtmf(&m);
                let _ = crate::sip::dialog::Dialog::uas(&m, "tag");
            }
            Err(e) => {
                if let Some(status) = e.status() {
                    let _ = endpoint::best_effort_response(data, status, e.invalid.reason());
                }
            }
        }
    }
}
pub use sip_message_impl::run as sip_message;

mod digest_impl {
    #![allow(unused_imports)]
    use crate::sip::digest::{self, Authenticator, Challenge, DigestParams};

    /// Fuzz target: digest Authorization / WWW-Authenticate header values, as parsed for a
    /// client answer and verified by the server side (stateless nonces, replay table).
    pub fn run(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = DigestParams::parse(text);
        if let Ok(c) = Challenge::parse(text) {
            let _ = digest::answer(&c, "INVITE", "sip:x@y", "u", "p", "cn", 1);
            let _ = c.to_header();
        }
        let mut auth = Authenticator::new("roomline", [7u8; 32], 300, 16);
        let _ = auth.verify(
            1_000_000,
            "INVITE",
            "sip:+15550100@127.0.0.1",
            text,
            "u",
            "p",
        );
        assert!(auth.tracked_nonces() <= 16);
    }
}
pub use digest_impl::run as digest;

mod framing_impl {
    #![allow(unused_imports)]
    use crate::sip::framing::{Frame, StreamFramer};
    const LIMIT: usize = 4096;

    /// Fuzz target: a TCP/TLS byte stream cut into pushes at fuzzer-chosen points; the
    /// framer never panics, never holds more than its limit plus one push, and every message
    /// it yields is one the parser can be asked about.
    pub fn run(data: &[u8]) {
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let step = usize::from(cut).max(1);
        let mut f = StreamFramer::new(LIMIT);
        for chunk in rest.chunks(step) {
            f.push(chunk);
            assert!(
                f.buffered() <= LIMIT + 1 + step,
                "framer buffers {}",
                f.buffered()
            );
            while let Some(r) = f.next() {
                match r {
                    Ok(Frame::Message(m)) => {
                        assert!(m.len() <= LIMIT);
                        let _ = crate::sip::message::parse(&m);
                    }
                    Ok(Frame::KeepAlive) => {}
                    Err(_) => return,
                }
            }
        }
    }
}
pub use framing_impl::run as framing;

mod sdp_impl {
    #![allow(unused_imports)]
    use crate::sip::sdp::{self, Codec, Local};

    /// Fuzz target: an SDP offer (or answer) from a phone, parsed and negotiated against our
    /// codecs as an inbound call and an outbound call would.
    pub fn run(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let Ok(s) = sdp::parse(&text) else {
            return;
        };
        let local = Local {
            codecs: Codec::ALL.to_vec(),
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            rtp_port: 10000,
            session_id: 1,
            session_version: 1,
        };
        if let Ok((_, answer)) = sdp::answer(&s, &local) {
            assert!(
                sdp::parse(&answer).is_ok(),
                "our answer must parse: {answer}"
            );
        }
        let _ = sdp::read_answer(&s, &local);
    }
}
pub use sdp_impl::run as sdp;

mod sdes_impl {
    use crate::media::sdes::{self, SdesOffer};
    use crate::media::srtp::SUITES;

    /// Fuzz target: the `a=crypto` lines of an offered (or answered) media section, one per
    /// line of input, through what the SDP layer does with them: parse each, answer the
    /// set, read it as the answer to an offer of ours, and redact the text for a log.
    pub fn run(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches("a=crypto:"))
            .collect();
        for l in &lines {
            if let Ok(a) = sdes::parse(l) {
                let again = sdes::parse(&sdes::format(a.tag, &a.key)).expect("ours parses");
                assert_eq!(again.key, a.key);
            }
        }
        if let Ok((keys, line)) = sdes::answer(&lines, &SUITES) {
            assert_eq!(sdes::parse(&line).expect("our answer parses").tag, keys.tag);
            let _ = keys.contexts();
        }
        let offer = SdesOffer::new(&SUITES);
        let _ = offer.accept_answer(&lines);
        let redacted = sdes::redact(&text);
        assert!(!redacted.contains("inline:") || redacted.contains("inline:***"));
    }
}
pub use sdes_impl::run as sdes;

mod srtp_impl {
    use crate::media::srtp::{MAX_RTCP_OVERHEAD, MasterKey, SUITES, SrtpContext};

    /// Fuzz target: packets from a hostile peer on an SRTP leg. The first octet picks the
    /// suite and RTP or RTCP; the rest is the packet, unprotected by a receiving context,
    /// and protected by a sending one (a peer's plain packet must not crash us either).
    pub fn run(data: &[u8]) {
        let Some((&sel, packet)) = data.split_first() else {
            return;
        };
        let suite = SUITES[usize::from(sel) % SUITES.len()];
        let master = MasterKey::new(suite, &[7u8; 30][..30 - (14 - suite.master_salt_len())])
            .expect("a fixed key of the right length");
        let mut ctx = SrtpContext::new(&master);
        let mut buf = packet.to_vec();
        buf.resize(packet.len() + MAX_RTCP_OVERHEAD, 0);
        let n = packet.len();
        if sel & 0x80 == 0 {
            let _ = ctx.unprotect_rtp(&mut buf, n);
            buf[..n].copy_from_slice(packet);
            if let Ok(m) = ctx.protect_rtp(&mut buf, n) {
                let mut rx = SrtpContext::new(&master);
                assert_eq!(rx.unprotect_rtp(&mut buf, m), Ok(n), "round trip");
            }
        } else {
            let _ = ctx.unprotect_rtcp(&mut buf, n);
            buf[..n].copy_from_slice(packet);
            if let Ok(m) = ctx.protect_rtcp(&mut buf, n) {
                let mut rx = SrtpContext::new(&master);
                assert_eq!(rx.unprotect_rtcp(&mut buf, m), Ok(n), "round trip");
            }
        }
    }
}
pub use srtp_impl::run as srtp;
