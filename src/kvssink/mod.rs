// SPDX-License-Identifier: MPL-2.0
//! `kvssink`: uploads H.264/H.265 video and AAC/G.711 audio to a Kinesis Video stream through PutMedia.
//!
//! Layout of the module:
//! * `imp.rs`: the element, a `GstBin` holding `matroskamux` and the private `feeder` sink; properties, request
//!   pads, timestamp repair probes, state changes, signals and bus messages;
//! * `feeder.rs`: the private `BaseSink` that parses matroskamux's output and hands it to the upload task;
//! * `fragmenter.rs`: matroskamux output -> header, fragment starts with producer timecodes, blocks;
//! * `timestamps.rs`: per-track PTS/DTS repair;
//! * `upload.rs`: the PutMedia session (fragment buffer, acknowledgements, reconnection), free of GObject;
//! * `transport.rs`: the upload task's access to AWS through [`crate::aws`].

use gst::glib;
use gst::prelude::*;

mod feeder;
mod fragmenter;
mod imp;
mod timestamps;
mod transport;
pub mod upload;

/**
 * SECTION:element-kvssink
 *
 * `kvssink` streams video and audio to Amazon Kinesis Video Streams with one long-lived PutMedia session. Each
 * fragment (a Matroska cluster, starting at a video key frame) stays in memory until the service acknowledges it
 * as persisted; a dropped connection is reopened and every unacknowledged fragment sent again. The property
 * names are those of the official C++ `kvssink`, so existing pipelines work unchanged.
 *
 * ## Example pipelines
 * |[
 * gst-launch-1.0 -e videotestsrc is-live=true ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! \
 *     video/x-h264,stream-format=avc,alignment=au ! kvssink stream-name=my-stream aws-region=us-east-1
 * ]| Live test video, credentials from the environment or ~/.aws.
 * |[
 * gst-launch-1.0 -e -m filesrc location=in.mkv ! matroskademux name=d d.video_0 ! h264parse ! queue ! k.video_0 \
 *     d.audio_0 ! aacparse ! queue ! k.audio_0 \
 *     kvssink name=k stream-name=my-stream streaming-type=offline file-start-time=1700000000 \
 *     endpoint=http://127.0.0.1:4566 access-key=AK secret-key=SK aws-region=us-east-1
 * ]| Uploads a file as fast as the service acknowledges it; `-m` shows the `kvs-fragment-ack` messages.
 *
 * ## What the application sees
 * * Element message `kvs-fragment-ack` and signal `fragment-ack` (a structure) for every acknowledgement:
 *   `event-type` (BUFFERING, RECEIVED, PERSISTED, ERROR, IDLE), `fragment-number`, `timecode`, `error-id`,
 *   `error-code`.
 * * Element message `kvs-stats` every 5 s, and the read-only `stats` property with the same fields: bytes and
 *   fragments sent, acknowledged, persisted, dropped, rejected and recovered, buffered bytes and duration,
 *   connections and reconnections, acknowledgement latency (last, max, average, in ms), timestamp repairs.
 * * Warnings for recoverable trouble (a lost connection being replaced, dropped or rejected fragments, latency
 *   pressure); errors for what stops the stream (credentials refused, stream missing, fatal ERROR
 *   acknowledgements), with the service's own message. Signal `stream-error` carries the error id.
 * * EOS is posted only once the last fragment is PERSISTED (RECEIVED for streams without retention), or after
 *   `stop-stream-timeout` with an error saying how many fragments were not acknowledged.
 *
 * ## Timestamps
 * Buffers are repaired on the way in: DTS filled where missing (`matroskademux ! h264parse` gives none on key
 * frames), DTS and fragment starts kept monotonic per track, so matroskamux never fails and no fragment
 * overlaps the previous one. Fragment timecodes are epoch milliseconds (`absolute-fragment-times`), from the
 * pipeline clock and wall time, or from `file-start-time` for recordings.
 *
 * ## Fragment metadata
 * A custom downstream event `kvs-add-metadata` with string fields `name`, `value` and boolean `persist` adds
 * a tag to the next fragment (to every following fragment when `persist` is true; an empty value then removes
 * it), like the C++ element.
 */
glib::wrapper! {
    pub struct KvsSink(ObjectSubclass<imp::KvsSink>) @extends gst::Bin, gst::Element, gst::Object,
        @implements gst::ChildProxy;
}

/// How the element trades latency against completeness (`streaming-type`).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstKvsSinkStreamingType")]
pub enum StreamingType {
    /// Live source: when the buffer is full the oldest fragments are dropped.
    #[enum_value(
        name = "Realtime: drop the oldest fragments when the buffer is full",
        nick = "realtime"
    )]
    Realtime = 0,
    /// Like realtime (kept for compatibility with the C++ element).
    #[enum_value(name = "Near-realtime: like realtime", nick = "near-realtime")]
    NearRealtime = 1,
    /// Files: never drop; block upstream while the buffer is full.
    #[enum_value(
        name = "Offline: never drop, block upstream while the buffer is full",
        nick = "offline"
    )]
    Offline = 2,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    feeder::KvsFeeder::static_type();
    gst::Element::register(
        Some(plugin),
        "kvssink",
        gst::Rank::NONE,
        KvsSink::static_type(),
    )
}
