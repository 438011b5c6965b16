//! Signaling channels: their control plane (create, describe, list, update, delete, endpoints, media storage
//! configuration, resource tags) and the two HTTPS signaling operations (GetIceServerConfig,
//! SendAlexaOfferToMaster).
//!
//! kvs-local serves no WebSocket signaling and no media server, so no master or viewer can ever connect to a
//! channel here. Every answer below is what the service gives in that situation: SendAlexaOfferToMaster answers
//! without an `Answer`, and GetIceServerConfig hands out credentials only for TURN servers the operator names
//! (`KVS_LOCAL_TURN_URIS`, `KVS_LOCAL_TURN_SECRET`), never for a relay that does not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::Response;
use serde_json::{Value, json};

use super::control::{MAX_TAGS, check_arn, resolve_by};
use super::input::{check_name, constraint};
use super::{Input, Operation, empty_response, epoch_seconds, json_response};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::resources::{self, ChannelRecord, MediaStorage, Table};

/// Message time to live when SingleMasterConfiguration does not give one (the service's default, 1 minute).
pub const DEFAULT_MESSAGE_TTL_SECONDS: i64 = 60;
/// How long the user name and password of an ICE server are valid (the reference's fixed value).
pub const ICE_CREDENTIAL_TTL_SECONDS: u64 = 300;
/// Channels a ListSignalingChannels page holds when MaxResults is absent.
const DEFAULT_LIST_MAX: i64 = 500;
/// Comma-separated `turn:`/`turns:` URIs of a TURN server that shares [`TURN_SECRET_ENV`] with kvs-local.
pub const TURN_URIS_ENV: &str = "KVS_LOCAL_TURN_URIS";
/// The TURN server's shared secret (coturn's `static-auth-secret` with `use-auth-secret`).
pub const TURN_SECRET_ENV: &str = "KVS_LOCAL_TURN_SECRET";

/// Whether this module serves `op` (resource tag operations are routed here by [`names_channel`]).
pub fn serves(op: Operation) -> bool {
    use Operation::*;
    matches!(
        op,
        CreateSignalingChannel
            | DescribeSignalingChannel
            | ListSignalingChannels
            | UpdateSignalingChannel
            | DeleteSignalingChannel
            | GetSignalingChannelEndpoint
            | DescribeMediaStorageConfiguration
            | UpdateMediaStorageConfiguration
            | GetIceServerConfig
            | SendAlexaOfferToMaster
    )
}

/// Whether a TagResource / UntagResource / ListTagsForResource request names a signaling channel.
pub fn names_channel(input: &Input) -> bool {
    matches!(input.opt_str("ResourceARN"), Ok(Some(arn)) if arn_resource_type(arn) == Some("channel"))
}

fn arn_resource_type(arn: &str) -> Option<&str> {
    arn.splitn(6, ':').nth(5)?.split('/').next()
}

pub async fn handle(
    app: &Arc<App>,
    op: Operation,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    use Operation::*;
    match op {
        DescribeSignalingChannel => describe_channel(app, &input).await,
        ListSignalingChannels => list_channels(app, &input).await,
        GetSignalingChannelEndpoint => get_endpoint(app, &input).await,
        DescribeMediaStorageConfiguration => describe_media_storage(app, &input).await,
        ListTagsForResource => list_tags(app, &input).await,
        GetIceServerConfig => get_ice_server_config(app, &input).await,
        SendAlexaOfferToMaster => send_alexa_offer(app, &input).await,
        _ => {
            let _serial = app.control.lock().await;
            match op {
                CreateSignalingChannel => create_channel(app, &input).await,
                UpdateSignalingChannel => update_channel(app, &input).await,
                DeleteSignalingChannel => delete_channel(app, &input).await,
                UpdateMediaStorageConfiguration => update_media_storage(app, &input).await,
                TagResource => tag_resource(app, &input).await,
                UntagResource => untag_resource(app, &input).await,
                other => Err(ApiError::internal(format!(
                    "{other:?} is not a signaling channel operation"
                ))),
            }
        }
    }
}

use super::control::new_version;

fn check_version(current: &str, given: &str) -> Result<(), ApiError> {
    if given.is_empty() || given.len() > 64 || !given.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(constraint(
            "CurrentVersion",
            given,
            "Member must have length between 1 and 64 and satisfy regular expression pattern: [a-zA-Z0-9]+",
        ));
    }
    if given != current {
        return Err(ApiError::version_mismatch(format!(
            "CurrentVersion '{given}' is not the signaling channel's current version"
        )));
    }
    Ok(())
}

fn check_tag(key: &str, value: &str) -> Result<(), ApiError> {
    super::control::check_tag_members(key, value, "Tags.member.Key", "Tags.member.Value")
}

/// A `Tags` list of `{Key, Value}` objects.
fn tag_list(input: &Input, member: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let Some(list) = input.opt_array(member)? else {
        return Ok(None);
    };
    if list.len() > MAX_TAGS {
        return Err(ApiError::tags_limit(format!(
            "{} tags exceed the limit of {MAX_TAGS} tags per signaling channel",
            list.len()
        )));
    }
    let mut tags = BTreeMap::new();
    for item in list {
        let tag = Input::from_value(item.clone())?;
        let key = tag.req_str("Key")?;
        let value = tag.opt_str("Value")?.unwrap_or("");
        check_tag(key, value)?;
        tags.insert(key.to_owned(), value.to_owned());
    }
    Ok(Some(tags))
}

fn message_ttl(input: &Input) -> Result<Option<u32>, ApiError> {
    let Some(config) = input.opt_object("SingleMasterConfiguration")? else {
        return Ok(None);
    };
    Ok(config
        .opt_int_range("MessageTtlSeconds", 5, 120)
        .map_err(|e| {
            rename(
                e,
                "MessageTtlSeconds",
                "SingleMasterConfiguration.MessageTtlSeconds",
            )
        })?
        .map(|n| n as u32))
}

/// Rewrites the member named in a nested structure's validation message to its full path.
fn rename(mut e: ApiError, from: &str, to: &str) -> ApiError {
    e.message = e.message.replace(&format!("'{from}'"), &format!("'{to}'"));
    e
}

fn channel_info(rec: &ChannelRecord) -> Value {
    json!({
        "ChannelName": rec.name,
        "ChannelARN": rec.arn,
        "ChannelType": rec.channel_type,
        "ChannelStatus": "ACTIVE",
        "CreationTime": epoch_seconds(rec.creation_time_ms),
        "SingleMasterConfiguration": { "MessageTtlSeconds": rec.message_ttl_seconds },
        "Version": rec.version,
    })
}

async fn load(app: &App, name: &str) -> Result<Option<ChannelRecord>, ApiError> {
    let name = name.to_owned();
    Ok(app
        .blocking(move |s| s.with_database(|db| resources::get(db, Table::Channels, &name)))
        .await?)
}

async fn save(app: &App, rec: &ChannelRecord) -> Result<(), ApiError> {
    let rec = rec.clone();
    app.blocking(move |s| {
        s.with_database(|db| resources::put(db, Table::Channels, &rec.name, Some(&rec)))
    })
    .await?;
    Ok(())
}

async fn all_channels(app: &App) -> Result<Vec<ChannelRecord>, ApiError> {
    let rows: Vec<(String, ChannelRecord)> = app
        .blocking(|s| s.with_database(|db| resources::all(db, Table::Channels)))
        .await?;
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// The channel an ARN names: the ARN's name part must name a stored channel with exactly that ARN.
pub async fn channel_by_arn(app: &App, member: &str, arn: &str) -> Result<ChannelRecord, ApiError> {
    check_arn(member, arn)?;
    let missing = || {
        ApiError::not_found(format!(
            "The signaling channel with ARN {arn} does not exist"
        ))
    };
    let name = arn.rsplit('/').nth(1).ok_or_else(missing)?;
    match load(app, name).await? {
        Some(rec) if rec.arn == arn => Ok(rec),
        _ => Err(missing()),
    }
}

/// The channel a request names by ChannelName and/or ChannelARN.
async fn resolve_channel(app: &App, input: &Input) -> Result<ChannelRecord, ApiError> {
    let name = input.opt_str("ChannelName")?;
    let arn = input.opt_str("ChannelARN")?;
    if let Some(n) = name {
        check_name("ChannelName", n, 256)?;
    }
    match (name, arn) {
        (None, None) => Err(ApiError::invalid_argument(
            "Either ChannelName or ChannelARN must be specified",
        )),
        (None, Some(a)) => channel_by_arn(app, "ChannelARN", a).await,
        (Some(n), a) => {
            if let Some(a) = a {
                check_arn("ChannelARN", a)?;
            }
            let rec = load(app, n).await?.ok_or_else(|| {
                ApiError::not_found(format!("The signaling channel '{n}' does not exist"))
            })?;
            if let Some(a) = a
                && rec.arn != a
            {
                return Err(ApiError::invalid_argument(format!(
                    "ChannelName '{n}' and ChannelARN '{a}' name different signaling channels"
                )));
            }
            Ok(rec)
        }
    }
}

async fn create_channel(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let name = input.req_str("ChannelName")?;
    check_name("ChannelName", name, 256)?;
    let channel_type = input.opt_str("ChannelType")?.unwrap_or("SINGLE_MASTER");
    match channel_type {
        "SINGLE_MASTER" => {}
        "FULL_MESH" => {
            return Err(ApiError::invalid_argument(
                "ChannelType FULL_MESH is not supported: SINGLE_MASTER is the only supported channel type",
            ));
        }
        other => {
            return Err(constraint(
                "ChannelType",
                other,
                "Member must satisfy enum value set: [SINGLE_MASTER, FULL_MESH]",
            ));
        }
    }
    let ttl = message_ttl(input)?.unwrap_or(DEFAULT_MESSAGE_TTL_SECONDS as u32);
    let tags = tag_list(input, "Tags")?.unwrap_or_default();
    if load(app, name).await?.is_some() {
        return Err(ApiError::in_use(format!(
            "The signaling channel '{name}' already exists"
        )));
    }
    let created = now_ms();
    let rec = ChannelRecord {
        name: name.to_owned(),
        arn: format!(
            "arn:aws:kinesisvideo:{}:{}:channel/{name}/{created}",
            app.config.region, app.config.account_id
        ),
        channel_type: channel_type.to_owned(),
        message_ttl_seconds: ttl,
        version: new_version(),
        creation_time_ms: created,
        tags,
        media_storage: None,
    };
    save(app, &rec).await?;
    tracing::info!(channel = name, arn = %rec.arn, "signaling channel created");
    Ok(json_response(&json!({ "ChannelARN": rec.arn })))
}

async fn describe_channel(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let rec = resolve_channel(app, input).await?;
    Ok(json_response(&json!({ "ChannelInfo": channel_info(&rec) })))
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "NextToken '{token}' is not a token this server issued"
            ))
        })
}

/// Checks a NextToken member (`[a-zA-Z0-9+/=]*`, at most 1024 characters) and decodes it.
pub fn next_token(input: &Input) -> Result<Option<String>, ApiError> {
    match input.opt_str_len("NextToken", 0, 1024)? {
        Some(t) if !t.is_empty() => {
            if !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            {
                return Err(constraint(
                    "NextToken",
                    t,
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9+/=]*",
                ));
            }
            decode_token(t).map(Some)
        }
        _ => Ok(None),
    }
}

/// A NextToken naming the last key of a page.
pub fn encode_token(key: &str) -> String {
    STANDARD.encode(key.as_bytes())
}

async fn list_channels(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let max = input
        .opt_int_range("MaxResults", 1, 10_000)?
        .unwrap_or(DEFAULT_LIST_MAX) as usize;
    let after = next_token(input)?;
    let prefix = super::input::name_condition(input, "ChannelNameCondition")?;
    // Rows come in name order from the index.
    let mut records: Vec<ChannelRecord> = all_channels(app)
        .await?
        .into_iter()
        .filter(|r| prefix.as_deref().is_none_or(|p| r.name.starts_with(p)))
        .filter(|r| after.as_deref().is_none_or(|a| r.name.as_str() > a))
        .collect();
    let more = records.len() > max;
    records.truncate(max);
    let mut out =
        json!({ "ChannelInfoList": records.iter().map(channel_info).collect::<Vec<_>>() });
    if more && let Some(last) = records.last() {
        out["NextToken"] = Value::String(encode_token(&last.name));
    }
    Ok(json_response(&out))
}

async fn update_channel(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let version = input.req_str("CurrentVersion")?;
    // "This parameter and the channel message's time-to-live are required for channels with the SINGLE_MASTER
    // channel type", the only type kvs-local creates.
    let ttl = message_ttl(input)?.ok_or_else(|| {
        ApiError::invalid_argument(
            "SingleMasterConfiguration.MessageTtlSeconds is required to update a SINGLE_MASTER channel",
        )
    })?;
    let mut rec = channel_by_arn(app, "ChannelARN", arn).await?;
    check_version(&rec.version, version)?;
    rec.message_ttl_seconds = ttl;
    rec.version = new_version();
    save(app, &rec).await?;
    Ok(empty_response())
}

async fn delete_channel(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let version = input.opt_str("CurrentVersion")?;
    let rec = channel_by_arn(app, "ChannelARN", arn).await?;
    if let Some(v) = version {
        check_version(&rec.version, v)?;
    }
    let name = rec.name.clone();
    app.blocking(move |s| {
        s.with_database(|db| resources::put::<ChannelRecord>(db, Table::Channels, &name, None))
    })
    .await?;
    tracing::info!(channel = %rec.name, "signaling channel deleted");
    Ok(empty_response())
}

const PROTOCOLS: &[&str] = &["WSS", "HTTPS", "WEBRTC"];

async fn get_endpoint(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let (protocols, role) = match input.opt_object("SingleMasterChannelEndpointConfiguration")? {
        Some(c) => {
            let protocols = c.opt_string_list("Protocols")?;
            if let Some(p) = &protocols {
                if p.is_empty() || p.len() > 5 {
                    return Err(constraint(
                        "SingleMasterChannelEndpointConfiguration.Protocols",
                        &p.len().to_string(),
                        "Member must have between 1 and 5 items",
                    ));
                }
                for item in p {
                    if !PROTOCOLS.contains(&item.as_str()) {
                        return Err(constraint(
                            "SingleMasterChannelEndpointConfiguration.Protocols.member",
                            item,
                            "Member must satisfy enum value set: [WSS, HTTPS, WEBRTC]",
                        ));
                    }
                }
            }
            let role = c.opt_str("Role")?.map(str::to_owned);
            if let Some(r) = &role
                && r != "MASTER"
                && r != "VIEWER"
            {
                return Err(constraint(
                    "SingleMasterChannelEndpointConfiguration.Role",
                    r,
                    "Member must satisfy enum value set: [MASTER, VIEWER]",
                ));
            }
            (protocols, role)
        }
        None => (None, None),
    };
    let rec = channel_by_arn(app, "ChannelARN", arn).await?;
    let protocols = protocols.unwrap_or_else(|| vec!["WSS".into(), "HTTPS".into()]);
    let storage_enabled = rec
        .media_storage
        .as_ref()
        .is_some_and(|m| m.status == "ENABLED");
    if protocols.iter().any(|p| p == "WEBRTC") && !storage_enabled {
        return Err(ApiError::invalid_argument(format!(
            "the WEBRTC protocol needs a channel configured for ingestion: the media storage configuration of '{}' \
             is not ENABLED",
            rec.name
        )));
    }
    tracing::debug!(channel = %rec.name, role = role.as_deref().unwrap_or("MASTER"), "signaling endpoint");
    let mut seen = Vec::new();
    let mut list = Vec::new();
    for p in protocols {
        if seen.contains(&p) {
            continue;
        }
        let endpoint = match p.as_str() {
            "WSS" => websocket_url(&app.url),
            _ => app.url.clone(),
        };
        list.push(json!({ "Protocol": p, "ResourceEndpoint": endpoint }));
        seen.push(p);
    }
    Ok(json_response(&json!({ "ResourceEndpointList": list })))
}

/// The WebSocket form of this server's URL (`wss://` when it serves TLS, else `ws://`).
fn websocket_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_owned()
    }
}

fn media_storage_json(rec: &ChannelRecord) -> Value {
    match &rec.media_storage {
        Some(m) => {
            let mut v = json!({ "Status": m.status });
            if let Some(a) = &m.stream_arn {
                v["StreamARN"] = Value::String(a.clone());
            }
            v
        }
        None => json!({ "Status": "DISABLED" }),
    }
}

async fn describe_media_storage(
    app: &App,
    input: &Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let rec = resolve_channel(app, input).await?;
    Ok(json_response(
        &json!({ "MediaStorageConfiguration": media_storage_json(&rec) }),
    ))
}

async fn update_media_storage(
    app: &App,
    input: &Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let config = input
        .opt_object("MediaStorageConfiguration")?
        .ok_or_else(|| ApiError::invalid_argument("MediaStorageConfiguration is required"))?;
    let status = config
        .req_str("Status")
        .map_err(|e| rename(e, "Status", "MediaStorageConfiguration.Status"))?;
    if status != "ENABLED" && status != "DISABLED" {
        return Err(constraint(
            "MediaStorageConfiguration.Status",
            status,
            "Member must satisfy enum value set: [ENABLED, DISABLED]",
        ));
    }
    let stream_arn = config.opt_str("StreamARN")?;
    if let Some(a) = stream_arn {
        check_arn("MediaStorageConfiguration.StreamARN", a)?;
    }
    let mut rec = channel_by_arn(app, "ChannelARN", arn).await?;
    if status == "ENABLED" {
        let stream_arn = stream_arn.ok_or_else(|| {
            ApiError::invalid_argument(
                "MediaStorageConfiguration.StreamARN is required when the Status is ENABLED",
            )
        })?;
        let stream = resolve_by(app, None, Some(stream_arn))?;
        if stream.retention_hours() == 0 {
            return Err(ApiError::no_data_retention(format!(
                "the stream '{}' has a data retention of 0 hours: WebRTC ingestion needs data retention",
                stream.record().name
            )));
        }
        let others = all_channels(app).await?;
        if let Some(other) = others.iter().find(|c| {
            c.name != rec.name
                && c.media_storage.as_ref().is_some_and(|m| {
                    m.status == "ENABLED" && m.stream_arn.as_deref() == Some(stream_arn)
                })
        }) {
            return Err(ApiError::in_use(format!(
                "the stream {stream_arn} is already mapped to the signaling channel {}",
                other.arn
            )));
        }
    }
    rec.media_storage = Some(MediaStorage {
        status: status.to_owned(),
        stream_arn: stream_arn.map(str::to_owned),
    });
    save(app, &rec).await?;
    Ok(empty_response())
}

/// The signaling channel (if any) whose media storage configuration stores into `stream_arn`.
pub async fn channel_storing_into(
    app: &App,
    stream_arn: &str,
) -> Result<Option<ChannelRecord>, ApiError> {
    Ok(all_channels(app).await?.into_iter().find(|c| {
        c.media_storage
            .as_ref()
            .is_some_and(|m| m.status == "ENABLED" && m.stream_arn.as_deref() == Some(stream_arn))
    }))
}

async fn list_tags(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    input.opt_str_len("NextToken", 0, 512)?;
    let arn = input.req_str("ResourceARN")?;
    let rec = channel_by_arn(app, "ResourceARN", arn).await?;
    Ok(json_response(&json!({ "Tags": rec.tags })))
}

async fn tag_resource(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ResourceARN")?;
    let tags =
        tag_list(input, "Tags")?.ok_or_else(|| ApiError::invalid_argument("Tags is required"))?;
    if tags.is_empty() {
        return Err(constraint("Tags", "[]", "Member must have at least 1 item"));
    }
    let mut rec = channel_by_arn(app, "ResourceARN", arn).await?;
    let mut merged = rec.tags.clone();
    merged.extend(tags);
    if merged.len() > MAX_TAGS {
        return Err(ApiError::tags_limit(format!(
            "the signaling channel would have {} tags, more than the limit of {MAX_TAGS}",
            merged.len()
        )));
    }
    rec.tags = merged;
    save(app, &rec).await?;
    Ok(empty_response())
}

async fn untag_resource(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ResourceARN")?;
    let keys = input
        .opt_string_list("TagKeyList")?
        .ok_or_else(|| ApiError::invalid_argument("TagKeyList is required"))?;
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
    let mut rec = channel_by_arn(app, "ResourceARN", arn).await?;
    for k in &keys {
        rec.tags.remove(k);
    }
    save(app, &rec).await?;
    Ok(empty_response())
}

/// TURN servers named by the operator: their URIs and the secret shared with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServers {
    pub uris: Vec<String>,
    pub secret: String,
}

impl TurnServers {
    /// From `KVS_LOCAL_TURN_URIS` and `KVS_LOCAL_TURN_SECRET`; `None` unless both are set and non-empty.
    pub fn from_env() -> Option<TurnServers> {
        let uris: Vec<String> = std::env::var(TURN_URIS_ENV)
            .ok()?
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let secret = std::env::var(TURN_SECRET_ENV).ok()?;
        (!uris.is_empty() && !secret.is_empty()).then_some(TurnServers { uris, secret })
    }

    /// Credentials in the TURN REST API scheme that coturn checks with `use-auth-secret`: the user name is
    /// `<expiry, epoch seconds>:<user>`, the password the base64 HMAC-SHA1 of the user name under the secret.
    pub fn ice_server(&self, user: &str, now_secs: u64) -> Value {
        let username = format!("{}:{user}", now_secs + ICE_CREDENTIAL_TTL_SECONDS);
        json!({
            "Uris": self.uris,
            "Username": username,
            "Password": turn_password(&self.secret, &username),
            "Ttl": ICE_CREDENTIAL_TTL_SECONDS,
        })
    }
}

/// base64(HMAC-SHA1(secret, username)).
pub fn turn_password(secret: &str, username: &str) -> String {
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm only satisfies the type.
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn opt_name(input: &Input, member: &str) -> Result<Option<String>, ApiError> {
    let v = input.opt_str(member)?;
    if let Some(s) = v {
        check_name(member, s, 256)?;
    }
    Ok(v.map(str::to_owned))
}

async fn get_ice_server_config(
    app: &App,
    input: &Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let client_id = opt_name(input, "ClientId")?;
    let username = opt_name(input, "Username")?;
    if let Some(s) = input.opt_str("Service")?
        && s != "TURN"
    {
        return Err(constraint(
            "Service",
            s,
            "Member must satisfy enum value set: [TURN]",
        ));
    }
    let rec = channel_by_arn(app, "ChannelARN", arn).await?;
    let user = username.or(client_id).unwrap_or_else(|| rec.name.clone());
    let list: Vec<Value> = match TurnServers::from_env() {
        Some(turn) => vec![turn.ice_server(&user, now_ms() / 1000)],
        None => Vec::new(),
    };
    Ok(json_response(&json!({ "IceServerList": list })))
}

async fn send_alexa_offer(app: &App, input: &Input) -> Result<Response<ResponseBody>, ApiError> {
    let arn = input.req_str("ChannelARN")?;
    let sender = input.req_str("SenderClientId")?;
    check_name("SenderClientId", sender, 256)?;
    let payload = input.req_str("MessagePayload")?;
    if payload.is_empty() || payload.len() > 10_000 {
        return Err(constraint(
            "MessagePayload",
            payload,
            "Member must have length between 1 and 10000",
        ));
    }
    if !payload
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(constraint(
            "MessagePayload",
            payload,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9+/=]+",
        ));
    }
    let rec = channel_by_arn(app, "ChannelARN", arn).await?;
    // No master can connect to a kvs-local channel, so the offer is never delivered and no answer comes back:
    // the service then answers without an Answer member.
    tracing::info!(channel = %rec.name, sender, "Alexa offer not delivered: no master is connected");
    Ok(json_response(&json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_the_rest_api_scheme() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let expected =
            STANDARD.encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap());
        assert_eq!(
            turn_password("Jefe", "what do ya want for nothing?"),
            expected
        );
        let turn = TurnServers {
            uris: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: "s3cret".into(),
        };
        let server = turn.ice_server("viewer-1", 1_700_000_000);
        assert_eq!(server["Username"], "1700000300:viewer-1");
        assert_eq!(server["Ttl"], 300);
        assert_eq!(
            server["Password"],
            turn_password("s3cret", "1700000300:viewer-1").as_str()
        );
        assert_eq!(server["Uris"][0], "turn:127.0.0.1:3478?transport=udp");
    }

    #[test]
    fn resource_types_and_websocket_urls() {
        assert_eq!(
            arn_resource_type("arn:aws:kinesisvideo:us-east-1:123456789012:channel/c/1"),
            Some("channel")
        );
        assert_eq!(
            arn_resource_type("arn:aws:kinesisvideo:us-east-1:123456789012:stream/c/1"),
            Some("stream")
        );
        assert_eq!(
            websocket_url("http://127.0.0.1:4567"),
            "ws://127.0.0.1:4567"
        );
        assert_eq!(
            websocket_url("https://localhost:443"),
            "wss://localhost:443"
        );
    }
}
