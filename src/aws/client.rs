//! The typed Kinesis Video Streams client used by kvssink and kvssrc.
//!
//! Every request goes through one path: resolve the endpoint, take the current credentials, sign with
//! [`super::signing::sign_request`], send on the shared connection pool, and turn a failed response into an
//! [`AwsError`] from its `x-amzn-ErrorType`. Idempotent calls are retried with backoff; data-plane calls use the
//! process-wide data-endpoint cache and drop their entry when the endpoint looks wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::CAT;
use super::credentials::{CredentialSource, CredentialsProvider, error_chain};
use super::endpoint::{
    EndpointCache, EndpointKey, EndpointSource, RegionSource, invalidates_endpoint, process_env,
    region_without_profile, resolve_endpoint, resolve_region,
};
use super::error::{AwsError, normalize_error_type};
use super::http::{HttpConfig, shared_client};
use super::retry::{RetryPolicy, retry};
use super::settings::AwsSettings;
use super::signing::{Payload, host_header, sign_request};

/// A stream, by name or by ARN (the APIs accept either).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamRef {
    Name(String),
    Arn(String),
}

impl StreamRef {
    /// The JSON member carrying the stream in a request body.
    fn json_member(&self) -> (&'static str, &str) {
        match self {
            StreamRef::Name(n) => ("StreamName", n),
            StreamRef::Arn(a) => ("StreamARN", a),
        }
    }

    /// The PutMedia header carrying the stream.
    fn put_media_header(&self) -> (&'static str, &str) {
        match self {
            StreamRef::Name(n) => ("x-amzn-stream-name", n),
            StreamRef::Arn(a) => ("x-amzn-stream-arn", a),
        }
    }

    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let (k, v) = self.json_member();
        let mut m = serde_json::Map::new();
        m.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        m
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamRef::Name(n) => write!(f, "stream {n}"),
            StreamRef::Arn(a) => write!(f, "stream {a}"),
        }
    }
}

/// The `APIName` of GetDataEndpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiName {
    PutMedia,
    GetMedia,
    ListFragments,
    GetMediaForFragmentList,
    GetHlsStreamingSessionUrl,
    GetDashStreamingSessionUrl,
    GetClip,
    GetImages,
}

impl ApiName {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiName::PutMedia => "PUT_MEDIA",
            ApiName::GetMedia => "GET_MEDIA",
            ApiName::ListFragments => "LIST_FRAGMENTS",
            ApiName::GetMediaForFragmentList => "GET_MEDIA_FOR_FRAGMENT_LIST",
            ApiName::GetHlsStreamingSessionUrl => "GET_HLS_STREAMING_SESSION_URL",
            ApiName::GetDashStreamingSessionUrl => "GET_DASH_STREAMING_SESSION_URL",
            ApiName::GetClip => "GET_CLIP",
            ApiName::GetImages => "GET_IMAGES",
        }
    }
}

impl fmt::Display for ApiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DescribeStream's `StreamInfo`. Members the service may leave out or send as `null` are options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamDescription {
    #[serde(default)]
    pub device_name: Option<String>,
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// CREATING, ACTIVE, UPDATING or DELETING.
    pub status: String,
    /// Epoch seconds.
    #[serde(default, deserialize_with = "de_opt_timestamp")]
    pub creation_time: Option<f64>,
    #[serde(default)]
    pub data_retention_in_hours: Option<u32>,
}

impl StreamDescription {
    pub fn is_active(&self) -> bool {
        self.status == "ACTIVE"
    }
}

/// CreateStream's parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateStreamInput {
    pub stream_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_retention_in_hours: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Where GetMedia starts.
#[derive(Debug, Clone, PartialEq)]
pub enum StartSelector {
    Now,
    Earliest,
    /// Starts with the fragment after this one.
    FragmentNumber(String),
    /// Epoch seconds.
    ProducerTimestamp(f64),
    /// Epoch seconds.
    ServerTimestamp(f64),
    ContinuationToken(String),
}

impl StartSelector {
    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            StartSelector::Now => json!({"StartSelectorType": "NOW"}),
            StartSelector::Earliest => json!({"StartSelectorType": "EARLIEST"}),
            StartSelector::FragmentNumber(n) => {
                json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": n})
            }
            StartSelector::ProducerTimestamp(t) => {
                json!({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": t})
            }
            StartSelector::ServerTimestamp(t) => {
                json!({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": t})
            }
            StartSelector::ContinuationToken(c) => {
                json!({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": c})
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentSelectorKind {
    ProducerTimestamp,
    ServerTimestamp,
}

/// ListFragments' time range (inclusive, on each fragment's start), epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FragmentSelector {
    pub kind: FragmentSelectorKind,
    pub start: f64,
    pub end: f64,
}

/// One page of ListFragments.
#[derive(Debug, Clone, PartialEq)]
pub struct ListFragmentsInput {
    pub stream: StreamRef,
    pub selector: Option<FragmentSelector>,
    /// 1..=1000; `None` lets the service choose.
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// One fragment as ListFragments reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fragment {
    #[serde(rename = "FragmentNumber")]
    pub fragment_number: String,
    #[serde(rename = "FragmentSizeInBytes", default)]
    pub size: u64,
    /// Epoch seconds.
    #[serde(rename = "ProducerTimestamp", deserialize_with = "de_timestamp")]
    pub producer_timestamp: f64,
    /// Epoch seconds.
    #[serde(rename = "ServerTimestamp", deserialize_with = "de_timestamp")]
    pub server_timestamp: f64,
    #[serde(rename = "FragmentLengthInMilliseconds", default)]
    pub length_ms: u64,
}

/// A page of fragments, in the service's (unspecified) order; `next_token` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ListFragmentsOutput {
    #[serde(rename = "Fragments", default)]
    pub fragments: Vec<Fragment>,
    #[serde(rename = "NextToken", default)]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimecodeType {
    #[default]
    Absolute,
    Relative,
}

impl TimecodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            TimecodeType::Absolute => "ABSOLUTE",
            TimecodeType::Relative => "RELATIVE",
        }
    }
}

/// PutMedia's header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PutMediaParams {
    pub timecode_type: TimecodeType,
    /// Epoch seconds (sent with millisecond precision), `None` to omit the header.
    pub producer_start_timestamp: Option<f64>,
    pub ack_required: bool,
}

/// The streaming body of a GetMedia / GetMediaForFragmentList response.
pub struct MediaResponse {
    /// The response `Content-Type` (`video/webm` from the service).
    pub content_type: Option<String>,
    /// The data endpoint that answered.
    pub endpoint: String,
    response: reqwest::Response,
    client: KvsClient,
    key: EndpointKey,
}

impl fmt::Debug for MediaResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaResponse")
            .field("content_type", &self.content_type)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl MediaResponse {
    /// The next piece of the body as it arrives; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, AwsError> {
        next_body_chunk(&mut self.response, &self.client, &self.key, &self.endpoint).await
    }
}

/// The answer to PutMedia: HTTP 200 came back; the body carries the acknowledgements as they are produced.
pub struct PutMediaResponse {
    pub endpoint: String,
    response: reqwest::Response,
    client: KvsClient,
    key: EndpointKey,
}

impl fmt::Debug for PutMediaResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutMediaResponse")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl PutMediaResponse {
    /// The next bytes of the ack stream (newline-separated JSON; feed them to `kvs_mkv::ack::AckParser`);
    /// `None` when the service closed the response.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, AwsError> {
        next_body_chunk(&mut self.response, &self.client, &self.key, &self.endpoint).await
    }
}

async fn next_body_chunk(
    response: &mut reqwest::Response,
    client: &KvsClient,
    key: &EndpointKey,
    endpoint: &str,
) -> Result<Option<Bytes>, AwsError> {
    response.chunk().await.map_err(|e| {
        let err = if e.is_timeout() {
            AwsError::Timeout(format!(
                "reading the response from {endpoint}: {}",
                error_chain(&e)
            ))
        } else {
            AwsError::Network(format!(
                "the response from {endpoint} broke off: {}",
                error_chain(&e)
            ))
        };
        client.drop_endpoint_on(key, &err);
        err
    })
}

/// Region and control endpoint, with where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    pub region: String,
    pub region_source: RegionSource,
    pub endpoint: String,
    pub endpoint_source: EndpointSource,
}

struct ClientInner {
    region_property: Option<String>,
    endpoint_property: Option<String>,
    profile: Option<String>,
    resolved: tokio::sync::OnceCell<ResolvedEndpoint>,
    credentials: CredentialsProvider,
    http: reqwest::Client,
    user_agent: String,
    completion_timeout: Option<Duration>,
    cache: &'static EndpointCache,
    retry: RetryPolicy,
}

/// The Kinesis Video Streams client. Cheap to clone; clones share credentials and resolution. All methods are
/// async and run on [`super::runtime()`] (through [`super::wait::wait`] from a streaming thread).
#[derive(Clone)]
pub struct KvsClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for KvsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvsClient")
            .field("resolved", &self.inner.resolved.get())
            .field("credentials", &self.inner.credentials.source())
            .finish_non_exhaustive()
    }
}

/// The default User-Agent product token.
pub fn default_user_agent() -> String {
    format!("gst-plugin-kvs/{}", env!("CARGO_PKG_VERSION"))
}

impl KvsClient {
    /// Validates the settings, chooses the credential source and, unless the region must come from a profile
    /// file, resolves region and control endpoint at once (logging the choices at info level). Nothing is sent.
    pub fn new(settings: &AwsSettings) -> Result<KvsClient, AwsError> {
        KvsClient::with_retry_policy(settings, RetryPolicy::default())
    }

    /// [`KvsClient::new`] with another retry policy for idempotent calls.
    pub fn with_retry_policy(
        settings: &AwsSettings,
        retry_policy: RetryPolicy,
    ) -> Result<KvsClient, AwsError> {
        let credentials = CredentialsProvider::from_settings(settings)?;
        let http = shared_client(&HttpConfig::new(
            settings.ca_file.clone(),
            settings.connection_timeout(),
        ))?;
        let user_agent = match &settings.user_agent {
            Some(extra) => format!("{} {extra}", default_user_agent()),
            None => default_user_agent(),
        };
        HeaderValue::from_str(&user_agent).map_err(|_| {
            AwsError::Config(format!(
                "user-agent {user_agent:?} is not a valid header value"
            ))
        })?;
        let client = KvsClient {
            inner: Arc::new(ClientInner {
                region_property: settings.aws_region.clone(),
                endpoint_property: settings.endpoint.clone(),
                profile: settings.aws_profile.clone(),
                resolved: tokio::sync::OnceCell::new(),
                credentials,
                http,
                user_agent,
                completion_timeout: settings.completion_timeout(),
                cache: EndpointCache::global(),
                retry: retry_policy,
            }),
        };
        gst::info!(
            CAT,
            "credentials source: {}",
            client.inner.credentials.source()
        );
        if let Some((region, region_source)) =
            region_without_profile(client.inner.region_property.as_deref(), &process_env)
        {
            let resolved = client.finish_resolution(region, region_source)?;
            // Cannot fail: the cell is new and nobody else holds it.
            let _ = client.inner.resolved.set(resolved);
        } else {
            // Endpoint settings are still checked now, so a bad URL fails start() rather than the first call.
            resolve_endpoint(
                client.inner.endpoint_property.as_deref(),
                &process_env,
                super::settings::DEFAULT_REGION,
            )?;
        }
        Ok(client)
    }

    fn finish_resolution(
        &self,
        region: String,
        region_source: RegionSource,
    ) -> Result<ResolvedEndpoint, AwsError> {
        let (endpoint, endpoint_source) = resolve_endpoint(
            self.inner.endpoint_property.as_deref(),
            &process_env,
            &region,
        )?;
        gst::info!(
            CAT,
            "region {region} ({region_source}), control endpoint {endpoint} ({endpoint_source})"
        );
        self.inner.credentials.set_region(&region);
        Ok(ResolvedEndpoint {
            region,
            region_source,
            endpoint,
            endpoint_source,
        })
    }

    /// Region and control endpoint; the first call may read the shared AWS config file for the profile's region.
    pub async fn resolved(&self) -> Result<&ResolvedEndpoint, AwsError> {
        self.inner
            .resolved
            .get_or_try_init(|| async {
                use aws_config::meta::region::ProvideRegion;
                let profile_name = self
                    .inner
                    .profile
                    .clone()
                    .or_else(|| process_env("AWS_PROFILE"))
                    .unwrap_or_else(|| "default".to_string());
                let provider = aws_config::profile::ProfileFileRegionProvider::builder()
                    .profile_name(profile_name.clone())
                    .build();
                let profile_region = provider
                    .region()
                    .await
                    .map(|r| (profile_name, r.as_ref().to_string()));
                let (region, source) = resolve_region(
                    self.inner.region_property.as_deref(),
                    &process_env,
                    profile_region,
                );
                self.finish_resolution(region, source)
            })
            .await
    }

    /// The credential source in use.
    pub fn credential_source(&self) -> &CredentialSource {
        self.inner.credentials.source()
    }

    /// When the current credentials expire (`None`: they do not, or none were fetched yet), so that a
    /// long-lived session can be renewed before.
    pub fn credentials_expiry(&self) -> Option<SystemTime> {
        self.inner.credentials.expiry()
    }

    /// The process-wide data-endpoint cache this client uses.
    pub fn endpoint_cache(&self) -> &'static EndpointCache {
        self.inner.cache
    }

    // ---------------------------------------------------------------- control plane

    /// DescribeStream; `Err(ResourceNotFound)` if the stream does not exist.
    pub async fn describe_stream(&self, stream: &StreamRef) -> Result<StreamDescription, AwsError> {
        #[derive(Deserialize)]
        struct Output {
            #[serde(rename = "StreamInfo")]
            stream_info: StreamDescription,
        }
        let out: Output = self
            .control_call("DescribeStream", "/describeStream", &stream.json(), true)
            .await?;
        Ok(out.stream_info)
    }

    /// CreateStream; returns the new stream's ARN. Not retried: a repeated call would fail with ResourceInUse.
    pub async fn create_stream(&self, input: &CreateStreamInput) -> Result<String, AwsError> {
        #[derive(Deserialize)]
        struct Output {
            #[serde(rename = "StreamARN")]
            stream_arn: String,
        }
        let out: Output = self
            .control_call("CreateStream", "/createStream", input, false)
            .await?;
        Ok(out.stream_arn)
    }

    /// TagStream (adds or replaces the given tags).
    pub async fn tag_stream(
        &self,
        stream: &StreamRef,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let mut body = stream.json();
        body.insert(
            "Tags".into(),
            serde_json::to_value(tags).map_err(|e| AwsError::Config(format!("tags: {e}")))?,
        );
        let _: serde::de::IgnoredAny = self
            .control_call("TagStream", "/tagStream", &body, true)
            .await?;
        Ok(())
    }

    /// ListTagsForStream (the first page: the service keeps at most 50 tags per stream).
    pub async fn list_tags_for_stream(
        &self,
        stream: &StreamRef,
    ) -> Result<BTreeMap<String, String>, AwsError> {
        #[derive(Deserialize)]
        struct Output {
            #[serde(rename = "Tags", default)]
            tags: Option<BTreeMap<String, String>>,
        }
        let out: Output = self
            .control_call(
                "ListTagsForStream",
                "/listTagsForStream",
                &stream.json(),
                true,
            )
            .await?;
        Ok(out.tags.unwrap_or_default())
    }

    /// The data endpoint (base URL) for `api` on `stream`, from the cache when fresh, else GetDataEndpoint.
    pub async fn data_endpoint(
        &self,
        stream: &StreamRef,
        api: ApiName,
    ) -> Result<String, AwsError> {
        let key = self.endpoint_key(stream, api).await?;
        if let Some(url) = self.inner.cache.get(&key, Instant::now()) {
            return Ok(url);
        }
        #[derive(Deserialize)]
        struct Output {
            #[serde(rename = "DataEndpoint")]
            data_endpoint: String,
        }
        let mut body = stream.json();
        body.insert(
            "APIName".into(),
            serde_json::Value::String(api.as_str().into()),
        );
        let out: Output = self
            .control_call("GetDataEndpoint", "/getDataEndpoint", &body, true)
            .await?;
        let url =
            super::endpoint::normalize_endpoint(&out.data_endpoint, &"GetDataEndpoint result")
                .map_err(|e| AwsError::InvalidResponse(e.message().to_string()))?;
        gst::debug!(CAT, "data endpoint of {stream} for {api}: {url}");
        self.inner.cache.insert(key, url.clone(), Instant::now());
        Ok(url)
    }

    /// Forgets the cached data endpoint (e.g. after the element saw a failure the client could not see).
    pub fn invalidate_data_endpoint(&self, stream: &StreamRef, api: ApiName) {
        if let Some(resolved) = self.inner.resolved.get() {
            self.inner.cache.invalidate(&EndpointKey {
                control_endpoint: resolved.endpoint.clone(),
                stream: stream.clone(),
                api,
            });
        }
    }

    // ---------------------------------------------------------------- data plane

    /// GetMedia from `start`: returns once the response headers arrived (within completion-timeout); the body
    /// follows through [`MediaResponse::next_chunk`].
    pub async fn get_media(
        &self,
        stream: &StreamRef,
        start: &StartSelector,
    ) -> Result<MediaResponse, AwsError> {
        let mut body = stream.json();
        body.insert("StartSelector".into(), start.json());
        self.media_call("GetMedia", ApiName::GetMedia, "/getMedia", &body)
            .await
    }

    /// One page of ListFragments.
    pub async fn list_fragments(
        &self,
        input: &ListFragmentsInput,
    ) -> Result<ListFragmentsOutput, AwsError> {
        let mut body = input.stream.json();
        if let Some(max) = input.max_results {
            body.insert("MaxResults".into(), max.into());
        }
        if let Some(token) = &input.next_token {
            body.insert("NextToken".into(), token.clone().into());
        }
        if let Some(sel) = &input.selector {
            let kind = match sel.kind {
                FragmentSelectorKind::ProducerTimestamp => "PRODUCER_TIMESTAMP",
                FragmentSelectorKind::ServerTimestamp => "SERVER_TIMESTAMP",
            };
            body.insert(
                "FragmentSelector".into(),
                serde_json::json!({
                    "FragmentSelectorType": kind,
                    "TimestampRange": {"StartTimestamp": sel.start, "EndTimestamp": sel.end}
                }),
            );
        }
        let key = self
            .endpoint_key(&input.stream, ApiName::ListFragments)
            .await?;
        let (body, key, stream) = (&body, &key, &input.stream);
        retry(
            self.inner.retry,
            move |_| async move {
                let endpoint = self.data_endpoint(stream, ApiName::ListFragments).await?;
                let result = self
                    .json_once("ListFragments", &format!("{endpoint}/listFragments"), body)
                    .await;
                if let Err(e) = &result {
                    self.drop_endpoint_on(key, e);
                }
                result
            },
            |e, attempt, delay| log_retry("ListFragments", e, attempt, delay),
        )
        .await
    }

    /// GetMediaForFragmentList (1..=1000 fragment numbers); the body follows through
    /// [`MediaResponse::next_chunk`].
    pub async fn get_media_for_fragment_list(
        &self,
        stream: &StreamRef,
        fragments: &[String],
    ) -> Result<MediaResponse, AwsError> {
        let mut body = stream.json();
        body.insert("Fragments".into(), fragments.to_vec().into());
        self.media_call(
            "GetMediaForFragmentList",
            ApiName::GetMediaForFragmentList,
            "/getMediaForFragmentList",
            &body,
        )
        .await
    }

    /// Starts a PutMedia session: sends the headers (signed with the current credentials, empty-payload hash,
    /// like the producer) and streams `body` as it yields data. Returns when the service answered 200 (its acks
    /// then come through [`PutMediaResponse::next_chunk`]) or with the service's error. Not retried: the body
    /// can be consumed only once; the caller reconnects with a new body. No completion timeout applies while
    /// waiting for the answer (the service may answer only after data arrived); the caller bounds it.
    pub async fn put_media<S>(
        &self,
        stream: &StreamRef,
        params: &PutMediaParams,
        body: S,
    ) -> Result<PutMediaResponse, AwsError>
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let key = self.endpoint_key(stream, ApiName::PutMedia).await?;
        let endpoint = self.data_endpoint(stream, ApiName::PutMedia).await?;
        let url = format!("{endpoint}/putMedia");
        let (stream_header, stream_value) = stream.put_media_header();
        let mut headers: Vec<(&'static str, String)> = vec![
            ("connection", "keep-alive".into()),
            ("transfer-encoding", "chunked".into()),
            (stream_header, stream_value.to_string()),
            (
                "x-amzn-fragment-timecode-type",
                params.timecode_type.as_str().into(),
            ),
            (
                "x-amzn-fragment-acknowledgment-required",
                if params.ack_required { "1" } else { "0" }.into(),
            ),
        ];
        if let Some(ts) = params.producer_start_timestamp {
            headers.push(("x-amzn-producer-start-timestamp", format!("{ts:.3}")));
        }
        let result = async {
            let response = self
                .send_signed(
                    &url,
                    &headers,
                    SignedBody::Stream(reqwest::Body::wrap_stream(body)),
                )
                .await?;
            check_status(response, &url).await
        }
        .await;
        match result {
            Ok(response) => {
                gst::debug!(CAT, "PutMedia of {stream} to {endpoint} accepted");
                Ok(PutMediaResponse {
                    endpoint,
                    response,
                    client: self.clone(),
                    key,
                })
            }
            Err(e) => {
                self.drop_endpoint_on(&key, &e);
                self.note_auth_failure(&e);
                Err(e)
            }
        }
    }

    // ---------------------------------------------------------------- plumbing

    async fn endpoint_key(
        &self,
        stream: &StreamRef,
        api: ApiName,
    ) -> Result<EndpointKey, AwsError> {
        Ok(EndpointKey {
            control_endpoint: self.resolved().await?.endpoint.clone(),
            stream: stream.clone(),
            api,
        })
    }

    fn drop_endpoint_on(&self, key: &EndpointKey, error: &AwsError) {
        if invalidates_endpoint(error) && self.inner.cache.invalidate(key) {
            gst::info!(
                CAT,
                "dropped the cached {} endpoint of {} after: {error}",
                key.api,
                key.stream
            );
        }
    }

    /// After ExpiredToken the cached credentials are dropped so the next request fetches new ones.
    fn note_auth_failure(&self, error: &AwsError) {
        if matches!(error, AwsError::ExpiredToken { .. }) {
            self.inner.credentials.invalidate();
        }
    }

    async fn control_call<Req, Resp>(
        &self,
        what: &'static str,
        path: &str,
        request: &Req,
        idempotent: bool,
    ) -> Result<Resp, AwsError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let url = format!("{}{path}", self.resolved().await?.endpoint);
        let policy = if idempotent {
            self.inner.retry
        } else {
            RetryPolicy { max_attempts: 1 }
        };
        let result = retry(
            policy,
            |_| self.json_once(what, &url, request),
            |e, attempt, delay| log_retry(what, e, attempt, delay),
        )
        .await;
        match result {
            // Credentials that expired earlier than announced (clock skew, revoked session): the cache was
            // dropped by `json_once`, so one more attempt signs with freshly fetched ones. A request refused
            // before it was processed is safe to send again even when it is not idempotent.
            Err(AwsError::ExpiredToken { .. })
                if !matches!(self.credential_source(), CredentialSource::Properties) =>
            {
                gst::info!(
                    CAT,
                    "{what}: the service reported expired credentials; retrying once with refreshed ones"
                );
                self.json_once(what, &url, request).await
            }
            other => other,
        }
    }

    /// One signed JSON request, bounded by completion-timeout, its answer decoded.
    async fn json_once<Req, Resp>(
        &self,
        what: &'static str,
        url: &str,
        request: &Req,
    ) -> Result<Resp, AwsError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = serde_json::to_vec(request)
            .map_err(|e| AwsError::Config(format!("cannot encode the {what} request: {e}")))?;
        let call = async {
            let response = self.send_signed(url, &[], SignedBody::Json(body)).await?;
            let response = check_status(response, url).await?;
            let bytes = response
                .bytes()
                .await
                .map_err(|e| map_reqwest_error(e, url))?;
            let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
                b"{}"
            } else {
                &bytes
            };
            serde_json::from_slice::<Resp>(bytes).map_err(|e| {
                AwsError::InvalidResponse(format!(
                    "{what} answer from {url} cannot be decoded: {e}"
                ))
            })
        };
        let result = match self.inner.completion_timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(AwsError::timeout(&format!("{what} to {url}"), limit))),
            None => call.await,
        };
        if let Err(e) = &result {
            gst::debug!(CAT, "{what} to {url} failed: {e}");
            self.note_auth_failure(e);
        }
        result
    }

    async fn media_call(
        &self,
        what: &'static str,
        api: ApiName,
        path: &str,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<MediaResponse, AwsError> {
        let stream = stream_of(body)?;
        let key = self.endpoint_key(&stream, api).await?;
        let json = serde_json::to_vec(body)
            .map_err(|e| AwsError::Config(format!("cannot encode the {what} request: {e}")))?;
        retry(
            self.inner.retry,
            |_| {
                let json = json.clone();
                let key = key.clone();
                let stream = stream.clone();
                async move {
                    let endpoint = self.data_endpoint(&stream, api).await?;
                    let url = format!("{endpoint}{path}");
                    let call = async {
                        let response = self.send_signed(&url, &[], SignedBody::Json(json)).await?;
                        check_status(response, &url).await
                    };
                    let result = match self.inner.completion_timeout {
                        Some(limit) => {
                            tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                                Err(AwsError::timeout(
                                    &format!("{what} to {url} (response headers)"),
                                    limit,
                                ))
                            })
                        }
                        None => call.await,
                    };
                    match result {
                        Ok(response) => Ok(MediaResponse {
                            content_type: response
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                            endpoint,
                            response,
                            client: self.clone(),
                            key,
                        }),
                        Err(e) => {
                            self.drop_endpoint_on(&key, &e);
                            self.note_auth_failure(&e);
                            Err(e)
                        }
                    }
                }
            },
            |e, attempt, delay| log_retry(what, e, attempt, delay),
        )
        .await
    }

    /// Builds, signs and sends one POST request.
    async fn send_signed(
        &self,
        url: &str,
        extra_headers: &[(&'static str, String)],
        body: SignedBody,
    ) -> Result<reqwest::Response, AwsError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| AwsError::Config(format!("invalid request URL {url}: {e}")))?;
        let region = self.resolved().await?.region.clone();
        let credentials = self.inner.credentials.credentials().await?;

        let mut headers = HeaderMap::new();
        let header = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| AwsError::Config(format!("value {v:?} cannot be sent in a header")))
        };
        headers.insert(http::header::HOST, header(&host_header(&parsed)?)?);
        headers.insert(http::header::USER_AGENT, header(&self.inner.user_agent)?);
        for (name, value) in extra_headers {
            headers.insert(HeaderName::from_static(name), header(value)?);
        }
        let payload = match &body {
            SignedBody::Json(bytes) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Payload::Bytes(bytes)
            }
            SignedBody::Stream(_) => Payload::Streaming,
        };
        sign_request(
            "POST",
            url,
            &mut headers,
            payload,
            &credentials,
            &region,
            SystemTime::now(),
        )?;
        let body = match body {
            SignedBody::Json(bytes) => reqwest::Body::from(bytes),
            SignedBody::Stream(b) => b,
        };
        gst::trace!(CAT, "POST {url}");
        let pending = self
            .inner
            .http
            .post(parsed)
            .headers(headers)
            .body(body)
            .send();
        // Connections (and their background tasks) belong to the runtime that opens them. Opening them on the
        // plugin's runtime keeps the shared pool usable whatever runtime the caller polls this future on.
        let mut task = AbortOnDrop(super::runtime()?.spawn(pending));
        match (&mut task.0).await {
            Ok(result) => result.map_err(|e| map_reqwest_error(e, url)),
            Err(e) => Err(AwsError::Runtime(format!(
                "the request task to {url} failed: {e}"
            ))),
        }
    }
}

/// Aborts a spawned request when the caller stops waiting for it (cancelled `wait`, dropped future).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum SignedBody {
    Json(Vec<u8>),
    Stream(reqwest::Body),
}

fn stream_of(body: &serde_json::Map<String, serde_json::Value>) -> Result<StreamRef, AwsError> {
    if let Some(serde_json::Value::String(n)) = body.get("StreamName") {
        return Ok(StreamRef::Name(n.clone()));
    }
    if let Some(serde_json::Value::String(a)) = body.get("StreamARN") {
        return Ok(StreamRef::Arn(a.clone()));
    }
    Err(AwsError::Config("request names no stream".into()))
}

fn log_retry(what: &str, e: &AwsError, attempt: u32, delay: Duration) {
    gst::warning!(
        CAT,
        "{what} attempt {} failed, retrying in {} ms: {e}",
        attempt + 1,
        delay.as_millis()
    );
}

fn map_reqwest_error(e: reqwest::Error, url: &str) -> AwsError {
    // reqwest's own text repeats the URL that the messages below already name; its sources hold the cause.
    let detail = match std::error::Error::source(&e) {
        Some(source) => error_chain(source),
        None => e.to_string(),
    };
    if e.is_connect() && detail.contains("invalid peer certificate") {
        // Retrying cannot help: the server's certificate is not trusted (or not valid for the host).
        AwsError::Config(format!(
            "the TLS certificate of {url} is not accepted ({detail}); if the server uses a private CA, \
             point the ca-file property or KVSSINK_CA_CERT_PATH at its PEM certificate"
        ))
    } else if e.is_connect() {
        // Connect timeouts count as connection failures: the endpoint cannot be reached.
        AwsError::Network(format!("cannot connect to {url}: {detail}"))
    } else if e.is_timeout() {
        AwsError::Timeout(format!("request to {url}: {detail}"))
    } else {
        AwsError::Network(format!("request to {url} failed: {detail}"))
    }
}

/// Largest error body read to find the service's message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Passes a 2xx response through; turns any other into the matching [`AwsError`].
async fn check_status(
    mut response: reqwest::Response,
    url: &str,
) -> Result<reqwest::Response, AwsError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let error_type = response
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let request_id = response
        .headers()
        .get("x-amzn-RequestId")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            // The status already tells what happened; a broken error body only loses the message.
            Ok(None) | Err(_) => break,
        }
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let field = |names: &[&str]| -> Option<String> {
        let obj = json.as_ref()?.as_object()?;
        names
            .iter()
            .find_map(|n| obj.get(*n).and_then(|v| v.as_str()).map(str::to_string))
    };
    let error_type =
        error_type.or_else(|| field(&["__type", "code"]).map(|t| normalize_error_type(&t)));
    let mut message = field(&["Message", "message"]).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body);
        text.trim().chars().take(500).collect()
    });
    if message.is_empty() {
        message = format!("HTTP {} from {url}", status.as_u16());
    }
    if let Some(id) = request_id {
        message = format!("{message} (request id {id})");
    }
    Err(AwsError::from_service(
        error_type.as_deref(),
        status.as_u16(),
        message,
    ))
}

/// Timestamps are epoch seconds as JSON numbers; strings (numeric or RFC 3339) are accepted too, as botocore
/// does, because some servers send them.
fn timestamp_value(v: serde_json::Value) -> Result<Option<f64>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("bad timestamp {n}")),
        serde_json::Value::String(s) => {
            if let Ok(f) = s.parse::<f64>() {
                return Ok(Some(f));
            }
            let t = super::credentials::parse_timestamp(&s)?;
            let d = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|_| format!("timestamp {s} before 1970"))?;
            Ok(Some(d.as_secs_f64()))
        }
        other => Err(format!("bad timestamp {other}")),
    }
}

fn de_opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    timestamp_value(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn de_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    timestamp_value(serde_json::Value::deserialize(d)?)
        .map_err(serde::de::Error::custom)?
        .ok_or_else(|| serde::de::Error::custom("timestamp is null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_info_with_nulls_and_unknown_members_decodes() {
        let json = r#"{"StreamInfo":{"DeviceName":null,"StreamName":"cam","StreamARN":"arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam/1700000000000",
            "MediaType":"video/h264","KmsKeyId":"alias/aws/kinesisvideo","Version":"abc","Status":"ACTIVE",
            "CreationTime":1.705489836421E9,"DataRetentionInHours":2,"UnknownMember":{"x":1}}}"#;
        #[derive(Deserialize)]
        struct Output {
            #[serde(rename = "StreamInfo")]
            stream_info: StreamDescription,
        }
        let out: Output = serde_json::from_str(json).expect("decodes");
        let d = out.stream_info;
        assert_eq!(d.device_name, None);
        assert_eq!(d.stream_name, "cam");
        assert!(d.is_active());
        assert_eq!(d.creation_time, Some(1_705_489_836.421));
        assert_eq!(d.data_retention_in_hours, Some(2));
    }

    #[test]
    fn list_fragments_output_decodes_number_and_string_timestamps() {
        let json = r#"{"Fragments":[{"FragmentNumber":"91343852333181432392682062607743920146264440120",
            "FragmentSizeInBytes":1000,"ProducerTimestamp":1705489836.421,"ServerTimestamp":"2024-01-17T11:10:37.5Z",
            "FragmentLengthInMilliseconds":2000}],"NextToken":null}"#;
        let out: ListFragmentsOutput = serde_json::from_str(json).expect("decodes");
        assert_eq!(out.next_token, None);
        assert_eq!(out.fragments.len(), 1);
        let f = &out.fragments[0];
        assert_eq!(f.size, 1000);
        assert_eq!(f.producer_timestamp, 1_705_489_836.421);
        assert_eq!(f.server_timestamp, 1_705_489_837.5);
        assert_eq!(f.length_ms, 2000);
    }

    #[test]
    fn request_bodies_use_the_service_member_names() {
        let input = CreateStreamInput {
            stream_name: "cam".into(),
            media_type: Some("video/h264".into()),
            data_retention_in_hours: Some(2),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&input).expect("encodes"),
            serde_json::json!({"StreamName":"cam","MediaType":"video/h264","DataRetentionInHours":2})
        );
        assert_eq!(
            StartSelector::FragmentNumber("123".into()).json(),
            serde_json::json!({"StartSelectorType":"FRAGMENT_NUMBER","AfterFragmentNumber":"123"})
        );
        assert_eq!(
            StartSelector::ProducerTimestamp(1.5).json(),
            serde_json::json!({"StartSelectorType":"PRODUCER_TIMESTAMP","StartTimestamp":1.5})
        );
        assert_eq!(
            StreamRef::Arn("arn:x".into()).json(),
            serde_json::json!({"StreamARN":"arn:x"})
                .as_object()
                .cloned()
                .expect("object")
        );
    }
}

/// The client against a scripted in-process HTTP server: retries, timeouts, error mapping over the wire, the
/// endpoint cache's invalidation and the PutMedia request as sent.
#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::aws::wait::{Canceller, WaitError, wait};
    use std::sync::Mutex as StdMutex;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    #[derive(Debug, Clone)]
    struct Recorded {
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Recorded {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// What the scripted server answers: status, extra headers, body; `None` = never answer.
    type Reply = Option<(u16, Vec<(&'static str, String)>, String)>;
    type Script = Box<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

    struct Mock {
        url: String,
        requests: Arc<StdMutex<Vec<Recorded>>>,
    }

    impl Mock {
        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().expect("lock").clone()
        }
        fn count(&self, path: &str) -> usize {
            self.requests().iter().filter(|r| r.path == path).count()
        }
    }

    async fn read_request(reader: &mut BufReader<tokio::net::TcpStream>) -> Option<Recorded> {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let path = line.split(' ').nth(1)?.to_string();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).await.ok()?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut rec = Recorded {
            path,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = rec
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut body = vec![0; len];
            reader.read_exact(&mut body).await.ok()?;
            rec.body = body;
        } else if rec.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await.ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).await.ok()?;
                if size == 0 {
                    break;
                }
                rec.body.extend_from_slice(&chunk[..size]);
            }
        }
        Some(rec)
    }

    /// Starts the server on the plugin runtime; `script(request, index_of_this_path)` decides each answer.
    fn mock(script: Script) -> Mock {
        let rt = crate::aws::runtime().expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(StdMutex::new(Vec::new()));
        let script = Arc::new(script);
        let recorded = requests.clone();
        let own_url = url.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                let recorded = recorded.clone();
                let own_url = own_url.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(tcp);
                    while let Some(req) = read_request(&mut reader).await {
                        let index = {
                            let mut all = recorded.lock().expect("lock");
                            let n = all.iter().filter(|r: &&Recorded| r.path == req.path).count();
                            all.push(req.clone());
                            n
                        };
                        let reply = if req.path == "/getDataEndpoint" {
                            script(&req, index).or_else(|| {
                                Some((200, vec![], format!(r#"{{"DataEndpoint":"{own_url}"}}"#)))
                            })
                        } else {
                            script(&req, index)
                        };
                        let Some((status, headers, body)) = reply else {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        };
                        let mut text = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                            body.len()
                        );
                        for (n, v) in headers {
                            text.push_str(&format!("{n}: {v}\r\n"));
                        }
                        text.push_str("\r\n");
                        text.push_str(&body);
                        if reader.get_mut().write_all(text.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Mock { url, requests }
    }

    fn settings(url: &str) -> AwsSettings {
        AwsSettings {
            endpoint: Some(url.to_string()),
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some("secret".into()),
            aws_region: Some("us-east-1".into()),
            ..Default::default()
        }
    }

    fn run<T>(f: impl std::future::Future<Output = Result<T, AwsError>>) -> Result<T, AwsError> {
        match wait(&Canceller::new(), f, Some(Duration::from_secs(30))) {
            Ok(v) => Ok(v),
            Err(WaitError::Failed(e)) => Err(e),
            Err(other) => panic!("did not complete: {other}"),
        }
    }

    const STREAM_INFO: &str = r#"{"StreamInfo":{"StreamName":"cam","StreamARN":"arn:aws:kinesisvideo:us-east-1:123456789012:stream/cam/1","Status":"ACTIVE"}}"#;

    fn service_error(status: u16, ty: &str, message: &str) -> Reply {
        Some((
            status,
            vec![
                ("x-amzn-ErrorType", ty.to_string()),
                ("x-amzn-RequestId", "req-1".to_string()),
            ],
            format!(r#"{{"Message":"{message}"}}"#),
        ))
    }

    #[test]
    fn idempotent_calls_retry_retryable_errors_and_resign() {
        gst::init().expect("gst");
        let server = mock(Box::new(|_, i| match i {
            0 => service_error(400, "ThrottlingException", "Rate exceeded"),
            1 => service_error(503, "ServiceUnavailable", "try later"),
            _ => Some((200, vec![], STREAM_INFO.into())),
        }));
        let client = KvsClient::new(&settings(&server.url)).expect("client");
        let d =
            run(client.describe_stream(&StreamRef::Name("cam".into()))).expect("third try works");
        assert_eq!(d.stream_name, "cam");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 3);
        for r in &reqs {
            let auth = r.header("authorization").expect("signed");
            assert!(
                auth.contains("SignedHeaders=host;user-agent;x-amz-date,"),
                "{auth}"
            );
            assert!(r.header("x-amz-content-sha256").is_none());
            assert_eq!(r.body, br#"{"StreamName":"cam"}"#);
        }
        let port = server.url.rsplit(':').next().expect("port");
        assert_eq!(
            reqs[0].header("host"),
            Some(format!("127.0.0.1:{port}").as_str())
        );
    }

    #[test]
    fn create_stream_is_not_retried_and_errors_keep_the_service_message() {
        gst::init().expect("gst");
        let server = mock(Box::new(|r, _| match r.path.as_str() {
            "/createStream" => service_error(500, "InternalFailure", "boom"),
            _ => service_error(
                404,
                "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazonaws.kinesisvideo/",
                "The requested stream is not found or not active.",
            ),
        }));
        let client = KvsClient::new(&settings(&server.url)).expect("client");
        let e = run(client.create_stream(&CreateStreamInput {
            stream_name: "cam".into(),
            ..Default::default()
        }))
        .expect_err("fails");
        assert_eq!(
            e,
            AwsError::InternalFailure {
                message: "boom (request id req-1)".into()
            }
        );
        assert_eq!(server.count("/createStream"), 1);

        let e = run(client.describe_stream(&StreamRef::Name("cam".into()))).expect_err("404");
        assert_eq!(
            e.to_string(),
            "resource not found (ResourceNotFoundException): The requested stream is not found or not active. \
             (request id req-1)"
        );
        assert_eq!(server.count("/describeStream"), 1, "not retried");
    }

    #[test]
    fn expired_token_refetches_credentials_and_retries_once() {
        gst::init().expect("gst");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials");
        std::fs::write(&path, "CREDENTIALS AKIDOLD SECRETOLD").expect("write");
        let rotate = path.clone();
        let server = mock(Box::new(move |r, _| {
            let auth = r.header("authorization").unwrap_or_default();
            if auth.contains("Credential=AKIDOLD/") {
                // The rotation happens while the old key is in flight.
                std::fs::write(&rotate, "CREDENTIALS AKIDNEW SECRETNEW").expect("rotate");
                service_error(
                    403,
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                )
            } else {
                Some((200, vec![], STREAM_INFO.into()))
            }
        }));
        let client = KvsClient::new(&AwsSettings {
            access_key: None,
            secret_key: None,
            credential_path: Some(path.clone()),
            ..settings(&server.url)
        })
        .expect("client");
        run(client.describe_stream(&StreamRef::Name("cam".into())))
            .expect("second attempt with the new key");
        let keys: Vec<bool> = server
            .requests()
            .iter()
            .map(|r| {
                r.header("authorization")
                    .unwrap_or_default()
                    .contains("Credential=AKIDNEW/")
            })
            .collect();
        assert_eq!(keys, [false, true]);
    }

    #[test]
    fn cancelling_a_wait_abandons_the_request_and_reports_flushing() {
        gst::init().expect("gst");
        let server = mock(Box::new(|_, _| None));
        let client = KvsClient::with_retry_policy(
            &AwsSettings {
                completion_timeout_secs: 0,
                ..settings(&server.url)
            },
            RetryPolicy { max_attempts: 1 },
        )
        .expect("client");
        let canceller = Arc::new(Canceller::new());
        let waiting = canceller.clone();
        let started = Instant::now();
        let waiter = std::thread::spawn(move || {
            let stream = StreamRef::Name("cam".into());
            wait(&waiting, client.describe_stream(&stream), None).map(|d| d.stream_name)
        });
        // Cancel once the request reached the server, as unlock() would during a hanging call.
        while server.count("/describeStream") == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "request never arrived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        canceller.cancel();
        let result = waiter.join().expect("waiter");
        assert_eq!(result, Err(WaitError::Flushing));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn completion_timeout_bounds_a_call() {
        gst::init().expect("gst");
        let server = mock(Box::new(|_, _| None));
        let client = KvsClient::with_retry_policy(
            &AwsSettings {
                completion_timeout_secs: 1,
                ..settings(&server.url)
            },
            RetryPolicy { max_attempts: 1 },
        )
        .expect("client");
        let start = Instant::now();
        let e = run(client.describe_stream(&StreamRef::Name("cam".into()))).expect_err("times out");
        assert!(matches!(e, AwsError::Timeout(_)), "{e:?}");
        assert!(e.to_string().contains("DescribeStream"), "{e}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn invalid_endpoint_and_connection_failures_drop_the_cached_endpoint() {
        gst::init().expect("gst");
        let server = mock(Box::new(|r, i| match (r.path.as_str(), i) {
            ("/getMedia", 0) => service_error(400, "InvalidEndpointException", "wrong endpoint"),
            ("/getMedia", _) => Some((200, vec![], "media".into())),
            _ => None,
        }));
        let client = KvsClient::new(&settings(&server.url)).expect("client");
        let stream = StreamRef::Name("cam-invalid-endpoint".into());
        let mut media =
            run(client.get_media(&stream, &StartSelector::Now)).expect("second attempt works");
        assert_eq!(
            run(media.next_chunk()).expect("body").as_deref(),
            Some(&b"media"[..])
        );
        assert_eq!(server.count("/getMedia"), 2);
        assert_eq!(
            server.count("/getDataEndpoint"),
            2,
            "the endpoint was looked up again"
        );
        let sent = &server.requests()[0];
        assert_eq!(sent.path, "/getDataEndpoint");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&sent.body).expect("json"),
            serde_json::json!({"StreamName":"cam-invalid-endpoint","APIName":"GET_MEDIA"})
        );

        // A data endpoint nobody listens on: the connection failure drops it.
        let dead = mock(Box::new(|r, _| match r.path.as_str() {
            "/getDataEndpoint" => Some((
                200,
                vec![],
                r#"{"DataEndpoint":"http://127.0.0.1:9"}"#.into(),
            )),
            _ => None,
        }));
        let client =
            KvsClient::with_retry_policy(&settings(&dead.url), RetryPolicy { max_attempts: 1 })
                .expect("client");
        let stream = StreamRef::Name("cam-dead".into());
        let e = run(client.get_media(&stream, &StartSelector::Earliest)).expect_err("refused");
        assert!(matches!(e, AwsError::Network(_)), "{e:?}");
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        let key = EndpointKey {
            control_endpoint: dead.url.clone(),
            stream: stream.clone(),
            api: ApiName::GetMedia,
        };
        assert_eq!(client.endpoint_cache().get(&key, Instant::now()), None);
        run(client.data_endpoint(&stream, ApiName::GetMedia)).expect("looked up again");
        assert_eq!(dead.count("/getDataEndpoint"), 2);
        // ...and is then cached.
        run(client.data_endpoint(&stream, ApiName::GetMedia)).expect("cached");
        assert_eq!(dead.count("/getDataEndpoint"), 2);
    }

    #[test]
    fn put_media_sends_the_producers_headers_and_streams_the_body() {
        gst::init().expect("gst");
        let server = mock(Box::new(|r, _| match r.path.as_str() {
            "/putMedia" => Some((
                200,
                vec![],
                "{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":1000,\"FragmentNumber\":\"1\"}\n"
                    .into(),
            )),
            _ => None,
        }));
        let client = KvsClient::new(&AwsSettings {
            session_token: Some("TOKEN".into()),
            user_agent: Some("my-camera/2".into()),
            ..settings(&server.url)
        })
        .expect("client");
        let parts: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"first-")),
            Ok(Bytes::from_static(b"second-")),
            Ok(Bytes::from_static(b"third")),
        ];
        let params = PutMediaParams {
            timecode_type: TimecodeType::Relative,
            producer_start_timestamp: Some(1_795_268_499.731_2),
            ack_required: true,
        };
        let mut resp = run(client.put_media(
            &StreamRef::Arn("arn:aws:kinesisvideo:us-east-1:1:stream/cam/1".into()),
            &params,
            futures::stream::iter(parts),
        ))
        .expect("accepted");
        let mut acks = Vec::new();
        while let Some(chunk) = run(resp.next_chunk()).expect("acks") {
            acks.extend_from_slice(&chunk);
        }
        assert!(acks.starts_with(b"{\"EventType\":\"RECEIVED\""));

        let put = server
            .requests()
            .into_iter()
            .find(|r| r.path == "/putMedia")
            .expect("PutMedia sent");
        assert_eq!(put.body, b"first-second-third");
        assert_eq!(put.header("transfer-encoding"), Some("chunked"));
        assert_eq!(put.header("connection"), Some("keep-alive"));
        assert_eq!(
            put.header("x-amzn-stream-arn"),
            Some("arn:aws:kinesisvideo:us-east-1:1:stream/cam/1")
        );
        assert_eq!(
            put.header("x-amzn-fragment-timecode-type"),
            Some("RELATIVE")
        );
        assert_eq!(
            put.header("x-amzn-producer-start-timestamp"),
            Some("1795268499.731")
        );
        assert_eq!(
            put.header("x-amzn-fragment-acknowledgment-required"),
            Some("1")
        );
        assert_eq!(put.header("x-amz-security-token"), Some("TOKEN"));
        assert!(put.header("x-amz-content-sha256").is_none());
        assert_eq!(
            put.header("user-agent"),
            Some(format!("{} my-camera/2", default_user_agent()).as_str())
        );
        let auth = put.header("authorization").expect("signed");
        assert!(
            auth.contains(
                "SignedHeaders=connection;host;transfer-encoding;user-agent;x-amz-date;\
                 x-amzn-fragment-acknowledgment-required;x-amzn-fragment-timecode-type;\
                 x-amzn-producer-start-timestamp;x-amzn-stream-arn,"
            ),
            "{auth}"
        );
    }
}
