//! SDES key exchange for SRTP (RFC 4568), sans-IO: the `a=crypto` attribute parsed and
//! written, our keys generated from the system CSPRNG, and the offer/answer rules (the
//! answerer takes the first offered attribute it supports and answers with its own key
//! under the same tag and suite; the offerer checks the answer against what it offered).
//! The SDP layer hands in the values of the `a=crypto` lines of one media section and gets
//! back the keys of both directions, or an `SdesError` whose text goes into a 488 Warning.
//! Key material never appears in `Debug` output or in an error.
//!
//! Peer MKIs (`|mki:len`) of up to `srtp::MAX_MKI_LEN` octets are accepted and checked on
//! every received packet; we never send an MKI. Lifetimes are parsed and range-checked but
//! not enforced: every call, and every re-INVITE, uses fresh keys, far below 2^31 packets.
//! `KDR` must be 0 (the only rate SDES peers use); `UNENCRYPTED_*`/`UNAUTHENTICATED_SRTP`,
//! `FEC_*` and unknown session parameters make that attribute unusable (RFC 4568 6.3).

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::media::srtp::{MAX_MKI_LEN, MasterKey, SrtpContext, SrtpError, SrtpSuite};
use crate::sip::sdp::Rejection;

/// Base64 as RFC 4568 writes it (RFC 4648 with padding); padding is optional on input
/// since some peers leave it out.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Most `a=crypto` lines we look at in one media section (the rest are ignored).
pub const MAX_OFFERED: usize = 16;

/// Why an SDES exchange failed. The text is precise and carries no key material; `rejection`
/// turns it into the 488 Warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdesError {
    /// An SRTP media section without any `a=crypto` line.
    NoCrypto,
    /// An attribute that does not follow the RFC 4568 grammar.
    Broken { tag: Option<u32>, detail: String },
    /// Only suites we do not implement were offered (their names).
    UnknownSuite(Vec<String>),
    /// The inline key is not key||salt for its suite.
    KeyLength {
        tag: u32,
        suite: SrtpSuite,
        expected: usize,
        got: usize,
    },
    /// Well-formed, but asks for something we do not do (a session parameter, a long MKI,
    /// several keys).
    Unsupported { tag: u32, detail: String },
    /// An answer whose tag or suite is not one we offered.
    AnswerMismatch(String),
}

impl fmt::Display for SdesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdesError::NoCrypto => f.write_str("SRTP offered without a=crypto"),
            SdesError::Broken {
                tag: Some(t),
                detail,
            } => {
                write!(f, "a=crypto tag {t} is malformed: {detail}")
            }
            SdesError::Broken { tag: None, detail } => {
                write!(f, "a=crypto is malformed: {detail}")
            }
            SdesError::UnknownSuite(names) => {
                write!(
                    f,
                    "no supported crypto suite (offered {}; supported ",
                    names.join(", ")
                )?;
                let ours: Vec<&str> = crate::media::srtp::SUITES
                    .iter()
                    .map(|s| s.name())
                    .collect();
                write!(f, "{})", ours.join(", "))
            }
            SdesError::KeyLength {
                tag,
                suite,
                expected,
                got,
            } => write!(
                f,
                "a=crypto tag {tag}: {suite} key||salt is {got} octets, expected {expected}"
            ),
            SdesError::Unsupported { tag, detail } => {
                write!(f, "a=crypto tag {tag}: {detail} not supported")
            }
            SdesError::AnswerMismatch(d) => {
                write!(f, "a=crypto answer does not match the offer: {d}")
            }
        }
    }
}

impl std::error::Error for SdesError {}

impl SdesError {
    /// The 488 this error answers an offer with (RFC 3261 Warning 305 "Incompatible media
    /// format" for suites, 306 "Attribute not understood" for a broken attribute).
    #[must_use]
    pub fn rejection(&self) -> Rejection {
        let warning_code = match self {
            SdesError::UnknownSuite(_) | SdesError::NoCrypto => 305,
            _ => 306,
        };
        Rejection {
            warning_code,
            text: self.to_string(),
        }
    }

    /// How specific the error is, to report the most useful one when no attribute works:
    /// a bad key of a suite we have beats something unsupported beats a broken line (and
    /// all of them beat "unknown suite", which `answer` reports only when nothing else).
    fn rank(&self) -> u8 {
        match self {
            SdesError::KeyLength { .. } => 3,
            SdesError::Unsupported { .. } => 2,
            SdesError::Broken { .. } => 1,
            _ => 0,
        }
    }
}

/// One `a=crypto` attribute, its key decoded. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: SrtpSuite,
    pub key: MasterKey,
    /// The MKI the peer will put in its packets, big-endian in `len` octets.
    pub mki: Option<Vec<u8>>,
    /// The lifetime in packets, if given (parsed, not enforced).
    pub lifetime: Option<u64>,
}

impl fmt::Debug for CryptoAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoAttribute")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("mki_len", &self.mki.as_ref().map(Vec::len))
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn broken(tag: Option<u32>, detail: impl Into<String>) -> SdesError {
    SdesError::Broken {
        tag,
        detail: detail.into(),
    }
}

/// Parses the value of an `a=crypto:` line (what follows the colon), RFC 4568 section 9.1
/// with the SRTP key parameters of section 6.1.
pub fn parse(value: &str) -> Result<CryptoAttribute, SdesError> {
    let mut fields = value.split_ascii_whitespace();
    let tag_s = fields
        .next()
        .ok_or_else(|| broken(None, "empty attribute"))?;
    let tag = match tag_s.parse::<u32>() {
        Ok(t) if tag_s.len() <= 9 && tag_s.bytes().all(|b| b.is_ascii_digit()) => t,
        _ => return Err(broken(None, format!("tag {tag_s:?} is not 1 to 9 digits"))),
    };
    let suite_s = fields
        .next()
        .ok_or_else(|| broken(Some(tag), "no crypto suite"))?;
    let key_params = fields
        .next()
        .ok_or_else(|| broken(Some(tag), "no key parameters"))?;
    let suite = SrtpSuite::from_name(suite_s)
        .ok_or_else(|| SdesError::UnknownSuite(vec![suite_s.chars().take(40).collect()]))?;
    for p in fields {
        session_param(tag, p)?;
    }
    if key_params.contains(';') {
        return Err(SdesError::Unsupported {
            tag,
            detail: "more than one key".into(),
        });
    }
    let info = key_params
        .strip_prefix("inline:")
        .ok_or_else(|| broken(Some(tag), "key method is not inline"))?;
    let mut parts = info.split('|');
    let key_b64 = parts.next().unwrap_or_default();
    let (mut lifetime, mut mki) = (None, None);
    for p in parts {
        if p.contains(':') {
            if mki.is_some() {
                return Err(broken(Some(tag), "two MKIs"));
            }
            mki = Some(parse_mki(tag, p)?);
        } else if lifetime.is_none() && mki.is_none() {
            lifetime = Some(parse_lifetime(tag, p)?);
        } else {
            return Err(broken(Some(tag), "lifetime out of place"));
        }
    }
    let raw = zeroize::Zeroizing::new(
        B64.decode(key_b64)
            .map_err(|_| broken(Some(tag), "inline key is not base64"))?,
    );
    let key = MasterKey::new(suite, &raw).map_err(|e| match e {
        SrtpError::KeyLength { expected, got } => SdesError::KeyLength {
            tag,
            suite,
            expected,
            got,
        },
        other => broken(Some(tag), other.to_string()),
    })?;
    Ok(CryptoAttribute {
        tag,
        suite,
        key,
        mki,
        lifetime,
    })
}

fn session_param(tag: u32, p: &str) -> Result<(), SdesError> {
    let (name, value) = p.split_once('=').unwrap_or((p, ""));
    match name {
        "KDR" if value == "0" => Ok(()),
        "KDR" if value.parse::<u8>().is_ok_and(|v| v <= 24) => Err(SdesError::Unsupported {
            tag,
            detail: format!("key derivation rate KDR={value}"),
        }),
        "KDR" => Err(broken(Some(tag), format!("KDR={value:.8} is not 0 to 24"))),
        // window size hint: informational
        "WSH" if value.parse::<u32>().is_ok_and(|v| v >= 64) => Ok(()),
        "WSH" => Err(broken(Some(tag), "WSH is not a number of at least 64")),
        _ => Err(SdesError::Unsupported {
            tag,
            detail: format!("session parameter {:.24}", name),
        }),
    }
}

/// `2^n` or a decimal number of packets (RFC 4568 section 6.1, at most 2^48 for SRTP).
fn parse_lifetime(tag: u32, s: &str) -> Result<u64, SdesError> {
    let bad = || broken(Some(tag), "lifetime is not 2^n or a number");
    let n = if let Some(exp) = s.strip_prefix("2^") {
        let e: u32 = digits(exp).ok_or_else(bad)?;
        if e > 48 {
            return Err(bad());
        }
        1u64 << e
    } else {
        digits(s).ok_or_else(bad)?
    };
    if n == 0 || n > 1 << 48 {
        return Err(bad());
    }
    Ok(n)
}

/// `value:length`, decimal both, length 1..=128 octets; we take up to `MAX_MKI_LEN`.
fn parse_mki(tag: u32, s: &str) -> Result<Vec<u8>, SdesError> {
    let (v, l) = s.split_once(':').unwrap_or((s, ""));
    let len: usize = digits(l)
        .filter(|n| (1..=128).contains(n))
        .ok_or_else(|| broken(Some(tag), "MKI length is not 1 to 128"))?;
    if len > MAX_MKI_LEN {
        return Err(SdesError::Unsupported {
            tag,
            detail: format!("MKI of {len} octets (at most {MAX_MKI_LEN})"),
        });
    }
    let value: u64 = digits(v).ok_or_else(|| broken(Some(tag), "MKI value is not a number"))?;
    if len < 8 && value >> (8 * len) != 0 {
        return Err(broken(Some(tag), "MKI value does not fit its length"));
    }
    Ok(value.to_be_bytes()[8 - len..].to_vec())
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `a=crypto:` value carrying our key (no lifetime, no MKI).
#[must_use]
pub fn format(tag: u32, key: &MasterKey) -> String {
    format!(
        "{tag} {} inline:{}",
        key.suite().name(),
        B64.encode(key.key_and_salt())
    )
}

/// SDP or log text with every inline key replaced by `***` (for anything that might
/// print a body).
#[must_use]
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("inline:") {
        out.push_str(&rest[..i + 7]);
        out.push_str("***");
        rest = &rest[i + 7..];
        let end = rest
            .find(|c: char| c == '|' || c == ';' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The keys both directions use once SDES has completed. `Debug` shows the suite only.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub tag: u32,
    /// The key we protect with (the one in our SDP).
    pub local: MasterKey,
    /// The peer's key, for what we receive.
    pub remote: MasterKey,
    /// The MKI in the peer's packets, if its key has one.
    pub remote_mki: Option<Vec<u8>>,
}

impl fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrtpKeys(tag {}, {}, ***)", self.tag, self.suite())
    }
}

impl SrtpKeys {
    #[must_use]
    pub fn suite(&self) -> SrtpSuite {
        self.local.suite()
    }

    /// The sending and the receiving context.
    #[must_use]
    pub fn contexts(&self) -> (SrtpContext, SrtpContext) {
        let tx = SrtpContext::new(&self.local);
        let rx = match &self.remote_mki {
            // the length was checked when the attribute was parsed
            Some(mki) => SrtpContext::with_mki(&self.remote, mki)
                .unwrap_or_else(|_| SrtpContext::new(&self.remote)),
            None => SrtpContext::new(&self.remote),
        };
        (tx, rx)
    }
}

/// Answers the `a=crypto` values of an offered media section: the first attribute whose
/// suite is in `allowed` and which is usable wins (RFC 4568 section 7.1.2, the offer's
/// order is its preference). Returns the keys and the `a=crypto:` value of our answer.
/// When none is usable, the error is the most specific one met.
pub fn answer(offered: &[&str], allowed: &[SrtpSuite]) -> Result<(SrtpKeys, String), SdesError> {
    let mut best: Option<SdesError> = None;
    if offered.is_empty() {
        return Err(SdesError::NoCrypto);
    }
    let mut unknown = Vec::new();
    for value in offered.iter().take(MAX_OFFERED) {
        let err = match parse(value) {
            Ok(a) if allowed.contains(&a.suite) => {
                let local = MasterKey::generate(a.suite);
                let line = format(a.tag, &local);
                let keys = SrtpKeys {
                    tag: a.tag,
                    local,
                    remote: a.key,
                    remote_mki: a.mki,
                };
                return Ok((keys, line));
            }
            // a suite we implement but this trunk does not allow counts as unknown here
            Ok(a) => {
                unknown.push(a.suite.name().to_string());
                continue;
            }
            Err(SdesError::UnknownSuite(n)) => {
                unknown.extend(n);
                continue;
            }
            Err(e) => e,
        };
        if best.as_ref().is_none_or(|b| err.rank() > b.rank()) {
            best = Some(err);
        }
    }
    Err(match best {
        Some(e) => e,
        None if !unknown.is_empty() => SdesError::UnknownSuite(unknown),
        None => SdesError::NoCrypto,
    })
}

/// An offer we made: one fresh key per suite, tags 1.., in our preference order. Kept
/// until the answer arrives. `Debug` hides the keys.
#[derive(Clone)]
pub struct SdesOffer {
    keys: Vec<(u32, MasterKey)>,
}

impl fmt::Debug for SdesOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suites: Vec<_> = self.keys.iter().map(|(t, k)| (*t, k.suite())).collect();
        write!(f, "SdesOffer({suites:?}, ***)")
    }
}

impl SdesOffer {
    /// Fresh keys for `suites` (in offer order).
    #[must_use]
    pub fn new(suites: &[SrtpSuite]) -> SdesOffer {
        let keys = suites
            .iter()
            .zip(1u32..)
            .map(|(s, t)| (t, MasterKey::generate(*s)))
            .collect();
        SdesOffer { keys }
    }

    /// A re-offer of the key in use (RFC 4568 section 7.1.4: the session as it is): one
    /// attribute, its tag and our current key.
    #[must_use]
    pub fn current(keys: &SrtpKeys) -> SdesOffer {
        SdesOffer {
            keys: vec![(keys.tag, keys.local.clone())],
        }
    }

    /// The `a=crypto:` values to put in the offer, one per suite.
    #[must_use]
    pub fn attributes(&self) -> Vec<String> {
        self.keys.iter().map(|(t, k)| format(*t, k)).collect()
    }

    /// Reads the answer's `a=crypto` values: exactly one, with a tag we offered and that
    /// tag's suite (RFC 4568 section 7.1.3).
    pub fn accept_answer(&self, answered: &[&str]) -> Result<SrtpKeys, SdesError> {
        let value = match answered {
            [] => return Err(SdesError::NoCrypto),
            [one] => one,
            _ => {
                return Err(SdesError::AnswerMismatch(format!(
                    "{} a=crypto lines, expected one",
                    answered.len()
                )));
            }
        };
        let a = parse(value)?;
        let (_, local) =
            self.keys.iter().find(|(t, _)| *t == a.tag).ok_or_else(|| {
                SdesError::AnswerMismatch(format!("tag {} was not offered", a.tag))
            })?;
        if local.suite() != a.suite {
            return Err(SdesError::AnswerMismatch(format!(
                "tag {} was offered with {}, answered with {}",
                a.tag,
                local.suite(),
                a.suite
            )));
        }
        Ok(SrtpKeys {
            tag: a.tag,
            local: local.clone(),
            remote: a.key,
            remote_mki: a.mki,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::srtp::SUITES;

    // RFC 4568 section 9.2's example key (AES_CM_128_HMAC_SHA1_80, 30 octets).
    const RFC_KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    #[test]
    fn parses_the_rfc_4568_examples() {
        let a = parse(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4"
        ))
        .unwrap();
        assert_eq!(a.tag, 1);
        assert_eq!(a.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(a.lifetime, Some(1 << 20));
        assert_eq!(a.mki, Some(vec![0, 0, 0, 1]));
        assert_eq!(a.key.key_and_salt().len(), 30);
        let b = parse(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}|2^20")).unwrap();
        assert_eq!(
            (b.tag, b.suite, b.mki),
            (2, SrtpSuite::AesCm128HmacSha1_32, None)
        );
        // no lifetime, MKI only; KDR=0 and a window size hint are fine
        let c = parse(&format!(
            "3 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|7:1 KDR=0 WSH=128"
        ))
        .unwrap();
        assert_eq!((c.lifetime, c.mki), (None, Some(vec![7])));
    }

    #[test]
    fn gcm_keys_with_and_without_padding() {
        let k = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
        let line = format(9, &k);
        assert!(line.starts_with("9 AEAD_AES_128_GCM inline:") && line.ends_with("=="));
        assert_eq!(parse(&line).unwrap().key, k);
        assert_eq!(parse(line.trim_end_matches('=')).unwrap().key, k);
    }

    #[test]
    fn format_then_parse_round_trips_every_suite() {
        for suite in SUITES {
            let k = MasterKey::generate(suite);
            let a = parse(&format(42, &k)).unwrap();
            assert_eq!((a.tag, a.suite, &a.key), (42, suite, &k));
            // two generated keys differ (CSPRNG, not a constant)
            assert_ne!(MasterKey::generate(suite), k);
        }
    }

    #[test]
    fn precise_errors() {
        let e = |v: &str| parse(v).unwrap_err().to_string();
        assert_eq!(e(""), "a=crypto is malformed: empty attribute");
        assert_eq!(
            e("x AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            "a=crypto is malformed: tag \"x\" is not 1 to 9 digits"
        );
        assert!(e("1234567890 AES_CM_128_HMAC_SHA1_80 inline:AAAA").contains("1 to 9 digits"));
        assert_eq!(
            e("1 AES_CM_128_HMAC_SHA1_80"),
            "a=crypto tag 1 is malformed: no key parameters"
        );
        assert_eq!(
            e("1 AES_CM_128_HMAC_SHA1_80 key:abc"),
            "a=crypto tag 1 is malformed: key method is not inline"
        );
        assert_eq!(
            e("1 AES_CM_128_HMAC_SHA1_80 inline:!!!!"),
            "a=crypto tag 1 is malformed: inline key is not base64"
        );
        assert_eq!(
            e("1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="),
            "a=crypto tag 1: AES_CM_128_HMAC_SHA1_80 key||salt is 28 octets, expected 30"
        );
        assert!(e("1 F8_128_HMAC_SHA1_80 inline:AAAA").starts_with(
            "no supported crypto suite (offered F8_128_HMAC_SHA1_80; supported AES_CM_128_HMAC_SHA1_80"));
        assert_eq!(
            e(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4 UNENCRYPTED_SRTP"
            )),
            "a=crypto tag 1: session parameter UNENCRYPTED_SRTP not supported"
        );
        assert_eq!(
            e(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} KDR=1")),
            "a=crypto tag 1: key derivation rate KDR=1 not supported"
        );
        assert_eq!(
            e(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:5")),
            "a=crypto tag 1: MKI of 5 octets (at most 4) not supported"
        );
        assert_eq!(
            e(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|256:1")),
            "a=crypto tag 1 is malformed: MKI value does not fit its length"
        );
        assert_eq!(
            e(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^49")),
            "a=crypto tag 1 is malformed: lifetime is not 2^n or a number"
        );
        assert_eq!(
            e(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:1|2^20"
            )),
            "a=crypto tag 1 is malformed: lifetime out of place"
        );
        assert_eq!(
            e(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:1;inline:{RFC_KEY}|2:1"
            )),
            "a=crypto tag 1: more than one key not supported"
        );
        // no error text ever carries the key
        for v in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY} BOGUS"),
            format!("1 AEAD_AES_128_GCM inline:{RFC_KEY}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|zz"),
        ] {
            let err = parse(&v).unwrap_err();
            assert!(!err.to_string().contains("PS1u") && !format!("{err:?}").contains("PS1u"));
        }
    }

    #[test]
    fn the_answer_takes_the_first_supported_attribute_with_our_own_key() {
        let offer_80 = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let offer_gcm = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
        let lines = [
            "1 AES_256_CM_HMAC_SHA1_80 inline:AAAA".to_string(),
            format(2, &offer_gcm),
            format(3, &offer_80),
        ];
        let offered: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (keys, line) = answer(&offered, &SUITES).unwrap();
        assert_eq!((keys.tag, keys.suite()), (2, SrtpSuite::AeadAes128Gcm));
        assert_eq!(keys.remote, offer_gcm);
        assert_ne!(keys.local, offer_gcm, "we answer with our own key");
        let ours = parse(&line).unwrap();
        assert_eq!(
            (ours.tag, ours.suite, &ours.key),
            (2, keys.suite(), &keys.local)
        );
        // a trunk allowing only the AES-CM suites skips GCM
        let (keys, _) = answer(&offered, &[SrtpSuite::AesCm128HmacSha1_80]).unwrap();
        assert_eq!((keys.tag, keys.remote), (3, offer_80));
    }

    #[test]
    fn a_broken_first_attribute_does_not_hide_a_good_second() {
        let good = format(2, &MasterKey::generate(SrtpSuite::AesCm128HmacSha1_32));
        let (keys, _) = answer(&["1 AES_CM_128_HMAC_SHA1_80 inline:@@", &good], &SUITES).unwrap();
        assert_eq!(keys.tag, 2);
    }

    #[test]
    fn when_nothing_works_the_most_specific_error_is_reported() {
        assert_eq!(answer(&[], &SUITES).unwrap_err(), SdesError::NoCrypto);
        let short = "2 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let err = answer(&["1 garbage", short, "3 NULL_HMAC inline:AA"], &SUITES).unwrap_err();
        assert!(
            matches!(
                err,
                SdesError::KeyLength {
                    tag: 2,
                    expected: 30,
                    got: 24,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.rejection().warning_code, 306);
        let err = answer(
            &["1 F8_128_HMAC_SHA1_80 inline:AA", "2 NULL inline:AA"],
            &SUITES,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SdesError::UnknownSuite(vec!["F8_128_HMAC_SHA1_80".into(), "NULL".into()])
        );
        assert_eq!(err.rejection().warning_code, 305);
        assert!(
            err.rejection()
                .warning("roomline")
                .starts_with("305 roomline \"no supported")
        );
        let err = answer(&["1 garbage"], &SUITES).unwrap_err();
        assert!(matches!(err, SdesError::Broken { .. }));
    }

    #[test]
    fn offer_then_answer_gives_matching_contexts_on_both_sides() {
        for suite in SUITES {
            let offer = SdesOffer::new(&[suite, SrtpSuite::AesCm128HmacSha1_80]);
            let attrs = offer.attributes();
            assert_eq!(attrs.len(), 2);
            let offered: Vec<&str> = attrs.iter().map(String::as_str).collect();
            let (theirs, answer_line) = answer(&offered, &SUITES).unwrap();
            let ours = offer.accept_answer(&[&answer_line]).unwrap();
            assert_eq!((ours.tag, ours.suite()), (1, suite));
            assert_eq!(ours.local, theirs.remote);
            assert_eq!(ours.remote, theirs.local);
            let (mut tx, _) = ours.contexts();
            let (_, mut rx) = theirs.contexts();
            let mut buf = [0u8; 64];
            buf[0] = 0x80;
            buf[12..20].copy_from_slice(b"hello!!!");
            let n = tx.protect_rtp(&mut buf, 20).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut buf, n), Ok(20));
            assert_eq!(&buf[12..20], b"hello!!!");
        }
    }

    #[test]
    fn answers_that_do_not_match_the_offer_are_refused() {
        let offer = SdesOffer::new(&[SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm]);
        let k80 = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let kgcm = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
        let err = |a: &[&str]| offer.accept_answer(a).unwrap_err().to_string();
        assert_eq!(err(&[]), "SRTP offered without a=crypto");
        assert!(err(&[&format(3, &k80)]).contains("tag 3 was not offered"));
        assert!(err(&[&format(1, &kgcm)]).contains(
            "tag 1 was offered with AES_CM_128_HMAC_SHA1_80, answered with AEAD_AES_128_GCM"
        ));
        assert!(err(&[&format(1, &k80), &format(2, &kgcm)]).contains("2 a=crypto lines"));
        assert!(offer.accept_answer(&[&format(2, &kgcm)]).is_ok());
    }

    #[test]
    fn a_peer_mki_reaches_the_receiving_context() {
        let k = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let line = format!("{}|2^31|5:2", format(1, &k));
        let (keys, _) = answer(&[&line], &SUITES).unwrap();
        assert_eq!(keys.remote_mki, Some(vec![0, 5]));
        // the peer sends with MKI 0x0005 before the tag
        let mut tx = SrtpContext::new(&k);
        let mut buf = [0u8; 64];
        buf[0] = 0x80;
        let n = tx.protect_rtp(&mut buf, 20).unwrap();
        let mut with = buf[..n - 10].to_vec();
        with.extend_from_slice(&[0, 5]);
        with.extend_from_slice(&buf[n - 10..n]);
        let (_, mut rx) = keys.contexts();
        let len = with.len();
        assert_eq!(rx.unprotect_rtp(&mut with, len), Ok(20));
    }

    #[test]
    fn keys_never_show_in_debug_and_redact_hides_them_in_text() {
        let offer = SdesOffer::new(&SUITES);
        let attrs = offer.attributes();
        let offered: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let (keys, line) = answer(&offered, &SUITES).unwrap();
        let a = parse(&line).unwrap();
        let b64 = line.split("inline:").nth(1).unwrap();
        for d in [format!("{offer:?}"), format!("{keys:?}"), format!("{a:?}")] {
            assert!(!d.contains(&b64[..8]), "{d}");
        }
        let sdp = format!(
            "v=0\r\na=crypto:{}\r\na=crypto:{line}|2^20|1:1\r\n",
            attrs[0]
        );
        let r = redact(&sdp);
        assert!(
            !r.contains(&b64[..8]) && !r.contains(&attrs[0][30..38]),
            "{r}"
        );
        assert!(
            r.contains("inline:***|2^20|1:1\r\n")
                && r.contains("1 AES_CM_128_HMAC_SHA1_80 inline:***\r\n")
        );
    }
}
