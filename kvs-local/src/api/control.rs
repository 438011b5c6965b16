//! The control plane: streams, their versions, retention, tags, storage configuration and data endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Response;
use rand::Rng;
use serde_json::{Value, json};

use super::input::{check_name, constraint};
use super::{Input, Operation, empty_response, epoch_seconds, json_response};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::store::StreamRecord;
use crate::streams::StreamHandle;

/// Tags per stream, as the service limits them.
pub const MAX_TAGS: usize = 50;
/// Longest retention accepted (the service's maximum, 10 years).
pub const MAX_RETENTION_HOURS: i64 = 87_600;

const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

pub async fn handle(
    app: &Arc<App>,
    op: Operation,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    use Operation::*;
    match op {
        DescribeStream => describe_stream(app, &input),
        ListStreams => list_streams(app, &input),
        GetDataEndpoint => get_data_endpoint(app, &input),
        ListTagsForStream => list_tags_for_stream(app, &input),
        ListTagsForResource => list_tags_for_resource(app, &input),
        DescribeStreamStorageConfiguration => describe_storage(app, &input),
        _ => {
            let _serial = app.control.lock().await;
            match op {
                CreateStream => create_stream(app, &input).await,
                DeleteStream => delete_stream(app, &input).await,
                UpdateStream => update_stream(app, &input).await,
                UpdateDataRetention => update_data_retention(app, &input).await,
                TagStream => tag_stream(app, &input).await,
                UntagStream => untag_stream(app, &input).await,
                TagResource => tag_resource(app, &input).await,
                UntagResource => untag_resource(app, &input).await,
                UpdateStreamStorageConfiguration => update_storage(app, &input).await,
                other => Err(ApiError::internal(format!(
                    "{other:?} is not a control-plane operation"
                ))),
            }
        }
    }
}

/// A new opaque resource version, as the service issues them (20 alphanumeric characters).
pub(crate) fn new_version() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn is_arn(s: &str) -> bool {
    // arn:[a-z\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    let lower_digits = |x: &str, extra: u8| {
        !x.is_empty()
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == extra)
    };
    let res: Vec<&str> = resource.split('/').collect();
    *arn == "arn"
        && lower_digits(partition, b'-')
        && *service == "kinesisvideo"
        && lower_digits(region, b'-')
        && !account.is_empty()
        && account.bytes().all(|b| b.is_ascii_digit())
        && res.len() == 3
        && !res[0].is_empty()
        && res[0].bytes().all(|b| b.is_ascii_lowercase())
        && super::input::is_name(res[1])
        && !res[2].is_empty()
        && res[2].bytes().all(|b| b.is_ascii_digit())
}

/// Checks an ARN member.
pub fn check_arn(member: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 1024 {
        return Err(constraint(
            member,
            value,
            "Member must have length between 1 and 1024",
        ));
    }
    if !is_arn(value) {
        return Err(constraint(
            member,
            value,
            "Member must satisfy regular expression pattern: \
             arn:[a-z\\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+",
        ));
    }
    Ok(())
}

/// The stream a request names by StreamName or StreamARN (exactly one of them, or both naming the same stream).
pub fn resolve_stream(app: &App, input: &Input) -> Result<Arc<StreamHandle>, ApiError> {
    let name = input.opt_str("StreamName")?;
    let arn = input.opt_str("StreamARN")?;
    resolve_by(app, name, arn)
}

/// Looks a stream up by name and/or ARN.
pub fn resolve_by(
    app: &App,
    name: Option<&str>,
    arn: Option<&str>,
) -> Result<Arc<StreamHandle>, ApiError> {
    if let Some(n) = name {
        check_name("StreamName", n, 256)?;
    }
    if let Some(a) = arn {
        check_arn("StreamARN", a)?;
    }
    let handle = match (name, arn) {
        (None, None) => {
            return Err(ApiError::invalid_argument(
                "Either StreamName or StreamARN must be specified",
            ));
        }
        (Some(n), None) => app.registry.get(n),
        (None, Some(a)) => app.registry.by_arn(a),
        (Some(n), Some(a)) => {
            let h = app.registry.get(n);
            if let Some(h) = &h
                && h.record().arn != a
            {
                return Err(ApiError::invalid_argument(format!(
                    "StreamName '{n}' and StreamARN '{a}' name different streams"
                )));
            }
            h
        }
    };
    handle.ok_or_else(|| {
        let what = name.map_or_else(
            || format!("with ARN {}", arn.unwrap_or("")),
            |n| format!("'{n}'"),
        );
        ApiError::not_found(format!("The stream {what} does not exist"))
    })
}

fn stream_info(rec: &StreamRecord) -> Value {
    json!({
        "DeviceName": rec.device_name,
        "StreamName": rec.name,
        "StreamARN": rec.arn,
        "MediaType": rec.media_type,
        "KmsKeyId": rec.kms_key_id,
        "Version": rec.version,
        "Status": "ACTIVE",
        "CreationTime": epoch_seconds(rec.creation_time_ms),
        "DataRetentionInHours": rec.retention_hours,
    })
}

fn check_media_type(value: &str) -> Result<(), ApiError> {
    // [\w\-\.\+]+/[\w\-\.\+]+(,[\w\-\.\+]+/[\w\-\.\+]+)*
    let word = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
    };
    let ok = value.split(',').all(|part| match part.split_once('/') {
        Some((a, b)) => word(a) && word(b),
        None => false,
    });
    if value.chars().count() > 128 || !ok {
        return Err(constraint(
            "MediaType",
            value,
            "Member must satisfy regular expression pattern: [\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+(,[\\w\\-\\.\\+]+/[\\w\\-\\.\\+]+)*",
        ));
    }
    Ok(())
}

fn check_tag(key: &str, value: &str) -> Result<(), ApiError> {
    check_tag_members(key, value, "Tags.key", "Tags.value")
}

/// Checks a tag against the reference's limits; the members named in the error differ between the stream
/// operations (a map) and the resource operations (a list of Key/Value).
pub(crate) fn check_tag_members(
    key: &str,
    value: &str,
    key_member: &str,
    value_member: &str,
) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c);
    let n = key.chars().count();
    if n == 0 || n > 128 || !key.chars().all(allowed) {
        return Err(constraint(
            key_member,
            key,
            "Member must have length between 1 and 128 and match [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*",
        ));
    }
    if value.chars().count() > 256 || !value.chars().all(allowed) {
        return Err(constraint(
            value_member,
            value,
            "Member must have length at most 256 and match [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*",
        ));
    }
    Ok(())
}

fn check_storage_config(input: &Input) -> Result<String, ApiError> {
    let tier = input.req_str("DefaultStorageTier")?;
    if tier != "HOT" && tier != "WARM" {
        return Err(constraint(
            "StreamStorageConfiguration.DefaultStorageTier",
            tier,
            "Member must satisfy enum value set: [HOT, WARM]",
        ));
    }
    Ok(tier.to_owned())
}

async fn persist(app: &App, rec: &StreamRecord) -> Result<(), ApiError> {
    let rec = rec.clone();
    app.blocking(move |s| s.put_stream(&rec)).await?;
    Ok(())
}

async fn create_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let name = input.req_str("StreamName")?;
    check_name("StreamName", name, 256)?;
    let device_name = input.opt_str("DeviceName")?;
    if let Some(d) = device_name {
        check_name("DeviceName", d, 128)?;
    }
    let media_type = input.opt_str("MediaType")?;
    if let Some(m) = media_type {
        check_media_type(m)?;
    }
    let kms = input.opt_str_len("KmsKeyId", 1, 2048)?;
    let retention = input
        .opt_int_range("DataRetentionInHours", 0, MAX_RETENTION_HOURS)?
        .unwrap_or(0);
    let tags = input.opt_string_map("Tags")?.unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(ApiError::tags_limit(format!(
            "{} tags exceed the limit of {MAX_TAGS} tags per stream",
            tags.len()
        )));
    }
    for (k, v) in &tags {
        check_tag(k, v)?;
    }
    let tier = match input.opt_object("StreamStorageConfiguration")? {
        Some(c) => check_storage_config(&c)?,
        None => "HOT".to_owned(),
    };
    if app.registry.get(name).is_some() {
        return Err(ApiError::in_use(format!(
            "The stream '{name}' already exists"
        )));
    }
    let id = app.blocking(|s| s.next_stream_id()).await?;
    let created = now_ms();
    let rec = StreamRecord {
        id,
        name: name.to_owned(),
        arn: format!(
            "arn:aws:kinesisvideo:{}:{}:stream/{name}/{created}",
            app.config.region, app.config.account_id
        ),
        device_name: device_name.map(str::to_owned),
        media_type: media_type.map(str::to_owned),
        kms_key_id: kms.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "arn:aws:kms:{}:{}:alias/aws/kinesisvideo",
                app.config.region, app.config.account_id
            )
        }),
        version: new_version(),
        creation_time_ms: created,
        retention_hours: retention as u64,
        tags,
        storage_tier: tier,
    };
    persist(app, &rec).await?;
    let arn = rec.arn.clone();
    app.registry.insert(Arc::new(StreamHandle::new(rec, 0)));
    tracing::info!(stream = name, %arn, retention_hours = retention, "stream created");
    Ok(json_response(&json!({ "StreamARN": arn })))
}

fn describe_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let h = resolve_stream(app, input)?;
    Ok(json_response(
        &json!({ "StreamInfo": stream_info(&h.record()) }),
    ))
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "NextToken '{token}' is not a token this server issued"
            ))
        })
}

fn encode_token(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

fn list_streams(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let max = input
        .opt_int_range("MaxResults", 1, 10_000)?
        .unwrap_or(10_000) as usize;
    let after = match input.opt_str_len("NextToken", 0, 512)? {
        Some(t) if !t.is_empty() => Some(decode_token(t)?),
        _ => None,
    };
    let prefix = super::input::name_condition(input, "StreamNameCondition")?;
    let mut records: Vec<StreamRecord> = app
        .registry
        .all()
        .iter()
        .map(|h| h.record())
        .filter(|r| prefix.as_deref().is_none_or(|p| r.name.starts_with(p)))
        .filter(|r| after.as_deref().is_none_or(|a| r.name.as_str() > a))
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let more = records.len() > max;
    records.truncate(max);
    let mut out = json!({ "StreamInfoList": records.iter().map(stream_info).collect::<Vec<_>>() });
    if more && let Some(last) = records.last() {
        out["NextToken"] = Value::String(encode_token(&last.name));
    }
    Ok(json_response(&out))
}

fn check_version(member: &str, current: &str, given: &str) -> Result<(), ApiError> {
    if given.is_empty() || given.len() > 64 || !given.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(constraint(
            member,
            given,
            "Member must have length between 1 and 64 and satisfy regular expression pattern: [a-zA-Z0-9]+",
        ));
    }
    if given != current {
        return Err(ApiError::version_mismatch(format!(
            "{member} '{given}' is not the stream's current version"
        )));
    }
    Ok(())
}

async fn delete_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("StreamARN")?;
    let h = resolve_by(app, None, Some(arn))?;
    let rec = h.record();
    if let Some(v) = input.opt_str("CurrentVersion")? {
        check_version("CurrentVersion", &rec.version, v)?;
    }
    h.mark_deleted();
    app.registry.remove(&rec.name);
    app.store.delete_stream(h.id).await?;
    tracing::info!(stream = %rec.name, "stream deleted");
    Ok(empty_response())
}

async fn update_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let h = resolve_stream(app, input)?;
    let version = input.req_str("CurrentVersion")?;
    let device_name = input.opt_str("DeviceName")?;
    if let Some(d) = device_name {
        check_name("DeviceName", d, 128)?;
    }
    let media_type = input.opt_str("MediaType")?;
    if let Some(m) = media_type {
        check_media_type(m)?;
    }
    let mut rec = h.record();
    check_version("CurrentVersion", &rec.version, version)?;
    if let Some(d) = device_name {
        rec.device_name = Some(d.to_owned());
    }
    if let Some(m) = media_type {
        rec.media_type = Some(m.to_owned());
    }
    rec.version = new_version();
    persist(app, &rec).await?;
    h.set_record(rec);
    Ok(empty_response())
}

async fn update_data_retention(
    app: &App,
    input: &Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let h = resolve_stream(app, input)?;
    let version = input.req_str("CurrentVersion")?;
    let operation = input.req_str("Operation")?;
    let change = input
        .opt_int_range("DataRetentionChangeInHours", 1, MAX_RETENTION_HOURS)?
        .ok_or_else(|| ApiError::invalid_argument("DataRetentionChangeInHours is required"))?;
    let mut rec = h.record();
    check_version("CurrentVersion", &rec.version, version)?;
    let current = rec.retention_hours as i64;
    let new = match operation {
        "INCREASE_DATA_RETENTION" => current + change,
        "DECREASE_DATA_RETENTION" => current - change,
        other => {
            return Err(constraint(
                "Operation",
                other,
                "Member must satisfy enum value set: [INCREASE_DATA_RETENTION, DECREASE_DATA_RETENTION]",
            ));
        }
    };
    if !(0..=MAX_RETENTION_HOURS).contains(&new) {
        return Err(ApiError::invalid_argument(format!(
            "the stream's retention of {current} hours changed by {change} hours would be {new} hours, outside 0 to \
             {MAX_RETENTION_HOURS}"
        )));
    }
    rec.retention_hours = new as u64;
    rec.version = new_version();
    persist(app, &rec).await?;
    h.set_record(rec);
    Ok(empty_response())
}

fn get_data_endpoint(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let api = input.req_str("APIName")?;
    if !API_NAMES.contains(&api) {
        return Err(constraint(
            "APIName",
            api,
            &format!(
                "Member must satisfy enum value set: [{}]",
                API_NAMES.join(", ")
            ),
        ));
    }
    resolve_stream(app, input)?;
    let endpoint = app.config.advertised_url.as_deref().unwrap_or(&app.url);
    Ok(json_response(&json!({ "DataEndpoint": endpoint })))
}

fn tags_response(tags: &BTreeMap<String, String>) -> Response<ResponseBody> {
    json_response(&json!({ "Tags": tags }))
}

fn check_next_token(input: &Input) -> Result<(), ApiError> {
    input.opt_str_len("NextToken", 0, 512)?;
    Ok(())
}

fn list_tags_for_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    check_next_token(input)?;
    let h = resolve_stream(app, input)?;
    Ok(tags_response(&h.record().tags))
}

fn list_tags_for_resource(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    check_next_token(input)?;
    let arn = input.req_str("ResourceARN")?;
    check_arn("ResourceARN", arn)?;
    let h = resolve_by(app, None, Some(arn))?;
    Ok(tags_response(&h.record().tags))
}

async fn add_tags(
    app: &App,
    h: &StreamHandle,
    tags: BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if tags.is_empty() {
        return Err(constraint("Tags", "{}", "Member must have at least 1 item"));
    }
    for (k, v) in &tags {
        check_tag(k, v)?;
    }
    let mut rec = h.record();
    let mut merged = rec.tags.clone();
    merged.extend(tags);
    if merged.len() > MAX_TAGS {
        return Err(ApiError::tags_limit(format!(
            "the stream would have {} tags, more than the limit of {MAX_TAGS}",
            merged.len()
        )));
    }
    rec.tags = merged;
    persist(app, &rec).await?;
    h.set_record(rec);
    Ok(())
}

async fn remove_tags(app: &App, h: &StreamHandle, keys: Vec<String>) -> Result<(), ApiError> {
    if keys.is_empty() || keys.len() > MAX_TAGS {
        return Err(constraint(
            "TagKeyList",
            &keys.len().to_string(),
            "Member must have between 1 and 50 items",
        ));
    }
    for k in &keys {
        check_tag(k, "")?;
    }
    let mut rec = h.record();
    for k in &keys {
        rec.tags.remove(k);
    }
    persist(app, &rec).await?;
    h.set_record(rec);
    Ok(())
}

async fn tag_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let tags = input
        .opt_string_map("Tags")?
        .ok_or_else(|| ApiError::invalid_argument("Tags is required"))?;
    let h = resolve_stream(app, input)?;
    add_tags(app, &h, tags).await?;
    Ok(empty_response())
}

async fn untag_stream(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let keys = input
        .opt_string_list("TagKeyList")?
        .ok_or_else(|| ApiError::invalid_argument("TagKeyList is required"))?;
    let h = resolve_stream(app, input)?;
    remove_tags(app, &h, keys).await?;
    Ok(empty_response())
}

async fn tag_resource(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ResourceARN")?;
    check_arn("ResourceARN", arn)?;
    let list = input
        .opt_array("Tags")?
        .ok_or_else(|| ApiError::invalid_argument("Tags is required"))?;
    let mut tags = BTreeMap::new();
    for item in list {
        let tag = Input::from_value(item.clone())?;
        let key = tag.req_str("Key")?;
        let value = tag.opt_str("Value")?.unwrap_or("");
        tags.insert(key.to_owned(), value.to_owned());
    }
    let h = resolve_by(app, None, Some(arn))?;
    add_tags(app, &h, tags).await?;
    Ok(empty_response())
}

async fn untag_resource(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ResourceARN")?;
    check_arn("ResourceARN", arn)?;
    let keys = input
        .opt_string_list("TagKeyList")?
        .ok_or_else(|| ApiError::invalid_argument("TagKeyList is required"))?;
    let h = resolve_by(app, None, Some(arn))?;
    remove_tags(app, &h, keys).await?;
    Ok(empty_response())
}

fn describe_storage(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let h = resolve_stream(app, input)?;
    let rec = h.record();
    Ok(json_response(&json!({
        "StreamName": rec.name,
        "StreamARN": rec.arn,
        "StreamStorageConfiguration": { "DefaultStorageTier": rec.storage_tier },
    })))
}

async fn update_storage(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let h = resolve_stream(app, input)?;
    let version = input.req_str("CurrentVersion")?;
    let config = input
        .opt_object("StreamStorageConfiguration")?
        .ok_or_else(|| ApiError::invalid_argument("StreamStorageConfiguration is required"))?;
    let tier = check_storage_config(&config)?;
    let mut rec = h.record();
    check_version("CurrentVersion", &rec.version, version)?;
    rec.storage_tier = tier;
    rec.version = new_version();
    persist(app, &rec).await?;
    h.set_record(rec);
    Ok(empty_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_follow_the_pattern() {
        assert!(is_arn(
            "arn:aws:kinesisvideo:us-east-1:123456789012:stream/cam-a/1700000000000"
        ));
        assert!(is_arn(
            "arn:aws:kinesisvideo:us-east-1:123456789012:stream/../1"
        ));
        assert!(!is_arn(
            "arn:aws:kinesis:us-east-1:123456789012:stream/cam-a/1"
        ));
        assert!(!is_arn(
            "arn:aws:kinesisvideo:us-east-1:123456789012:stream/cam-a"
        ));
        assert!(!is_arn("arn:aws:kinesisvideo:us-east-1:1234:stream/a b/1"));
    }

    #[test]
    fn media_types_and_tags() {
        assert!(check_media_type("video/h264,audio/aac").is_ok());
        assert!(check_media_type("video").is_err());
        assert!(check_media_type("video/h264,").is_err());
        assert!(check_tag("team", "video lab").is_ok());
        assert!(check_tag("", "x").is_err());
        assert!(check_tag("a\u{0}", "x").is_err());
    }
}
