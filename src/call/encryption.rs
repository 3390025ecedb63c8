//! A call's SRTP policy on the wire (`media_encryption`, LiveKit's names), pure: what we
//! offer, which offered media section we take, how we read the answer to our offer.
//!
//! - `disable`: we offer RTP/AVP; an RTP/SAVP section is refused (488 when it is all
//!   there is).
//! - `allow`: we offer RTP/SAVP with `a=crypto` (as LiveKit's service does) and take a
//!   plain answer; as answerer we take whichever the offerer put first.
//! - `require`: we offer RTP/SAVP; a plain section is refused, a plain answer fails the
//!   call. Plain RTP is never sent.
//!
//! A call whose media is SRTP never drops to plain RTP in a re-INVITE (refused with 488,
//! whatever the policy); a re-offer with the key in use keeps it (no rekey), a new key
//! rekeys both directions (RFC 4568 section 7.1.4). Keys stay inside `SrtpKeys`.

use crate::config::MediaEncryption;
use crate::media::sdes::{self, SdesOffer, SrtpKeys};
use crate::media::srtp::{SUITES, SrtpSuite};
use crate::sip::sdp::{MediaSection, Rejection, is_rtp_savp};

/// What we offer: fresh keys for every suite unless the policy is `disable`.
pub fn offer(policy: MediaEncryption) -> Option<SdesOffer> {
    (policy != MediaEncryption::Disable).then(|| SdesOffer::new(&SUITES))
}

fn refuse(text: &str) -> Rejection {
    Rejection {
        warning_code: 305,
        text: format!("Incompatible media format: {text}"),
    }
}

/// Decides about one offered audio section: `Ok(None)` plain RTP, `Ok(Some((keys,
/// value)))` SRTP with these keys and our `a=crypto` value, `Err` the 488's Warning.
/// `current` is the call's SRTP keys, if its media is SRTP already.
pub fn answer_section(
    policy: MediaEncryption,
    current: Option<&SrtpKeys>,
    m: &MediaSection,
) -> Result<Option<(SrtpKeys, String)>, Rejection> {
    if !is_rtp_savp(&m.proto) {
        if current.is_some() {
            return Err(refuse(
                "the call's media is SRTP and cannot fall back to plain RTP",
            ));
        }
        if policy == MediaEncryption::Require {
            return Err(refuse(
                "plain RTP offered, this trunk requires SRTP (RTP/SAVP with a=crypto)",
            ));
        }
        return Ok(None);
    }
    if policy == MediaEncryption::Disable && current.is_none() {
        return Err(refuse(
            "SRTP (RTP/SAVP) offered, this trunk's media_encryption is disable",
        ));
    }
    let offered = m.crypto.values();
    // the key in use offered again: keep both directions as they are
    if let Some(k) = current
        && offered.iter().any(|v| {
            sdes::parse(v)
                .is_ok_and(|a| a.tag == k.tag && a.key == k.remote && a.mki == k.remote_mki)
        })
    {
        return Ok(Some((k.clone(), sdes::format(k.tag, &k.local))));
    }
    let (keys, value) = sdes::answer(&offered, &SUITES).map_err(|e| e.rejection())?;
    Ok(Some((keys, value)))
}

/// Reads the answer's accepted section against our offer (`None`: we offered plain).
/// `Ok(None)`: plain RTP.
pub fn read_answer(
    policy: MediaEncryption,
    offered: Option<&SdesOffer>,
    m: &MediaSection,
) -> Result<Option<SrtpKeys>, Rejection> {
    let secure = is_rtp_savp(&m.proto) || !m.crypto.0.is_empty();
    match (secure, offered) {
        (false, _) if policy == MediaEncryption::Require => {
            Err(refuse("the answer has plain RTP, this call requires SRTP"))
        }
        (false, _) => Ok(None),
        (true, None) => Err(refuse("the answer has SRTP, which we did not offer")),
        (true, Some(o)) => o
            .accept_answer(&m.crypto.values())
            .map(Some)
            .map_err(|e| e.rejection()),
    }
}

/// The label of a call's media encryption for metrics, health and the summary line.
pub fn label(suite: Option<SrtpSuite>) -> &'static str {
    suite.map_or("none", SrtpSuite::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::sdp;

    fn section(proto: &str, crypto: &[String]) -> MediaSection {
        let mut text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 {proto} 0\r\n"
        );
        for c in crypto {
            text.push_str(&format!("a=crypto:{c}\r\n"));
        }
        sdp::parse(&text).unwrap().media.remove(0)
    }

    fn their_offer() -> Vec<String> {
        SdesOffer::new(&SUITES).attributes()
    }

    #[test]
    fn the_policy_matrix_as_answerer() {
        use MediaEncryption::*;
        let plain = section("RTP/AVP", &[]);
        let srtp = section("RTP/SAVP", &their_offer());
        assert_eq!(answer_section(Disable, None, &plain), Ok(None));
        assert_eq!(answer_section(Allow, None, &plain), Ok(None));
        let r = answer_section(Require, None, &plain).unwrap_err();
        assert!(r.text.contains("requires SRTP"), "{}", r.text);
        let r = answer_section(Disable, None, &srtp).unwrap_err();
        assert!(r.text.contains("disable"), "{}", r.text);
        for p in [Allow, Require] {
            let (k, v) = answer_section(p, None, &srtp).unwrap().unwrap();
            // the offerer's first suite, its tag, our own fresh key
            assert_eq!(k.suite(), SrtpSuite::AesCm128HmacSha1_80);
            assert!(v.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"));
        }
    }

    #[test]
    fn broken_missing_unknown_and_short_keys_are_refused_with_the_reason() {
        let cases = [
            (vec![], "without a=crypto"),
            (vec!["1 AES_CM_128_HMAC_SHA1_80".to_string()], "malformed"),
            (
                vec![
                    "1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw".into(),
                ],
                "no supported crypto suite",
            ),
            (
                vec!["1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".into()],
                "expected 30",
            ),
        ];
        for (crypto, why) in cases {
            let m = section("RTP/SAVP", &crypto);
            let r = answer_section(MediaEncryption::Require, None, &m).unwrap_err();
            assert!(r.text.contains(why), "{why}: {}", r.text);
            assert!(
                !r.text.contains("inline:"),
                "no key in a Warning: {}",
                r.text
            );
        }
    }

    #[test]
    fn re_offers_keep_or_rekey_and_never_drop_to_plain() {
        let theirs = their_offer();
        let m = section("RTP/SAVP", &theirs);
        let (keys, value) = answer_section(MediaEncryption::Allow, None, &m)
            .unwrap()
            .unwrap();
        // the same offer again: same keys, same answer
        let (again, v2) = answer_section(MediaEncryption::Allow, Some(&keys), &m)
            .unwrap()
            .unwrap();
        assert_eq!((again, v2), (keys.clone(), value));
        // new keys from the peer: both directions change
        let m2 = section("RTP/SAVP", &their_offer());
        let (new, _) = answer_section(MediaEncryption::Allow, Some(&keys), &m2)
            .unwrap()
            .unwrap();
        assert!(new.remote != keys.remote && new.local != keys.local);
        // plain offered on an SRTP call: refused even under allow
        let plain = section("RTP/AVP", &[]);
        assert!(answer_section(MediaEncryption::Allow, Some(&keys), &plain).is_err());
        // and an SRTP re-offer on a call whose trunk is `disable` cannot happen, but a
        // call that is SRTP keeps its keys whatever the policy says
        assert!(answer_section(MediaEncryption::Disable, Some(&keys), &m).is_ok());
    }

    #[test]
    fn reading_the_answer_to_our_offer() {
        use MediaEncryption::*;
        let ours = offer(Allow).unwrap();
        assert!(offer(Disable).is_none());
        // the peer answers as our own answerer would
        let m = section("RTP/SAVP", &ours.attributes());
        let (theirs, value) = sdes::answer(&m.crypto.values(), &SUITES).unwrap();
        let answer = section("RTP/SAVP", &[value]);
        let k = read_answer(Allow, Some(&ours), &answer).unwrap().unwrap();
        assert_eq!(
            (k.local.clone(), k.remote.clone()),
            (theirs.remote, theirs.local)
        );
        let plain = section("RTP/AVP", &[]);
        assert_eq!(read_answer(Allow, Some(&ours), &plain), Ok(None));
        assert!(read_answer(Require, Some(&ours), &plain).is_err());
        assert!(read_answer(Disable, None, &answer).is_err());
        let wrong_tag = section(
            "RTP/SAVP",
            &["9 AES_CM_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw".into()],
        );
        assert!(read_answer(Require, Some(&ours), &wrong_tag).is_err());
        assert_eq!(label(None), "none");
        assert_eq!(label(Some(k.suite())), "AES_CM_128_HMAC_SHA1_80");
    }
}
