//! SRTP on a phone leg: the sending and receiving contexts for the keys SDES agreed,
//! applied at the leg's edge (every datagram out is protected as it is queued, every one
//! in is unprotected before it is parsed), and rekeying. A key that did not change keeps
//! its context (its rollover counter, its replay window: the same key must never encrypt
//! the same packet index twice); a new remote key keeps the old receiving context as a
//! fallback until the first packet under the new one authenticates, since the peer's
//! packets in flight still use the old key.

use crate::media::rtp::is_rtcp;
use crate::media::sdes::SrtpKeys;
use crate::media::srtp::{MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD, SrtpContext, SrtpError, SrtpSuite};

/// The SRTP state of one phone leg. `Debug` shows the suite only.
pub(super) struct Secure {
    keys: SrtpKeys,
    tx: SrtpContext,
    rx: SrtpContext,
    /// The receiving context of the previous remote key, until the new one is in use.
    old_rx: Option<SrtpContext>,
    /// Where received packets are unprotected (the caller's bytes stay untouched).
    buf: Vec<u8>,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secure({}, ***)", self.keys.suite())
    }
}

impl Secure {
    pub(super) fn new(keys: &SrtpKeys) -> Secure {
        let (tx, rx) = keys.contexts();
        Secure {
            keys: keys.clone(),
            tx,
            rx,
            old_rx: None,
            buf: Vec::with_capacity(1500),
        }
    }

    pub(super) fn suite(&self) -> SrtpSuite {
        self.keys.suite()
    }

    /// New keys from a re-INVITE or UPDATE: only what changed gets a new context.
    pub(super) fn rekey(&mut self, keys: &SrtpKeys) {
        let (tx, rx) = keys.contexts();
        if keys.local != self.keys.local {
            self.tx = tx;
        }
        if keys.remote != self.keys.remote || keys.remote_mki != self.keys.remote_mki {
            self.old_rx = Some(std::mem::replace(&mut self.rx, rx));
        }
        self.keys = keys.clone();
    }

    /// Protects an RTP or RTCP datagram (told apart by its bytes) in place.
    pub(super) fn protect(&mut self, bytes: &mut Vec<u8>) -> Result<(), SrtpError> {
        let len = bytes.len();
        let rtcp = is_rtcp(bytes);
        let room = if rtcp {
            MAX_RTCP_OVERHEAD
        } else {
            MAX_RTP_OVERHEAD
        };
        bytes.resize(len + room, 0);
        let n = if rtcp {
            self.tx.protect_rtcp(bytes, len)
        } else {
            self.tx.protect_rtp(bytes, len)
        };
        match n {
            Ok(n) => {
                bytes.truncate(n);
                Ok(())
            }
            Err(e) => {
                bytes.truncate(len);
                Err(e)
            }
        }
    }

    /// Unprotects a received SRTP or SRTCP datagram; the plain packet borrows our buffer.
    pub(super) fn unprotect(&mut self, bytes: &[u8], rtcp: bool) -> Result<&[u8], SrtpError> {
        let first = open(&mut self.rx, &mut self.buf, bytes, rtcp);
        let n = match (first, self.old_rx.as_mut()) {
            (Ok(n), _) => {
                if !rtcp {
                    // the peer sends under its new key: the old one is done
                    self.old_rx = None;
                }
                n
            }
            (Err(e @ (SrtpError::AuthFailed | SrtpError::WrongMki)), Some(old)) => {
                open(old, &mut self.buf, bytes, rtcp).map_err(|_| e)?
            }
            (Err(e), _) => return Err(e),
        };
        Ok(&self.buf[..n])
    }
}

fn open(
    ctx: &mut SrtpContext,
    buf: &mut Vec<u8>,
    bytes: &[u8],
    rtcp: bool,
) -> Result<usize, SrtpError> {
    buf.clear();
    buf.extend_from_slice(bytes);
    if rtcp {
        ctx.unprotect_rtcp(buf, bytes.len())
    } else {
        ctx.unprotect_rtp(buf, bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::srtp::{MasterKey, SUITES};

    fn keys(suite: SrtpSuite) -> (SrtpKeys, SrtpKeys) {
        let a = MasterKey::generate(suite);
        let b = MasterKey::generate(suite);
        let ours = SrtpKeys {
            tag: 1,
            local: a.clone(),
            remote: b.clone(),
            remote_mki: None,
        };
        let theirs = SrtpKeys {
            tag: 1,
            local: b,
            remote: a,
            remote_mki: None,
        };
        (ours, theirs)
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend(std::iter::repeat_n(0xd5, 160));
        p
    }

    fn rtcp_rr() -> Vec<u8> {
        // RR with no report blocks, SSRC 0x01020304
        vec![0x80, 201, 0, 1, 1, 2, 3, 4]
    }

    #[test]
    fn both_directions_in_every_suite_and_tampering_is_refused() {
        for suite in SUITES {
            let (ours, theirs) = keys(suite);
            let (mut a, mut b) = (Secure::new(&ours), Secure::new(&theirs));
            for seq in [1u16, 2, 3] {
                let plain = rtp(seq);
                let mut wire = plain.clone();
                a.protect(&mut wire).unwrap();
                assert_ne!(wire[12..172], plain[12..172], "{suite}: payload encrypted");
                assert_eq!(b.unprotect(&wire, false).unwrap(), &plain[..], "{suite}");
                // the same packet again is a replay
                assert_eq!(b.unprotect(&wire, false), Err(SrtpError::Replayed));
                let mut back = plain.clone();
                b.protect(&mut back).unwrap();
                assert_eq!(a.unprotect(&back, false).unwrap(), &plain[..]);
            }
            let mut report = rtcp_rr();
            a.protect(&mut report).unwrap();
            assert_eq!(b.unprotect(&report, true).unwrap(), &rtcp_rr()[..]);
            let mut forged = rtp(9);
            a.protect(&mut forged).unwrap();
            forged[20] ^= 1;
            assert_eq!(b.unprotect(&forged, false), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn rekey_keeps_unchanged_contexts_and_accepts_the_old_key_in_flight() {
        let (ours, theirs) = keys(SrtpSuite::AesCm128HmacSha1_80);
        let (mut a, mut b) = (Secure::new(&ours), Secure::new(&theirs));
        let mut late = rtp(10);
        b.protect(&mut late).unwrap();
        // the peer re-offers with a new key; our key stays
        let (_, fresh) = keys(SrtpSuite::AesCm128HmacSha1_80);
        let new_ours = SrtpKeys {
            remote: fresh.local.clone(),
            ..ours.clone()
        };
        let new_theirs = SrtpKeys {
            local: fresh.local.clone(),
            ..theirs.clone()
        };
        a.rekey(&new_ours);
        // a packet protected under the old key still opens
        assert_eq!(a.unprotect(&late, false).unwrap(), &rtp(10)[..]);
        let mut b2 = Secure::new(&new_theirs);
        let mut now = rtp(11);
        b2.protect(&mut now).unwrap();
        assert_eq!(a.unprotect(&now, false).unwrap(), &rtp(11)[..]);
        // then the old key is gone
        let mut stale = rtp(12);
        b.protect(&mut stale).unwrap();
        assert_eq!(a.unprotect(&stale, false), Err(SrtpError::AuthFailed));
        // our sending context went on (unchanged key): b still opens our packets in order
        let mut out = rtp(100);
        a.protect(&mut out).unwrap();
        assert_eq!(b.unprotect(&out, false).unwrap(), &rtp(100)[..]);
        assert_eq!(format!("{a:?}"), "Secure(AES_CM_128_HMAC_SHA1_80, ***)");
    }
}
