//! The one error type of the AWS layer.
//!
//! Service errors are recognised by the `x-amzn-ErrorType` response header (the part before an optional
//! `:<url>` suffix), falling back to the `__type` member of the JSON body and finally to the HTTP status. Every
//! variant carries the message the service (or the local cause) gave, so an element can post it unchanged.

use std::time::Duration;

/// An error of the AWS layer.
///
/// Service variants carry the service's `Message`; local variants say what failed and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    // ---- authentication / authorisation (see `is_auth`) ----
    #[error("not authorized (NotAuthorizedException): {message}")]
    NotAuthorized { message: String },
    #[error("access denied (AccessDeniedException): {message}")]
    AccessDenied { message: String },
    #[error(
        "unrecognized client, the access key is unknown (UnrecognizedClientException): {message}"
    )]
    UnrecognizedClient { message: String },
    #[error("incomplete signature (IncompleteSignature): {message}")]
    IncompleteSignature { message: String },
    #[error("signature does not match (SignatureDoesNotMatch): {message}")]
    SignatureDoesNotMatch { message: String },
    #[error("security token expired (ExpiredTokenException): {message}")]
    ExpiredToken { message: String },

    // ---- stream state / arguments ----
    #[error("resource not found (ResourceNotFoundException): {message}")]
    ResourceNotFound { message: String },
    #[error("resource in use (ResourceInUseException): {message}")]
    ResourceInUse { message: String },
    #[error("invalid argument (InvalidArgumentException): {message}")]
    InvalidArgument { message: String },
    #[error("no data retention on the stream (NoDataRetentionException): {message}")]
    NoDataRetention { message: String },
    #[error("invalid endpoint (InvalidEndpointException): {message}")]
    InvalidEndpoint { message: String },

    // ---- limits and transient service trouble (retryable) ----
    #[error("client limit exceeded (ClientLimitExceededException): {message}")]
    ClientLimitExceeded { message: String },
    #[error("connection limit exceeded (ConnectionLimitExceededException): {message}")]
    ConnectionLimitExceeded { message: String },
    #[error("throttled (ThrottlingException): {message}")]
    Throttling { message: String },
    #[error("service unavailable (ServiceUnavailable): {message}")]
    ServiceUnavailable { message: String },
    #[error("internal failure of the service (InternalFailure): {message}")]
    InternalFailure { message: String },

    /// Any other service error; `error_type` is the exception name or empty when the response had none.
    #[error("service error {error_type} (HTTP {status}): {message}")]
    Other {
        error_type: String,
        status: u16,
        message: String,
    },

    // ---- local causes ----
    /// The connection could not be made or broke (DNS, TCP, TLS, reset). The message names the URL and cause.
    #[error("network error: {0}")]
    Network(String),
    /// A connect or completion timeout expired.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No credentials could be obtained; the message names the source that failed.
    #[error("credentials error: {0}")]
    Credentials(String),
    /// A property or environment value is invalid (bad URL, unreadable CA file, ...).
    #[error("configuration error: {0}")]
    Config(String),
    /// The service answered something this client cannot read.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// Signing the request failed.
    #[error("signing error: {0}")]
    Signing(String),
    /// The process-wide runtime could not be built or used.
    #[error("runtime error: {0}")]
    Runtime(String),
}

impl AwsError {
    /// Builds the error for a failed service response from the exception name (`x-amzn-ErrorType`, possibly
    /// with a `:<url>` suffix or a `namespace#` prefix), the HTTP status and the service's message.
    pub fn from_service(error_type: Option<&str>, status: u16, message: String) -> AwsError {
        let name = error_type.map(normalize_error_type).unwrap_or_default();
        let message = if message.is_empty() {
            format!("HTTP status {status} without a message")
        } else {
            message
        };
        match name.as_str() {
            "NotAuthorizedException" => AwsError::NotAuthorized { message },
            "AccessDeniedException" | "AccessDenied" => AwsError::AccessDenied { message },
            "UnrecognizedClientException" | "InvalidClientTokenId" => {
                AwsError::UnrecognizedClient { message }
            }
            "IncompleteSignature"
            | "IncompleteSignatureException"
            | "MissingAuthenticationToken" => AwsError::IncompleteSignature { message },
            "SignatureDoesNotMatch" | "InvalidSignatureException" => {
                AwsError::SignatureDoesNotMatch { message }
            }
            "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => {
                AwsError::ExpiredToken { message }
            }
            "ResourceNotFoundException" => AwsError::ResourceNotFound { message },
            "ResourceInUseException" => AwsError::ResourceInUse { message },
            "InvalidArgumentException" => AwsError::InvalidArgument { message },
            "NoDataRetentionException" => AwsError::NoDataRetention { message },
            "InvalidEndpointException" => AwsError::InvalidEndpoint { message },
            "ClientLimitExceededException" => AwsError::ClientLimitExceeded { message },
            "ConnectionLimitExceededException" => AwsError::ConnectionLimitExceeded { message },
            "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
                AwsError::Throttling { message }
            }
            "ServiceUnavailable" | "ServiceUnavailableException" => {
                AwsError::ServiceUnavailable { message }
            }
            "InternalFailure" | "InternalFailureException" | "InternalServerError" => {
                AwsError::InternalFailure { message }
            }
            "" => match status {
                // Without an exception name the status is all there is; keep the classes SDKs derive from it.
                401 => AwsError::NotAuthorized { message },
                403 => AwsError::AccessDenied { message },
                404 => AwsError::ResourceNotFound { message },
                429 => AwsError::Throttling { message },
                503 => AwsError::ServiceUnavailable { message },
                500 => AwsError::InternalFailure { message },
                _ => AwsError::Other {
                    error_type: String::new(),
                    status,
                    message,
                },
            },
            _ => AwsError::Other {
                error_type: name,
                status,
                message,
            },
        }
    }

    /// True when the same request may succeed later without any change by the user: network trouble,
    /// timeouts, throttling and limits, 5xx, an endpoint that moved (after the cache entry is dropped) and a
    /// connection limit (the previous session of the stream is still closing).
    pub fn is_retryable(&self) -> bool {
        match self {
            AwsError::Network(_)
            | AwsError::Timeout(_)
            | AwsError::ClientLimitExceeded { .. }
            | AwsError::ConnectionLimitExceeded { .. }
            | AwsError::Throttling { .. }
            | AwsError::ServiceUnavailable { .. }
            | AwsError::InternalFailure { .. }
            | AwsError::InvalidEndpoint { .. } => true,
            AwsError::Other { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// True for errors about who the caller is or what it may do: fixing them needs other credentials or
    /// permissions.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            AwsError::NotAuthorized { .. }
                | AwsError::AccessDenied { .. }
                | AwsError::UnrecognizedClient { .. }
                | AwsError::IncompleteSignature { .. }
                | AwsError::SignatureDoesNotMatch { .. }
                | AwsError::ExpiredToken { .. }
                | AwsError::Credentials(_)
        )
    }

    /// True for ResourceNotFoundException (or a bare 404), e.g. DescribeStream of a stream that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AwsError::ResourceNotFound { .. })
    }

    /// The service's message (or the local cause) without the error class prefix.
    pub fn message(&self) -> &str {
        match self {
            AwsError::NotAuthorized { message }
            | AwsError::AccessDenied { message }
            | AwsError::UnrecognizedClient { message }
            | AwsError::IncompleteSignature { message }
            | AwsError::SignatureDoesNotMatch { message }
            | AwsError::ExpiredToken { message }
            | AwsError::ResourceNotFound { message }
            | AwsError::ResourceInUse { message }
            | AwsError::InvalidArgument { message }
            | AwsError::NoDataRetention { message }
            | AwsError::InvalidEndpoint { message }
            | AwsError::ClientLimitExceeded { message }
            | AwsError::ConnectionLimitExceeded { message }
            | AwsError::Throttling { message }
            | AwsError::ServiceUnavailable { message }
            | AwsError::InternalFailure { message }
            | AwsError::Other { message, .. } => message,
            AwsError::Network(m)
            | AwsError::Timeout(m)
            | AwsError::Credentials(m)
            | AwsError::Config(m)
            | AwsError::InvalidResponse(m)
            | AwsError::Signing(m)
            | AwsError::Runtime(m) => m,
        }
    }

    /// The GStreamer resource error class an element should post for this error.
    pub fn gst_resource_error(&self) -> gst::ResourceError {
        match self {
            e if e.is_auth() => gst::ResourceError::NotAuthorized,
            AwsError::ResourceNotFound { .. } | AwsError::NoDataRetention { .. } => {
                gst::ResourceError::NotFound
            }
            AwsError::ResourceInUse { .. }
            | AwsError::ClientLimitExceeded { .. }
            | AwsError::ConnectionLimitExceeded { .. }
            | AwsError::Throttling { .. } => gst::ResourceError::Busy,
            AwsError::InvalidArgument { .. } | AwsError::Config(_) => gst::ResourceError::Settings,
            AwsError::Network(_) | AwsError::Timeout(_) | AwsError::InvalidEndpoint { .. } => {
                gst::ResourceError::OpenReadWrite
            }
            _ => gst::ResourceError::Failed,
        }
    }

    /// `(error class, user message)` for `gst::error_msg!`/`element_imp_error!`, e.g.
    /// `(ResourceError::NotAuthorized, "DescribeStream failed: not authorized (...): <service message>")`.
    pub fn to_gst_error(&self, context: &str) -> (gst::ResourceError, String) {
        let message = if context.is_empty() {
            self.to_string()
        } else {
            format!("{context}: {self}")
        };
        (self.gst_resource_error(), message)
    }

    pub(crate) fn timeout(what: &str, after: Duration) -> AwsError {
        AwsError::Timeout(format!(
            "{what} did not complete within {} s",
            after.as_secs_f64()
        ))
    }
}

/// `x-amzn-ErrorType` may read `ResourceNotFoundException:http://internal.amazon.com/...`; the JSON `__type`
/// member may read `com.amazonaws.kinesisvideo#ResourceNotFoundException`. Both reduce to the bare name.
pub(crate) fn normalize_error_type(raw: &str) -> String {
    let raw = raw.trim();
    let without_url = raw.split(':').next().unwrap_or(raw);
    let without_ns = without_url.rsplit('#').next().unwrap_or(without_url);
    without_ns.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_type_suffix_and_namespace_are_stripped() {
        let table = [
            ("ResourceNotFoundException", "ResourceNotFoundException"),
            (
                "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazonaws.kinesisvideo/",
                "ResourceNotFoundException",
            ),
            (
                "com.amazonaws.kinesisvideo#NotAuthorizedException",
                "NotAuthorizedException",
            ),
            ("  InvalidArgumentException ", "InvalidArgumentException"),
        ];
        for (raw, expected) in table {
            assert_eq!(normalize_error_type(raw), expected, "input {raw:?}");
        }
    }

    #[test]
    fn service_errors_map_to_variants_with_their_message() {
        let m = || "the message".to_string();
        let table: Vec<(Option<&str>, u16, AwsError)> = vec![
            (
                Some("NotAuthorizedException"),
                401,
                AwsError::NotAuthorized { message: m() },
            ),
            (
                Some("AccessDeniedException"),
                401,
                AwsError::AccessDenied { message: m() },
            ),
            (
                Some("UnrecognizedClientException"),
                403,
                AwsError::UnrecognizedClient { message: m() },
            ),
            (
                Some("IncompleteSignature"),
                403,
                AwsError::IncompleteSignature { message: m() },
            ),
            (
                Some("ExpiredTokenException"),
                403,
                AwsError::ExpiredToken { message: m() },
            ),
            (
                Some("ResourceNotFoundException:http://internal.amazon.com/coral/x/"),
                404,
                AwsError::ResourceNotFound { message: m() },
            ),
            (
                Some("ResourceInUseException"),
                400,
                AwsError::ResourceInUse { message: m() },
            ),
            (
                Some("InvalidArgumentException"),
                400,
                AwsError::InvalidArgument { message: m() },
            ),
            (
                Some("ClientLimitExceededException"),
                400,
                AwsError::ClientLimitExceeded { message: m() },
            ),
            (
                Some("ConnectionLimitExceededException"),
                400,
                AwsError::ConnectionLimitExceeded { message: m() },
            ),
            (
                Some("InvalidEndpointException"),
                400,
                AwsError::InvalidEndpoint { message: m() },
            ),
            (
                Some("NoDataRetentionException"),
                400,
                AwsError::NoDataRetention { message: m() },
            ),
            (
                Some("ThrottlingException"),
                400,
                AwsError::Throttling { message: m() },
            ),
            (
                Some("InternalFailure"),
                500,
                AwsError::InternalFailure { message: m() },
            ),
            (
                Some("ServiceUnavailable"),
                503,
                AwsError::ServiceUnavailable { message: m() },
            ),
            (
                Some("VersionMismatchException"),
                400,
                AwsError::Other {
                    error_type: "VersionMismatchException".into(),
                    status: 400,
                    message: m(),
                },
            ),
            (None, 404, AwsError::ResourceNotFound { message: m() }),
            (None, 403, AwsError::AccessDenied { message: m() }),
            (
                None,
                418,
                AwsError::Other {
                    error_type: String::new(),
                    status: 418,
                    message: m(),
                },
            ),
        ];
        for (ty, status, expected) in table {
            assert_eq!(
                AwsError::from_service(ty, status, m()),
                expected,
                "type {ty:?} status {status}"
            );
        }
    }

    #[test]
    fn display_names_the_exception_and_the_cause() {
        let e = AwsError::from_service(
            Some("NotAuthorizedException"),
            401,
            "The security token included in the request is invalid".into(),
        );
        assert_eq!(
            e.to_string(),
            "not authorized (NotAuthorizedException): The security token included in the request is invalid"
        );
        let (kind, msg) = e.to_gst_error("DescribeStream of cam-1 failed");
        assert_eq!(kind, gst::ResourceError::NotAuthorized);
        assert!(msg.starts_with("DescribeStream of cam-1 failed: not authorized"));
        assert_eq!(
            AwsError::from_service(Some("X"), 400, String::new()).message(),
            "HTTP status 400 without a message"
        );
    }

    #[test]
    fn classes() {
        let m = String::new;
        assert!(AwsError::Throttling { message: m() }.is_retryable());
        assert!(AwsError::Network("reset".into()).is_retryable());
        assert!(AwsError::Timeout("t".into()).is_retryable());
        assert!(
            AwsError::Other {
                error_type: String::new(),
                status: 502,
                message: m()
            }
            .is_retryable()
        );
        assert!(!AwsError::ResourceNotFound { message: m() }.is_retryable());
        assert!(!AwsError::NotAuthorized { message: m() }.is_retryable());
        assert!(!AwsError::InvalidArgument { message: m() }.is_retryable());
        assert!(AwsError::UnrecognizedClient { message: m() }.is_auth());
        assert!(AwsError::Credentials("no file".into()).is_auth());
        assert!(!AwsError::Throttling { message: m() }.is_auth());
        assert_eq!(
            AwsError::ResourceNotFound { message: m() }.gst_resource_error(),
            gst::ResourceError::NotFound
        );
        assert_eq!(
            AwsError::ConnectionLimitExceeded { message: m() }.gst_resource_error(),
            gst::ResourceError::Busy
        );
    }
}
