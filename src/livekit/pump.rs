//! The str0m pump: datagrams and timer wake-ups into the two peer connections, and what
//! their events mean: connection up (the join completes, publishing can start), ICE or
//! DTLS down (the lifecycle's grace period), remote media to the receiver, data channel
//! traffic to the data channels.

use std::collections::VecDeque;
use std::net::SocketAddr;

use str0m::Event as RtcEvent;
use str0m::IceConnectionState;
use str0m::format::Codec;
use str0m::rtp::RtpPacket;

use super::ParticipantEvent;
use super::audio::RemoteCodec;
use super::data;
use super::lifecycle::Input;
use super::peer::{Peer, Role};
use super::session::{Failure, Session, Step, now};

impl Session {
    pub(super) fn peer(&mut self, role: Role) -> &mut Peer {
        match role {
            Role::Publisher => &mut self.publisher,
            Role::Subscriber => &mut self.subscriber,
        }
    }

    /// The earliest timer is due: the lifecycle's (keep-alive, grace), the receiver's
    /// (reorder waits, stall checks), then str0m's.
    pub(super) async fn on_timeout(&mut self) -> Step {
        let t = now();
        self.lifecycle.handle_timeout(t);
        if !self.lifecycle.is_connected() {
            return Ok(());
        }
        if t >= self.receiver.poll_timeout() {
            let (mut frames, mut stalls) = (Vec::new(), Vec::new());
            self.receiver
                .handle_timeout(t, self.roster.audio_expected(), &mut frames, &mut stalls);
            self.deliver_audio(frames);
            for change in stalls {
                self.report_stall(change);
            }
        }
        let mut events = Vec::new();
        self.publisher
            .handle_timeout(t, &mut events)
            .map_err(Failure::Peer)?;
        self.process_rtc_events(Role::Publisher, std::mem::take(&mut events))
            .await?;
        self.subscriber
            .handle_timeout(t, &mut events)
            .map_err(Failure::Peer)?;
        self.process_rtc_events(Role::Subscriber, events).await
    }

    pub(super) async fn on_datagram(
        &mut self,
        role: Role,
        r: std::io::Result<(usize, SocketAddr)>,
    ) -> Step {
        let (n, source) = match r {
            Ok(x) => x,
            Err(e) => {
                // e.g. ICMP port unreachable surfaced on Linux: not fatal
                tracing::debug!(peer = role.name(), error = %e, "UDP receive error");
                return Ok(());
            }
        };
        let mut events = Vec::new();
        let t = now();
        let result = match role {
            Role::Publisher => {
                self.publisher
                    .handle_datagram(t, source, &self.pub_buf[..n], &mut events)
            }
            Role::Subscriber => {
                self.subscriber
                    .handle_datagram(t, source, &self.sub_buf[..n], &mut events)
            }
        };
        result.map_err(Failure::Peer)?;
        self.process_rtc_events(role, events).await
    }

    /// What str0m reported, in order; events that handling them brings (a data channel
    /// that opens sends what waited for it) are handled after them.
    pub(super) async fn process_rtc_events(&mut self, role: Role, events: Vec<RtcEvent>) -> Step {
        let mut queue: VecDeque<RtcEvent> = events.into();
        while let Some(ev) = queue.pop_front() {
            match ev {
                RtcEvent::Connected => {
                    tracing::debug!(peer = role.name(), "peer connection up (ICE + DTLS)");
                    self.peer(role).connected = true;
                    match role {
                        Role::Subscriber => {
                            if let Some(active) = self.active.take() {
                                let _ = active.send(Ok(()));
                            }
                            self.lifecycle.handle_input(now(), Input::Active);
                        }
                        Role::Publisher => self.emit(ParticipantEvent::PublisherConnected).await,
                    }
                }
                RtcEvent::IceConnectionStateChange(state) => {
                    tracing::debug!(peer = role.name(), ?state, "ICE state");
                    match state {
                        IceConnectionState::Disconnected => self.peer_went_down(
                            role,
                            format!("{} ICE disconnected", role.name()),
                            true,
                        ),
                        // back (e.g. after an ICE restart)
                        IceConnectionState::Connected | IceConnectionState::Completed => {
                            self.lifecycle.handle_input(now(), Input::PeerUp(role));
                        }
                        _ => {}
                    }
                }
                RtcEvent::MediaAdded(m) => {
                    tracing::debug!(peer = role.name(), mid = %m.mid, kind = ?m.kind, dir = ?m.direction, "media added");
                }
                RtcEvent::RtpPacket(packet) if role == Role::Subscriber => self.on_rtp(packet),
                RtcEvent::ChannelOpen(id, label) => {
                    tracing::debug!(peer = role.name(), %label, "data channel open");
                    if role == Role::Publisher {
                        let mut more = Vec::new();
                        self.data
                            .opened(id, &mut self.publisher, &mut more)
                            .map_err(Failure::Peer)?;
                        queue.extend(more);
                    }
                }
                RtcEvent::ChannelData(cd) => {
                    // downlink data arrives on the subscriber channels
                    if let Some(ev) = data::received(&cd.data) {
                        self.emit(ev).await;
                    }
                }
                RtcEvent::ChannelClose(id) if role == Role::Publisher => self.data.closed(id),
                RtcEvent::Closed => {
                    self.peer_went_down(
                        role,
                        format!("{} DTLS/SCTP closed by the server", role.name()),
                        false,
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A remote audio packet (subscriber, RTP mode): its m-line and codec from str0m,
    /// the rest is the receiver's.
    fn on_rtp(&mut self, packet: RtpPacket) {
        let ssrc = packet.header.ssrc;
        let Some(mid) = self
            .subscriber
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| s.mid())
        else {
            return;
        };
        let pt = packet.header.payload_type;
        let codec = self
            .subscriber
            .rtc
            .codec_config()
            .iter()
            .find(|p| p.pt() == pt)
            .map(|p| p.spec().codec);
        let codec = match codec {
            Some(Codec::Opus) => RemoteCodec::Opus,
            Some(Codec::PCMU) => RemoteCodec::Pcmu,
            Some(Codec::PCMA) => RemoteCodec::Pcma,
            _ => return,
        };
        let mut frames = Vec::new();
        let roster = &self.roster;
        self.receiver.packet(
            now(),
            &mid,
            *ssrc,
            packet.header.sequence_number,
            codec,
            &packet.payload,
            |track| roster.track(track).map(|t| t.participant_identity.clone()),
            &mut frames,
        );
        self.deliver_audio(frames);
    }

    fn peer_went_down(&mut self, role: Role, why: String, ice_only: bool) {
        if !self.lifecycle.peer_down() {
            tracing::debug!(%why, "peer connection down; waiting briefly for the server's reason");
        }
        self.lifecycle.handle_input(
            now(),
            Input::PeerDown {
                role,
                why,
                ice_only,
            },
        );
    }
}
