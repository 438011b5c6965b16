// SPDX-License-Identifier: MPL-2.0
//! The private sink inside `kvssink` (not a plugin feature): it receives matroskamux's output, turns it into
//! upload items with the [`Fragmenter`] and sends them to the upload task. It owns the upload session between
//! `start()` and `stop()`, and makes EOS wait for the last acknowledgement.
//!
//! The streaming thread never blocks on the network: it only sends into the session's channel. When the channel
//! is full (offline mode with a full buffer, i.e. backpressure) it waits through [`aws::wait`], which `unlock()`
//! cancels.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::fragmenter::{FragmentContext, Fragmenter, HeaderOptions, TimeBase};
use super::imp::{CAT, Metadata};
use super::transport::{AwsTransport, TransportConfig};
use super::upload::{self, EventSink, Stats, UploadConfig, UploadHandle, UploadItem};
use crate::aws::{self, AwsError, Canceller, WaitError};

/// Posts a message on the kvssink bin (so that errors name kvssink, not its private child).
pub type ErrorReporter = Arc<dyn Fn(gst::Message) + Send + Sync>;

/// Items (cluster children, i.e. frames) buffered between the streaming thread and the upload task. The task
/// takes items as they come except under offline backpressure, where this bounds what waits outside the
/// fragment buffer; kept small because a 1080p frame at 40 Mbit/s is 170 KB (16 items measured about 4 MiB more peak
/// RSS than 4 on the 1080p benchmark, for no throughput).
const CHANNEL_CAPACITY: usize = 4;

/// Everything the feeder needs from the bin's settings, given before each start.
#[derive(Clone)]
pub struct FeederConfig {
    pub transport: TransportConfig,
    pub upload: UploadConfig,
    pub time_base: TimeBase,
    pub header: HeaderOptions,
    pub file_start_time_s: u64,
    pub use_original_pts: bool,
    pub stop_stream_timeout: Option<Duration>,
    /// Request a key frame upstream once a fragment lasts this long.
    pub long_fragment: Option<Duration>,
    pub metadata: Arc<Mutex<Metadata>>,
    pub events: EventSink,
    pub report: ErrorReporter,
}

glib::wrapper! {
    pub struct KvsFeeder(ObjectSubclass<imp::KvsFeeder>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("the upload task has stopped")]
    Closed,
}

mod imp {
    use super::*;

    struct Started {
        handle: Arc<UploadHandle>,
        sender: tokio::sync::mpsc::Sender<UploadItem>,
        fragmenter: Fragmenter,
        epoch: EpochSource,
        metadata: Arc<Mutex<Metadata>>,
        stop_stream_timeout: Option<Duration>,
        report: ErrorReporter,
        events: EventSink,
        eos_done: bool,
    }

    #[derive(Default)]
    pub struct KvsFeeder {
        config: Mutex<Option<FeederConfig>>,
        /// Between start() and stop(): the client and the configuration each session starts from.
        ready: Mutex<Option<(Arc<dyn upload::Transport>, FeederConfig)>>,
        state: Mutex<Option<Started>>,
        /// Counters of the last session, readable after the element stopped.
        last_stats: Mutex<Option<(Stats, u64)>>,
        canceller: Canceller,
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KvsFeeder {
        const NAME: &'static str = "GstKvsSinkFeeder";
        type Type = super::KvsFeeder;
        type ParentType = gst_base::BaseSink;
    }

    impl ObjectImpl for KvsFeeder {
        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            // A network sink: no clock synchronisation, no last-sample reference keeping buffers alive.
            obj.set_sync(false);
            obj.set_enable_last_sample(false);
            obj.set_qos(false);
        }
    }

    impl GstObjectImpl for KvsFeeder {}

    impl ElementImpl for KvsFeeder {
        /// A session lives from READY->PAUSED to PAUSED->READY, so that a pipeline stopped to READY and
        /// restarted gets a fresh one (with fresh timestamps and an open channel).
        fn change_state(
            &self,
            transition: gst::StateChange,
        ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
            if transition == gst::StateChange::ReadyToPaused
                && let Err(msg) = self.begin_session()
            {
                self.post_error_message(msg);
                return Err(gst::StateChangeError);
            }
            let result = self.parent_change_state(transition);
            if transition == gst::StateChange::PausedToReady {
                self.end_session();
            }
            result
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                std::sync::LazyLock::new(|| {
                    // matroskamux says audio/x-matroska when it has only audio pads.
                    let mut caps = gst::Caps::new_empty_simple("video/x-matroska");
                    caps.merge(gst::Caps::new_empty_simple("audio/x-matroska"));
                    gst::PadTemplate::new(
                        "sink",
                        gst::PadDirection::Sink,
                        gst::PadPresence::Always,
                        &caps,
                    )
                    .map(|t| vec![t])
                    .unwrap_or_default()
                });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSinkImpl for KvsFeeder {
        /// NULL -> READY: checks the configuration and builds the AWS client (nothing is sent yet).
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            let Some(cfg) = lock(&self.config).take() else {
                return Err(gst::error_msg!(
                    gst::CoreError::StateChange,
                    ["the kvssink uploader was started outside of kvssink"]
                ));
            };
            aws::runtime().map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::Failed,
                    ["cannot start the upload runtime: {e}"]
                )
            })?;
            let transport = AwsTransport::new(cfg.transport.clone()).map_err(|e| {
                let (kind, msg) = e.to_gst_error("cannot set up the AWS client");
                gst::error_msg!(kind, ["{msg}"])
            })?;
            *lock(&self.ready) = Some((Arc::new(transport), cfg));
            gst::debug!(CAT, imp = self, "started");
            Ok(())
        }

        fn stop(&self) -> Result<(), gst::ErrorMessage> {
            self.end_session();
            *lock(&self.ready) = None;
            gst::debug!(CAT, imp = self, "stopped");
            Ok(())
        }

        fn unlock(&self) -> Result<(), gst::ErrorMessage> {
            self.canceller.cancel();
            Ok(())
        }

        fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
            self.canceller.reset();
            Ok(())
        }

        fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    ["cannot map a matroskamux buffer"]
                );
                gst::FlowError::Error
            })?;
            let running_time = self.obj().current_running_time();
            let (items, sender, keyframe) = {
                let mut guard = lock(&self.state);
                let Some(started) = guard.as_mut() else {
                    return Err(gst::FlowError::Flushing);
                };
                started.epoch.running_time = running_time;
                let mut items = Vec::new();
                let mut ctx = Ctx {
                    epoch: &started.epoch,
                    scale_ns: started.fragmenter.timecode_scale_ns(),
                    metadata: &started.metadata,
                };
                if let Err(err) = started.fragmenter.push(&map, &mut ctx, &mut items) {
                    drop(guard);
                    gst::element_imp_error!(self, gst::StreamError::Format, ["{err}"]);
                    return Err(gst::FlowError::Error);
                }
                let keyframe = started
                    .fragmenter
                    .take_keyframe_request()
                    .then(|| started.events.clone());
                (items, started.sender.clone(), keyframe)
            };
            // Outside the lock: the request travels upstream through the bin.
            if let Some(events) = keyframe {
                events(upload::UploadEvent::KeyframeNeeded);
            }
            for item in items {
                self.send(&sender, item)?;
            }
            Ok(gst::FlowSuccess::Ok)
        }

        fn event(&self, event: gst::Event) -> bool {
            if let gst::EventView::Eos(_) = event.view() {
                self.drain_on_eos();
            }
            self.parent_event(event)
        }
    }

    impl KvsFeeder {
        fn begin_session(&self) -> Result<(), gst::ErrorMessage> {
            let Some((transport, cfg)) = lock(&self.ready).clone() else {
                return Err(gst::error_msg!(
                    gst::CoreError::StateChange,
                    ["the kvssink uploader is not configured"]
                ));
            };
            let rt = aws::runtime().map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::Failed,
                    ["cannot start the upload runtime: {e}"]
                )
            })?;
            let handle = upload::spawn(
                rt.handle(),
                transport,
                cfg.upload,
                cfg.events.clone(),
                CHANNEL_CAPACITY,
            );
            let mut fragmenter = Fragmenter::new(cfg.time_base, cfg.header);
            fragmenter.set_long_fragment(cfg.long_fragment);
            let sender = handle.sender();
            *lock(&self.state) = Some(Started {
                handle: Arc::new(handle),
                sender,
                fragmenter,
                epoch: EpochSource {
                    file_start_time_s: cfg.file_start_time_s,
                    use_original_pts: cfg.use_original_pts,
                    running_time: None,
                },
                metadata: cfg.metadata,
                stop_stream_timeout: cfg.stop_stream_timeout,
                report: cfg.report,
                events: cfg.events,
                eos_done: false,
            });
            Ok(())
        }

        /// Drops the session (the connection closes; what was not acknowledged is lost, as the application
        /// stopped without EOS) and keeps its counters for the stats property.
        fn end_session(&self) {
            if let Some(started) = lock(&self.state).take() {
                started.handle.abort();
                *lock(&self.last_stats) = Some((
                    started.handle.stats(),
                    started.fragmenter.shifted_clusters(),
                ));
            }
        }

        pub(in super::super) fn configure(&self, cfg: FeederConfig) {
            *lock(&self.config) = Some(cfg);
        }

        /// Counters of the running session, or of the last one once stopped.
        pub(in super::super) fn stats(&self) -> Option<Stats> {
            match lock(&self.state).as_ref() {
                Some(s) => Some(s.handle.stats()),
                None => lock(&self.last_stats).as_ref().map(|(s, _)| s.clone()),
            }
        }

        /// Fragments whose start had to be moved after the previous fragment's last frame.
        pub(in super::super) fn shifted_fragments(&self) -> u64 {
            match lock(&self.state).as_ref() {
                Some(s) => s.fragmenter.shifted_clusters(),
                None => lock(&self.last_stats).as_ref().map_or(0, |(_, n)| *n),
            }
        }

        fn send(
            &self,
            sender: &tokio::sync::mpsc::Sender<UploadItem>,
            item: UploadItem,
        ) -> Result<(), gst::FlowError> {
            use tokio::sync::mpsc::error::TrySendError;
            match sender.try_send(item) {
                Ok(()) => Ok(()),
                Err(TrySendError::Closed(_)) => Err(self.closed()),
                Err(TrySendError::Full(item)) => {
                    // Backpressure: the upload task takes no more until the service acknowledges.
                    let sender = sender.clone();
                    let fut = async move { sender.send(item).await.map_err(|_| SendError::Closed) };
                    match aws::wait(&self.canceller, fut, None) {
                        Ok(()) => Ok(()),
                        Err(WaitError::Flushing) => Err(gst::FlowError::Flushing),
                        Err(WaitError::Failed(SendError::Closed)) => Err(self.closed()),
                        Err(WaitError::Failed(SendError::Aws(e))) => {
                            gst::element_imp_error!(self, gst::ResourceError::Failed, ["{e}"]);
                            Err(gst::FlowError::Error)
                        }
                        Err(WaitError::Timeout(_)) => Err(gst::FlowError::Error),
                    }
                }
            }
        }

        /// The upload task ended: it has already posted the error that made it stop.
        fn closed(&self) -> gst::FlowError {
            gst::debug!(CAT, imp = self, "upload task has stopped");
            gst::FlowError::Error
        }

        /// Closes the last fragment and waits, bounded by stop-stream-timeout, until everything is acknowledged.
        fn drain_on_eos(&self) {
            let (items, sender, handle, timeout, report) = {
                let mut guard = lock(&self.state);
                let Some(started) = guard.as_mut() else {
                    return;
                };
                if started.eos_done {
                    return;
                }
                started.eos_done = true;
                let mut items = Vec::new();
                let mut ctx = Ctx {
                    epoch: &started.epoch,
                    scale_ns: started.fragmenter.timecode_scale_ns(),
                    metadata: &started.metadata,
                };
                if let Err(err) = started.fragmenter.finish(&mut ctx, &mut items) {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "incomplete matroskamux output at EOS: {err}"
                    );
                }
                items.push(UploadItem::Eos);
                (
                    items,
                    started.sender.clone(),
                    started.handle.clone(),
                    started.stop_stream_timeout,
                    started.report.clone(),
                )
            };
            for item in items {
                if self.send(&sender, item).is_err() {
                    break;
                }
            }
            gst::info!(
                CAT,
                imp = self,
                "EOS: waiting for the last acknowledgements"
            );
            let finished = handle.finished();
            let outcome = aws::wait(
                &self.canceller,
                async move { Ok::<_, AwsError>(finished.await) },
                timeout,
            );
            let unacked = |h: &UploadHandle| h.stats().buffered_fragments;
            let message = match outcome {
                Ok(f) if f.error.is_none() && f.unacknowledged == 0 => {
                    gst::info!(CAT, imp = self, "EOS: every fragment acknowledged");
                    None
                }
                Ok(f) => Some(format!(
                    "{} fragments were not acknowledged at EOS: {}",
                    f.unacknowledged,
                    f.error.unwrap_or_default()
                )),
                Err(WaitError::Timeout(t)) => Some(format!(
                    "{} fragments were not acknowledged within stop-stream-timeout ({} s)",
                    unacked(&handle),
                    t.as_secs()
                )),
                Err(WaitError::Flushing) => None,
                Err(WaitError::Failed(e)) => Some(format!(
                    "{} fragments were not acknowledged: {e}",
                    unacked(&handle)
                )),
            };
            if let Some(message) = message {
                let msg = gst::message::Error::builder(gst::ResourceError::Write, &message).build();
                report(msg);
            }
        }
    }

    /// How running time maps to epoch time, fixed at the first cluster.
    struct EpochSource {
        file_start_time_s: u64,
        use_original_pts: bool,
        running_time: Option<gst::ClockTime>,
    }

    struct Ctx<'a> {
        epoch: &'a EpochSource,
        scale_ns: u64,
        metadata: &'a Mutex<Metadata>,
    }

    impl FragmentContext for Ctx<'_> {
        fn epoch_base(&mut self, first_cluster_timecode: u64) -> u64 {
            let scale = self.scale_ns.max(1);
            if self.epoch.use_original_pts {
                return 0;
            }
            if self.epoch.file_start_time_s > 0 {
                return self.epoch.file_start_time_s.saturating_mul(1_000_000_000) / scale;
            }
            let now_ns = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            // Live: the pipeline clock says how much running time has passed; otherwise the first cluster is
            // taken as "now".
            let running_ns = self
                .epoch
                .running_time
                .map(|t| t.nseconds())
                .unwrap_or_else(|| first_cluster_timecode.saturating_mul(scale));
            now_ns.saturating_sub(running_ns) / scale
        }

        fn fragment_metadata(&mut self) -> Vec<(String, String)> {
            lock(self.metadata).take_for_fragment()
        }
    }
}
