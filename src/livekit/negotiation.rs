//! SDP negotiation over the signalling connection: the server's offers on the subscriber
//! connection (answered at once; each one remaps the subscriber's m-lines to tracks),
//! our offers on the publisher connection and the server's answers, ICE restarts, and
//! trickled candidates both ways (ours once per set of ICE credentials).

use std::collections::HashMap;

use livekit_protocol as proto;

use super::ParticipantEvent;
use super::peer::Role;
use super::sdp;
use super::session::{Failure, Session, Step};

use proto::signal_request::Message as Req;

impl Session {
    pub(super) async fn on_subscriber_offer(&mut self, offer: proto::SessionDescription) -> Step {
        tracing::trace!(id = offer.id, sdp = %offer.sdp, mid_to_track_id = ?offer.mid_to_track_id, "subscriber offer");
        let tracks = sdp::subscriber_tracks(&offer.sdp, &offer.mid_to_track_id);
        let mut events = Vec::new();
        let answer = self
            .subscriber
            .accept_offer(&offer.sdp, &mut events)
            .map_err(Failure::Peer)?;
        tracing::trace!(sdp = %answer, "subscriber answer");
        let answer_desc = proto::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.clone(),
            id: offer.id,
            mid_to_track_id: HashMap::new(),
        };
        self.send(Req::Answer(answer_desc.clone()))
            .await
            .map_err(Failure::Signal)?;
        self.sub_answer = Some(answer_desc);
        self.sub_offer = Some(offer);
        let ufrag = sdp::ice_ufrag(&answer);
        if self.subscriber.trickled_ufrag.is_none() || self.subscriber.trickled_ufrag != ufrag {
            // first answer, or an ICE restart: our candidate for these credentials
            self.subscriber.trickled_ufrag = ufrag.clone().or(Some(String::new()));
            let mid = sdp::first_mid(&answer).unwrap_or_else(|| "0".into());
            self.trickle(Role::Subscriber, &mid, ufrag).await?;
        }
        let roster = &self.roster;
        let new = self.receiver.offer(tracks, |track| {
            roster.track(track).map(|t| t.participant_identity.clone())
        });
        for (track_sid, participant_identity) in new {
            self.emit(ParticipantEvent::TrackSubscribed {
                participant_identity,
                track_sid,
            })
            .await;
        }
        self.process_rtc_events(Role::Subscriber, events).await
    }

    pub(super) async fn on_publisher_answer(&mut self, answer: proto::SessionDescription) -> Step {
        let mut events = Vec::new();
        self.publish
            .answer(&mut self.publisher, &answer.sdp, &mut events)
            .map_err(Failure::Peer)?;
        self.process_rtc_events(Role::Publisher, events).await
    }

    /// A candidate the server trickled, for either connection.
    pub(super) async fn on_trickle(&mut self, t: proto::TrickleRequest) -> Step {
        let Some(line) = sdp::candidate_from_init_json(&t.candidate_init) else {
            return Ok(());
        };
        let role = if t.target == proto::SignalTarget::Subscriber as i32 {
            Role::Subscriber
        } else {
            Role::Publisher
        };
        let mut events = Vec::new();
        self.peer(role)
            .add_remote_candidate(&line, &mut events)
            .map_err(Failure::Peer)?;
        self.process_rtc_events(role, events).await
    }

    /// Our first offer on the publisher connection (after track_published).
    pub(super) async fn publisher_offer(&mut self) -> Step {
        let mut events = Vec::new();
        let offer = self
            .publish
            .offer(&mut self.publisher, &mut self.data, &mut events)
            .map_err(Failure::Peer)?;
        if let Some(sdp_text) = offer {
            self.send_publisher_offer(sdp_text).await?;
        }
        self.process_rtc_events(Role::Publisher, events).await
    }

    /// ICE restart of the publisher connection (our offer with new credentials).
    pub(super) async fn publisher_ice_restart(&mut self) -> Step {
        let mut events = Vec::new();
        let offer = self
            .publish
            .ice_restart_offer(&mut self.publisher, &mut events)
            .map_err(Failure::Peer)?;
        self.send_publisher_offer(offer).await?;
        self.process_rtc_events(Role::Publisher, events).await
    }

    /// Sends a publisher offer, and our candidate if its ICE credentials are new.
    async fn send_publisher_offer(&mut self, sdp_text: String) -> Step {
        tracing::trace!(sdp = %sdp_text, "publisher offer");
        self.offer_id += 1;
        self.send(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: sdp_text.clone(),
            id: self.offer_id,
            mid_to_track_id: HashMap::new(),
        }))
        .await
        .map_err(Failure::Signal)?;
        let ufrag = sdp::ice_ufrag(&sdp_text);
        if self.publisher.trickled_ufrag.is_none() || self.publisher.trickled_ufrag != ufrag {
            self.publisher.trickled_ufrag = ufrag.clone().or(Some(String::new()));
            let first = sdp::first_mid(&sdp_text).unwrap_or_else(|| "0".into());
            self.trickle(Role::Publisher, &first, ufrag).await?;
        }
        Ok(())
    }

    async fn trickle(&mut self, role: Role, mid: &str, ufrag: Option<String>) -> Step {
        let candidate = self.peer(role).local_candidate().to_string();
        let json = sdp::candidate_init_json(&candidate, mid, ufrag.as_deref());
        self.send(Req::Trickle(proto::TrickleRequest {
            candidate_init: json,
            target: role as i32,
            r#final: false,
        }))
        .await
        .map_err(Failure::Signal)
    }
}
