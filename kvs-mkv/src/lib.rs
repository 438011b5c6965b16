//! Matroska/EBML reading and writing and the Kinesis Video Streams wire types, shared by the gst-plugin-kvs
//! elements and the kvs-local server.
//!
//! - [`ebml`]: element IDs, variable-length integers, element readers and writers.
//! - [`stream`]: the incremental parser of live Matroska streams (PutMedia bodies, GetMedia chains).
//! - [`writer`]: the pieces a producer or a GetMedia server writes (EBML header, clusters, tags).
//! - [`ack`]: PutMedia acknowledgements and their streaming parser.
//! - [`fragment_number`]: the service's 47-digit fragment numbers.
//! - [`tags`]: the names of the tags the service adds to its output.

pub mod ack;
pub mod ebml;
pub mod fragment_number;
pub mod stream;
pub mod tags;
pub mod writer;

/// Why a Matroska stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MkvError {
    #[error("invalid Matroska data: {0}")]
    Invalid(String),
    #[error("Matroska element too large: {0}")]
    TooLarge(String),
    #[error("truncated Matroska stream: {0}")]
    Truncated(String),
}

impl MkvError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        MkvError::Invalid(msg.into())
    }
}
