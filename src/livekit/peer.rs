//! One str0m peer connection (publisher or subscriber) and the UDP socket it owns.
//!
//! Sans-IO discipline (str0m's single-mutation invariant): every mutation of the `Rtc`
//! is followed by [`Peer::drain`], which sends every `Transmit` on the socket and
//! collects events until str0m returns its next timeout. Time comes in from the task's
//! clock as an argument; nothing here reads a clock.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

/// Which of LiveKit's two peer connections (values are SignalTarget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Publisher = 0,
    Subscriber = 1,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}

pub(crate) struct Peer {
    pub(crate) role: Role,
    pub(crate) rtc: Rtc,
    pub(crate) socket: UdpSocket,
    local: SocketAddr,
    local_candidate: String,
    /// Set once a remote description (offer or answer) was applied: remote candidates
    /// are queued until then.
    remote_description: bool,
    queued_candidates: Vec<Candidate>,
    /// str0m's next timeout.
    pub(crate) timeout: Instant,
    pub(crate) connected: bool,
    /// The ICE ufrag our candidate was last trickled for (an ICE restart trickles again).
    pub(crate) trickled_ufrag: Option<String>,
}

impl Peer {
    pub(crate) fn new(role: Role, ip: IpAddr, now: Instant) -> Result<Peer, String> {
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind UDP on {ip}: {e}"))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| format!("UDP nonblocking: {e}"))?;
        let local = std_socket
            .local_addr()
            .map_err(|e| format!("UDP local address: {e}"))?;
        let socket = UdpSocket::from_std(std_socket).map_err(|e| format!("UDP socket: {e}"))?;
        let mut builder = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .set_ice_lite(false);
        if role == Role::Subscriber {
            // other gateways may publish G.711; never answer RED. RTP mode: the receive
            // state of each remote stream is ours (`remote_stream`), not str0m's
            // per-m-line depacketizer, which outlives the stream it was made for.
            builder = builder
                .enable_pcmu(true, false)
                .enable_pcma(true, false)
                .set_rtp_mode(true);
        }
        let mut rtc = builder.build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| format!("host candidate {local}: {e}"))?;
        let local_candidate = rtc
            .add_local_candidate(candidate)
            .map(|c| c.to_sdp_string())
            .ok_or_else(|| format!("str0m refused host candidate {local}"))?;
        let mut peer = Peer {
            role,
            rtc,
            socket,
            local,
            local_candidate,
            remote_description: false,
            queued_candidates: Vec::new(),
            timeout: now,
            connected: false,
            trickled_ufrag: None,
        };
        let mut ignored = Vec::new();
        peer.drain(&mut ignored)?;
        Ok(peer)
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// `candidate:...` line of our host candidate.
    pub(crate) fn local_candidate(&self) -> &str {
        &self.local_candidate
    }

    /// Sends all pending transmits and collects events until str0m's next timeout.
    pub(crate) fn drain(&mut self, events: &mut Vec<Event>) -> Result<(), String> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return Ok(());
                }
                Ok(Output::Transmit(t)) => {
                    // a full socket buffer drops the datagram, like a lossy network
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination)
                        && e.kind() != std::io::ErrorKind::WouldBlock
                    {
                        tracing::debug!(peer = self.role.name(), dest = %t.destination, error = %e, "UDP send failed");
                    }
                }
                Ok(Output::Event(e)) => events.push(e),
                Err(e) => return Err(format!("{} peer: {e}", self.role.name())),
            }
        }
    }

    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        if now >= self.timeout {
            self.rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| format!("{} peer timeout: {e}", self.role.name()))?;
            self.drain(events)?;
        }
        Ok(())
    }

    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        let Ok(contents) = data.try_into() else {
            return Ok(()); // not STUN/DTLS/RTP/RTCP: ignore
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            return Ok(());
        }
        self.rtc
            .handle_input(input)
            .map_err(|e| format!("{} peer input: {e}", self.role.name()))?;
        self.drain(events)
    }

    /// Applies a server offer (subscriber); returns the answer SDP.
    pub(crate) fn accept_offer(
        &mut self,
        sdp: &str,
        events: &mut Vec<Event>,
    ) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("bad offer SDP: {e}"))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("cannot answer offer: {e}"))?;
        self.drain(events)?;
        self.remote_description_applied(events)?;
        Ok(answer.to_sdp_string())
    }

    /// Applies the server's answer to our offer (publisher).
    pub(crate) fn accept_answer(
        &mut self,
        pending: SdpPendingOffer,
        sdp: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("bad answer SDP: {e}"))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("cannot apply answer: {e}"))?;
        self.drain(events)?;
        self.remote_description_applied(events)
    }

    fn remote_description_applied(&mut self, events: &mut Vec<Event>) -> Result<(), String> {
        self.remote_description = true;
        for c in std::mem::take(&mut self.queued_candidates) {
            self.rtc.add_remote_candidate(c);
            self.drain(events)?;
        }
        Ok(())
    }

    /// A trickled remote candidate (`candidate:...`). Only UDP candidates are used:
    /// str0m does no active ICE-TCP.
    pub(crate) fn add_remote_candidate(
        &mut self,
        line: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        let candidate = match Candidate::from_sdp_string(line) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = self.role.name(), candidate = line, error = %e, "ignoring unparsable candidate");
                return Ok(());
            }
        };
        if candidate.proto() != Protocol::Udp {
            return Ok(());
        }
        if self.remote_description {
            self.rtc.add_remote_candidate(candidate);
            self.drain(events)
        } else {
            self.queued_candidates.push(candidate);
            Ok(())
        }
    }
}
