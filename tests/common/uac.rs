//! Pieces of sipp UAC scenarios (a phone calling the daemon), shared by the test files
//! that place inbound calls. `[service]` is the called number (sipp `-s`).

/// The participant identity the daemon gives the caller `caller`.
pub fn sip_identity(caller: &str) -> String {
    format!("sip_{caller}")
}

/// The INVITE every UAC scenario starts with (scenario message index 0): PCMU and
/// telephone-event, media at `sdp_port`.
pub fn invite(caller: &str, sdp_port: &str) -> String {
    invite_with(caller, sdp_port, "")
}

/// `invite` with extra header lines (each ending in a newline), e.g. a carrier's
/// session-timer request.
pub fn invite_with(caller: &str, sdp_port: &str, extra: &str) -> String {
    format!(
        r#"  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{extra}      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio {sdp_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
    ]]>
  </send>"#
    )
}

/// The ACK of a non-2xx final response: the INVITE's branch (RFC 3261 section
/// 17.1.1.3). sipp's `[branch-N]` names the branch of the message N places earlier, so
/// the ACK at scenario index `index` gives the INVITE's (index 0) as `[branch-index]`.
pub fn non_2xx_ack(caller: &str, index: usize) -> String {
    format!(
        r#"  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-{index}]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>"#
    )
}

/// A UAC whose INVITE is refused with `status` (after optional 100/180/183), then ACKs.
pub fn uac_refused(caller: &str, status: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-refused">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="{status}"/>
{ack}
</scenario>
"#,
        invite = invite(caller, "[media_port]"),
        ack = non_2xx_ack(caller, 5)
    )
}

/// A UAC whose call is answered: INVITE (its SDP port `sdp_port`), 200, ACK, then the
/// scenario lines `then`.
pub fn uac_answered_then(name: &str, caller: &str, sdp_port: &str, then: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="{name}">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{then}
</scenario>
"#,
        invite = invite(caller, sdp_port)
    )
}

/// A UAC whose call is answered: INVITE, 200, ACK, `talk_ms` of silence, then its BYE
/// and the BYE's 200.
pub fn uac_answered_then_bye(caller: &str, talk_ms: u64) -> String {
    let then = format!(
        r#"  <pause milliseconds="{talk_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>"#
    );
    uac_answered_then("uac-answered-bye", caller, "[media_port]", &then)
}
