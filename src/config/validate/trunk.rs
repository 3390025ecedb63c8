//! Trunk files: each trunk's inbound and outbound sides with their credentials, its SRTP
//! policy, codec list and session timers, names and
//! backups across the set, and the ambiguity check (no call may match two inbound trunks).

use super::Ctx;
use crate::config::error::Origin;
use crate::config::raw::{self, Parsed, Spanned};
use crate::config::types::{self, Codec, Secret, Transport, normalize_number};
use crate::config::{
    Credentials, DigestAlgorithm, HeaderMapping, InboundTrunk, MediaEncryption, OutboundTrunk,
    RegisterConfig, SessionTimers, Trunk, defaults,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

fn credentials(
    cx: &mut Ctx<'_>,
    file: &Path,
    a: &Spanned<raw::Auth>,
    inbound: bool,
) -> Option<Credentials> {
    let v = &a.value;
    let mut algorithms = Vec::new();
    match &v.algorithms {
        Some(list) if !inbound => {
            cx.err_at(
                file,
                list,
                "algorithms applies to inbound.auth only (outbound answers whatever the carrier offers)",
            );
            return None;
        }
        Some(list) => {
            if list.value.is_empty() {
                cx.err_at(
                    file,
                    list,
                    "algorithms must name at least one of sha-256, md5",
                );
                return None;
            }
            for a in &list.value {
                let alg = match a.value.to_ascii_lowercase().as_str() {
                    "sha-256" | "sha256" => DigestAlgorithm::Sha256,
                    "md5" => DigestAlgorithm::Md5,
                    _ => {
                        cx.err_at(
                            file,
                            a,
                            format!(
                                "unknown digest algorithm {:?}: expected sha-256 or md5",
                                a.value
                            ),
                        );
                        return None;
                    }
                };
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
        }
        None => {
            for a in defaults::AUTH_ALGORITHMS {
                algorithms.push(if *a == "md5" {
                    DigestAlgorithm::Md5
                } else {
                    DigestAlgorithm::Sha256
                });
            }
        }
    }
    if v.username.value.is_empty() || v.username.value.contains([':', '\r', '\n', '"']) {
        cx.err_at(
            file,
            &v.username,
            "username must be non-empty and contain no ':', quote or line break",
        );
        return None;
    }
    let password = match (&v.password, &v.password_env) {
        (Some(p), None) if !p.value.is_empty() => p.value.clone(),
        (Some(p), None) => {
            cx.err_at(file, p, "password is empty");
            return None;
        }
        (None, Some(var)) => match (cx.env)(&var.value).filter(|s| !s.is_empty()) {
            Some(p) => p,
            None => {
                cx.err_at(
                    file,
                    var,
                    format!(
                        "environment variable {} (password_env) is not set",
                        var.value
                    ),
                );
                return None;
            }
        },
        (Some(_), Some(var)) => {
            cx.err_at(file, var, "give either password or password_env, not both");
            return None;
        }
        (None, None) => {
            cx.err_at(file, a, "auth needs a password or password_env");
            return None;
        }
    };
    Some(Credentials {
        algorithms,
        username: v.username.value.clone(),
        password: Secret::new(password),
    })
}

/// Headers a trunk may not set: Roomline writes them itself.
const MANAGED_HEADERS: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "content-length",
    "content-type",
    "max-forwards",
    "authorization",
    "proxy-authorization",
    "route",
    "record-route",
    "expires",
    "allow",
    "supported",
    "require",
];

fn header_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// A trunk side's `include_headers`, `headers_to_attributes` and `attributes_to_headers`.
fn header_mapping(
    cx: &mut Ctx<'_>,
    file: &Path,
    include: Option<&Spanned<String>>,
    to_attributes: &BTreeMap<String, Spanned<String>>,
    to_headers: &BTreeMap<String, Spanned<String>>,
) -> HeaderMapping {
    let include = include
        .and_then(|s| cx.parse(file, s, types::parse_include_headers))
        .unwrap_or_default();
    let mut m = HeaderMapping {
        include,
        ..Default::default()
    };
    for (header, attr) in to_attributes {
        let ok = cx.parse(file, attr, |a| {
            types::check_header_name(header)?;
            types::check_mapped_attribute(a)
        });
        if ok.is_some() {
            m.to_attributes.push((header.clone(), attr.value.clone()));
        }
    }
    for (attr, header) in to_headers {
        let ok = cx.parse(file, header, |h| {
            types::check_header_name(h)?;
            if MANAGED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "header {h} is set by Roomline and cannot carry attribute {attr:?}"
                ));
            }
            Ok(())
        });
        if attr.trim().is_empty() {
            cx.err_at(
                file,
                header,
                "attributes_to_headers: the attribute name is empty",
            );
        } else if ok.is_some() {
            m.attributes_to_headers
                .push((attr.clone(), header.value.clone()));
        }
    }
    m
}

fn inbound(cx: &mut Ctx<'_>, file: &Path, i: &Spanned<raw::Inbound>) -> Option<InboundTrunk> {
    let v = &i.value;
    let before = cx.errors.len();
    let numbers: Vec<String> = v
        .numbers
        .iter()
        .filter_map(|n| cx.parse(file, n, types::parse_number))
        .collect();
    let allowed_addresses = v
        .allowed_addresses
        .iter()
        .filter_map(|a| cx.parse(file, a, types::parse_net))
        .collect();
    let allowed_numbers = v
        .allowed_numbers
        .iter()
        .filter_map(|n| cx.parse(file, n, types::parse_number_pattern))
        .collect();
    let auth = v.auth.as_ref().map(|a| credentials(cx, file, a, true));
    let mapping = header_mapping(
        cx,
        file,
        v.include_headers.as_ref(),
        &v.headers_to_attributes,
        &v.attributes_to_headers,
    );
    let mut seen = HashMap::new();
    for (n, s) in numbers.iter().zip(&v.numbers) {
        if let Some(first) = seen.insert(normalize_number(n).to_string(), n.clone()) {
            cx.err_at(
                file,
                s,
                format!("number {n:?} is listed twice in this trunk (also as {first:?})"),
            );
        }
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(InboundTrunk {
        numbers,
        allowed_addresses,
        allowed_numbers,
        auth: auth.flatten(),
        mapping,
    })
}

fn outbound(cx: &mut Ctx<'_>, file: &Path, o: &Spanned<raw::Outbound>) -> Option<OutboundTrunk> {
    let v = &o.value;
    let before = cx.errors.len();
    let target = cx.parse(file, &v.address, types::parse_sip_target);
    let transport = v
        .transport
        .as_ref()
        .map(|t| (t, cx.parse(file, t, types::parse_transport)));
    let transport = match (&target, transport) {
        (Some(t), Some((s, Some(tr)))) => {
            if t.transport.is_some_and(|u| u != tr) {
                cx.err_at(
                    file,
                    s,
                    format!(
                        "transport {} contradicts the transport in address {:?}",
                        tr.as_str(),
                        v.address.value
                    ),
                );
            }
            tr
        }
        (Some(t), None) => t.transport.unwrap_or(Transport::Udp),
        _ => Transport::Udp,
    };
    let from_number = v
        .from_number
        .as_ref()
        .and_then(|n| cx.parse(file, n, types::parse_number));
    let auth = v.auth.as_ref().map(|a| credentials(cx, file, a, false));
    let mut headers = Vec::new();
    for (name, value) in &v.headers {
        if !header_ok(name) {
            cx.err_at(
                file,
                value,
                format!("invalid header name {name:?}: expected a SIP token such as X-Account"),
            );
        } else if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            cx.err_at(
                file,
                value,
                format!("header {name} is set by Roomline and cannot be configured"),
            );
        } else if value.value.contains(['\r', '\n']) {
            cx.err_at(
                file,
                value,
                format!("header {name} value contains a line break"),
            );
        } else {
            headers.push((name.clone(), value.value.clone()));
        }
    }
    let mapping = header_mapping(
        cx,
        file,
        v.include_headers.as_ref(),
        &v.headers_to_attributes,
        &v.attributes_to_headers,
    );
    let register = match &v.register {
        None => None,
        Some(r) => {
            let expires =
                cx.duration_or(file, r.value.expires.as_ref(), defaults::REGISTER_EXPIRES);
            if let (Some(d), Some(s)) = (expires, r.value.expires.as_ref())
                && d < Duration::from_secs(60)
            {
                cx.err_at(file, s, "register expires must be at least 60s");
            }
            let user = r.value.user.as_ref().and_then(|u| {
                let ok = !u.value.is_empty()
                    && u.value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c));
                if ok {
                    Some(u.value.clone())
                } else {
                    cx.err_at(
                        file,
                        u,
                        "invalid register user: expected a SIP user part such as 15550100",
                    );
                    None
                }
            });
            expires.map(|expires| RegisterConfig { expires, user })
        }
    };
    let ca_file = match &v.ca_file {
        Some(ca) if transport != Transport::Tls => {
            cx.err_at(
                file,
                ca,
                format!(
                    "ca_file applies only to the tls transport, this trunk uses {}",
                    transport.as_str()
                ),
            );
            None
        }
        Some(ca) if ca.value.trim().is_empty() => {
            cx.err_at(file, ca, "ca_file is empty: expected a PEM file path");
            None
        }
        Some(ca) => Some(std::path::PathBuf::from(&ca.value)),
        None => None,
    };
    let options_interval = match &v.options_interval {
        None => None,
        Some(s) => match cx.parse(file, s, types::parse_duration) {
            Some(d) if d.is_zero() => None,
            Some(d) if d < Duration::from_secs(1) => {
                cx.err_at(
                    file,
                    s,
                    "options_interval must be at least 1s (or 0s for no pings)",
                );
                None
            }
            other => other,
        },
    };
    if cx.errors.len() != before {
        return None;
    }
    Some(OutboundTrunk {
        target: target?,
        transport,
        from_number,
        auth: auth.flatten(),
        headers,
        register,
        options_interval,
        early_media: v
            .early_media
            .as_ref()
            .map_or(defaults::OUTBOUND_EARLY_MEDIA, |b| b.value),
        mapping,
        ca_file,
    })
}

/// A trunk's `session_timers`: both intervals whole seconds of at least 90 s (RFC 4028
/// section 4), `expires` not below `min_se`.
fn session_timers(
    cx: &mut Ctx<'_>,
    file: &Path,
    v: Option<&Spanned<raw::SessionTimers>>,
) -> Option<SessionTimers> {
    let d = SessionTimers::default();
    let Some(v) = v else {
        return Some(d);
    };
    let before = cx.errors.len();
    let mut interval = |s: Option<&Spanned<String>>, default: Duration, key: &str| {
        let value = cx.duration_or(file, s, default)?;
        if value < Duration::from_secs(90) || value.subsec_nanos() != 0 {
            if let Some(s) = s {
                cx.err_at(
                    file,
                    s,
                    format!("session_timers.{key} must be whole seconds, at least 90s (RFC 4028)"),
                );
            }
            return None;
        }
        Some(value)
    };
    let expires = interval(v.value.expires.as_ref(), d.expires, "expires");
    let min_se = interval(v.value.min_se.as_ref(), d.min_se, "min_se");
    if let (Some(e), Some(m), Some(s)) = (expires, min_se, v.value.expires.as_ref())
        && e < m
    {
        cx.err_at(
            file,
            s,
            "session_timers.expires must not be below session_timers.min_se",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(SessionTimers {
        enabled: v.value.enabled.as_ref().map_or(d.enabled, |b| b.value),
        expires: expires?,
        min_se: min_se?,
    })
}

/// The valid trunks, sorted by name, and the names of every trunk file that defined one
/// (valid or not), so references to an invalid trunk are not reported twice.
/// `tls_listener`: whether inbound calls can arrive over TLS at all (for the SRTP warning).
pub(super) fn trunk_set(
    cx: &mut Ctx<'_>,
    parsed: Vec<Parsed<raw::Trunk>>,
    tls_listener: bool,
) -> (Vec<Trunk>, Vec<String>) {
    let mut trunks: Vec<(Trunk, &Parsed<raw::Trunk>)> = Vec::new();
    let mut defined: Vec<(String, &Parsed<raw::Trunk>)> = Vec::new();
    for p in &parsed {
        let file = &p.file;
        let v = &p.value;
        let name = match &v.name {
            Some(n) => {
                if let Err(m) = types::check_name(&n.value) {
                    cx.err_at(file, n, m);
                    continue;
                }
                n.value.clone()
            }
            None => {
                let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if let Err(m) = types::check_name(stem) {
                    cx.err(
                        Origin::File(file.clone()),
                        format!(
                            "{m} (the trunk name comes from the file name; set `name:` instead)"
                        ),
                    );
                    continue;
                }
                stem.to_string()
            }
        };
        if let Some((_, other)) = defined.iter().find(|(n, _)| *n == name) {
            let origin = v.name.as_ref().map_or(Origin::File(file.clone()), |n| {
                Origin::at(file, n.referenced)
            });
            cx.err(
                origin,
                format!(
                    "duplicate trunk name {name:?}: also defined in {}",
                    other.file.display()
                ),
            );
            continue;
        }
        defined.push((name.clone(), p));
        if let Some(b) = &v.backup {
            if b.value == name {
                cx.err_at(file, b, "a trunk cannot be its own backup");
            } else if !parsed_name_exists(&parsed, &b.value) {
                cx.err_at(
                    file,
                    b,
                    format!(
                        "backup trunk {:?} is not defined in {}",
                        b.value,
                        file.parent().unwrap_or(Path::new(".")).display()
                    ),
                );
            }
        }
        if v.inbound.is_none() && v.outbound.is_none() {
            cx.err(
                Origin::File(file.clone()),
                "a trunk needs an inbound or an outbound section",
            );
            continue;
        }
        let inb = v.inbound.as_ref().map(|i| inbound(cx, file, i));
        let outb = v.outbound.as_ref().map(|o| outbound(cx, file, o));
        let media_encryption = match &v.media_encryption {
            None => types::parse_media_encryption(defaults::MEDIA_ENCRYPTION)
                .expect("default media_encryption"),
            Some(s) => match cx.parse(file, s, types::parse_media_encryption) {
                Some(m) => m,
                None => continue,
            },
        };
        if matches!(inb, Some(None)) || matches!(outb, Some(None)) {
            continue;
        }
        if let (Some(s), true) = (
            &v.media_encryption,
            media_encryption != MediaEncryption::Disable,
        ) {
            let plain_out = outb
                .as_ref()
                .and_then(|o| o.as_ref())
                .filter(|o| o.transport != Transport::Tls);
            if let Some(o) = plain_out {
                cx.warn_at(
                    file,
                    s,
                    format!(
                        "media_encryption {} over {} signalling: the SRTP keys travel in cleartext SDP (use transport tls)",
                        media_encryption.as_str(),
                        o.transport.as_str()
                    ),
                );
            }
            if inb.is_some() && !tls_listener {
                cx.warn_at(
                    file,
                    s,
                    format!(
                        "media_encryption {} on an inbound trunk without a tls listener: the SRTP keys travel in cleartext SDP",
                        media_encryption.as_str()
                    ),
                );
            }
        }
        let Some(session_timers) = session_timers(cx, file, v.session_timers.as_ref()) else {
            continue;
        };
        let Some(codecs) = codecs(cx, file, v.codecs.as_ref()) else {
            continue;
        };
        let trunk = Trunk {
            name,
            file: file.clone(),
            inbound: inb.flatten(),
            outbound: outb.flatten(),
            backup: v.backup.as_ref().map(|b| b.value.clone()),
            media_encryption,
            codecs,
            session_timers,
        };
        trunks.push((trunk, p));
    }
    // Backups: exist, are not the trunk itself, and both sides can place calls.
    for (t, p) in &trunks {
        let Some(b) = p.value.backup.as_ref() else {
            continue;
        };
        let file = &p.file;
        if let Some((bt, _)) = trunks
            .iter()
            .find(|(x, _)| x.name == b.value && x.name != t.name)
        {
            if t.outbound.is_none() {
                cx.err_at(
                    file,
                    b,
                    "a backup applies to outbound calls: this trunk has no outbound section",
                );
            } else if bt.outbound.is_none() {
                cx.err_at(
                    file,
                    b,
                    format!("backup trunk {:?} has no outbound section", b.value),
                );
            } else if bt.backup.as_deref() == Some(t.name.as_str()) {
                cx.err_at(
                    file,
                    b,
                    format!(
                        "trunks {:?} and {:?} name each other as backup",
                        t.name, b.value
                    ),
                );
            }
        }
    }
    ambiguity(cx, &trunks);
    let names = defined.into_iter().map(|(n, _)| n).collect();
    let mut out: Vec<Trunk> = trunks.into_iter().map(|(t, _)| t).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, names)
}

/// `codecs: [opus, g722, pcmu, pcma]`: known names, each once, at least one; the
/// default list without the key.
fn codecs(
    cx: &mut Ctx<'_>,
    file: &Path,
    list: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Option<Vec<Codec>> {
    let Some(list) = list else {
        return Some(defaults::CODECS.to_vec());
    };
    if list.value.is_empty() {
        cx.err_at(
            file,
            list,
            "codecs must name at least one of opus, g722, pcmu, pcma",
        );
        return None;
    }
    let mut out: Vec<Codec> = Vec::new();
    let mut ok = true;
    for name in &list.value {
        match cx.parse(file, name, types::parse_codec) {
            Some(c) if out.contains(&c) => {
                cx.err_at(
                    file,
                    name,
                    format!("codec {:?} is listed twice", name.value),
                );
                ok = false;
            }
            Some(c) => out.push(c),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn parsed_name_exists(parsed: &[Parsed<raw::Trunk>], name: &str) -> bool {
    parsed.iter().any(|p| match &p.value.name {
        Some(n) => n.value == name,
        None => p.file.file_stem().and_then(|s| s.to_str()) == Some(name),
    })
}

/// Two inbound trunks are ambiguous when one call could match both: their numbers overlap
/// (an empty list is any number), their source addresses overlap (empty is any), and their
/// caller filters overlap (empty is any caller; a regex may match anything).
fn ambiguity(cx: &mut Ctx<'_>, trunks: &[(Trunk, &Parsed<raw::Trunk>)]) {
    for (i, (a, _)) in trunks.iter().enumerate() {
        for (b, pb) in &trunks[i + 1..] {
            let (Some(ia), Some(ib)) = (&a.inbound, &b.inbound) else {
                continue;
            };
            // calls from a shared backup's addresses are taken by the primary trunk
            // (dialplan::trunk_match): two primaries of one backup must not both take one
            if let (Some(ba), Some(bb)) = (&a.backup, &b.backup)
                && ba == bb
                && !ia.allowed_addresses.is_empty()
                && !ib.allowed_addresses.is_empty()
            {
                let numbers_overlap = ia.numbers.is_empty()
                    || ib.numbers.is_empty()
                    || ia.numbers.iter().any(|n| {
                        ib.numbers
                            .iter()
                            .any(|m| normalize_number(m) == normalize_number(n))
                    });
                let callers_overlap = ia.allowed_numbers.is_empty()
                    || ib.allowed_numbers.is_empty()
                    || ia
                        .allowed_numbers
                        .iter()
                        .any(|x| ib.allowed_numbers.iter().any(|y| x.may_overlap(y)));
                if numbers_overlap && callers_overlap {
                    let origin = pb
                        .value
                        .backup
                        .as_ref()
                        .map_or(Origin::File(pb.file.clone()), |s| {
                            Origin::at(&pb.file, s.referenced)
                        });
                    cx.err(
                        origin,
                        format!(
                            "trunks {:?} and {:?} share the backup {ba:?} and could take the same call from its addresses; give them distinct numbers or allowed_numbers",
                            a.name, b.name
                        ),
                    );
                }
            }
            let shared_number = if ia.numbers.is_empty() || ib.numbers.is_empty() {
                Some("any number".to_string())
            } else {
                ia.numbers
                    .iter()
                    .find(|n| {
                        ib.numbers
                            .iter()
                            .any(|m| normalize_number(m) == normalize_number(n))
                    })
                    .map(|n| format!("number {n}"))
            };
            let nets_overlap = ia.allowed_addresses.is_empty()
                || ib.allowed_addresses.is_empty()
                || ia.allowed_addresses.iter().any(|x| {
                    ib.allowed_addresses
                        .iter()
                        .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
                });
            let callers_overlap = ia.allowed_numbers.is_empty()
                || ib.allowed_numbers.is_empty()
                || ia
                    .allowed_numbers
                    .iter()
                    .any(|x| ib.allowed_numbers.iter().any(|y| x.may_overlap(y)));
            if let (Some(what), true, true) = (shared_number, nets_overlap, callers_overlap) {
                let origin = pb
                    .value
                    .inbound
                    .as_ref()
                    .map_or(Origin::File(pb.file.clone()), |s| {
                        Origin::at(&pb.file, s.referenced)
                    });
                cx.err(
                    origin,
                    format!(
                        "inbound side of trunk {:?} overlaps trunk {:?} ({}): a call to {what} from the same address and caller would match both; give them distinct numbers, allowed_addresses or allowed_numbers",
                        b.name,
                        a.name,
                        a.file.display()
                    ),
                );
            }
        }
    }
}
