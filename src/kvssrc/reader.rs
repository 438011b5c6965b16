// SPDX-License-Identifier: MPL-2.0
//! Reading a stream: GetMedia for live reads (forever, resuming after every end of a response) and ListFragments
//! then GetMediaForFragmentList for time ranges. Knows nothing of GObject: the element calls [`Reader::next`] from
//! its streaming thread and turns the [`ReadItem`]s into buffers, messages and EOS.
//!
//! Live resume: a GetMedia response ends after 3 s without new data, after 40-45 minutes, when the connection
//! breaks or the server restarts. The reader then asks again with the continuation token of the last COMPLETE
//! fragment, so a fragment cut in the middle is read again whole and none is skipped; the rewriter drops any
//! fragment already output, so none comes twice. Before the first fragment of a read that starts `Now`, the
//! reader asks again from the server timestamp of its first call (compared with the local clock), so that a
//! fragment that arrives between two calls is not skipped. Calls are spaced by at least 200 ms (the service allows 5
//! GetMedia calls per second) and failures back off exponentially (100 ms doubling, 10 s cap, full jitter).
//!
//! Range: every page of ListFragments is read first (the service returns fragments in no particular order), the
//! fragments are sorted by number, then requested in batches of at most 1000; each response is passed on as it
//! arrives. A batch that ends early is requested again from its first fragment not yet output.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvs_mkv::fragment_number::FragmentNumber;

use super::CAT;
use super::remux::{BodyEnd, FragmentInfo, RemuxError, RemuxItem, Remuxer, ServiceError};
use crate::aws::{
    self, AwsError, Canceller, FragmentSelector, FragmentSelectorKind, KvsClient,
    ListFragmentsInput, MediaResponse, StartSelector, StreamRef, WaitError,
};

/// Largest GetMediaForFragmentList request the service accepts.
pub const MAX_FRAGMENTS_PER_REQUEST: usize = 1000;
/// Shortest time between two GetMedia calls: the service allows 5 per second and stream.
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// A response that sends nothing for this long is taken as broken (the service itself ends an idle response
/// after 3 s).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive failed attempts (each already retried by the AWS layer) before the reader gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 20;
/// Pause before asking again after a response that brought nothing and ended at once.
const EMPTY_RESPONSE_PAUSE: Duration = Duration::from_millis(500);

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadMode {
    /// GetMedia from `start`, forever.
    Live { start: StartSelector },
    /// The fragments that start in `[start, end]` (epoch seconds), then the end of the stream.
    Range {
        kind: FragmentSelectorKind,
        start: f64,
        end: f64,
    },
}

/// What [`Reader::next`] returns, in stream order.
#[derive(Debug)]
pub enum ReadItem {
    /// Stream header: EBML header, Segment, Info, Tracks (first, and again when the tracks change).
    Header(Bytes),
    /// The clusters of one fragment and what is known about it.
    Fragment { data: Bytes, info: FragmentInfo },
    /// A failure that is being retried; worth telling the application.
    Retrying(String),
    /// A fragment of a range the service could not return; the read goes on without it.
    Skipped(String),
    /// The range is fully read.
    Eos,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The element is flushing or stopping; not a failure.
    #[error("flushing")]
    Flushing,
    #[error("{context}: {source}")]
    Aws {
        context: String,
        #[source]
        source: AwsError,
    },
    #[error(transparent)]
    Remux(#[from] RemuxError),
    #[error("{0}")]
    Service(ServiceError),
    #[error("giving up after {attempts} failed attempts in a row; last: {last}")]
    GaveUp { attempts: u32, last: String },
}

impl ReadError {
    /// The GStreamer error class the element posts.
    pub fn resource_error(&self) -> gst::ResourceError {
        match self {
            ReadError::Aws { source, .. } => source.gst_resource_error(),
            ReadError::Service(e) if e.is_kms() => gst::ResourceError::NotAuthorized,
            ReadError::Service(e) if e.id == Some(4000) => gst::ResourceError::NotFound,
            ReadError::Remux(_) => gst::ResourceError::Read,
            _ => gst::ResourceError::Failed,
        }
    }
}

/// The fragment list of a range read.
#[derive(Debug, Default)]
struct RangeState {
    listed: bool,
    /// Fragments not yet output, in order.
    remaining: VecDeque<FragmentNumber>,
    /// First fragment of the last request.
    last_first: Option<FragmentNumber>,
    /// Whether the last response ended normally (not cut).
    clean_end: bool,
    /// Normal ends of responses that did not bring their first fragment.
    misses: u32,
}

/// The reader. See the module documentation.
pub struct Reader {
    client: KvsClient,
    stream: StreamRef,
    mode: ReadMode,
    remuxer: Remuxer,
    body: Option<MediaResponse>,
    /// Fragments output from the current response.
    body_fragments: u64,
    body_opened: Option<Instant>,
    last_call: Option<Instant>,
    /// Wall-clock time (epoch ms) of the first GetMedia call with `Now`, to resume from when nothing came yet.
    first_call_ms: Option<u64>,
    /// While set, fragments the server received before this time (epoch ms) are not output: they came before
    /// the `Now` the read started at.
    now_floor_ms: Option<u64>,
    failures: u32,
    last_failure: String,
    range: RangeState,
    done: bool,
    /// Requests made, for statistics (shared so that they can be read while the reader waits).
    requests: Arc<AtomicU64>,
    /// A retry notice to hand out after the current step.
    pending_notice: Option<ReadItem>,
}

impl Reader {
    pub fn new(client: KvsClient, stream: StreamRef, mode: ReadMode) -> Reader {
        let live = matches!(mode, ReadMode::Live { .. });
        Reader {
            client,
            stream,
            mode,
            remuxer: Remuxer::new(live),
            body: None,
            body_fragments: 0,
            body_opened: None,
            last_call: None,
            first_call_ms: None,
            now_floor_ms: None,
            failures: 0,
            last_failure: String::new(),
            range: RangeState::default(),
            done: false,
            requests: Arc::new(AtomicU64::new(0)),
            pending_notice: None,
        }
    }

    /// The number of GetMedia / GetMediaForFragmentList requests made so far, readable from any thread.
    pub fn request_counter(&self) -> Arc<AtomicU64> {
        self.requests.clone()
    }

    /// Blocks until the next item; `canceller` (cancelled by the element's `unlock()`) makes it return
    /// [`ReadError::Flushing`], after which it may be called again.
    pub fn next(&mut self, canceller: &Canceller) -> Result<ReadItem, ReadError> {
        loop {
            if let Some(item) = self.remuxer.pop() {
                match item {
                    RemuxItem::Header(data) => return Ok(ReadItem::Header(data)),
                    RemuxItem::Fragment { data, info } => {
                        if let (Some(floor), Some(received)) =
                            (self.now_floor_ms, info.server_timestamp_ms)
                            && received < floor
                        {
                            gst::debug!(
                                CAT,
                                "fragment received before the read started, not output"
                            );
                            continue;
                        }
                        self.now_floor_ms = None;
                        self.failures = 0;
                        self.body_fragments += 1;
                        self.range_delivered(info.fragment_number.as_deref());
                        return Ok(ReadItem::Fragment { data, info });
                    }
                    RemuxItem::Duplicate(number) => {
                        gst::debug!(CAT, "fragment {number} was already output, dropped");
                        self.range_delivered(Some(&number));
                        continue;
                    }
                    RemuxItem::FragmentError(error) => {
                        self.range_delivered(error.fragment_number.as_deref());
                        return Ok(ReadItem::Skipped(error.to_string()));
                    }
                    RemuxItem::Unwritable {
                        fragment_number,
                        error,
                    } => {
                        self.range_delivered(fragment_number.as_deref());
                        return Ok(ReadItem::Skipped(error));
                    }
                    RemuxItem::ServiceError(error) => {
                        self.close_body(BodyEnd::Cut)?;
                        if error.is_transient() {
                            if let Some(item) = self.failed(error.to_string())? {
                                return Ok(item);
                            }
                            continue;
                        }
                        return Err(ReadError::Service(error));
                    }
                }
            }
            if self.done {
                return Ok(ReadItem::Eos);
            }
            if self.body.is_none() {
                if let Some(item) = self.open(canceller)? {
                    return Ok(item);
                }
                continue;
            }
            self.read_body(canceller)?;
            if let Some(item) = self.take_retry_notice() {
                return Ok(item);
            }
        }
    }

    fn read_body(&mut self, canceller: &Canceller) -> Result<(), ReadError> {
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        match aws::wait(canceller, body.next_chunk(), Some(STALL_TIMEOUT)) {
            Ok(Some(chunk)) => {
                gst::trace!(CAT, "{} bytes received", chunk.len());
                self.remuxer.push(&chunk)?;
            }
            Ok(None) => {
                gst::debug!(
                    CAT,
                    "response ended after {} fragments",
                    self.body_fragments
                );
                self.close_body(BodyEnd::Complete)?;
                self.range.clean_end = true;
            }
            Err(WaitError::Flushing) => return Err(ReadError::Flushing),
            Err(WaitError::Timeout(after)) => {
                gst::info!(CAT, "no data for {} s, asking again", after.as_secs());
                self.close_body(BodyEnd::Cut)?;
            }
            Err(WaitError::Failed(e)) => {
                self.close_body(BodyEnd::Cut)?;
                self.pending_notice = self.failed(format!("reading the response: {e}"))?;
            }
        }
        Ok(())
    }

    fn take_retry_notice(&mut self) -> Option<ReadItem> {
        self.pending_notice.take()
    }

    fn close_body(&mut self, end: BodyEnd) -> Result<(), ReadError> {
        self.body = None;
        if let Some(dropped) = self.remuxer.end_body(end)? {
            gst::info!(
                CAT,
                "fragment {} was cut before its end; it will be read again",
                dropped.fragment_number.as_deref().unwrap_or("(unknown)")
            );
        }
        Ok(())
    }

    fn range_delivered(&mut self, number: Option<&str>) {
        let Some(number) = number.and_then(|n| n.parse::<FragmentNumber>().ok()) else {
            return;
        };
        // Everything up to and including this fragment is accounted for (responses come in list order).
        while self.range.remaining.front().is_some_and(|f| *f <= number) {
            self.range.remaining.pop_front();
        }
    }

    /// Counts a failure; returns the notice to pass on, or the final error after too many in a row.
    fn failed(&mut self, cause: String) -> Result<Option<ReadItem>, ReadError> {
        self.failures += 1;
        self.last_failure = cause.clone();
        gst::warning!(CAT, "attempt {} failed: {cause}", self.failures);
        if self.failures >= MAX_CONSECUTIVE_FAILURES {
            return Err(ReadError::GaveUp {
                attempts: self.failures,
                last: cause,
            });
        }
        Ok(Some(ReadItem::Retrying(cause)))
    }

    /// Opens the next response (after listing the range first, for range reads). Returns a notice when the
    /// attempt failed and will be retried.
    fn open(&mut self, canceller: &Canceller) -> Result<Option<ReadItem>, ReadError> {
        enum Request {
            Live(StartSelector),
            Range(Vec<String>),
        }
        let request = match self.mode.clone() {
            ReadMode::Live { start } => Request::Live(self.live_selector(&start)),
            ReadMode::Range { kind, start, end } => {
                if !self.range.listed {
                    self.list_range(canceller, kind, start, end)?;
                }
                match self.next_batch() {
                    Some(batch) => Request::Range(batch),
                    None => {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
        };
        self.pace(canceller)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_call = Some(Instant::now());
        let client = self.client.clone();
        let stream = self.stream.clone();
        let result = match request {
            Request::Live(selector) => {
                gst::debug!(CAT, "GetMedia {} from {selector:?}", self.stream);
                aws::wait(
                    canceller,
                    async move { client.get_media(&stream, &selector).await },
                    None,
                )
            }
            Request::Range(batch) => {
                gst::debug!(
                    CAT,
                    "GetMediaForFragmentList: {} fragments from {}",
                    batch.len(),
                    batch[0]
                );
                aws::wait(
                    canceller,
                    async move { client.get_media_for_fragment_list(&stream, &batch).await },
                    None,
                )
            }
        };
        match result {
            Ok(body) => {
                gst::debug!(
                    CAT,
                    "response from {} ({:?})",
                    body.endpoint,
                    body.content_type
                );
                self.body = Some(body);
                self.body_fragments = 0;
                self.body_opened = Some(Instant::now());
                self.range.clean_end = false;
                Ok(None)
            }
            Err(WaitError::Flushing) => Err(ReadError::Flushing),
            Err(WaitError::Timeout(after)) => self.failed(format!("no response within {after:?}")),
            Err(WaitError::Failed(e)) if e.is_retryable() => {
                self.failed(format!("{}: {e}", self.call_name()))
            }
            Err(WaitError::Failed(e)) => Err(ReadError::Aws {
                context: format!("{} of stream {}", self.call_name(), self.stream),
                source: e,
            }),
        }
    }

    /// The next fragments to request, `None` when the range is done. A fragment that two normally ended
    /// responses in a row did not bring (listed, then expired or deleted) is skipped.
    fn next_batch(&mut self) -> Option<Vec<String>> {
        loop {
            let first = self.range.remaining.front()?.clone();
            if self.range.clean_end && self.range.last_first.as_ref() == Some(&first) {
                self.range.misses += 1;
                if self.range.misses >= 2 {
                    gst::warning!(
                        CAT,
                        "fragment {first} was listed but the service does not return it; skipped"
                    );
                    self.range.remaining.pop_front();
                    self.range.misses = 0;
                    self.range.last_first = None;
                    continue;
                }
            } else if self.range.last_first.as_ref() != Some(&first) {
                self.range.misses = 0;
            }
            self.range.last_first = Some(first);
            let batch = self
                .range
                .remaining
                .iter()
                .take(MAX_FRAGMENTS_PER_REQUEST)
                .map(|f| f.to_string())
                .collect();
            return Some(batch);
        }
    }

    fn call_name(&self) -> &'static str {
        match self.mode {
            ReadMode::Live { .. } => "GetMedia",
            ReadMode::Range { .. } => "GetMediaForFragmentList",
        }
    }

    /// Where the next GetMedia starts: after the last complete fragment once there is one.
    fn live_selector(&mut self, start: &StartSelector) -> StartSelector {
        if let Some(token) = self.remuxer.resume_token() {
            return StartSelector::ContinuationToken(token);
        }
        match start {
            // Nothing came yet. Asking for `Now` again could skip a fragment that arrived between the two calls;
            // asking from the server time of the first call cannot, but may bring fragments that arrived just
            // before it (the service selects the fragment containing the time): those are not output.
            StartSelector::Now => match self.first_call_ms {
                Some(t) => {
                    self.now_floor_ms = Some(t);
                    StartSelector::ServerTimestamp(t as f64 / 1000.0)
                }
                None => {
                    self.first_call_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_millis() as u64);
                    StartSelector::Now
                }
            },
            other => other.clone(),
        }
    }

    /// Spaces calls (rate limit), backs off after failures and pauses after empty responses.
    fn pace(&mut self, canceller: &Canceller) -> Result<(), ReadError> {
        let mut delay = Duration::ZERO;
        if let Some(last) = self.last_call {
            delay = MIN_CALL_INTERVAL.saturating_sub(last.elapsed());
            let empty_and_short = self.body_fragments == 0
                && self
                    .body_opened
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            if empty_and_short {
                delay = delay.max(EMPTY_RESPONSE_PAUSE);
            }
        }
        if self.failures > 0 {
            delay = delay.max(aws::retry::backoff(self.failures - 1));
        }
        if delay.is_zero() {
            return Ok(());
        }
        gst::trace!(CAT, "waiting {delay:?} before the next request");
        match aws::wait(
            canceller,
            async move {
                tokio::time::sleep(delay).await;
                Ok::<(), AwsError>(())
            },
            None,
        ) {
            Ok(()) => Ok(()),
            Err(WaitError::Flushing) => Err(ReadError::Flushing),
            Err(e) => Err(ReadError::GaveUp {
                attempts: self.failures,
                last: e.to_string(),
            }),
        }
    }

    fn list_range(
        &mut self,
        canceller: &Canceller,
        kind: FragmentSelectorKind,
        start: f64,
        end: f64,
    ) -> Result<(), ReadError> {
        let mut numbers = Vec::new();
        let mut next_token = None;
        let mut pages = 0u32;
        // Producer-time span of the listed fragments (the output's timeline follows producer timecodes).
        let mut span: Option<(f64, f64)> = None;
        loop {
            let input = ListFragmentsInput {
                stream: self.stream.clone(),
                selector: Some(FragmentSelector { kind, start, end }),
                max_results: Some(MAX_FRAGMENTS_PER_REQUEST as u32),
                next_token: next_token.take(),
            };
            let client = self.client.clone();
            let page = match aws::wait(
                canceller,
                async move { client.list_fragments(&input).await },
                None,
            ) {
                Ok(page) => page,
                Err(WaitError::Flushing) => return Err(ReadError::Flushing),
                Err(WaitError::Timeout(after)) => {
                    return Err(ReadError::Aws {
                        context: format!("ListFragments of stream {}", self.stream),
                        source: AwsError::Timeout(format!("no answer within {after:?}")),
                    });
                }
                Err(WaitError::Failed(e)) => {
                    return Err(ReadError::Aws {
                        context: format!("ListFragments of stream {}", self.stream),
                        source: e,
                    });
                }
            };
            pages += 1;
            for fragment in page.fragments {
                let (from, to) = (
                    fragment.producer_timestamp,
                    fragment.producer_timestamp + fragment.length_ms as f64 / 1000.0,
                );
                span = Some(span.map_or((from, to), |(a, b)| (a.min(from), b.max(to))));
                match fragment.fragment_number.parse::<FragmentNumber>() {
                    Ok(n) => numbers.push(n),
                    Err(e) => gst::warning!(CAT, "ListFragments returned {e}; ignored"),
                }
            }
            match page.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => break,
            }
        }
        numbers.sort();
        numbers.dedup();
        gst::info!(
            CAT,
            "{} fragments in the range ({pages} pages of ListFragments)",
            numbers.len()
        );
        if let Some((from, to)) = span.filter(|(from, to)| to > from) {
            self.remuxer
                .set_expected_duration(std::time::Duration::from_secs_f64(to - from));
        }
        self.range.remaining = numbers.into();
        self.range.listed = true;
        Ok(())
    }
}
