//! SIP message framing on stream transports (TCP, TLS), sans-IO (RFC 3261 section 18.3):
//! the owner of a connection pushes bytes as they arrive and takes out, in order, whole
//! messages (head and body exactly as Content-Length delimits them) and RFC 5626 keep-alive
//! pings (a CRLFCRLF between messages, which the owner answers with a single CRLF pong).
//! Lone CRLFs between messages are skipped (RFC 3261 section 7.5). On UDP the same ping
//! arrives as a datagram of its own (`is_datagram_keepalive`), which is no message at all.
//!
//! The framer only finds message boundaries: it reads nothing in the head but
//! Content-Length, and `message::parse` checks the rest. It never holds more than
//! `max_message + 1` bytes of an unfinished message, deciding `TooLarge` as soon as the
//! head outgrows the limit or Content-Length says the whole would. Any error leaves the
//! stream out of sync, so the framer is poisoned: every later `next` returns that error,
//! and the owner answers 400 or 513 if it can and closes the connection.

use std::collections::VecDeque;

/// The limit the daemon frames with: 64 KiB for head and body together.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

const CRLF: &[u8] = b"\r\n";
const CRLFCRLF: &[u8] = b"\r\n\r\n";

/// At most this much of a bad Content-Length value is quoted in a reason.
const QUOTE_MAX: usize = 24;

/// Whether a UDP datagram is a keep-alive rather than a message: nothing but CRs and LFs,
/// such as the CRLFCRLF that phones (linphone, every 30 s) send over UDP as they would on a
/// stream (RFC 5626 section 3.5.1). The owner drops it without an answer (RFC 5626 defines
/// no pong on UDP) and without counting it as an invalid message.
pub fn is_datagram_keepalive(datagram: &[u8]) -> bool {
    !datagram.is_empty() && datagram.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// One unit of a SIP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole message: its head (start line through the empty line) and its body of
    /// exactly Content-Length bytes.
    Message(Vec<u8>),
    /// An RFC 5626 section 3.5.1 ping (CRLFCRLF outside a message): the owner answers a
    /// single CRLF pong.
    KeepAlive,
}

/// Why the stream cannot be framed. Each carries a short reason fit for a reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 3261 section 18.3: Content-Length is mandatory on a stream.
    #[error("400: {0}")]
    MissingContentLength(String),
    /// Not a decimal number, or more than one different value.
    #[error("400: {0}")]
    BadContentLength(String),
    /// The head, or head and body, would exceed the limit.
    #[error("513: {0}")]
    TooLarge(String),
}

impl FrameError {
    /// The status to answer with: 400 Bad Request, or 513 Message Too Large.
    pub fn status(&self) -> u16 {
        match self {
            FrameError::MissingContentLength(_) | FrameError::BadContentLength(_) => 400,
            FrameError::TooLarge(_) => 513,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            FrameError::MissingContentLength(r)
            | FrameError::BadContentLength(r)
            | FrameError::TooLarge(r) => r,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: skipping CRLFs, or holding a partial CRLFCRLF.
    Between,
    /// Inside a head; `scanned` bytes of it hold no CRLFCRLF (bar a partial one at the end).
    Head { scanned: usize },
    /// The head is done; the message is `total` bytes.
    Body { total: usize },
}

/// The framer for one connection. See the module documentation.
/// Tests: `framing_*` and `random_*`.
#[derive(Debug, Clone)]
pub struct StreamFramer {
    max_message: usize,
    /// The unfinished message (or partial ping); it always starts at the current state's
    /// first byte.
    buf: Vec<u8>,
    state: State,
    ready: VecDeque<Frame>,
    error: Option<FrameError>,
    high_water: usize,
}

impl StreamFramer {
    /// A framer that refuses messages (head and body) longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            max_message,
            buf: Vec::new(),
            state: State::Between,
            ready: VecDeque::new(),
            error: None,
            high_water: 0,
        }
    }

    /// Bytes as they came off the connection. The frames they complete wait for `next`;
    /// bytes after an error are dropped.
    pub fn push(&mut self, mut bytes: &[u8]) {
        // Taken in pieces that fit the limit, so that a flood is refused before it is
        // copied: after `advance` the buffer holds at most `max_message` bytes.
        while !bytes.is_empty() && self.error.is_none() {
            let room = self
                .max_message
                .saturating_add(1)
                .saturating_sub(self.buf.len())
                .max(1);
            let (piece, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(piece);
            self.high_water = self.high_water.max(self.buf.len());
            bytes = rest;
            self.advance();
        }
    }

    /// The next frame, in stream order; None until more bytes complete one. After an
    /// error, the frames completed before it, then that error on every call.
    #[allow(clippy::should_implement_trait)] // Not an Iterator: once poisoned it never ends.
    pub fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        match self.ready.pop_front() {
            Some(frame) => Some(Ok(frame)),
            None => self.error.clone().map(Err),
        }
    }

    /// Bytes of an unfinished message held now (complete frames waiting for `next` aside).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The most bytes of an unfinished message ever held: at most `max_message + 1`.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Whether an error has put the stream out of sync.
    pub fn is_poisoned(&self) -> bool {
        self.error.is_some()
    }

    /// Moves every complete frame from `buf` to `ready`, or fails.
    fn advance(&mut self) {
        let mut pos = 0;
        loop {
            let avail = &self.buf[pos..];
            match self.state {
                State::Between => {
                    if avail.starts_with(CRLFCRLF) {
                        self.ready.push_back(Frame::KeepAlive);
                        pos += CRLFCRLF.len();
                    } else if CRLFCRLF.starts_with(avail) {
                        // Nothing, or the start of a ping or of a lone CRLF: wait.
                        break;
                    } else if avail.starts_with(CRLF) {
                        pos += CRLF.len();
                    } else {
                        self.state = State::Head { scanned: 0 };
                    }
                }
                State::Head { scanned } => {
                    let from = scanned.saturating_sub(CRLFCRLF.len() - 1);
                    let Some(i) = find(&avail[from..], CRLFCRLF) else {
                        if avail.len() >= self.max_message {
                            // Even if the next byte ended it, the head would be too long.
                            let reason = format!("head longer than {} bytes", self.max_message);
                            return self.fail(FrameError::TooLarge(reason));
                        }
                        self.state = State::Head {
                            scanned: avail.len(),
                        };
                        break;
                    };
                    let head = from + i + CRLFCRLF.len();
                    if head > self.max_message {
                        let reason = format!("head longer than {} bytes", self.max_message);
                        return self.fail(FrameError::TooLarge(reason));
                    }
                    let total = match content_length(&avail[..head]) {
                        Ok(body) => head.checked_add(body).filter(|&t| t <= self.max_message),
                        Err(e) => return self.fail(e),
                    };
                    let Some(total) = total else {
                        let reason = format!("message longer than {} bytes", self.max_message);
                        return self.fail(FrameError::TooLarge(reason));
                    };
                    self.state = State::Body { total };
                }
                State::Body { total } => {
                    if avail.len() < total {
                        break;
                    }
                    self.ready
                        .push_back(Frame::Message(avail[..total].to_vec()));
                    pos += total;
                    self.state = State::Between;
                }
            }
        }
        self.buf.drain(..pos);
    }

    fn fail(&mut self, error: FrameError) {
        self.error = Some(error);
        self.buf = Vec::new();
        self.state = State::Between;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn quote(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(&value[..value.len().min(QUOTE_MAX)]);
    let more = if value.len() > QUOTE_MAX { "..." } else { "" };
    format!("{:?}{more}", text)
}

/// The header lines of a head without its start line, each unfolded: RFC 3261 section
/// 7.3.1 lets a value go on over lines that start with whitespace.
fn unfolded_headers(head: &[u8]) -> Vec<Vec<u8>> {
    let mut headers: Vec<Vec<u8>> = Vec::new();
    let mut rest = head;
    let mut start_line = true;
    while let Some(end) = find(rest, CRLF) {
        let line = &rest[..end];
        rest = &rest[end + CRLF.len()..];
        if line.is_empty() {
            break;
        }
        if std::mem::take(&mut start_line) {
            continue;
        }
        match headers.last_mut() {
            Some(last) if matches!(line[0], b' ' | b'\t') => {
                last.push(b' ');
                last.extend_from_slice(line);
            }
            _ => headers.push(line.to_vec()),
        }
    }
    headers
}

/// RFC 3261 section 18.3: the body length of a message on a stream. Tests:
/// `framing_content_length_*`.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut length: Option<usize> = None;
    for header in unfolded_headers(head) {
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&header[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = trim(&header[colon + 1..]);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadContentLength(format!(
                "Content-Length {} is not a decimal number",
                quote(value)
            )));
        }
        // All digits: the only way to fail is a value beyond any limit.
        let Some(n) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) else {
            return Err(FrameError::TooLarge(format!(
                "Content-Length {} is beyond any limit",
                quote(value)
            )));
        };
        match length {
            Some(first) if first != n => {
                return Err(FrameError::BadContentLength(format!(
                    "Content-Length {first} and {n} conflict"
                )));
            }
            _ => length = Some(n),
        }
    }
    length.ok_or_else(|| {
        FrameError::MissingContentLength("no Content-Length, which a stream requires".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_MESSAGE;

    const OPTIONS: &str = "OPTIONS sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\nCall-ID: a@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    /// A message whose body holds a CRLFCRLF.
    const MESSAGE: &str = "MESSAGE sip:u@example.com SIP/2.0\r\nCall-ID: b@x\r\nCSeq: 2 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhi\r\n\r\nthere!";

    /// A response with the compact form.
    const OK: &str = "SIP/2.0 200 OK\r\nCall-ID: c@x\r\nCSeq: 3 INVITE\r\nl: 5\r\n\r\nv=0\r\n";

    fn frames(framer: &mut StreamFramer) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        while let Some(f) = framer.next() {
            let stop = f.is_err();
            out.push(f);
            if stop {
                break;
            }
        }
        out
    }

    fn frame_all(pieces: &[&[u8]]) -> Vec<Result<Frame, FrameError>> {
        let mut framer = StreamFramer::new(MAX);
        let mut out = Vec::new();
        for piece in pieces {
            framer.push(piece);
            out.extend(frames(&mut framer));
        }
        out
    }

    fn msg(s: &str) -> Result<Frame, FrameError> {
        Ok(Frame::Message(s.as_bytes().to_vec()))
    }

    fn one(s: &str) -> Result<Frame, FrameError> {
        let mut out = frame_all(&[s.as_bytes()]);
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    /// Keep-alives, lone CRLFs and the three messages, in one stream.
    fn stream() -> (Vec<u8>, Vec<Result<Frame, FrameError>>) {
        let bytes = format!("\r\n\r\n{OPTIONS}\r\n{MESSAGE}\r\n\r\n\r\n{OK}{OPTIONS}").into_bytes();
        let expected = vec![
            Ok(Frame::KeepAlive),
            msg(OPTIONS),
            msg(MESSAGE),
            Ok(Frame::KeepAlive),
            msg(OK),
            msg(OPTIONS),
        ];
        (bytes, expected)
    }

    /// xorshift64, so the random tests need no crate.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x % n
        }
    }

    #[test]
    fn framing_one_push_gives_every_frame_in_order() {
        let (bytes, expected) = stream();
        assert_eq!(frame_all(&[&bytes]), expected);
    }

    #[test]
    fn framing_splits_at_every_byte_boundary_give_the_same_frames() {
        let (bytes, expected) = stream();
        for i in 0..=bytes.len() {
            assert_eq!(
                frame_all(&[&bytes[..i], &bytes[i..]]),
                expected,
                "split at {i}"
            );
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(frame_all(&bytewise), expected);
    }

    #[test]
    fn framing_two_messages_in_one_push() {
        let both = format!("{OPTIONS}{OK}");
        assert_eq!(frame_all(&[both.as_bytes()]), [msg(OPTIONS), msg(OK)]);
    }

    #[test]
    fn framing_keep_alives_between_messages() {
        let mut framer = StreamFramer::new(MAX);
        framer.push(b"\r\n\r\n");
        assert_eq!(framer.next(), Some(Ok(Frame::KeepAlive)));
        assert_eq!(framer.next(), None);
        // A lone CRLF is skipped; two pings in a row are two.
        framer.push(b"\r\n");
        assert_eq!(framer.next(), None);
        framer.push(OPTIONS.as_bytes());
        framer.push(b"\r\n\r\n\r\n\r\n");
        assert_eq!(
            frames(&mut framer),
            [msg(OPTIONS), Ok(Frame::KeepAlive), Ok(Frame::KeepAlive)]
        );
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn framing_body_containing_crlfcrlf_is_delimited_by_content_length() {
        let Ok(Frame::Message(m)) = one(MESSAGE) else {
            panic!("not a message");
        };
        assert!(m.ends_with(b"\r\n\r\nhi\r\n\r\nthere!"));
    }

    #[test]
    fn framing_content_length_forms() {
        for header in [
            "l: 3",
            "L:3",
            "Content-Length : 3",
            "content-length:\t3 ",
            "CONTENT-LENGTH  :  3",
            "Content-Length:\r\n 3",
            "Content-Length: 003",
            "Content-Length: 3\r\nl: 3",
        ] {
            let m = format!("INFO sip:u@x SIP/2.0\r\nCall-ID: d@x\r\n{header}\r\n\r\nabc");
            assert_eq!(one(&m), msg(&m), "{header:?}");
        }
        // A header that only ends in "l", and the start line, are not Content-Length.
        let m = "INFO sip:l:5@x SIP/2.0\r\nurl: 9\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(one(m), msg(m));
    }

    #[test]
    fn framing_content_length_missing_is_400() {
        let e = one("OPTIONS sip:u@x SIP/2.0\r\nCall-ID: e@x\r\n\r\n").unwrap_err();
        assert!(matches!(e, FrameError::MissingContentLength(_)), "{e:?}");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn framing_content_length_bad_or_conflicting_is_400() {
        for header in [
            "Content-Length: abc",
            "Content-Length: -1",
            "Content-Length: +3",
            "Content-Length:",
            "Content-Length: 3 4",
            "Content-Length: 0x10",
            "Content-Length: 3, 3",
            "Content-Length: 3\r\nl: 4",
            "l: 0\r\nContent-Length: 1",
        ] {
            let m = format!("INFO sip:u@x SIP/2.0\r\n{header}\r\n\r\n");
            let e = one(&m).unwrap_err();
            assert!(
                matches!(e, FrameError::BadContentLength(_)),
                "{header:?}: {e:?}"
            );
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn framing_content_length_beyond_any_number_is_too_large() {
        let m = format!(
            "INFO sip:u@x SIP/2.0\r\nContent-Length: {}\r\n\r\n",
            "9".repeat(40)
        );
        let e = one(&m).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)), "{e:?}");
        assert!(
            e.reason().ends_with("9\"... is beyond any limit"),
            "{}",
            e.reason()
        );
    }

    #[test]
    fn framing_content_length_beyond_the_limit_errors_before_the_body() {
        let mut framer = StreamFramer::new(MAX);
        framer.push(format!("INFO sip:u@x SIP/2.0\r\nContent-Length: {MAX}\r\n\r\n").as_bytes());
        let e = framer.next().unwrap().unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)), "{e:?}");
        assert_eq!(e.status(), 513);
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn framing_a_message_of_exactly_the_limit_passes() {
        let head = "INFO sip:u@x SIP/2.0\r\nContent-Length: 00000\r\n\r\n";
        let body = MAX - head.len();
        let head = head.replace("00000", &format!("{body:05}"));
        let exact = format!("{head}{}", "x".repeat(body));
        assert_eq!(exact.len(), MAX);
        assert_eq!(one(&exact), msg(&exact));
        let over = exact.replace(&format!("{body:05}"), &format!("{:05}", body + 1)) + "x";
        assert!(matches!(one(&over), Err(FrameError::TooLarge(_))));
        // A head alone of exactly the limit passes too; one byte more does not.
        let pad = |n: usize| {
            format!(
                "INFO sip:u@x SIP/2.0\r\nContent-Length: 0\r\nX: {}\r\n\r\n",
                "p".repeat(n)
            )
        };
        let base = pad(0).len();
        assert_eq!(one(&pad(MAX - base)), msg(&pad(MAX - base)));
        assert!(matches!(
            one(&pad(MAX - base + 1)),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn framing_a_flood_without_head_end_is_too_large_without_buffering_it() {
        let garbage = vec![b'A'; 1 << 20];
        let mut framer = StreamFramer::new(MAX);
        framer.push(&garbage);
        let e = framer.next().unwrap().unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)), "{e:?}");
        assert!(
            framer.high_water() <= MAX + 1,
            "held {}",
            framer.high_water()
        );
        assert_eq!(framer.buffered(), 0);
        // In small pushes, the error comes as soon as the head reaches the limit.
        let mut framer = StreamFramer::new(MAX);
        let mut pushed = 0;
        while framer.next().is_none() {
            framer.push(&garbage[..1000]);
            pushed += 1000;
            assert!(framer.buffered() <= MAX);
        }
        assert_eq!(pushed, MAX.div_ceil(1000) * 1000);
        assert!(framer.high_water() <= MAX + 1);
    }

    #[test]
    fn framing_errors_poison_the_stream_after_the_frames_before_them() {
        let mut framer = StreamFramer::new(MAX);
        framer.push(format!("{OPTIONS}\r\n\r\nINFO sip:u@x SIP/2.0\r\n\r\n{OPTIONS}").as_bytes());
        assert_eq!(framer.next(), Some(msg(OPTIONS)));
        assert_eq!(framer.next(), Some(Ok(Frame::KeepAlive)));
        let e = framer.next().unwrap().unwrap_err();
        assert!(matches!(e, FrameError::MissingContentLength(_)));
        assert!(framer.is_poisoned());
        framer.push(OPTIONS.as_bytes());
        for _ in 0..3 {
            assert_eq!(framer.next(), Some(Err(e.clone())));
        }
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn framing_errors_carry_a_reason_and_a_status() {
        let cases = [
            (FrameError::MissingContentLength("m".into()), 400, "400: m"),
            (FrameError::BadContentLength("b".into()), 400, "400: b"),
            (FrameError::TooLarge("t".into()), 513, "513: t"),
        ];
        for (e, status, shown) in cases {
            assert_eq!(e.status(), status);
            assert_eq!(e.to_string(), shown);
            assert_eq!(e.reason().len(), 1);
        }
        let e = one("INFO sip:u@x SIP/2.0\r\nContent-Length: 12abc\r\n\r\n").unwrap_err();
        assert_eq!(
            e.reason(),
            "Content-Length \"12abc\" is not a decimal number"
        );
    }

    #[test]
    fn random_splits_give_the_same_frames() {
        let (bytes, expected) = stream();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let mut pieces = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (rng.below(40) as usize).min(rest.len());
                let (piece, r) = rest.split_at(n);
                pieces.push(piece);
                rest = r;
            }
            assert_eq!(frame_all(&pieces), expected);
        }
    }

    #[test]
    fn random_bytes_never_panic_and_respect_the_limit() {
        // Bytes biased toward what drives the framer: CR, LF, colons, digits, names.
        const ALPHABET: &[&[u8]] = &[
            b"\r",
            b"\n",
            b"\r\n",
            b"\r\n\r\n",
            b":",
            b" ",
            b"\t",
            b"0",
            b"7",
            b"9",
            b"l",
            b"Content-Length",
            b"x",
            b"\xff",
        ];
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        for _ in 0..3000 {
            let max = 16 + rng.below(300) as usize;
            let mut framer = StreamFramer::new(max);
            let mut first_error = None;
            for _ in 0..rng.below(40) {
                let mut piece = Vec::new();
                for _ in 0..rng.below(30) {
                    piece.extend_from_slice(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
                }
                framer.push(&piece);
                assert!(framer.buffered() <= max);
                assert!(framer.high_water() <= max + 1);
                while let Some(f) = framer.next() {
                    match f {
                        Ok(Frame::Message(m)) => assert!(m.len() <= max),
                        Ok(Frame::KeepAlive) => {}
                        Err(e) => {
                            let kind = std::mem::discriminant(&e);
                            assert_eq!(*first_error.get_or_insert(kind), kind);
                            break;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_datagram_of_crlfs_is_a_keepalive_and_nothing_else_is() {
        for k in ["\r\n\r\n", "\r\n", "\n", "\r\n\r\n\r\n\r\n"] {
            assert!(is_datagram_keepalive(k.as_bytes()), "{k:?}");
        }
        for not in [
            "",
            " \r\n",
            "\r\n\r\n\0",
            "\0\0\0\0",
            OPTIONS,
            "\r\n\r\nOPTIONS",
        ] {
            assert!(!is_datagram_keepalive(not.as_bytes()), "{not:?}");
        }
    }
}
