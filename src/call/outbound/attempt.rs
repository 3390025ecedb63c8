//! One try of an outbound call through one trunk (part of `call::outbound`): the trunk
//! as a target, the INVITE's client transaction, the INVITE itself (our offer, the
//! session-timer request, credentials once challenged, the trunk's headers and the
//! attributes it maps to headers) and its CANCEL; which failures move the call to the
//! backup trunk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::super::attributes;
use super::super::shell::{Shell, now};
use crate::config::{Config, HeaderMapping, Transport, Trunk};
use crate::sip::admission::{ALLOW, SUPPORTED};
use crate::sip::build::{self, Outgoing};
use crate::sip::dialog::Dialog;
use crate::sip::digest::{self, Challenge};
use crate::sip::incoming::{Incoming, SipEvent};
use crate::sip::session_timer::{self as st, Settings};
use crate::sip::transaction::{ClientInvite, ClientInviteState, ClientNonInvite, Timers};
use crate::sip::transport::{Flow, Transports};
use crate::sip::txkey::ClientKey;

/// A trunk to try: its name and where to send.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) trunk: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) transport: Transport,
    pub(crate) from_number: Option<String>,
    pub(crate) auth: Option<(String, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) early_media: bool,
    /// The trunk's header options (2xx headers to attributes, attributes to INVITE
    /// headers).
    pub(crate) mapping: HeaderMapping,
    /// The trunk's phone codecs, preferred first.
    pub(crate) codecs: Vec<crate::config::Codec>,
    /// The trunk's `media_encryption`.
    pub(crate) encryption: crate::config::MediaEncryption,
}

impl Target {
    pub(crate) fn of(t: &Trunk) -> Option<Target> {
        let o = t.outbound.as_ref()?;
        let transport = o.target.transport.unwrap_or(o.transport);
        Some(Target {
            trunk: t.name.clone(),
            host: o.target.host.clone(),
            port: o.target.port.unwrap_or(transport.default_port()),
            transport,
            from_number: o.from_number.clone(),
            auth: o
                .auth
                .as_ref()
                .map(|a| (a.username.clone(), a.password.expose().to_string())),
            headers: o.headers.clone(),
            early_media: o.early_media,
            mapping: o.mapping.clone(),
            codecs: t.codecs.clone(),
            encryption: t.media_encryption,
        })
    }

    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether a final status (or its absence) moves the call to the backup trunk (design
/// section 4): a timeout, 408, 5xx and 6xx.
pub fn fails_over(status: u16) -> bool {
    status == 408 || (500..700).contains(&status)
}

/// The first challenge of a 401/407 whose algorithm we support, SHA-256 preferred.
fn pick_challenge(resp: &Incoming) -> Option<(Challenge, bool)> {
    let proxy = resp.status() == 407;
    let name = if proxy {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let mut all: Vec<Challenge> = resp
        .msg
        .headers_named(name)
        .filter_map(|v| Challenge::parse(v).ok())
        .collect();
    all.sort_by_key(|c| match c.algorithm {
        digest::Algorithm::Sha256 => 0,
        _ => 1,
    });
    all.into_iter().next().map(|c| (c, proxy))
}

/// Digest answers to one INVITE at most (after the first, only for a stale nonce).
const MAX_AUTH_TRIES: u32 = 3;
/// INVITEs re-sent with a larger session interval after a 422 (RFC 4028 section 7.4).
const MAX_422_RETRIES: u32 = 2;
/// How long a CANCEL waits for the INVITE's final response.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// What became of a 401/407.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenged {
    /// Answered: the INVITE went again with credentials.
    Resent,
    /// Our credentials were refused (challenged again, not for a stale nonce).
    Refused,
    /// Credentials asked, none configured.
    NoCredentials,
    /// No challenge with an algorithm we support.
    Unsupported,
}

/// One try through one trunk: the INVITE's client transaction and what a retry needs.
pub(crate) struct Attempt {
    pub(crate) target: Target,
    pub(crate) flow: Flow,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) ruri: String,
    pub(crate) cseq: u32,
    /// The INVITE's transaction key (branch, method INVITE).
    pub(crate) key: ClientKey,
    pub(crate) tx: ClientInvite,
    /// The INVITE as sent (for CANCEL, and the ACK of a non-2xx).
    pub(crate) invite: Outgoing,
    pub(crate) authorization: Option<(bool, String)>,
    pub(crate) auth_tries: u32,
    /// The session timer of this trunk, and the interval the INVITE asks (raised by 422).
    pub(crate) timer: Settings,
    pub(crate) session_expires: u32,
    pub(crate) retries_422: u32,
    pub(crate) provisional: bool,
    /// Anything came back for this INVITE (even 100 Trying).
    pub(crate) responded: bool,
    pub(crate) sent_at: Instant,
    pub(crate) cancel: Option<(ClientKey, ClientNonInvite)>,
}

impl Attempt {
    pub(crate) fn new(
        target: Target,
        flow: Flow,
        from: String,
        to: String,
        ruri: String,
        timer: Settings,
        timers: Timers,
    ) -> Attempt {
        Attempt {
            target,
            flow,
            from,
            to,
            ruri,
            cseq: 0,
            key: ClientKey::new("", "INVITE"),
            tx: ClientInvite::new(now(), true, timers, Vec::new()),
            invite: Outgoing::request("INVITE", "sip:x"),
            authorization: None,
            auth_tries: 0,
            timer,
            session_expires: timer.expires,
            retries_422: 0,
            provisional: false,
            responded: false,
            sent_at: now(),
            cancel: None,
        }
    }

    /// (Re)sends the INVITE: a new CSeq and branch, its credentials if challenged,
    /// the session-timer request, the trunk's headers, then `extra` (the request's), then
    /// the trunk's `attributes_to_headers` from the participant's `attributes`.
    pub(crate) fn send_invite(
        &mut self,
        shell: &Shell,
        extra: &[(String, String)],
        attributes: &HashMap<String, String>,
    ) {
        self.cseq += 1;
        let branch = build::new_branch();
        self.key = ClientKey::new(&branch, "INVITE");
        let ep = &shell.ctx.endpoint;
        let sdp = shell
            .media
            .as_ref()
            .map(|m| m.sdp.clone())
            .unwrap_or_default();
        let mut out =
            Outgoing::request("INVITE", &self.ruri).header("Via", ep.via(&self.flow, &branch));
        out.push("Max-Forwards", "70");
        out.push("From", &self.from);
        out.push("To", &self.to);
        out.push("Call-ID", shell.call_id());
        out.push("CSeq", format!("{} INVITE", self.cseq));
        out.push("Contact", ep.contact(&self.flow));
        out.push("Allow", ALLOW);
        out.push("User-Agent", &ep.user_agent);
        if self.timer.enabled {
            out.push("Supported", SUPPORTED);
            for (h, v) in st::request_headers(self.session_expires, self.timer.min_se, false) {
                out.push(h, v);
            }
        }
        if let Some((proxy, value)) = &self.authorization {
            let name = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            out.push(name, value);
        }
        for (k, v) in self.target.headers.iter().chain(extra.iter()) {
            out.push(k, v);
        }
        for (k, v) in attributes::to_headers(attributes, &self.target.mapping.attributes_to_headers)
        {
            out.push(&k, v);
        }
        let out = out.body("application/sdp", sdp);
        self.tx = ClientInvite::new(
            now(),
            self.flow.is_reliable(),
            shell.ctx.timers,
            out.to_bytes(),
        );
        self.invite = out;
        self.flow.drive(&mut self.tx, now());
    }

    /// A response for this call: the CANCEL's goes to its transaction; the INVITE's to
    /// its transaction (which ACKs a failure and absorbs retransmissions). Some(status)
    /// when the INVITE's response is for the caller to act on.
    pub(crate) fn take_response(&mut self, resp: &Incoming) -> Option<u16> {
        let key = resp.client_key();
        if key != self.key {
            // RFC 3261 section 17.1.3: the CANCEL's answer (same branch, method CANCEL),
            // or one for an earlier INVITE of this call
            if let Some((k, tx)) = self.cancel.as_mut()
                && *k == key
            {
                tx.on_response(resp.at, resp.status());
            }
            return None;
        }
        let status = resp.status();
        self.responded = true;
        let to_tu = {
            let (invite, msg) = (&self.invite, &resp.msg);
            self.tx.on_response(resp.at, status, || {
                build::ack_for_failure(invite, msg).to_bytes()
            })
        };
        self.flow.drive(&mut self.tx, now());
        if (101..200).contains(&status) {
            self.provisional = true;
        }
        to_tu.then_some(status)
    }

    /// A 401/407: answered with `credentials` once (again only for a stale nonce, at most
    /// `MAX_AUTH_TRIES` in all); the INVITE goes again.
    pub(crate) fn answer_challenge(
        &mut self,
        shell: &Shell,
        resp: &Incoming,
        credentials: Option<&(String, String)>,
        extra: &[(String, String)],
        attributes: &HashMap<String, String>,
    ) -> Challenged {
        let Some((user, pass)) = credentials else {
            return Challenged::NoCredentials;
        };
        let Some((challenge, proxy)) = pick_challenge(resp) else {
            return Challenged::Unsupported;
        };
        if !((self.auth_tries == 0 || challenge.stale) && self.auth_tries < MAX_AUTH_TRIES) {
            return Challenged::Refused;
        }
        self.auth_tries += 1;
        let cnonce = build::new_tag();
        let value = digest::answer(&challenge, "INVITE", &self.ruri, user, pass, &cnonce, 1);
        self.authorization = Some((proxy, value));
        self.send_invite(shell, extra, attributes);
        Challenged::Resent
    }

    /// A 422: the INVITE again with the interval it asks (RFC 4028 section 7.4), at most
    /// `MAX_422_RETRIES` times; the new interval, or None when the call cannot go on.
    pub(crate) fn retry_422(
        &mut self,
        shell: &Shell,
        resp: &Incoming,
        extra: &[(String, String)],
        attributes: &HashMap<String, String>,
    ) -> Option<u32> {
        let secs = st::retry_after_422(self.session_expires, &resp.msg)
            .filter(|_| self.retries_422 < MAX_422_RETRIES)?;
        self.retries_422 += 1;
        self.session_expires = secs;
        self.send_invite(shell, extra, attributes);
        Some(secs)
    }

    /// A 2xx (`take_response` said so): the dialog it makes is confirmed on the shell's
    /// leg, which ACKs it (and its retransmissions); a CANCEL of ours is done with. Err
    /// when the 2xx makes no dialog we can use.
    pub(crate) fn confirm(&mut self, shell: &mut Shell, resp: &Incoming) -> Result<(), String> {
        let call_id = shell.call_id();
        let Some(leg) = shell.leg.as_mut() else {
            return Err("no leg".into());
        };
        let dialog = Dialog::uac(&call_id, &self.from, leg.local_tag(), self.cseq, &resp.msg)?;
        leg.confirm_uac(now(), dialog, self.key.clone(), self.cseq, &resp.msg);
        self.cancel = None;
        shell.flush();
        Ok(())
    }

    /// CANCELs the ringing INVITE (RFC 3261 section 9.1) through a transaction of its
    /// own, and waits (`CANCEL_WAIT` at most) for the INVITE's final response: a failure
    /// (the 487) is ACKed by the INVITE's transaction; a 2xx that crossed the CANCEL is
    /// for the caller to `confirm` and then hang up (section 15). Without a provisional
    /// response yet nothing is sent (a CANCEL could overtake its INVITE). The final
    /// response, if one came.
    pub(crate) async fn cancel(&mut self, shell: &mut Shell) -> Option<Incoming> {
        if !self.provisional {
            return None;
        }
        let c = self.cancel_request(&shell.call_id());
        let mut tx = ClientNonInvite::new(
            now(),
            self.flow.is_reliable(),
            shell.ctx.timers,
            c.to_bytes(),
        );
        self.flow.drive(&mut tx, now());
        self.cancel = Some((ClientKey::new(&self.key.branch, "CANCEL"), tx));
        let deadline = now() + CANCEL_WAIT;
        while now() < deadline
            && !matches!(
                self.tx.state(),
                ClientInviteState::Completed | ClientInviteState::Terminated
            )
        {
            let wait = (now() + Duration::from_millis(50)).min(deadline);
            if let Some(SipEvent::Response(resp)) = shell.next_sip(wait).await
                && self.take_response(&resp).is_some_and(|s| s >= 200)
            {
                return Some(resp);
            }
            self.flow.drive(&mut self.tx, now());
            if let Some((_, tx)) = self.cancel.as_mut() {
                self.flow.drive(tx, now());
            }
        }
        None
    }

    /// The CANCEL of the INVITE (RFC 3261 section 9.1): its Request-URI, top Via, From,
    /// To, Call-ID and CSeq number.
    fn cancel_request(&self, call_id: &str) -> Outgoing {
        let mut c = Outgoing::request("CANCEL", &self.ruri);
        if let Some(v) = self.invite.get("Via") {
            c.push("Via", v);
        }
        c.push("Max-Forwards", "70");
        c.push("From", &self.from);
        c.push("To", &self.to);
        c.push("Call-ID", call_id);
        c.push("CSeq", format!("{} CANCEL", self.cseq));
        c.push("Reason", "SIP;cause=487;text=\"ringing timeout\"");
        c
    }
}

/// The trunks to try for `trunk`: it, then its backup; a trunk known to be down
/// (OPTIONS health) goes after one that is not.
pub(crate) fn targets(
    cfg: &Config,
    trunk: &str,
    states: Option<&watch::Receiver<crate::trunk::monitor::States>>,
) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(t) = cfg.trunk(trunk) {
        if let Some(x) = Target::of(t) {
            out.push(x);
        }
        if let Some(b) = t.backup.as_deref().and_then(|b| cfg.trunk(b))
            && let Some(x) = Target::of(b)
        {
            out.push(x);
        }
    }
    if out.len() == 2
        && let Some(states) = states
    {
        let states = states.borrow();
        let down = |name: &str| {
            states
                .get(name)
                .is_some_and(|s| matches!(s.health, crate::trunk::monitor::Health::Down { .. }))
        };
        if down(&out[0].trunk) && !down(&out[1].trunk) {
            tracing::info!(primary = %out[0].trunk, backup = %out[1].trunk,
                "the primary trunk is down (OPTIONS); trying the backup first");
            out.swap(0, 1);
        }
    }
    out
}

/// A flow to `target`: its address resolved (3 s at most), over its transport.
pub(crate) async fn flow_to(transports: &Transports, target: &Target) -> Result<Flow, String> {
    let addr: SocketAddr = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, target.port),
        Err(_) => tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::lookup_host(target.host_port()),
        )
        .await
        .map_err(|_| format!("resolving {} timed out", target.host))?
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))?,
    };
    match target.transport {
        Transport::Udp => transports
            .udp_flow(addr)
            .ok_or_else(|| "no UDP listener".to_string()),
        t => transports.connect(t, addr, &target.host).await,
    }
}
