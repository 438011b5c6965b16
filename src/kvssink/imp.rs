// SPDX-License-Identifier: MPL-2.0
//! GStreamer glue of `kvssink`: a bin holding `matroskamux streamable=true` and the private feeder sink.
//!
//! Request pads `video_%u` and `audio_%u` are ghost pads onto matroskamux's request pads. A probe on each
//! matroskamux sink pad repairs timestamps ([`super::timestamps`]) and takes the `kvs-add-metadata` custom event.
//! matroskamux is configured so that its clusters are exactly the fragments the service needs (see
//! [`configure_mux`]). Everything about the upload lives in [`super::upload`]; this file turns its events into
//! signals and bus messages.
//!
//! Locks: `settings`, then `pads`, then `metadata`; never held across a blocking call.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::StreamingType;
use super::feeder::{FeederConfig, KvsFeeder};
use super::fragmenter::{HeaderOptions, TimeBase};
use super::timestamps::{Stamps, TimestampFixer, TrackKind};
use super::transport::TransportConfig;
use super::upload::{FatalError, Stats, UploadConfig, UploadEvent};
use crate::aws::{self, AwsSettings};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssink",
        gst::DebugColorFlags::empty(),
        Some("Kinesis Video Streams sink (PutMedia)"),
    )
});

const DEFAULT_STREAM_NAME: &str = "DEFAULT_STREAM";
const DEFAULT_RETENTION_HOURS: u32 = 2;
const DEFAULT_ALLOW_CREATE: bool = true;
const DEFAULT_CONTENT_TYPE: &str = "video/h264";
const DEFAULT_STREAMING_TYPE: StreamingType = StreamingType::Realtime;
const DEFAULT_FRAGMENT_DURATION_MS: u32 = 2000;
const DEFAULT_KEY_FRAME_FRAGMENTATION: bool = true;
const DEFAULT_TIMECODE_SCALE_MS: u32 = 1;
const DEFAULT_ABSOLUTE_FRAGMENT_TIMES: bool = true;
const DEFAULT_FRAME_TIMECODES: bool = true;
const DEFAULT_FILE_START_TIME: u64 = 0;
const DEFAULT_FRAGMENT_ACKS: bool = true;
const DEFAULT_RESTART_ON_ERROR: bool = true;
const DEFAULT_BUFFER_DURATION_S: u32 = 120;
const DEFAULT_REPLAY_DURATION_S: u32 = 40;
const DEFAULT_STORAGE_SIZE_MB: u32 = 128;
const DEFAULT_CONNECTION_STALENESS_S: u32 = 60;
const DEFAULT_MAX_LATENCY_S: u32 = 60;
const DEFAULT_STOP_STREAM_TIMEOUT_S: u32 = 120;
const DEFAULT_ROTATION_PERIOD_S: u32 = 2400;
const DEFAULT_CODEC_ID: &str = "V_MPEG4/ISO/AVC";
const DEFAULT_TRACK_NAME: &str = "kinesis_video";
const DEFAULT_AUDIO_TRACK_NAME: &str = "audio";
const DEFAULT_USE_ORIGINAL_PTS: bool = false;
const DEFAULT_FRAMERATE: u32 = 25;
const DEFAULT_AVG_BANDWIDTH_BPS: u32 = 4 * 1024 * 1024;
/// The service accepts at most 10 metadata tags per fragment.
const MAX_FRAGMENT_METADATA: usize = 10;
/// A fragment this long asks the encoder for a key frame: the service rejects fragments longer than 20 s
/// (MAX_FRAGMENT_DURATION_REACHED), so a long group of pictures is cut well before.
const LONG_FRAGMENT: Duration = Duration::from_secs(10);
/// Period of the `kvs-stats` bus message.
const STATS_PERIOD: Duration = Duration::from_secs(5);

/// Properties of the C++ element that have no meaning here. They are accepted so that existing pipelines keep
/// working, and a warning says so when one is set.
const NO_OP_PROPERTIES: &[&str] = &[
    "log-config",
    "recalculate-metrics",
    "framerate",
    "avg-bandwidth-bps",
    "disable-buffer-clipping",
    "get-kvs-metrics",
];

#[derive(Debug, Clone)]
struct Settings {
    aws: AwsSettings,
    stream_name: String,
    stream_arn: Option<String>,
    retention_hours: u32,
    allow_create_stream: bool,
    stream_tags: Option<gst::Structure>,
    content_type: String,
    content_type_set: bool,
    kms_key_id: Option<String>,
    streaming_type: StreamingType,
    fragment_duration_ms: u32,
    key_frame_fragmentation: bool,
    timecode_scale_ms: u32,
    absolute_fragment_times: bool,
    frame_timecodes: bool,
    file_start_time: u64,
    fragment_acks: bool,
    restart_on_error: bool,
    buffer_duration_s: u32,
    replay_duration_s: u32,
    storage_size_mb: u32,
    connection_staleness_s: u32,
    stop_stream_timeout_s: u32,
    rotation_period_s: u32,
    codec_id: String,
    codec_id_set: bool,
    track_name: String,
    use_original_pts: bool,
    max_latency_s: u32,
    // Accepted for compatibility only: see NO_OP_PROPERTIES.
    log_config: Option<String>,
    recalculate_metrics: bool,
    framerate: u32,
    avg_bandwidth_bps: u32,
    disable_buffer_clipping: bool,
    get_kvs_metrics: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            aws: AwsSettings::default(),
            stream_name: DEFAULT_STREAM_NAME.into(),
            stream_arn: None,
            retention_hours: DEFAULT_RETENTION_HOURS,
            allow_create_stream: DEFAULT_ALLOW_CREATE,
            stream_tags: None,
            content_type: DEFAULT_CONTENT_TYPE.into(),
            content_type_set: false,
            kms_key_id: None,
            streaming_type: DEFAULT_STREAMING_TYPE,
            fragment_duration_ms: DEFAULT_FRAGMENT_DURATION_MS,
            key_frame_fragmentation: DEFAULT_KEY_FRAME_FRAGMENTATION,
            timecode_scale_ms: DEFAULT_TIMECODE_SCALE_MS,
            absolute_fragment_times: DEFAULT_ABSOLUTE_FRAGMENT_TIMES,
            frame_timecodes: DEFAULT_FRAME_TIMECODES,
            file_start_time: DEFAULT_FILE_START_TIME,
            fragment_acks: DEFAULT_FRAGMENT_ACKS,
            restart_on_error: DEFAULT_RESTART_ON_ERROR,
            buffer_duration_s: DEFAULT_BUFFER_DURATION_S,
            replay_duration_s: DEFAULT_REPLAY_DURATION_S,
            storage_size_mb: DEFAULT_STORAGE_SIZE_MB,
            connection_staleness_s: DEFAULT_CONNECTION_STALENESS_S,
            stop_stream_timeout_s: DEFAULT_STOP_STREAM_TIMEOUT_S,
            rotation_period_s: DEFAULT_ROTATION_PERIOD_S,
            codec_id: DEFAULT_CODEC_ID.into(),
            codec_id_set: false,
            track_name: DEFAULT_TRACK_NAME.into(),
            use_original_pts: DEFAULT_USE_ORIGINAL_PTS,
            max_latency_s: DEFAULT_MAX_LATENCY_S,
            log_config: None,
            recalculate_metrics: true,
            framerate: DEFAULT_FRAMERATE,
            avg_bandwidth_bps: DEFAULT_AVG_BANDWIDTH_BPS,
            disable_buffer_clipping: false,
            get_kvs_metrics: false,
        }
    }
}

fn secs_opt(s: u32) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(u64::from(s)))
}

/// Fragment metadata from `kvs-add-metadata` events: persistent entries go with every fragment until removed
/// (an empty value removes one), the others with the next fragment only.
#[derive(Debug, Default)]
pub(super) struct Metadata {
    persistent: BTreeMap<String, String>,
    once: Vec<(String, String)>,
}

impl Metadata {
    /// The tags for the fragment starting now.
    pub(super) fn take_for_fragment(&mut self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .persistent
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.append(&mut self.once);
        out.truncate(MAX_FRAGMENT_METADATA);
        out
    }
}

#[derive(Default)]
struct Pads {
    video: Option<(gst::GhostPad, gst::Pad)>,
    audio: Option<(gst::GhostPad, gst::Pad)>,
}

/// Counters that live in the element rather than in the upload session.
#[derive(Debug, Default)]
struct ElementCounters {
    timestamp_repairs: u64,
}

pub struct KvsSink {
    settings: Mutex<Settings>,
    /// `frame-timecodes`, read by the pad probes for every buffer without taking the settings lock.
    frame_timecodes: Arc<std::sync::atomic::AtomicBool>,
    pads: Mutex<Pads>,
    metadata: Arc<Mutex<Metadata>>,
    counters: Arc<Mutex<ElementCounters>>,
    mux: gst::Element,
    feeder: KvsFeeder,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSink {
    const NAME: &'static str = "GstKvsSink";
    type Type = super::KvsSink;
    type ParentType = gst::Bin;
    type Interfaces = (gst::ChildProxy,);

    fn new() -> Self {
        // matroskamux is part of gst-plugins-good, a runtime dependency of this plugin. Without it the element
        // cannot work; the error is reported at construction and again when the bin goes to READY.
        let mux = gst::ElementFactory::make("matroskamux")
            .name("mux")
            .property("streamable", true)
            .build()
            .unwrap_or_else(|err| {
                gst::error!(
                    CAT,
                    "cannot create matroskamux (gst-plugins-good missing?): {err}"
                );
                gst::Bin::with_name("mux-missing").upcast()
            });
        KvsSink {
            settings: Mutex::new(Settings::default()),
            frame_timecodes: Arc::new(std::sync::atomic::AtomicBool::new(DEFAULT_FRAME_TIMECODES)),
            pads: Mutex::new(Pads::default()),
            metadata: Arc::new(Mutex::new(Metadata::default())),
            counters: Arc::new(Mutex::new(ElementCounters::default())),
            mux,
            feeder: glib::Object::builder().property("name", "feeder").build(),
        }
    }
}

impl ObjectImpl for KvsSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut props = vec![
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream Name")
                    .blurb("Name of the Kinesis Video stream (ignored when stream-arn is set)")
                    .default_value(Some(DEFAULT_STREAM_NAME))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-arn")
                    .nick("Stream ARN")
                    .blurb("ARN of the stream; takes precedence over stream-name. Empty: use stream-name")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("retention-period")
                    .nick("Retention Period")
                    .blurb(
                        "Data retention in hours for a stream this element creates. 0: no retention, fragments \
                         are released at RECEIVED instead of PERSISTED",
                    )
                    .default_value(DEFAULT_RETENTION_HOURS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("allow-create-stream")
                    .nick("Allow Create Stream")
                    .blurb("Create the stream when DescribeStream says it does not exist")
                    .default_value(DEFAULT_ALLOW_CREATE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stream-tags")
                    .nick("Stream Tags")
                    .blurb("Tags put on the stream at start-up (TagStream), as a structure of string fields")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("content-type")
                    .nick("Content Type")
                    .blurb(
                        "MediaType of a stream this element creates. Unset: derived from the linked pads, e.g. \
                         video/h264,audio/aac",
                    )
                    .default_value(Some(DEFAULT_CONTENT_TYPE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("kms-key-id")
                    .nick("KMS Key ID")
                    .blurb("KMS key for a stream this element creates. Empty: the service's default key")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("streaming-type", DEFAULT_STREAMING_TYPE)
                    .nick("Streaming Type")
                    .blurb(
                        "realtime/near-realtime: when the buffer is full the oldest fragments are dropped; \
                         offline: never drop, block upstream until the service acknowledges",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("fragment-duration")
                    .nick("Fragment Duration")
                    .blurb(
                        "Fragment duration in milliseconds for audio-only streams, and for video when \
                         key-frame-fragmentation is false (then fragments start at the first key frame after \
                         this duration)",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_FRAGMENT_DURATION_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("key-frame-fragmentation")
                    .nick("Key Frame Fragmentation")
                    .blurb("Start a new fragment at every video key frame")
                    .default_value(DEFAULT_KEY_FRAME_FRAGMENTATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timecode-scale")
                    .nick("Timecode Scale")
                    .blurb("Matroska timecode scale in milliseconds")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(DEFAULT_TIMECODE_SCALE_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("absolute-fragment-times")
                    .nick("Absolute Fragment Times")
                    .blurb(
                        "true: fragment timecodes are epoch times (ABSOLUTE); false: relative to the producer \
                         start timestamp (RELATIVE)",
                    )
                    .default_value(DEFAULT_ABSOLUTE_FRAGMENT_TIMES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("frame-timecodes")
                    .nick("Frame Timecodes")
                    .blurb(
                        "true: use the buffers' timestamps; false: stamp each buffer with the running time at \
                         which it arrives",
                    )
                    .default_value(DEFAULT_FRAME_TIMECODES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("file-start-time")
                    .nick("File Start Time")
                    .blurb(
                        "Epoch time in seconds of running time 0, for uploading recordings. 0: derived from the \
                         wall clock when the first buffer arrives",
                    )
                    .default_value(DEFAULT_FILE_START_TIME)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fragment-acks")
                    .nick("Fragment Acks")
                    .blurb(
                        "Ask the service for fragment acknowledgements. false: a fragment is released once sent \
                         (nothing can be replayed after a connection loss)",
                    )
                    .default_value(DEFAULT_FRAGMENT_ACKS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("restart-on-error")
                    .nick("Restart On Error")
                    .blurb("Reconnect and replay after connection and service errors; false: post an error")
                    .default_value(DEFAULT_RESTART_ON_ERROR)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("buffer-duration")
                    .nick("Buffer Duration")
                    .blurb("Most media kept while waiting for acknowledgements, in seconds")
                    .minimum(1)
                    .default_value(DEFAULT_BUFFER_DURATION_S)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("replay-duration")
                    .nick("Replay Duration")
                    .blurb(
                        "Realtime only: after a reconnection, unacknowledged fragments further than this many \
                         seconds behind the newest are dropped instead of replayed. 0: replay everything",
                    )
                    .default_value(DEFAULT_REPLAY_DURATION_S)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("storage-size")
                    .nick("Storage Size")
                    .blurb(
                        "Cap on buffered bytes in MiB (allocated as needed, not in advance). Realtime drops the \
                         oldest fragments beyond it, offline blocks upstream",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_STORAGE_SIZE_MB)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("connection-staleness")
                    .nick("Connection Staleness")
                    .blurb(
                        "Seconds without an acknowledgement, while data is outstanding, after which the \
                         connection is replaced. 0: never",
                    )
                    .default_value(DEFAULT_CONNECTION_STALENESS_S)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("stop-stream-timeout")
                    .nick("Stop Stream Timeout")
                    .blurb(
                        "Seconds EOS waits for the last fragment's PERSISTED acknowledgement before posting an \
                         error. 0: wait without limit",
                    )
                    .default_value(DEFAULT_STOP_STREAM_TIMEOUT_S)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("rotation-period")
                    .nick("Rotation Period")
                    .blurb(
                        "Seconds after which a new PutMedia session starts (at a key frame); sessions also \
                         rotate before temporary credentials expire. 0: only for credentials",
                    )
                    .default_value(DEFAULT_ROTATION_PERIOD_S)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("codec-id")
                    .nick("Codec ID")
                    .blurb(
                        "Matroska CodecID of the video track. Unset: from the caps (V_MPEG4/ISO/AVC for H.264, \
                         V_MPEGH/ISO/HEVC for H.265)",
                    )
                    .default_value(Some(DEFAULT_CODEC_ID))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("track-name")
                    .nick("Track Name")
                    .blurb("Name of the video track")
                    .default_value(Some(DEFAULT_TRACK_NAME))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("use-original-pts")
                    .nick("Use Original PTS")
                    .blurb("Treat the running time of the buffers as epoch time (for sources stamping wall time)")
                    .default_value(DEFAULT_USE_ORIGINAL_PTS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Bytes and fragments sent, acknowledged, persisted and dropped, buffered duration and \
                         bytes, reconnections and acknowledgement latency in milliseconds",
                    )
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("max-latency")
                    .nick("Max Latency")
                    .blurb(
                        "Seconds of media waiting for acknowledgement above which a latency-pressure warning is \
                         posted (at most every 10 s). 0: never",
                    )
                    .default_value(DEFAULT_MAX_LATENCY_S)
                    .mutable_ready()
                    .build(),
                // Accepted for compatibility with the C++ element; nothing to do here.
                glib::ParamSpecString::builder("log-config")
                    .nick("Log Config")
                    .blurb("No effect (C++ compatibility): logging goes to GST_DEBUG category kvssink")
                    .build(),
                glib::ParamSpecBoolean::builder("recalculate-metrics")
                    .nick("Recalculate Metrics")
                    .blurb("No effect (C++ compatibility): nothing is preallocated from metrics")
                    .default_value(true)
                    .build(),
                glib::ParamSpecUInt::builder("framerate")
                    .nick("Framerate")
                    .blurb("No effect (C++ compatibility): nothing is preallocated from the frame rate")
                    .default_value(DEFAULT_FRAMERATE)
                    .build(),
                glib::ParamSpecUInt::builder("avg-bandwidth-bps")
                    .nick("Average Bandwidth")
                    .blurb("No effect (C++ compatibility, bits per second): storage-size caps the buffer")
                    .default_value(DEFAULT_AVG_BANDWIDTH_BPS)
                    .build(),
                glib::ParamSpecBoolean::builder("disable-buffer-clipping")
                    .nick("Disable Buffer Clipping")
                    .blurb("No effect (C++ compatibility): buffers are never clipped")
                    .default_value(false)
                    .build(),
                glib::ParamSpecBoolean::builder("get-kvs-metrics")
                    .nick("Get KVS Metrics")
                    .blurb("No effect (C++ compatibility): read the stats property or the kvs-stats messages")
                    .default_value(false)
                    .build(),
            ];
            props.extend(aws::settings::properties());
            props
        });
        PROPS.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                // One per acknowledgement: structure kvs-fragment-ack {event-type, fragment-number, timecode,
                // error-id, error-code}.
                glib::subclass::Signal::builder("fragment-ack")
                    .param_types([gst::Structure::static_type()])
                    .build(),
                // A fatal error or a rejected fragment: the service's error id (0 when not from an
                // acknowledgement).
                glib::subclass::Signal::builder("stream-error")
                    .param_types([u64::static_type()])
                    .build(),
                // Kept for C++ compatibility, never emitted: see the stats property and kvs-stats messages.
                glib::subclass::Signal::builder("stream-client-metric")
                    .param_types([gst::Structure::static_type()])
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        if NO_OP_PROPERTIES.contains(&name) {
            gst::warning!(
                CAT,
                imp = self,
                "property {name} has no effect in this kvssink and is ignored ({})",
                pspec.blurb().unwrap_or_default()
            );
        }
        let mut s = lock(&self.settings);
        if s.aws.set_property(value, pspec) {
            return;
        }
        let string = || -> Option<String> {
            value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        match name {
            "stream-name" => s.stream_name = string().unwrap_or_else(|| DEFAULT_STREAM_NAME.into()),
            "stream-arn" => s.stream_arn = string(),
            "retention-period" => {
                s.retention_hours = value.get().unwrap_or(DEFAULT_RETENTION_HOURS)
            }
            "allow-create-stream" => {
                s.allow_create_stream = value.get().unwrap_or(DEFAULT_ALLOW_CREATE)
            }
            "stream-tags" => s.stream_tags = value.get::<Option<gst::Structure>>().ok().flatten(),
            "content-type" => {
                s.content_type_set = string().is_some();
                s.content_type = string().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into());
            }
            "kms-key-id" => s.kms_key_id = string(),
            "streaming-type" => s.streaming_type = value.get().unwrap_or(DEFAULT_STREAMING_TYPE),
            "fragment-duration" => {
                s.fragment_duration_ms = value.get().unwrap_or(DEFAULT_FRAGMENT_DURATION_MS)
            }
            "key-frame-fragmentation" => {
                s.key_frame_fragmentation = value.get().unwrap_or(DEFAULT_KEY_FRAME_FRAGMENTATION)
            }
            "timecode-scale" => {
                s.timecode_scale_ms = value.get().unwrap_or(DEFAULT_TIMECODE_SCALE_MS)
            }
            "absolute-fragment-times" => {
                s.absolute_fragment_times = value.get().unwrap_or(DEFAULT_ABSOLUTE_FRAGMENT_TIMES)
            }
            "frame-timecodes" => {
                s.frame_timecodes = value.get().unwrap_or(DEFAULT_FRAME_TIMECODES);
                self.frame_timecodes
                    .store(s.frame_timecodes, std::sync::atomic::Ordering::Relaxed);
            }
            "file-start-time" => s.file_start_time = value.get().unwrap_or(DEFAULT_FILE_START_TIME),
            "fragment-acks" => s.fragment_acks = value.get().unwrap_or(DEFAULT_FRAGMENT_ACKS),
            "restart-on-error" => {
                s.restart_on_error = value.get().unwrap_or(DEFAULT_RESTART_ON_ERROR)
            }
            "buffer-duration" => {
                s.buffer_duration_s = value.get().unwrap_or(DEFAULT_BUFFER_DURATION_S)
            }
            "replay-duration" => {
                s.replay_duration_s = value.get().unwrap_or(DEFAULT_REPLAY_DURATION_S)
            }
            "storage-size" => s.storage_size_mb = value.get().unwrap_or(DEFAULT_STORAGE_SIZE_MB),
            "connection-staleness" => {
                s.connection_staleness_s = value.get().unwrap_or(DEFAULT_CONNECTION_STALENESS_S)
            }
            "stop-stream-timeout" => {
                s.stop_stream_timeout_s = value.get().unwrap_or(DEFAULT_STOP_STREAM_TIMEOUT_S)
            }
            "rotation-period" => {
                s.rotation_period_s = value.get().unwrap_or(DEFAULT_ROTATION_PERIOD_S)
            }
            "codec-id" => {
                s.codec_id_set = string().is_some();
                s.codec_id = string().unwrap_or_else(|| DEFAULT_CODEC_ID.into());
            }
            "track-name" => s.track_name = string().unwrap_or_else(|| DEFAULT_TRACK_NAME.into()),
            "use-original-pts" => {
                s.use_original_pts = value.get().unwrap_or(DEFAULT_USE_ORIGINAL_PTS)
            }
            "max-latency" => s.max_latency_s = value.get().unwrap_or(DEFAULT_MAX_LATENCY_S),
            "log-config" => s.log_config = string(),
            "recalculate-metrics" => s.recalculate_metrics = value.get().unwrap_or(true),
            "framerate" => s.framerate = value.get().unwrap_or(DEFAULT_FRAMERATE),
            "avg-bandwidth-bps" => {
                s.avg_bandwidth_bps = value.get().unwrap_or(DEFAULT_AVG_BANDWIDTH_BPS)
            }
            "disable-buffer-clipping" => s.disable_buffer_clipping = value.get().unwrap_or(false),
            "get-kvs-metrics" => s.get_kvs_metrics = value.get().unwrap_or(false),
            other => gst::warning!(CAT, imp = self, "unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        let s = lock(&self.settings);
        if let Some(v) = s.aws.property(pspec) {
            return v;
        }
        match pspec.name() {
            "stream-name" => s.stream_name.to_value(),
            "stream-arn" => s.stream_arn.to_value(),
            "retention-period" => s.retention_hours.to_value(),
            "allow-create-stream" => s.allow_create_stream.to_value(),
            "stream-tags" => s.stream_tags.to_value(),
            "content-type" => s.content_type.to_value(),
            "kms-key-id" => s.kms_key_id.to_value(),
            "streaming-type" => s.streaming_type.to_value(),
            "fragment-duration" => s.fragment_duration_ms.to_value(),
            "key-frame-fragmentation" => s.key_frame_fragmentation.to_value(),
            "timecode-scale" => s.timecode_scale_ms.to_value(),
            "absolute-fragment-times" => s.absolute_fragment_times.to_value(),
            "frame-timecodes" => s.frame_timecodes.to_value(),
            "file-start-time" => s.file_start_time.to_value(),
            "fragment-acks" => s.fragment_acks.to_value(),
            "restart-on-error" => s.restart_on_error.to_value(),
            "buffer-duration" => s.buffer_duration_s.to_value(),
            "replay-duration" => s.replay_duration_s.to_value(),
            "storage-size" => s.storage_size_mb.to_value(),
            "connection-staleness" => s.connection_staleness_s.to_value(),
            "stop-stream-timeout" => s.stop_stream_timeout_s.to_value(),
            "rotation-period" => s.rotation_period_s.to_value(),
            "codec-id" => s.codec_id.to_value(),
            "track-name" => s.track_name.to_value(),
            "use-original-pts" => s.use_original_pts.to_value(),
            "max-latency" => s.max_latency_s.to_value(),
            "log-config" => s.log_config.to_value(),
            "recalculate-metrics" => s.recalculate_metrics.to_value(),
            "framerate" => s.framerate.to_value(),
            "avg-bandwidth-bps" => s.avg_bandwidth_bps.to_value(),
            "disable-buffer-clipping" => s.disable_buffer_clipping.to_value(),
            "get-kvs-metrics" => s.get_kvs_metrics.to_value(),
            other => {
                gst::warning!(CAT, imp = self, "unknown property {other}");
                pspec.default_value().clone()
            }
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_element_flags(gst::ElementFlags::SINK);
        if let Err(err) = obj.add_many([&self.mux, self.feeder.upcast_ref()]) {
            gst::error!(CAT, imp = self, "cannot assemble the bin: {err}");
            return;
        }
        if let Err(err) = self.mux.link(&self.feeder) {
            gst::error!(
                CAT,
                imp = self,
                "cannot link matroskamux to the uploader: {err}"
            );
        }
    }
}

impl GstObjectImpl for KvsSink {}

impl ElementImpl for KvsSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Kinesis Video Streams Sink",
                "Sink/Network",
                "Uploads H.264/H.265 video and AAC/G.711 audio to Amazon Kinesis Video Streams (PutMedia)",
                "gst-plugin-kvs contributors",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let video = gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build();
            let mut video = video;
            video.merge(
                gst::Caps::builder("video/x-h265")
                    .field("stream-format", gst::List::new(["hvc1", "hev1"]))
                    .field("alignment", "au")
                    .build(),
            );
            let mut audio = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", gst::List::new([2i32, 4]))
                .field("stream-format", "raw")
                .build();
            audio.merge(gst::Caps::new_empty_simple("audio/x-alaw"));
            audio.merge(gst::Caps::new_empty_simple("audio/x-mulaw"));
            let mut out = Vec::new();
            for (name, caps) in [("video_%u", video), ("audio_%u", audio)] {
                match gst::PadTemplate::new(
                    name,
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &caps,
                ) {
                    Ok(t) => out.push(t),
                    Err(err) => gst::error!(CAT, "cannot build pad template {name}: {err}"),
                }
            }
            out
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        let template_name = templ.name_template().to_string();
        let kind = match template_name.as_str() {
            "video_%u" => TrackKind::Video,
            "audio_%u" => TrackKind::Audio,
            other => {
                gst::warning!(CAT, imp = self, "no such pad template {other}");
                return None;
            }
        };
        let taken = {
            let pads = lock(&self.pads);
            match kind {
                TrackKind::Video => pads.video.is_some(),
                TrackKind::Audio => pads.audio.is_some(),
            }
        };
        if taken {
            gst::warning!(
                CAT,
                imp = self,
                "kvssink takes at most one {template_name} pad"
            );
            return None;
        }
        let mux_pad = self.mux.request_pad_simple(&template_name)?;
        let pad_name = name
            .map(str::to_owned)
            .unwrap_or_else(|| template_name.replace("%u", "0"));
        let ghost = gst::GhostPad::builder_from_template(templ)
            .name(pad_name.as_str())
            .build();
        if let Err(err) = ghost.set_target(Some(&mux_pad)) {
            gst::error!(CAT, imp = self, "cannot target matroskamux pad: {err}");
            self.mux.release_request_pad(&mux_pad);
            return None;
        }
        self.install_probe(&mux_pad, kind);
        {
            let mut pads = lock(&self.pads);
            let slot = match kind {
                TrackKind::Video => &mut pads.video,
                TrackKind::Audio => &mut pads.audio,
            };
            if slot.is_some() {
                // Another thread requested the same kind of pad meanwhile.
                drop(pads);
                self.mux.release_request_pad(&mux_pad);
                return None;
            }
            *slot = Some((ghost.clone(), mux_pad.clone()));
        }
        let obj = self.obj();
        if obj.current_state() > gst::State::Null && ghost.set_active(true).is_err() {
            gst::warning!(CAT, imp = self, "cannot activate pad {pad_name}");
        }
        // Outside the lock: adding the pad emits pad-added, whose handlers may call back into the element.
        if let Err(err) = obj.add_pad(&ghost) {
            gst::error!(CAT, imp = self, "cannot add pad {pad_name}: {err}");
            let mut pads = lock(&self.pads);
            match kind {
                TrackKind::Video => pads.video = None,
                TrackKind::Audio => pads.audio = None,
            }
            drop(pads);
            self.mux.release_request_pad(&mux_pad);
            return None;
        }
        Some(ghost.upcast())
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let released = {
            let mut guard = lock(&self.pads);
            let pads = &mut *guard;
            [&mut pads.video, &mut pads.audio]
                .into_iter()
                .find(|slot| {
                    slot.as_ref()
                        .is_some_and(|(g, _)| g.upcast_ref::<gst::Pad>() == pad)
                })
                .and_then(|slot| slot.take())
        };
        if let Some((ghost, mux_pad)) = released {
            let _ = ghost.set_target(None::<&gst::Pad>);
            let _ = ghost.set_active(false);
            let _ = self.obj().remove_pad(&ghost);
            self.mux.release_request_pad(&mux_pad);
        }
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        // The feeder's BaseSink::start() runs in its NULL->READY transition and needs its configuration;
        // matroskamux's cluster rules depend on the pads, which exist by READY->PAUSED.
        if transition == gst::StateChange::ReadyToPaused {
            let settings = lock(&self.settings).clone();
            let has_video = lock(&self.pads).video.is_some();
            configure_mux(&self.mux, &settings, has_video);
        }
        if transition == gst::StateChange::NullToReady {
            self.prepare_start().map_err(|err| {
                gst::element_imp_error!(self, gst::LibraryError::Settings, ["{err}"]);
                gst::StateChangeError
            })?;
        }
        self.parent_change_state(transition)
    }
}

impl BinImpl for KvsSink {}

impl ChildProxyImpl for KvsSink {
    fn child_by_index(&self, index: u32) -> Option<glib::Object> {
        self.obj()
            .children()
            .into_iter()
            .rev()
            .nth(index as usize)
            .map(|e| e.upcast())
    }

    fn children_count(&self) -> u32 {
        self.obj().children().len() as u32
    }

    fn child_by_name(&self, name: &str) -> Option<glib::Object> {
        self.obj().by_name(name).map(|e| e.upcast())
    }
}

impl KvsSink {
    /// Configures matroskamux and the feeder from the settings, before the feeder's `start()` runs.
    fn prepare_start(&self) -> Result<(), String> {
        if self.mux.factory().is_none_or(|f| f.name() != "matroskamux") {
            return Err("matroskamux is not available: install gst-plugins-good".into());
        }
        let settings = lock(&self.settings).clone();
        let has_video = lock(&self.pads).video.is_some();
        configure_mux(&self.mux, &settings, has_video);

        let stream = match &settings.stream_arn {
            Some(arn) => aws::StreamRef::Arn(arn.clone()),
            None => aws::StreamRef::Name(settings.stream_name.clone()),
        };
        let mut aws_settings = settings.aws.clone();
        if aws_settings.iot_thing_name_fallback.is_none() {
            aws_settings.iot_thing_name_fallback = Some(settings.stream_name.clone());
        }
        let mut tags = BTreeMap::new();
        if let Some(st) = &settings.stream_tags {
            for (field, value) in st.iter() {
                let value = value
                    .get::<String>()
                    .ok()
                    .or_else(|| value.serialize().ok().map(|s| s.to_string()))
                    .unwrap_or_default();
                tags.insert(field.to_string(), value);
            }
        }
        let transport = TransportConfig {
            aws: aws_settings,
            stream,
            allow_create: settings.allow_create_stream,
            retention_hours: settings.retention_hours,
            media_type: settings
                .content_type_set
                .then(|| settings.content_type.clone()),
            kms_key_id: settings.kms_key_id.clone(),
            tags,
            timecode_type: if settings.absolute_fragment_times {
                aws::TimecodeType::Absolute
            } else {
                aws::TimecodeType::Relative
            },
            ack_required: settings.fragment_acks,
        };
        let realtime = settings.streaming_type != StreamingType::Offline;
        let upload = UploadConfig {
            ack_required: settings.fragment_acks,
            wait_for_persisted: settings.retention_hours > 0,
            drop_when_full: realtime,
            max_bytes: (settings.storage_size_mb as usize).saturating_mul(1024 * 1024),
            max_duration: Duration::from_secs(u64::from(settings.buffer_duration_s)),
            replay_duration: secs_opt(settings.replay_duration_s),
            staleness: secs_opt(settings.connection_staleness_s),
            rotation_period: secs_opt(settings.rotation_period_s),
            restart_on_error: settings.restart_on_error,
            timecode_scale_ns: u64::from(settings.timecode_scale_ms) * 1_000_000,
            stats_period: Some(STATS_PERIOD),
            max_latency: secs_opt(settings.max_latency_s),
            ..UploadConfig::default()
        };
        let header = HeaderOptions {
            video_track_name: Some(settings.track_name.clone()),
            audio_track_name: Some(DEFAULT_AUDIO_TRACK_NAME.into()),
            video_codec_id: settings.codec_id_set.then(|| settings.codec_id.clone()),
        };
        let weak = self.obj().downgrade();
        let events: super::upload::EventSink = Arc::new(move |ev| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_upload_event(ev);
            }
        });
        let weak = self.obj().downgrade();
        let report: super::feeder::ErrorReporter = Arc::new(move |msg| {
            if let Some(obj) = weak.upgrade() {
                let _ = obj.post_message(msg);
            }
        });
        self.feeder.imp().configure(FeederConfig {
            transport,
            upload,
            time_base: if settings.absolute_fragment_times {
                TimeBase::Absolute
            } else {
                TimeBase::Relative
            },
            header,
            file_start_time_s: settings.file_start_time,
            use_original_pts: settings.use_original_pts,
            stop_stream_timeout: secs_opt(settings.stop_stream_timeout_s),
            long_fragment: Some(if settings.key_frame_fragmentation {
                LONG_FRAGMENT
            } else {
                Duration::from_millis(u64::from(settings.fragment_duration_ms))
            }),
            metadata: self.metadata.clone(),
            events,
            report,
        });
        *lock(&self.metadata) = Metadata::default();
        Ok(())
    }

    fn install_probe(&self, mux_pad: &gst::Pad, kind: TrackKind) {
        let frame_timecodes = self.frame_timecodes.clone();
        // The fixer and the pad's current segment (to turn arrival running times into buffer timestamps).
        let fixer = Mutex::new((
            TimestampFixer::new(kind),
            None::<gst::FormattedSegment<gst::ClockTime>>,
        ));
        let counters = self.counters.clone();
        let metadata = self.metadata.clone();
        let weak = self.obj().downgrade();
        mux_pad.add_probe(
            gst::PadProbeType::BUFFER
                | gst::PadProbeType::BUFFER_LIST
                | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_pad, info| {
                match info.data.as_mut() {
                    Some(gst::PadProbeData::Buffer(buffer)) => {
                        let mut fixer = lock(&fixer);
                        let arrival = arrival_time(&frame_timecodes, &weak, &fixer.1);
                        fix_buffer(buffer.make_mut(), &mut fixer.0, arrival, &counters);
                    }
                    Some(gst::PadProbeData::BufferList(list)) => {
                        let mut fixer = lock(&fixer);
                        let arrival = arrival_time(&frame_timecodes, &weak, &fixer.1);
                        let (fixer, _) = &mut *fixer;
                        list.make_mut().foreach_mut(|mut buffer, _| {
                            fix_buffer(buffer.make_mut(), fixer, arrival, &counters);
                            std::ops::ControlFlow::Continue(Some(buffer))
                        });
                    }
                    Some(gst::PadProbeData::Event(event)) => {
                        // A new stream (pipeline restarted) or a flush starts timestamps afresh: what came
                        // before must not hold the new ones back.
                        if matches!(
                            event.type_(),
                            gst::EventType::StreamStart | gst::EventType::FlushStop
                        ) {
                            lock(&fixer).0 = TimestampFixer::new(kind);
                        }
                        if let gst::EventView::Segment(seg) = event.view() {
                            lock(&fixer).1 =
                                seg.segment().downcast_ref::<gst::ClockTime>().cloned();
                        }
                        if event.type_() == gst::EventType::CustomDownstream
                            && let Some(s) = event.structure()
                            && s.name() == "kvs-add-metadata"
                        {
                            if let Some(obj) = weak.upgrade() {
                                obj.imp().add_metadata(s, &metadata);
                            }
                            // Consumed here: matroskamux has no use for it. Taking the event releases it, and
                            // HANDLED tells the pad it was delivered.
                            info.data = None;
                            return gst::PadProbeReturn::Handled;
                        }
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    fn add_metadata(&self, s: &gst::StructureRef, metadata: &Mutex<Metadata>) {
        let name = s.get::<String>("name").unwrap_or_default();
        let value = s.get::<String>("value").unwrap_or_default();
        let persist = s
            .get::<bool>("persist")
            .or_else(|_| s.get::<bool>("persistent"))
            .unwrap_or(false);
        if name.is_empty() || name.starts_with(kvs_mkv::tags::AWS_PREFIX) {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                [
                    "kvs-add-metadata ignored: the name {name:?} is empty or starts with AWS_ (reserved)"
                ]
            );
            return;
        }
        let mut m = lock(metadata);
        if persist {
            if value.is_empty() {
                m.persistent.remove(&name);
            } else {
                m.persistent.insert(name, value);
            }
        } else {
            m.once.push((name, value));
        }
        if m.persistent.len() + m.once.len() > MAX_FRAGMENT_METADATA {
            gst::warning!(
                CAT,
                imp = self,
                "more than {MAX_FRAGMENT_METADATA} metadata entries for one fragment; the extra ones are dropped"
            );
        }
    }

    fn on_upload_event(&self, ev: UploadEvent) {
        let obj = self.obj();
        match ev {
            UploadEvent::Ready => gst::info!(CAT, imp = self, "stream ready"),
            UploadEvent::Ack(ack) => {
                gst::debug!(CAT, imp = self, "ack {:?}", ack);
                let s = gst::Structure::builder("kvs-fragment-ack")
                    .field("event-type", ack.event_type.as_str())
                    .field(
                        "fragment-number",
                        ack.fragment_number.clone().unwrap_or_default(),
                    )
                    .field("timecode", ack.fragment_timecode.unwrap_or(0))
                    .field("error-id", ack.error_id.unwrap_or(0))
                    .field("error-code", ack.error_code.clone().unwrap_or_default())
                    .build();
                obj.emit_by_name::<()>("fragment-ack", &[&s]);
                let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
            }
            UploadEvent::Connected { attempt, replayed } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "PutMedia connected (attempt {attempt}, {replayed} fragments replayed)"
                );
            }
            UploadEvent::Reconnecting { cause, delay } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    [
                        "connection to the service failed, retrying in {} ms: {cause}",
                        delay.as_millis()
                    ]
                );
            }
            UploadEvent::Dropped {
                fragments,
                bytes,
                reason,
            } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    ["dropped {fragments} fragments ({bytes} bytes): {reason}"]
                );
            }
            UploadEvent::FragmentRejected { ack } => {
                obj.emit_by_name::<()>("stream-error", &[&u64::from(ack.error_id.unwrap_or(0))]);
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Encode,
                    [
                        "the service rejected fragment {} with error {} {}; it was dropped",
                        ack.fragment_timecode.unwrap_or(0),
                        ack.error_id.unwrap_or(0),
                        ack.error_code.as_deref().unwrap_or("")
                    ]
                );
            }
            UploadEvent::DiscardedUntilKeyframe { bytes } => {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Failed,
                    [
                        "input resumed after an idle close without a key frame: {bytes} bytes discarded until the next key frame"
                    ]
                );
            }
            UploadEvent::KeyframeNeeded => self.request_keyframe(),
            UploadEvent::VerificationFailed { cause } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Read,
                    [
                        "cannot check which fragments the service stored before the connection broke; \
                         unacknowledged fragments are sent again and may be stored twice: {cause}"
                    ]
                );
            }
            UploadEvent::LatencyPressure { buffered } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    [
                        "latency pressure: {} ms of media wait for acknowledgement (max-latency)",
                        buffered.as_millis()
                    ]
                );
            }
            UploadEvent::Stats(stats) => {
                let s = self.stats_from(&stats);
                let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
            }
            UploadEvent::Fatal(err) => {
                let id = match &err {
                    FatalError::Ack { ack } => u64::from(ack.error_id.unwrap_or(0)),
                    FatalError::Aws { .. } => 0,
                };
                obj.emit_by_name::<()>("stream-error", &[&id]);
                match err {
                    FatalError::Aws { context, error } => {
                        let (kind, msg) = error.to_gst_error(context);
                        let _ = obj.post_message(
                            gst::message::Error::builder(kind, &msg)
                                .src(&*obj)
                                .debug(&format!("{error:?}"))
                                .build(),
                        );
                    }
                    FatalError::Ack { .. } => {
                        gst::element_imp_error!(self, gst::ResourceError::Write, ["{err}"]);
                    }
                }
            }
        }
    }

    /// Asks the video source for a key frame (after an idle close the next fragment must start with one).
    fn request_keyframe(&self) {
        let pad = lock(&self.pads).video.as_ref().map(|(g, _)| g.clone());
        if let Some(pad) = pad {
            gst::debug!(CAT, imp = self, "requesting a key frame upstream");
            let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            pad.push_event(event);
        }
    }

    fn stats_structure(&self) -> gst::Structure {
        let stats = self.feeder.imp().stats().unwrap_or_default();
        self.stats_from(&stats)
    }

    fn stats_from(&self, stats: &Stats) -> gst::Structure {
        let repairs = lock(&self.counters).timestamp_repairs;
        let avg = if stats.ack_latency_count > 0 {
            stats.ack_latency_sum_ms / stats.ack_latency_count as f64
        } else {
            0.0
        };
        gst::Structure::builder("kvs-stats")
            .field("bytes-sent", stats.bytes_sent)
            .field("fragments-started", stats.fragments_started)
            .field("fragments-buffering", stats.fragments_buffering)
            .field("fragments-received", stats.fragments_received)
            .field("fragments-persisted", stats.fragments_persisted)
            .field("fragments-dropped", stats.fragments_dropped)
            .field("fragments-rejected", stats.fragments_rejected)
            .field("error-acks", stats.error_acks)
            .field("buffered-fragments", stats.buffered_fragments)
            .field("buffered-bytes", stats.buffered_bytes)
            .field("buffered-duration-ms", stats.buffered_duration_ms)
            .field("connections", stats.connections)
            .field("reconnects", stats.reconnects)
            .field("replayed-fragments", stats.replayed_fragments)
            .field("fragments-recovered", stats.fragments_recovered)
            .field(
                "ack-latency-last-ms",
                stats.last_ack_latency_ms.unwrap_or(0.0),
            )
            .field(
                "ack-latency-max-ms",
                stats.max_ack_latency_ms.unwrap_or(0.0),
            )
            .field("ack-latency-avg-ms", avg)
            .field("timestamp-repairs", repairs)
            .field(
                "fragment-start-shifts",
                self.feeder.imp().shifted_fragments(),
            )
            .build()
    }
}

/// Sets matroskamux's cluster rules so that a cluster starts exactly where a fragment must.
///
/// matroskamux (1.22, `gst_matroska_mux_write_data`) starts a new cluster when
/// * the buffer is a video key frame and `min-cluster-duration` is 0 or has elapsed since the cluster began;
/// * the stream is audio only (one pad) and `min-cluster-duration` has elapsed (0: every buffer);
/// * `max-cluster-duration` (capped at 32767 timecode units, the range of a block's relative timecode) is
///   exceeded, or a force-key-unit event arrives.
///
/// So with video, `min-cluster-duration` 0 cuts at every key frame (`key-frame-fragmentation=true`), or
/// `fragment-duration` cuts at the first key frame after that duration; audio-only streams use
/// `fragment-duration`. `max-cluster-duration` keeps its default: a cut there only happens for a group of
/// pictures longer than 32.7 s, which the service would reject as too long a fragment anyway.
fn configure_mux(mux: &gst::Element, settings: &Settings, has_video: bool) {
    let fragment_ns = i64::from(settings.fragment_duration_ms) * 1_000_000;
    let min = if has_video && settings.key_frame_fragmentation {
        0
    } else {
        fragment_ns
    };
    mux.set_property("streamable", true);
    mux.set_property("min-cluster-duration", min);
    mux.set_property(
        "timecodescale",
        i64::from(settings.timecode_scale_ms) * 1_000_000,
    );
}

/// With `frame-timecodes=false`, the arrival time of a buffer as a timestamp in its segment (buffer timestamps
/// are segment positions, not running times: x264enc, for one, starts its segment at 1000 hours).
fn arrival_time(
    frame_timecodes: &std::sync::atomic::AtomicBool,
    element: &glib::WeakRef<super::KvsSink>,
    segment: &Option<gst::FormattedSegment<gst::ClockTime>>,
) -> Option<gst::ClockTime> {
    if frame_timecodes.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let running_time = element.upgrade()?.current_running_time()?;
    match segment {
        Some(segment) => segment.position_from_running_time(running_time),
        None => Some(running_time),
    }
}

/// Applies the fixer to one buffer; `arrival` replaces the timestamps when `frame-timecodes` is false.
fn fix_buffer(
    buffer: &mut gst::BufferRef,
    fixer: &mut TimestampFixer,
    arrival: Option<gst::ClockTime>,
    counters: &Mutex<ElementCounters>,
) {
    let (pts, dts) = match arrival {
        Some(t) => (Some(t), Some(t)),
        None => (buffer.pts(), buffer.dts()),
    };
    let fixed = fixer.fix(Stamps {
        pts,
        dts,
        duration: buffer.duration(),
        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
    });
    if fixed.repaired {
        lock(counters).timestamp_repairs += 1;
        gst::log!(
            CAT,
            "repaired timestamps pts {:?} -> {} dts {:?} -> {}",
            pts,
            fixed.pts,
            dts,
            fixed.dts
        );
    }
    buffer.set_pts(fixed.pts);
    buffer.set_dts(fixed.dts);
}
