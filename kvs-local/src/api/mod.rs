//! Request handling: routing by path, SigV4 verification, JSON input checks and the service's error shape.
//! The operations themselves live in `control` (control plane), `put_media`, `get_media` and `archive`.

pub mod archive;
pub mod configuration;
pub mod control;
pub mod edge;
pub mod get_media;
pub mod input;
pub mod playback;
pub mod put_media;
pub mod signaling;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::App;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::sigv4::{self, PendingAuth};

pub use input::Input;

/// The operations served, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateStream,
    DescribeStream,
    ListStreams,
    DeleteStream,
    UpdateStream,
    UpdateDataRetention,
    GetDataEndpoint,
    TagStream,
    UntagStream,
    ListTagsForStream,
    TagResource,
    UntagResource,
    ListTagsForResource,
    DescribeStreamStorageConfiguration,
    UpdateStreamStorageConfiguration,
    PutMedia,
    GetMedia,
    ListFragments,
    GetMediaForFragmentList,
    // Stream configurations (configuration.rs), edge configurations (edge.rs), signaling channels (signaling.rs).
    DescribeImageGenerationConfiguration,
    UpdateImageGenerationConfiguration,
    DescribeNotificationConfiguration,
    UpdateNotificationConfiguration,
    DescribeMappedResourceConfiguration,
    StartEdgeConfigurationUpdate,
    DescribeEdgeConfiguration,
    DeleteEdgeConfiguration,
    ListEdgeAgentConfigurations,
    CreateSignalingChannel,
    DescribeSignalingChannel,
    ListSignalingChannels,
    UpdateSignalingChannel,
    DeleteSignalingChannel,
    GetSignalingChannelEndpoint,
    DescribeMediaStorageConfiguration,
    UpdateMediaStorageConfiguration,
    GetIceServerConfig,
    SendAlexaOfferToMaster,
    GetClip,
    GetHLSStreamingSessionURL,
    GetImages,
    GetDASHStreamingSessionURL,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Operation> {
        use Operation::*;
        Some(match path {
            "/createStream" => CreateStream,
            "/describeStream" => DescribeStream,
            "/listStreams" => ListStreams,
            "/deleteStream" => DeleteStream,
            "/updateStream" => UpdateStream,
            "/updateDataRetention" => UpdateDataRetention,
            "/getDataEndpoint" => GetDataEndpoint,
            "/tagStream" => TagStream,
            "/untagStream" => UntagStream,
            "/listTagsForStream" => ListTagsForStream,
            "/TagResource" => TagResource,
            "/UntagResource" => UntagResource,
            "/ListTagsForResource" => ListTagsForResource,
            "/describeStreamStorageConfiguration" => DescribeStreamStorageConfiguration,
            "/updateStreamStorageConfiguration" => UpdateStreamStorageConfiguration,
            "/putMedia" => PutMedia,
            "/getMedia" => GetMedia,
            "/listFragments" => ListFragments,
            "/getMediaForFragmentList" => GetMediaForFragmentList,
            "/describeImageGenerationConfiguration" => DescribeImageGenerationConfiguration,
            "/updateImageGenerationConfiguration" => UpdateImageGenerationConfiguration,
            "/describeNotificationConfiguration" => DescribeNotificationConfiguration,
            "/updateNotificationConfiguration" => UpdateNotificationConfiguration,
            "/describeMappedResourceConfiguration" => DescribeMappedResourceConfiguration,
            "/startEdgeConfigurationUpdate" => StartEdgeConfigurationUpdate,
            "/describeEdgeConfiguration" => DescribeEdgeConfiguration,
            "/deleteEdgeConfiguration" => DeleteEdgeConfiguration,
            "/listEdgeAgentConfigurations" => ListEdgeAgentConfigurations,
            "/createSignalingChannel" => CreateSignalingChannel,
            "/describeSignalingChannel" => DescribeSignalingChannel,
            "/listSignalingChannels" => ListSignalingChannels,
            "/updateSignalingChannel" => UpdateSignalingChannel,
            "/deleteSignalingChannel" => DeleteSignalingChannel,
            "/getSignalingChannelEndpoint" => GetSignalingChannelEndpoint,
            "/describeMediaStorageConfiguration" => DescribeMediaStorageConfiguration,
            "/updateMediaStorageConfiguration" => UpdateMediaStorageConfiguration,
            "/v1/get-ice-server-config" => GetIceServerConfig,
            "/v1/send-alexa-offer-to-master" => SendAlexaOfferToMaster,
            "/getClip" => GetClip,
            "/getHLSStreamingSessionURL" => GetHLSStreamingSessionURL,
            "/getImages" => GetImages,
            "/getDASHStreamingSessionURL" => GetDASHStreamingSessionURL,
            _ => return None,
        })
    }
}

fn request_id() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Serves one request; never fails (errors become the service's error responses).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let id = request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let stream = req
        .headers()
        .get("x-amzn-stream-name")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = match route(&app, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", v);
    }
    let status = response.status().as_u16();
    let error_type = response
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    tracing::info!(
        %peer,
        %method,
        %path,
        status,
        error_type,
        stream = stream.as_deref().unwrap_or(""),
        request_id = %id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// The service's error response.
pub fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let body = serde_json::json!({ "Message": e.message }).to_string();
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(e.error_type) {
        h.insert("x-amzn-ErrorType", v);
    }
    r
}

/// A 200 JSON response.
pub fn json_response(value: &serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(value.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 response with an empty body.
pub fn empty_response() -> Response<ResponseBody> {
    Response::new(ResponseBody::empty())
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    if playback::viewer::is_viewer_path(req.method(), req.uri().path()) {
        return playback::viewer::serve(req.uri().path());
    }
    if playback::hls::is_session_path(req.uri().path()) {
        return playback::hls::serve(app.clone(), req.method(), req.uri()).await;
    }
    let op = Operation::from_path(req.uri().path()).ok_or_else(|| {
        ApiError::unknown_operation(format!("no operation is served at '{}'", req.uri().path()))
    })?;
    if req.method() != Method::POST {
        return Err(ApiError::unknown_operation(format!(
            "{} {} is not an operation: every operation is a POST",
            req.method(),
            req.uri().path()
        )));
    }
    let pending = app.verifier.begin(req.method(), req.uri(), req.headers())?;
    if op == Operation::PutMedia {
        // The body streams: the producer signs it as empty (or says so in x-amz-content-sha256).
        let mut candidates: Vec<String> = Vec::new();
        if let Some(v) = req
            .headers()
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
        {
            candidates.push(v.trim().to_owned());
        }
        candidates.push(sigv4::EMPTY_SHA256.to_owned());
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        pending.verify(&refs)?;
        return put_media::handle(app.clone(), req).await;
    }
    let (parts, body) = req.into_parts();
    let body = read_body(
        body,
        parts.headers.get(http::header::CONTENT_LENGTH),
        app.config.max_json_body,
    )
    .await?;
    verify_body(&pending, &parts.headers, &body)?;
    let input = Input::parse(&body)?;
    use Operation::*;
    match op {
        GetMedia => get_media::handle(app.clone(), input).await,
        ListFragments => archive::list_fragments(app, input).await,
        GetMediaForFragmentList => archive::get_media_for_fragment_list(app.clone(), input).await,
        GetClip => playback::clip::get_clip(app.clone(), input).await,
        GetHLSStreamingSessionURL => {
            playback::session::get_hls_streaming_session_url(app.clone(), input).await
        }
        GetImages => playback::images::get_images(app.clone(), input).await,
        GetDASHStreamingSessionURL => {
            playback::session::get_dash_streaming_session_url(app.clone(), input).await
        }
        PutMedia => Err(ApiError::internal("PutMedia reached the JSON path")),
        op if configuration::serves(op) => configuration::handle(app, op, input).await,
        op if edge::serves(op) => {
            // EdgeConfig holds a boolean, which Input does not read: the edge module reads it from the body.
            let raw = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            edge::handle(app, op, input, &raw).await
        }
        op if signaling::serves(op) => signaling::handle(app, op, input).await,
        TagResource | UntagResource | ListTagsForResource if signaling::names_channel(&input) => {
            signaling::handle(app, op, input).await
        }
        _ => control::handle(app, op, input).await,
    }
}

fn verify_body(
    pending: &PendingAuth,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let body_hash = sigv4::sha256_hex(body);
    match headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(sigv4::UNSIGNED_PAYLOAD) => pending.verify(&[sigv4::UNSIGNED_PAYLOAD]),
        Some(sent) if !sent.eq_ignore_ascii_case(&body_hash) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "x-amz-content-sha256 does not match the SHA-256 of the request body",
        )),
        _ => pending.verify(&[&body_hash]),
    }
}

async fn read_body(
    mut body: Incoming,
    content_length: Option<&HeaderValue>,
    max: usize,
) -> Result<Bytes, ApiError> {
    if let Some(len) = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(ApiError::too_large(format!(
            "request body of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::malformed(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ApiError::too_large(format!(
                    "request body exceeds the limit of {max} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Epoch seconds with millisecond precision as a JSON number.
pub fn epoch_seconds(ms: u64) -> serde_json::Value {
    let secs = ms as f64 / 1000.0;
    serde_json::Number::from_f64(secs).map_or(serde_json::Value::Null, serde_json::Value::Number)
}
