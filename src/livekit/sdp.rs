//! Small read-only SDP helpers on the text LiveKit sends: which track each subscriber
//! m-line carries (str0m does not update a transceiver's track id on renegotiation, so
//! the mapping is rebuilt from every offer), and what trickle candidates need (first
//! mid, ufrag). Also the trickle `candidateInit` JSON both ways.

use std::collections::HashMap;

/// One m-section as far as we care.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Section {
    pub kind: String,
    pub mid: Option<String>,
    /// `a=msid:<stream> <track>`
    pub msid: Option<(String, String)>,
    pub port_zero: bool,
}

pub(crate) fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or_default().to_string();
            let port_zero = parts.next() == Some("0");
            out.push(Section {
                kind,
                port_zero,
                ..Default::default()
            });
        } else if let Some(cur) = out.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                cur.mid = Some(mid.trim().to_string());
            } else if let Some(msid) = line.strip_prefix("a=msid:") {
                let mut p = msid.split_whitespace();
                if let (Some(s), Some(t)) = (p.next(), p.next()) {
                    cur.msid = Some((s.to_string(), t.to_string()));
                }
            }
        }
    }
    out
}

/// mid -> track sid for the audio m-lines of a subscriber offer: `mid_to_track_id` when
/// the server sent it, else the msid track id (LiveKit's msid is `<PA_sid>|<TR_sid>
/// <TR_sid>`).
pub(crate) fn subscriber_tracks(
    sdp: &str,
    mid_to_track_id: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for s in sections(sdp) {
        if s.kind != "audio" || s.port_zero {
            continue;
        }
        let Some(mid) = s.mid else { continue };
        let track = mid_to_track_id
            .get(&mid)
            .filter(|t| !t.is_empty())
            .cloned()
            .or_else(|| s.msid.map(|(_, t)| t));
        if let Some(t) = track {
            map.insert(mid, t);
        }
    }
    map
}

pub(crate) fn first_mid(sdp: &str) -> Option<String> {
    sections(sdp).into_iter().find_map(|s| s.mid)
}

pub(crate) fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.to_string())
}

/// The `candidateInit` JSON of a TrickleRequest (key casing as the browser API spells it).
pub(crate) fn candidate_init_json(candidate: &str, mid: &str, ufrag: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "candidate": candidate,
        "sdpMid": mid,
        "sdpMLineIndex": 0,
    });
    if let Some(u) = ufrag {
        v["usernameFragment"] = serde_json::Value::String(u.to_string());
    }
    v.to_string()
}

/// The candidate line (`candidate:...`) of a trickled `candidateInit`; `None` for the
/// end-of-candidates marker or JSON we cannot read.
pub(crate) fn candidate_from_init_json(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let c = v.get("candidate")?.as_str()?.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    if c.is_empty() {
        None
    } else {
        Some(c.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1 2\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\na=sctp-port:5000\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=msid:PA_x|TR_a TR_a\r\na=sendonly\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=msid:PA_y|TR_b TR_b\r\na=sendonly\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=msid:PA_z|TR_c TR_c\r\n";

    #[test]
    fn maps_mids_from_msid_and_prefers_mid_to_track_id() {
        let map = subscriber_tracks(OFFER, &HashMap::new());
        assert_eq!(map.len(), 2);
        assert_eq!(map["1"], "TR_a");
        assert_eq!(map["2"], "TR_b");
        let mut m2t = HashMap::new();
        m2t.insert("1".to_string(), "TR_override".to_string());
        let map = subscriber_tracks(OFFER, &m2t);
        assert_eq!(map["1"], "TR_override");
        assert_eq!(map["2"], "TR_b");
        assert_eq!(first_mid(OFFER).as_deref(), Some("0"));
    }

    #[test]
    fn candidate_json_round_trip() {
        let j = candidate_init_json(
            "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            "0",
            Some("abcd"),
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["sdpMid"], "0");
        assert_eq!(v["sdpMLineIndex"], 0);
        assert_eq!(v["usernameFragment"], "abcd");
        assert_eq!(
            candidate_from_init_json(&j).unwrap(),
            "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
        );
        assert_eq!(candidate_from_init_json(r#"{"candidate":""}"#), None);
    }
}
