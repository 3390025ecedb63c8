//! Getting a broken session back, as the lifecycle asks (reference 3.11): a resume (a
//! new signalling connection for the same participant, `sync_state`, an ICE restart of
//! the publisher; the server ICE-restarts the subscriber with a new offer, answered in
//! the loop), or a full rejoin (new signalling connection, participant sid and peer
//! connections; our track is published again and remote audio subscribed again). Each
//! returns the lifecycle input that reports how it went.

use std::collections::HashSet;

use futures_util::StreamExt;
use livekit_protocol as proto;

use super::DisconnectReason;
use super::lifecycle::{Input, Keepalive, RecoveryError, ResumeReason};
use super::peer::{Peer, Role};
use super::session::{CLOSE_TIMEOUT, Failure, Session, now};
use super::signal::{self, First, JoinError, Ws};

use proto::signal_request::Message as Req;

fn retry(why: impl Into<String>) -> Input {
    Input::RecoveryFailed(RecoveryError::Retry(why.into()))
}

fn gone(reason: DisconnectReason) -> Input {
    Input::RecoveryFailed(RecoveryError::Gone(reason))
}

impl Session {
    /// Closes what is left of the signalling connection (no leave: the session goes on).
    async fn close_signal(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures_util::SinkExt::close(&mut self.ws_tx))
            .await;
    }

    fn adopt_signal(&mut self, ws: Ws) {
        let (tx, rx) = ws.split();
        self.ws_tx = tx;
        self.ws_rx = rx;
    }

    pub(super) async fn resume(&mut self, rr: ResumeReason) -> Input {
        self.close_signal().await;
        let token = self
            .refresh_token
            .clone()
            .unwrap_or_else(|| self.token.clone());
        let rr = match rr {
            ResumeReason::SignalDisconnected => proto::ReconnectReason::RrSignalDisconnected,
            ResumeReason::PublisherFailed => proto::ReconnectReason::RrPublisherFailed,
            ResumeReason::SubscriberFailed => proto::ReconnectReason::RrSubscriberFailed,
            ResumeReason::Unknown => proto::ReconnectReason::RrUnknown,
        };
        let resume = signal::Resume {
            sid: self.local_sid.clone(),
            reason: rr as i32,
        };
        let (ws, first) = match signal::connect_with(&self.opts, &token, Some(&resume)).await {
            Ok(x) => x,
            Err(e) => return retry(e.to_string()),
        };
        match first {
            First::Reconnect(r) => {
                tracing::debug!(last_message_seq = r.last_message_seq, "reconnect response")
            }
            First::Leave(leave) => {
                use proto::leave_request::Action;
                let reason = signal::disconnect_reason_name(leave.reason);
                return match Action::try_from(leave.action) {
                    Ok(Action::Resume) | Ok(Action::Reconnect) => {
                        retry(format!("the server refused the resume: {reason}"))
                    }
                    _ => gone(DisconnectReason::Server {
                        reason,
                        action: signal::leave_action_name(leave.action),
                    }),
                };
            }
            First::Join(_) => return retry("the server answered the resume with a join"),
        }
        self.adopt_signal(ws);
        let sync = proto::SyncState {
            answer: self.sub_answer.clone(),
            offer: self.sub_offer.clone(),
            subscription: Some(proto::UpdateSubscription {
                track_sids: self.roster.subscribed(),
                subscribe: true,
                participant_tracks: Vec::new(),
            }),
            publish_tracks: self.publish.sync_tracks(),
            ..Default::default()
        };
        if let Err(e) = self.send(Req::SyncState(sync)).await {
            return retry(e);
        }
        if self.publish.offered() {
            match self.publisher_ice_restart().await {
                Ok(()) => {}
                Err(Failure::Peer(why)) => return gone(DisconnectReason::PeerFailed(why)),
                Err(Failure::Signal(_)) => return retry("publisher ICE restart failed"),
            }
        }
        Input::Recovered { keepalive: None }
    }

    pub(super) async fn rejoin(&mut self, attempt: u32) -> Input {
        tracing::debug!(attempt, "joining the LiveKit room again");
        self.close_signal().await;
        let mut ignored = Vec::new();
        for peer in [&mut self.publisher, &mut self.subscriber] {
            peer.rtc.disconnect();
            let _ = peer.drain(&mut ignored);
        }
        let token = match signal::mint_token(&self.opts) {
            Ok(t) => t,
            Err(e) => return retry(e.to_string()),
        };
        let (ws, join) = match signal::connect(&self.opts, &token).await {
            Ok(x) => x,
            Err(JoinError::LeftImmediately { reason }) => {
                return gone(DisconnectReason::Server {
                    reason,
                    action: "DISCONNECT".into(),
                });
            }
            Err(e) => return retry(e.to_string()),
        };
        let t = now();
        let peers = Peer::new(Role::Publisher, self.local_ip, t)
            .and_then(|p| Ok((p, Peer::new(Role::Subscriber, self.local_ip, t)?)));
        let (publisher, subscriber) = match peers {
            Ok(x) => x,
            Err(e) => return retry(e),
        };
        self.publisher = publisher;
        self.subscriber = subscriber;
        self.token = token;
        self.adopt_signal(ws);
        let local = join.participant.clone().unwrap_or_default();
        tracing::info!(old = %self.local_sid, new = %local.sid, "rejoined as a new participant");
        self.new_local(local.sid.clone(), local.identity.clone());
        self.refresh_token = None;
        self.offer_id = 0;
        self.sub_offer = None;
        self.sub_answer = None;
        self.receiver.reset();
        self.data.reset();
        if let Err(e) = self.publish.reset() {
            return retry(e);
        }
        let present: HashSet<String> = join
            .other_participants
            .iter()
            .map(|p| p.sid.clone())
            .collect();
        let mut events = Vec::new();
        self.roster
            .rejoined(&local.sid, &local.identity, &present, &mut events);
        self.emit_roster(events).await;
        let keepalive = Keepalive::from_join(join.ping_interval, join.ping_timeout);
        // known participants: only changes are reported; new tracks are subscribed
        if let Err(e) = self.start(join).await {
            return retry(e.to_string());
        }
        // tracks known before need a new subscription on the new connection
        let again = self.roster.resubscribe();
        if let Err(e) = self.subscribe(again).await {
            return retry(e.to_string());
        }
        Input::Recovered {
            keepalive: Some(keepalive),
        }
    }
}
