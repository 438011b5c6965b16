//! Archived playback: GetClip (an MP4 of a time range), HLS sessions (GetHLSStreamingSessionURL and the
//! playlists and fragments its URL leads to), DASH sessions (GetDASHStreamingSessionURL, its manifest and the same
//! fMP4 fragments) and GetImages. The media conversion itself is in `crate::remux`.

pub mod clip;
pub mod dash;
pub mod hls;
pub mod images;
pub mod session;
pub mod viewer;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use kvs_mkv::ebml::{self, id};
use kvs_mkv::stream::{MkvEvent, MkvStreamParser, SegmentHeader};

use super::Input;
use super::control::resolve_stream;
use super::input::constraint;
use crate::app::App;
use crate::error::ApiError;
use crate::remux::{PlaybackTrack, RemuxError, TrackError, playback_tracks};
use crate::store::FragmentMeta;
use crate::streams::StreamHandle;

/// The longest time range a clip or an on-demand session may span.
pub const MAX_RANGE_MS: u64 = 24 * 3600 * 1000;

/// Which timestamp a selector's range applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    Producer,
    Server,
}

impl TimestampKind {
    pub fn of(self, m: &FragmentMeta) -> u64 {
        match self {
            TimestampKind::Producer => m.producer_ts_ms,
            TimestampKind::Server => m.server_ts_ms,
        }
    }
}

/// A checked fragment selector: timestamps in milliseconds, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub kind: TimestampKind,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl TimeRange {
    pub fn contains(&self, m: &FragmentMeta) -> bool {
        let ts = self.kind.of(m);
        ts >= self.start_ms && ts <= self.end_ms
    }
}

/// Parses `<member>` = `{FragmentSelectorType, TimestampRange: {StartTimestamp, EndTimestamp}}`.
pub fn parse_selector(input: &Input, member: &str) -> Result<TimeRange, ApiError> {
    let sel = input
        .opt_object(member)?
        .ok_or_else(|| ApiError::invalid_argument(format!("{member} is required")))?;
    let kind = match sel.req_str("FragmentSelectorType")? {
        "PRODUCER_TIMESTAMP" => TimestampKind::Producer,
        "SERVER_TIMESTAMP" => TimestampKind::Server,
        other => {
            return Err(constraint(
                &format!("{member}.FragmentSelectorType"),
                other,
                "Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
            ));
        }
    };
    let range = sel.opt_object("TimestampRange")?.ok_or_else(|| {
        ApiError::invalid_argument(format!("{member}.TimestampRange is required"))
    })?;
    let start_ms = range
        .opt_timestamp_ms("StartTimestamp")?
        .ok_or_else(|| ApiError::invalid_argument("TimestampRange.StartTimestamp is required"))?;
    let end_ms = range
        .opt_timestamp_ms("EndTimestamp")?
        .ok_or_else(|| ApiError::invalid_argument("TimestampRange.EndTimestamp is required"))?;
    if end_ms < start_ms {
        return Err(ApiError::invalid_argument(
            "TimestampRange.EndTimestamp must be later than TimestampRange.StartTimestamp",
        ));
    }
    if end_ms - start_ms > MAX_RANGE_MS {
        return Err(ApiError::invalid_argument(format!(
            "the time range spans {} s; it can be at most 24 hours",
            (end_ms - start_ms) / 1000
        )));
    }
    Ok(TimeRange {
        kind,
        start_ms,
        end_ms,
    })
}

/// The stream named by the input, which must retain data.
pub fn archived_stream(app: &App, input: &Input) -> Result<Arc<StreamHandle>, ApiError> {
    let stream = resolve_stream(app, input)?;
    if stream.retention_hours() == 0 {
        return Err(ApiError::no_data_retention(format!(
            "stream '{}' does not retain data (DataRetentionInHours is 0)",
            stream.record().name
        )));
    }
    Ok(stream)
}

/// The stored fragments in the range, ordered by the range's timestamp.
pub async fn fragments_in(
    app: &App,
    stream: &StreamHandle,
    range: TimeRange,
) -> Result<Vec<FragmentMeta>, ApiError> {
    let id = stream.id;
    let mut found: Vec<FragmentMeta> = app
        .blocking(move |s| s.fragments(id))
        .await?
        .into_iter()
        .filter(|m| range.contains(m))
        .collect();
    found.sort_by_key(|m| (range.kind.of(m), m.seq));
    Ok(found)
}

/// A parsed stream header and the playback tracks in it.
#[derive(Debug, Clone)]
pub struct Header {
    pub raw: Bytes,
    pub parsed: SegmentHeader,
    pub tracks: Vec<PlaybackTrack>,
}

impl Header {
    /// The tracks' codec IDs and private data: two headers with the same can share one output.
    pub fn same_media(&self, other: &Header) -> bool {
        self.tracks == other.tracks
            && self.parsed.timecode_scale == other.parsed.timecode_scale
            && self
                .parsed
                .track_list
                .iter()
                .zip(&other.parsed.track_list)
                .all(|(a, b)| a.codec_private == b.codec_private)
    }
}

/// Parses a stored stream header and checks its tracks for playback.
pub fn parse_header(raw: Bytes) -> Result<Header, ApiError> {
    let mut parser = MkvStreamParser::default();
    parser.push(&raw);
    // The parser reports the header once the element after Tracks starts: give it an empty cluster.
    parser.push(&kvs_mkv::writer::cluster_start(0));
    let parsed = loop {
        match parser.next_event() {
            Ok(Some(MkvEvent::Header(h))) => break h,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(ApiError::internal("a stored stream header is incomplete"));
            }
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "a stored stream header does not parse: {e}"
                )));
            }
        }
    };
    let tracks = playback_tracks(&parsed.track_list).map_err(track_error)?;
    Ok(Header {
        raw,
        parsed,
        tracks,
    })
}

/// Reads and parses the headers these fragments use (each once).
pub async fn headers_of(
    app: &App,
    stream: &StreamHandle,
    fragments: &[FragmentMeta],
) -> Result<HashMap<u64, Header>, ApiError> {
    let id = stream.id;
    let mut ids: Vec<u64> = fragments.iter().map(|m| m.header_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let raws = app
        .blocking(move |s| {
            ids.into_iter()
                .map(|h| Ok((h, s.header(id, h)?)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    raws.into_iter()
        .map(|(h, raw)| Ok((h, parse_header(raw)?)))
        .collect()
}

pub fn track_error(e: TrackError) -> ApiError {
    match e {
        TrackError::Unsupported(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedStreamMediaTypeException",
            m,
        ),
        TrackError::MissingPrivate(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "MissingCodecPrivateDataException",
            m,
        ),
        TrackError::InvalidPrivate(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidCodecPrivateDataException",
            m,
        ),
    }
}

pub fn remux_error(e: RemuxError) -> ApiError {
    match e {
        RemuxError::Media(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidMediaFrameException",
            format!("the media of the requested fragments cannot be converted: {m}"),
        ),
        other => {
            tracing::error!(error = %other, "media conversion failed");
            ApiError::internal(other.to_string())
        }
    }
}

/// A stored cluster re-timed to `timecode` (in the stream's timecode units): the Cluster is rewritten with an
/// unknown size, the new Timecode and every other child as stored. Producer tags stored after it are left out.
pub fn retime_cluster(stored: &[u8], cluster_len: u64, timecode: u64) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| ApiError::internal(format!("a stored cluster does not parse: {why}"));
    let cluster_len = usize::try_from(cluster_len)
        .ok()
        .filter(|l| *l <= stored.len())
        .ok_or_else(|| bad("its length exceeds the stored bytes".into()))?;
    let cluster = &stored[..cluster_len];
    let head = ebml::read_element_header(cluster)
        .map_err(|e| bad(e.to_string()))?
        .filter(|h| h.id == id::CLUSTER)
        .ok_or_else(|| bad("it does not start with a Cluster".into()))?;
    let mut body = &cluster[head.header_len..];
    if let Some(size) = head.size
        && let Ok(size) = usize::try_from(size)
        && size < body.len()
    {
        body = &body[..size];
    }
    let mut out = kvs_mkv::writer::cluster_start(timecode);
    out.reserve(body.len());
    while !body.is_empty() {
        let h = ebml::read_element_header(body)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("a child element is truncated".into()))?;
        let size = h
            .size
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| bad("a child element has an unknown size".into()))?;
        let len = h.header_len + size;
        if len > body.len() {
            return Err(bad("a child element is truncated".into()));
        }
        if h.id != id::TIMECODE {
            out.extend_from_slice(&body[..len]);
        }
        body = &body[len..];
    }
    Ok(out)
}

/// Every fragment of the stream, stored or still in memory, in sequence order.
pub async fn all_fragments(
    app: &App,
    stream: &StreamHandle,
) -> Result<Vec<FragmentMeta>, ApiError> {
    let id = stream.id;
    let mut all = app.blocking(move |s| s.fragments(id)).await?;
    let live = stream.live_metas();
    all.extend(live);
    all.sort_by_key(|m| m.seq);
    all.dedup_by_key(|m| m.seq);
    Ok(all)
}

/// A fragment's stream header and stored bytes (cluster + producer tags), from memory or the store.
pub async fn read_fragment(
    app: &App,
    stream: &StreamHandle,
    meta: FragmentMeta,
) -> Result<(Bytes, Bytes), ApiError> {
    if let Some(f) = stream.live_get(meta.seq) {
        return Ok((f.header.clone(), f.data.clone()));
    }
    let id = stream.id;
    Ok(app
        .blocking(move |s| Ok((s.header(id, meta.header_id)?, s.read_fragment(id, &meta)?)))
        .await?)
}
