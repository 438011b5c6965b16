// SPDX-License-Identifier: MPL-2.0
//! GStreamer glue of `kvssrc`: a `GstPushSrc` whose `create()` takes the next item of the [`Reader`] and makes
//! it a buffer, a `kvs-fragment` message, a warning or EOS. All protocol work lives in [`super::reader`] and
//! [`super::remux`].
//!
//! Locks: `settings`, then `state`, then `stats`; none is held across a blocking call. The reader is taken out
//! of `state` while `create()` waits on it, so that `unlock()` (which only touches the canceller) and property
//! reads never wait for the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use super::reader::{ReadError, ReadItem, ReadMode, Reader};
use super::remux::FragmentInfo;
use super::{CAT, FragmentSelectorType, StartSelectorType};
use crate::aws::{
    self, AwsSettings, Canceller, FragmentSelectorKind, KvsClient, StartSelector, StreamRef,
};

const DEFAULT_START_SELECTOR: StartSelectorType = StartSelectorType::Now;
const DEFAULT_START_TIMESTAMP: f64 = 0.0;
const DEFAULT_END_TIMESTAMP: f64 = 0.0;
const DEFAULT_FRAGMENT_SELECTOR_TYPE: FragmentSelectorType = FragmentSelectorType::Producer;

#[derive(Debug, Clone, Default)]
struct Settings {
    stream_name: Option<String>,
    stream_arn: Option<String>,
    aws: AwsSettings,
    start_selector: StartSelectorType,
    start_fragment_number: Option<String>,
    /// Epoch seconds; 0 = not set.
    start_timestamp: f64,
    continuation_token: Option<String>,
    /// Epoch seconds; 0 = live read.
    end_timestamp: f64,
    fragment_selector_type: FragmentSelectorType,
    /// `None`: follows the mode (live for GetMedia, not live for a range).
    is_live: Option<bool>,
}

impl Settings {
    fn is_range(&self) -> bool {
        self.end_timestamp > 0.0
    }

    fn effective_is_live(&self) -> bool {
        self.is_live.unwrap_or(!self.is_range())
    }

    /// The stream and what to read, or what is wrong with the properties.
    fn read_plan(&self) -> Result<(StreamRef, ReadMode), String> {
        let stream = match (&self.stream_arn, &self.stream_name) {
            (Some(arn), _) => StreamRef::Arn(arn.clone()),
            (None, Some(name)) => StreamRef::Name(name.clone()),
            (None, None) => return Err("set stream-name or stream-arn".into()),
        };
        if self.is_range() {
            if self.end_timestamp < self.start_timestamp {
                return Err(format!(
                    "end-timestamp {} is before start-timestamp {}",
                    self.end_timestamp, self.start_timestamp
                ));
            }
            let kind = match self.fragment_selector_type {
                FragmentSelectorType::Producer => FragmentSelectorKind::ProducerTimestamp,
                FragmentSelectorType::Server => FragmentSelectorKind::ServerTimestamp,
            };
            return Ok((
                stream,
                ReadMode::Range {
                    kind,
                    start: self.start_timestamp,
                    end: self.end_timestamp,
                },
            ));
        }
        let need_timestamp = || {
            if self.start_timestamp > 0.0 {
                Ok(self.start_timestamp)
            } else {
                Err(
                    "this start-selector needs start-timestamp (seconds since the Unix epoch)"
                        .to_string(),
                )
            }
        };
        let start = match self.start_selector {
            StartSelectorType::Now => StartSelector::Now,
            StartSelectorType::Earliest => StartSelector::Earliest,
            StartSelectorType::FragmentNumber => StartSelector::FragmentNumber(
                self.start_fragment_number
                    .clone()
                    .ok_or("start-selector=fragment-number needs start-fragment-number")?,
            ),
            StartSelectorType::ProducerTimestamp => {
                StartSelector::ProducerTimestamp(need_timestamp()?)
            }
            StartSelectorType::ServerTimestamp => StartSelector::ServerTimestamp(need_timestamp()?),
            StartSelectorType::ContinuationToken => StartSelector::ContinuationToken(
                self.continuation_token
                    .clone()
                    .ok_or("start-selector=continuation-token needs continuation-token")?,
            ),
        };
        Ok((stream, ReadMode::Live { start }))
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        /// `None` while `create()` is waiting on it.
        reader: Option<Box<Reader>>,
        discont: bool,
    },
}

#[derive(Debug, Default, Clone)]
struct Stats {
    fragments: u64,
    frames: u64,
    bytes: u64,
    retries: u64,
    /// Shared with the reader.
    requests: Option<Arc<AtomicU64>>,
    last_fragment_number: Option<String>,
    continuation_token: Option<String>,
    millis_behind_now: Option<u64>,
}

#[derive(Default)]
pub struct KvsSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    canceller: Canceller,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[glib::object_subclass]
impl ObjectSubclass for KvsSrc {
    const NAME: &'static str = "GstKvsSrc";
    type Type = super::KvsSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for KvsSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut props = vec![
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream Name")
                    .blurb("Name of the stream to read (stream-arn, when set, takes precedence)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-arn")
                    .nick("Stream ARN")
                    .blurb("ARN of the stream to read, instead of stream-name")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("start-selector", DEFAULT_START_SELECTOR)
                    .nick("Start Selector")
                    .blurb(
                        "Where a live read starts: now, earliest, fragment-number (after start-fragment-number), \
                         producer-timestamp or server-timestamp (from start-timestamp), continuation-token \
                         (after continuation-token)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("start-fragment-number")
                    .nick("Start Fragment Number")
                    .blurb("With start-selector=fragment-number: the read starts after this fragment")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("start-timestamp")
                    .nick("Start Timestamp")
                    .blurb(
                        "Seconds since the Unix epoch (fractions allowed) where the read starts, for \
                         start-selector=producer-timestamp/server-timestamp and for range reads; 0 = not set \
                         (a range then starts at the oldest fragment)",
                    )
                    .minimum(0.0)
                    .default_value(DEFAULT_START_TIMESTAMP)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("continuation-token")
                    .nick("Continuation Token")
                    .blurb(
                        "With start-selector=continuation-token: the read starts after the fragment this token \
                         names (the continuation-token field of a kvs-fragment message)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("end-timestamp")
                    .nick("End Timestamp")
                    .blurb(
                        "Seconds since the Unix epoch: when set, read the fragments that start between \
                         start-timestamp and this time (ListFragments + GetMediaForFragmentList), then EOS; \
                         0 = live read with GetMedia, never ending",
                    )
                    .minimum(0.0)
                    .default_value(DEFAULT_END_TIMESTAMP)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("fragment-selector-type", DEFAULT_FRAGMENT_SELECTOR_TYPE)
                    .nick("Fragment Selector Type")
                    .blurb("Which fragment timestamps a range read compares with start- and end-timestamp")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("is-live")
                    .nick("Is Live")
                    .blurb(
                        "Whether the element is a live source; default: true for live reads, false for range \
                         reads (end-timestamp set)",
                    )
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Read-only: fragments, frames and bytes output, requests made, retries, \
                         last-fragment-number, continuation-token, millis-behind-now",
                    )
                    .read_only()
                    .build(),
            ];
            props.extend(aws::settings::properties());
            props
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        if settings.aws.set_property(value, pspec) {
            return;
        }
        let string = || {
            value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        match pspec.name() {
            "stream-name" => settings.stream_name = string(),
            "stream-arn" => settings.stream_arn = string(),
            "start-selector" => {
                settings.start_selector = value.get().unwrap_or(DEFAULT_START_SELECTOR);
            }
            "start-fragment-number" => settings.start_fragment_number = string(),
            "start-timestamp" => {
                settings.start_timestamp = value.get().unwrap_or(DEFAULT_START_TIMESTAMP)
            }
            "continuation-token" => settings.continuation_token = string(),
            "end-timestamp" => {
                settings.end_timestamp = value.get().unwrap_or(DEFAULT_END_TIMESTAMP)
            }
            "fragment-selector-type" => {
                settings.fragment_selector_type =
                    value.get().unwrap_or(DEFAULT_FRAGMENT_SELECTOR_TYPE);
            }
            "is-live" => settings.is_live = value.get().ok(),
            other => gst::warning!(CAT, imp = self, "unknown property {other}"),
        }
        // BaseSrc decides whether to preroll before start(): the flag must be right as soon as it can change.
        let live = settings.effective_is_live();
        drop(settings);
        self.obj().set_live(live);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        let settings = lock(&self.settings);
        if let Some(value) = settings.aws.property(pspec) {
            return value;
        }
        match pspec.name() {
            "stream-name" => settings.stream_name.to_value(),
            "stream-arn" => settings.stream_arn.to_value(),
            "start-selector" => settings.start_selector.to_value(),
            "start-fragment-number" => settings.start_fragment_number.to_value(),
            "start-timestamp" => settings.start_timestamp.to_value(),
            "continuation-token" => settings.continuation_token.to_value(),
            "end-timestamp" => settings.end_timestamp.to_value(),
            "fragment-selector-type" => settings.fragment_selector_type.to_value(),
            "is-live" => settings.effective_is_live().to_value(),
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_format(gst::Format::Bytes);
        obj.set_live(true);
    }
}

impl GstObjectImpl for KvsSrc {}

impl ElementImpl for KvsSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Kinesis Video Streams Source",
                "Source/Network",
                "Reads a Kinesis Video stream live (GetMedia) or by time range (GetMediaForFragmentList) as one \
                 continuous Matroska stream",
                "gst-plugin-kvs contributors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::builder("video/x-matroska").build();
            match gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &caps,
            ) {
                Ok(template) => vec![template],
                Err(err) => {
                    gst::error!(CAT, "cannot create the src pad template: {err}");
                    Vec::new()
                }
            }
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for KvsSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let (stream, mode) = settings
            .read_plan()
            .map_err(|msg| gst::error_msg!(gst::ResourceError::Settings, ("{msg}")))?;
        let mut aws_settings = settings.aws.clone();
        if let StreamRef::Name(name) = &stream {
            aws_settings
                .iot_thing_name_fallback
                .get_or_insert_with(|| name.clone());
        }
        let client = KvsClient::new(&aws_settings).map_err(|e| {
            let (kind, msg) = e.to_gst_error("cannot set up the AWS client");
            gst::error_msg!(kind, ("{msg}"))
        })?;
        gst::info!(CAT, imp = self, "reading {stream}: {mode:?}");
        let reader = Reader::new(client, stream, mode);
        *lock(&self.stats) = Stats {
            requests: Some(reader.request_counter()),
            ..Stats::default()
        };
        self.canceller.reset();
        *lock(&self.state) = State::Started {
            reader: Some(Box::new(reader)),
            discont: true,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        *lock(&self.state) = State::Stopped;
        gst::debug!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.cancel();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.canceller.reset();
        Ok(())
    }
}

impl PushSrcImpl for KvsSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let mut reader = {
            let mut state = lock(&self.state);
            match &mut *state {
                State::Started { reader, .. } => reader.take().ok_or_else(|| {
                    gst::error!(CAT, imp = self, "create() called while another one runs");
                    gst::FlowError::Error
                })?,
                State::Stopped => return Err(gst::FlowError::Flushing),
            }
        };
        let result = self.next_buffer(&mut reader);
        let mut state = lock(&self.state);
        let discont = match &mut *state {
            State::Started {
                reader: slot,
                discont,
            } => {
                *slot = Some(reader);
                std::mem::replace(discont, false)
            }
            State::Stopped => false,
        };
        drop(state);
        let mut buffer = result?;
        if discont {
            buffer.make_mut().set_flags(gst::BufferFlags::DISCONT);
        }
        Ok(CreateSuccess::NewBuffer(buffer))
    }
}

impl KvsSrc {
    /// Waits for the next item of the reader and turns it into a buffer (posting messages on the way).
    fn next_buffer(&self, reader: &mut Reader) -> Result<gst::Buffer, gst::FlowError> {
        loop {
            let item = reader.next(&self.canceller);
            match item {
                Ok(ReadItem::Header(data)) => {
                    gst::debug!(CAT, imp = self, "stream header of {} bytes", data.len());
                    let mut buffer = gst::Buffer::from_slice(data);
                    buffer.make_mut().set_flags(gst::BufferFlags::HEADER);
                    return Ok(buffer);
                }
                Ok(ReadItem::Fragment { data, info }) => {
                    self.record_fragment(&info);
                    self.post_fragment_message(&info);
                    if data.is_empty() {
                        continue;
                    }
                    return Ok(gst::Buffer::from_slice(data));
                }
                Ok(ReadItem::Retrying(cause)) => {
                    lock(&self.stats).retries += 1;
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("Reading the stream failed, retrying: {cause}")
                    );
                }
                Ok(ReadItem::Skipped(cause)) => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("Fragment skipped: {cause}")
                    );
                }
                Ok(ReadItem::Eos) => {
                    gst::info!(CAT, imp = self, "end of the range");
                    if lock(&self.stats).fragments == 0 {
                        gst::element_imp_warning!(
                            self,
                            gst::ResourceError::NotFound,
                            ("The stream has no fragment in the requested time range")
                        );
                    }
                    return Err(gst::FlowError::Eos);
                }
                Err(ReadError::Flushing) => {
                    gst::debug!(CAT, imp = self, "flushing");
                    return Err(gst::FlowError::Flushing);
                }
                Err(e) => {
                    let kind = e.resource_error();
                    gst::element_imp_error!(self, kind, ("{e}"));
                    return Err(gst::FlowError::Error);
                }
            }
        }
    }

    fn record_fragment(&self, info: &FragmentInfo) {
        let mut stats = lock(&self.stats);
        stats.fragments += 1;
        stats.frames += info.frames;
        stats.bytes += info.bytes;
        if info.fragment_number.is_some() {
            stats.last_fragment_number = info.fragment_number.clone();
        }
        if info.continuation_token.is_some() {
            stats.continuation_token = info.continuation_token.clone();
        }
        if info.millis_behind_now.is_some() {
            stats.millis_behind_now = info.millis_behind_now;
        }
    }

    fn post_fragment_message(&self, info: &FragmentInfo) {
        let seconds = |ms: u64| ms as f64 / 1000.0;
        let mut s = gst::Structure::builder("kvs-fragment")
            .field(
                "fragment-number",
                info.fragment_number.clone().unwrap_or_default(),
            )
            .field("frames", info.frames)
            .field("bytes", info.bytes)
            .field("timeline-shift", info.timeline_shift_ns)
            .field("complete", info.complete)
            .build();
        if let Some(ms) = info.producer_timestamp_ms {
            s.set("producer-timestamp", seconds(ms));
        }
        if let Some(ms) = info.server_timestamp_ms {
            s.set("server-timestamp", seconds(ms));
        }
        if let Some(ms) = info.millis_behind_now {
            s.set("millis-behind-now", ms);
        }
        if let Some(token) = &info.continuation_token {
            s.set("continuation-token", token);
        }
        if let Some(ns) = info.first_timestamp_ns {
            s.set("timestamp", gst::ClockTime::from_nseconds(ns));
        }
        let tags = gst::Array::new(
            info.producer_tags
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        s.set("tags", tags);
        gst::debug!(CAT, imp = self, "{s}");
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    fn stats_structure(&self) -> gst::Structure {
        let stats = lock(&self.stats).clone();
        let mut s = gst::Structure::builder("kvssrc-stats")
            .field("fragments", stats.fragments)
            .field("frames", stats.frames)
            .field("bytes", stats.bytes)
            .field(
                "requests",
                stats.requests.map_or(0, |r| r.load(Ordering::Relaxed)),
            )
            .field("retries", stats.retries)
            .build();
        if let Some(n) = stats.last_fragment_number {
            s.set("last-fragment-number", n);
        }
        if let Some(t) = stats.continuation_token {
            s.set("continuation-token", t);
        }
        if let Some(ms) = stats.millis_behind_now {
            s.set("millis-behind-now", ms);
        }
        s
    }
}
