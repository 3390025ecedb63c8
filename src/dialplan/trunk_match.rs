//! Inbound trunk matching, a pure function: which trunk an INVITE arrived through, from
//! the packet's source address (never header contents), the called number and the caller.
//! Configuration validation refuses trunk sets where one call could match two trunks, so
//! at most one trunk matches.

use crate::config::Trunk;
use crate::config::types::normalize_number;
use std::net::IpAddr;

/// The result of matching an inbound call.
#[derive(Debug, Clone, Copy)]
pub enum InboundMatch<'a> {
    Trunk(&'a Trunk),
    /// No trunk accepts this call; `nearest` says what failed for the closest candidate,
    /// for the log line (never sent to the caller).
    NoTrunk {
        nearest: Miss,
    },
}

/// The first criterion a call failed, in checking order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No trunk has an inbound side.
    NoInboundTrunks,
    /// No trunk lists the called number.
    CalledNumber,
    /// A trunk lists the number, but not for this source address.
    SourceAddress,
    /// Number and address match, but the caller is not allowed.
    CallerNumber,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::NoInboundTrunks => "no inbound trunks",
            Miss::CalledNumber => "called number",
            Miss::SourceAddress => "source address",
            Miss::CallerNumber => "caller number",
        }
    }
}

/// Strips a SIP/tel user part down to the number it names: drops user parameters
/// (`;phone-context=...`) and visual separators allowed by RFC 3966 (`-`, `.`, `(`, `)`).
pub fn number_from_user(user: &str) -> String {
    let base = user.split(';').next().unwrap_or("");
    base.chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
        .collect()
}

/// Finds the trunk for a call from `source` to `called` by `caller`.
pub fn match_inbound<'a>(
    trunks: &'a [Trunk],
    source: IpAddr,
    called: &str,
    caller: &str,
) -> InboundMatch<'a> {
    let source = canonical(source);
    let called = number_from_user(called);
    let caller = number_from_user(caller);
    let mut nearest = Miss::NoInboundTrunks;
    for t in trunks {
        let Some(inb) = &t.inbound else { continue };
        let number_ok = inb.numbers.is_empty()
            || inb
                .numbers
                .iter()
                .any(|n| normalize_number(n) == normalize_number(&called));
        if !number_ok {
            nearest = nearest.max_with(Miss::CalledNumber);
            continue;
        }
        let addr_ok = inb.allowed_addresses.is_empty()
            || inb
                .allowed_addresses
                .iter()
                .any(|net| net.contains(&source));
        if !addr_ok {
            nearest = nearest.max_with(Miss::SourceAddress);
            continue;
        }
        let caller_ok = inb.allowed_numbers.is_empty()
            || inb.allowed_numbers.iter().any(|p| p.matches(&caller));
        if !caller_ok {
            nearest = nearest.max_with(Miss::CallerNumber);
            continue;
        }
        return InboundMatch::Trunk(t);
    }
    // A carrier that fails over to its backup trunk sends its calls from the backup's
    // addresses; they are accepted under the primary trunk (its numbers, caller
    // filter and auth), but only when no trunk takes them directly. Configuration
    // validation refuses two trunks that share a backup and could both take a call.
    for t in trunks {
        let (Some(inb), Some(backup)) = (&t.inbound, t.backup.as_deref()) else {
            continue;
        };
        if inb.allowed_addresses.is_empty() {
            continue; // already any address
        }
        let Some(b) = trunks.iter().find(|x| x.name == backup) else {
            continue;
        };
        if !backup_addresses(b).iter().any(|net| net.contains(&source)) {
            continue;
        }
        let number_ok = inb.numbers.is_empty()
            || inb
                .numbers
                .iter()
                .any(|n| normalize_number(n) == normalize_number(&called));
        let caller_ok = inb.allowed_numbers.is_empty()
            || inb.allowed_numbers.iter().any(|p| p.matches(&caller));
        if number_ok && caller_ok {
            return InboundMatch::Trunk(t);
        }
    }
    InboundMatch::NoTrunk { nearest }
}

/// Where a backup trunk's calls come from: its inbound allowed addresses, and its outbound
/// address when that is an IP literal.
pub fn backup_addresses(b: &Trunk) -> Vec<ipnet::IpNet> {
    let mut out: Vec<ipnet::IpNet> = b
        .inbound
        .as_ref()
        .map(|i| i.allowed_addresses.clone())
        .unwrap_or_default();
    if let Some(o) = &b.outbound
        && let Ok(ip) = o.target.host.parse::<IpAddr>()
    {
        out.push(ipnet::IpNet::from(ip));
    }
    out
}

impl Miss {
    fn rank(self) -> u8 {
        match self {
            Miss::NoInboundTrunks => 0,
            Miss::CalledNumber => 1,
            Miss::SourceAddress => 2,
            Miss::CallerNumber => 3,
        }
    }
    fn max_with(self, other: Miss) -> Miss {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// An IPv4 address that arrived as IPv4-mapped IPv6 (dual-stack socket) is compared as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InboundTrunk, types};

    fn trunk(name: &str, numbers: &[&str], nets: &[&str], callers: &[&str]) -> Trunk {
        Trunk {
            name: name.into(),
            file: format!("trunks/{name}.yaml").into(),
            inbound: Some(InboundTrunk {
                numbers: numbers.iter().map(|s| s.to_string()).collect(),
                allowed_addresses: nets.iter().map(|s| types::parse_net(s).unwrap()).collect(),
                allowed_numbers: callers
                    .iter()
                    .map(|s| types::parse_number_pattern(s).unwrap())
                    .collect(),
                auth: None,
                mapping: Default::default(),
            }),
            outbound: None,
            backup: None,
            session_timers: Default::default(),
            media_encryption: Default::default(),
            codecs: crate::config::defaults::CODECS.to_vec(),
        }
    }

    /// Calls from the backup's addresses are the primary trunk's, unless a trunk takes
    /// them directly.
    #[test]
    fn backup_addresses_are_accepted_under_the_primary() {
        let mut primary = trunk("carrier", &["+15550100"], &["192.0.2.0/24"], &[]);
        primary.backup = Some("carrier-backup".into());
        let mut backup = trunk("carrier-backup", &["+15550199"], &["198.51.100.0/24"], &[]);
        backup.outbound = Some(crate::config::OutboundTrunk {
            target: types::parse_sip_target("203.0.113.9:5060").unwrap(),
            transport: crate::config::Transport::Udp,
            from_number: None,
            auth: None,
            headers: Vec::new(),
            register: None,
            options_interval: None,
            early_media: true,
            mapping: Default::default(),
            ca_file: None,
        });
        let trunks = vec![primary, backup];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // from the primary's own network
        assert_eq!(
            name(match_inbound(&trunks, ip("192.0.2.5"), "+15550100", "1")),
            Ok("carrier")
        );
        // from the backup's inbound network and its outbound address
        assert_eq!(
            name(match_inbound(&trunks, ip("198.51.100.7"), "+15550100", "1")),
            Ok("carrier")
        );
        assert_eq!(
            name(match_inbound(&trunks, ip("203.0.113.9"), "15550100", "1")),
            Ok("carrier")
        );
        // the backup's own number from its own network stays the backup's
        assert_eq!(
            name(match_inbound(&trunks, ip("198.51.100.7"), "+15550199", "1")),
            Ok("carrier-backup")
        );
        // anywhere else: no trunk
        assert!(name(match_inbound(&trunks, ip("192.0.2.200"), "+15550199", "1")).is_err());
        assert!(name(match_inbound(&trunks, ip("10.0.0.1"), "+15550100", "1")).is_err());
    }

    fn name(m: InboundMatch<'_>) -> Result<&str, Miss> {
        match m {
            InboundMatch::Trunk(t) => Ok(&t.name),
            InboundMatch::NoTrunk { nearest } => Err(nearest),
        }
    }

    #[test]
    fn e164_forms_all_match() {
        let trunks = [trunk("carrier", &["+15550100"], &[], &[])];
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for called in [
            "+15550100",
            "15550100",
            "tel:+15550100",
            "+1-555-0100",
            "+15550100;phone-context=example.com",
        ] {
            assert_eq!(
                name(match_inbound(&trunks, ip, called, "alice")),
                Ok("carrier"),
                "{called}"
            );
        }
        assert_eq!(
            name(match_inbound(&trunks, ip, "+15550199", "alice")),
            Err(Miss::CalledNumber)
        );
    }

    #[test]
    fn source_address_decides_between_trunks_with_one_number() {
        let trunks = [
            trunk("a", &["+15550100"], &["192.0.2.0/24"], &[]),
            trunk("b", &["+15550100"], &["198.51.100.7"], &[]),
        ];
        let m = |ip: &str| {
            name(match_inbound(
                &trunks,
                ip.parse().unwrap(),
                "+15550100",
                "+1999",
            ))
        };
        assert_eq!(m("192.0.2.200"), Ok("a"));
        assert_eq!(m("198.51.100.7"), Ok("b"));
        assert_eq!(m("::ffff:198.51.100.7"), Ok("b"), "IPv4-mapped source");
        assert_eq!(m("198.51.100.8"), Err(Miss::SourceAddress));
        assert_eq!(m("2001:db8::1"), Err(Miss::SourceAddress));
    }

    #[test]
    fn caller_filter_applies_last() {
        let trunks = [trunk("pbx", &[], &["10.20.0.0/16"], &["2*", "/^\\+1555/"])];
        let ip: IpAddr = "10.20.1.1".parse().unwrap();
        assert_eq!(name(match_inbound(&trunks, ip, "100", "2001")), Ok("pbx"));
        assert_eq!(
            name(match_inbound(&trunks, ip, "100", "+15551234")),
            Ok("pbx")
        );
        assert_eq!(
            name(match_inbound(&trunks, ip, "100", "3001")),
            Err(Miss::CallerNumber)
        );
    }

    #[test]
    fn no_inbound_trunks_is_explicit() {
        let mut t = trunk("out", &[], &[], &[]);
        t.inbound = None;
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            name(match_inbound(&[t], ip, "1", "2")),
            Err(Miss::NoInboundTrunks)
        );
    }
}
