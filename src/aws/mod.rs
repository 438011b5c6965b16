//! The AWS layer shared by kvssink and kvssrc: credentials, signing, endpoints, the data-endpoint cache, the typed
//! Kinesis Video Streams client, the process-wide runtime and the cancellable `wait` bridge.
//!
//! The elements reach AWS only through this module:
//! - [`settings::AwsSettings`] holds the shared properties; [`settings::properties`] gives their ParamSpecs.
//! - [`client::KvsClient`] makes the typed calls (DescribeStream, CreateStream, TagStream, GetDataEndpoint,
//!   GetMedia, ListFragments, GetMediaForFragmentList, PutMedia).
//! - [`wait::wait`] blocks a streaming thread on a future, cancellable from `unlock()`.
//! - [`error::AwsError`] is the one error type.

use std::sync::{LazyLock, Mutex, OnceLock};

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod retry;
pub mod settings;
pub mod signing;
pub mod wait;

pub use client::{
    ApiName, CreateStreamInput, Fragment, FragmentSelector, FragmentSelectorKind, KvsClient,
    ListFragmentsInput, ListFragmentsOutput, MediaResponse, PutMediaParams, PutMediaResponse,
    StartSelector, StreamDescription, StreamRef, TimecodeType,
};
pub use error::AwsError;
pub use settings::AwsSettings;
pub use wait::{Canceller, WaitError, wait};

/// Debug category of the AWS layer: endpoint, region and credential source choices at info level, each request
/// at debug level. Secrets are never logged.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "kvs-aws",
        gst::DebugColorFlags::empty(),
        Some("Kinesis Video Streams AWS layer (credentials, signing, endpoints)"),
    )
});

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// Number of worker threads of the plugin's runtime: the work is I/O bound and the machines small.
const RUNTIME_WORKER_THREADS: usize = 2;

/// The one process-wide tokio runtime of the plugin, built on first use with two worker threads named
/// "kvs-runtime". Building it can fail (thread creation); the error is returned, never a panic.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, AwsError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // Serialise construction so that two elements starting at once do not build two runtimes.
    let _guard = RUNTIME_INIT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .thread_name("kvs-runtime")
        .enable_all()
        .build()
        .map_err(|e| AwsError::Runtime(format!("cannot build the tokio runtime: {e}")))?;
    let _ = RUNTIME.set(rt);
    RUNTIME
        .get()
        .ok_or_else(|| AwsError::Runtime("the tokio runtime vanished after construction".into()))
}
