//! The leg on a virtual clock, without sockets: a peer here writes requests and
//! responses as text and reads what the leg sends back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Transport;
use crate::sip::message::{self, StartLine};
use crate::sip::session_timer::Refresher;
use crate::sip::uri::Via;

const US: &str = "127.0.0.1:5060";
const PEER: &str = "127.0.0.1:5070";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An `Offers` that answers every offer, offers a fixed SDP, and records what it saw.
#[derive(Default)]
struct Media {
    offers: Vec<String>,
    answers: Vec<String>,
    refuse: bool,
}

const SDP: &str = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

impl Offers for Media {
    fn answer(&mut self, _now: Instant, offer: &[u8]) -> Result<String, Rejection> {
        self.offers
            .push(String::from_utf8_lossy(offer).into_owned());
        if self.refuse {
            return Err(Rejection {
                warning_code: 305,
                text: "no codec".into(),
            });
        }
        Ok(SDP.replace("o=x", "o=answer"))
    }
    fn offer(&mut self) -> String {
        SDP.replace("o=x", "o=offer")
    }
    fn answered(&mut self, _now: Instant, answer: &[u8]) {
        self.answers
            .push(String::from_utf8_lossy(answer).into_owned());
    }
}

fn flow() -> Flow {
    Flow::for_test(Transport::Udp, US.parse().unwrap(), PEER.parse().unwrap()).0
}

fn local() -> Local {
    Local {
        contact: format!("<sip:roomline@{US}>"),
        via: format!("SIP/2.0/UDP {US}"),
        user_agent: "Roomline/test".into(),
    }
}

fn incoming(text: &str, at: Instant) -> Incoming {
    let msg = message::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let via = Via::top(msg.headers_named("Via")).unwrap();
    Incoming {
        msg,
        flow: flow(),
        via,
        at,
    }
}

/// What the leg sent, parsed.
fn sent(leg: &mut Leg) -> Vec<Message> {
    std::iter::from_fn(|| leg.poll_transmit())
        .map(|t| message::parse(&t.bytes).expect("the leg sends valid SIP"))
        .collect()
}

fn status(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { status, .. } => status,
        _ => 0,
    }
}

fn events(leg: &mut Leg) -> Vec<String> {
    std::iter::from_fn(|| leg.poll_event())
        .map(|e| format!("{e:?}"))
        .collect()
}

/// The phone: its dialog identifiers and requests.
struct Peer {
    call_id: String,
    from_tag: String,
    our_tag: String,
    branch: u32,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            call_id: "call-1".into(),
            from_tag: "ptag".into(),
            our_tag: String::new(),
            branch: 0,
        }
    }

    fn request(&mut self, method: &str, cseq: u32, extra: &str, body: Option<&str>) -> String {
        self.branch += 1;
        self.request_on(
            method,
            cseq,
            &format!("z9hG4bKp{}", self.branch),
            extra,
            body,
        )
    }

    fn request_on(
        &self,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &str,
        body: Option<&str>,
    ) -> String {
        let to_tag = if self.our_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={}", self.our_tag)
        };
        let (ctype, body) = match body {
            Some(b) => (
                "Content-Type: application/sdp\r\n".to_string(),
                b.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "{method} sip:roomline@{US} SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+15550111@{PEER}>;tag={}\r\nTo: <sip:+15550100@{US}>{to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:phone@{PEER}>\r\n{extra}{ctype}\
             Content-Length: {}\r\n\r\n{body}",
            self.from_tag,
            self.call_id,
            body.len()
        )
    }

    /// A response to a request the leg sent.
    fn respond(&self, req: &Message, status: u16, extra: &str, body: Option<&str>) -> String {
        let via: Vec<&str> = req.headers_named("Via").collect();
        let (ctype, body) = match body {
            Some(b) => (
                "Content-Type: application/sdp\r\n".to_string(),
                b.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "SIP/2.0 {status} X\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             Contact: <sip:phone@{PEER}>\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
            via.join(", "),
            req.header("From").unwrap(),
            req.header("To").unwrap(),
            req.header("Call-ID").unwrap(),
            req.header("CSeq").unwrap(),
            body.len()
        )
    }
}

/// A UAS leg whose INVITE (with `extra` headers) was answered 200 at `t0` and ACKed.
fn answered_uas(t0: Instant, extra: &str, settings: Settings, media: &mut Media) -> (Leg, Peer) {
    let mut peer = Peer::new();
    let invite = incoming(
        &peer.request_on("INVITE", 1, "z9hG4bKinv", extra, Some(SDP)),
        t0,
    );
    let mut leg = Leg::uas(&invite, local(), Timers::default(), settings);
    leg.accept_invite_timer().expect("timer accepted");
    leg.create_uas_dialog().unwrap();
    let ok = leg
        .invite_response(200)
        .unwrap()
        .body("application/sdp", SDP);
    leg.respond_invite(t0, 200, ok);
    let ok = sent(&mut leg).pop().unwrap();
    assert_eq!(status(&ok), 200);
    peer.our_tag = leg.local_tag().to_string();
    let ack = incoming(&peer.request("ACK", 1, "", None), t0);
    leg.on_request(t0, &ack, Some(media));
    assert!(sent(&mut leg).is_empty(), "no response to an ACK");
    (leg, peer)
}

#[test]
fn leg_bye_is_answered_once_and_retransmissions_get_the_same_200() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
    let bye_text = peer.request("BYE", 2, "", None);
    leg.on_request(t0, &incoming(&bye_text, t0), Some(&mut media));
    let first = sent(&mut leg);
    assert_eq!(first.iter().map(status).collect::<Vec<_>>(), vec![200]);
    assert_eq!(events(&mut leg), vec!["Bye"]);
    // the same BYE again: the cached 200, no new event
    leg.on_request(t0 + secs(1), &incoming(&bye_text, t0), Some(&mut media));
    assert_eq!(sent(&mut leg), first);
    assert!(events(&mut leg).is_empty());
    // anything new after the end: 481; our hang-up sends no BYE after theirs
    let info = peer.request("INFO", 3, "", None);
    leg.on_request(t0, &incoming(&info, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![481]
    );
    leg.hang_up(t0, "Q.850;cause=16");
    assert!(sent(&mut leg).is_empty());
    assert!(leg.is_settled());
    assert_eq!(leg.linger().len(), 2);
}

#[test]
fn leg_out_of_order_cseq_gets_500_and_merged_invite_482() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
    let info = peer.request("INFO", 5, "", None);
    leg.on_request(t0, &incoming(&info, t0), Some(&mut media));
    let old = peer.request("OPTIONS", 3, "", None);
    leg.on_request(t0, &incoming(&old, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![200, 500]
    );
    // the same CSeq again is not out of order (RFC 3261 section 12.2.2 says lower)
    let same = peer.request("OPTIONS", 5, "", None);
    leg.on_request(t0, &incoming(&same, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![200]
    );
    // another dialog's request with this Call-ID: 481; an INVITE without our tag: 482
    let mut stranger = Peer::new();
    stranger.our_tag = "not-ours".into();
    stranger.branch = 100;
    let r = stranger.request("INFO", 9, "", None);
    leg.on_request(t0, &incoming(&r, t0), Some(&mut media));
    stranger.our_tag.clear();
    let r = stranger.request("INVITE", 9, "", Some(SDP));
    leg.on_request(t0, &incoming(&r, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![481, 482]
    );
}

#[test]
fn leg_cancel_before_the_final_ends_the_call_and_after_it_changes_nothing() {
    let t0 = Instant::now();
    let peer = Peer::new();
    let invite = incoming(
        &peer.request_on("INVITE", 1, "z9hG4bKinv", "", Some(SDP)),
        t0,
    );
    let mut leg = Leg::uas(&invite, local(), Timers::default(), Settings::default());
    leg.create_uas_dialog().unwrap();
    let ringing = leg.invite_response(180).unwrap();
    leg.respond_invite(t0, 180, ringing);
    let _ = sent(&mut leg);
    let cancel = peer.request_on("CANCEL", 1, "z9hG4bKinv", "", None);
    leg.on_request(t0, &incoming(&cancel, t0), None);
    let out = sent(&mut leg);
    let got: Vec<(u16, &str)> = out
        .iter()
        .map(|m| (status(m), m.cseq().unwrap().1))
        .collect();
    assert_eq!(got, vec![(200, "CANCEL"), (487, "INVITE")]);
    assert_eq!(events(&mut leg), vec!["Cancelled"]);
    // the ACK of the 487 is absorbed; a CANCEL again gets its 200 again
    let ack = peer.request_on("ACK", 1, "z9hG4bKinv", "", None);
    leg.on_request(t0, &incoming(&ack, t0), None);
    leg.on_request(t0, &incoming(&cancel, t0), None);
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(leg.is_settled());
    // after a 2xx, a CANCEL gets 200 and the call goes on
    let mut media = Media::default();
    let (mut leg, peer) = answered_uas(t0, "", Settings::default(), &mut media);
    let cancel = peer.request_on("CANCEL", 1, "z9hG4bKinv", "", None);
    leg.on_request(t0, &incoming(&cancel, t0), None);
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(events(&mut leg).is_empty());
}

#[test]
fn leg_reinvite_offer_is_answered_and_one_without_sdp_gets_ours() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
    let hold = SDP.to_string() + "a=sendonly\r\n";
    let reinvite = peer.request("INVITE", 2, "", Some(&hold));
    leg.on_request(t0, &incoming(&reinvite, t0), Some(&mut media));
    let out = sent(&mut leg);
    assert_eq!(status(&out[0]), 200);
    assert!(String::from_utf8_lossy(&out[0].body).contains("o=answer"));
    assert_eq!(media.offers, vec![hold]);
    // its 2xx is re-sent until the ACK
    leg.handle_timeout(t0 + Duration::from_millis(500), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![200]
    );
    let ack = peer.request("ACK", 2, "", None);
    leg.on_request(t0 + secs(1), &incoming(&ack, t0), Some(&mut media));
    leg.handle_timeout(t0 + secs(3), Some(&mut media));
    assert!(sent(&mut leg).is_empty(), "no 2xx after the ACK");
    // late offer: ours in the 200, the answer in the ACK
    let reinvite = peer.request("INVITE", 3, "", None);
    leg.on_request(t0, &incoming(&reinvite, t0), Some(&mut media));
    let out = sent(&mut leg);
    assert!(String::from_utf8_lossy(&out[0].body).contains("o=offer"));
    // another offer before that ACK: 491
    let early = peer.request("UPDATE", 4, "", Some(SDP));
    leg.on_request(t0, &incoming(&early, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![491]
    );
    let ack = peer.request("ACK", 3, "", Some(&SDP.replace("o=x", "o=late")));
    leg.on_request(t0, &incoming(&ack, t0), Some(&mut media));
    assert_eq!(media.answers.len(), 1);
    assert!(media.answers[0].contains("o=late"));
    // an offer we cannot take: 488 with a Warning
    media.refuse = true;
    let update = peer.request("UPDATE", 5, "", Some(SDP));
    leg.on_request(t0, &incoming(&update, t0), Some(&mut media));
    let out = sent(&mut leg);
    assert_eq!(status(&out[0]), 488);
    assert!(
        out[0]
            .header("Warning")
            .unwrap()
            .starts_with("305 Roomline/test")
    );
}

#[test]
fn leg_our_bye_waits_for_the_ack_of_our_2xx() {
    let t0 = Instant::now();
    let peer = Peer::new();
    let invite = incoming(
        &peer.request_on("INVITE", 1, "z9hG4bKinv", "", Some(SDP)),
        t0,
    );
    let mut leg = Leg::uas(&invite, local(), Timers::default(), Settings::default());
    leg.create_uas_dialog().unwrap();
    let ok = leg.invite_response(200).unwrap();
    leg.respond_invite(t0, 200, ok);
    let _ = sent(&mut leg);
    leg.hang_up(t0, "Q.850;cause=16;text=\"x\"");
    assert!(
        sent(&mut leg).is_empty(),
        "RFC 3261 section 15: not before the ACK"
    );
    assert!(!leg.is_settled());
    let mut peer = peer;
    peer.our_tag = leg.local_tag().to_string();
    let ack = peer.request("ACK", 1, "", None);
    leg.on_request(t0 + secs(1), &incoming(&ack, t0), None);
    let out: Vec<Message> = sent(&mut leg)
        .into_iter()
        .filter(Message::is_request)
        .collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].method(), Some("BYE"));
    assert_eq!(out[0].header("Reason"), Some("Q.850;cause=16;text=\"x\""));
    let ok = peer.respond(&out[0], 200, "", None);
    assert!(leg.on_response(t0 + secs(1), &incoming(&ok, t0), None));
    assert!(leg.is_settled());
}

#[test]
fn leg_answers_are_bounded() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
    for n in 2..(2 + 10 * MAX_ANSWERED as u32) {
        let r = peer.request("OPTIONS", n, "", None);
        leg.on_request(t0, &incoming(&r, t0), Some(&mut media));
    }
    assert_eq!(sent(&mut leg).len(), 10 * MAX_ANSWERED);
    assert!(leg.answered.len() <= MAX_ANSWERED);
}

/// Drives the leg's timers on a virtual clock from `from` to `to` (1 s steps), answering
/// each refresh it sends with `answer` (None: silence); returns (seconds, request) for
/// each request sent.
fn run_refreshes(
    leg: &mut Leg,
    peer: &Peer,
    media: &mut Media,
    t0: Instant,
    (from, to): (u64, u64),
    answer: &dyn Fn(&Message) -> Option<(u16, String)>,
) -> Vec<(u64, Message)> {
    let mut seen = Vec::new();
    for s in from..=to {
        let t = t0 + secs(s);
        leg.handle_timeout(t, Some(media));
        for m in sent(leg) {
            if m.is_request() && m.method() != Some("ACK") {
                if let Some((st, extra)) = answer(&m) {
                    let body = (m.method() == Some("INVITE")).then_some(SDP);
                    let resp = peer.respond(&m, st, &extra, body);
                    assert!(leg.on_response(t, &incoming(&resp, t), Some(media)));
                }
                seen.push((s, m));
            }
        }
    }
    seen
}

#[test]
fn leg_session_timer_we_refresh_at_half_the_interval() {
    let t0 = Instant::now();
    let mut media = Media::default();
    // the phone asks 90 s and leaves the refreshing to us; it allows UPDATE
    let (mut leg, peer) = answered_uas(
        t0,
        "Session-Expires: 90\r\nSupported: timer\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n",
        Settings::default(),
        &mut media,
    );
    assert_eq!(
        leg.session_interval(),
        Some(Interval {
            secs: 90,
            refresher: Refresher::Us
        })
    );
    let ok = |_: &Message| Some((200, "Session-Expires: 90;refresher=uac\r\n".to_string()));
    let seen = run_refreshes(&mut leg, &peer, &mut media, t0, (1, 200), &ok);
    let at: Vec<(u64, &str)> = seen
        .iter()
        .map(|(s, m)| (*s, m.method().unwrap()))
        .collect();
    assert_eq!(
        at,
        vec![
            (45, "UPDATE"),
            (90, "UPDATE"),
            (135, "UPDATE"),
            (180, "UPDATE")
        ]
    );
    let first = &seen[0].1;
    assert_eq!(first.header("Session-Expires"), Some("90;refresher=uac"));
    assert!(first.body.is_empty(), "an UPDATE refresh carries no SDP");
    assert!(events(&mut leg).is_empty());
}

#[test]
fn leg_session_timer_reinvite_refresh_fallbacks_and_expiry() {
    let t0 = Instant::now();
    let mut media = Media::default();
    // no UPDATE in the phone's Allow: re-INVITE with the session's SDP
    let (mut leg, peer) = answered_uas(
        t0,
        "Session-Expires: 120;refresher=uas\r\n",
        Settings::default(),
        &mut media,
    );
    let tries = std::cell::Cell::new(0);
    let answers = |_: &Message| {
        tries.set(tries.get() + 1);
        match tries.get() {
            // first try: 422 asking more; then 491 (glare); then success
            1 => Some((422, "Min-SE: 150\r\n".to_string())),
            2 => Some((491, String::new())),
            _ => Some((200, String::new())),
        }
    };
    let seen = run_refreshes(&mut leg, &peer, &mut media, t0, (1, 70), &answers);
    let methods: Vec<&str> = seen.iter().map(|(_, m)| m.method().unwrap()).collect();
    assert!(methods.iter().all(|m| *m == "INVITE"), "{methods:?}");
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(seen[0].0, 60);
    assert_eq!(
        seen[0].1.header("Session-Expires"),
        Some("120;refresher=uac")
    );
    assert!(String::from_utf8_lossy(&seen[0].1.body).contains("o=offer"));
    // after the 422 the interval asked is its Min-SE
    assert_eq!(
        seen[1].1.header("Session-Expires"),
        Some("150;refresher=uac")
    );
    assert!(events(&mut leg).is_empty(), "{:?}", events(&mut leg));
    assert!(
        !media.answers.is_empty(),
        "the 2xx's SDP is the answer to our offer"
    );
    // a phone that never answers a refresh: the dialog is gone (Timer B)
    let mut media = Media::default();
    let (mut leg, peer) = answered_uas(
        t0,
        "Session-Expires: 90;refresher=uas\r\n",
        Settings::default(),
        &mut media,
    );
    let silent = |_: &Message| None;
    let _ = run_refreshes(&mut leg, &peer, &mut media, t0, (1, 100), &silent);
    assert_eq!(events(&mut leg), vec!["DialogGone"]);
}

#[test]
fn leg_session_timer_peer_refreshes_then_stops_and_the_session_expires() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(
        t0,
        "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n",
        Settings::default(),
        &mut media,
    );
    // the 2xx told the phone it refreshes
    assert_eq!(
        leg.session_interval(),
        Some(Interval {
            secs: 90,
            refresher: Refresher::Peer
        })
    );
    // it refreshes at 40 s (UPDATE) and 80 s (re-INVITE)
    for (n, (at, method)) in [(40, "UPDATE"), (80, "INVITE")].into_iter().enumerate() {
        let t = t0 + secs(at);
        leg.handle_timeout(t, Some(&mut media));
        let body = (method == "INVITE").then_some(SDP);
        let r = peer.request(
            method,
            2 + n as u32,
            "Session-Expires: 90;refresher=uac\r\n",
            body,
        );
        leg.on_request(t, &incoming(&r, t), Some(&mut media));
        let out = sent(&mut leg);
        assert_eq!(status(&out[0]), 200);
        assert_eq!(out[0].header("Session-Expires"), Some("90;refresher=uac"));
        assert_eq!(out[0].header("Require"), Some("timer"));
        if method == "INVITE" {
            let ack = peer.request("ACK", 2 + n as u32, "", None);
            leg.on_request(t, &incoming(&ack, t), Some(&mut media));
        }
    }
    assert!(events(&mut leg).is_empty());
    // then nothing: 90 - 30 s after the last refresh the session is over
    leg.handle_timeout(t0 + secs(139), Some(&mut media));
    assert!(events(&mut leg).is_empty());
    leg.handle_timeout(t0 + secs(140), Some(&mut media));
    assert_eq!(events(&mut leg), vec!["SessionExpired"]);
    assert!(sent(&mut leg).is_empty());
    // a re-INVITE without Session-Expires (a hold, say) keeps the timer, now ours
    let r = peer.request("INVITE", 8, "", Some(SDP));
    leg.on_request(t0 + secs(141), &incoming(&r, t0), Some(&mut media));
    let out = sent(&mut leg);
    assert_eq!(out[0].header("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(
        leg.session_interval().map(|i| i.refresher),
        Some(Refresher::Us)
    );
    let ack = peer.request("ACK", 8, "", None);
    leg.on_request(t0 + secs(141), &incoming(&ack, t0), Some(&mut media));
    // a refresh asking too little is refused with our Min-SE
    let r = peer.request("UPDATE", 9, "Session-Expires: 60\r\n", None);
    leg.on_request(t0 + secs(141), &incoming(&r, t0), Some(&mut media));
    let out = sent(&mut leg);
    assert_eq!(
        (status(&out[0]), out[0].header("Min-SE")),
        (422, Some("90"))
    );
}

#[test]
fn leg_invite_timer_checks_refuse_small_intervals_and_unwanted_requires() {
    let t0 = Instant::now();
    let peer = Peer::new();
    let invite = incoming(
        &peer.request_on(
            "INVITE",
            1,
            "z9hG4bKi",
            "Session-Expires: 30\r\n",
            Some(SDP),
        ),
        t0,
    );
    let mut leg = Leg::uas(&invite, local(), Timers::default(), Settings::default());
    assert_eq!(
        leg.accept_invite_timer(),
        Err(Outcome::IntervalTooSmall(90))
    );
    leg.refuse_invite(t0, &Outcome::IntervalTooSmall(90));
    let out = sent(&mut leg);
    assert_eq!(
        (status(&out[0]), out[0].header("Min-SE")),
        (422, Some("90"))
    );
    let off = Settings {
        enabled: false,
        ..Settings::default()
    };
    let invite = incoming(
        &peer.request_on(
            "INVITE",
            1,
            "z9hG4bKj",
            "Require: timer\r\nSession-Expires: 1800\r\n",
            Some(SDP),
        ),
        t0,
    );
    let mut leg = Leg::uas(&invite, local(), Timers::default(), off);
    assert_eq!(
        leg.accept_invite_timer(),
        Err(Outcome::Unsupported("timer".into()))
    );
    leg.refuse_invite(t0, &Outcome::Unsupported("timer".into()));
    let out = sent(&mut leg);
    assert_eq!(
        (status(&out[0]), out[0].header("Unsupported")),
        (420, Some("timer"))
    );
}

#[test]
fn leg_uac_acks_the_2xx_again_and_refreshes_as_the_2xx_says() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let mut leg = Leg::uac(
        "call-2",
        "ourtag",
        flow(),
        local(),
        Timers::default(),
        Settings::default(),
    );
    // before the answer nothing is in a dialog
    let mut peer = Peer::new();
    peer.call_id = "call-2".into();
    let r = peer.request("BYE", 1, "", None);
    leg.on_request(t0, &incoming(&r, t0), Some(&mut media));
    assert_eq!(
        sent(&mut leg).iter().map(status).collect::<Vec<_>>(),
        vec![481]
    );
    // the 2xx to our INVITE
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {US};branch=z9hG4bKours\r\nFrom: <sip:a@{US}>;tag=ourtag\r\n\
         To: <sip:b@{PEER}>;tag=calleetag\r\nCall-ID: call-2\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:callee@{PEER}>\r\nAllow: INVITE, ACK, BYE\r\nSession-Expires: 90;refresher=uac\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let ok = incoming(&ok, t0);
    let dialog = Dialog::uac(
        "call-2",
        &format!("<sip:a@{US}>;tag=ourtag"),
        "ourtag",
        1,
        &ok.msg,
    )
    .unwrap();
    leg.confirm_uac(t0, dialog, ok.client_key(), 1, &ok.msg);
    let ack = sent(&mut leg);
    assert_eq!(ack[0].method(), Some("ACK"));
    assert_eq!(ack[0].cseq(), Some((1, "ACK")));
    // a retransmitted 2xx is ACKed again
    assert!(leg.on_response(t0, &ok, Some(&mut media)));
    assert_eq!(sent(&mut leg), ack);
    // we refresh (re-INVITE: no UPDATE allowed) at 45 s
    let seen = run_refreshes(&mut leg, &peer, &mut media, t0, (1, 50), &|_| {
        Some((200, String::new()))
    });
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].0, seen[0].1.method()), (45, Some("INVITE")));
    assert_eq!(
        seen[0].1.header("To"),
        Some(format!("<sip:b@{PEER}>;tag=calleetag").as_str())
    );
}

/// Random in-dialog traffic (new requests, retransmissions, out-of-order CSeqs, ACKs,
/// unknown methods) on a virtual clock: every new request gets exactly one answer, a
/// retransmission while its transaction lives the very answer of the first, an ACK none;
/// a CSeq lower than one seen gets 500.
#[test]
fn leg_random_in_dialog_traffic_keeps_the_rules() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _round in 0..20 {
        let t0 = Instant::now();
        let mut media = Media::default();
        let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
        // (request, its first answer, when)
        let mut firsts: Vec<(String, Message, Instant)> = Vec::new();
        let mut highest = 1u32;
        let mut t = t0;
        for _ in 0..200 {
            t += Duration::from_millis(rnd(3000));
            leg.handle_timeout(t, Some(&mut media));
            let _ = sent(&mut leg);
            let recent: Vec<usize> = (0..firsts.len())
                .filter(|i| t.duration_since(firsts[*i].2) < secs(30))
                .collect();
            let retrans = (rnd(10) < 3 && !recent.is_empty())
                .then(|| recent[rnd(recent.len() as u64) as usize]);
            let text = match retrans {
                Some(i) => firsts[i].0.clone(),
                None => {
                    let method =
                        ["INFO", "OPTIONS", "UPDATE", "INFO", "ACK", "FOO"][rnd(6) as usize];
                    let cseq = if rnd(4) == 0 {
                        highest.saturating_sub(1 + rnd(3) as u32).max(1)
                    } else {
                        highest + 1 + rnd(3) as u32
                    };
                    peer.request(method, cseq, "", None)
                }
            };
            let req = incoming(&text, t);
            let method = req.method().to_string();
            let cseq = req.cseq().unwrap().0;
            leg.on_request(t, &req, Some(&mut media));
            let out = sent(&mut leg);
            if method == "ACK" {
                assert!(out.is_empty(), "a response to an ACK: {out:?}");
                continue;
            }
            assert_eq!(out.len(), 1, "one answer to {method} {cseq}: {out:?}");
            assert!(!out[0].is_request());
            match retrans {
                Some(i) => assert_eq!(out[0], firsts[i].1, "the first answer again"),
                None => {
                    let st = status(&out[0]);
                    if cseq < highest {
                        assert_eq!(st, 500, "{method} {cseq} after {highest}");
                    } else {
                        assert_ne!(st, 500, "{method} {cseq} after {highest}");
                        highest = cseq;
                    }
                    let expected = match method.as_str() {
                        _ if cseq < highest => 500,
                        "FOO" => 501,
                        _ => 200,
                    };
                    assert_eq!(st, expected, "{method} {cseq}");
                    firsts.push((text, out[0].clone(), t));
                }
            }
        }
    }
}

#[test]
fn leg_transmits_on_the_requests_flow() {
    let t0 = Instant::now();
    let mut media = Media::default();
    let (mut leg, mut peer) = answered_uas(t0, "", Settings::default(), &mut media);
    let r = peer.request("OPTIONS", 2, "", None);
    let mut req = incoming(&r, t0);
    let other: SocketAddr = "127.0.0.2:5999".parse().unwrap();
    req.flow = Flow::for_test(Transport::Udp, US.parse().unwrap(), other).0;
    leg.on_request(t0, &req, Some(&mut media));
    let t = leg.poll_transmit().unwrap();
    assert_eq!(
        t.flow.remote, other,
        "the answer goes where the request came from"
    );
}
