// SPDX-License-Identifier: MPL-2.0
//! Rewrites what GetMedia and GetMediaForFragmentList return (a chain of complete Matroska documents, one per
//! fragment, with the service's `AWS_KINESISVIDEO_*` tags around each Cluster) into ONE continuous Matroska stream.
//!
//! Output, in order:
//! - an EBML header, a Segment of unknown size, an Info and the Tracks, once; again (as a new Segment) only when
//!   a fragment's Tracks differ from the ones in force;
//! - the Clusters of each fragment, written with a known size, carrying only their Timecode and their blocks.
//!
//! Everything else is taken out of the byte stream: SeekHead, Cues, Void, CRC-32, Duration and SegmentUID (they
//! would be wrong for a stream with no end), and every Tags element. The service's tags and the producer's tags of
//! a fragment are reported instead in a [`FragmentInfo`] that comes with the fragment's bytes; error tags become a
//! [`RemuxItem::ServiceError`].
//!
//! A fragment is output only once it is complete: its trailing tags arrived (GetMedia), the next document began,
//! or the body ended normally where no trailing tags are expected (GetMediaForFragmentList). A fragment cut in the
//! middle is dropped by [`Remuxer::end_body`] so that the reader can ask for it again from its start; fragments
//! whose number is not above the last one output are dropped too, so a resumed read never repeats one.
//!
//! Timeline: the output starts at 0 with the first frame it carries (the producer's timecodes are epoch
//! milliseconds, which players would take for a stream hours long; each fragment's producer timestamp is in its
//! [`FragmentInfo`]) and then keeps the source's timecode differences whenever they move forward. When a cluster
//! would start before what was already output on one of its tracks
//! (producers that restart their timecodes, like the capture `output-get-media-non-increasing-timecode.mkv`), the
//! cluster and everything after it is shifted forward to continue right after the last output frame (one frame
//! duration after it). The shift accumulates and is reported as [`FragmentInfo::timeline_shift_ns`]. A fragment
//! with another TimecodeScale than the output's keeps the output's scale: its timecodes are converted (rounded to
//! the output's unit) and a cluster is split where a converted block timecode no longer fits the 16-bit relative
//! field. Both keep matroskademux and ffmpeg free of "non-monotonic timestamp" trouble at fragment boundaries.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use kvs_mkv::MkvError;
use kvs_mkv::ebml::{self, id};
use kvs_mkv::fragment_number::FragmentNumber;
use kvs_mkv::stream::{BlockInfo, Limits, MkvEvent, MkvStreamParser, SegmentHeader, TagsElement};
use kvs_mkv::tags;
pub use kvs_mkv::tags::{
    EXCEPTION_ERROR_CODE, EXCEPTION_MESSAGE, PRODUCER_SIDE_TIMESTAMP, SERVER_SIDE_TIMESTAMP,
};

/// Largest fragment held in memory while waiting for it to complete. The service caps fragments at 50 MB.
pub const MAX_FRAGMENT_BYTES: usize = 256 * 1024 * 1024;

/// Info children that do not hold for the continuous output.
const INFO_DROPPED: &[u32] = &[
    id::CRC32,
    id::VOID,
    id::DURATION,
    id::SEGMENT_UID,
    id::TIMECODE_SCALE, // written again first, with the output's value
    0x3CB923,           // PrevUID
    0x3C83AB,           // PrevFilename
    0x3EB923,           // NextUID
    0x3E83BB,           // NextFilename
    0x4444,             // SegmentFamily
    0x7384,             // SegmentFilename
    0x6924,             // ChapterTranslate
];

/// Why the rewriter stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemuxError {
    #[error("the media returned by the service is not valid Matroska: {0}")]
    Mkv(#[from] MkvError),
    #[error("fragment {fragment} is larger than {limit} bytes")]
    FragmentTooLarge { fragment: String, limit: usize },
    #[error(
        "fragment {fragment}: a timecode is out of range after conversion to the output's TimecodeScale"
    )]
    TimecodeOutOfRange { fragment: String },
}

/// An error the service reported inside the media (`AWS_KINESISVIDEO_ERROR_ID` / `_ERROR_CODE` tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub id: Option<u32>,
    pub code: Option<String>,
    /// The last fragment output before the error, if any.
    pub after_fragment: Option<String>,
}

impl ServiceError {
    /// What the service documents for the error id.
    pub fn description(&self) -> &'static str {
        match self.id {
            Some(3002) => "error writing to the stream",
            Some(4000) => "requested fragment is not found",
            Some(4500) => "access denied for the stream's KMS key",
            Some(4501) => "the stream's KMS key is disabled",
            Some(4502) => "validation error on the stream's KMS key",
            Some(4503) => "the KMS key specified in the stream is unavailable",
            Some(4504) => "invalid usage of the KMS key specified in the stream",
            Some(4505) => "invalid state of the KMS key specified in the stream",
            Some(4506) => "unable to find the KMS key specified in the stream",
            Some(5000) => "internal error",
            _ => "unknown error",
        }
    }

    /// Errors on the service's side that a new request may not meet again.
    pub fn is_transient(&self) -> bool {
        matches!(self.id, Some(3002 | 5000))
    }

    /// KMS errors: the caller lacks a permission or the key is unusable.
    pub fn is_kms(&self) -> bool {
        matches!(self.id, Some(4500..=4506))
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the service ended the media with error ")?;
        match self.id {
            Some(id) => write!(f, "{id}")?,
            None => write!(f, "(no id)")?,
        }
        write!(
            f,
            " {}: {}",
            self.code.as_deref().unwrap_or("(no code)"),
            self.description()
        )?;
        if let Some(after) = &self.after_fragment {
            write!(f, " (after fragment {after})")?;
        }
        Ok(())
    }
}

/// What the rewriter learnt about one fragment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FragmentInfo {
    pub fragment_number: Option<String>,
    /// Epoch milliseconds.
    pub producer_timestamp_ms: Option<u64>,
    /// Epoch milliseconds.
    pub server_timestamp_ms: Option<u64>,
    /// Only in GetMedia output.
    pub millis_behind_now: Option<u64>,
    /// Only in GetMedia output; resuming with it starts after this fragment.
    pub continuation_token: Option<String>,
    /// The fragment's own (non-AWS) tags, in order.
    pub producer_tags: Vec<(String, String)>,
    /// Blocks (frames) output.
    pub frames: u64,
    /// Cluster bytes output for the fragment.
    pub bytes: u64,
    /// Output timestamp (nanoseconds, the demuxer's timeline) of the fragment's first cluster.
    pub first_timestamp_ns: Option<u64>,
    /// How far the output timeline is ahead of the source's at this fragment (nanoseconds, see the module docs).
    pub timeline_shift_ns: i64,
    /// False only for a fragment flushed by [`BodyEnd::Flush`] without its end.
    pub complete: bool,
}

/// What [`Remuxer::pop`] hands out, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum RemuxItem {
    /// EBML header + Segment (unknown size) + Info + Tracks: before the first fragment and when Tracks change.
    Header(Bytes),
    /// The clusters of one complete fragment.
    Fragment { data: Bytes, info: FragmentInfo },
    /// A fragment already output came again (a resumed read); it was dropped.
    Duplicate(String),
    /// The service reported an error in the media; nothing follows it in this body.
    ServiceError(ServiceError),
    /// GetMediaForFragmentList could not read one fragment (exception tags); the body goes on.
    FragmentError(FragmentError),
    /// A fragment whose clusters cannot be written into the output (a time that no GStreamer timestamp can
    /// hold, a malformed block): it is left out and the fragments after it go on.
    Unwritable {
        fragment_number: Option<String>,
        error: String,
    },
}

/// A fragment GetMediaForFragmentList could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentError {
    pub fragment_number: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for FragmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the service could not read fragment {} (error {}: {})",
            self.fragment_number.as_deref().unwrap_or("(unknown)"),
            self.code.as_deref().unwrap_or("(no code)"),
            self.message.as_deref().unwrap_or("(no message)")
        )
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The service ended it normally.
    Complete,
    /// The connection failed, stalled or the reader gave up on it: a fragment in progress is incomplete.
    Cut,
    /// No more input will come (a saved file): output every complete block, even of an unfinished fragment.
    Flush,
}

#[derive(Debug)]
struct PendingBlock {
    raw: Bytes,
    info: BlockInfo,
}

#[derive(Debug)]
struct PendingCluster {
    timecode: u64,
    blocks: Vec<PendingBlock>,
}

/// A fragment being received.
#[derive(Debug, Default)]
struct PendingFragment {
    info: FragmentInfo,
    clusters: Vec<PendingCluster>,
    size: usize,
}

impl PendingFragment {
    fn name(&self) -> String {
        self.info
            .fragment_number
            .clone()
            .unwrap_or_else(|| "(without number)".into())
    }
}

/// The output segment in force.
#[derive(Debug)]
struct OutputSegment {
    tracks_signature: Vec<u8>,
    /// Nanoseconds per timecode unit of the output.
    scale: u64,
    /// Default frame duration per track, in output units.
    default_step: HashMap<u64, i128>,
}

/// Where the output timeline stands, in output timecode units.
#[derive(Debug, Default)]
struct Timeline {
    /// Added to every converted source timecode.
    offset: i128,
    /// Per track: the latest block time output and the frame duration seen last.
    tracks: HashMap<u64, (i128, i128)>,
    /// Nothing may start before this (set when a new segment replaces the tracks).
    floor: Option<i128>,
    /// Whether a cluster was output, i.e. whether `offset` has been set to put the first frame at 0.
    started: bool,
}

impl Timeline {
    /// The earliest time the next frame may take, over all tracks.
    fn end(&self) -> Option<i128> {
        let tracks = self.tracks.values().map(|(last, step)| last + step).max();
        tracks.max(self.floor)
    }
}

/// The rewriter. One per element run: it outlives the HTTP responses it is fed, so that the output stays one
/// stream across reconnects. Feed each response with [`push`](Self::push), close it with
/// [`end_body`](Self::end_body), and take the output with [`pop`](Self::pop).
#[derive(Debug)]
pub struct Remuxer {
    /// GetMedia ends every fragment with tags; GetMediaForFragmentList does not.
    trailer_expected: bool,
    limits: Limits,
    max_fragment_bytes: usize,
    parser: MkvStreamParser,
    doc_header: Option<SegmentHeader>,
    pending: Option<PendingFragment>,
    /// After a service error the rest of the body is ignored.
    stopped: bool,
    /// Bytes at the start of a body, held back while they are bare Tags elements: the service may answer
    /// with error tags before (or instead of) any Matroska document, which the stream parser does not accept.
    body_start: Option<Vec<u8>>,
    out: Option<OutputSegment>,
    timeline: Timeline,
    last_fragment: Option<FragmentNumber>,
    continuation_token: Option<String>,
    items: VecDeque<RemuxItem>,
    /// Duration of what the output will hold, when known in advance (range reads): written into the first
    /// segment's Info so that players show the right length of a saved file.
    expected_duration_ns: Option<u64>,
}

impl Remuxer {
    /// `trailer_expected`: true for GetMedia bodies (fragments end with the continuation token tags).
    pub fn new(trailer_expected: bool) -> Self {
        let limits = Limits::default();
        Remuxer {
            trailer_expected,
            limits,
            max_fragment_bytes: MAX_FRAGMENT_BYTES,
            parser: MkvStreamParser::new(limits),
            doc_header: None,
            pending: None,
            stopped: false,
            body_start: Some(Vec::new()),
            out: None,
            timeline: Timeline::default(),
            last_fragment: None,
            continuation_token: None,
            items: VecDeque::new(),
            expected_duration_ns: None,
        }
    }

    /// The latest continuation token seen, or else the number of the last fragment output: where a resumed
    /// GetMedia starts (after that fragment).
    pub fn resume_token(&self) -> Option<String> {
        self.continuation_token
            .clone()
            .or_else(|| self.last_fragment.as_ref().map(|f| f.to_string()))
    }

    /// Declares how long the output will be (a range read knows it from ListFragments). Only the first segment
    /// header carries it; it has no effect once output has begun.
    pub fn set_expected_duration(&mut self, duration: std::time::Duration) {
        if self.out.is_none() {
            self.expected_duration_ns = u64::try_from(duration.as_nanos()).ok();
        }
    }

    /// The number of the last fragment output.
    pub fn last_fragment(&self) -> Option<&FragmentNumber> {
        self.last_fragment.as_ref()
    }

    /// The next output item.
    pub fn pop(&mut self) -> Option<RemuxItem> {
        self.items.pop_front()
    }

    /// Feeds bytes of the current response body.
    pub fn push(&mut self, data: &[u8]) -> Result<(), RemuxError> {
        if self.stopped {
            return Ok(());
        }
        if let Some(mut start) = self.body_start.take() {
            start.extend_from_slice(data);
            match self.take_leading_tags(&mut start)? {
                true => self.parser.push(&start),
                false => {
                    self.body_start = Some(start);
                    return Ok(());
                }
            }
        } else {
            self.parser.push(data);
        }
        while let Some(event) = self.parser.next_event()? {
            self.handle(event)?;
            if self.stopped {
                break;
            }
        }
        Ok(())
    }

    /// Closes the current response body. Returns the fragment that was dropped because it was incomplete (its
    /// info so far), if any. The next [`push`](Self::push) starts a new body.
    pub fn end_body(&mut self, end: BodyEnd) -> Result<Option<FragmentInfo>, RemuxError> {
        let mut dropped = None;
        if !self.stopped {
            match end {
                BodyEnd::Cut => dropped = self.pending.take().map(|p| p.info),
                BodyEnd::Complete | BodyEnd::Flush => {
                    let truncated = loop {
                        match self.parser.finish() {
                            Ok(Some(event)) => {
                                self.handle(event)?;
                                if self.stopped {
                                    break false;
                                }
                            }
                            Ok(None) => break false,
                            Err(MkvError::Truncated(_)) => break true,
                            Err(e) => return Err(e.into()),
                        }
                    };
                    if let Some(pending) = self.pending.take() {
                        let whole = !truncated && !self.trailer_expected;
                        if whole || end == BodyEnd::Flush {
                            self.complete(pending, whole)?;
                        } else {
                            dropped = Some(pending.info);
                        }
                    }
                }
            }
        }
        self.parser = MkvStreamParser::new(self.limits);
        self.doc_header = None;
        self.pending = None;
        self.stopped = false;
        self.body_start = Some(Vec::new());
        Ok(dropped)
    }

    /// Handles the Tags elements at the very start of a body and removes them from `start`. Returns true once
    /// something else begins (the rest goes to the parser), false while more bytes are needed.
    fn take_leading_tags(&mut self, start: &mut Vec<u8>) -> Result<bool, RemuxError> {
        loop {
            let Some(header) = ebml::read_element_header(start)? else {
                return Ok(false);
            };
            if header.id != id::TAGS {
                return Ok(true);
            }
            let size = header
                .size
                .ok_or_else(|| MkvError::Invalid("a Tags element of unknown size".into()))?;
            if size > self.limits.max_element_size {
                return Err(MkvError::TooLarge(format!("Tags element of {size} bytes")).into());
            }
            let total = header.header_len + size as usize;
            if start.len() < total {
                return Ok(false);
            }
            let tags = kvs_mkv::stream::parse_tags(&start[header.header_len..total])?;
            let raw = Bytes::copy_from_slice(&start[..total]);
            start.drain(..total);
            self.handle_tags(TagsElement { raw, tags })?;
            if self.stopped {
                start.clear();
                return Ok(true);
            }
        }
    }

    fn pending(&mut self) -> &mut PendingFragment {
        self.pending.get_or_insert_with(PendingFragment::default)
    }

    fn handle(&mut self, event: MkvEvent) -> Result<(), RemuxError> {
        match event {
            MkvEvent::Header(header) => {
                self.pending();
                self.doc_header = Some(header);
            }
            MkvEvent::Tags(element) => self.handle_tags(element)?,
            MkvEvent::ClusterStart { timecode, .. } => {
                self.pending().clusters.push(PendingCluster {
                    timecode,
                    blocks: Vec::new(),
                });
            }
            MkvEvent::ClusterChild { raw, block } => {
                // Void, CRC-32, Position, PrevSize: nothing the output needs.
                let Some(info) = block else { return Ok(()) };
                let limit = self.max_fragment_bytes;
                let pending = self.pending();
                pending.size += raw.len();
                if pending.size > limit {
                    return Err(RemuxError::FragmentTooLarge {
                        fragment: pending.name(),
                        limit,
                    });
                }
                if let Some(cluster) = pending.clusters.last_mut() {
                    cluster.blocks.push(PendingBlock { raw, info });
                }
            }
            MkvEvent::ClusterEnd => {}
            MkvEvent::SegmentEnd => {
                // The next document begins: the fragment before it is whole (GetMediaForFragmentList has no
                // trailing tags; after GetMedia's trailing tags nothing is pending any more).
                if let Some(pending) = self.pending.take() {
                    self.complete(pending, true)?;
                }
                self.doc_header = None;
            }
        }
        Ok(())
    }

    fn handle_tags(&mut self, element: TagsElement) -> Result<(), RemuxError> {
        if element.contains(tags::ERROR_ID) || element.contains(tags::ERROR_CODE) {
            let error = ServiceError {
                id: element
                    .get(tags::ERROR_ID)
                    .and_then(|v| v.trim().parse().ok()),
                code: element.get(tags::ERROR_CODE).map(str::to_owned),
                after_fragment: self.last_fragment.as_ref().map(|f| f.to_string()),
            };
            self.pending = None;
            self.stopped = true;
            self.items.push_back(RemuxItem::ServiceError(error));
            return Ok(());
        }
        if element.contains(EXCEPTION_ERROR_CODE) || element.contains(EXCEPTION_MESSAGE) {
            // In place of a fragment: the one before it (if any) is complete.
            if let Some(pending) = self.pending.take()
                && !pending.clusters.is_empty()
            {
                self.complete(pending, true)?;
            }
            self.items
                .push_back(RemuxItem::FragmentError(FragmentError {
                    fragment_number: element
                        .get(tags::FRAGMENT_NUMBER)
                        .map(|v| v.trim().to_owned()),
                    code: element.get(EXCEPTION_ERROR_CODE).map(str::to_owned),
                    message: element.get(EXCEPTION_MESSAGE).map(str::to_owned),
                }));
            return Ok(());
        }
        let mut ends_fragment = false;
        let pending = self.pending();
        for tag in &element.tags {
            let value = tag.value.as_str();
            match tag.name.as_str() {
                tags::FRAGMENT_NUMBER => {
                    pending.info.fragment_number = value.map(|v| v.trim().to_owned())
                }
                tags::PRODUCER_TIMESTAMP | PRODUCER_SIDE_TIMESTAMP => {
                    pending.info.producer_timestamp_ms = value.and_then(tags::parse_timestamp_ms)
                }
                tags::SERVER_TIMESTAMP | SERVER_SIDE_TIMESTAMP => {
                    pending.info.server_timestamp_ms = value.and_then(tags::parse_timestamp_ms)
                }
                tags::MILLIS_BEHIND_NOW => {
                    pending.info.millis_behind_now = value.and_then(|v| v.trim().parse().ok());
                    ends_fragment = true;
                }
                tags::CONTINUATION_TOKEN => {
                    pending.info.continuation_token = value.map(|v| v.trim().to_owned());
                    ends_fragment = true;
                }
                name if name.starts_with(tags::AWS_PREFIX) => {}
                name => {
                    let value = match &tag.value {
                        kvs_mkv::stream::TagValue::String(s) => s.clone(),
                        kvs_mkv::stream::TagValue::Binary(b) => format!("<{} bytes>", b.len()),
                        kvs_mkv::stream::TagValue::None => String::new(),
                    };
                    pending.info.producer_tags.push((name.to_owned(), value));
                }
            }
        }
        if ends_fragment && let Some(pending) = self.pending.take() {
            if let Some(token) = &pending.info.continuation_token {
                self.continuation_token = Some(token.clone());
            }
            self.complete(pending, true)?;
        }
        Ok(())
    }

    /// Outputs a fragment (or drops it as a repeat).
    fn complete(&mut self, pending: PendingFragment, whole: bool) -> Result<(), RemuxError> {
        let number = pending
            .info
            .fragment_number
            .as_deref()
            .and_then(|n| n.parse::<FragmentNumber>().ok());
        if let (Some(number), Some(last)) = (&number, &self.last_fragment)
            && number <= last
        {
            self.items
                .push_back(RemuxItem::Duplicate(number.to_string()));
            return Ok(());
        }
        let Some(header) = self.doc_header.clone() else {
            // Tags without a document around them (nothing to play): only the records matter.
            if pending.clusters.is_empty() && pending.info.fragment_number.is_none() {
                return Ok(());
            }
            let mut info = pending.info;
            info.complete = whole;
            if let Some(number) = number {
                self.last_fragment = Some(number);
            }
            self.items.push_back(RemuxItem::Fragment {
                data: Bytes::new(),
                info,
            });
            return Ok(());
        };
        self.ensure_segment(&header)?;
        let name = pending.name();
        let mut info = pending.info;
        info.complete = whole;
        let mut data = Vec::with_capacity(pending.size + 32 * pending.clusters.len());
        let written = pending.clusters.iter().try_for_each(|cluster| {
            self.write_cluster(cluster, &header, &name, &mut data, &mut info)
        });
        if let Some(number) = number {
            self.last_fragment = Some(number);
        }
        if let Err(error) = written {
            // Only this fragment is lost: the timeline holds what earlier clusters committed, so the next fragment
            // still starts after everything output.
            self.items.push_back(RemuxItem::Unwritable {
                fragment_number: info.fragment_number,
                error: error.to_string(),
            });
            return Ok(());
        }
        info.bytes = data.len() as u64;
        self.items.push_back(RemuxItem::Fragment {
            data: Bytes::from(data),
            info,
        });
        Ok(())
    }

    /// Starts the output segment, or a new one when the Tracks differ from the ones in force.
    fn ensure_segment(&mut self, header: &SegmentHeader) -> Result<(), RemuxError> {
        let signature = tracks_signature(&header.tracks)?;
        if self
            .out
            .as_ref()
            .is_some_and(|out| out.tracks_signature == signature)
        {
            return Ok(());
        }
        let scale = header.timecode_scale;
        // Carry the timeline over into the new segment's unit; the new tracks only have to start after it.
        if let Some(old) = &self.out {
            let end = self
                .timeline
                .end()
                .map(|e| ceil_div(e * i128::from(old.scale), i128::from(scale)));
            self.timeline.offset = ceil_div(
                self.timeline.offset * i128::from(old.scale),
                i128::from(scale),
            );
            self.timeline.tracks.clear();
            self.timeline.floor = end;
        }
        let default_step = header
            .track_list
            .iter()
            .filter_map(|t| {
                let d = t.default_duration? / scale;
                (d > 0).then_some((t.number, i128::from(d)))
            })
            .collect();
        let mut raw =
            Vec::with_capacity(header.ebml.len() + header.info.len() + header.tracks.len() + 32);
        raw.extend_from_slice(&header.ebml);
        ebml::write_id(&mut raw, id::SEGMENT);
        ebml::write_unknown_size(&mut raw);
        // Only the first segment can say how long the whole output is.
        let duration = self
            .expected_duration_ns
            .take()
            .filter(|_| self.out.is_none());
        raw.extend_from_slice(&output_info(&header.info, scale, duration)?);
        raw.extend_from_slice(&header.tracks);
        self.out = Some(OutputSegment {
            tracks_signature: signature,
            scale,
            default_step,
        });
        self.items.push_back(RemuxItem::Header(Bytes::from(raw)));
        Ok(())
    }

    fn write_cluster(
        &mut self,
        cluster: &PendingCluster,
        header: &SegmentHeader,
        fragment: &str,
        data: &mut Vec<u8>,
        info: &mut FragmentInfo,
    ) -> Result<(), RemuxError> {
        let Some(out) = &self.out else {
            return Ok(());
        };
        let (scale_in, scale_out) = (i128::from(header.timecode_scale), i128::from(out.scale));
        // Saturating: BlockDuration and ReferenceBlock may hold anything; they are clamped when written.
        let convert = |v: i128| -> i128 {
            if scale_in == scale_out {
                v
            } else {
                round_div(v.saturating_mul(scale_in), scale_out)
            }
        };
        let out_of_range = || RemuxError::TimecodeOutOfRange {
            fragment: fragment.to_owned(),
        };
        // Whether a duration in output units is one a GStreamer timestamp can hold (u64 nanoseconds).
        let fits_ns = |v: i128| {
            v.checked_mul(scale_out)
                .is_some_and(|ns| (0..=i128::from(u64::MAX)).contains(&ns))
        };
        let base = i128::from(cluster.timecode);
        // The source's own time must be a valid timestamp: this bounds every time below (a block is at most
        // 2^15 ticks from its cluster), so that the arithmetic on them cannot overflow.
        if base
            .checked_mul(scale_in)
            .is_none_or(|ns| ns > i128::from(u64::MAX))
        {
            return Err(out_of_range());
        }
        let start = convert(base);
        let times: Vec<i128> = cluster
            .blocks
            .iter()
            .map(|b| convert(base + i128::from(b.info.rel_timecode)))
            .collect();

        let mut offset = if self.timeline.started {
            self.timeline.offset
        } else {
            // The first frame output (B-frames may precede the cluster's own timecode) is at 0.
            -times.iter().copied().min().unwrap_or(start).min(start)
        };
        // How far this cluster must move so that no track goes back in time (see the module docs).
        let mut need = -(start + offset);
        let mut first_per_track: HashMap<u64, i128> = HashMap::new();
        for (block, &t) in cluster.blocks.iter().zip(&times) {
            let first = first_per_track.entry(block.info.track).or_insert(t);
            *first = (*first).min(t);
        }
        for (track, first) in &first_per_track {
            if let Some((last, step)) = self.timeline.tracks.get(track) {
                need = need.max(last + step - (first + offset));
            }
        }
        if let (Some(floor), Some(first)) = (self.timeline.floor, times.iter().min()) {
            need = need.max(floor - (first + offset));
        }
        if need > 0 {
            offset += need;
        }
        let mut cluster_time = start + offset;
        let latest = times.iter().copied().max().unwrap_or(start) + offset;
        if !fits_ns(cluster_time) || !fits_ns(latest.max(0)) {
            // The timeline stays as it was: the next fragment goes on from the last one output.
            return Err(out_of_range());
        }
        self.timeline.offset = offset;
        self.timeline.started = true;
        self.timeline.floor = None;
        if info.first_timestamp_ns.is_none() {
            info.first_timestamp_ns = u64::try_from(cluster_time * scale_out).ok();
        }
        info.timeline_shift_ns = i64::try_from(offset * scale_out).unwrap_or(i64::MAX);

        let mut track_times: HashMap<u64, Vec<(i128, Option<u64>)>> = HashMap::new();
        let mut body =
            Vec::with_capacity(cluster.blocks.iter().map(|b| b.raw.len()).sum::<usize>() + 16);
        ebml::write_uint_element(&mut body, id::TIMECODE, cluster_time as u64);
        for (block, &t) in cluster.blocks.iter().zip(&times) {
            let time = t + offset;
            let mut rel = time - cluster_time;
            if rel < i128::from(i16::MIN) || rel > i128::from(i16::MAX) {
                // Only after a TimecodeScale conversion: continue in a new cluster that starts at this block.
                if time < 0 {
                    return Err(out_of_range());
                }
                write_cluster_element(data, &body);
                body.clear();
                cluster_time = time;
                rel = 0;
                ebml::write_uint_element(&mut body, id::TIMECODE, cluster_time as u64);
            }
            let rel = rel as i16;
            if rel == block.info.rel_timecode && scale_in == scale_out {
                body.extend_from_slice(&block.raw);
            } else {
                rewrite_block(&block.raw, rel, &convert, &mut body)?;
            }
            info.frames += 1;
            track_times
                .entry(block.info.track)
                .or_default()
                .push((time, block.info.duration));
        }
        // Per track: the end of the output so far, and the duration of one frame (BlockDuration, else the smallest
        // gap between the cluster's frames, which B-frame reordering does not distort, else DefaultDuration).
        for (track, mut list) in track_times {
            list.sort_unstable_by_key(|(t, _)| *t);
            let Some(&(last, last_duration)) = list.last() else {
                continue;
            };
            let gap = list
                .windows(2)
                .map(|w| w[1].0 - w[0].0)
                .filter(|d| *d > 0)
                .min();
            let step = match last_duration {
                Some(d) if d > 0 => Some(convert(i128::from(d)).max(1)).filter(|&s| fits_ns(s)),
                _ => None,
            }
            .or_else(|| gap.or_else(|| out.default_step.get(&track).copied()));
            let entry = self.timeline.tracks.entry(track).or_insert((last, 1));
            entry.0 = entry.0.max(last);
            if let Some(step) = step {
                entry.1 = step;
            }
        }
        write_cluster_element(data, &body);
        Ok(())
    }
}

fn write_cluster_element(data: &mut Vec<u8>, body: &[u8]) {
    ebml::write_id(data, id::CLUSTER);
    ebml::write_size(data, body.len() as u64);
    data.extend_from_slice(body);
}

/// The Tracks body without CRC-32 and Void, which do not change what the tracks are.
fn tracks_signature(tracks: &[u8]) -> Result<Vec<u8>, MkvError> {
    let header = ebml::read_element_header(tracks)?
        .ok_or_else(|| MkvError::Invalid("truncated Tracks element".into()))?;
    let mut signature = Vec::with_capacity(tracks.len());
    for child in ebml::children(&tracks[header.header_len..]) {
        let (h, body) = child?;
        if h.id == id::CRC32 || h.id == id::VOID {
            continue;
        }
        ebml::write_binary_element(&mut signature, h.id, body);
    }
    Ok(signature)
}

/// The Info element of the output: the source's, with the output's TimecodeScale and without what describes a
/// finite file (Duration, SegmentUID, links to other segments).
fn output_info(info: &[u8], scale: u64, duration_ns: Option<u64>) -> Result<Vec<u8>, MkvError> {
    let header = ebml::read_element_header(info)?
        .ok_or_else(|| MkvError::Invalid("truncated Info element".into()))?;
    let mut body = Vec::with_capacity(info.len() + 11);
    ebml::write_uint_element(&mut body, id::TIMECODE_SCALE, scale);
    if let Some(ns) = duration_ns {
        // Duration is a float in TimecodeScale units.
        ebml::write_float_element(&mut body, id::DURATION, ns as f64 / scale as f64);
    }
    for child in ebml::children(&info[header.header_len..]) {
        let (h, child_body) = child?;
        if !INFO_DROPPED.contains(&h.id) {
            ebml::write_binary_element(&mut body, h.id, child_body);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    ebml::write_master_element(&mut out, id::INFO, &body);
    Ok(out)
}

/// Writes a SimpleBlock or BlockGroup with a new relative timecode; in a BlockGroup, BlockDuration and
/// ReferenceBlock are converted with `convert` too.
fn rewrite_block(
    raw: &[u8],
    rel: i16,
    convert: &dyn Fn(i128) -> i128,
    out: &mut Vec<u8>,
) -> Result<(), MkvError> {
    let header = ebml::read_element_header(raw)?
        .ok_or_else(|| MkvError::Invalid("truncated block".into()))?;
    let body = &raw[header.header_len..];
    match header.id {
        id::SIMPLE_BLOCK => {
            let start = out.len();
            out.extend_from_slice(raw);
            patch_block_timecode(&mut out[start + header.header_len..], rel)
        }
        id::BLOCK_GROUP => {
            let mut group = Vec::with_capacity(body.len() + 8);
            for child in ebml::children(body) {
                let (h, child_body) = child?;
                match h.id {
                    id::BLOCK => {
                        let mut block = child_body.to_vec();
                        patch_block_timecode(&mut block, rel)?;
                        ebml::write_binary_element(&mut group, id::BLOCK, &block);
                    }
                    id::BLOCK_DURATION => {
                        let d = convert(i128::from(ebml::read_uint(child_body)?))
                            .clamp(0, i128::from(u64::MAX));
                        ebml::write_uint_element(&mut group, id::BLOCK_DURATION, d as u64);
                    }
                    id::REFERENCE_BLOCK => {
                        let r = convert(i128::from(read_sint(child_body)?));
                        // Zero would read as "no reference"; keep the reference's direction.
                        let r = if r == 0 {
                            read_sint(child_body)?.signum().into()
                        } else {
                            r
                        };
                        let r = r.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                        ebml::write_binary_element(
                            &mut group,
                            id::REFERENCE_BLOCK,
                            &r.to_be_bytes(),
                        );
                    }
                    other => ebml::write_binary_element(&mut group, other, child_body),
                }
            }
            ebml::write_master_element(out, id::BLOCK_GROUP, &group);
            Ok(())
        }
        other => Err(MkvError::Invalid(format!(
            "element 0x{other:X} is not a block"
        ))),
    }
}

fn patch_block_timecode(block_body: &mut [u8], rel: i16) -> Result<(), MkvError> {
    let (_, len) = ebml::read_size(block_body)?
        .ok_or_else(|| MkvError::Invalid("truncated block header".into()))?;
    let field = block_body
        .get_mut(len..len + 2)
        .ok_or_else(|| MkvError::Invalid("truncated block header".into()))?;
    field.copy_from_slice(&rel.to_be_bytes());
    Ok(())
}

fn read_sint(data: &[u8]) -> Result<i64, MkvError> {
    if data.is_empty() {
        return Ok(0);
    }
    if data.len() > 8 {
        return Err(MkvError::Invalid(format!(
            "signed integer of {} bytes",
            data.len()
        )));
    }
    let negative = data[0] & 0x80 != 0;
    let init: i64 = if negative { -1 } else { 0 };
    Ok(data.iter().fold(init, |acc, &b| (acc << 8) | i64::from(b)))
}

fn round_div(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) * 2 >= b { q + 1 } else { q }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) != 0 { q + 1 } else { q }
}

#[cfg(test)]
#[path = "remux_tests.rs"]
mod tests;
