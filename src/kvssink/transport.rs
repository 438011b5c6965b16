// SPDX-License-Identifier: MPL-2.0
//! The upload task's way to the service, through the shared AWS layer: the producer's start-up sequence
//! (DescribeStream, CreateStream when missing and allowed, TagStream, GetDataEndpoint) and PutMedia calls.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::upload::{AckSource, BodyStream, StreamReady, Transport};
use crate::aws::{
    ApiName, AwsError, AwsSettings, CreateStreamInput, FragmentSelector, FragmentSelectorKind,
    KvsClient, ListFragmentsInput, PutMediaParams, PutMediaResponse, StreamRef, TimecodeType,
};

/// DeviceName of streams this element creates, as the official producer names them.
const DEVICE_NAME: &str = "Kinesis_Video_Device";
/// How often and how long to poll DescribeStream while a stream is CREATING or UPDATING.
const ACTIVE_POLL: Duration = Duration::from_millis(500);
const ACTIVE_WAIT: Duration = Duration::from_secs(60);

/// What the transport needs from the element's settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub aws: AwsSettings,
    pub stream: StreamRef,
    pub allow_create: bool,
    pub retention_hours: u32,
    /// `content-type` when set by the user; otherwise the media type derived from the tracks is used.
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub timecode_type: TimecodeType,
    pub ack_required: bool,
}

pub struct AwsTransport {
    client: KvsClient,
    cfg: TransportConfig,
}

impl AwsTransport {
    /// Builds the client (resolves region, endpoint and credential source; sends nothing).
    pub fn new(cfg: TransportConfig) -> Result<AwsTransport, AwsError> {
        Ok(AwsTransport {
            client: KvsClient::new(&cfg.aws)?,
            cfg,
        })
    }
}

/// Polls DescribeStream until the stream is ACTIVE; returns its retention in hours.
async fn wait_active(client: &KvsClient, stream: &StreamRef) -> Result<Option<u32>, AwsError> {
    let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
    loop {
        let desc = client.describe_stream(stream).await?;
        match desc.status.as_str() {
            "ACTIVE" => return Ok(desc.data_retention_in_hours),
            "DELETING" => {
                return Err(AwsError::ResourceNotFound {
                    message: format!("{stream} is being deleted"),
                });
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(AwsError::Timeout(format!(
                    "{stream} is still {} after {} s",
                    desc.status,
                    ACTIVE_WAIT.as_secs()
                )));
            }
            _ => tokio::time::sleep(ACTIVE_POLL).await,
        }
    }
}

impl Transport for AwsTransport {
    fn prepare(&self, media_type: String) -> BoxFuture<'static, Result<StreamReady, AwsError>> {
        let client = self.client.clone();
        let cfg = self.cfg.clone();
        async move {
            let stream = &cfg.stream;
            let retention;
            match client.describe_stream(stream).await {
                Ok(desc) if desc.is_active() => retention = desc.data_retention_in_hours,
                Ok(_) => retention = wait_active(&client, stream).await?,
                Err(e) if e.is_not_found() => {
                    let StreamRef::Name(name) = stream else {
                        return Err(e);
                    };
                    if !cfg.allow_create {
                        return Err(AwsError::ResourceNotFound {
                            message: format!(
                                "{stream} does not exist and allow-create-stream is false ({})",
                                e.message()
                            ),
                        });
                    }
                    let input = CreateStreamInput {
                        stream_name: name.clone(),
                        device_name: Some(DEVICE_NAME.into()),
                        media_type: Some(cfg.media_type.clone().unwrap_or(media_type)),
                        kms_key_id: cfg.kms_key_id.clone(),
                        data_retention_in_hours: Some(cfg.retention_hours),
                        tags: BTreeMap::new(),
                    };
                    match client.create_stream(&input).await {
                        Ok(arn) => gst::info!(super::imp::CAT, "created {stream}: {arn}"),
                        // Another producer created it in the meantime.
                        Err(AwsError::ResourceInUse { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    retention = wait_active(&client, stream).await?;
                }
                Err(e) => return Err(e),
            }
            if !cfg.tags.is_empty() {
                client.tag_stream(stream, &cfg.tags).await?;
            }
            client.data_endpoint(stream, ApiName::PutMedia).await?;
            Ok(StreamReady {
                retains_data: retention.map(|hours| hours > 0),
            })
        }
        .boxed()
    }

    fn open(
        &self,
        producer_start_ms: Option<u64>,
        body: BodyStream,
    ) -> BoxFuture<'static, Result<Box<dyn AckSource>, AwsError>> {
        let client = self.client.clone();
        let stream = self.cfg.stream.clone();
        let params = PutMediaParams {
            timecode_type: self.cfg.timecode_type,
            producer_start_timestamp: producer_start_ms.map(|ms| ms as f64 / 1000.0),
            ack_required: self.cfg.ack_required,
        };
        async move {
            let response = client.put_media(&stream, &params, body).await?;
            Ok(Box::new(Acks(response)) as Box<dyn AckSource>)
        }
        .boxed()
    }

    fn stored_fragments(
        &self,
        start_ms: u64,
        end_ms: u64,
    ) -> BoxFuture<'static, Result<Vec<u64>, AwsError>> {
        let client = self.client.clone();
        let stream = self.cfg.stream.clone();
        async move {
            let mut out = Vec::new();
            let mut next_token = None;
            loop {
                let page = client
                    .list_fragments(&ListFragmentsInput {
                        stream: stream.clone(),
                        selector: Some(FragmentSelector {
                            kind: FragmentSelectorKind::ProducerTimestamp,
                            start: start_ms as f64 / 1000.0,
                            end: end_ms as f64 / 1000.0,
                        }),
                        max_results: Some(1000),
                        next_token: next_token.take(),
                    })
                    .await?;
                out.extend(
                    page.fragments
                        .iter()
                        .map(|f| (f.producer_timestamp * 1000.0).round() as u64),
                );
                match page.next_token {
                    Some(t) => next_token = Some(t),
                    None => return Ok(out),
                }
            }
        }
        .boxed()
    }

    fn credentials_expiry(&self) -> Option<SystemTime> {
        self.client.credentials_expiry()
    }

    fn connection_failed(&self) {
        self.client
            .invalidate_data_endpoint(&self.cfg.stream, ApiName::PutMedia);
    }
}

struct Acks(PutMediaResponse);

impl AckSource for Acks {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, AwsError>> {
        self.0.next_chunk().boxed()
    }
}
