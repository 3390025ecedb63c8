//! The participant attributes of a call, as LiveKit's own SIP service sets them (keys,
//! values, `sip.callStatus` words), and the mapping between SIP headers and attributes
//! (`include_headers`, `headers_to_attributes`, the carrier defaults,
//! `attributes_to_headers`). Pure functions; every result is bounded in count and size.
//! Header values are callers' data: callers of this module never log them at info.
//! Research and sources: docs/livekit-parity.md.

use std::collections::HashMap;

use crate::config::{HeaderMapping, IncludeHeaders};
use crate::dialplan::JoinPlan;
#[cfg(test)]
use crate::dialplan::{hidden_identity, masked_number};
use crate::sip::message::Message;
use crate::sip::uri::NameAddr;

/// LiveKit's call id of the call (`SCL_...`), also CreateSIPParticipant's `sip_call_id`.
pub const CALL_ID: &str = "sip.callID";
/// The SIP Call-ID header of the dialog.
pub const CALL_ID_FULL: &str = "sip.callIDFull";
/// The remote tag: the INVITE's From-tag inbound, the 2xx's To-tag outbound.
pub const CALL_TAG: &str = "sip.callTag";
pub const TRUNK_ID: &str = "sip.trunkID";
pub const RULE_ID: &str = "sip.ruleID";
/// The number outside: the caller inbound, the callee outbound.
pub const PHONE_NUMBER: &str = "sip.phoneNumber";
/// Our side's number: the called number inbound, the From number outbound.
pub const TRUNK_PHONE_NUMBER: &str = "sip.trunkPhoneNumber";
/// The host outside: the From host inbound, the trunk's address outbound.
pub const HOSTNAME: &str = "sip.hostname";
pub const CALL_STATUS: &str = "sip.callStatus";
/// Prefix of the headers `include_headers` maps: `sip.h.x-custom`.
pub const HEADER_PREFIX: &str = "sip.h.";
/// The namespace Roomline owns: no configured mapping may write into it.
pub const RESERVED_PREFIX: &str = "sip.";

/// Longest header value that becomes an attribute (LiveKit's limit for request headers).
pub const MAX_VALUE_LEN: usize = 1024;
/// Most `sip.h.*` attributes taken from one message.
pub const MAX_INCLUDED_HEADERS: usize = 64;
/// Most headers a CreateSIPParticipant or TransferSIPParticipant request may set.
pub const MAX_REQUEST_HEADERS: usize = 32;

/// Headers that carry credentials: never copied into the room.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

/// Headers that name the caller: left out of `sip.h.*` under `hide_phone_number`.
const IDENTITY_HEADERS: &[&str] = &[
    "from",
    "to",
    "contact",
    "p-asserted-identity",
    "p-preferred-identity",
    "remote-party-id",
    "diversion",
    "history-info",
    "referred-by",
];

/// The carrier headers LiveKit maps by default, whatever the trunk says.
pub const CARRIER_HEADERS: &[(&str, &str)] = &[
    ("X-Twilio-AccountSid", "sip.twilio.accountSid"),
    ("X-Twilio-CallSid", "sip.twilio.callSid"),
    ("X-call_leg_id", "sip.telnyx.callLegID"),
    ("X-call_session_id", "sip.telnyx.callSessionID"),
    ("X-Amzn-ConnectContactId", "sip.amazon.contactId"),
    (
        "X-Amzn-ConnectInitialContactId",
        "sip.amazon.initialContactId",
    ),
    ("X-Amzn-SourceAccount", "sip.amazon.sourceAccount"),
    ("X-Amzn-SourceArn", "sip.amazon.sourceArn"),
    ("X-Amzn-TargetArn", "sip.amazon.targetArn"),
];

/// `sip.callStatus` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// Outbound: the participant joined, the INVITE is going out.
    Dialing,
    /// Inbound: joined before the answer; outbound: the first 18x.
    Ringing,
    /// Outbound: sending the request's `dtmf` digits after the answer.
    Automation,
    Active,
    /// A REFER is under way (Roomline's; LiveKit has no such status).
    Transferring,
    Hangup,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dialing => "dialing",
            Self::Ringing => "ringing",
            Self::Automation => "automation",
            Self::Active => "active",
            Self::Transferring => "transferring",
            Self::Hangup => "hangup",
        }
    }

    /// The attribute update for this status.
    pub fn attribute(self) -> (&'static str, &'static str) {
        (CALL_STATUS, self.as_str())
    }
}

/// The alphabet of LiveKit's ids (shortuuid's base57).
const ID_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A new call id: `SCL_` and 12 base57 characters drawn from `rng`.
pub fn call_id_from(rng: &mut impl rand::Rng) -> String {
    let mut s = String::with_capacity(16);
    s.push_str("SCL_");
    for _ in 0..12 {
        s.push(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char);
    }
    s
}

/// A new call id from the thread's random generator.
pub fn new_call_id() -> String {
    call_id_from(&mut rand::rng())
}

/// Whether `id` has the shape of a call id.
pub fn is_call_id(id: &str) -> bool {
    id.strip_prefix("SCL_")
        .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| ID_ALPHABET.contains(&b)))
}

/// A header value fit to be an attribute: at most [`MAX_VALUE_LEN`] bytes, no control
/// characters but tab.
fn value_ok(v: &str) -> bool {
    v.len() <= MAX_VALUE_LEN && !v.chars().any(|c| c.is_control() && c != '\t')
}

/// The inbound call's attributes at join, in LiveKit's order of precedence.
#[derive(Debug, Clone, Default)]
pub struct InboundCall<'a> {
    /// Our call id (`SCL_...`).
    pub call_id: &'a str,
    /// The SIP Call-ID.
    pub sip_call_id: &'a str,
    /// The INVITE's From-tag.
    pub from_tag: &'a str,
    pub trunk: &'a str,
    pub rule: &'a str,
    /// From user.
    pub caller: &'a str,
    /// From host.
    pub caller_host: &'a str,
    /// To user (the number called).
    pub called: &'a str,
    pub hide_phone_number: bool,
}

/// The `sip.*` keys of an inbound call (no header mapping, no status).
pub fn inbound(c: &InboundCall<'_>) -> Vec<(String, String)> {
    let mut out = vec![
        (CALL_ID.to_string(), c.call_id.to_string()),
        (CALL_ID_FULL.to_string(), c.sip_call_id.to_string()),
        (TRUNK_ID.to_string(), c.trunk.to_string()),
        (RULE_ID.to_string(), c.rule.to_string()),
    ];
    if !c.from_tag.is_empty() {
        out.push((CALL_TAG.to_string(), c.from_tag.to_string()));
    }
    if !c.hide_phone_number {
        out.push((PHONE_NUMBER.to_string(), c.caller.to_string()));
        out.push((TRUNK_PHONE_NUMBER.to_string(), c.called.to_string()));
        if !c.caller_host.is_empty() {
            out.push((HOSTNAME.to_string(), c.caller_host.to_string()));
        }
    }
    out
}

/// The outbound call's attributes at join.
#[derive(Debug, Clone, Default)]
pub struct OutboundCall<'a> {
    pub call_id: &'a str,
    pub trunk: &'a str,
    /// `sip_call_to`.
    pub call_to: &'a str,
    /// The number we call from.
    pub from_number: &'a str,
    /// The trunk's host.
    pub hostname: &'a str,
    pub hide_phone_number: bool,
}

/// The `sip.*` keys of an outbound call at join, with status `dialing`.
pub fn outbound(c: &OutboundCall<'_>) -> Vec<(String, String)> {
    let mut out = vec![
        (CALL_ID.to_string(), c.call_id.to_string()),
        (TRUNK_ID.to_string(), c.trunk.to_string()),
        (
            CALL_STATUS.to_string(),
            CallStatus::Dialing.as_str().to_string(),
        ),
    ];
    if !c.hide_phone_number {
        out.push((PHONE_NUMBER.to_string(), c.call_to.to_string()));
        out.push((TRUNK_PHONE_NUMBER.to_string(), c.from_number.to_string()));
        out.push((HOSTNAME.to_string(), c.hostname.to_string()));
    }
    out
}

/// What an answered outbound attempt adds: its Call-ID and the callee's To-tag.
pub fn answered(sip_call_id: &str, to_tag: &str) -> Vec<(String, String)> {
    let mut out = vec![(CALL_ID_FULL.to_string(), sip_call_id.to_string())];
    if !to_tag.is_empty() {
        out.push((CALL_TAG.to_string(), to_tag.to_string()));
    }
    out
}

/// The attributes one message's headers give: `sip.h.*` per `include_headers`, then the
/// carrier defaults, then `headers_to_attributes` (a later source overwrites an earlier
/// one's key). Bounded: values over [`MAX_VALUE_LEN`] or with control characters are
/// left out, at most [`MAX_INCLUDED_HEADERS`] `sip.h.*` keys, the first of repeated
/// headers wins, credentials are never copied.
pub fn from_headers<'a, I>(headers: I, mapping: &HeaderMapping) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: &str| match out
        .iter_mut()
        .find(|(x, _)| *x == k)
    {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k, v.to_string())),
    };
    if mapping.include != IncludeHeaders::None {
        let mut n = 0;
        for (name, value) in headers.clone() {
            let lower = name.to_ascii_lowercase();
            if SECRET_HEADERS.contains(&lower.as_str())
                || (mapping.include == IncludeHeaders::XHeaders && !lower.starts_with("x-"))
                || !value_ok(value)
            {
                continue;
            }
            let key = format!("{HEADER_PREFIX}{lower}");
            if out.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if n == MAX_INCLUDED_HEADERS {
                break;
            }
            n += 1;
            out.push((key, value.to_string()));
        }
    }
    let first = |name: &str| {
        headers
            .clone()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| value_ok(v))
    };
    for (header, attr) in CARRIER_HEADERS {
        if let Some(v) = first(header) {
            set(&mut out, attr.to_string(), v);
        }
    }
    for (header, attr) in &mapping.to_attributes {
        if SECRET_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
            continue;
        }
        if let Some(v) = first(header) {
            set(&mut out, attr.clone(), v);
        }
    }
    out
}

/// The carrier defaults only (LiveKit applies these to provisional responses too).
pub fn carrier_only<'a, I>(headers: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    from_headers(headers, &HeaderMapping::default())
}

/// `attributes_to_headers`: the headers the attributes give, sorted by header name. An
/// attribute that is absent, empty, too long or not a valid header value gives none.
pub fn to_headers(
    attributes: &HashMap<String, String>,
    map: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = map
        .iter()
        .filter_map(|(attr, header)| {
            let v = attributes.get(attr)?;
            (!v.is_empty() && value_ok(v) && !v.contains('\t')).then(|| (header.clone(), v.clone()))
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
    out
}

/// A message's headers as (name, value) pairs.
fn headers_of(msg: &Message) -> impl Iterator<Item = (&str, &str)> + Clone {
    msg.headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
}

/// The tag and host of a message's From or To header.
fn tag_and_host(msg: &Message, header: &str) -> (String, String) {
    let Some(na) = msg.header(header).and_then(|v| NameAddr::parse(v).ok()) else {
        return (String::new(), String::new());
    };
    let tag = na.tag().unwrap_or_default().to_string();
    let host = na.uri().map(|u| u.host.clone()).unwrap_or_default();
    (tag, host)
}

/// What an inbound call knows of itself besides its INVITE and its plan.
#[derive(Debug, Clone, Copy)]
pub struct InboundFacts<'a> {
    /// Our call id (`SCL_...`).
    pub call_id: &'a str,
    pub trunk: &'a str,
    pub caller: &'a str,
    pub called: &'a str,
    /// The inbound trunk's header options.
    pub mapping: Option<&'a HeaderMapping>,
}

/// Every attribute an inbound call's participant joins with: the rule's, the INVITE's
/// headers as the trunk maps them, the `sip.*` keys, and `status`.
pub fn inbound_join(
    plan: &JoinPlan,
    invite: &Message,
    facts: &InboundFacts<'_>,
    status: CallStatus,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = plan.attributes.iter().cloned().collect();
    let default = HeaderMapping::default();
    let hide = plan.hide_phone_number;
    let headers = headers_of(invite).filter(move |(n, _)| {
        !hide || !IDENTITY_HEADERS.contains(&n.to_ascii_lowercase().as_str())
    });
    out.extend(from_headers(headers, facts.mapping.unwrap_or(&default)));
    let (from_tag, caller_host) = tag_and_host(invite, "From");
    let sip_call_id = invite.header("Call-ID").unwrap_or_default();
    out.extend(inbound(&InboundCall {
        call_id: facts.call_id,
        sip_call_id,
        from_tag: &from_tag,
        trunk: facts.trunk,
        rule: &plan.rule,
        caller: facts.caller,
        caller_host: &caller_host,
        called: facts.called,
        hide_phone_number: plan.hide_phone_number,
    }));
    let (k, v) = status.attribute();
    out.insert(k.to_string(), v.to_string());
    out
}

/// What a provisional response to an outbound INVITE sets: the carrier defaults.
pub fn outbound_provisional(resp: &Message) -> HashMap<String, String> {
    carrier_only(headers_of(resp)).into_iter().collect()
}

/// What the answer of an outbound INVITE sets: `status`, the dialog's Call-ID and the
/// callee's tag, and the 2xx's headers as `mapping` maps them.
pub fn outbound_answered(
    resp: &Message,
    mapping: &HeaderMapping,
    status: CallStatus,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = from_headers(headers_of(resp), mapping)
        .into_iter()
        .collect();
    let (to_tag, _) = tag_and_host(resp, "To");
    out.extend(answered(
        resp.header("Call-ID").unwrap_or_default(),
        &to_tag,
    ));
    let (k, v) = status.attribute();
    out.insert(k.to_string(), v.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn mapping(include: IncludeHeaders, map: &[(&str, &str)]) -> HeaderMapping {
        HeaderMapping {
            include,
            to_attributes: map
                .iter()
                .map(|(h, a)| (h.to_string(), a.to_string()))
                .collect(),
            attributes_to_headers: Vec::new(),
        }
    }

    fn get<'a>(v: &'a [(String, String)], k: &str) -> Option<&'a str> {
        v.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    const INVITE: &[(&str, &str)] = &[
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
        ("From", "<sip:+15551230000@carrier.example>;tag=abc"),
        ("X-Twilio-CallSid", "CA0123456789abcdef"),
        ("x-twilio-accountsid", "AC42"),
        ("X-Customer-Tier", "gold"),
        ("X-Customer-Tier", "silver"),
        (
            "Authorization",
            "Digest username=\"u\", response=\"secret\"",
        ),
        ("X-call_leg_id", "leg-1"),
        ("User-Agent", "carrier/1.0"),
    ];

    #[test]
    fn call_ids_look_like_livekits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = call_id_from(&mut rng);
        let b = call_id_from(&mut rng);
        assert!(is_call_id(&a) && is_call_id(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(is_call_id(&new_call_id()));
        for bad in [
            "SCL_",
            "SCL_0123456789ab",
            "XYZ_23456789ABCD",
            "SCL_23456789ABCDE",
        ] {
            assert!(!is_call_id(bad), "{bad}");
        }
    }

    #[test]
    fn inbound_keys_and_hidden_numbers() {
        let c = InboundCall {
            call_id: "SCL_23456789ABCD",
            sip_call_id: "a84b4c76e66710@pc33",
            from_tag: "abc",
            trunk: "carrier",
            rule: "support",
            caller: "+15551230000",
            caller_host: "carrier.example",
            called: "+15550100",
            hide_phone_number: false,
        };
        let a = inbound(&c);
        assert_eq!(get(&a, CALL_ID), Some("SCL_23456789ABCD"));
        assert_eq!(get(&a, CALL_ID_FULL), Some("a84b4c76e66710@pc33"));
        assert_eq!(get(&a, CALL_TAG), Some("abc"));
        assert_eq!(get(&a, TRUNK_ID), Some("carrier"));
        assert_eq!(get(&a, RULE_ID), Some("support"));
        assert_eq!(get(&a, PHONE_NUMBER), Some("+15551230000"));
        assert_eq!(get(&a, TRUNK_PHONE_NUMBER), Some("+15550100"));
        assert_eq!(get(&a, HOSTNAME), Some("carrier.example"));
        let hidden = inbound(&InboundCall {
            hide_phone_number: true,
            ..c
        });
        for k in [PHONE_NUMBER, TRUNK_PHONE_NUMBER, HOSTNAME] {
            assert_eq!(get(&hidden, k), None, "{k}");
        }
        assert!(
            !hidden.iter().any(|(_, v)| v.contains("5551230000")),
            "{hidden:?}"
        );
        let id = hidden_identity("+15551230000");
        assert_eq!(id.len(), 4 + 16);
        assert_eq!(id, hidden_identity("+15551230000"));
        assert_ne!(id, hidden_identity("+15551230001"));
        assert!(!id.contains("5551230000"));
        assert_eq!(masked_number("+15551230000"), "0000");
        assert_eq!(masked_number("1234"), "4");
        assert_eq!(masked_number(""), "");
    }

    #[test]
    fn outbound_keys_and_the_answer() {
        let c = OutboundCall {
            call_id: "SCL_23456789ABCD",
            trunk: "carrier",
            call_to: "+15551230001",
            from_number: "+15550100",
            hostname: "sip.carrier.example",
            hide_phone_number: false,
        };
        let a = outbound(&c);
        assert_eq!(get(&a, CALL_STATUS), Some("dialing"));
        assert_eq!(get(&a, PHONE_NUMBER), Some("+15551230001"));
        assert_eq!(get(&a, TRUNK_PHONE_NUMBER), Some("+15550100"));
        assert_eq!(get(&a, HOSTNAME), Some("sip.carrier.example"));
        let h = outbound(&OutboundCall {
            hide_phone_number: true,
            ..c
        });
        assert_eq!(get(&h, PHONE_NUMBER), None);
        assert_eq!(get(&h, CALL_ID), Some("SCL_23456789ABCD"));
        let ans = answered("cid@x", "t0");
        assert_eq!(get(&ans, CALL_ID_FULL), Some("cid@x"));
        assert_eq!(get(&ans, CALL_TAG), Some("t0"));
        assert_eq!(answered("cid@x", "").len(), 1);
        assert_eq!(
            CallStatus::Automation.attribute(),
            (CALL_STATUS, "automation")
        );
    }

    #[test]
    fn headers_map_by_option_with_carrier_defaults() {
        let none = from_headers(INVITE.iter().copied(), &HeaderMapping::default());
        // the carrier defaults apply without any option, header names case-insensitive
        assert_eq!(get(&none, "sip.twilio.callSid"), Some("CA0123456789abcdef"));
        assert_eq!(get(&none, "sip.twilio.accountSid"), Some("AC42"));
        assert_eq!(get(&none, "sip.telnyx.callLegID"), Some("leg-1"));
        assert!(!none.iter().any(|(k, _)| k.starts_with(HEADER_PREFIX)));

        let x = from_headers(
            INVITE.iter().copied(),
            &mapping(IncludeHeaders::XHeaders, &[]),
        );
        assert_eq!(get(&x, "sip.h.x-customer-tier"), Some("gold"), "first wins");
        assert_eq!(
            get(&x, "sip.h.x-twilio-callsid"),
            Some("CA0123456789abcdef")
        );
        assert_eq!(get(&x, "sip.h.user-agent"), None);
        assert_eq!(get(&x, "sip.h.via"), None);

        let all = from_headers(INVITE.iter().copied(), &mapping(IncludeHeaders::All, &[]));
        assert_eq!(get(&all, "sip.h.user-agent"), Some("carrier/1.0"));
        assert!(get(&all, "sip.h.via").is_some());
        // credentials never reach the room
        assert_eq!(get(&all, "sip.h.authorization"), None);
        assert!(!all.iter().any(|(_, v)| v.contains("secret")));

        let mapped = from_headers(
            INVITE.iter().copied(),
            &mapping(
                IncludeHeaders::None,
                &[
                    ("x-customer-tier", "customer.tier"),
                    ("X-Missing", "m"),
                    ("Authorization", "auth"),
                ],
            ),
        );
        assert_eq!(get(&mapped, "customer.tier"), Some("gold"));
        assert_eq!(get(&mapped, "m"), None);
        assert_eq!(get(&mapped, "auth"), None);
    }

    #[test]
    fn hostile_headers_stay_bounded() {
        let long = "A".repeat(MAX_VALUE_LEN + 1);
        let exact = "B".repeat(MAX_VALUE_LEN);
        let names: Vec<String> = (0..500).map(|i| format!("X-H{i}")).collect();
        let mut hs: Vec<(&str, &str)> = vec![
            ("X-Twilio-CallSid", long.as_str()),
            ("X-Exact", exact.as_str()),
            ("X-Ctl", "a\u{0}b"),
            ("X-Esc", "a\u{1b}[31mred"),
            ("X-Tab", "a\tb"),
        ];
        hs.extend(names.iter().map(|n| (n.as_str(), "v")));
        let out = from_headers(hs.iter().copied(), &mapping(IncludeHeaders::All, &[]));
        assert_eq!(
            get(&out, "sip.twilio.callSid"),
            None,
            "oversized value dropped"
        );
        assert_eq!(get(&out, "sip.h.x-twilio-callsid"), None);
        assert_eq!(
            get(&out, "sip.h.x-exact").map(str::len),
            Some(MAX_VALUE_LEN)
        );
        assert_eq!(get(&out, "sip.h.x-ctl"), None);
        assert_eq!(get(&out, "sip.h.x-esc"), None);
        assert_eq!(get(&out, "sip.h.x-tab"), Some("a\tb"));
        let included = out
            .iter()
            .filter(|(k, _)| k.starts_with(HEADER_PREFIX))
            .count();
        assert_eq!(included, MAX_INCLUDED_HEADERS);
        assert!(out.iter().all(|(_, v)| v.len() <= MAX_VALUE_LEN));
    }

    #[test]
    fn join_and_answer_from_real_messages() {
        let invite = crate::sip::message::parse(
            b"INVITE sip:+15550100@127.0.0.1 SIP/2.0\r\n\
              Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
              From: <sip:+15551230000@carrier.example>;tag=ft1\r\n\
              To: <sip:+15550100@127.0.0.1>\r\n\
              Call-ID: c-1@carrier\r\n\
              CSeq: 1 INVITE\r\n\
              Max-Forwards: 70\r\n\
              X-Twilio-CallSid: CA1\r\n\
              X-Customer-Tier: gold\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap();
        let plan = JoinPlan {
            rule: "support".into(),
            room: "r".into(),
            identity: "i".into(),
            name: "n".into(),
            metadata: None,
            attributes: vec![("team".into(), "blue".into())],
            pin: None,
            agents: Vec::new(),
            answer: crate::config::AnswerMode::OnJoin,
            ringing_timeout: std::time::Duration::from_secs(30),
            early_media: false,
            hide_phone_number: false,
        };
        let m = mapping(
            IncludeHeaders::XHeaders,
            &[("X-Customer-Tier", "customer.tier")],
        );
        let facts = InboundFacts {
            call_id: "SCL_23456789ABCD",
            trunk: "carrier",
            caller: "+15551230000",
            called: "+15550100",
            mapping: Some(&m),
        };
        let a = inbound_join(&plan, &invite, &facts, CallStatus::Ringing);
        let g = |k: &str| a.get(k).map(String::as_str);
        assert_eq!(g("team"), Some("blue"));
        assert_eq!(g(CALL_ID), Some("SCL_23456789ABCD"));
        assert_eq!(g(CALL_ID_FULL), Some("c-1@carrier"));
        assert_eq!(g(CALL_TAG), Some("ft1"));
        assert_eq!(g(HOSTNAME), Some("carrier.example"));
        assert_eq!(g(RULE_ID), Some("support"));
        assert_eq!(g(CALL_STATUS), Some("ringing"));
        assert_eq!(g("customer.tier"), Some("gold"));
        assert_eq!(g("sip.h.x-customer-tier"), Some("gold"));
        assert_eq!(g("sip.twilio.callSid"), Some("CA1"));

        let ok = crate::sip::message::parse(
            b"SIP/2.0 200 OK\r\n\
              Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK2\r\n\
              From: <sip:+15550100@127.0.0.1>;tag=ours\r\n\
              To: <sip:+15551230001@carrier.example>;tag=theirs\r\n\
              Call-ID: out-1@roomline\r\n\
              CSeq: 1 INVITE\r\n\
              X-Call-Ref: 77\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap();
        let a = outbound_answered(&ok, &mapping(IncludeHeaders::All, &[]), CallStatus::Active);
        let g = |k: &str| a.get(k).map(String::as_str);
        assert_eq!(g(CALL_ID_FULL), Some("out-1@roomline"));
        assert_eq!(g(CALL_TAG), Some("theirs"));
        assert_eq!(g(CALL_STATUS), Some("active"));
        assert_eq!(g("sip.h.x-call-ref"), Some("77"));
        assert!(outbound_provisional(&ok).is_empty());

        // hide_phone_number: the headers that name the caller stay out too
        let hidden_plan = JoinPlan {
            hide_phone_number: true,
            ..plan
        };
        let all = mapping(IncludeHeaders::All, &[]);
        let a = inbound_join(
            &hidden_plan,
            &invite,
            &InboundFacts {
                mapping: Some(&all),
                ..facts
            },
            CallStatus::Ringing,
        );
        assert!(!a.values().any(|v| v.contains("5551230000")), "{a:?}");
        assert_eq!(
            a.get("sip.h.x-customer-tier").map(String::as_str),
            Some("gold")
        );
    }

    #[test]
    fn attributes_become_headers() {
        let attrs: HashMap<String, String> = [
            ("sip.callID", "SCL_23456789ABCD"),
            ("customer.id", "42"),
            ("empty", ""),
            ("crlf", "a\r\nInjected: 1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let map: Vec<(String, String)> = [
            ("sip.callID", "X-LK-CallID"),
            ("customer.id", "X-Customer"),
            ("missing", "X-Missing"),
            ("empty", "X-Empty"),
            ("crlf", "X-Crlf"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let h = to_headers(&attrs, &map);
        assert_eq!(
            h,
            vec![
                ("X-Customer".to_string(), "42".to_string()),
                ("X-LK-CallID".to_string(), "SCL_23456789ABCD".to_string()),
            ]
        );
        assert!(to_headers(&attrs, &[]).is_empty());
    }
}
