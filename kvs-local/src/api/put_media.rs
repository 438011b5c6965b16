//! PutMedia: the request body is parsed as it arrives; each Cluster becomes a fragment; acknowledgements stream
//! back on the response as they happen (BUFFERING at a fragment's first bytes, RECEIVED when it is complete,
//! PERSISTED once durable, IDLE while nothing arrives, ERROR with the service's ids).
//!
//! A fragment is complete when the next Cluster starts, when the closing `AWS_KINESISVIDEO_END_OF_FRAGMENT` Tags
//! element arrives, or when the body ends. Tags elements between clusters are the fragment's producer metadata
//! and are stored after its cluster, as the service returns them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kvs_mkv::ack::{Ack, AckErrorId, AckEventType};
use kvs_mkv::stream::{Limits, MkvEvent, MkvStreamParser, SegmentHeader, TagsElement};
use kvs_mkv::tags;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::control::resolve_by;
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::{ApiError, StoreError};
use crate::fragment_id::fragment_number;
use crate::store::{AppendJob, FragmentMeta};
use crate::streams::{LiveFragment, PutGuard, StreamHandle};

/// Most tracks in a stream.
pub const MAX_TRACKS: usize = 3;
/// Most producer tags per fragment.
pub const MAX_FRAGMENT_TAGS: usize = 10;
const MAX_TAG_NAME: usize = 128;
const MAX_TAG_VALUE: usize = 256;
/// Bytes of received fragments a session lets wait for the disk before it stops reading its body.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;
/// How long PutMedia waits for the first body bytes before sending the response head.
const FIRST_DATA_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

type BodyFrame = Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>;

/// The first frame when it was already read, else the next one from the body.
async fn next_frame(body: &mut Incoming, first: &mut Option<BodyFrame>) -> BodyFrame {
    match first.take() {
        Some(f) => f,
        None => body.frame().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimecodeType {
    Absolute,
    Relative,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::invalid_argument(format!("header {name} is not ASCII"))),
    }
}

/// Checks the request headers, takes the stream's PutMedia slot and starts the session.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let headers = req.headers();
    let name = header_str(headers, "x-amzn-stream-name")?;
    let arn = header_str(headers, "x-amzn-stream-arn")?;
    if name.is_some() && arn.is_some() {
        return Err(ApiError::invalid_argument(
            "specify either x-amzn-stream-name or x-amzn-stream-arn, not both",
        ));
    }
    let stream = resolve_by(&app, name, arn)?;
    let timecode_type = match header_str(headers, "x-amzn-fragment-timecode-type")? {
        Some("ABSOLUTE") => TimecodeType::Absolute,
        Some("RELATIVE") => TimecodeType::Relative,
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "x-amzn-fragment-timecode-type '{other}' must be ABSOLUTE or RELATIVE"
            )));
        }
        None => {
            return Err(ApiError::invalid_argument(
                "x-amzn-fragment-timecode-type is required",
            ));
        }
    };
    let producer_start_ms = match header_str(headers, "x-amzn-producer-start-timestamp")? {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| (v * 1000.0).round() as u64)
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "x-amzn-producer-start-timestamp '{s}' is not epoch seconds"
                    ))
                })?,
        ),
        None => None,
    };
    if timecode_type == TimecodeType::Relative && producer_start_ms.is_none() {
        return Err(ApiError::invalid_argument(
            "x-amzn-producer-start-timestamp is required with RELATIVE fragment timecodes",
        ));
    }
    let acks = header_str(headers, "x-amzn-fragment-acknowledgment-required")? != Some("0");
    let guard = stream.try_begin_put().ok_or_else(|| {
        ApiError::connection_limit(format!(
            "stream '{}' already has a PutMedia connection; only one is allowed per stream",
            stream.record().name
        ))
    })?;
    // Wait for the first body bytes before answering: polling the body makes hyper send `100 Continue`, which the
    // producer waits for, and it must go out before the 200 head (once a final status is written hyper no longer
    // sends it). A client that sends nothing gets its 200 after a short wait anyway.
    let mut body = req.into_body();
    let first = tokio::time::timeout(FIRST_DATA_WAIT, body.frame())
        .await
        .ok();
    let (tx, response_body) = ResponseBody::channel();
    let session = Session::new(
        app,
        stream,
        guard,
        tx,
        timecode_type,
        producer_start_ms,
        acks,
    );
    tokio::spawn(session.run(body, first));
    let mut response = Response::new(response_body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// An ERROR acknowledgement that ends the session.
#[derive(Debug)]
struct Fatal {
    id: AckErrorId,
    detail: String,
    /// The timecode to name when the error is about a cluster that never became the current fragment.
    timecode: Option<u64>,
    /// The fragment number to name with `timecode`, when it has one.
    number: Option<String>,
}

fn fatal(id: AckErrorId, detail: impl Into<String>) -> Fatal {
    Fatal {
        id,
        detail: detail.into(),
        timecode: None,
        number: None,
    }
}

/// The fragment being received.
struct Current {
    seq: u64,
    number: String,
    server_ts_ms: u64,
    producer_ts_ms: u64,
    timecode: u64,
    data: BytesMut,
    cluster_len: Option<usize>,
    tag_count: usize,
    tracks_seen: Vec<u64>,
    min_rel: i64,
    max_rel: i64,
    first_track_times: (u64, i64, i64),
}

type PersistResult = (u64, String, Result<FragmentMeta, StoreError>);

struct Session {
    app: Arc<App>,
    stream: Arc<StreamHandle>,
    _guard: PutGuard,
    tx: mpsc::Sender<Bytes>,
    timecode_type: TimecodeType,
    producer_start_ms: Option<u64>,
    acks: bool,
    header: Option<SegmentHeader>,
    header_bytes: Option<Bytes>,
    header_id: Option<u64>,
    current: Option<Current>,
    last_timecode: Option<u64>,
    pending: FuturesOrdered<oneshot_future::Persist>,
    /// Sizes of the fragments in `pending`, in the same order.
    pending_sizes: std::collections::VecDeque<usize>,
    pending_bytes: usize,
    client_gone: bool,
}

mod oneshot_future {
    //! A persist completion that remembers which fragment it is for.
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Persist {
        pub timecode: u64,
        pub number: String,
        pub rx: oneshot::Receiver<Result<FragmentMeta, StoreError>>,
    }

    impl Future for Persist {
        type Output = PersistResult;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PersistResult> {
            let this = &mut *self;
            Pin::new(&mut this.rx).poll(cx).map(|r| {
                let r = r.unwrap_or(Err(StoreError::WriterGone));
                (this.timecode, std::mem::take(&mut this.number), r)
            })
        }
    }
}

impl Session {
    fn new(
        app: Arc<App>,
        stream: Arc<StreamHandle>,
        guard: PutGuard,
        tx: mpsc::Sender<Bytes>,
        timecode_type: TimecodeType,
        producer_start_ms: Option<u64>,
        acks: bool,
    ) -> Self {
        Session {
            app,
            stream,
            _guard: guard,
            tx,
            timecode_type,
            producer_start_ms,
            acks,
            header: None,
            header_bytes: None,
            header_id: None,
            current: None,
            last_timecode: None,
            pending: FuturesOrdered::new(),
            pending_sizes: std::collections::VecDeque::new(),
            pending_bytes: 0,
            client_gone: false,
        }
    }

    async fn send(&mut self, ack: Ack) {
        if !self.acks && ack.event_type != AckEventType::Error {
            return;
        }
        if self.tx.send(Bytes::from(ack.to_line())).await.is_err() {
            self.client_gone = true;
        }
    }

    async fn send_fragment_ack(&mut self, kind: AckEventType, timecode: u64, number: &str) {
        self.send(Ack::fragment(kind, timecode, Some(number.to_owned())))
            .await;
    }

    async fn run(mut self, mut body: Incoming, mut first: Option<BodyFrame>) {
        let config = self.app.config.clone();
        let stream_name = self.stream.record().name;
        let mut parser = MkvStreamParser::new(Limits {
            max_element_size: config.max_fragment_size + 1024 * 1024,
            ..Limits::default()
        });
        let started = Instant::now();
        let connection_deadline = started + config.max_connection_duration;
        let mut last_data = Instant::now();
        let mut last_activity = Instant::now();
        let mut shutdown = self.app.shutdown.clone();
        let mut outcome: Result<(), Fatal> = loop {
            let idle_ack_at = last_activity + config.idle_ack_interval;
            let idle_close_at = last_data + config.put_media_idle_timeout;
            let wake = idle_ack_at.min(idle_close_at).min(connection_deadline);
            tokio::select! {
                biased;
                Some((timecode, number, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(f) = self.persisted(timecode, &number, result).await {
                        break Err(f);
                    }
                }
                // Backpressure: stop reading while too much is waiting for the disk, so a producer that sends
                // faster than the disk writes is slowed by TCP instead of queueing without bound.
                frame = next_frame(&mut body, &mut first), if self.pending_bytes < MAX_PENDING_BYTES => match frame {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        if data.is_empty() {
                            continue;
                        }
                        last_data = Instant::now();
                        last_activity = last_data;
                        parser.push(&data);
                        if let Err(f) = self.drain(&mut parser, false).await {
                            break Err(f);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::info!(stream = %stream_name, error = %e, "PutMedia client went away; the fragment in progress is discarded");
                        self.current = None;
                        self.client_gone = true;
                        break Ok(());
                    }
                    None => {
                        if let Err(f) = self.drain(&mut parser, true).await {
                            break Err(f);
                        }
                        if let Err(f) = self.complete_fragment().await {
                            break Err(f);
                        }
                        break Ok(());
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= connection_deadline {
                        break Err(fatal(AckErrorId::MAX_CONNECTION_DURATION_REACHED, format!(
                            "the connection reached the maximum duration of {} s",
                            config.max_connection_duration.as_secs()
                        )));
                    }
                    if self.pending_bytes >= MAX_PENDING_BYTES {
                        // Not reading because the disk is behind: the producer is not idle.
                        last_data = now;
                        last_activity = now;
                        continue;
                    }
                    if now >= idle_close_at {
                        tracing::info!(stream = %stream_name, idle_s = config.put_media_idle_timeout.as_secs(), "closing an idle PutMedia request");
                        self.current = None;
                        break Ok(());
                    }
                    last_activity = now;
                    self.send(Ack::idle()).await;
                }
                _ = crate::app::shutdown_requested(&mut shutdown) => {
                    self.current = None;
                    break Ok(());
                }
            }
            if self.client_gone {
                self.current = None;
                break Ok(());
            }
        };
        // Acknowledge what is already on its way to disk before ending, up to the first that failed.
        while let Some((timecode, number, result)) = self.pending.next().await {
            if let Err(f) = self.persisted(timecode, &number, result).await {
                if outcome.is_ok() {
                    outcome = Err(f);
                }
                break;
            }
        }
        if let Err(f) = outcome {
            let (timecode, number) = match (&self.current, f.timecode) {
                (_, Some(t)) => (Some(t), f.number.clone()),
                (Some(c), None) => (Some(c.timecode), Some(c.number.clone())),
                (None, None) => (None, None),
            };
            tracing::info!(stream = %stream_name, error_id = f.id.id(), error = f.id.name(), detail = %f.detail, "PutMedia error");
            self.send(Ack::error(f.id, timecode, number)).await;
        }
        // Dropping the sender ends the response; dropping the guard frees the stream's PutMedia slot.
    }

    async fn persisted(
        &mut self,
        timecode: u64,
        number: &str,
        result: Result<FragmentMeta, StoreError>,
    ) -> Result<(), Fatal> {
        if let Some(size) = self.pending_sizes.pop_front() {
            self.pending_bytes -= size;
        }
        if let Some(live) = self.stream.live_get(
            crate::fragment_id::decode(number)
                .map(|(seq, _)| seq)
                .unwrap_or(0),
        ) {
            live.settled
                .store(true, std::sync::atomic::Ordering::Release);
        }
        match result {
            Ok(_) => {
                self.send_fragment_ack(AckEventType::Persisted, timecode, number)
                    .await;
                Ok(())
            }
            Err(StoreError::StreamDeleted(_)) => Err(fatal(
                AckErrorId::STREAM_NOT_ACTIVE,
                "the stream was deleted before the fragment was stored",
            )),
            // The session ends at the first fragment that could not be stored (the store refuses the rest of
            // it), so the producer replays from there in a new session and the stream keeps its order.
            Err(e) => {
                tracing::error!(error = %e, fragment = number, "fragment could not be stored");
                Err(Fatal {
                    id: AckErrorId::ARCHIVAL_ERROR,
                    detail: format!("the fragment could not be stored: {e}"),
                    timecode: Some(timecode),
                    number: Some(number.to_owned()),
                })
            }
        }
    }

    async fn drain(&mut self, parser: &mut MkvStreamParser, end: bool) -> Result<(), Fatal> {
        loop {
            let event = match parser.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) if end => match parser.finish() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(fatal(AckErrorId::INVALID_MKV_DATA, e.to_string())),
                },
                Ok(None) => return Ok(()),
                Err(e) => return Err(fatal(AckErrorId::INVALID_MKV_DATA, e.to_string())),
            };
            self.on_event(event).await?;
        }
    }

    async fn on_event(&mut self, event: MkvEvent) -> Result<(), Fatal> {
        match event {
            MkvEvent::Header(h) => {
                if self.header.is_some() {
                    return Err(fatal(
                        AckErrorId::INVALID_MKV_DATA,
                        "a PutMedia body must hold one Segment; a second EBML header arrived",
                    ));
                }
                if h.track_list.len() > MAX_TRACKS {
                    return Err(fatal(
                        AckErrorId::MORE_THAN_ALLOWED_TRACKS_FOUND,
                        format!(
                            "{} tracks, at most {MAX_TRACKS} are allowed",
                            h.track_list.len()
                        ),
                    ));
                }
                if h.track_list.is_empty() {
                    return Err(fatal(
                        AckErrorId::INVALID_MKV_DATA,
                        "the Tracks element holds no track",
                    ));
                }
                self.header_bytes = Some(h.raw.clone());
                self.header = Some(h);
                Ok(())
            }
            MkvEvent::Tags(t) => self.on_tags(t).await,
            MkvEvent::ClusterStart {
                timecode,
                raw_header,
            } => {
                self.complete_fragment().await?;
                self.start_fragment(timecode, raw_header).await
            }
            MkvEvent::ClusterChild { raw, block } => {
                let max_size = self.app.config.max_fragment_size;
                let max_duration_ms = self.app.config.max_fragment_duration.as_millis() as i64;
                let scale = self.header.as_ref().map_or(1_000_000, |h| h.timecode_scale);
                let track_ok = match (&block, &self.header) {
                    (Some(b), Some(h)) => h.track(b.track).is_some(),
                    _ => true,
                };
                let first_track = self
                    .header
                    .as_ref()
                    .and_then(|h| h.track_list.first())
                    .map(|t| t.number);
                let Some(cur) = self.current.as_mut() else {
                    return Err(fatal(
                        AckErrorId::INVALID_MKV_DATA,
                        "a cluster child outside a cluster",
                    ));
                };
                if let Some(b) = block {
                    if !track_ok {
                        return Err(fatal(
                            AckErrorId::TRACK_NUMBER_MISMATCH,
                            format!(
                                "a frame of track {} which the header does not define",
                                b.track
                            ),
                        ));
                    }
                    if !cur.tracks_seen.contains(&b.track) {
                        cur.tracks_seen.push(b.track);
                    }
                    let rel = i64::from(b.rel_timecode);
                    cur.min_rel = cur.min_rel.min(rel);
                    cur.max_rel = cur.max_rel.max(rel);
                    if Some(b.track) == first_track {
                        let (n, first, last) = &mut cur.first_track_times;
                        if *n == 0 {
                            *first = rel;
                        }
                        *n += 1;
                        *last = rel;
                    }
                    let span_ms = ticks_to_ms(i128::from(cur.max_rel - cur.min_rel.min(0)), scale);
                    if span_ms > i128::from(max_duration_ms) {
                        return Err(fatal(
                            AckErrorId::MAX_FRAGMENT_DURATION_REACHED,
                            format!(
                                "the fragment spans {span_ms} ms, more than {max_duration_ms} ms"
                            ),
                        ));
                    }
                }
                if (cur.data.len() + raw.len()) as u64 > max_size {
                    return Err(fatal(
                        AckErrorId::MAX_FRAGMENT_SIZE_REACHED,
                        format!("the fragment exceeds {max_size} bytes"),
                    ));
                }
                cur.data.extend_from_slice(&raw);
                Ok(())
            }
            MkvEvent::ClusterEnd => {
                if let Some(cur) = self.current.as_mut()
                    && cur.cluster_len.is_none()
                {
                    cur.cluster_len = Some(cur.data.len());
                }
                Ok(())
            }
            MkvEvent::SegmentEnd => self.complete_fragment().await,
        }
    }

    async fn on_tags(&mut self, t: TagsElement) -> Result<(), Fatal> {
        if t.contains(tags::END_OF_FRAGMENT) {
            return self.complete_fragment().await;
        }
        if let Some(bad) = t.tags.iter().find(|s| s.name.starts_with(tags::AWS_PREFIX)) {
            return Err(fatal(
                AckErrorId::INVALID_FRAGMENT_METADATA,
                format!("producer tag '{}' starts with AWS_", bad.name),
            ));
        }
        if let Some(bad) = t.tags.iter().find(|s| {
            s.name.len() > MAX_TAG_NAME || s.value.as_str().is_some_and(|v| v.len() > MAX_TAG_VALUE)
        }) {
            return Err(fatal(
                AckErrorId::FRAGMENT_METADATA_LIMIT_REACHED,
                format!(
                    "producer tag '{}' is longer than the limits (name 128, value 256)",
                    bad.name
                ),
            ));
        }
        match self.current.as_mut() {
            Some(cur) => {
                if cur.cluster_len.is_none() {
                    cur.cluster_len = Some(cur.data.len());
                }
                cur.tag_count += t.tags.len();
                if cur.tag_count > MAX_FRAGMENT_TAGS {
                    return Err(fatal(
                        AckErrorId::FRAGMENT_METADATA_LIMIT_REACHED,
                        format!("more than {MAX_FRAGMENT_TAGS} producer tags on one fragment"),
                    ));
                }
                cur.data.extend_from_slice(&t.raw);
            }
            None => {
                // Tags before the first cluster belong to the stream header, as the service keeps them.
                if let Some(h) = &self.header_bytes {
                    let mut b = BytesMut::with_capacity(h.len() + t.raw.len());
                    b.extend_from_slice(h);
                    b.extend_from_slice(&t.raw);
                    self.header_bytes = Some(b.freeze());
                }
            }
        }
        Ok(())
    }

    async fn start_fragment(&mut self, timecode: u64, raw_header: Bytes) -> Result<(), Fatal> {
        if self.stream.is_deleted() {
            return Err(fatal(
                AckErrorId::STREAM_NOT_ACTIVE,
                "the stream was deleted",
            ));
        }
        if self.header.is_none() {
            return Err(fatal(
                AckErrorId::INVALID_MKV_DATA,
                "a Cluster before the stream header",
            ));
        }
        if let Some(prev) = self.last_timecode
            && timecode < prev
        {
            return Err(Fatal {
                timecode: Some(timecode),
                ..fatal(
                    AckErrorId::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                    format!("cluster timecode {timecode} is less than the previous {prev}"),
                )
            });
        }
        self.last_timecode = Some(timecode);
        let scale = self.header.as_ref().map_or(1_000_000, |h| h.timecode_scale);
        let timecode_ms = ticks_to_ms_u64(i128::from(timecode), scale);
        let producer_ts_ms = match self.timecode_type {
            TimecodeType::Absolute => timecode_ms,
            TimecodeType::Relative => self
                .producer_start_ms
                .unwrap_or(0)
                .saturating_add(timecode_ms),
        };
        let seq = self.stream.allocate_seq();
        let server_ts_ms = now_ms();
        let number = fragment_number(seq, server_ts_ms);
        let mut data = BytesMut::with_capacity(256 * 1024);
        data.extend_from_slice(&raw_header);
        self.current = Some(Current {
            seq,
            number: number.clone(),
            server_ts_ms,
            producer_ts_ms,
            timecode,
            data,
            cluster_len: None,
            tag_count: 0,
            tracks_seen: Vec::new(),
            min_rel: i64::MAX,
            max_rel: i64::MIN,
            first_track_times: (0, 0, 0),
        });
        if self.header_id.is_none() {
            self.header_id = Some(seq);
        }
        self.send_fragment_ack(AckEventType::Buffering, timecode, &number)
            .await;
        Ok(())
    }

    async fn complete_fragment(&mut self) -> Result<(), Fatal> {
        if self.current.is_some() && self.stream.is_deleted() {
            // The fragment stays current so that the ERROR names it; it is not stored.
            return Err(fatal(
                AckErrorId::STREAM_NOT_ACTIVE,
                "the stream was deleted",
            ));
        }
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let Some(header) = self.header.as_ref() else {
            return Err(fatal(
                AckErrorId::INVALID_MKV_DATA,
                "a fragment without a stream header",
            ));
        };
        if let Some(missing) = header
            .track_list
            .iter()
            .find(|t| !cur.tracks_seen.contains(&t.number))
        {
            let track = missing.number;
            // Keep it as the current fragment so that the ERROR acknowledgement names it.
            self.current = Some(cur);
            return Err(fatal(
                AckErrorId::FRAMES_MISSING_FOR_TRACK,
                format!("the fragment has no frame of track {track}"),
            ));
        }
        let scale = header.timecode_scale;
        let (n, first, last) = cur.first_track_times;
        let span = if cur.max_rel >= cur.min_rel {
            cur.max_rel - cur.min_rel.min(0)
        } else {
            0
        };
        // The last frame lasts about as long as the average frame interval of the first track.
        let frame = if n > 1 {
            (last - first) / (n as i64 - 1)
        } else {
            0
        };
        let duration_ms = ticks_to_ms_u64(i128::from(span + frame), scale);
        let cluster_len = cur.cluster_len.unwrap_or(cur.data.len());
        let data = cur.data.freeze();
        let header_id = self.header_id.unwrap_or(cur.seq);
        let meta = FragmentMeta {
            seq: cur.seq,
            server_ts_ms: cur.server_ts_ms,
            producer_ts_ms: cur.producer_ts_ms,
            duration_ms,
            timecode: cur.timecode,
            header_id,
            segment: 0,
            offset: 0,
            cluster_len: cluster_len as u64,
            tags_len: (data.len() - cluster_len) as u64,
        };
        let header_bytes = self.header_bytes.clone().unwrap_or_default();
        let retains = self.stream.retention_hours() > 0;
        let live = Arc::new(LiveFragment {
            meta,
            header: header_bytes.clone(),
            data: data.clone(),
            settled: std::sync::atomic::AtomicBool::new(!retains),
        });
        self.stream.publish(live, now_ms());
        self.send_fragment_ack(AckEventType::Received, cur.timecode, &cur.number)
            .await;
        if retains {
            // Every job carries the header: the store keeps it with the first fragment of the session that
            // it commits, which is not the first one sent when that one failed (a full disk).
            let header = Some(header_bytes);
            self.pending_sizes.push_back(data.len());
            self.pending_bytes += data.len();
            let rx = self.app.store.append(AppendJob {
                stream_id: self.stream.id,
                meta,
                header,
                data,
            });
            self.pending.push_back(oneshot_future::Persist {
                timecode: cur.timecode,
                number: cur.number,
                rx,
            });
        }
        Ok(())
    }
}

/// `ticks` Matroska timecode units of `scale` nanoseconds each, in milliseconds. The scale comes from the
/// producer's header and may be anything up to `u64::MAX`, so the product saturates instead of overflowing.
fn ticks_to_ms(ticks: i128, scale: u64) -> i128 {
    ticks.saturating_mul(i128::from(scale)) / 1_000_000
}

/// [`ticks_to_ms`] as a `u64` (0 below, `u64::MAX` above).
fn ticks_to_ms_u64(ticks: i128, scale: u64) -> u64 {
    u64::try_from(ticks_to_ms(ticks, scale).max(0)).unwrap_or(u64::MAX)
}
