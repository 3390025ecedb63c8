//! SRTP and SRTCP (RFC 3711) with the suites SDES negotiates: AES_CM_128_HMAC_SHA1_80,
//! AES_CM_128_HMAC_SHA1_32 (RFC 4568 section 6.2) and AEAD_AES_128_GCM (RFC 7714). Sans-IO
//! and in place: a packet is protected or unprotected inside the caller's buffer, nothing is
//! allocated per packet. The cipher primitives (AES-CTR, AES-GCM, HMAC-SHA1, constant-time
//! compare, the CSPRNG) are aws-lc-rs'; this module owns only the protocol: key derivation
//! (RFC 3711 section 4.3 with a key derivation rate of 0), the IV and nonce layouts, the
//! packet index with ROC and sequence rollover (appendix A), the bounded replay windows,
//! the SRTCP index and E bit, and the per-SSRC state (a bounded table). Keys never appear in
//! `Debug` output and are wiped when dropped.

use std::fmt;

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use zeroize::{Zeroize, Zeroizing};

/// The suites we speak, in the order we offer them: the one every SDES peer has first.
pub const SUITES: [SrtpSuite; 3] = [
    SrtpSuite::AesCm128HmacSha1_80,
    SrtpSuite::AeadAes128Gcm,
    SrtpSuite::AesCm128HmacSha1_32,
];

/// Largest master key plus master salt of any suite (16 + 14 octets).
pub const MAX_MASTER_LEN: usize = 30;
/// Largest number of octets protecting adds to an RTP packet (the GCM tag).
pub const MAX_RTP_OVERHEAD: usize = 16;
/// Largest number of octets protecting adds to an RTCP packet (GCM tag + E/index).
pub const MAX_RTCP_OVERHEAD: usize = 20;
/// Largest MKI we accept from a peer (RFC 4568 allows 1..=128 octets; 4 is plenty).
pub const MAX_MKI_LEN: usize = 4;
/// Sources (SSRCs) one context tracks; the least recently used is forgotten beyond this.
pub const MAX_STREAMS: usize = 16;
/// Replay window width in packets (RFC 3711 section 3.3.2 asks for at least 64).
pub const REPLAY_WINDOW: u64 = 128;

const RTP_HEADER_MIN: usize = 12;
const RTCP_HEADER: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_E_BIT: u32 = 0x8000_0000;
const SRTCP_INDEX_MAX: u32 = 0x7fff_ffff;
const GCM_TAG: usize = 16;

// RFC 3711 section 4.3.2 key derivation labels.
const LABEL_RTP_ENC: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_ENC: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// An SRTP crypto suite (RFC 4568 section 6.2 names, RFC 7714 section 14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
}

impl SrtpSuite {
    /// The name in `a=crypto` and in logs and metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite called `name` in `a=crypto` (names are case-sensitive, RFC 4568 9.2).
    #[must_use]
    pub fn from_name(name: &str) -> Option<SrtpSuite> {
        SUITES.into_iter().find(|s| s.name() == name)
    }

    /// Master key length in octets.
    #[must_use]
    pub fn master_key_len(self) -> usize {
        16
    }

    /// Master salt length in octets: 112 bits for AES-CM, 96 for GCM (RFC 7714 section 12).
    #[must_use]
    pub fn master_salt_len(self) -> usize {
        match self {
            SrtpSuite::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    /// Authentication tag appended to each SRTP packet.
    #[must_use]
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AeadAes128Gcm => GCM_TAG,
        }
    }

    /// Authentication tag of each SRTCP packet (80 bits for both AES-CM suites, RFC 4568
    /// section 6.2.2).
    #[must_use]
    pub fn rtcp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AeadAes128Gcm => GCM_TAG,
            _ => 10,
        }
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong with a key or a packet. No variant carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Master key||salt of the wrong length for the suite.
    KeyLength { expected: usize, got: usize },
    /// An MKI longer than we accept.
    MkiLength(usize),
    /// Not an RTP/RTCP packet, or shorter than its header and tag.
    Malformed,
    /// The caller's buffer has no room for the tag.
    BufferTooSmall,
    /// The tag does not match (forged, corrupted, or the wrong key).
    AuthFailed,
    /// The MKI in the packet is not the one negotiated.
    WrongMki,
    /// The packet index was seen before.
    Replayed,
    /// The packet index is older than the replay window.
    TooOld,
    /// 2^31 SRTCP packets sent under one key: rekey.
    IndexExhausted,
}

impl fmt::Display for SrtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SrtpError::KeyLength { expected, got } => {
                write!(
                    f,
                    "master key and salt are {got} octets, the suite needs {expected}"
                )
            }
            SrtpError::MkiLength(n) => {
                write!(f, "MKI of {n} octets, at most {MAX_MKI_LEN} are supported")
            }
            SrtpError::Malformed => f.write_str("not an RTP/RTCP packet or too short"),
            SrtpError::BufferTooSmall => f.write_str("no room in the buffer for the tag"),
            SrtpError::AuthFailed => f.write_str("authentication failed"),
            SrtpError::WrongMki => f.write_str("unknown MKI"),
            SrtpError::Replayed => f.write_str("replayed packet"),
            SrtpError::TooOld => f.write_str("packet older than the replay window"),
            SrtpError::IndexExhausted => f.write_str("SRTCP index exhausted, rekey needed"),
        }
    }
}

impl std::error::Error for SrtpError {}

/// One side's master key and master salt for a suite (the `inline:` key of SDES). Wiped on
/// drop; `Debug` shows the suite only.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    suite: SrtpSuite,
    bytes: [u8; MAX_MASTER_LEN],
}

impl MasterKey {
    /// A key from `key || salt` as SDES carries it.
    pub fn new(suite: SrtpSuite, key_and_salt: &[u8]) -> Result<MasterKey, SrtpError> {
        let expected = suite.master_key_len() + suite.master_salt_len();
        if key_and_salt.len() != expected {
            return Err(SrtpError::KeyLength {
                expected,
                got: key_and_salt.len(),
            });
        }
        let mut bytes = [0u8; MAX_MASTER_LEN];
        bytes[..expected].copy_from_slice(key_and_salt);
        Ok(MasterKey { suite, bytes })
    }

    /// A fresh random key from the system CSPRNG.
    ///
    /// # Panics
    /// If the operating system's random source fails (nothing safe can go on then).
    #[must_use]
    pub fn generate(suite: SrtpSuite) -> MasterKey {
        let mut bytes = [0u8; MAX_MASTER_LEN];
        let len = suite.master_key_len() + suite.master_salt_len();
        aws_lc_rs::rand::fill(&mut bytes[..len]).expect("system random source");
        MasterKey { suite, bytes }
    }

    #[must_use]
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// `key || salt`, for the SDES `inline:` parameter.
    #[must_use]
    pub fn key_and_salt(&self) -> &[u8] {
        &self.bytes[..self.suite.master_key_len() + self.suite.master_salt_len()]
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.suite.master_key_len()]
    }

    /// The master salt, right-padded with zeros to the 112 bits of the AES-CM PRF input
    /// (a 96-bit GCM salt is padded this way: RFC 7714 section 11, as libsrtp does).
    fn prf_salt(&self) -> [u8; 14] {
        let mut s = [0u8; 14];
        let k = self.suite.master_key_len();
        let n = self.suite.master_salt_len();
        s[..n].copy_from_slice(&self.bytes[k..k + n]);
        s
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, ***)", self.suite)
    }
}

/// The AES-CM PRF of RFC 3711 section 4.3.3 with key_derivation_rate 0: the keystream of
/// AES-CM under the master key with IV = (master salt XOR label << 48) * 2^16, `out.len()`
/// octets of it.
fn derive(master: &MasterKey, label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&master.prf_salt());
    // key_id = label || r (48 bits, 0), right-aligned against the 112-bit salt
    iv[7] ^= label;
    out.fill(0);
    let aes = ctr_key(master.key());
    aes_ctr(&aes, iv, out);
    iv.zeroize();
}

fn ctr_key(key: &[u8]) -> EncryptingKey {
    let unbound = UnboundCipherKey::new(&AES_128, key).expect("a 128-bit AES key");
    EncryptingKey::ctr(unbound).expect("AES-CTR")
}

/// XORs the AES counter-mode keystream starting at `iv` into `data` (encrypts or decrypts).
/// SRTP's counter is the low 16 bits of the IV, which start at zero, so the 128-bit
/// increment of AES-CTR is the same as SRTP's for any packet under 2^16 blocks.
fn aes_ctr(key: &EncryptingKey, iv: [u8; 16], data: &mut [u8]) {
    key.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .expect("AES-CTR with a 128-bit IV");
}

/// Session keys of one packet kind (RTP or RTCP) for an AES-CM suite.
struct CmKeys {
    aes: EncryptingKey,
    salt: [u8; 14],
    auth: hmac::Key,
}

impl CmKeys {
    fn derive(master: &MasterKey, enc: u8, auth: u8, salt: u8) -> CmKeys {
        let mut k = Zeroizing::new([0u8; 16]);
        derive(master, enc, &mut k[..]);
        let mut a = Zeroizing::new([0u8; 20]);
        derive(master, auth, &mut a[..]);
        let mut s = [0u8; 14];
        derive(master, salt, &mut s);
        CmKeys {
            aes: ctr_key(&k[..]),
            salt: s,
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &a[..]),
        }
    }

    /// RFC 3711 section 4.1.1: IV = (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *d ^= s;
        }
        for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *d ^= s;
        }
        iv
    }

    /// The full HMAC-SHA1 of `data || trailer` (trailer: the ROC for SRTP, nothing for
    /// SRTCP whose E/index is inside `data`).
    fn mac(&self, data: &[u8], trailer: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.auth);
        ctx.update(data);
        ctx.update(trailer);
        ctx.sign()
    }
}

/// Session key and salt of one packet kind for AEAD_AES_128_GCM.
struct GcmKeys {
    aead: LessSafeKey,
    salt: [u8; 12],
}

impl GcmKeys {
    fn derive(master: &MasterKey, enc: u8, salt: u8) -> GcmKeys {
        let mut k = Zeroizing::new([0u8; 16]);
        derive(master, enc, &mut k[..]);
        let mut s = [0u8; 12];
        derive(master, salt, &mut s);
        let unbound = UnboundKey::new(&AES_128_GCM, &k[..]).expect("a 128-bit AES-GCM key");
        GcmKeys {
            aead: LessSafeKey::new(unbound),
            salt: s,
        }
    }

    /// RFC 7714 sections 8.1 and 9.1: `00 00 || SSRC || word || low` XOR salt, where
    /// `word || low` is ROC || SEQ for SRTP and `00 00 00 00 || 0 || SRTCP index` for SRTCP.
    fn nonce(&self, ssrc: u32, word: u32, low: &[u8]) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&word.to_be_bytes());
        iv[12 - low.len()..].copy_from_slice(low);
        for (d, s) in iv.iter_mut().zip(self.salt) {
            *d ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }
}

// One per context, made once per call leg: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Transform {
    Cm {
        rtp: CmKeys,
        rtcp: CmKeys,
        rtp_tag: usize,
    },
    Gcm {
        rtp: GcmKeys,
        rtcp: GcmKeys,
    },
}

/// A sliding window over packet indices: the highest seen and a bitmap of the
/// `REPLAY_WINDOW` indices at and below it (bit i = highest - i).
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    bits: u128,
}

impl ReplayWindow {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let age = self.highest - index;
        if age >= REPLAY_WINDOW {
            Err(SrtpError::TooOld)
        } else if self.bits & (1u128 << age) != 0 {
            Err(SrtpError::Replayed)
        } else {
            Ok(())
        }
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.highest = index;
            self.bits |= 1;
        } else {
            self.bits |= 1u128 << (self.highest - index);
        }
    }

    fn starting_at(index: u64) -> ReplayWindow {
        ReplayWindow {
            highest: index,
            bits: 1,
        }
    }
}

/// RTP index state of one source: ROC and the highest sequence number s_l (RFC 3711
/// section 3.3.1), with the replay window over the 48-bit index.
#[derive(Debug, Clone, Copy)]
struct RtpState {
    roc: u32,
    s_l: u16,
    replay: ReplayWindow,
}

impl RtpState {
    /// Appendix A: the index of `seq`, taking a wrap forward (ROC + 1) or a late packet
    /// from before the last wrap (ROC - 1) into account. `None` before index 0.
    fn estimate(&self, seq: u16) -> Option<u64> {
        let roc = i64::from(self.roc);
        let v = if self.s_l < 0x8000 {
            if i64::from(seq) - i64::from(self.s_l) > 0x8000 {
                roc - 1
            } else {
                roc
            }
        } else if i64::from(self.s_l) - 0x8000 > i64::from(seq) {
            roc + 1
        } else {
            roc
        };
        if !(0..=i64::from(u32::MAX)).contains(&v) {
            return None;
        }
        Some(((v as u64) << 16) | u64::from(seq))
    }

    /// Appendix A update after a packet with this index was authenticated.
    fn update(&mut self, index: u64) {
        let roc = (index >> 16) as u32;
        let seq = index as u16;
        if roc > self.roc || (roc == self.roc && seq > self.s_l) {
            self.roc = roc;
            self.s_l = seq;
        }
        self.replay.accept(index);
    }

    fn first(index: u64) -> RtpState {
        RtpState {
            roc: (index >> 16) as u32,
            s_l: index as u16,
            replay: ReplayWindow::starting_at(index),
        }
    }
}

/// Everything a context remembers about one SSRC.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    ssrc: u32,
    last_used: u64,
    rtp: Option<RtpState>,
    /// Sending: the next SRTCP index. Receiving: unused.
    rtcp_next: u32,
    rtcp_replay: Option<ReplayWindow>,
}

/// The per-SSRC table, bounded at `MAX_STREAMS`, allocated once when the context is made.
struct Streams {
    entries: Vec<Stream>,
    clock: u64,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            entries: Vec::with_capacity(MAX_STREAMS),
            clock: 0,
        }
    }

    fn get(&self, ssrc: u32) -> Option<&Stream> {
        self.entries.iter().find(|s| s.ssrc == ssrc)
    }

    /// The entry of `ssrc`, created (forgetting the least recently used source when the
    /// table is full) if it does not exist. Only called once a packet is authenticated, or
    /// for our own outgoing packets, so a forged SSRC cannot push real sources out.
    fn entry(&mut self, ssrc: u32) -> &mut Stream {
        self.clock += 1;
        let clock = self.clock;
        let i = match self.entries.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                let fresh = Stream {
                    ssrc,
                    ..Stream::default()
                };
                if self.entries.len() < MAX_STREAMS {
                    self.entries.push(fresh);
                    self.entries.len() - 1
                } else {
                    let (i, _) = self
                        .entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_used)
                        .expect("a full table is not empty");
                    self.entries[i] = fresh;
                    i
                }
            }
        };
        let s = &mut self.entries[i];
        s.last_used = clock;
        s
    }
}

/// One direction's SRTP/SRTCP crypto context: our key for what we send, or the peer's key
/// for what we receive (use one of each per call). Holds the session keys derived from the
/// master key and the per-SSRC index and replay state.
pub struct SrtpContext {
    suite: SrtpSuite,
    transform: Transform,
    streams: Streams,
    mki: Option<([u8; MAX_MKI_LEN], usize)>,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("streams", &self.streams.entries.len())
            .finish_non_exhaustive()
    }
}

/// Length of the RTP header (fixed part, CSRCs, extension) of `p`, checked against it.
fn rtp_header_len(p: &[u8]) -> Result<usize, SrtpError> {
    if p.len() < RTP_HEADER_MIN || p[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER_MIN + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        if p.len() < len + 4 {
            return Err(SrtpError::Malformed);
        }
        let words = usize::from(u16::from_be_bytes([p[len + 2], p[len + 3]]));
        len += 4 + 4 * words;
    }
    if len > p.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

fn be32(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

impl SrtpContext {
    /// A context for `master` (key derivation happens here, once).
    #[must_use]
    pub fn new(master: &MasterKey) -> SrtpContext {
        let transform = match master.suite {
            SrtpSuite::AeadAes128Gcm => Transform::Gcm {
                rtp: GcmKeys::derive(master, LABEL_RTP_ENC, LABEL_RTP_SALT),
                rtcp: GcmKeys::derive(master, LABEL_RTCP_ENC, LABEL_RTCP_SALT),
            },
            suite => Transform::Cm {
                rtp: CmKeys::derive(master, LABEL_RTP_ENC, LABEL_RTP_AUTH, LABEL_RTP_SALT),
                rtcp: CmKeys::derive(master, LABEL_RTCP_ENC, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
                rtp_tag: suite.rtp_tag_len(),
            },
        };
        SrtpContext {
            suite: master.suite,
            transform,
            streams: Streams::new(),
            mki: None,
        }
    }

    /// A receiving context whose peer puts this MKI in every packet (RFC 3711 section 3.1);
    /// unprotecting checks and strips it. We never send an MKI ourselves.
    pub fn with_mki(master: &MasterKey, mki: &[u8]) -> Result<SrtpContext, SrtpError> {
        if mki.is_empty() || mki.len() > MAX_MKI_LEN {
            return Err(SrtpError::MkiLength(mki.len()));
        }
        let mut ctx = SrtpContext::new(master);
        let mut m = [0u8; MAX_MKI_LEN];
        m[..mki.len()].copy_from_slice(mki);
        ctx.mki = Some((m, mki.len()));
        Ok(ctx)
    }

    #[must_use]
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    fn mki_len(&self) -> usize {
        self.mki.map_or(0, |(_, n)| n)
    }

    fn check_mki(&self, field: &[u8]) -> Result<(), SrtpError> {
        match self.mki {
            Some((m, n)) if m[..n] != *field => Err(SrtpError::WrongMki),
            _ => Ok(()),
        }
    }

    /// Protects the RTP packet in `buf[..len]` in place: encrypts the payload and appends
    /// the tag. `buf` needs `rtp_tag_len()` octets of room after the packet. Returns the
    /// SRTP packet's length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let hdr = rtp_header_len(buf.get(..len).ok_or(SrtpError::Malformed)?)?;
        let tag_len = self.suite.rtp_tag_len();
        if buf.len() < len + tag_len {
            return Err(SrtpError::BufferTooSmall);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(&buf[8..]);
        let stream = self.streams.entry(ssrc);
        let index = match stream.rtp {
            Some(state) => state.estimate(seq).ok_or(SrtpError::TooOld)?,
            None => u64::from(seq),
        };
        match &mut stream.rtp {
            Some(state) => state.update(index),
            None => stream.rtp = Some(RtpState::first(index)),
        }
        let roc = (index >> 16) as u32;
        match &self.transform {
            Transform::Cm { rtp, rtp_tag, .. } => {
                aes_ctr(&rtp.aes, rtp.iv(ssrc, index), &mut buf[hdr..len]);
                let tag = rtp.mac(&buf[..len], &roc.to_be_bytes());
                buf[len..len + rtp_tag].copy_from_slice(&tag.as_ref()[..*rtp_tag]);
            }
            Transform::Gcm { rtp, .. } => {
                let nonce = rtp.nonce(ssrc, roc, &seq.to_be_bytes());
                let (aad, payload) = buf[..len].split_at_mut(hdr);
                let tag = rtp
                    .aead
                    .seal_in_place_separate_tag(nonce, Aad::from(&*aad), payload)
                    .map_err(|_| SrtpError::Malformed)?;
                buf[len..len + GCM_TAG].copy_from_slice(tag.as_ref());
            }
        }
        Ok(len + tag_len)
    }

    /// Unprotects the SRTP packet in `buf[..len]` in place: checks replay and the tag,
    /// decrypts the payload. Returns the RTP packet's length. A packet that fails leaves
    /// the context as it was.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::Malformed)?;
        let hdr = rtp_header_len(packet)?;
        let tag_len = self.suite.rtp_tag_len();
        let mki_len = self.mki_len();
        if len < hdr + tag_len + mki_len {
            return Err(SrtpError::Malformed);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(&buf[8..]);
        let known = self.streams.get(ssrc).and_then(|s| s.rtp);
        let index = match known {
            Some(state) => {
                let index = state.estimate(seq).ok_or(SrtpError::TooOld)?;
                state.replay.check(index)?;
                index
            }
            None => u64::from(seq),
        };
        let roc = (index >> 16) as u32;
        let plain_len = match &self.transform {
            Transform::Cm { rtp, rtp_tag, .. } => {
                let end = len - rtp_tag - mki_len;
                let tag = rtp.mac(&buf[..end], &roc.to_be_bytes());
                verify_slices_are_equal(&tag.as_ref()[..*rtp_tag], &buf[len - rtp_tag..len])
                    .map_err(|_| SrtpError::AuthFailed)?;
                self.check_mki(&buf[end..end + mki_len])?;
                aes_ctr(&rtp.aes, rtp.iv(ssrc, index), &mut buf[hdr..end]);
                end
            }
            Transform::Gcm { rtp, .. } => {
                let end = len - mki_len;
                self.check_mki(&buf[end..len])?;
                let nonce = rtp.nonce(ssrc, roc, &seq.to_be_bytes());
                let (aad, rest) = buf[..end].split_at_mut(hdr);
                rtp.aead
                    .open_in_place(nonce, Aad::from(&*aad), rest)
                    .map_err(|_| SrtpError::AuthFailed)?;
                end - GCM_TAG
            }
        };
        let stream = self.streams.entry(ssrc);
        match &mut stream.rtp {
            Some(state) => state.update(index),
            None => stream.rtp = Some(RtpState::first(index)),
        }
        Ok(plain_len)
    }

    /// Protects the compound RTCP packet in `buf[..len]` in place: encrypts all but the
    /// first 8 octets, appends E=1 and the SRTCP index, then the tag. `buf` needs
    /// `MAX_RTCP_OVERHEAD` octets of room. Returns the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < RTCP_HEADER || buf.len() < len || buf[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let total = len + SRTCP_INDEX_LEN + self.suite.rtcp_tag_len();
        if buf.len() < total {
            return Err(SrtpError::BufferTooSmall);
        }
        let ssrc = be32(&buf[4..]);
        let stream = self.streams.entry(ssrc);
        let index = stream.rtcp_next;
        if index > SRTCP_INDEX_MAX {
            return Err(SrtpError::IndexExhausted);
        }
        stream.rtcp_next += 1;
        let trailer = (SRTCP_E_BIT | index).to_be_bytes();
        match &self.transform {
            Transform::Cm { rtcp, .. } => {
                aes_ctr(&rtcp.aes, rtcp.iv(ssrc, u64::from(index)), &mut buf[8..len]);
                buf[len..len + 4].copy_from_slice(&trailer);
                let tag = rtcp.mac(&buf[..len + 4], &[]);
                let t = self.suite.rtcp_tag_len();
                buf[len + 4..len + 4 + t].copy_from_slice(&tag.as_ref()[..t]);
            }
            Transform::Gcm { rtcp, .. } => {
                let nonce = rtcp.nonce(ssrc, 0, &index.to_be_bytes());
                let mut aad = [0u8; RTCP_HEADER + SRTCP_INDEX_LEN];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&trailer);
                let tag = rtcp
                    .aead
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut buf[8..len])
                    .map_err(|_| SrtpError::Malformed)?;
                buf[len..len + GCM_TAG].copy_from_slice(tag.as_ref());
                buf[len + GCM_TAG..len + GCM_TAG + 4].copy_from_slice(&trailer);
            }
        }
        Ok(total)
    }

    /// Unprotects the SRTCP packet in `buf[..len]` in place (E=1 encrypted, or E=0
    /// authenticated only). Returns the RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtcp_tag_len();
        let mki_len = self.mki_len();
        if len < RTCP_HEADER + SRTCP_INDEX_LEN + tag_len + mki_len
            || buf.len() < len
            || buf[0] >> 6 != 2
        {
            return Err(SrtpError::Malformed);
        }
        let ssrc = be32(&buf[4..]);
        let plain_len = match &self.transform {
            Transform::Cm { rtcp, .. } => {
                // header | payload | E+index | MKI | tag
                let auth_end = len - tag_len - mki_len;
                let payload_end = auth_end - SRTCP_INDEX_LEN;
                let word = be32(&buf[payload_end..]);
                let index = word & SRTCP_INDEX_MAX;
                self.check_rtcp_replay(ssrc, index)?;
                let tag = rtcp.mac(&buf[..auth_end], &[]);
                verify_slices_are_equal(&tag.as_ref()[..tag_len], &buf[len - tag_len..len])
                    .map_err(|_| SrtpError::AuthFailed)?;
                self.check_mki(&buf[auth_end..auth_end + mki_len])?;
                if word & SRTCP_E_BIT != 0 {
                    aes_ctr(
                        &rtcp.aes,
                        rtcp.iv(ssrc, u64::from(index)),
                        &mut buf[8..payload_end],
                    );
                }
                self.accept_rtcp(ssrc, index);
                payload_end
            }
            Transform::Gcm { rtcp, .. } => {
                // header | payload (ciphertext) | tag | E+index | MKI
                let trailer_at = len - mki_len - SRTCP_INDEX_LEN;
                let payload_end = trailer_at - GCM_TAG;
                let word = be32(&buf[trailer_at..]);
                let index = word & SRTCP_INDEX_MAX;
                self.check_rtcp_replay(ssrc, index)?;
                self.check_mki(&buf[len - mki_len..len])?;
                let nonce = rtcp.nonce(ssrc, 0, &index.to_be_bytes());
                let trailer = word.to_be_bytes();
                if word & SRTCP_E_BIT != 0 {
                    let mut aad = [0u8; RTCP_HEADER + SRTCP_INDEX_LEN];
                    aad[..8].copy_from_slice(&buf[..8]);
                    aad[8..].copy_from_slice(&trailer);
                    rtcp.aead
                        .open_in_place(nonce, Aad::from(aad), &mut buf[8..trailer_at])
                        .map_err(|_| SrtpError::AuthFailed)?;
                } else {
                    // Unencrypted: the whole packet and the E+index word are the AAD
                    // (RFC 7714 section 9.2). Move the word next to the payload so the
                    // AAD is one slice; the tag is kept aside.
                    let mut tag = [0u8; GCM_TAG];
                    tag.copy_from_slice(&buf[payload_end..trailer_at]);
                    buf[payload_end..payload_end + 4].copy_from_slice(&trailer);
                    let opened = rtcp.aead.open_in_place_separate_tag(
                        nonce,
                        Aad::from(&buf[..payload_end + 4]),
                        &tag,
                        &mut [],
                    );
                    // put the packet back as it came if it fails
                    if opened.is_err() {
                        buf[payload_end..trailer_at].copy_from_slice(&tag);
                        return Err(SrtpError::AuthFailed);
                    }
                }
                self.accept_rtcp(ssrc, index);
                payload_end
            }
        };
        Ok(plain_len)
    }

    fn check_rtcp_replay(&self, ssrc: u32, index: u32) -> Result<(), SrtpError> {
        match self.streams.get(ssrc).and_then(|s| s.rtcp_replay) {
            Some(w) => w.check(u64::from(index)),
            None => Ok(()),
        }
    }

    fn accept_rtcp(&mut self, ssrc: u32, index: u32) {
        let s = self.streams.entry(ssrc);
        match &mut s.rtcp_replay {
            Some(w) => w.accept(u64::from(index)),
            None => s.rtcp_replay = Some(ReplayWindow::starting_at(u64::from(index))),
        }
    }

    /// Test hook: start sending RTCP for `ssrc` at this SRTCP index.
    #[cfg(test)]
    fn set_srtcp_index(&mut self, ssrc: u32, index: u32) {
        self.streams.entry(ssrc).rtcp_next = index;
    }

    /// Test hook: the ROC a context holds for `ssrc`.
    #[cfg(test)]
    fn roc(&self, ssrc: u32) -> Option<u32> {
        self.streams.get(ssrc).and_then(|s| s.rtp).map(|r| r.roc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 appendix B.3 master key and salt (also libsrtp's test key).
    fn b3_master(suite: SrtpSuite) -> MasterKey {
        let mut k = hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6");
        k.truncate(16 + suite.master_salt_len());
        MasterKey::new(suite, &k).unwrap()
    }

    /// libsrtp's test packet: SSRC cafebabe, seq 0x1234, 16 octets of 0xab.
    const PLAIN_RTP: &str = "800f1234decafbadcafebabe abababababababababababababababab";
    /// RFC 7714 section 17's sender report, reused for all suites.
    const PLAIN_RTCP: &str = "81c8000d4d617273 4e5450314e545032 525450200000042a 0000e9304c756e61
                              deadbeefdeadbeef deadbeefdeadbeef deadbeef";

    fn protect_rtp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_RTP_OVERHEAD, 0);
        let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect_rtp(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtp.to_vec();
        let n = ctx.unprotect_rtp(&mut buf, srtp.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn protect_rtcp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_RTCP_OVERHEAD, 0);
        let n = ctx.protect_rtcp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect_rtcp(ctx: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtcp.to_vec();
        let n = ctx.unprotect_rtcp(&mut buf, srtcp.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        // Session key and salt given directly; SSRC 0, index 0: the IV is the salt * 2^16.
        let key =
            UnboundCipherKey::new(&AES_128, &hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
        let key = EncryptingKey::ctr(key).unwrap();
        let cm = CmKeys {
            aes: key,
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &[0; 20]),
        };
        let iv = cm.iv(0, 0);
        assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
        let mut ks = vec![0u8; 16 * 0x10000];
        aes_ctr(&cm.aes, iv, &mut ks);
        let block = |i: usize| ks[i * 16..(i + 1) * 16].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let m = b3_master(SrtpSuite::AesCm128HmacSha1_80);
        let mut k = [0u8; 16];
        derive(&m, LABEL_RTP_ENC, &mut k);
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(&m, LABEL_RTP_SALT, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 94];
        derive(&m, LABEL_RTP_AUTH, &mut a);
        assert_eq!(
            a.to_vec(),
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )
        );
    }

    /// RFC 7714 section 16.1.1 / 17.1.1: the AEAD_AES_128_GCM vectors give the session key
    /// and salt directly, so they drive the packet transform with those.
    fn rfc7714_context() -> SrtpContext {
        let mut ctx = SrtpContext::new(&MasterKey::generate(SrtpSuite::AeadAes128Gcm));
        let key = hex("000102030405060708090a0b0c0d0e0f");
        let salt: [u8; 12] = hex("517569642070726f2071756f").try_into().unwrap();
        let gcm = || GcmKeys {
            aead: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap()),
            salt,
        };
        ctx.transform = Transform::Gcm {
            rtp: gcm(),
            rtcp: gcm(),
        };
        ctx
    }

    const RFC7714_RTP: &str = "8040f17b8041f8d35501a0b2 47616c6c696120657374206f6d6e6973
                               20646976697361 20696e207061727465732074726573";
    const RFC7714_SRTP: &str = "8040f17b8041f8d35501a0b2 f24de3a3fb34de6cacba861c9d7e4bca
                                be633bd50d294e6f42a5f47a51c7d19b36de3adf8833
                                899d7f27beb16a9152cf765ee4390cce";
    const RFC7714_SRTCP: &str = "81c8000d4d617273 63e94885dcdab67ca727d7662f6b7e997ff5c0f7
                                 6c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275b
                                 c84aa45896cf4d2fc5abf87245d9eade 800005d4";

    #[test]
    fn rfc7714_16_1_rtp_encrypt_and_decrypt() {
        let mut tx = rfc7714_context();
        assert_eq!(protect_rtp(&mut tx, &hex(RFC7714_RTP)), hex(RFC7714_SRTP));
        let mut rx = rfc7714_context();
        assert_eq!(
            unprotect_rtp(&mut rx, &hex(RFC7714_SRTP)).unwrap(),
            hex(RFC7714_RTP)
        );
        // RFC 7714 section 16.1.2's nonce for this packet
        let GcmKeys { salt, .. } = &GcmKeys {
            aead: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0; 16]).unwrap()),
            salt: hex("517569642070726f2071756f").try_into().unwrap(),
        };
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&0x5501a0b2u32.to_be_bytes());
        iv[10..].copy_from_slice(&0xf17bu16.to_be_bytes());
        iv.iter_mut().zip(salt).for_each(|(d, s)| *d ^= s);
        assert_eq!(iv.to_vec(), hex("51753c6580c2726f20718414"));
    }

    #[test]
    fn rfc7714_17_1_rtcp_encrypt_and_decrypt() {
        let mut tx = rfc7714_context();
        tx.set_srtcp_index(0x4d617273, 0x5d4);
        assert_eq!(protect_rtcp(&mut tx, &hex(PLAIN_RTCP)), hex(RFC7714_SRTCP));
        let mut rx = rfc7714_context();
        assert_eq!(
            unprotect_rtcp(&mut rx, &hex(RFC7714_SRTCP)).unwrap(),
            hex(PLAIN_RTCP)
        );
    }

    #[test]
    fn rfc7714_tampered_packets_fail() {
        let srtp = hex(RFC7714_SRTP);
        for i in [0, 5, 12, 30, srtp.len() - 1] {
            let mut bad = srtp.clone();
            bad[i] ^= 0x01;
            let mut rx = rfc7714_context();
            assert_eq!(
                unprotect_rtp(&mut rx, &bad),
                Err(SrtpError::AuthFailed),
                "{i}"
            );
        }
        let srtcp = hex(RFC7714_SRTCP);
        for i in [1, 7, 8, 40, srtcp.len() - 5, srtcp.len() - 1] {
            let mut bad = srtcp.clone();
            bad[i] ^= 0x01;
            let mut rx = rfc7714_context();
            assert!(unprotect_rtcp(&mut rx, &bad).is_err(), "{i}");
        }
    }

    // Known answers from libsrtp 2 (through pylibsrtp 1.0.0), master key and salt of
    // RFC 3711 B.3 (the GCM salt is its first 12 octets): these cover key derivation, the
    // IVs and the tags of each suite together. libsrtp numbers SRTCP from 1.
    const LIBSRTP_80: &str = "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402
                              b78d6acc99ea179b8dbb";
    const LIBSRTP_32: &str = "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402
                              b78d6acc";
    const LIBSRTP_GCM: &str = "800f1234decafbadcafebabe 0eca0cf95ee955b26cd3d288b49f6ca9
                               59171450975f4144da9cdd7ae989a277";
    const LIBSRTP_CM_RTCP: &str = "81c8000d4d617273 f2bb7b81f9b988034c297110352c5378
                                   1268f3d76040350f49086b0a2297239aeebaf47f1a17638a
                                   e7a25bc8 80000001 432cfe93cba0c4783d44";
    const LIBSRTP_GCM_RTCP: &str = "81c8000d4d617273 3ae6e9fb8870a71cb13b5caacfd0f416
                                    7d5b9484a31a2bf65c855d70ddd43987a3aa0005a84ff68c
                                    7ef8ae732f3986eea9516fa1d5a7c9ec328172b5 80000001";

    #[test]
    fn libsrtp_known_answers_for_each_suite() {
        use SrtpSuite::*;
        for (suite, srtp, srtcp) in [
            (AesCm128HmacSha1_80, LIBSRTP_80, LIBSRTP_CM_RTCP),
            (AesCm128HmacSha1_32, LIBSRTP_32, LIBSRTP_CM_RTCP),
            (AeadAes128Gcm, LIBSRTP_GCM, LIBSRTP_GCM_RTCP),
        ] {
            let mut tx = SrtpContext::new(&b3_master(suite));
            assert_eq!(protect_rtp(&mut tx, &hex(PLAIN_RTP)), hex(srtp), "{suite}");
            tx.set_srtcp_index(0x4d617273, 1);
            assert_eq!(
                protect_rtcp(&mut tx, &hex(PLAIN_RTCP)),
                hex(srtcp),
                "{suite}"
            );
            let mut rx = SrtpContext::new(&b3_master(suite));
            assert_eq!(unprotect_rtp(&mut rx, &hex(srtp)).unwrap(), hex(PLAIN_RTP));
            assert_eq!(
                unprotect_rtcp(&mut rx, &hex(srtcp)).unwrap(),
                hex(PLAIN_RTCP)
            );
        }
    }

    #[test]
    fn libsrtp_sequence_wrap_increments_the_roc() {
        // libsrtp sent seq 0xffff then seq 0 (ROC 1) on SSRC cafebabe.
        use SrtpSuite::*;
        for (suite, a, b) in [
            (
                AesCm128HmacSha1_80,
                "800fffff00000000cafebabe 59c43c56 cc003fa0c8a115eb9543",
                "800f000000000000cafebabe 8d455084 062a1016589a546b00a2",
            ),
            (
                AeadAes128Gcm,
                "800fffff00000000cafebabe 306b452a ddda6feaffdcf3ec7cda7cbe85b72c1d",
                "800f000000000000cafebabe 2dea2eea 80dbea51d6b6f6434f0f730a9bcf6168",
            ),
        ] {
            let mut tx = SrtpContext::new(&b3_master(suite));
            let first = hex("800fffff00000000cafebabe 01010101");
            let second = hex("800f000000000000cafebabe 02020202");
            assert_eq!(protect_rtp(&mut tx, &first), hex(a), "{suite}");
            assert_eq!(protect_rtp(&mut tx, &second), hex(b), "{suite}");
            assert_eq!(tx.roc(0xcafebabe), Some(1));
            let mut rx = SrtpContext::new(&b3_master(suite));
            assert_eq!(unprotect_rtp(&mut rx, &hex(a)).unwrap(), first);
            assert_eq!(unprotect_rtp(&mut rx, &hex(b)).unwrap(), second);
            assert_eq!(rx.roc(0xcafebabe), Some(1));
        }
    }

    #[test]
    fn round_trip_every_suite_with_csrcs_extension_and_padding() {
        for suite in SUITES {
            let master = MasterKey::generate(suite);
            let mut tx = SrtpContext::new(&master);
            let mut rx = SrtpContext::new(&master);
            // V=2, P=1, X=1, CC=1; one CSRC, a one-word extension, 3 octets of padding
            let mut p = hex("b1 00 0007 00000000 11223344 55667788 bede0001 10ff0000");
            p.extend_from_slice(&[7u8; 160]);
            p.extend_from_slice(&[0, 0, 3]);
            let s = protect_rtp(&mut tx, &p);
            assert_eq!(s.len(), p.len() + suite.rtp_tag_len());
            assert_eq!(s[..24], p[..24], "{suite}: header stays clear");
            assert_ne!(s[24..p.len()], p[24..], "{suite}: payload is encrypted");
            assert_eq!(unprotect_rtp(&mut rx, &s).unwrap(), p);
            let r = hex(PLAIN_RTCP);
            let sr = protect_rtcp(&mut tx, &r);
            assert_eq!(sr.len(), r.len() + 4 + suite.rtcp_tag_len());
            assert_eq!(unprotect_rtcp(&mut rx, &sr).unwrap(), r);
        }
    }

    #[test]
    fn the_wrong_key_fails_authentication() {
        for suite in SUITES {
            let mut tx = SrtpContext::new(&MasterKey::generate(suite));
            let mut rx = SrtpContext::new(&MasterKey::generate(suite));
            let s = protect_rtp(&mut tx, &rtp(1, 9, &[0xff; 160]));
            assert_eq!(unprotect_rtp(&mut rx, &s), Err(SrtpError::AuthFailed));
            let s = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
            assert_eq!(unprotect_rtcp(&mut rx, &s), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn tampering_anywhere_fails_and_leaves_no_state() {
        for suite in SUITES {
            let master = MasterKey::generate(suite);
            let mut tx = SrtpContext::new(&master);
            let s = protect_rtp(&mut tx, &rtp(100, 42, &[0x55; 160]));
            for i in 0..s.len() {
                let mut bad = s.clone();
                bad[i] ^= 0x80;
                let mut rx = SrtpContext::new(&master);
                let r = unprotect_rtp(&mut rx, &bad);
                assert!(r.is_err(), "{suite}: flipped octet {i} accepted");
                assert_eq!(rx.streams.entries.len(), 0, "{suite}: state from a forgery");
            }
            // truncations
            let mut rx = SrtpContext::new(&master);
            for n in [0, 11, 12, 12 + suite.rtp_tag_len() - 1] {
                assert!(unprotect_rtp(&mut rx, &s[..n]).is_err());
            }
            let c = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
            for i in 0..c.len() {
                let mut bad = c.clone();
                bad[i] ^= 0x01;
                assert!(
                    unprotect_rtcp(&mut rx, &bad).is_err(),
                    "{suite}: rtcp octet {i}"
                );
            }
            assert_eq!(unprotect_rtcp(&mut rx, &c).unwrap(), hex(PLAIN_RTCP));
        }
    }

    #[test]
    fn replays_are_refused_and_reordering_within_the_window_is_not() {
        for suite in SUITES {
            let master = MasterKey::generate(suite);
            let mut tx = SrtpContext::new(&master);
            let mut rx = SrtpContext::new(&master);
            let pkts: Vec<Vec<u8>> = (0..300u16)
                .map(|i| protect_rtp(&mut tx, &rtp(1000 + i, 7, &[i as u8; 20])))
                .collect();
            assert!(unprotect_rtp(&mut rx, &pkts[0]).is_ok());
            assert_eq!(unprotect_rtp(&mut rx, &pkts[0]), Err(SrtpError::Replayed));
            // out of order inside the window
            assert!(unprotect_rtp(&mut rx, &pkts[5]).is_ok());
            assert!(unprotect_rtp(&mut rx, &pkts[3]).is_ok());
            assert_eq!(unprotect_rtp(&mut rx, &pkts[3]), Err(SrtpError::Replayed));
            assert!(unprotect_rtp(&mut rx, &pkts[299]).is_ok());
            // 299 - 5 >= 128: outside the window now
            assert_eq!(unprotect_rtp(&mut rx, &pkts[4]), Err(SrtpError::TooOld));
            assert!(unprotect_rtp(&mut rx, &pkts[299 - 127]).is_ok());
            assert_eq!(
                unprotect_rtp(&mut rx, &pkts[299 - 128]),
                Err(SrtpError::TooOld)
            );
            // SRTCP: same index twice
            let c1 = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
            let c2 = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
            assert!(unprotect_rtcp(&mut rx, &c2).is_ok());
            assert!(unprotect_rtcp(&mut rx, &c1).is_ok());
            assert_eq!(unprotect_rtcp(&mut rx, &c1), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn rollover_across_many_wraps_with_loss_and_reordering() {
        let master = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpContext::new(&master);
        let mut rx = SrtpContext::new(&master);
        let mut seq: u16 = 65000;
        let mut held = None;
        for i in 0..200_000u32 {
            let s = protect_rtp(&mut tx, &rtp(seq, 5, &i.to_be_bytes()));
            // lose every 97th packet, deliver every 50th one packet late
            if i % 97 != 0 {
                if i % 50 == 0 {
                    held = Some((s, i));
                } else {
                    let p = unprotect_rtp(&mut rx, &s).unwrap();
                    assert_eq!(p[12..], i.to_be_bytes());
                    if let Some((late, j)) = held.take() {
                        let p = unprotect_rtp(&mut rx, &late).unwrap();
                        assert_eq!(p[12..], j.to_be_bytes());
                    }
                }
            }
            seq = seq.wrapping_add(1);
        }
        // 65000 + 200000 packets: four wraps
        assert_eq!(tx.roc(5), Some(4));
        assert_eq!(rx.roc(5), Some(4));
    }

    #[test]
    fn a_late_packet_from_before_the_wrap_uses_the_previous_roc() {
        let master = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
        let mut tx = SrtpContext::new(&master);
        let mut rx = SrtpContext::new(&master);
        let p65534 = protect_rtp(&mut tx, &rtp(65534, 1, b"a"));
        let p65535 = protect_rtp(&mut tx, &rtp(65535, 1, b"b"));
        let p0 = protect_rtp(&mut tx, &rtp(0, 1, b"c"));
        let p1 = protect_rtp(&mut tx, &rtp(1, 1, b"d"));
        assert!(unprotect_rtp(&mut rx, &p65534).is_ok());
        assert!(unprotect_rtp(&mut rx, &p0).is_ok());
        assert_eq!(rx.roc(1), Some(1));
        // seq 65535 after the wrap is estimated with ROC - 1, so it authenticates
        assert_eq!(unprotect_rtp(&mut rx, &p65535).unwrap()[12..], *b"b");
        assert_eq!(unprotect_rtp(&mut rx, &p65535), Err(SrtpError::Replayed));
        assert_eq!(unprotect_rtp(&mut rx, &p1).unwrap()[12..], *b"d");
        assert_eq!(rx.roc(1), Some(1));
        // SDES starts every source at ROC 0: a receiver whose first packet is already
        // past a wrap cannot authenticate it (and keeps no state from it)
        let mut late = SrtpContext::new(&master);
        assert_eq!(unprotect_rtp(&mut late, &p1), Err(SrtpError::AuthFailed));
        assert_eq!(late.roc(1), None);
    }

    #[test]
    fn srtcp_index_and_e_bit() {
        let master = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_32);
        let mut tx = SrtpContext::new(&master);
        let a = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
        let b = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
        let word = |p: &[u8]| be32(&p[p.len() - 14..]);
        assert_eq!(word(&a), 0x8000_0000);
        assert_eq!(word(&b), 0x8000_0001);
        tx.set_srtcp_index(0x4d617273, SRTCP_INDEX_MAX);
        let last = protect_rtcp(&mut tx, &hex(PLAIN_RTCP));
        assert_eq!(word(&last), 0xffff_ffff);
        let mut buf = hex(PLAIN_RTCP);
        let n = buf.len();
        buf.resize(n + MAX_RTCP_OVERHEAD, 0);
        assert_eq!(tx.protect_rtcp(&mut buf, n), Err(SrtpError::IndexExhausted));
    }

    #[test]
    fn unencrypted_srtcp_e0_is_authenticated_and_accepted() {
        // Build E=0 packets the way RFC 3711 3.4 / RFC 7714 9.2 describe and check that a
        // receiver takes them, and refuses them once tampered.
        for suite in SUITES {
            let master = MasterKey::generate(suite);
            let tx = SrtpContext::new(&master);
            let plain = hex(PLAIN_RTCP);
            let word = 7u32.to_be_bytes(); // E=0, index 7
            let packet = match &tx.transform {
                Transform::Cm { rtcp, .. } => {
                    let mut p = plain.clone();
                    p.extend_from_slice(&word);
                    let tag = rtcp.mac(&p, &[]);
                    p.extend_from_slice(&tag.as_ref()[..10]);
                    p
                }
                Transform::Gcm { rtcp, .. } => {
                    let mut aad = plain.clone();
                    aad.extend_from_slice(&word);
                    let nonce = rtcp.nonce(0x4d617273, 0, &7u32.to_be_bytes());
                    let tag = rtcp
                        .aead
                        .seal_in_place_separate_tag(nonce, Aad::from(&aad), &mut [])
                        .unwrap();
                    let mut p = plain.clone();
                    p.extend_from_slice(tag.as_ref());
                    p.extend_from_slice(&word);
                    p
                }
            };
            let mut rx = SrtpContext::new(&master);
            let mut bad = packet.clone();
            bad[20] ^= 1;
            let kept = bad.clone();
            let n = bad.len();
            assert_eq!(rx.unprotect_rtcp(&mut bad, n), Err(SrtpError::AuthFailed));
            assert_eq!(bad, kept, "{suite}: a refused packet is left as it came");
            assert_eq!(unprotect_rtcp(&mut rx, &packet).unwrap(), plain, "{suite}");
        }
    }

    #[test]
    fn mki_from_the_peer_is_checked_and_stripped() {
        for suite in SUITES {
            let master = MasterKey::generate(suite);
            let mut tx = SrtpContext::new(&master);
            let plain = rtp(9, 3, &[1; 40]);
            let s = protect_rtp(&mut tx, &plain);
            // insert MKI 0x0001 where RFC 3711 3.1 puts it: before the tag (AES-CM) or
            // after the ciphertext and tag (AEAD, RFC 7714 section 8)
            let at = match suite {
                SrtpSuite::AeadAes128Gcm => s.len(),
                _ => s.len() - suite.rtp_tag_len(),
            };
            let mut with = s[..at].to_vec();
            with.extend_from_slice(&[0, 1]);
            with.extend_from_slice(&s[at..]);
            let mut rx = SrtpContext::with_mki(&master, &[0, 1]).unwrap();
            assert_eq!(unprotect_rtp(&mut rx, &with).unwrap(), plain, "{suite}");
            let mut other = with.clone();
            other[at + 1] = 2;
            let mut rx = SrtpContext::with_mki(&master, &[0, 1]).unwrap();
            assert!(unprotect_rtp(&mut rx, &other).is_err());
        }
        let m = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
        assert_eq!(
            SrtpContext::with_mki(&m, &[0; 5]).unwrap_err(),
            SrtpError::MkiLength(5)
        );
    }

    #[test]
    fn malformed_input_and_small_buffers_are_errors_not_panics() {
        let master = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let mut ctx = SrtpContext::new(&master);
        let mut buf = rtp(1, 1, &[0; 10]);
        let n = buf.len();
        assert_eq!(ctx.protect_rtp(&mut buf, n), Err(SrtpError::BufferTooSmall));
        assert_eq!(ctx.protect_rtp(&mut buf, n + 1), Err(SrtpError::Malformed));
        buf[0] = 0x40; // version 1
        buf.resize(64, 0);
        assert_eq!(ctx.protect_rtp(&mut buf, n), Err(SrtpError::Malformed));
        // CC=15 claims 60 octets of CSRCs; an extension longer than the packet
        let mut b = rtp(1, 1, &[0; 10]);
        b[0] = 0x8f;
        b.resize(64, 0);
        assert_eq!(ctx.protect_rtp(&mut b, 22), Err(SrtpError::Malformed));
        let mut b = hex("9000000100000000000000010000ffff");
        b.resize(64, 0);
        assert_eq!(ctx.unprotect_rtp(&mut b, 16), Err(SrtpError::Malformed));
        let mut short = [0x80u8; 7];
        assert_eq!(ctx.protect_rtcp(&mut short, 7), Err(SrtpError::Malformed));
        assert_eq!(ctx.unprotect_rtcp(&mut short, 7), Err(SrtpError::Malformed));
        let mut any = [0x80u8; 64];
        for len in 0..=64 {
            let _ = ctx.unprotect_rtp(&mut any, len);
            let _ = ctx.unprotect_rtcp(&mut any, len);
        }
    }

    #[test]
    fn the_stream_table_is_bounded() {
        let master = MasterKey::generate(SrtpSuite::AesCm128HmacSha1_80);
        let mut tx = SrtpContext::new(&master);
        let mut rx = SrtpContext::new(&master);
        for ssrc in 0..100u32 {
            let s = protect_rtp(&mut tx, &rtp(1, ssrc, b"x"));
            unprotect_rtp(&mut rx, &s).unwrap();
        }
        assert_eq!(tx.streams.entries.len(), MAX_STREAMS);
        assert_eq!(rx.streams.entries.len(), MAX_STREAMS);
        assert_eq!(rx.streams.entries.capacity(), MAX_STREAMS);
        assert!(rx.roc(99).is_some() && rx.roc(0).is_none());
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let m = MasterKey::new(SrtpSuite::AesCm128HmacSha1_80, &[0x41; 30]).unwrap();
        let d = format!("{m:?} {:?}", SrtpContext::new(&m));
        assert!(
            !d.contains("65") && !d.contains("41") && !d.contains("AAAA"),
            "{d}"
        );
        assert_eq!(
            MasterKey::new(SrtpSuite::AeadAes128Gcm, &[0; 30]).unwrap_err(),
            SrtpError::KeyLength {
                expected: 28,
                got: 30
            }
        );
    }

    #[test]
    fn suite_names_round_trip() {
        for s in SUITES {
            assert_eq!(SrtpSuite::from_name(s.name()), Some(s));
        }
        assert_eq!(SrtpSuite::from_name("aes_cm_128_hmac_sha1_80"), None);
        assert_eq!(SrtpSuite::from_name("F8_128_HMAC_SHA1_80"), None);
    }
}
