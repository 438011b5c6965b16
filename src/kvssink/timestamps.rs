// SPDX-License-Identifier: MPL-2.0
//! Per-track timestamp repair applied to every buffer before it reaches matroskamux.
//!
//! Upstream elements hand kvssink timestamps that matroskamux or the service reject: `matroskademux ! h264parse`
//! gives key frames without DTS, live sources jump backwards after a clock change, encoders repeat a PTS. The
//! service refuses a fragment that starts before the previous one ended (FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS),
//! and collectpads orders buffers by DTS, so this module guarantees, per track:
//! * every buffer has a PTS and a DTS;
//! * DTS never decreases and never exceeds PTS;
//! * a fragment start (a video key frame, or any audio buffer) never lies before the latest PTS already seen on
//!   the track, so a cluster opened there cannot overlap the previous one on this track.
//!
//! The fixer only ever moves a timestamp forward, by the smallest amount that restores these rules, and counts
//! each repair so the element can report it.

use gst::ClockTime;

/// What kind of track a pad feeds; audio buffers are all independently decodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

/// Timestamps of one buffer, as read from it and as written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    pub pts: Option<ClockTime>,
    pub dts: Option<ClockTime>,
    pub duration: Option<ClockTime>,
    /// True when the buffer starts a decodable unit (no DELTA_UNIT flag).
    pub keyframe: bool,
}

/// The outcome of [`TimestampFixer::fix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub pts: ClockTime,
    pub dts: ClockTime,
    /// True if any timestamp had to be invented or moved.
    pub repaired: bool,
}

/// Smallest step used to keep a fragment start strictly after what came before. One millisecond is the default
/// Matroska timecode scale, so two fragment starts never collapse onto the same cluster timecode.
const MIN_STEP: ClockTime = ClockTime::from_mseconds(1);

/// Repairs the timestamps of one track; one instance per request pad.
#[derive(Debug)]
pub struct TimestampFixer {
    kind: TrackKind,
    last_dts: Option<ClockTime>,
    last_pts: Option<ClockTime>,
    max_pts: Option<ClockTime>,
    last_duration: Option<ClockTime>,
    repairs: u64,
}

impl TimestampFixer {
    pub fn new(kind: TrackKind) -> Self {
        Self {
            kind,
            last_dts: None,
            last_pts: None,
            max_pts: None,
            last_duration: None,
            repairs: 0,
        }
    }

    /// How many buffers had a timestamp invented or moved so far.
    #[cfg(test)]
    pub fn repairs(&self) -> u64 {
        self.repairs
    }

    /// Computes the PTS and DTS to write on a buffer. A buffer with neither timestamp gets the previous one
    /// advanced by the previous duration (or zero for the very first buffer): it is uploaded, never dropped.
    pub fn fix(&mut self, stamps: Stamps) -> Fixed {
        let starts_fragment = stamps.keyframe || self.kind == TrackKind::Audio;
        let step = self.last_duration.unwrap_or(ClockTime::ZERO);

        let (mut pts, mut dts, mut repaired) = match (stamps.pts, stamps.dts) {
            (Some(pts), Some(dts)) => (pts, dts, false),
            (Some(pts), None) => {
                // Without a DTS, the best estimate is one frame after the previous DTS, capped by the PTS (a frame
                // is never decoded after it is shown). The first buffer simply decodes when it is shown.
                let dts = match self.last_dts {
                    Some(last) => (last + step).min(pts),
                    None => pts,
                };
                (pts, dts, false)
            }
            (None, Some(dts)) => (dts, dts, false),
            (None, None) => {
                let guess = self.last_pts.map(|p| p + step).unwrap_or(ClockTime::ZERO);
                (guess, self.last_dts.unwrap_or(guess).max(guess), true)
            }
        };

        if let Some(last) = self.last_dts
            && dts < last
        {
            dts = last;
            repaired = true;
        }
        if starts_fragment
            && let Some(max) = self.max_pts
            && pts <= max
            && self.last_pts.is_some()
        {
            // A fragment start at or before an already-sent frame would overlap the previous fragment.
            let next = max + MIN_STEP;
            if pts < max || self.kind == TrackKind::Video {
                pts = next;
                repaired = true;
            }
        }
        if pts < dts {
            pts = dts;
            repaired = true;
        }

        self.last_dts = Some(dts);
        self.last_pts = Some(pts);
        self.max_pts = Some(self.max_pts.map_or(pts, |m| m.max(pts)));
        if let Some(d) = stamps.duration {
            self.last_duration = Some(d);
        }
        if repaired {
            self.repairs += 1;
        }
        Fixed { pts, dts, repaired }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<ClockTime> {
        Some(ClockTime::from_mseconds(v))
    }

    fn frame(pts: Option<ClockTime>, dts: Option<ClockTime>, key: bool) -> Stamps {
        Stamps {
            pts,
            dts,
            duration: ms(33),
            keyframe: key,
        }
    }

    #[test]
    fn keyframe_without_dts_gets_one_within_its_pts() {
        let mut f = TimestampFixer::new(TrackKind::Video);
        let a = f.fix(frame(ms(100), None, true));
        assert_eq!(
            (a.pts, a.dts),
            (ClockTime::from_mseconds(100), ClockTime::from_mseconds(100))
        );
        let b = f.fix(frame(ms(200), ms(133), false));
        assert_eq!(b.dts, ClockTime::from_mseconds(133));
        // The next key frame has no DTS again: one frame after the previous DTS.
        let c = f.fix(frame(ms(300), None, true));
        assert_eq!(c.dts, ClockTime::from_mseconds(166));
        assert_eq!(c.pts, ClockTime::from_mseconds(300));
    }

    #[test]
    fn backwards_dts_is_held_and_pts_never_before_dts() {
        let mut f = TimestampFixer::new(TrackKind::Video);
        f.fix(frame(ms(500), ms(500), true));
        let b = f.fix(frame(ms(400), ms(400), false));
        assert_eq!(b.dts, ClockTime::from_mseconds(500));
        assert_eq!(b.pts, ClockTime::from_mseconds(500));
        assert!(b.repaired);
        assert_eq!(f.repairs(), 1);
    }

    #[test]
    fn keyframe_going_backwards_starts_after_everything_seen() {
        let mut f = TimestampFixer::new(TrackKind::Video);
        f.fix(frame(ms(0), ms(0), true));
        f.fix(frame(ms(1000), ms(900), false));
        let k = f.fix(frame(ms(800), ms(950), true));
        assert_eq!(k.pts, ClockTime::from_mseconds(1001));
        assert!(k.dts <= k.pts);
    }

    #[test]
    fn b_frames_keep_their_reordered_pts() {
        let mut f = TimestampFixer::new(TrackKind::Video);
        f.fix(frame(ms(66), ms(0), true));
        let p = f.fix(frame(ms(166), ms(33), false));
        let b = f.fix(frame(ms(100), ms(66), false));
        assert_eq!(p.pts, ClockTime::from_mseconds(166));
        assert_eq!(b.pts, ClockTime::from_mseconds(100));
        assert!(!b.repaired);
    }

    #[test]
    fn audio_is_monotonic_and_untimestamped_buffers_are_kept() {
        let mut f = TimestampFixer::new(TrackKind::Audio);
        f.fix(frame(ms(0), None, true));
        let a = f.fix(frame(ms(21), None, true));
        assert_eq!(a.pts, ClockTime::from_mseconds(21));
        let back = f.fix(frame(ms(10), None, true));
        assert_eq!(back.pts, ClockTime::from_mseconds(22));
        let none = f.fix(frame(None, None, true));
        assert_eq!(none.pts, ClockTime::from_mseconds(55));
        assert!(none.repaired);
    }

    #[test]
    fn first_buffer_without_any_timestamp_starts_at_zero() {
        let mut f = TimestampFixer::new(TrackKind::Audio);
        let a = f.fix(frame(None, None, true));
        assert_eq!((a.pts, a.dts), (ClockTime::ZERO, ClockTime::ZERO));
    }
}
