// SPDX-License-Identifier: MPL-2.0
//! `kvssrc`: reads a Kinesis Video stream live (GetMedia) or by time range (ListFragments +
//! GetMediaForFragmentList) and outputs one continuous Matroska stream.
//!
//! Layout of the module:
//! * `imp.rs`: the element, a `GstPushSrc`: properties, start/stop, `create()`, bus messages;
//! * `reader.rs`: the requests, the resume after every end of a response and the range listing, free of GObject;
//! * `remux.rs`: the rewriter from the service's chain of Matroska documents to one continuous stream.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod reader;
pub mod remux;

/// Debug category of the element and its reader.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvssrc",
        gst::DebugColorFlags::empty(),
        Some("Kinesis Video Streams source (GetMedia, GetMediaForFragmentList)"),
    )
});

/**
 * SECTION:element-kvssrc
 *
 * `kvssrc` reads an Amazon Kinesis Video stream and outputs ONE continuous Matroska stream
 * (`video/x-matroska`): one EBML header and Segment, the Tracks once (again, as a new Segment, only when the
 * tracks change), then the clusters. The service's per-fragment Matroska documents and its
 * `AWS_KINESISVIDEO_*` tags are taken out of the byte stream; for every fragment the element posts an element
 * message `kvs-fragment` instead, with the fields `fragment-number` (string), `producer-timestamp` and
 * `server-timestamp` (double, seconds since the Unix epoch), `millis-behind-now` (guint64, live reads only),
 * `continuation-token` (string, live reads only), `frames` (guint64), `bytes` (guint64), `timestamp`
 * (GstClockTime: where the fragment's first frame sits in the output), `timeline-shift` (gint64 nanoseconds the
 * output timeline is ahead of the producer's, see below) and `tags` (array of "name=value" strings: the
 * producer's own fragment tags).
 *
 * Live reads (the default, `end-timestamp=0`) call GetMedia from `start-selector` and never end: when a response
 * ends (the service ends it after 3 s without new data and after about 45 minutes; connections break; servers
 * restart) the element asks again from the continuation token of the last complete fragment, with backoff and
 * within the service's 5 calls per second. A fragment cut in the middle is dropped and read again whole; no
 * fragment is output twice and none is skipped.
 *
 * Range reads (`end-timestamp` set) list the fragments that start between `start-timestamp` and `end-timestamp`
 * (producer or server time, `fragment-selector-type`), sort them by fragment number, read them with
 * GetMediaForFragmentList in batches of up to 1000, and send EOS after the last one.
 *
 * Timestamps: the output keeps the producer's cluster timecodes while they increase. When a fragment's timecodes
 * go back (a producer that restarted its clock), it and all later fragments are moved forward to follow the last
 * output frame, and the shift is reported in `timeline-shift`. A fragment with another TimecodeScale is converted
 * to the output's. When the tracks change (new codec data, picture size or track UID, e.g. after the producer
 * restarted), a new EBML header and Segment carry the new Tracks and the timeline goes on; matroskademux follows
 * such changes, but not a change of codec under the same track number (it then fails, as it does on the service's
 * raw output).
 *
 * Errors: a stream that does not exist, missing permissions and the error tags the service puts in the media
 * (`AWS_KINESISVIDEO_ERROR_ID`/`_CODE`) end the stream with a resource error naming the cause; network trouble,
 * throttling and 5xx answers are retried and reported as warnings; after 20 failed attempts in a row (about two
 * minutes of backoff) the element gives up with an error. A fragment of a range that the service cannot return
 * is skipped with a warning.
 *
 * ## Example pipelines
 * |[
 * gst-launch-1.0 kvssrc stream-name=my-stream aws-region=us-east-1 ! matroskademux ! h264parse ! avdec_h264 ! \
 *     videoconvert ! autovideosink
 * ]| Plays a stream live, from now on; credentials from the environment or ~/.aws.
 * |[
 * gst-launch-1.0 -m kvssrc stream-name=my-stream fragment-selector-type=producer start-timestamp=1700000000 \
 *     end-timestamp=1700000600 ! filesink location=ten-minutes.mkv
 * ]| Saves ten minutes of a stream as one Matroska file; `-m` shows a `kvs-fragment` message per fragment.
 * |[
 * gst-launch-1.0 kvssrc stream-name=my-stream start-selector=earliest endpoint=http://127.0.0.1:4566 \
 *     access-key=AK secret-key=SK aws-region=us-east-1 ! decodebin ! videoconvert ! autovideosink
 * ]| Reads a stream of a local server from its oldest fragment, then live.
 */
glib::wrapper! {
    pub struct KvsSrc(ObjectSubclass<imp::KvsSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element,
        gst::Object;
}

/// Where a live read starts (`start-selector`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstKvsSrcStartSelector")]
pub enum StartSelectorType {
    /// The newest fragment on.
    #[default]
    #[enum_value(name = "Now: from the newest fragment on", nick = "now")]
    Now = 0,
    /// The oldest fragment still stored.
    #[enum_value(name = "Earliest: from the oldest stored fragment", nick = "earliest")]
    Earliest = 1,
    /// The fragment after `start-fragment-number`.
    #[enum_value(
        name = "Fragment number: after start-fragment-number",
        nick = "fragment-number"
    )]
    FragmentNumber = 2,
    /// The first fragment whose producer timestamp is at or after `start-timestamp`.
    #[enum_value(
        name = "Producer timestamp: from start-timestamp (producer time)",
        nick = "producer-timestamp"
    )]
    ProducerTimestamp = 3,
    /// The first fragment whose server timestamp is at or after `start-timestamp`.
    #[enum_value(
        name = "Server timestamp: from start-timestamp (server time)",
        nick = "server-timestamp"
    )]
    ServerTimestamp = 4,
    /// After the fragment that `continuation-token` names (from a `kvs-fragment` message).
    #[enum_value(
        name = "Continuation token: after continuation-token",
        nick = "continuation-token"
    )]
    ContinuationToken = 5,
}

/// Which timestamp a range read selects fragments by (`fragment-selector-type`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstKvsSrcFragmentSelectorType")]
pub enum FragmentSelectorType {
    #[default]
    #[enum_value(name = "Producer: the producer's timestamps", nick = "producer")]
    Producer = 0,
    #[enum_value(
        name = "Server: the time the service received the fragment",
        nick = "server"
    )]
    Server = 1,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    StartSelectorType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    FragmentSelectorType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "kvssrc",
        gst::Rank::NONE,
        KvsSrc::static_type(),
    )
}
