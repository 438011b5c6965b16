// SPDX-License-Identifier: MPL-2.0
//! The PutMedia session of kvssink: the fragment buffer, acknowledgements, reconnection, rotation and EOS.
//!
//! This module knows nothing of GObject. The element's streaming thread sends [`UploadItem`]s (the Matroska header,
//! then for each fragment its start and its cluster children as they are produced) into a bounded channel; one
//! task on the plugin's runtime owns everything else:
//!
//! * the [`FragmentBuffer`]: every fragment stays there until the service acknowledges it PERSISTED (RECEIVED
//!   when the stream keeps no data), bounded by bytes and duration;
//! * the connection: bytes go to the open PutMedia body the moment they arrive (one HTTP chunk per cluster child),
//!   acknowledgements are parsed as a stream and mapped to fragments by timecode;
//! * recovery: a dropped connection, an HTTP error, a stale connection (no acknowledgement for
//!   `connection-staleness` while data is outstanding) or a retryable ERROR acknowledgement leads to a new
//!   PutMedia call after a backoff with jitter. Each call signs anew; the header is sent again, then every
//!   fragment not yet RECEIVED, in order. Fragments already acknowledged are never sent twice;
//! * rotation: every `rotation-period` and before temporary credentials expire, at a fragment start, the current
//!   body is closed, its acknowledgements drained, and a new call made (the service allows one PutMedia per
//!   stream at a time);
//! * EOS: the last fragment is closed with the `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag, then the task waits until
//!   every fragment is acknowledged before it ends the body, like the official producer.
//!
//! The transport (signing, HTTP) is behind [`Transport`] so that this logic is tested without a network.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use kvs_mkv::ack::{Ack, AckErrorClass, AckErrorId, AckEventType, AckParser};
use tokio::sync::{mpsc, watch};

use crate::aws::AwsError;

/// The body of one PutMedia request, fed chunk by chunk.
pub type BodyStream = futures::channel::mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>;
type BodySender = futures::channel::mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// How the upload task reaches the service. The real implementation lives in `transport.rs`.
pub trait Transport: Send + Sync + 'static {
    /// Start-up calls made once before the first PutMedia: DescribeStream, CreateStream when needed, TagStream,
    /// GetDataEndpoint.
    /// `media_type` is derived from the stream's tracks, for CreateStream.
    fn prepare(&self, media_type: String) -> BoxFuture<'static, Result<StreamReady, AwsError>>;
    /// Makes one PutMedia call with this body; resolves when the response head arrived.
    /// `producer_start_ms` is set for RELATIVE timecodes.
    fn open(
        &self,
        producer_start_ms: Option<u64>,
        body: BodyStream,
    ) -> BoxFuture<'static, Result<Box<dyn AckSource>, AwsError>>;
    /// Producer timestamps (epoch milliseconds) of the fragments the service stored in `[start_ms, end_ms]`
    /// (ListFragments). Used after a connection loss to skip fragments that were stored although their
    /// acknowledgement never arrived.
    fn stored_fragments(
        &self,
        start_ms: u64,
        end_ms: u64,
    ) -> BoxFuture<'static, Result<Vec<u64>, AwsError>>;
    /// When the current credentials expire, if they do.
    fn credentials_expiry(&self) -> Option<SystemTime>;
    /// Forgets the cached data endpoint after a connection failure, so the next call resolves it again.
    fn connection_failed(&self);
}

/// What the start-up calls learnt about the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamReady {
    /// Whether the stream retains data (DataRetentionInHours > 0): then the service sends PERSISTED, otherwise
    /// RECEIVED is the last acknowledgement. `None`: unknown, keep the configured expectation.
    pub retains_data: Option<bool>,
}

/// The acknowledgement byte stream of one PutMedia response.
pub trait AckSource: Send {
    /// The next piece of the response body; `None` at its end.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, AwsError>>;
}

/// What the element's streaming thread sends to the upload task.
#[derive(Debug, Clone)]
pub enum UploadItem {
    /// The Matroska header (EBML, Segment, Info, Tracks); sent again at the start of each connection.
    /// `producer_start_ms` is the producer start timestamp for RELATIVE timecodes; `media_type` the MIME types
    /// of the tracks (`video/h264,audio/aac`).
    Header {
        bytes: Bytes,
        producer_start_ms: Option<u64>,
        media_type: String,
    },
    /// A fragment begins: `bytes` holds any fragment metadata Tags and the cluster's ID, size and Timecode.
    FragmentStart { timecode: u64, bytes: Bytes },
    /// A child of the current cluster (a block), forwarded as soon as it is complete.
    Data(Bytes),
    /// No more data: close the last fragment and finish once everything is acknowledged.
    Eos,
}

/// Tunables of the session, from the element's properties.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// `fragment-acks`: ask the service for acknowledgements. Without them a fragment is done once sent.
    pub ack_required: bool,
    /// Wait for PERSISTED (the stream retains data) rather than RECEIVED.
    pub wait_for_persisted: bool,
    /// Realtime streaming drops the oldest fragments when the buffer is full; offline blocks the producer.
    pub drop_when_full: bool,
    /// `storage-size`: cap on buffered bytes.
    pub max_bytes: usize,
    /// `buffer-duration`: cap on buffered media duration.
    pub max_duration: Duration,
    /// `replay-duration`: in realtime mode, unacknowledged fragments further than this behind the newest are not
    /// replayed after a reconnection (they are dropped and reported). `None`: replay everything.
    pub replay_duration: Option<Duration>,
    /// `connection-staleness`: reconnect when data is outstanding and no acknowledgement came for this long.
    pub staleness: Option<Duration>,
    /// `rotation-period`: open a new session this often. `None`: only before credentials expire.
    pub rotation_period: Option<Duration>,
    /// Rotate this long before the credentials expire.
    pub credential_margin: Duration,
    /// Close the current fragment and the connection after this long without input: before the service's own
    /// idle cut (30 s), and early enough that a fragment resumed after a pause stays well under the longest
    /// fragment the service accepts (20 s, MAX_FRAGMENT_DURATION_REACHED).
    pub idle_close: Duration,
    /// `restart-on-error`: reconnect after errors instead of failing.
    pub restart_on_error: bool,
    /// Timecode scale of the clusters, nanoseconds per unit (for durations).
    pub timecode_scale_ns: u64,
    /// Period of [`UploadEvent::Stats`]; `None`: never.
    pub stats_period: Option<Duration>,
    /// `max-latency`: report [`UploadEvent::LatencyPressure`] when more media than this waits.
    pub max_latency: Option<Duration>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            ack_required: true,
            wait_for_persisted: true,
            drop_when_full: true,
            max_bytes: 128 * 1024 * 1024,
            max_duration: Duration::from_secs(120),
            replay_duration: None,
            staleness: Some(Duration::from_secs(60)),
            rotation_period: Some(Duration::from_secs(2400)),
            credential_margin: Duration::from_secs(120),
            idle_close: Duration::from_secs(8),
            restart_on_error: true,
            timecode_scale_ns: 1_000_000,
            stats_period: None,
            max_latency: None,
        }
    }
}

/// A GStreamer-independent description of a fatal failure.
#[derive(Debug, Clone)]
pub enum FatalError {
    /// A service or connection error (the start-up calls, or PutMedia when not retried).
    Aws {
        context: &'static str,
        error: AwsError,
    },
    /// A fatal ERROR acknowledgement.
    Ack { ack: Ack },
}

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FatalError::Aws { context, error } => write!(f, "{context}: {error}"),
            FatalError::Ack { ack } => write!(
                f,
                "the service rejected the stream: error {} {} on fragment timecode {}",
                ack.error_id.unwrap_or(0),
                ack.error_code.as_deref().unwrap_or("(no code)"),
                ack.fragment_timecode
                    .map_or_else(|| "(none)".to_string(), |t| t.to_string())
            ),
        }
    }
}

/// What the upload task reports to the element, which turns it into signals and bus messages.
#[derive(Debug, Clone)]
pub enum UploadEvent {
    /// The start-up calls succeeded.
    Ready,
    /// An acknowledgement was received.
    Ack(Ack),
    /// A PutMedia connection is open; `replayed` fragments were sent again.
    Connected { attempt: u32, replayed: usize },
    /// The connection failed or was closed for recovery; a new one follows after `delay`.
    Reconnecting { cause: String, delay: Duration },
    /// Whole fragments were dropped because the buffer was full or too old to replay.
    Dropped {
        fragments: usize,
        bytes: usize,
        reason: &'static str,
    },
    /// The service rejected one fragment (ERROR acknowledgement of the skip class); it was dropped.
    FragmentRejected { ack: Ack },
    /// Input resumed after the idle close in the middle of a fragment; its frames up to the next fragment start
    /// could not be sent.
    DiscardedUntilKeyframe { bytes: usize },
    /// Data arrives that cannot start a fragment: a key frame is needed.
    KeyframeNeeded,
    /// More media is buffered than `max-latency` allows (the service or the network is too slow).
    LatencyPressure { buffered: Duration },
    /// The ListFragments check before a replay failed; everything unacknowledged is sent again.
    VerificationFailed { cause: String },
    /// Periodic copy of the counters.
    Stats(Stats),
    /// The session cannot go on.
    Fatal(FatalError),
}

/// Counters for the `stats` property and the periodic `kvs-stats` message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub fragments_started: u64,
    pub fragments_buffering: u64,
    pub fragments_received: u64,
    pub fragments_persisted: u64,
    pub fragments_dropped: u64,
    pub fragments_rejected: u64,
    pub error_acks: u64,
    pub buffered_fragments: u64,
    pub buffered_bytes: u64,
    pub buffered_duration_ms: u64,
    pub connections: u64,
    pub reconnects: u64,
    pub replayed_fragments: u64,
    /// Unacknowledged fragments found stored by ListFragments after a connection loss (not sent again).
    pub fragments_recovered: u64,
    /// From the end of a fragment (the next one started, or EOS) to its final acknowledgement.
    pub last_ack_latency_ms: Option<f64>,
    pub max_ack_latency_ms: Option<f64>,
    pub ack_latency_sum_ms: f64,
    pub ack_latency_count: u64,
}

/// How the session ended after EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Fragments still not acknowledged (0 on success).
    pub unacknowledged: usize,
    /// Why it ended early, if it did.
    pub error: Option<String>,
}

/// Callback receiving [`UploadEvent`]s, called from the runtime's threads.
pub type EventSink = Arc<dyn Fn(UploadEvent) + Send + Sync>;

/// The element's side of a running session.
pub struct UploadHandle {
    tx: mpsc::Sender<UploadItem>,
    finished: watch::Receiver<Option<Finished>>,
    stats: Arc<Mutex<Stats>>,
    task: tokio::task::JoinHandle<()>,
}

impl UploadHandle {
    /// The channel to send items into.
    pub fn sender(&self) -> mpsc::Sender<UploadItem> {
        self.tx.clone()
    }

    /// Resolves once the session has finished after EOS (or failed).
    pub fn finished(&self) -> impl std::future::Future<Output = Finished> + Send + 'static {
        let mut rx = self.finished.clone();
        async move {
            loop {
                if let Some(f) = rx.borrow_and_update().clone() {
                    return f;
                }
                if rx.changed().await.is_err() {
                    return Finished {
                        unacknowledged: 0,
                        error: Some("the upload task stopped".into()),
                    };
                }
            }
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    /// Stops the task at once (state change to READY): the connection is dropped.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for UploadHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a session on `rt`. `capacity` bounds the channel from the streaming thread (items, not bytes; the
/// buffer's own limits bound the bytes).
pub fn spawn(
    rt: &tokio::runtime::Handle,
    transport: Arc<dyn Transport>,
    config: UploadConfig,
    events: EventSink,
    capacity: usize,
) -> UploadHandle {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (finished_tx, finished_rx) = watch::channel(None);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let session = Session::new(transport, config, events, stats.clone(), finished_tx);
    let task = rt.spawn(session.run(rx));
    UploadHandle {
        tx,
        finished: finished_rx,
        stats,
        task,
    }
}

/// Acknowledgement progress of one fragment. Ordered: a state only ever moves up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FragState {
    Pending,
    Buffering,
    Received,
    Persisted,
}

#[derive(Debug)]
struct Fragment {
    timecode: u64,
    chunks: Vec<Bytes>,
    bytes: usize,
    /// No more data will be appended (the next fragment started, EOS, idle close).
    complete: bool,
    completed_at: Option<Instant>,
    state: FragState,
    /// The furthest state already counted in the stats: a replayed fragment is acknowledged BUFFERING (and
    /// sometimes RECEIVED) again, and counts once.
    counted: FragState,
    /// Connection the fragment was (last) sent on, completely or in part.
    sent_on: Option<u64>,
}

/// The fragments not yet acknowledged, oldest first, with their byte count.
#[derive(Debug, Default)]
struct FragmentBuffer {
    frags: VecDeque<Fragment>,
    bytes: usize,
}

impl FragmentBuffer {
    fn duration_units(&self) -> u64 {
        match (self.frags.front(), self.frags.back()) {
            (Some(a), Some(b)) => b.timecode.saturating_sub(a.timecode),
            _ => 0,
        }
    }

    fn find_mut(&mut self, timecode: u64) -> Option<&mut Fragment> {
        self.frags.iter_mut().find(|f| f.timecode == timecode)
    }

    fn remove(&mut self, timecode: u64) -> Option<Fragment> {
        let idx = self.frags.iter().position(|f| f.timecode == timecode)?;
        let frag = self.frags.remove(idx)?;
        self.bytes -= frag.bytes;
        Some(frag)
    }

    fn pop_front(&mut self) -> Option<Fragment> {
        let frag = self.frags.pop_front()?;
        self.bytes -= frag.bytes;
        Some(frag)
    }
}

/// One PutMedia connection.
struct Conn {
    id: u64,
    body: Option<BodySender>,
    opened: bool,
    /// When data was sent while no acknowledgement has come since: the staleness clock.
    awaiting_since: Option<Instant>,
    started: Instant,
    /// Closing: no more data is sent; it ends when its acknowledgements are in or it closes.
    draining_since: Option<Instant>,
    /// While draining: when the last of its fragments was acknowledged.
    all_acked_at: Option<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum ConnEvent {
    /// The start-up calls finished.
    Prepared(Result<StreamReady, AwsError>),
    /// ListFragments answered for the verification started as number `.0`.
    Verified(u64, Result<Vec<u64>, AwsError>),
    Opened(u64),
    Ack(u64, Ack),
    BadAck(u64, String),
    Closed(u64, Result<(), AwsError>),
}

/// How long a draining connection may take to deliver its last acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After its last acknowledgement, how long a draining connection gets to end its response by itself before it
/// is dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// Offline flow control, see `Session::has_room`.
const OFFLINE_WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// Longest wait for the ListFragments check before a replay.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two latency-pressure reports.
const LATENCY_WARNING_PERIOD: Duration = Duration::from_secs(10);
/// Housekeeping period: staleness, idle, rotation and drain checks.
const TICK: Duration = Duration::from_millis(100);

struct Session {
    transport: Arc<dyn Transport>,
    cfg: UploadConfig,
    events: EventSink,
    stats: Arc<Mutex<Stats>>,
    finished_tx: watch::Sender<Option<Finished>>,

    prepared: bool,
    preparing: bool,
    /// When to try the start-up calls again after a transient failure.
    prepare_at: Option<Instant>,
    header: Option<Bytes>,
    producer_start_ms: Option<u64>,
    media_type: String,
    buffer: FragmentBuffer,
    /// The last fragment ended without a successor (EOS or idle close): the end tag follows it on the wire.
    last_closed: bool,
    /// After an idle close, data until the next fragment start has no fragment to go to.
    discarding: bool,
    discarded_bytes: usize,

    conn: Option<Conn>,
    next_conn_id: u64,
    conn_tx: mpsc::UnboundedSender<ConnEvent>,
    conn_rx: Option<mpsc::UnboundedReceiver<ConnEvent>>,
    attempt: u32,
    reconnect_at: Option<Instant>,
    /// A ListFragments check is running (its number); no connection opens meanwhile.
    verifying: Option<u64>,
    next_verification: u64,
    rotate_pending: bool,
    last_input: Instant,
    last_stats: Instant,
    last_latency_warning: Option<Instant>,
    eos: bool,
    done: bool,
}

impl Session {
    fn new(
        transport: Arc<dyn Transport>,
        cfg: UploadConfig,
        events: EventSink,
        stats: Arc<Mutex<Stats>>,
        finished_tx: watch::Sender<Option<Finished>>,
    ) -> Session {
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        Session {
            transport,
            cfg,
            events,
            stats,
            finished_tx,
            prepared: false,
            preparing: false,
            prepare_at: None,
            header: None,
            producer_start_ms: None,
            media_type: String::new(),
            buffer: FragmentBuffer::default(),
            last_closed: false,
            discarding: false,
            discarded_bytes: 0,
            conn: None,
            next_conn_id: 0,
            conn_tx,
            conn_rx: Some(conn_rx),
            attempt: 0,
            reconnect_at: None,
            verifying: None,
            next_verification: 0,
            rotate_pending: false,
            last_input: Instant::now(),
            last_stats: Instant::now(),
            last_latency_warning: None,
            eos: false,
            done: false,
        }
    }

    async fn run(mut self, mut input: mpsc::Receiver<UploadItem>) {
        let Some(mut conn_rx) = self.conn_rx.take() else {
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut input_open = true;
        while !self.done {
            self.ensure_prepared();
            let accept = input_open && !self.eos && self.has_room();
            tokio::select! {
                item = input.recv(), if accept => match item {
                    Some(item) => self.on_item(item),
                    None => {
                        // The element went away without EOS: nothing more will come.
                        input_open = false;
                    }
                },
                Some(ev) = conn_rx.recv() => self.on_conn_event(ev),
                _ = tick.tick() => self.on_tick(),
            }
            if !self.done {
                self.ensure_connected();
                self.check_finished();
            }
            self.publish_stats();
        }
    }

    /// Starts the start-up calls once the header is known (CreateStream needs the media type of the tracks).
    /// They run beside the loop, so that a live source keeps being buffered meanwhile.
    fn ensure_prepared(&mut self) {
        if self.prepared || self.preparing || self.header.is_none() {
            return;
        }
        if let Some(at) = self.prepare_at
            && Instant::now() < at
        {
            return;
        }
        self.prepare_at = None;
        self.preparing = true;
        let prepare = self.transport.prepare(self.media_type.clone());
        let events = self.conn_tx.clone();
        tokio::spawn(async move {
            let _ = events.send(ConnEvent::Prepared(prepare.await));
        });
    }

    fn on_prepared(&mut self, result: Result<StreamReady, AwsError>) {
        self.preparing = false;
        match result {
            Ok(ready) => {
                // An existing stream's retention decides which acknowledgement is the last one.
                if let Some(retains) = ready.retains_data {
                    self.cfg.wait_for_persisted = retains;
                }
                self.prepared = true;
                self.attempt = 0;
                (self.events)(UploadEvent::Ready);
            }
            // The network may come up after the camera: transient trouble is retried, not fatal.
            Err(error) if error.is_retryable() && self.cfg.restart_on_error => {
                let delay = crate::aws::retry::backoff(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                self.prepare_at = Some(Instant::now() + delay);
                (self.events)(UploadEvent::Reconnecting {
                    cause: format!("stream set-up failed, retrying: {error}"),
                    delay,
                });
            }
            Err(error) => self.fail(FatalError::Aws {
                context: "stream set-up failed",
                error,
            }),
        }
    }

    // ---------------------------------------------------------------------------------------------- input

    /// Offline mode only: whether to take more input now. Besides storage-size and buffer-duration, the data
    /// in flight is kept to 4 MiB (or the one fragment being written, if larger): enough to keep the connection
    /// busy while the previous fragment is acknowledged, without holding a file's worth of memory when the
    /// source is faster than the service.
    fn has_room(&self) -> bool {
        if self.cfg.drop_when_full || self.buffer.frags.len() <= 1 {
            return true;
        }
        let within_limits = self.buffer.bytes < self.cfg.max_bytes
            && self.units_to_duration(self.buffer.duration_units()) < self.cfg.max_duration;
        within_limits && self.buffer.bytes < OFFLINE_WINDOW_BYTES
    }

    fn units_to_duration(&self, units: u64) -> Duration {
        Duration::from_nanos(units.saturating_mul(self.cfg.timecode_scale_ns))
    }

    fn on_item(&mut self, item: UploadItem) {
        self.last_input = Instant::now();
        match item {
            UploadItem::Header {
                bytes,
                producer_start_ms,
                media_type,
            } => {
                self.header = Some(bytes);
                self.producer_start_ms = producer_start_ms;
                self.media_type = media_type;
            }
            UploadItem::FragmentStart { timecode, bytes } => self.start_fragment(timecode, bytes),
            UploadItem::Data(bytes) => self.append(bytes),
            UploadItem::Eos => self.on_eos(),
        }
    }

    fn complete_last(&mut self) {
        if let Some(last) = self.buffer.frags.back_mut()
            && !last.complete
        {
            last.complete = true;
            last.completed_at = Some(Instant::now());
        }
    }

    fn start_fragment(&mut self, timecode: u64, bytes: Bytes) {
        self.complete_last();
        if self.discarding {
            self.discarding = false;
            if self.discarded_bytes > 0 {
                (self.events)(UploadEvent::DiscardedUntilKeyframe {
                    bytes: std::mem::take(&mut self.discarded_bytes),
                });
            }
        }
        self.last_closed = false;
        if let Some(last) = self.buffer.frags.back()
            && last.timecode >= timecode
        {
            // The element guarantees increasing timecodes; a repeat would make acknowledgements ambiguous.
            // Keeping it in the previous fragment is the only way not to lose it.
            self.append(bytes);
            return;
        }
        lock(&self.stats).fragments_started += 1;

        // Rotation happens at a fragment start so that the new session begins with a key frame.
        if self.rotation_due() {
            self.rotate_pending = false;
            self.close_conn_gracefully("session rotation");
        }

        let len = bytes.len();
        self.buffer.frags.push_back(Fragment {
            timecode,
            chunks: vec![bytes.clone()],
            bytes: len,
            complete: false,
            completed_at: None,
            state: FragState::Pending,
            counted: FragState::Pending,
            sent_on: None,
        });
        self.buffer.bytes += len;
        self.send_live(bytes);
        self.enforce_limits();
    }

    fn append(&mut self, bytes: Bytes) {
        if self.discarding {
            if self.discarded_bytes == 0 {
                // Input resumed in the middle of a group of pictures: ask for a key frame so the next fragment
                // starts soon.
                (self.events)(UploadEvent::KeyframeNeeded);
            }
            self.discarded_bytes += bytes.len();
            return;
        }
        let Some(last) = self.buffer.frags.back_mut() else {
            // Data before any cluster (cannot happen with matroskamux); it belongs to no fragment.
            return;
        };
        if last.complete {
            self.discarded_bytes += bytes.len();
            return;
        }
        last.chunks.push(bytes.clone());
        last.bytes += bytes.len();
        self.buffer.bytes += bytes.len();
        self.send_live(bytes);
        self.enforce_limits();
    }

    fn on_eos(&mut self) {
        self.complete_last();
        self.eos = true;
        if !self.buffer.frags.is_empty() && !self.last_closed {
            self.last_closed = true;
            self.send_live(end_of_fragment_tag());
        }
    }

    /// Sends bytes of the newest fragment on the open connection, if there is one that is not closing.
    fn send_live(&mut self, bytes: Bytes) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.draining_since.is_some() {
            return;
        }
        let Some(body) = conn.body.as_ref() else {
            return;
        };
        let len = bytes.len() as u64;
        if body.unbounded_send(Ok(bytes)).is_ok() {
            if let Some(last) = self.buffer.frags.back_mut() {
                last.sent_on = Some(conn.id);
            }
            if conn.awaiting_since.is_none() {
                conn.awaiting_since = Some(Instant::now());
            }
            lock(&self.stats).bytes_sent += len;
        }
        if !self.cfg.ack_required {
            self.release_sent_without_acks();
        }
    }

    /// Without acknowledgements, a complete fragment is done once it went out.
    fn release_sent_without_acks(&mut self) {
        while let Some(front) = self.buffer.frags.front() {
            if front.complete && front.sent_on.is_some() {
                self.buffer.pop_front();
            } else {
                break;
            }
        }
    }

    fn enforce_limits(&mut self) {
        if !self.cfg.drop_when_full {
            return;
        }
        let mut dropped = 0usize;
        let mut dropped_bytes = 0usize;
        // Never drop the fragment being written: it is the newest.
        while self.buffer.frags.len() > 1
            && (self.buffer.bytes > self.cfg.max_bytes
                || self.units_to_duration(self.buffer.duration_units()) > self.cfg.max_duration)
        {
            if let Some(f) = self.buffer.pop_front() {
                dropped += 1;
                dropped_bytes += f.bytes;
            }
        }
        if dropped > 0 {
            lock(&self.stats).fragments_dropped += dropped as u64;
            (self.events)(UploadEvent::Dropped {
                fragments: dropped,
                bytes: dropped_bytes,
                reason: "the buffer is full (storage-size or buffer-duration reached)",
            });
        }
    }

    // ---------------------------------------------------------------------------------------------- connections

    fn rotation_due(&self) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        if conn.draining_since.is_some() {
            return false;
        }
        if self.rotate_pending {
            return true;
        }
        if let Some(period) = self.cfg.rotation_period
            && conn.started.elapsed() >= period
        {
            return true;
        }
        if let Some(expiry) = self.transport.credentials_expiry()
            && let Ok(left) = expiry.duration_since(SystemTime::now())
            && left <= self.cfg.credential_margin
            && conn.started.elapsed() > Duration::from_secs(1)
        {
            return true;
        }
        false
    }

    /// Whether there is anything the service has not received yet.
    fn has_unreceived(&self) -> bool {
        self.buffer
            .frags
            .iter()
            .any(|f| f.state < FragState::Received)
    }

    fn ensure_connected(&mut self) {
        if self.conn.is_some() || !self.prepared || self.header.is_none() || !self.has_unreceived()
        {
            return;
        }
        if self.verifying.is_some() {
            return;
        }
        if let Some(at) = self.reconnect_at {
            if Instant::now() < at {
                return;
            }
            self.reconnect_at = None;
            if self.start_verification() {
                return;
            }
        }
        self.open_conn();
    }

    /// Epoch milliseconds of a fragment's producer timestamp.
    fn producer_ms(&self, timecode: u64) -> u64 {
        let ms = (u128::from(timecode) * u128::from(self.cfg.timecode_scale_ns) / 1_000_000) as u64;
        self.producer_start_ms.unwrap_or(0).saturating_add(ms)
    }

    /// After a connection loss, fragments that went out completely but were never acknowledged may be stored
    /// already. Asks ListFragments before replaying them, so that none is stored twice. Returns false when
    /// there is nothing to check.
    fn start_verification(&mut self) -> bool {
        let uncertain: Vec<u64> = self
            .buffer
            .frags
            .iter()
            .filter(|f| f.complete && f.sent_on.is_some() && f.state < FragState::Received)
            .map(|f| self.producer_ms(f.timecode))
            .collect();
        let (Some(first), Some(last)) = (uncertain.iter().min(), uncertain.iter().max()) else {
            return false;
        };
        let id = self.next_verification;
        self.next_verification += 1;
        self.verifying = Some(id);
        let query = self.transport.stored_fragments(*first, *last);
        let events = self.conn_tx.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(VERIFY_TIMEOUT, query)
                .await
                .unwrap_or_else(|_| Err(AwsError::Timeout("ListFragments before a replay".into())));
            let _ = events.send(ConnEvent::Verified(id, result));
        });
        true
    }

    fn on_verified(&mut self, id: u64, result: Result<Vec<u64>, AwsError>) {
        if self.verifying != Some(id) {
            return;
        }
        self.verifying = None;
        match result {
            Ok(stored) => {
                let stored: std::collections::HashSet<u64> = stored.into_iter().collect();
                let candidates: Vec<u64> = self
                    .buffer
                    .frags
                    .iter()
                    .filter(|f| f.complete && f.sent_on.is_some() && f.state < FragState::Received)
                    .filter(|f| stored.contains(&self.producer_ms(f.timecode)))
                    .map(|f| f.timecode)
                    .collect();
                // ListFragments lists only durable fragments: these need nothing more.
                for tc in &candidates {
                    self.buffer.remove(*tc);
                }
                if !candidates.is_empty() {
                    lock(&self.stats).fragments_recovered += candidates.len() as u64;
                }
            }
            Err(e) => {
                // Without the list, replaying everything is the safe choice: a duplicate rather than a gap.
                (self.events)(UploadEvent::VerificationFailed {
                    cause: e.to_string(),
                });
            }
        }
        self.open_conn();
    }

    fn open_conn(&mut self) {
        let Some(header) = self.header.clone() else {
            return;
        };
        self.drop_unreplayable();
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let (body_tx, body_rx) = futures::channel::mpsc::unbounded();

        // Everything not yet RECEIVED goes out again, in order, after the header.
        let mut sent = header.len() as u64;
        let _ = body_tx.unbounded_send(Ok(header));
        let mut replayed = 0usize;
        for frag in self.buffer.frags.iter_mut() {
            if frag.state >= FragState::Received {
                continue;
            }
            if frag.sent_on.is_some() {
                replayed += 1;
            }
            for chunk in &frag.chunks {
                sent += chunk.len() as u64;
                let _ = body_tx.unbounded_send(Ok(chunk.clone()));
            }
            frag.sent_on = Some(id);
            frag.state = FragState::Pending;
        }
        if self.last_closed {
            let tag = end_of_fragment_tag();
            sent += tag.len() as u64;
            let _ = body_tx.unbounded_send(Ok(tag));
        }

        let transport = self.transport.clone();
        let events = self.conn_tx.clone();
        let open = transport.open(self.producer_start_ms, body_rx);
        let task = tokio::spawn(async move {
            let mut acks = match open.await {
                Ok(acks) => acks,
                Err(e) => {
                    let _ = events.send(ConnEvent::Closed(id, Err(e)));
                    return;
                }
            };
            let _ = events.send(ConnEvent::Opened(id));
            let mut parser = AckParser::new();
            loop {
                match acks.next_chunk().await {
                    Ok(Some(chunk)) => {
                        for ack in parser.push(&chunk) {
                            let ev = match ack {
                                Ok(ack) => ConnEvent::Ack(id, ack),
                                Err(e) => ConnEvent::BadAck(id, e.to_string()),
                            };
                            let _ = events.send(ev);
                        }
                    }
                    Ok(None) => {
                        let _ = events.send(ConnEvent::Closed(id, Ok(())));
                        return;
                    }
                    Err(e) => {
                        let _ = events.send(ConnEvent::Closed(id, Err(e)));
                        return;
                    }
                }
            }
        });

        {
            let mut stats = lock(&self.stats);
            stats.bytes_sent += sent;
            stats.connections += 1;
            stats.replayed_fragments += replayed as u64;
        }
        let now = Instant::now();
        self.conn = Some(Conn {
            id,
            body: Some(body_tx),
            opened: false,
            awaiting_since: Some(now),
            started: now,
            draining_since: None,
            all_acked_at: None,
            task,
        });
        if !self.cfg.ack_required {
            self.release_sent_without_acks();
        }
        (self.events)(UploadEvent::Connected {
            attempt: self.attempt,
            replayed,
        });
    }

    /// In realtime mode, fragments too far behind the newest are not worth replaying (`replay-duration`).
    fn drop_unreplayable(&mut self) {
        let Some(limit) = self.cfg.replay_duration else {
            return;
        };
        if !self.cfg.drop_when_full {
            return;
        }
        let Some(newest) = self.buffer.frags.back().map(|f| f.timecode) else {
            return;
        };
        let mut dropped = 0;
        let mut bytes = 0;
        while let Some(front) = self.buffer.frags.front() {
            let behind = self.units_to_duration(newest.saturating_sub(front.timecode));
            if self.buffer.frags.len() > 1 && front.state < FragState::Received && behind > limit {
                if let Some(f) = self.buffer.pop_front() {
                    dropped += 1;
                    bytes += f.bytes;
                }
            } else {
                break;
            }
        }
        if dropped > 0 {
            lock(&self.stats).fragments_dropped += dropped as u64;
            (self.events)(UploadEvent::Dropped {
                fragments: dropped,
                bytes,
                reason: "older than replay-duration when the connection came back",
            });
        }
    }

    /// Stops sending on the current connection: closes the last fragment with the end tag and ends the body;
    /// the connection stays until its acknowledgements are in.
    fn close_conn_gracefully(&mut self, why: &str) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.draining_since.is_some() {
            return;
        }
        if let Some(body) = conn.body.as_ref() {
            let tag = end_of_fragment_tag();
            let len = tag.len() as u64;
            if body.unbounded_send(Ok(tag)).is_ok() {
                lock(&self.stats).bytes_sent += len;
            }
        }
        // Ending the body lets the service finish the request once it has acknowledged everything.
        conn.body = None;
        conn.draining_since = Some(Instant::now());
        let _ = why;
    }

    /// Drops the connection at once and schedules a new one after a backoff.
    /// A connection is gone. What it delivered that the service had not made durable yet may be gone with it (a
    /// service that died between RECEIVED and PERSISTED), and no PERSISTED can arrive for it any more: those
    /// fragments go back to Pending. The ListFragments check before the next connection drops the ones that were
    /// stored after all; the others are sent again.
    fn forget_connection(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        for frag in self.buffer.frags.iter_mut() {
            if frag.sent_on == Some(conn.id) && frag.state == FragState::Received {
                frag.state = FragState::Pending;
            }
        }
    }

    fn reconnect(&mut self, cause: String) {
        self.forget_connection();
        self.transport.connection_failed();
        if !self.cfg.restart_on_error {
            self.fail(FatalError::Aws {
                context: "PutMedia failed and restart-on-error is false",
                error: AwsError::Network(cause),
            });
            return;
        }
        let delay = crate::aws::retry::backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.reconnect_at = Some(Instant::now() + delay);
        lock(&self.stats).reconnects += 1;
        (self.events)(UploadEvent::Reconnecting { cause, delay });
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let current = self.conn.as_ref().map(|c| c.id);
        match ev {
            ConnEvent::Prepared(result) => self.on_prepared(result),
            ConnEvent::Verified(id, result) => self.on_verified(id, result),
            ConnEvent::Opened(id) => {
                if let Some(conn) = self.conn.as_mut()
                    && conn.id == id
                {
                    conn.opened = true;
                }
            }
            ConnEvent::Ack(id, ack) => {
                if current == Some(id)
                    && let Some(conn) = self.conn.as_mut()
                {
                    conn.awaiting_since = None;
                }
                self.on_ack(ack);
            }
            ConnEvent::BadAck(id, msg) => {
                if current == Some(id) {
                    self.reconnect(format!("unreadable acknowledgement: {msg}"));
                }
            }
            ConnEvent::Closed(id, result) => {
                if current != Some(id) {
                    return;
                }
                let draining = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.draining_since.is_some());
                match result {
                    Ok(()) if draining || (self.eos && !self.has_unacked()) => {
                        self.forget_connection();
                    }
                    Ok(()) => self.reconnect("the service ended the PutMedia response".into()),
                    Err(e) => {
                        if e.is_retryable() || matches!(e, AwsError::ExpiredToken { .. }) {
                            self.reconnect(e.to_string());
                        } else if draining && !self.has_unacked() {
                            self.conn = None;
                        } else {
                            self.conn = None;
                            self.fail(FatalError::Aws {
                                context: "PutMedia failed",
                                error: e,
                            });
                        }
                    }
                }
            }
        }
    }

    fn has_unacked(&self) -> bool {
        !self.buffer.frags.is_empty()
    }

    fn final_state(&self) -> FragState {
        if self.cfg.wait_for_persisted {
            FragState::Persisted
        } else {
            FragState::Received
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        (self.events)(UploadEvent::Ack(ack.clone()));
        let state = match ack.event_type {
            AckEventType::Buffering => FragState::Buffering,
            AckEventType::Received => FragState::Received,
            AckEventType::Persisted => FragState::Persisted,
            AckEventType::Idle => return,
            AckEventType::Error => {
                self.on_error_ack(ack);
                return;
            }
        };
        let Some(tc) = ack.fragment_timecode else {
            return;
        };
        let final_state = self.final_state();
        let Some(frag) = self.buffer.find_mut(tc) else {
            return;
        };
        if state <= frag.state {
            return;
        }
        frag.state = state;
        if state > frag.counted {
            frag.counted = state;
            let mut stats = lock(&self.stats);
            match state {
                FragState::Buffering => stats.fragments_buffering += 1,
                FragState::Received => stats.fragments_received += 1,
                FragState::Persisted => stats.fragments_persisted += 1,
                FragState::Pending => {}
            }
        }
        // A fragment that reached its final state proves the service works: the next failure starts a fresh
        // backoff. BUFFERING and RECEIVED do not: a service that takes data but cannot store it (a full disk,
        // ARCHIVAL_ERROR) acknowledges them before failing, and resetting then would retry it in a tight loop.
        if state >= final_state {
            self.attempt = 0;
        }
        if state >= final_state
            && let Some(done) = self.buffer.remove(tc)
            && let Some(at) = done.completed_at
        {
            let ms = at.elapsed().as_secs_f64() * 1000.0;
            let mut stats = lock(&self.stats);
            stats.last_ack_latency_ms = Some(ms);
            stats.max_ack_latency_ms = Some(stats.max_ack_latency_ms.map_or(ms, |m| m.max(ms)));
            stats.ack_latency_sum_ms += ms;
            stats.ack_latency_count += 1;
        }
    }

    fn on_error_ack(&mut self, ack: Ack) {
        lock(&self.stats).error_acks += 1;
        let class = ack
            .error_id
            .and_then(AckErrorId::from_id)
            .map(|id| id.class())
            .unwrap_or(AckErrorClass::Retry);
        match class {
            AckErrorClass::Fatal => self.fail(FatalError::Ack { ack }),
            AckErrorClass::SkipFragment => {
                if let Some(tc) = ack.fragment_timecode
                    && self.buffer.remove(tc).is_some()
                {
                    lock(&self.stats).fragments_rejected += 1;
                }
                // The rest of the connection stays usable; if the service closes it, the usual recovery
                // replays what follows the rejected fragment.
                (self.events)(UploadEvent::FragmentRejected { ack });
            }
            AckErrorClass::Retry | AckErrorClass::Rotate => {
                let cause = format!(
                    "the service reported error {} {}",
                    ack.error_id.unwrap_or(0),
                    ack.error_code.as_deref().unwrap_or("")
                );
                self.reconnect(cause);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(limit) = self.cfg.max_latency {
            let buffered = self.units_to_duration(self.buffer.duration_units());
            if buffered > limit
                && self
                    .last_latency_warning
                    .is_none_or(|at| now.duration_since(at) >= LATENCY_WARNING_PERIOD)
            {
                self.last_latency_warning = Some(now);
                (self.events)(UploadEvent::LatencyPressure { buffered });
            }
        }
        if let Some(period) = self.cfg.stats_period
            && now.duration_since(self.last_stats) >= period
        {
            self.last_stats = now;
            self.publish_stats();
            let stats = lock(&self.stats).clone();
            (self.events)(UploadEvent::Stats(stats));
        }
        // Staleness: data outstanding and no acknowledgement for too long.
        if self.cfg.ack_required
            && let Some(limit) = self.cfg.staleness
            && let Some(conn) = self.conn.as_ref()
            && let Some(since) = conn.awaiting_since
            && self.has_unreceived_on(conn.id)
            && now.duration_since(since) >= limit
        {
            let secs = limit.as_secs_f64();
            self.reconnect(format!(
                "no acknowledgement for {secs} s (connection-staleness) while data was outstanding"
            ));
            return;
        }
        // Draining connections that take too long are dropped; what they did not acknowledge is replayed.
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.draining_since.is_some())
        {
            self.check_drained(now);
            return;
        }
        // Idle input: close the fragment before the service cuts the connection.
        if !self.eos
            && self.conn.is_some()
            && now.duration_since(self.last_input) >= self.cfg.idle_close
        {
            self.complete_last();
            if !self.last_closed {
                self.last_closed = true;
            }
            self.discarding = true;
            self.close_conn_gracefully("idle input");
        }
        if self.rotation_due() {
            // Picked up at the next fragment start.
            self.rotate_pending = true;
        }
    }

    /// Drops a draining connection once its fragments are acknowledged and it had a moment to end by itself, or
    /// when it takes too long.
    fn check_drained(&mut self, now: Instant) {
        let all_acked = self
            .conn
            .as_ref()
            .is_some_and(|c| !self.has_unacked_on(c.id));
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let Some(since) = conn.draining_since else {
            return;
        };
        if all_acked && conn.all_acked_at.is_none() {
            conn.all_acked_at = Some(now);
        }
        let graceful = conn
            .all_acked_at
            .is_some_and(|at| now.duration_since(at) >= CLOSE_GRACE);
        if graceful || all_acked {
            if graceful {
                self.conn = None;
            }
        } else if now.duration_since(since) >= DRAIN_TIMEOUT {
            // Its last fragments may or may not be stored: the reconnection path checks before replaying.
            self.reconnect(format!(
                "the closing connection did not acknowledge its last fragments within {} s",
                DRAIN_TIMEOUT.as_secs()
            ));
        }
    }

    fn has_unreceived_on(&self, id: u64) -> bool {
        self.buffer
            .frags
            .iter()
            .any(|f| f.sent_on == Some(id) && f.state < FragState::Received)
    }

    fn has_unacked_on(&self, id: u64) -> bool {
        self.buffer.frags.iter().any(|f| f.sent_on == Some(id))
    }

    fn check_finished(&mut self) {
        if !self.eos || self.has_unacked() {
            return;
        }
        // Everything is acknowledged: end the body, give the service a moment to end its response, and report.
        if let Some(conn) = self.conn.as_mut() {
            conn.body = None;
            if conn.draining_since.is_none() {
                conn.draining_since = Some(Instant::now());
            }
            self.check_drained(Instant::now());
            if self.conn.is_some() {
                return;
            }
        }
        self.done = true;
        let _ = self.finished_tx.send(Some(Finished {
            unacknowledged: 0,
            error: None,
        }));
    }

    fn fail(&mut self, error: FatalError) {
        let message = error.to_string();
        (self.events)(UploadEvent::Fatal(error));
        self.conn = None;
        self.done = true;
        let _ = self.finished_tx.send(Some(Finished {
            unacknowledged: self.buffer.frags.len(),
            error: Some(message),
        }));
    }

    fn publish_stats(&self) {
        let duration_ms = self
            .units_to_duration(self.buffer.duration_units())
            .as_millis() as u64;
        let mut stats = lock(&self.stats);
        stats.buffered_fragments = self.buffer.frags.len() as u64;
        stats.buffered_bytes = self.buffer.bytes as u64;
        stats.buffered_duration_ms = duration_ms;
    }
}

/// The Tags element the official producer ends a session with: it tells the service the last fragment is
/// complete without waiting for another cluster.
pub fn end_of_fragment_tag() -> Bytes {
    Bytes::from(kvs_mkv::writer::tags_element(&[(
        kvs_mkv::tags::END_OF_FRAGMENT,
        "",
    )]))
}

#[cfg(test)]
#[path = "upload_tests.rs"]
mod tests;
