//! Remote audio: which track each subscriber m-line carries (rebuilt from every
//! subscriber offer, since transceivers are reused for other tracks), and the decoding
//! of each track's media to PCM at the phone's rate.

use std::collections::{HashMap, HashSet};

use str0m::format::Codec;
use str0m::media::MediaData;

use super::audio::{RemoteCodec, TrackDecoder};
use super::{RemoteAudioFrame, SampleRate};

pub(super) struct Receiver {
    rate: SampleRate,
    /// Subscriber mid -> (track sid, owner identity), rebuilt on every offer.
    mids: HashMap<String, (String, String)>,
    decoders: HashMap<String, TrackDecoder>,
}

impl Receiver {
    pub(super) fn new(rate: SampleRate) -> Receiver {
        Receiver {
            rate,
            mids: HashMap::new(),
            decoders: HashMap::new(),
        }
    }

    /// The phone's rate changed: decoders start again at the new one.
    pub(super) fn set_rate(&mut self, rate: SampleRate) {
        self.rate = rate;
        self.decoders.clear();
    }

    /// A new session (full rejoin): nothing is subscribed yet.
    pub(super) fn reset(&mut self) {
        self.mids.clear();
        self.decoders.clear();
    }

    /// A subscriber offer mapped `tracks` (mid -> track sid); `owner` names a track's
    /// participant when known. Returns the tracks that are new (newly subscribed).
    pub(super) fn offer(
        &mut self,
        tracks: HashMap<String, String>,
        owner: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, String)> {
        let old: HashSet<&String> = self.mids.values().map(|(t, _)| t).collect();
        let mut new = Vec::new();
        let mut map = HashMap::new();
        for (mid, track_sid) in tracks {
            let identity = owner(&track_sid).unwrap_or_default();
            if !old.contains(&track_sid) {
                new.push((track_sid.clone(), identity.clone()));
            }
            map.insert(mid, (track_sid, identity));
        }
        self.mids = map;
        new
    }

    /// The track is gone: its decoder too.
    pub(super) fn remove_track(&mut self, track_sid: &str) {
        self.decoders.remove(track_sid);
    }

    /// Decodes one frame of a subscriber m-line.
    pub(super) fn media(
        &mut self,
        data: MediaData,
        owner: impl Fn(&str) -> Option<String>,
    ) -> Option<RemoteAudioFrame> {
        let mid = data.mid.to_string();
        let (track_sid, identity) = self.mids.get_mut(&mid)?;
        let codec = match data.params.spec().codec {
            Codec::Opus => RemoteCodec::Opus,
            Codec::PCMU => RemoteCodec::Pcmu,
            Codec::PCMA => RemoteCodec::Pcma,
            _ => return None,
        };
        if identity.is_empty()
            && let Some(owner) = owner(track_sid)
        {
            // the offer came before the participant update that names the owner
            *identity = owner;
        }
        let rate = self.rate;
        let decoder = self
            .decoders
            .entry(track_sid.clone())
            .or_insert_with(|| TrackDecoder::new(rate));
        match decoder.decode(codec, &data.data) {
            Ok(samples) if !samples.is_empty() => Some(RemoteAudioFrame {
                participant_identity: identity.clone(),
                track_sid: track_sid.clone(),
                sample_rate: rate.hz(),
                samples,
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(track = %track_sid, error = %e, "cannot decode remote audio");
                None
            }
        }
    }
}
