// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

//! # gst-plugin-kvs
//!
//! GStreamer elements for Amazon Kinesis Video Streams:
//!
//! * `kvssink` pushes H.264/H.265 video and AAC/G.711 audio into a stream through one long-lived PutMedia session,
//!   keeping every fragment until the service acknowledges it.
//! * `kvssrc` reads a stream live (GetMedia) or by time range (ListFragments + GetMediaForFragmentList) and
//!   outputs one continuous Matroska stream.
//!
//! Both elements share the AWS layer in [`aws`]: credentials, SigV4 signing, endpoint resolution and the
//! data-endpoint cache.

use gst::glib;

pub mod aws;
pub mod kvssink;
pub mod kvssrc;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    kvssink::register(plugin)?;
    kvssrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    kvs,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
