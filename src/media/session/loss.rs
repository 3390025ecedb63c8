//! Packets lost on the phone's stream for the call's statistics.

use crate::media::jitter::{MAX_DROPOUT, MAX_MISORDER};
use crate::media::rtp::{SeqNo, SeqUnwrapper, Ssrc};

/// Packets lost per RFC 3550 appendix A.3 (expected minus received), over successive
/// streams (new SSRC or restarted sequence). Test: `lost_packets_are_counted_and_concealed`.
#[derive(Debug, Default)]
pub(super) struct LossCounter {
    ssrc: Option<Ssrc>,
    seqs: SeqUnwrapper,
    base: u64,
    received: u64,
    closed: u64,
}

impl LossCounter {
    pub(super) fn on_packet(&mut self, ssrc: Ssrc, seq: SeqNo) {
        let restart = self.ssrc != Some(ssrc)
            || self.seqs.highest().is_some_and(|h| {
                let d = i64::from(seq.delta(h.seq()));
                !(-MAX_MISORDER..=MAX_DROPOUT).contains(&d)
            });
        if restart {
            self.closed += self.current();
            self.ssrc = Some(ssrc);
            self.seqs.reset();
            self.received = 0;
            self.base = u64::from(seq.0);
        }
        if let Some(ext) = self.seqs.unwrap(seq) {
            self.base = self.base.min(ext.0);
            self.received += 1;
        }
    }

    fn current(&self) -> u64 {
        self.seqs.highest().map_or(0, |h| {
            (h.0 + 1 - self.base.min(h.0)).saturating_sub(self.received)
        })
    }

    pub(super) fn lost(&self) -> u64 {
        self.closed + self.current()
    }
}
