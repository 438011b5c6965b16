//! Per-stream configurations: image generation, notification and the mapped resource (the signaling channel
//! whose media storage configuration stores into the stream). The stream storage configuration lives with the
//! stream record in `control`.
//!
//! kvs-local stores and describes these configurations faithfully but delivers nothing: no image reaches S3 and
//! no notification reaches SNS (the README lists this). Configurations are validated as the reference specifies,
//! so a configuration accepted here is one the service accepts.

use std::sync::Arc;

use http::Response;
use serde_json::{Map, Value, json};

use super::control::resolve_stream;
use super::input::constraint;
use super::signaling::{channel_storing_into, next_token};
use super::{Input, Operation, empty_response, json_response};
use crate::app::App;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::resources::{self, StreamConfigs, Table};
use crate::streams::StreamHandle;

/// The `Type` of a signaling channel in DescribeMappedResourceConfiguration.
pub const MAPPED_CHANNEL_TYPE: &str = "SIGNALING_CHANNEL";

/// Whether this module serves `op`.
pub fn serves(op: Operation) -> bool {
    use Operation::*;
    matches!(
        op,
        DescribeImageGenerationConfiguration
            | UpdateImageGenerationConfiguration
            | DescribeNotificationConfiguration
            | UpdateNotificationConfiguration
            | DescribeMappedResourceConfiguration
    )
}

pub async fn handle(
    app: &Arc<App>,
    op: Operation,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    use Operation::*;
    match op {
        DescribeImageGenerationConfiguration => {
            describe(app, &input, "ImageGenerationConfiguration", |c| {
                c.image_generation.clone()
            })
            .await
        }
        DescribeNotificationConfiguration => {
            describe(app, &input, "NotificationConfiguration", |c| {
                c.notification.clone()
            })
            .await
        }
        DescribeMappedResourceConfiguration => describe_mapped(app, &input).await,
        UpdateImageGenerationConfiguration => {
            let _serial = app.control.lock().await;
            let stream = resolve_stream(app, &input)?;
            let config = match input.opt_object("ImageGenerationConfiguration")? {
                Some(c) => Some(image_generation(&c, &app.config.region)?),
                None => None,
            };
            update(app, &stream, config, |c, v| c.image_generation = v).await
        }
        UpdateNotificationConfiguration => {
            let _serial = app.control.lock().await;
            let stream = resolve_stream(app, &input)?;
            let config = match input.opt_object("NotificationConfiguration")? {
                Some(c) => Some(notification(&c)?),
                None => None,
            };
            update(app, &stream, config, |c, v| c.notification = v).await
        }
        other => Err(ApiError::internal(format!(
            "{other:?} is not a stream configuration operation"
        ))),
    }
}

/// The configurations stored for a stream (empty when none).
pub async fn load_configs(app: &App, stream_arn: &str) -> Result<StreamConfigs, ApiError> {
    let key = stream_arn.to_owned();
    let got: Option<StreamConfigs> = app
        .blocking(move |s| s.with_database(|db| resources::get(db, Table::StreamConfigs, &key)))
        .await?;
    Ok(got.unwrap_or_default())
}

/// Stores a stream's configurations (the row is removed when none is left).
pub async fn save_configs(
    app: &App,
    stream_arn: &str,
    configs: StreamConfigs,
) -> Result<(), ApiError> {
    let key = stream_arn.to_owned();
    app.blocking(move |s| {
        let value = (!configs.is_empty()).then_some(&configs);
        s.with_database(|db| resources::put(db, Table::StreamConfigs, &key, value))
    })
    .await?;
    Ok(())
}

async fn describe(
    app: &App,
    input: &Input,
    member: &str,
    pick: impl FnOnce(&StreamConfigs) -> Option<Value>,
) -> Result<Response<ResponseBody>, ApiError> {
    let stream = resolve_stream(app, input)?;
    let configs = load_configs(app, &stream.record().arn).await?;
    let mut out = Map::new();
    if let Some(v) = pick(&configs) {
        out.insert(member.to_owned(), v);
    }
    Ok(json_response(&Value::Object(out)))
}

async fn update(
    app: &App,
    stream: &StreamHandle,
    config: Option<Value>,
    set: impl FnOnce(&mut StreamConfigs, Option<Value>),
) -> Result<Response<ResponseBody>, ApiError> {
    let rec = stream.record();
    // Removing a configuration needs no retention; delivering images or notifications does.
    if config.is_some() && rec.retention_hours == 0 {
        return Err(ApiError::no_data_retention(format!(
            "the stream '{}' has a data retention of 0 hours",
            rec.name
        )));
    }
    let mut configs = load_configs(app, &rec.arn).await?;
    set(&mut configs, config);
    save_configs(app, &rec.arn, configs).await?;
    Ok(empty_response())
}

fn enum_member(
    input: &Input,
    path: &str,
    name: &str,
    allowed: &[&str],
) -> Result<String, ApiError> {
    let v = input
        .opt_str(name)?
        .ok_or_else(|| ApiError::invalid_argument(format!("{path}.{name} is required")))?;
    if !allowed.contains(&v) {
        return Err(constraint(
            &format!("{path}.{name}"),
            v,
            &format!(
                "Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ),
        ));
    }
    Ok(v.to_owned())
}

/// `^[a-zA-Z_0-9]+:(//)?...`: a scheme, a colon, then no `*`; 1 to 255 characters.
fn check_destination_uri(member: &str, uri: &str) -> Result<(), ApiError> {
    let ok = match uri.split_once(':') {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !rest.contains('*')
        }
        None => false,
    };
    let n = uri.chars().count();
    if n == 0 || n > 255 {
        return Err(constraint(
            member,
            uri,
            "Member must have length between 1 and 255",
        ));
    }
    if !ok {
        return Err(constraint(
            member,
            uri,
            "Member must satisfy regular expression pattern: ^[a-zA-Z_0-9]+:(//)?([^/]+)?/?([^*]*)$",
        ));
    }
    Ok(())
}

/// `^[a-z]+(-[a-z]+)?-[a-z]+-[0-9]$`, 9 to 14 characters.
fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let letters = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let shape = match parts.as_slice() {
        [a, b, d] => {
            letters(a) && letters(b) && d.len() == 1 && d.bytes().all(|x| x.is_ascii_digit())
        }
        [a, b, c, d] => {
            letters(a)
                && letters(b)
                && letters(c)
                && d.len() == 1
                && d.bytes().all(|x| x.is_ascii_digit())
        }
        _ => false,
    };
    (9..=14).contains(&s.len()) && shape
}

fn image_generation(input: &Input, region: &str) -> Result<Value, ApiError> {
    const P: &str = "ImageGenerationConfiguration";
    let status = enum_member(input, P, "Status", &["ENABLED", "DISABLED"])?;
    let selector = enum_member(
        input,
        P,
        "ImageSelectorType",
        &["SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"],
    )?;
    let format = enum_member(input, P, "Format", &["JPEG", "PNG"])?;
    let dest = input
        .opt_object("DestinationConfig")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{P}.DestinationConfig is required")))?;
    let uri = dest.req_str("Uri").map_err(|_| {
        ApiError::invalid_argument(format!("{P}.DestinationConfig.Uri is required"))
    })?;
    check_destination_uri(&format!("{P}.DestinationConfig.Uri"), uri)?;
    let dest_region = dest.req_str("DestinationRegion").map_err(|_| {
        ApiError::invalid_argument(format!(
            "{P}.DestinationConfig.DestinationRegion is required"
        ))
    })?;
    if !is_region(dest_region) {
        return Err(constraint(
            &format!("{P}.DestinationConfig.DestinationRegion"),
            dest_region,
            "Member must have length between 9 and 14 and satisfy regular expression pattern: \
             ^[a-z]+(-[a-z]+)?-[a-z]+-[0-9]$",
        ));
    }
    if dest_region != region {
        return Err(ApiError::invalid_argument(format!(
            "DestinationRegion '{dest_region}' must be the stream's region '{region}'"
        )));
    }
    let interval = input
        .opt_i64("SamplingInterval")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{P}.SamplingInterval is required")))?;
    if interval < 200 {
        return Err(constraint(
            &format!("{P}.SamplingInterval"),
            &interval.to_string(),
            "Member must have value greater than or equal to 200",
        ));
    }
    let mut out = json!({
        "Status": status,
        "ImageSelectorType": selector,
        "DestinationConfig": { "Uri": uri, "DestinationRegion": dest_region },
        "SamplingInterval": interval,
        "Format": format,
    });
    if let Some(fc) = input.opt_string_map("FormatConfig")? {
        if fc.is_empty() || fc.len() > 1 {
            return Err(constraint(
                &format!("{P}.FormatConfig"),
                &fc.len().to_string(),
                "Member must have between 1 and 1 entries",
            ));
        }
        for (k, v) in &fc {
            if k != "JPEGQuality" {
                return Err(constraint(
                    &format!("{P}.FormatConfig"),
                    k,
                    "Map keys must satisfy enum value set: [JPEGQuality]",
                ));
            }
            let quality_ok = v.parse::<u32>().is_ok_and(|q| (1..=100).contains(&q));
            if !quality_ok {
                return Err(constraint(
                    &format!("{P}.FormatConfig.JPEGQuality"),
                    v,
                    "Member must be an integer from 1 to 100",
                ));
            }
        }
        out["FormatConfig"] = json!(fc);
    }
    for (name, max) in [("HeightPixels", 2160), ("WidthPixels", 3840)] {
        if let Some(n) = input
            .opt_int_range(name, 1, max)
            .map_err(|e| rename(e, name, &format!("{P}.{name}")))?
        {
            out[name] = json!(n);
        }
    }
    Ok(out)
}

fn rename(mut e: ApiError, from: &str, to: &str) -> ApiError {
    e.message = e.message.replace(&format!("'{from}'"), &format!("'{to}'"));
    e
}

fn notification(input: &Input) -> Result<Value, ApiError> {
    const P: &str = "NotificationConfiguration";
    let status = enum_member(input, P, "Status", &["ENABLED", "DISABLED"])?;
    let dest = input
        .opt_object("DestinationConfig")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{P}.DestinationConfig is required")))?;
    let uri = dest.req_str("Uri").map_err(|_| {
        ApiError::invalid_argument(format!("{P}.DestinationConfig.Uri is required"))
    })?;
    check_destination_uri(&format!("{P}.DestinationConfig.Uri"), uri)?;
    Ok(json!({ "Status": status, "DestinationConfig": { "Uri": uri } }))
}

async fn describe_mapped(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    input.opt_int_range("MaxResults", 1, 1)?;
    let after = next_token(input)?;
    let stream = resolve_stream(app, input)?;
    let arn = stream.record().arn;
    let mut list = Vec::new();
    // One channel at most stores into a stream, so a second page is always empty.
    if after.is_none()
        && let Some(channel) = channel_storing_into(app, &arn).await?
    {
        list.push(json!({ "Type": MAPPED_CHANNEL_TYPE, "ARN": channel.arn }));
    }
    Ok(json_response(
        &json!({ "MappedResourceConfigurationList": list }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_uris_follow_the_patterns() {
        assert!(is_region("us-east-1"));
        assert!(is_region("us-gov-west-1"));
        assert!(!is_region("us-east-10"));
        assert!(!is_region("USEAST1"));
        assert!(check_destination_uri("U", "s3://bucket/prefix").is_ok());
        assert!(check_destination_uri("U", "arn:aws:sns:us-east-1:123456789012:topic").is_ok());
        assert!(check_destination_uri("U", "s3://bucket/*").is_err());
        assert!(check_destination_uri("U", "no-scheme").is_err());
        assert!(check_destination_uri("U", "").is_err());
    }

    #[test]
    fn image_generation_is_checked_and_normalised() {
        let input = Input::parse(
            br#"{"Status":"ENABLED","ImageSelectorType":"SERVER_TIMESTAMP","Format":"JPEG",
                 "DestinationConfig":{"Uri":"s3://b/p","DestinationRegion":"us-east-1"},
                 "SamplingInterval":3000,"FormatConfig":{"JPEGQuality":"80"},"WidthPixels":640,"Extra":1}"#,
        )
        .unwrap();
        let v = image_generation(&input, "us-east-1").unwrap();
        assert_eq!(v["FormatConfig"]["JPEGQuality"], "80");
        assert_eq!(v["WidthPixels"], 640);
        assert!(v.get("Extra").is_none(), "unknown members are not stored");
        let e = image_generation(&input, "eu-west-1").unwrap_err();
        assert!(e.message.contains("DestinationRegion"), "{}", e.message);
        let low = Input::parse(
            br#"{"Status":"ENABLED","ImageSelectorType":"SERVER_TIMESTAMP","Format":"PNG",
                 "DestinationConfig":{"Uri":"s3://b/p","DestinationRegion":"us-east-1"},"SamplingInterval":199}"#,
        )
        .unwrap();
        let e = image_generation(&low, "us-east-1").unwrap_err();
        assert!(e.message.contains("SamplingInterval"), "{}", e.message);
    }
}
