//! Who is in the room, sans-IO: the remote participants and their tracks as the server's
//! participant updates describe them, and the audio tracks we asked to subscribe to.
//! Each update yields the events it means for the handle (joined, updated, left, track
//! published or unpublished) and the tracks to subscribe to; the session sends both.
//! Tests: `roster_*`.

use std::collections::{HashMap, HashSet};

use livekit_protocol as proto;

use super::{ParticipantEvent, ParticipantKind, RemoteParticipant, TrackKind};

/// A remote track as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteTrack {
    pub participant_sid: String,
    pub participant_identity: String,
    pub kind: TrackKind,
    /// Its publisher muted it: no audio is expected from it.
    pub muted: bool,
}

/// A remote participant as the roster keeps it.
#[derive(Debug)]
struct Known {
    info: RemoteParticipant,
    /// (joined_at, joined_at_ms, sid): of two sessions of one identity, the greater is
    /// the participant (the server's own order).
    order: (i64, i64, String),
}

#[derive(Debug, Default)]
pub(super) struct Roster {
    local_sid: String,
    local_identity: String,
    /// By participant sid.
    participants: HashMap<String, Known>,
    /// Remote tracks by sid.
    tracks: HashMap<String, RemoteTrack>,
    /// Track sids we asked to subscribe to.
    subscribed: HashSet<String>,
}

impl Roster {
    pub(super) fn new(local_sid: &str, local_identity: &str) -> Roster {
        Roster {
            local_sid: local_sid.to_string(),
            local_identity: local_identity.to_string(),
            ..Roster::default()
        }
    }

    pub(super) fn track(&self, sid: &str) -> Option<&RemoteTrack> {
        self.tracks.get(sid)
    }

    /// Track sids we asked to subscribe to (sync_state on resume).
    pub(super) fn subscribed(&self) -> Vec<String> {
        self.subscribed.iter().cloned().collect()
    }

    /// Audio tracks subscribed and not muted: (track sid, owner identity).
    pub(super) fn audio_expected(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tracks.iter().filter_map(|(sid, t)| {
            (t.kind == TrackKind::Audio && !t.muted && self.subscribed.contains(sid))
                .then_some((sid.as_str(), t.participant_identity.as_str()))
        })
    }

    /// A participant appeared, changed or left: the events for the handle go to
    /// `events`; returns the new audio tracks to subscribe to.
    pub(super) fn update(
        &mut self,
        p: &proto::ParticipantInfo,
        events: &mut Vec<ParticipantEvent>,
    ) -> Vec<String> {
        if p.sid == self.local_sid || p.identity == self.local_identity {
            return Vec::new();
        }
        if p.state == proto::participant_info::State::Disconnected as i32 {
            self.gone(&p.sid, events);
            return Vec::new();
        }
        // the identity joined again on a new connection (an SDK's full reconnect, an
        // agent that restarted): the server closes the session it replaced and, for
        // clients of protocol 12 and later, says nothing more of it (identity-based
        // reconnection), so it leaves here; an update of the replaced one that comes late
        // is ignored
        let order = (p.joined_at, p.joined_at_ms, p.sid.clone());
        let others: Vec<(String, bool)> = self
            .participants
            .iter()
            .filter(|(sid, k)| k.info.identity == p.identity && **sid != p.sid)
            .map(|(sid, k)| (sid.clone(), k.order > order))
            .collect();
        if others.iter().any(|(_, newer)| *newer) {
            tracing::debug!(sid = %p.sid, "update of a replaced participant session ignored");
            return Vec::new();
        }
        for (sid, _) in others {
            tracing::debug!(old = %sid, new = %p.sid, "participant joined again; old session gone");
            self.gone(&sid, events);
        }
        let info = RemoteParticipant {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            kind: ParticipantKind::from_proto(p.kind),
            attributes: p.attributes.clone(),
            metadata: p.metadata.clone(),
        };
        let known = Known {
            info: info.clone(),
            order,
        };
        match self.participants.insert(p.sid.clone(), known) {
            None => events.push(ParticipantEvent::ParticipantJoined(info)),
            Some(old) if old.info != info => {
                events.push(ParticipantEvent::ParticipantUpdated(info));
            }
            Some(_) => {}
        }
        // tracks: new ones published, missing ones unpublished
        let current: HashSet<&str> = p.tracks.iter().map(|t| t.sid.as_str()).collect();
        let gone: Vec<String> = self
            .tracks
            .iter()
            .filter(|(sid, t)| t.participant_sid == p.sid && !current.contains(sid.as_str()))
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in gone {
            self.drop_track(&sid, events);
        }
        let mut to_subscribe = Vec::new();
        for t in &p.tracks {
            if let Some(known) = self.tracks.get_mut(&t.sid) {
                known.muted = t.muted;
                continue;
            }
            let kind = match proto::TrackType::try_from(t.r#type) {
                Ok(proto::TrackType::Audio) => TrackKind::Audio,
                Ok(proto::TrackType::Video) => TrackKind::Video,
                _ => TrackKind::Data,
            };
            self.tracks.insert(
                t.sid.clone(),
                RemoteTrack {
                    participant_sid: p.sid.clone(),
                    participant_identity: p.identity.clone(),
                    kind,
                    muted: t.muted,
                },
            );
            events.push(ParticipantEvent::TrackPublished {
                participant_identity: p.identity.clone(),
                track_sid: t.sid.clone(),
                kind,
                name: t.name.clone(),
            });
            if kind == TrackKind::Audio && self.subscribed.insert(t.sid.clone()) {
                to_subscribe.push(t.sid.clone());
            }
        }
        to_subscribe
    }

    /// The participant `participant_sid` left: its tracks are unpublished.
    pub(super) fn gone(&mut self, participant_sid: &str, events: &mut Vec<ParticipantEvent>) {
        if let Some(Known { info: old, .. }) = self.participants.remove(participant_sid) {
            let gone: Vec<String> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.participant_sid == participant_sid)
                .map(|(sid, _)| sid.clone())
                .collect();
            for sid in gone {
                self.drop_track(&sid, events);
            }
            events.push(ParticipantEvent::ParticipantLeft {
                sid: old.sid,
                identity: old.identity,
            });
        }
    }

    fn drop_track(&mut self, sid: &str, events: &mut Vec<ParticipantEvent>) {
        if let Some(t) = self.tracks.remove(sid) {
            tracing::debug!(track = sid, participant = %t.participant_identity, "remote track gone");
            self.subscribed.remove(sid);
            events.push(ParticipantEvent::TrackUnpublished {
                participant_identity: t.participant_identity,
                track_sid: sid.to_string(),
            });
        }
    }

    /// We joined again as a new participant (`sid`, `identity`): subscriptions are gone
    /// with the old session, and participants not in the new JoinResponse (`present`)
    /// left while we were away.
    pub(super) fn rejoined(
        &mut self,
        sid: &str,
        identity: &str,
        present: &HashSet<String>,
        events: &mut Vec<ParticipantEvent>,
    ) {
        self.local_sid = sid.to_string();
        self.local_identity = identity.to_string();
        self.subscribed.clear();
        let gone: Vec<String> = self
            .participants
            .keys()
            .filter(|sid| !present.contains(*sid))
            .cloned()
            .collect();
        for sid in gone {
            self.gone(&sid, events);
        }
    }

    /// Known audio tracks not subscribed on this session: subscribes to them again.
    pub(super) fn resubscribe(&mut self) -> Vec<String> {
        let again: Vec<String> = self
            .tracks
            .iter()
            .filter(|(sid, t)| t.kind == TrackKind::Audio && !self.subscribed.contains(*sid))
            .map(|(sid, _)| sid.clone())
            .collect();
        self.subscribed.extend(again.iter().cloned());
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(sid: &str, audio: bool, muted: bool) -> proto::TrackInfo {
        proto::TrackInfo {
            sid: sid.into(),
            r#type: if audio {
                proto::TrackType::Audio as i32
            } else {
                proto::TrackType::Video as i32
            },
            muted,
            ..Default::default()
        }
    }

    fn participant(
        sid: &str,
        identity: &str,
        tracks: Vec<proto::TrackInfo>,
    ) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: identity.into(),
            state: proto::participant_info::State::Active as i32,
            tracks,
            ..Default::default()
        }
    }

    fn names(events: &[ParticipantEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ParticipantEvent::ParticipantJoined(p) => format!("joined {}", p.identity),
                ParticipantEvent::ParticipantUpdated(p) => format!("updated {}", p.identity),
                ParticipantEvent::ParticipantLeft { identity, .. } => format!("left {identity}"),
                ParticipantEvent::TrackPublished { track_sid, .. } => {
                    format!("published {track_sid}")
                }
                ParticipantEvent::TrackUnpublished { track_sid, .. } => {
                    format!("unpublished {track_sid}")
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn roster_reports_joins_tracks_and_leaves_and_subscribes_audio_once() {
        let mut r = Roster::new("PA_me", "me");
        let mut ev = Vec::new();
        let a = participant(
            "PA_a",
            "alice",
            vec![track("TR_1", true, false), track("TR_v", false, false)],
        );
        assert_eq!(r.update(&a, &mut ev), ["TR_1"]);
        assert_eq!(
            names(&ev),
            ["joined alice", "published TR_1", "published TR_v"]
        );
        ev.clear();
        // the same update again: nothing new
        assert!(r.update(&a, &mut ev).is_empty());
        assert!(ev.is_empty());
        // ourselves: ignored
        assert!(
            r.update(
                &participant("PA_me", "me", vec![track("TR_mine", true, false)]),
                &mut ev
            )
            .is_empty()
        );
        assert!(ev.is_empty());
        // alice re-publishes: old track out, new track in and subscribed
        let a2 = participant("PA_a", "alice", vec![track("TR_2", true, false)]);
        assert_eq!(r.update(&a2, &mut ev), ["TR_2"]);
        let mut n = names(&ev);
        n.sort();
        assert_eq!(
            n,
            ["published TR_2", "unpublished TR_1", "unpublished TR_v"]
        );
        ev.clear();
        assert_eq!(r.audio_expected().collect::<Vec<_>>(), [("TR_2", "alice")]);
        // muted: no audio expected
        r.update(
            &participant("PA_a", "alice", vec![track("TR_2", true, true)]),
            &mut ev,
        );
        assert!(r.track("TR_2").unwrap().muted);
        assert_eq!(r.audio_expected().count(), 0);
        // leaves
        let mut gone = a2.clone();
        gone.state = proto::participant_info::State::Disconnected as i32;
        r.update(&gone, &mut ev);
        assert_eq!(names(&ev), ["unpublished TR_2", "left alice"]);
        assert!(r.track("TR_2").is_none());
        assert!(r.subscribed().is_empty());
    }

    /// An identity that joins again on a new connection (an agent that restarted, an
    /// SDK's full reconnect) replaces its old session, of which the server says nothing
    /// more: the old tracks are unpublished and no longer expected; a late update of the
    /// old session changes nothing.
    #[test]
    fn roster_a_new_session_of_an_identity_replaces_the_old_one() {
        let mut r = Roster::new("PA_me", "me");
        let mut ev = Vec::new();
        let mut old = participant("PA_1", "agent", vec![track("TR_1", true, false)]);
        old.joined_at = 100;
        old.joined_at_ms = 100_000;
        assert_eq!(r.update(&old, &mut ev), ["TR_1"]);
        ev.clear();
        let mut new = participant("PA_2", "agent", vec![track("TR_2", true, false)]);
        new.joined_at = 103;
        new.joined_at_ms = 103_500;
        assert_eq!(r.update(&new, &mut ev), ["TR_2"]);
        assert_eq!(
            names(&ev),
            [
                "unpublished TR_1",
                "left agent",
                "joined agent",
                "published TR_2"
            ]
        );
        assert_eq!(r.audio_expected().collect::<Vec<_>>(), [("TR_2", "agent")]);
        assert_eq!(r.subscribed(), ["TR_2"]);
        ev.clear();
        // the old session's update arrives late: ignored
        assert!(r.update(&old, &mut ev).is_empty());
        assert!(ev.is_empty());
        assert!(r.track("TR_1").is_none());
        // its disconnect too (it is gone already)
        let mut old_gone = old.clone();
        old_gone.state = proto::participant_info::State::Disconnected as i32;
        r.update(&old_gone, &mut ev);
        assert!(ev.is_empty());
        assert_eq!(r.audio_expected().count(), 1);
    }

    #[test]
    fn roster_after_a_rejoin_drops_the_absent_and_subscribes_the_rest_again() {
        let mut r = Roster::new("PA_me", "me");
        let mut ev = Vec::new();
        r.update(
            &participant("PA_a", "alice", vec![track("TR_a", true, false)]),
            &mut ev,
        );
        r.update(
            &participant("PA_b", "bob", vec![track("TR_b", true, false)]),
            &mut ev,
        );
        ev.clear();
        let present: HashSet<String> = ["PA_b".to_string()].into();
        r.rejoined("PA_me2", "me", &present, &mut ev);
        assert_eq!(names(&ev), ["unpublished TR_a", "left alice"]);
        assert!(r.subscribed().is_empty());
        assert_eq!(r.resubscribe(), ["TR_b"]);
        assert!(r.resubscribe().is_empty());
        assert_eq!(r.subscribed(), ["TR_b"]);
    }
}
