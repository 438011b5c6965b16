// SPDX-License-Identifier: MPL-2.0
//! Turns matroskamux's output into the [`UploadItem`]s of a PutMedia body.
//!
//! matroskamux (streamable) writes one Segment: the header, then unknown-size Clusters whose Timecode is the
//! pipeline running time. This module parses that stream incrementally and:
//! * rebuilds the header from its EBML, Info and Tracks elements (dropping SeekHead and Void, whose offsets mean
//!   nothing in a live body), naming the tracks and overriding the video CodecID as the properties say;
//! * rewrites each cluster start with the fragment's timecode on the chosen time base (see [`TimeBase`]);
//! * keeps every fragment strictly after the previous one: when a cluster would start at or before the last frame
//!   already sent (audio interleaved by DTS can land in the previous cluster with a later PTS), its timecode is
//!   moved just past that frame and its blocks' relative timecodes are moved back by the same amount, so every
//!   frame keeps its time;
//! * forwards each block as soon as it is complete, and drops cluster children that only describe matroskamux's
//!   own file layout (PrevSize, Position, Void).

use bytes::Bytes;
use kvs_mkv::MkvError;
use kvs_mkv::ebml::{self, id};
use kvs_mkv::stream::{MkvEvent, MkvStreamParser, SegmentHeader};

use super::upload::UploadItem;

/// How cluster timecodes relate to wall-clock time.
///
/// ABSOLUTE is the default (like the C++ element's `absolute-fragment-times=true`): every cluster carries epoch
/// time, so a fragment replayed on a new connection, after a restart or a rotation, has exactly the timecode it
/// had before. Acknowledgements are mapped back by that timecode, which therefore must not depend on the
/// connection. RELATIVE keeps matroskamux's running-time timecodes and sends the epoch of running time 0 as
/// `x-amzn-producer-start-timestamp`; the same value is sent on every connection so the producer timestamps of
/// replayed fragments do not move either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBase {
    Absolute,
    Relative,
}

/// Most audio blocks held while waiting for the first video key frame (about 20 s of AAC).
const MAX_HELD_BLOCKS: usize = 1000;

/// Naming applied to the header's tracks.
#[derive(Debug, Clone, Default)]
pub struct HeaderOptions {
    /// Name of the video track (`track-name`).
    pub video_track_name: Option<String>,
    /// Name of the audio track.
    pub audio_track_name: Option<String>,
    /// CodecID written for the video track (`codec-id`); `None` keeps matroskamux's.
    pub video_codec_id: Option<String>,
}

/// Errors of the fragmenter.
#[derive(Debug, thiserror::Error)]
pub enum FragmenterError {
    #[error("matroskamux produced a stream kvssink cannot read: {0}")]
    Mkv(#[from] MkvError),
    #[error("matroskamux produced a cluster before the stream header")]
    ClusterBeforeHeader,
}

/// What the element supplies while the stream is parsed.
pub trait FragmentContext {
    /// Epoch of running time 0, in timecode units, asked once at the first cluster whose timecode (running time,
    /// in timecode units) is given.
    fn epoch_base(&mut self, first_cluster_timecode: u64) -> u64;
    /// Fragment metadata (name, value) to put before the fragment that starts now.
    fn fragment_metadata(&mut self) -> Vec<(String, String)>;
}

/// See the module documentation.
pub struct Fragmenter {
    parser: MkvStreamParser,
    time_base: TimeBase,
    options: HeaderOptions,
    header: Option<Bytes>,
    media_type: String,
    header_sent: bool,
    timecode_scale_ns: u64,
    epoch_base: Option<u64>,
    /// Timecode written for the current cluster, and the shift applied to its blocks (written minus muxed).
    current: Option<(u64, i64)>,
    /// Latest frame time (timecode units, as written) of all clusters before the current one.
    prev_max_frame: Option<u64>,
    /// Latest frame time of the current cluster.
    cur_max_frame: Option<u64>,
    last_cluster: Option<u64>,
    /// Clusters whose timecode had to be moved.
    shifted_clusters: u64,
    /// Track number of the video track, if any.
    video_track: Option<u64>,
    /// The first fragment has begun.
    started: bool,
    /// Timecode (written time base, before any shift) of matroskamux's current cluster.
    muxed_cluster: Option<u64>,
    /// Blocks seen before the first video key frame: (time, raw element).
    held: Vec<(u64, Bytes)>,
    /// Ask upstream for a key frame once the current fragment is this long (nanoseconds).
    long_fragment_ns: Option<u64>,
    keyframe_requested: bool,
    keyframe_needed: bool,
}

impl Fragmenter {
    pub fn new(time_base: TimeBase, options: HeaderOptions) -> Self {
        Fragmenter {
            parser: MkvStreamParser::default(),
            time_base,
            options,
            header: None,
            media_type: String::new(),
            header_sent: false,
            timecode_scale_ns: 1_000_000,
            epoch_base: None,
            current: None,
            prev_max_frame: None,
            cur_max_frame: None,
            last_cluster: None,
            shifted_clusters: 0,
            video_track: None,
            started: false,
            muxed_cluster: None,
            held: Vec::new(),
            long_fragment_ns: None,
            keyframe_requested: false,
            keyframe_needed: false,
        }
    }

    /// Once the current fragment lasts `limit`, [`Fragmenter::take_keyframe_request`] says a key frame should be
    /// requested upstream: without one the fragment would grow past what the service accepts (or past
    /// `fragment-duration` when fragments are not cut at every key frame).
    pub fn set_long_fragment(&mut self, limit: Option<std::time::Duration>) {
        self.long_fragment_ns = limit.map(|d| d.as_nanos() as u64);
    }

    /// True once per fragment that has become too long (see [`Fragmenter::set_long_fragment`]).
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_needed)
    }

    /// Nanoseconds per timecode unit, from the header (1 ms until it is known).
    pub fn timecode_scale_ns(&self) -> u64 {
        self.timecode_scale_ns
    }

    /// How many cluster timecodes were moved to keep fragments from overlapping.
    pub fn shifted_clusters(&self) -> u64 {
        self.shifted_clusters
    }

    /// Parses more of matroskamux's output and appends the resulting items to `out`.
    pub fn push(
        &mut self,
        data: &[u8],
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) -> Result<(), FragmenterError> {
        self.parser.push(data);
        while let Some(ev) = self.parser.next_event()? {
            self.on_event(ev, ctx, out)?;
        }
        Ok(())
    }

    /// The end of the stream: completes what the parser still holds.
    pub fn finish(
        &mut self,
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) -> Result<(), FragmenterError> {
        while let Some(ev) = self.parser.finish()? {
            self.on_event(ev, ctx, out)?;
        }
        self.flush_held_at_end(ctx, out);
        Ok(())
    }

    fn on_event(
        &mut self,
        ev: MkvEvent,
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) -> Result<(), FragmenterError> {
        match ev {
            MkvEvent::Header(header) => {
                self.timecode_scale_ns = header.timecode_scale.max(1);
                self.header = Some(rebuild_header(&header, &self.options)?);
                self.media_type = media_type(&header);
                self.video_track = header
                    .track_list
                    .iter()
                    .find(|t| t.track_type == 1)
                    .map(|t| t.number);
                self.header_sent = false;
            }
            MkvEvent::ClusterStart { timecode, .. } => self.start_cluster(timecode, ctx, out)?,
            MkvEvent::ClusterChild { raw, block } => {
                let Some(block) = block else {
                    // PrevSize, Position, Void, CRC: layout details of matroskamux's output.
                    return Ok(());
                };
                if !self.started {
                    return self.before_first_keyframe(raw, block, ctx, out);
                }
                self.emit_block(raw, block, out);
            }
            MkvEvent::ClusterEnd => {
                if let Some(m) = self.cur_max_frame.take() {
                    self.prev_max_frame = Some(self.prev_max_frame.map_or(m, |p| p.max(m)));
                }
            }
            MkvEvent::Tags(_) | MkvEvent::SegmentEnd => {}
        }
        Ok(())
    }

    /// Writes a block of the current fragment with its relative timecode adjusted to the fragment's timecode.
    fn emit_block(
        &mut self,
        raw: Bytes,
        block: kvs_mkv::stream::BlockInfo,
        out: &mut Vec<UploadItem>,
    ) {
        let Some((cluster_tc, shift)) = self.current else {
            return;
        };
        let rel = i64::from(block.rel_timecode) - shift;
        let frame_time = (cluster_tc as i64 + rel).max(0) as u64;
        self.cur_max_frame = Some(self.cur_max_frame.map_or(frame_time, |m| m.max(frame_time)));
        if let Some(limit) = self.long_fragment_ns
            && !self.keyframe_requested
            && frame_time
                .saturating_sub(cluster_tc)
                .saturating_mul(self.timecode_scale_ns)
                >= limit
        {
            self.keyframe_requested = true;
            self.keyframe_needed = true;
        }
        let raw = if shift != 0 {
            let clamped = rel.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            shift_block(&raw, clamped).unwrap_or(raw)
        } else {
            raw
        };
        out.push(UploadItem::Data(raw));
    }

    /// Until the first video key frame, blocks (audio that matroskamux wrote first) are held: the service wants
    /// every fragment to start with a key frame, and dropping them would lose the first audio frames. The first
    /// fragment then starts at the key frame, and the held blocks follow it with their own (earlier) times.
    fn before_first_keyframe(
        &mut self,
        raw: Bytes,
        block: kvs_mkv::stream::BlockInfo,
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) -> Result<(), FragmenterError> {
        let Some(cluster) = self.muxed_cluster else {
            return Ok(());
        };
        let time = (cluster as i64 + i64::from(block.rel_timecode)).max(0) as u64;
        let is_key = self
            .video_track
            .is_none_or(|v| v == block.track && block.keyframe);
        if !is_key {
            // Video frames before the first key frame cannot be decoded by anyone; audio is kept, within
            // reason (a source that never sends a key frame must not grow memory).
            if self.video_track != Some(block.track) && self.held.len() < MAX_HELD_BLOCKS {
                self.held.push((time, raw));
            }
            return Ok(());
        }
        self.open_fragment(time, cluster, ctx, out);
        self.emit_block(raw, block, out);
        self.flush_held(out);
        Ok(())
    }

    fn flush_held(&mut self, out: &mut Vec<UploadItem>) {
        let Some((tc, _)) = self.current else {
            return;
        };
        for (time, raw) in std::mem::take(&mut self.held) {
            // Each held block keeps its own time, now relative to the fragment's timecode.
            let rel =
                (time as i64 - tc as i64).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            let shifted = shift_block(&raw, rel).unwrap_or(raw);
            self.cur_max_frame = Some(self.cur_max_frame.map_or(time, |m| m.max(time)));
            out.push(UploadItem::Data(shifted));
        }
    }

    /// At the end of the stream: blocks still held (no video key frame ever came) are sent in a fragment of
    /// their own rather than lost.
    fn flush_held_at_end(&mut self, ctx: &mut dyn FragmentContext, out: &mut Vec<UploadItem>) {
        if self.started || self.held.is_empty() {
            return;
        }
        let Some(cluster) = self.muxed_cluster else {
            return;
        };
        let first = self.held.iter().map(|(t, _)| *t).min().unwrap_or(cluster);
        self.open_fragment(first, cluster, ctx, out);
        self.flush_held(out);
    }

    fn start_cluster(
        &mut self,
        muxed: u64,
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) -> Result<(), FragmenterError> {
        let Some(header) = self.header.clone() else {
            return Err(FragmenterError::ClusterBeforeHeader);
        };
        if let Some(m) = self.cur_max_frame.take() {
            self.prev_max_frame = Some(self.prev_max_frame.map_or(m, |p| p.max(m)));
        }
        let base = *self.epoch_base.get_or_insert_with(|| ctx.epoch_base(muxed));
        if !self.header_sent {
            self.header_sent = true;
            let producer_start_ms = match self.time_base {
                TimeBase::Absolute => None,
                TimeBase::Relative => {
                    Some((u128::from(base) * u128::from(self.timecode_scale_ns) / 1_000_000) as u64)
                }
            };
            out.push(UploadItem::Header {
                bytes: header,
                producer_start_ms,
                media_type: self.media_type.clone(),
            });
        }
        let natural = match self.time_base {
            TimeBase::Absolute => base.saturating_add(muxed),
            TimeBase::Relative => muxed,
        };
        self.muxed_cluster = Some(natural);
        if self.started {
            self.open_fragment(natural, natural, ctx, out);
        }
        Ok(())
    }

    /// Starts a fragment at `start` (on the written time base) inside a muxed cluster whose timecode is
    /// `cluster`, after every frame already sent.
    fn open_fragment(
        &mut self,
        start: u64,
        cluster: u64,
        ctx: &mut dyn FragmentContext,
        out: &mut Vec<UploadItem>,
    ) {
        let mut min = 0u64;
        if let Some(last) = self.last_cluster {
            min = min.max(last + 1);
        }
        if let Some(prev) = self.prev_max_frame {
            min = min.max(prev + 1);
        }
        let written = start.max(min);
        if written != start {
            self.shifted_clusters += 1;
        }
        self.started = true;
        self.keyframe_requested = false;
        self.last_cluster = Some(written);
        self.current = Some((written, written as i64 - cluster as i64));

        let mut bytes = Vec::with_capacity(64);
        let metadata = ctx.fragment_metadata();
        if !metadata.is_empty() {
            let pairs: Vec<(&str, &str)> = metadata
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            bytes.extend_from_slice(&kvs_mkv::writer::tags_element(&pairs));
        }
        bytes.extend_from_slice(&kvs_mkv::writer::cluster_start(written));
        out.push(UploadItem::FragmentStart {
            timecode: written,
            bytes: Bytes::from(bytes),
        });
    }
}

/// The MIME types of the tracks, video first, as CreateStream's MediaType wants them (`video/h264,audio/aac`).
fn media_type(header: &SegmentHeader) -> String {
    let mut video = Vec::new();
    let mut audio = Vec::new();
    for t in &header.track_list {
        let mime = match t.codec_id.as_str() {
            "V_MPEG4/ISO/AVC" => "video/h264",
            "V_MPEGH/ISO/HEVC" => "video/h265",
            "A_AAC" | "A_AAC/MPEG4/LC" | "A_AAC/MPEG2/LC" => "audio/aac",
            // WAVEFORMATEX format tag 6 is A-law, 7 mu-law.
            "A_MS/ACM" => match t.codec_private.as_ref().and_then(|p| p.first()) {
                Some(7) => "audio/mulaw",
                _ => "audio/alaw",
            },
            _ if t.track_type == 1 => "video/x-unknown",
            _ => "audio/x-unknown",
        };
        if t.track_type == 1 {
            video.push(mime);
        } else {
            audio.push(mime);
        }
    }
    video.extend(audio);
    video.join(",")
}

/// EBML header + unknown-size Segment + Info + Tracks, with the tracks renamed as configured.
fn rebuild_header(header: &SegmentHeader, options: &HeaderOptions) -> Result<Bytes, MkvError> {
    let mut out = Vec::with_capacity(header.raw.len());
    out.extend_from_slice(&header.ebml);
    out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
    out.extend_from_slice(&header.info);
    out.extend_from_slice(&rebuild_tracks(&header.tracks, options)?);
    Ok(Bytes::from(out))
}

fn rebuild_tracks(tracks: &[u8], options: &HeaderOptions) -> Result<Vec<u8>, MkvError> {
    let Some(h) = ebml::read_element_header(tracks)? else {
        return Err(MkvError::Truncated("Tracks element header".into()));
    };
    let body = &tracks[h.header_len..];
    let mut new_body = Vec::with_capacity(body.len() + 32);
    for child in ebml::children(body) {
        let (ch, cbody) = child?;
        if ch.id != id::TRACK_ENTRY {
            ebml::write_binary_element(&mut new_body, ch.id, cbody);
            continue;
        }
        let mut track_type = 0;
        for c in ebml::children(cbody) {
            let (eh, ebody) = c?;
            if eh.id == id::TRACK_TYPE {
                track_type = ebml::read_uint(ebody)?;
            }
        }
        let (name, codec) = match track_type {
            1 => (
                options.video_track_name.as_deref(),
                options.video_codec_id.as_deref(),
            ),
            2 => (options.audio_track_name.as_deref(), None),
            _ => (None, None),
        };
        let mut entry = Vec::with_capacity(cbody.len() + 32);
        let mut name_written = false;
        for c in ebml::children(cbody) {
            let (eh, ebody) = c?;
            match eh.id {
                id::NAME if name.is_some() => {}
                id::CODEC_ID if codec.is_some() => {
                    if let Some(codec) = codec {
                        ebml::write_str_element(&mut entry, id::CODEC_ID, codec);
                    }
                }
                _ => ebml::write_binary_element(&mut entry, eh.id, ebody),
            }
            // The name goes right after the track type, where the official producer writes it.
            if eh.id == id::TRACK_TYPE
                && let Some(name) = name
            {
                ebml::write_str_element(&mut entry, id::NAME, name);
                name_written = true;
            }
        }
        if !name_written && let Some(name) = name {
            ebml::write_str_element(&mut entry, id::NAME, name);
        }
        ebml::write_master_element(&mut new_body, id::TRACK_ENTRY, &entry);
    }
    let mut out = Vec::with_capacity(new_body.len() + 12);
    ebml::write_master_element(&mut out, id::TRACKS, &new_body);
    Ok(out)
}

/// A copy of a SimpleBlock or BlockGroup element with the block's relative timecode replaced.
fn shift_block(raw: &[u8], rel: i16) -> Option<Bytes> {
    let h = ebml::read_element_header(raw).ok()??;
    let mut copy = raw.to_vec();
    // Offset of the block header (track number vint, then the 16-bit timecode) inside `copy`.
    let block_start = match h.id {
        id::SIMPLE_BLOCK => h.header_len,
        id::BLOCK_GROUP => {
            let mut pos = h.header_len;
            loop {
                let ch = ebml::read_element_header(&raw[pos..]).ok()??;
                if ch.id == id::BLOCK {
                    break pos + ch.header_len;
                }
                pos += ch.header_len + usize::try_from(ch.size?).ok()?;
                if pos >= raw.len() {
                    return None;
                }
            }
        }
        _ => return None,
    };
    let first = *raw.get(block_start)?;
    let track_len = first.leading_zeros() as usize + 1;
    let at = block_start + track_len;
    copy.get_mut(at..at + 2)?
        .copy_from_slice(&rel.to_be_bytes());
    Some(Bytes::from(copy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_mkv::writer;

    struct Ctx {
        base: u64,
        meta: Vec<(String, String)>,
    }

    impl FragmentContext for Ctx {
        fn epoch_base(&mut self, _first: u64) -> u64 {
            self.base
        }
        fn fragment_metadata(&mut self) -> Vec<(String, String)> {
            std::mem::take(&mut self.meta)
        }
    }

    fn header() -> Vec<u8> {
        let mut out = writer::ebml_header("matroska");
        out.extend_from_slice(&writer::segment_start_unknown());
        let mut info = Vec::new();
        ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
        ebml::write_master_element(&mut out, id::INFO, &info);
        let mut video = Vec::new();
        ebml::write_uint_element(&mut video, id::TRACK_NUMBER, 1);
        ebml::write_uint_element(&mut video, id::TRACK_UID, 1);
        ebml::write_uint_element(&mut video, id::TRACK_TYPE, 1);
        ebml::write_str_element(&mut video, id::CODEC_ID, "V_MPEG4/ISO/AVC");
        let mut audio = Vec::new();
        ebml::write_uint_element(&mut audio, id::TRACK_NUMBER, 2);
        ebml::write_uint_element(&mut audio, id::TRACK_UID, 2);
        ebml::write_uint_element(&mut audio, id::TRACK_TYPE, 2);
        ebml::write_str_element(&mut audio, id::CODEC_ID, "A_AAC");
        let mut tracks = Vec::new();
        ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &video);
        ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &audio);
        ebml::write_master_element(&mut out, id::TRACKS, &tracks);
        out
    }

    fn parse_items(items: &[UploadItem]) -> Vec<kvs_mkv::stream::MkvEvent> {
        let mut p = MkvStreamParser::default();
        for item in items {
            match item {
                UploadItem::Header { bytes, .. }
                | UploadItem::FragmentStart { bytes, .. }
                | UploadItem::Data(bytes) => p.push(bytes),
                UploadItem::Eos => {}
            }
        }
        let mut evs = Vec::new();
        while let Ok(Some(ev)) = p.finish() {
            evs.push(ev);
        }
        evs
    }

    #[test]
    fn clusters_get_absolute_timecodes_and_tracks_get_names() {
        let mut f = Fragmenter::new(
            TimeBase::Absolute,
            HeaderOptions {
                video_track_name: Some("kinesis_video".into()),
                audio_track_name: Some("audio".into()),
                video_codec_id: None,
            },
        );
        let mut ctx = Ctx {
            base: 1_700_000_000_000,
            meta: vec![("camera".into(), "front".into())],
        };
        let mut input = header();
        input.extend_from_slice(&writer::cluster_start(0));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key"));
        input.extend_from_slice(&writer::simple_block(2, 5, true, b"aac"));
        input.extend_from_slice(&writer::cluster_start(1000));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key2"));
        let mut out = Vec::new();
        // Byte by byte: the parser must cope with any split.
        for b in &input {
            f.push(std::slice::from_ref(b), &mut ctx, &mut out).unwrap();
        }
        f.finish(&mut ctx, &mut out).unwrap();
        let starts: Vec<u64> = out
            .iter()
            .filter_map(|i| match i {
                UploadItem::FragmentStart { timecode, .. } => Some(*timecode),
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![1_700_000_000_000, 1_700_000_001_000]);
        let evs = parse_items(&out);
        let MkvEvent::Header(h) = &evs[0] else {
            panic!("no header first: {:?}", evs[0]);
        };
        assert_eq!(
            h.track(1).and_then(|t| t.name.as_deref()),
            Some("kinesis_video")
        );
        assert_eq!(h.track(2).and_then(|t| t.name.as_deref()), Some("audio"));
        assert!(
            evs.iter()
                .any(|e| matches!(e, MkvEvent::Tags(t) if t.get("camera") == Some("front")))
        );
        let blocks = evs
            .iter()
            .filter(|e| matches!(e, MkvEvent::ClusterChild { block: Some(_), .. }))
            .count();
        assert_eq!(blocks, 3);
    }

    #[test]
    fn overlapping_cluster_is_moved_after_the_last_frame_and_frames_keep_their_time() {
        let mut f = Fragmenter::new(TimeBase::Relative, HeaderOptions::default());
        let mut ctx = Ctx {
            base: 5_000,
            meta: vec![],
        };
        let mut input = header();
        input.extend_from_slice(&writer::cluster_start(0));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key"));
        // Audio interleaved by DTS lands in the first cluster with a time after the next key frame.
        input.extend_from_slice(&writer::simple_block(2, 1020, true, b"aac"));
        input.extend_from_slice(&writer::cluster_start(1000));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key2"));
        input.extend_from_slice(&writer::simple_block(2, 40, true, b"aac2"));
        let mut out = Vec::new();
        f.push(&input, &mut ctx, &mut out).unwrap();
        f.finish(&mut ctx, &mut out).unwrap();
        match &out[0] {
            UploadItem::Header {
                producer_start_ms, ..
            } => assert_eq!(*producer_start_ms, Some(5_000)),
            other => panic!("expected the header first, got {other:?}"),
        }
        let evs = parse_items(&out);
        let mut cluster_tc = 0i64;
        let mut times = Vec::new();
        let mut clusters = Vec::new();
        for ev in &evs {
            match ev {
                MkvEvent::ClusterStart { timecode, .. } => {
                    cluster_tc = *timecode as i64;
                    clusters.push(*timecode);
                }
                MkvEvent::ClusterChild { block: Some(b), .. } => {
                    times.push(cluster_tc + i64::from(b.rel_timecode))
                }
                _ => {}
            }
        }
        assert_eq!(clusters, vec![0, 1021]);
        assert_eq!(times, vec![0, 1020, 1000, 1040]);
        assert_eq!(f.shifted_clusters(), 1);
    }

    #[test]
    fn audio_before_the_first_key_frame_follows_it_in_the_first_fragment() {
        let mut f = Fragmenter::new(TimeBase::Relative, HeaderOptions::default());
        let mut ctx = Ctx {
            base: 0,
            meta: vec![],
        };
        let mut input = header();
        // matroskamux opened its first cluster with an audio frame, the key frame then opened the next.
        input.extend_from_slice(&writer::cluster_start(0));
        input.extend_from_slice(&writer::simple_block(2, 0, false, b"aac0"));
        input.extend_from_slice(&writer::cluster_start(6));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key"));
        input.extend_from_slice(&writer::simple_block(2, 15, false, b"aac1"));
        let mut out = Vec::new();
        f.push(&input, &mut ctx, &mut out).unwrap();
        f.finish(&mut ctx, &mut out).unwrap();
        let evs = parse_items(&out);
        let mut tc = 0i64;
        let mut seen = Vec::new();
        let mut clusters = 0;
        for ev in &evs {
            match ev {
                MkvEvent::ClusterStart { timecode, .. } => {
                    clusters += 1;
                    tc = *timecode as i64;
                }
                MkvEvent::ClusterChild { block: Some(b), .. } => {
                    seen.push((b.track, tc + i64::from(b.rel_timecode), b.keyframe))
                }
                _ => {}
            }
        }
        assert_eq!(clusters, 1, "one fragment, starting at the key frame");
        assert_eq!(tc, 6);
        assert_eq!(seen, vec![(1, 6, true), (2, 0, false), (2, 21, false)]);
    }

    #[test]
    fn a_fragment_growing_too_long_asks_for_a_key_frame_once() {
        let mut f = Fragmenter::new(TimeBase::Relative, HeaderOptions::default());
        f.set_long_fragment(Some(std::time::Duration::from_secs(2)));
        let mut ctx = Ctx {
            base: 0,
            meta: vec![],
        };
        let mut out = Vec::new();
        let mut input = header();
        input.extend_from_slice(&writer::cluster_start(0));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key"));
        input.extend_from_slice(&writer::simple_block(1, 1500, false, b"p"));
        f.push(&input, &mut ctx, &mut out).unwrap();
        assert!(!f.take_keyframe_request());
        let mut more = writer::simple_block(1, 2100, false, b"p");
        more.extend_from_slice(&writer::simple_block(1, 2200, false, b"p"));
        f.push(&more, &mut ctx, &mut out).unwrap();
        assert!(f.take_keyframe_request());
        assert!(!f.take_keyframe_request(), "once per fragment");
    }

    #[test]
    fn codec_id_override_applies_to_video_only() {
        let opts = HeaderOptions {
            video_track_name: None,
            audio_track_name: None,
            video_codec_id: Some("V_MPEGH/ISO/HEVC".into()),
        };
        let mut f = Fragmenter::new(TimeBase::Absolute, opts);
        let mut ctx = Ctx {
            base: 0,
            meta: vec![],
        };
        let mut input = header();
        input.extend_from_slice(&writer::cluster_start(0));
        input.extend_from_slice(&writer::simple_block(1, 0, true, b"key"));
        let mut out = Vec::new();
        f.push(&input, &mut ctx, &mut out).unwrap();
        let evs = parse_items(&out);
        let MkvEvent::Header(h) = &evs[0] else {
            panic!("no header");
        };
        assert_eq!(
            h.track(1).map(|t| t.codec_id.as_str()),
            Some("V_MPEGH/ISO/HEVC")
        );
        assert_eq!(h.track(2).map(|t| t.codec_id.as_str()), Some("A_AAC"));
    }
}
