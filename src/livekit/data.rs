//! The data channels: ours (`_reliable` ordered, `_lossy` unordered without
//! retransmissions) on the publisher connection, which is where the server reads uplink
//! data; DataPackets from the room (DTMF and user data) arrive on the channels the
//! server opens on the subscriber connection. Packets sent before their channel is open
//! wait in a small queue.

use livekit_protocol as proto;
use prost::Message as _;
use str0m::Event as RtcEvent;
use str0m::change::SdpApi;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};

use super::ParticipantEvent;
use super::peer::Peer;

/// Data packets held until their channel opens (a call is not a file transfer).
const PENDING_DATA_MAX: usize = 64;

#[derive(Debug, Default)]
pub(super) struct DataChannels {
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    reliable_open: bool,
    lossy_open: bool,
    /// DataPacket.sequence of the last reliable packet (the server drops reliable
    /// packets whose sequence does not increase).
    sequence: u32,
    /// Encoded packets (and whether reliable) waiting for their channel.
    pending: Vec<(Vec<u8>, bool)>,
}

impl DataChannels {
    /// Adds both channels to the publisher's first offer.
    pub(super) fn add_to_offer(&mut self, api: &mut SdpApi<'_>) {
        self.reliable = Some(api.add_channel_with_config(ChannelConfig {
            label: "_reliable".into(),
            ordered: true,
            reliability: Reliability::Reliable,
            ..Default::default()
        }));
        self.lossy = Some(api.add_channel_with_config(ChannelConfig {
            label: "_lossy".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..Default::default()
        }));
    }

    /// A new session (full rejoin): new channels, sequence from 1 again. Queued packets
    /// are kept for the new channels.
    pub(super) fn reset(&mut self) {
        self.reliable = None;
        self.lossy = None;
        self.reliable_open = false;
        self.lossy_open = false;
        self.sequence = 0;
    }

    /// A publisher channel opened: sends what waited for it. str0m's events on the way
    /// go to `events` (as for every write below).
    pub(super) fn opened(
        &mut self,
        id: ChannelId,
        publisher: &mut Peer,
        events: &mut Vec<RtcEvent>,
    ) -> Result<(), String> {
        if Some(id) == self.reliable {
            self.reliable_open = true;
        } else if Some(id) == self.lossy {
            self.lossy_open = true;
        }
        self.flush(publisher, events)
    }

    pub(super) fn closed(&mut self, id: ChannelId) {
        if Some(id) == self.reliable {
            self.reliable_open = false;
        } else if Some(id) == self.lossy {
            self.lossy_open = false;
        }
    }

    /// Sends `value` from us (`identity`, `sid`) on the reliable or the lossy channel.
    pub(super) fn send(
        &mut self,
        publisher: &mut Peer,
        identity: &str,
        sid: &str,
        value: proto::data_packet::Value,
        reliable: bool,
        events: &mut Vec<RtcEvent>,
    ) -> Result<(), String> {
        let sequence = if reliable {
            self.sequence += 1;
            self.sequence
        } else {
            0
        };
        #[allow(deprecated)]
        let packet = proto::DataPacket {
            kind: if reliable {
                proto::data_packet::Kind::Reliable as i32
            } else {
                proto::data_packet::Kind::Lossy as i32
            },
            participant_identity: identity.to_string(),
            participant_sid: sid.to_string(),
            sequence,
            value: Some(value),
            ..Default::default()
        };
        let bytes = packet.encode_to_vec();
        if !self.is_open(reliable) || !self.pending.is_empty() {
            if self.pending.len() < PENDING_DATA_MAX {
                self.pending.push((bytes, reliable));
            } else {
                tracing::debug!("data channel not open; queue full, packet dropped");
            }
            return self.flush(publisher, events);
        }
        self.write(publisher, &bytes, reliable, events)
    }

    fn is_open(&self, reliable: bool) -> bool {
        if reliable {
            self.reliable_open
        } else {
            self.lossy_open
        }
    }

    /// Sends queued packets whose channel is open, in order.
    fn flush(&mut self, publisher: &mut Peer, events: &mut Vec<RtcEvent>) -> Result<(), String> {
        while let Some((_, reliable)) = self.pending.first() {
            if !self.is_open(*reliable) {
                break;
            }
            let (bytes, reliable) = self.pending.remove(0);
            self.write(publisher, &bytes, reliable, events)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        publisher: &mut Peer,
        bytes: &[u8],
        reliable: bool,
        events: &mut Vec<RtcEvent>,
    ) -> Result<(), String> {
        let id = if reliable { self.reliable } else { self.lossy };
        let Some(id) = id else { return Ok(()) };
        if let Some(mut ch) = publisher.rtc.channel(id) {
            match ch.write(true, bytes) {
                Ok(true) => {}
                Ok(false) => tracing::debug!("data channel buffer full; packet dropped"),
                Err(e) => tracing::debug!(error = %e, "data channel write failed"),
            }
        }
        publisher.drain(events)
    }
}

/// What a DataPacket from the room means for the handle (DTMF or user data).
pub(super) fn received(bytes: &[u8]) -> Option<ParticipantEvent> {
    let Ok(packet) = proto::DataPacket::decode(bytes) else {
        tracing::debug!("undecodable data packet");
        return None;
    };
    let identity = packet.participant_identity;
    match packet.value {
        Some(proto::data_packet::Value::SipDtmf(d)) => Some(ParticipantEvent::Dtmf {
            participant_identity: identity,
            code: d.code,
            digit: d.digit,
        }),
        Some(proto::data_packet::Value::User(u)) => {
            #[allow(deprecated)]
            let identity = if identity.is_empty() {
                u.participant_identity.clone()
            } else {
                identity
            };
            Some(ParticipantEvent::Data {
                participant_identity: identity,
                topic: u.topic,
                payload: u.payload,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_packets_from_the_room_become_dtmf_and_data_events() {
        let dtmf = proto::DataPacket {
            participant_identity: "agent".into(),
            value: Some(proto::data_packet::Value::SipDtmf(proto::SipDtmf {
                code: 11,
                digit: "#".into(),
            })),
            ..Default::default()
        };
        match received(&dtmf.encode_to_vec()) {
            Some(ParticipantEvent::Dtmf {
                participant_identity,
                code,
                digit,
            }) => assert_eq!(
                (participant_identity.as_str(), code, digit.as_str()),
                ("agent", 11, "#")
            ),
            other => panic!("{other:?}"),
        }
        #[allow(deprecated)]
        let user = proto::DataPacket {
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                participant_identity: "old-style".into(),
                payload: b"hi".to_vec(),
                topic: Some("t".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        match received(&user.encode_to_vec()) {
            Some(ParticipantEvent::Data {
                participant_identity,
                topic,
                payload,
            }) => {
                assert_eq!(participant_identity, "old-style");
                assert_eq!(topic.as_deref(), Some("t"));
                assert_eq!(payload, b"hi");
            }
            other => panic!("{other:?}"),
        }
        assert!(received(b"\xff\xff\xff").is_none());
    }
}
