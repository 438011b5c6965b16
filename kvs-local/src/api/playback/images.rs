//! GetImages: JPEG or PNG images of a stream at a sampling interval over at most 300 seconds, in pages of at most
//! 25, with `NO_MEDIA` where no fragment covers a time and `MEDIA_ERROR` where its frame cannot be decoded.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::{TimestampKind, archived_stream, parse_header, read_fragment, retime_cluster};
use crate::api::input::constraint;
use crate::api::{Input, epoch_seconds, json_response};
use crate::app::App;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::remux::{self, ImageFormat, ImageSize};
use crate::store::FragmentMeta;

/// Longest time range of one request.
pub const MAX_RANGE_MS: u64 = 300_000;
/// Most images in one response, whatever MaxResults says.
pub const PAGE_LIMIT: usize = 25;
pub const DEFAULT_SAMPLING_MS: u64 = 3000;
pub const MIN_SAMPLING_MS: u64 = 200;
const DEFAULT_JPEG_QUALITY: u32 = 80;

struct Request {
    kind: TimestampKind,
    start_ms: u64,
    end_ms: u64,
    interval_ms: u64,
    format: ImageFormat,
    size: ImageSize,
    page: usize,
    from: usize,
}

fn parse(input: &Input) -> Result<Request, ApiError> {
    let kind = match input.req_str("ImageSelectorType")? {
        "PRODUCER_TIMESTAMP" => TimestampKind::Producer,
        "SERVER_TIMESTAMP" => TimestampKind::Server,
        other => {
            return Err(constraint(
                "ImageSelectorType",
                other,
                "Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
            ));
        }
    };
    let start_ms = input
        .opt_timestamp_ms("StartTimestamp")?
        .ok_or_else(|| ApiError::invalid_argument("StartTimestamp is required"))?;
    let end_ms = input
        .opt_timestamp_ms("EndTimestamp")?
        .ok_or_else(|| ApiError::invalid_argument("EndTimestamp is required"))?;
    if end_ms < start_ms {
        return Err(ApiError::invalid_argument(
            "EndTimestamp must not be before StartTimestamp",
        ));
    }
    if end_ms - start_ms > MAX_RANGE_MS {
        return Err(ApiError::invalid_argument(format!(
            "the time range spans {} ms; it can be at most 300 seconds",
            end_ms - start_ms
        )));
    }
    let quality = match input.opt_string_map("FormatConfig")? {
        Some(map) => {
            if let Some(k) = map.keys().find(|k| *k != "JPEGQuality") {
                return Err(constraint(
                    "FormatConfig",
                    k,
                    "Map keys must satisfy enum value set: [JPEGQuality]",
                ));
            }
            match map.get("JPEGQuality") {
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or_else(|| {
                        ApiError::invalid_argument(format!(
                            "FormatConfig JPEGQuality '{v}' must be an integer from 1 to 100"
                        ))
                    })?,
                None => DEFAULT_JPEG_QUALITY,
            }
        }
        None => DEFAULT_JPEG_QUALITY,
    };
    let format = match input.req_str("Format")? {
        "JPEG" => ImageFormat::Jpeg { quality },
        "PNG" => ImageFormat::Png,
        other => {
            return Err(constraint(
                "Format",
                other,
                "Member must satisfy enum value set: [JPEG, PNG]",
            ));
        }
    };
    let size = ImageSize {
        width: input
            .opt_int_range("WidthPixels", 1, 3840)?
            .map(|v| v as u32),
        height: input
            .opt_int_range("HeightPixels", 1, 2160)?
            .map(|v| v as u32),
    };
    let interval_ms = match input.opt_i64("SamplingInterval")? {
        Some(v) if v < MIN_SAMPLING_MS as i64 => {
            return Err(ApiError::invalid_argument(format!(
                "SamplingInterval {v} ms is below the minimum of {MIN_SAMPLING_MS} ms"
            )));
        }
        Some(v) => v as u64,
        None => DEFAULT_SAMPLING_MS,
    };
    let page = input
        .opt_int_range("MaxResults", 1, 100)?
        .map_or(PAGE_LIMIT, |v| (v as usize).min(PAGE_LIMIT));
    let from = match input.opt_str_len("NextToken", 1, 4096)? {
        Some(t) => STANDARD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("image:").and_then(|n| n.parse().ok()))
            .ok_or_else(|| {
                ApiError::invalid_argument(format!(
                    "NextToken '{t}' is not a token this server issued"
                ))
            })?,
        None => 0,
    };
    Ok(Request {
        kind,
        start_ms,
        end_ms,
        interval_ms,
        format,
        size,
        page,
        from,
    })
}

/// What one sampled time gives.
enum Outcome {
    Image(Vec<u8>),
    NoMedia,
    MediaError,
}

pub async fn get_images(app: Arc<App>, input: Input) -> Result<Response<ResponseBody>, ApiError> {
    let req = parse(&input)?;
    let stream = archived_stream(&app, &input)?;
    let times: Vec<u64> = (0..)
        .map(|i: u64| req.start_ms + i * req.interval_ms)
        .take_while(|t| *t <= req.end_ms)
        .collect();
    let page: Vec<u64> = times
        .iter()
        .copied()
        .skip(req.from)
        .take(req.page)
        .collect();
    let more = req.from + page.len() < times.len();

    let id = stream.id;
    let fragments = app.blocking(move |s| s.fragments(id)).await?;
    // Each time goes to the newest fragment that covers it.
    let covering = |t: u64| -> Option<FragmentMeta> {
        fragments
            .iter()
            .filter(|m| {
                let ts = req.kind.of(m);
                ts <= t && t < ts + m.duration_ms.max(1)
            })
            .max_by_key(|m| (req.kind.of(m), m.seq))
            .copied()
    };
    let mut outcomes: Vec<Outcome> = page.iter().map(|_| Outcome::NoMedia).collect();
    let mut groups: Vec<(FragmentMeta, Vec<usize>)> = Vec::new();
    for (i, t) in page.iter().enumerate() {
        if let Some(m) = covering(*t) {
            match groups.iter_mut().find(|(g, _)| g.seq == m.seq) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((m, vec![i])),
            }
        }
    }
    for (meta, indexes) in groups {
        let wanted: Vec<u64> = indexes
            .iter()
            .map(|i| page[*i] - req.kind.of(&meta))
            .collect();
        let images = fragment_images(&app, &stream, meta, wanted, req.format, req.size).await;
        match images {
            Ok(images) => {
                for (i, image) in indexes.iter().zip(images) {
                    outcomes[*i] = image.map_or(Outcome::NoMedia, Outcome::Image);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, fragment = meta.seq, "GetImages cannot decode a fragment");
                for i in indexes {
                    outcomes[i] = Outcome::MediaError;
                }
            }
        }
    }
    let images: Vec<Value> = page
        .iter()
        .zip(outcomes)
        .map(|(t, o)| match o {
            Outcome::Image(data) => {
                json!({"TimeStamp": epoch_seconds(*t), "ImageContent": STANDARD.encode(data)})
            }
            Outcome::NoMedia => json!({"TimeStamp": epoch_seconds(*t), "Error": "NO_MEDIA"}),
            Outcome::MediaError => json!({"TimeStamp": epoch_seconds(*t), "Error": "MEDIA_ERROR"}),
        })
        .collect();
    let mut out = json!({ "Images": images });
    if more {
        out["NextToken"] = json!(STANDARD.encode(format!("image:{}", req.from + page.len())));
    }
    Ok(json_response(&out))
}

async fn fragment_images(
    app: &App,
    stream: &crate::streams::StreamHandle,
    meta: FragmentMeta,
    wanted_ms: Vec<u64>,
    format: ImageFormat,
    size: ImageSize,
) -> Result<Vec<Option<Vec<u8>>>, ApiError> {
    let (header, data) = read_fragment(app, stream, meta).await?;
    let header = parse_header(header)?;
    let cluster = retime_cluster(&data, meta.cluster_len, 0)?;
    tokio::task::spawn_blocking(move || {
        remux::images(
            vec![header.raw.clone(), Bytes::from(cluster)],
            &header.tracks,
            &wanted_ms,
            format,
            size,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("the image task failed: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))
}
