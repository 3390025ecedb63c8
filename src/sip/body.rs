//! Message bodies the endpoint reads, sans-IO: the SDP of a request or response, also
//! inside multipart/mixed (RFC 5621 / RFC 2046, RFC 4475 section 3.1.1.11), and DTMF
//! carried by SIP INFO (application/dtmf-relay, application/dtmf). Tests: `body_*`.

use super::message::Message;

fn param<'a>(ct: &'a str, name: &str) -> Option<&'a str> {
    ct.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

fn base(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The application/sdp body of a message: the whole body, or the first SDP part of a
/// multipart/mixed body. None when there is none.
pub fn sdp(msg: &Message) -> Option<Vec<u8>> {
    if msg.body.is_empty() {
        return None;
    }
    let ct = msg.header("Content-Type").unwrap_or("application/sdp");
    match base(ct).as_str() {
        "application/sdp" => Some(msg.body.clone()),
        "multipart/mixed" | "multipart/alternative" | "multipart/related" => {
            multipart_sdp(&msg.body, param(ct, "boundary")?)
        }
        _ => None,
    }
}

fn multipart_sdp(body: &[u8], boundary: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(body);
    let delim = format!("--{boundary}");
    for part in text.split(delim.as_str()).skip(1) {
        if part.starts_with("--") {
            break; // the close delimiter
        }
        let part = part
            .strip_prefix("\r\n")
            .or(part.strip_prefix('\n'))
            .unwrap_or(part);
        let (head, content) = match part.split_once("\r\n\r\n") {
            Some(x) => x,
            None => match part.split_once("\n\n") {
                Some(x) => x,
                // a part without headers is text/plain (RFC 2046 section 5.1.1)
                None => continue,
            },
        };
        let is_sdp = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("Content-Type") && base(v) == "application/sdp"
            })
        });
        if is_sdp {
            // the CRLF before the next delimiter belongs to it
            let content = content
                .strip_suffix("\r\n")
                .or(content.strip_suffix('\n'))
                .unwrap_or(content);
            return Some(content.as_bytes().to_vec());
        }
    }
    None
}

/// The DTMF digit of an INFO body (`Signal=5` in application/dtmf-relay, or the bare
/// digit of application/dtmf). None for other bodies.
pub fn info_dtmf(msg: &Message) -> Option<char> {
    let ct = base(msg.header("Content-Type")?);
    let text = std::str::from_utf8(&msg.body).ok()?;
    let raw = match ct.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    let c = match raw {
        // some phones send the event code instead of the character
        "10" => '*',
        "11" => '#',
        s if s.chars().count() == 1 => s.chars().next()?.to_ascii_uppercase(),
        _ => return None,
    };
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn msg(ct: &str, body: &str) -> Message {
        let text = format!(
            "INFO sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:x@y>;tag=2\r\nCall-ID: 1\r\nCSeq: 2 INFO\r\nContent-Type: {ct}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn body_sdp_plain_and_multipart() {
        assert_eq!(sdp(&msg("application/sdp", "v=0\r\n")).unwrap(), b"v=0\r\n");
        let mp = "--7a9cbec.\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
                  --7a9cbec.\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=- 1 1 IN IP4 h\r\n\
                  --7a9cbec.--\r\n";
        let m = msg("multipart/mixed;boundary=7a9cbec.", mp);
        assert_eq!(sdp(&m).unwrap(), b"v=0\r\no=- 1 1 IN IP4 h");
        assert_eq!(sdp(&msg("multipart/mixed", mp)), None, "no boundary");
        assert_eq!(sdp(&msg("text/plain", "x")), None);
    }

    #[test]
    fn body_rfc4475_mpart01() {
        // a MESSAGE whose multipart body holds text and binary parts, no SDP
        let data = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/test-data/rfc4475/mpart01.dat"),
        )
        .unwrap();
        let m = message::parse(&data).unwrap();
        assert_eq!(sdp(&m), None);
        // the same body with its octet-stream part replaced by SDP yields that part
        let body = String::from_utf8_lossy(&m.body).into_owned();
        let start = body.find("Content-Type: application/octet-stream").unwrap();
        let end = body.rfind("--7a9cbec02ceef655--").unwrap();
        let swapped = format!(
            "{}Content-Type: application/sdp\r\n\r\nv=0\r\n{}",
            &body[..start],
            &body[end..]
        );
        let m2 = msg("multipart/mixed;boundary=7a9cbec02ceef655", &swapped);
        assert_eq!(sdp(&m2).unwrap(), b"v=0");
    }

    #[test]
    fn body_info_dtmf() {
        assert_eq!(
            info_dtmf(&msg(
                "application/dtmf-relay",
                "Signal=5\r\nDuration=160\r\n"
            )),
            Some('5')
        );
        assert_eq!(
            info_dtmf(&msg("application/dtmf-relay", "Signal= #\r\n")),
            Some('#')
        );
        assert_eq!(
            info_dtmf(&msg("application/dtmf-relay", "Signal=11\r\n")),
            Some('#')
        );
        assert_eq!(info_dtmf(&msg("application/dtmf", "9")), Some('9'));
        assert_eq!(
            info_dtmf(&msg("application/dtmf-relay", "Signal=X\r\n")),
            None
        );
        assert_eq!(info_dtmf(&msg("text/plain", "5")), None);
    }
}
