//! Archived media: ListFragments and GetMediaForFragmentList.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Response};
use rand::seq::SliceRandom;
use serde_json::json;

use super::control::resolve_stream;
use super::get_media::parse_fragment_number;
use super::input::constraint;
use super::{Input, epoch_seconds, json_response};
use crate::app::App;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::fragment_id::fragment_number;
use crate::media::{DocumentKind, FragmentLabel, fragment_document, fragment_list_error};
use crate::store::FragmentMeta;
use crate::streams::StreamHandle;

/// Most fragments in one GetMediaForFragmentList request and one ListFragments page.
pub const MAX_FRAGMENTS: usize = 1000;

fn archived_stream(app: &App, input: &Input) -> Result<Arc<StreamHandle>, ApiError> {
    let stream = resolve_stream(app, input)?;
    if stream.retention_hours() == 0 {
        return Err(ApiError::no_data_retention(format!(
            "stream '{}' does not retain data (DataRetentionInHours is 0)",
            stream.record().name
        )));
    }
    Ok(stream)
}

fn fragment_json(m: &FragmentMeta) -> serde_json::Value {
    json!({
        "FragmentNumber": fragment_number(m.seq, m.server_ts_ms),
        "FragmentSizeInBytes": m.cluster_len,
        "ProducerTimestamp": epoch_seconds(m.producer_ts_ms),
        "ServerTimestamp": epoch_seconds(m.server_ts_ms),
        "FragmentLengthInMilliseconds": m.duration_ms,
    })
}

pub async fn list_fragments(
    app: &Arc<App>,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let max = input
        .opt_int_range("MaxResults", 1, MAX_FRAGMENTS as i64)?
        .unwrap_or(MAX_FRAGMENTS as i64) as usize;
    let after = match input.opt_str_len("NextToken", 1, 4096)? {
        Some(t) => Some(
            URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("seq:").and_then(|n| n.parse::<u64>().ok()))
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "NextToken '{t}' is not a token this server issued"
                    ))
                })?,
        ),
        None => None,
    };
    let range = match input.opt_object("FragmentSelector")? {
        Some(sel) => {
            let kind = sel.req_str("FragmentSelectorType")?;
            let producer = match kind {
                "PRODUCER_TIMESTAMP" => true,
                "SERVER_TIMESTAMP" => false,
                other => {
                    return Err(constraint(
                        "FragmentSelector.FragmentSelectorType",
                        other,
                        "Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
                    ));
                }
            };
            let range = sel.opt_object("TimestampRange")?.ok_or_else(|| {
                ApiError::invalid_argument("FragmentSelector.TimestampRange is required")
            })?;
            let start = range.opt_timestamp_ms("StartTimestamp")?.ok_or_else(|| {
                ApiError::invalid_argument("TimestampRange.StartTimestamp is required")
            })?;
            let end = range.opt_timestamp_ms("EndTimestamp")?.ok_or_else(|| {
                ApiError::invalid_argument("TimestampRange.EndTimestamp is required")
            })?;
            if end < start {
                return Err(ApiError::invalid_argument(
                    "TimestampRange.EndTimestamp is before TimestampRange.StartTimestamp",
                ));
            }
            Some((producer, start, end))
        }
        None => None,
    };
    let stream = archived_stream(app, &input)?;
    let id = stream.id;
    let all = app
        .blocking(move |s| s.fragments_after(id, after, usize::MAX))
        .await?;
    let mut matching = all.into_iter().filter(|m| match range {
        Some((producer, start, end)) => {
            let ts = if producer {
                m.producer_ts_ms
            } else {
                m.server_ts_ms
            };
            ts >= start && ts <= end
        }
        None => true,
    });
    let mut page: Vec<FragmentMeta> = matching.by_ref().take(max).collect();
    let more = matching.next().is_some();
    let next_token = match (more, page.last()) {
        (true, Some(last)) => Some(URL_SAFE_NO_PAD.encode(format!("seq:{}", last.seq))),
        _ => None,
    };
    if !app.config.ordered_list_fragments {
        // The service returns fragments in no particular order; clients must sort. Do the same so they do.
        page.shuffle(&mut rand::rng());
    }
    let mut out = json!({ "Fragments": page.iter().map(fragment_json).collect::<Vec<_>>() });
    if let Some(t) = next_token {
        out["NextToken"] = json!(t);
    }
    Ok(json_response(&out))
}

pub async fn get_media_for_fragment_list(
    app: Arc<App>,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let numbers = input
        .opt_string_list("Fragments")?
        .ok_or_else(|| ApiError::invalid_argument("Fragments is required"))?;
    if numbers.is_empty() || numbers.len() > MAX_FRAGMENTS {
        return Err(constraint(
            "Fragments",
            &numbers.len().to_string(),
            "Member must have between 1 and 1000 items",
        ));
    }
    let seqs = numbers
        .iter()
        .map(|n| parse_fragment_number("Fragments", n))
        .collect::<Result<Vec<_>, _>>()?;
    // A number that is not of this server's shape names no fragment: look up an impossible sequence number.
    let seqs: Vec<u64> = seqs.into_iter().map(|s| s.unwrap_or(u64::MAX)).collect();
    let stream = archived_stream(&app, &input)?;
    let id = stream.id;
    let lookup = seqs.clone();
    let metas = app
        .blocking(move |s| {
            lookup
                .iter()
                .map(|seq| s.fragment(id, *seq))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut found = Vec::with_capacity(metas.len());
    for (meta, number) in metas.into_iter().zip(&numbers) {
        match meta {
            Some(m) if fragment_number(m.seq, m.server_ts_ms) == *number => found.push(m),
            _ => {
                return Err(ApiError::not_found(format!(
                    "fragment {number} does not exist in the stream"
                )));
            }
        }
    }
    let (tx, body) = ResponseBody::channel();
    tokio::spawn(async move {
        for meta in found {
            let read = app
                .blocking(move |s| Ok((s.header(id, meta.header_id)?, s.read_fragment(id, &meta)?)))
                .await;
            let number = fragment_number(meta.seq, meta.server_ts_ms);
            let (header, data): (Bytes, Bytes) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, fragment = %number, "GetMediaForFragmentList cannot read a fragment");
                    let message = format!("cannot read the fragment: {e}");
                    let _ = tx.send(fragment_list_error(&number, 5000, &message)).await;
                    return;
                }
            };
            let label = FragmentLabel {
                number: &number,
                server_ts_ms: meta.server_ts_ms,
                producer_ts_ms: meta.producer_ts_ms,
            };
            for piece in fragment_document(&header, &label, &data, DocumentKind::FragmentList) {
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/webm"),
    );
    Ok(r)
}
