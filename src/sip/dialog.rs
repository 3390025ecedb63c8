//! SIP dialog state (RFC 3261 section 12), sans-IO: the identifiers, route set, remote
//! target and CSeq spaces of one dialog, as the UAS of an inbound INVITE (section 12.1.1)
//! or the UAC of an outbound one (section 12.1.2); matching in-dialog requests (section
//! 12.2.2) and building our own (section 12.2.1.1). Tests: `dialog_*`.

use std::net::{IpAddr, SocketAddr};

use super::build::Outgoing;
use super::message::Message;
use super::uri::{self, NameAddr, Uri};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our side as a header value (with our tag): the To of an inbound INVITE, the From
    /// of an outbound one.
    pub local: String,
    /// The peer as a header value (with its tag).
    pub remote: String,
    /// The peer's Contact URI.
    pub remote_target: String,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<String>,
    /// Our last CSeq number.
    pub local_cseq: u32,
    /// The peer's last CSeq number.
    pub remote_cseq: Option<u32>,
}

/// Where an in-dialog request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The URI whose host and port to send to (first route if loose, else the target).
    pub uri: Uri,
    /// An IP address to use instead of the URI's (the peer's source address, when its
    /// Contact names a private address that is not where it sends from: NAT).
    pub nat: Option<SocketAddr>,
}

fn first_uri(v: &str) -> Option<String> {
    NameAddr::parse(uri::split_list(v).first()?)
        .ok()
        .map(|n| n.uri_text)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_link_local() || a.is_shared_cgnat(),
        IpAddr::V6(a) => a.is_unique_local() || a.is_unicast_link_local(),
    }
}

trait Cgnat {
    fn is_shared_cgnat(&self) -> bool;
}

impl Cgnat for std::net::Ipv4Addr {
    /// 100.64.0.0/10 (RFC 6598).
    fn is_shared_cgnat(&self) -> bool {
        let o = self.octets();
        o[0] == 100 && (o[1] & 0xc0) == 64
    }
}

impl Dialog {
    /// The dialog a 2xx to `invite` creates on our side, UAS (section 12.1.1): route set
    /// from Record-Route in order, remote target from Contact, remote CSeq from the INVITE.
    pub fn uas(invite: &Message, local_tag: &str) -> Result<Dialog, String> {
        let from = invite.header("From").ok_or("no From")?;
        let to = invite.header("To").ok_or("no To")?;
        let remote_tag = NameAddr::parse(from)
            .map_err(|e| e.to_string())?
            .tag()
            .unwrap_or("")
            .to_string();
        let remote_target = invite
            .header("Contact")
            .and_then(first_uri)
            .ok_or("the INVITE has no usable Contact")?;
        let route_set = invite
            .headers_named("Record-Route")
            .flat_map(uri::split_list)
            .map(str::to_string)
            .collect();
        Ok(Dialog {
            call_id: invite.header("Call-ID").ok_or("no Call-ID")?.to_string(),
            local_tag: local_tag.to_string(),
            remote_tag,
            local: format!("{to};tag={local_tag}"),
            remote: from.to_string(),
            remote_target,
            route_set,
            local_cseq: rand::random_range(1..10_000),
            remote_cseq: invite.cseq().map(|(n, _)| n),
        })
    }

    /// The dialog a 2xx to our INVITE creates, UAC (section 12.1.2): route set from the
    /// response's Record-Route in reverse, remote target from its Contact.
    pub fn uac(
        call_id: &str,
        local: &str,
        local_tag: &str,
        invite_cseq: u32,
        response: &Message,
    ) -> Result<Dialog, String> {
        let to = response.header("To").ok_or("no To")?;
        let remote_tag = NameAddr::parse(to)
            .map_err(|e| e.to_string())?
            .tag()
            .ok_or("the 2xx has no To tag")?
            .to_string();
        let remote_target = response
            .header("Contact")
            .and_then(first_uri)
            .ok_or("the 2xx has no usable Contact")?;
        let mut route_set: Vec<String> = response
            .headers_named("Record-Route")
            .flat_map(uri::split_list)
            .map(str::to_string)
            .collect();
        route_set.reverse();
        Ok(Dialog {
            call_id: call_id.to_string(),
            local_tag: local_tag.to_string(),
            remote_tag,
            local: local.to_string(),
            remote: to.to_string(),
            remote_target,
            route_set,
            local_cseq: invite_cseq,
            remote_cseq: None,
        })
    }

    /// Whether an incoming request belongs to this dialog (section 12.2.2): Call-ID, the
    /// To tag is ours and the From tag the peer's.
    pub fn matches(&self, req: &Message) -> bool {
        let tag = |h: &str| {
            req.header(h)
                .and_then(|v| NameAddr::parse(v).ok())
                .and_then(|n| n.tag().map(str::to_string))
        };
        req.header("Call-ID") == Some(self.call_id.as_str())
            && tag("To").as_deref() == Some(self.local_tag.as_str())
            && tag("From").as_deref() == Some(self.remote_tag.as_str())
    }

    /// Section 12.2.2: a CSeq lower than the last one is refused with 500; a new request
    /// raises the remote CSeq. Returns false for an out-of-order request.
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        match self.remote_cseq {
            Some(last) if cseq < last => false,
            _ => {
                self.remote_cseq = Some(cseq);
                true
            }
        }
    }

    /// A target refresh (re-INVITE, UPDATE) may change the remote target (section 12.2.2).
    pub fn refresh_target(&mut self, req: &Message) {
        if let Some(t) = req.header("Contact").and_then(first_uri) {
            self.remote_target = t;
        }
    }

    /// A new request in this dialog (section 12.2.1.1): Request-URI the remote target (or
    /// the first route when it is a strict router), Route, From/To/Call-ID, the next CSeq.
    pub fn request(&mut self, method: &str, via: &str, contact: &str) -> Outgoing {
        if method != "ACK" && method != "CANCEL" {
            self.local_cseq += 1;
        }
        let (ruri, routes) = self.request_target();
        let mut out = Outgoing::request(method, &ruri).header("Via", via);
        out.push("Max-Forwards", "70");
        for r in routes {
            out.push("Route", r);
        }
        out.push("From", &self.local);
        out.push("To", &self.remote);
        out.push("Call-ID", &self.call_id);
        out.push("CSeq", format!("{} {method}", self.local_cseq));
        if matches!(
            method,
            "INVITE" | "UPDATE" | "SUBSCRIBE" | "NOTIFY" | "REFER"
        ) {
            out.push("Contact", contact);
        }
        out
    }

    /// The Request-URI and Route headers of a request in this dialog (section 12.2.1.1):
    /// the remote target and the route set, or with a strict router (RFC 2543) first,
    /// that router as the Request-URI and the target as the last route.
    pub fn request_target(&self) -> (String, Vec<String>) {
        let loose = self
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r).ok())
            .and_then(|n| n.uri().ok())
            .is_none_or(|u| u.params.has("lr"));
        if loose {
            (self.remote_target.clone(), self.route_set.clone())
        } else {
            // strict router (RFC 2543): it becomes the Request-URI, the target the last route
            let first = first_uri(&self.route_set[0]).unwrap_or_default();
            let mut rest: Vec<String> = self.route_set[1..].to_vec();
            rest.push(format!("<{}>", self.remote_target));
            (first, rest)
        }
    }

    /// Where requests of this dialog go; `source` is where the peer's INVITE (or 2xx)
    /// came from, used when its Contact is a private address it does not send from.
    pub fn destination(&self, source: SocketAddr) -> Result<Destination, String> {
        let first = match self.route_set.first() {
            Some(r) => first_uri(r).ok_or("bad Route")?,
            None => self.remote_target.clone(),
        };
        let uri = Uri::parse(&first).map_err(|e| e.to_string())?;
        let nat = match uri.ip() {
            Some(ip) if ip != source.ip() && is_private(ip) && !is_private(source.ip()) => {
                Some(source)
            }
            _ => None,
        };
        Ok(Destination { uri, nat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn invite(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:+15550100@203.0.113.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\n\
             From: \"Alice\" <sip:+15550111@carrier.example>;tag=ft\r\n\
             To: <sip:+15550100@203.0.113.1>\r\n\
             Call-ID: cid-1\r\n\
             CSeq: 10 INVITE\r\n\
             Contact: <sip:gw@10.1.2.3:5070>\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn dialog_uas_from_invite() {
        let d = Dialog::uas(
            &invite("Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"),
            "lt",
        )
        .unwrap();
        assert_eq!(d.remote_tag, "ft");
        assert_eq!(d.local, "<sip:+15550100@203.0.113.1>;tag=lt");
        assert_eq!(d.remote_target, "sip:gw@10.1.2.3:5070");
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        );
        assert_eq!(d.remote_cseq, Some(10));
    }

    #[test]
    fn dialog_bye_request_and_matching() {
        let mut d = Dialog::uas(&invite("Record-Route: <sip:p1.example;lr>\r\n"), "lt").unwrap();
        let c0 = d.local_cseq;
        let bye = d.request(
            "BYE",
            "SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKb",
            "<sip:r@x>",
        );
        let m = message::parse(&bye.to_bytes()).unwrap();
        assert!(
            matches!(&m.start, message::StartLine::Request { uri, .. } if uri == "sip:gw@10.1.2.3:5070")
        );
        assert_eq!(m.header("Route"), Some("<sip:p1.example;lr>"));
        assert_eq!(m.header("From"), Some("<sip:+15550100@203.0.113.1>;tag=lt"));
        assert_eq!(
            m.header("To"),
            Some("\"Alice\" <sip:+15550111@carrier.example>;tag=ft")
        );
        assert_eq!(m.cseq(), Some((c0 + 1, "BYE")));
        assert_eq!(m.header("Contact"), None);
        // the peer's BYE to us matches; a forged one with another tag does not
        let theirs = "BYE sip:r@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK2\r\n\
            From: <sip:+15550111@carrier.example>;tag=ft\r\nTo: <sip:+15550100@203.0.113.1>;tag=lt\r\n\
            Call-ID: cid-1\r\nCSeq: 11 BYE\r\nContent-Length: 0\r\n\r\n";
        assert!(d.matches(&message::parse(theirs.as_bytes()).unwrap()));
        let forged = theirs.replace("tag=ft", "tag=evil");
        assert!(!d.matches(&message::parse(forged.as_bytes()).unwrap()));
        assert!(d.accept_remote_cseq(11));
        assert!(
            !d.accept_remote_cseq(5),
            "section 12.2.2: lower CSeq refused"
        );
    }

    #[test]
    fn dialog_destination_and_nat() {
        let d = Dialog::uas(&invite(""), "lt").unwrap();
        let public: SocketAddr = "198.51.100.7:5060".parse().unwrap();
        let dest = d.destination(public).unwrap();
        assert_eq!(dest.uri.host, "10.1.2.3");
        assert_eq!(dest.nat, Some(public), "private Contact behind NAT");
        let local: SocketAddr = "10.1.2.3:5070".parse().unwrap();
        assert_eq!(d.destination(local).unwrap().nat, None);
        let d = Dialog::uas(
            &invite("Record-Route: <sip:198.51.100.9:5080;lr>\r\n"),
            "lt",
        )
        .unwrap();
        let dest = d.destination(public).unwrap();
        assert_eq!(
            (dest.uri.host.as_str(), dest.uri.port),
            ("198.51.100.9", Some(5080))
        );
    }

    #[test]
    fn dialog_strict_router() {
        let mut d = Dialog::uas(&invite("Record-Route: <sip:strict.example>\r\n"), "lt").unwrap();
        let r = d.request("BYE", "SIP/2.0/UDP h;branch=z9hG4bKs", "<sip:r@x>");
        assert_eq!(r.start, "BYE sip:strict.example SIP/2.0");
        assert_eq!(r.get("Route"), Some("<sip:gw@10.1.2.3:5070>"));
    }

    #[test]
    fn dialog_uac_from_2xx() {
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK9\r\n\
            From: <sip:+15550100@203.0.113.1>;tag=mine\r\nTo: <sip:+15550199@carrier.example>;tag=theirs\r\n\
            Call-ID: out-1\r\nCSeq: 1 INVITE\r\nContact: <sip:callee@198.51.100.8>\r\n\
            Record-Route: <sip:a;lr>\r\nRecord-Route: <sip:b;lr>\r\nContent-Length: 0\r\n\r\n";
        let m = message::parse(resp.as_bytes()).unwrap();
        let d = Dialog::uac(
            "out-1",
            "<sip:+15550100@203.0.113.1>;tag=mine",
            "mine",
            1,
            &m,
        )
        .unwrap();
        assert_eq!(d.remote_tag, "theirs");
        assert_eq!(d.route_set, vec!["<sip:b;lr>", "<sip:a;lr>"]);
        assert_eq!(d.remote_target, "sip:callee@198.51.100.8");
    }
}
