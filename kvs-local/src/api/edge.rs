//! Edge configurations: StartEdgeConfigurationUpdate, DescribeEdgeConfiguration, DeleteEdgeConfiguration and
//! ListEdgeAgentConfigurations.
//!
//! The service syncs an edge configuration with an Edge Agent on an IoT hub device. No Edge Agent can reach
//! kvs-local, so the life cycle is the one the reference gives for an agent that never answers: SYNCING after
//! StartEdgeConfigurationUpdate, and SYNC_FAILED once the service's 15 minutes of retries are over (a new update
//! is refused with ResourceInUseException while SYNCING). DeleteEdgeConfiguration shows DELETING while the
//! deletion runs; with no media on any device it completes after a short settle time, after which the
//! configuration is gone. The status is derived from the stored request and the clock, so it survives restarts
//! and needs no background task.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use serde_json::{Map, Value, json};

use super::configuration::{load_configs, save_configs};
use super::control::resolve_stream;
use super::input::constraint;
use super::signaling::{encode_token, next_token};
use super::{Input, Operation, empty_response, epoch_seconds, json_response};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::resources::{self, EdgeRecord, EdgeRequest, StreamConfigs, Table};
use crate::streams::StreamHandle;

/// How long the service retries reaching the Edge Agent before SYNC_FAILED (15 minutes).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long DELETING is shown before the configuration is gone.
pub const DELETE_SETTLE: Duration = Duration::from_secs(1);
/// Overrides [`SYNC_TIMEOUT`] (milliseconds), so that tests and demos can watch SYNC_FAILED arrive.
pub const SYNC_TIMEOUT_ENV: &str = "KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS";
/// Overrides [`DELETE_SETTLE`] (milliseconds).
pub const DELETE_SETTLE_ENV: &str = "KVS_LOCAL_EDGE_DELETE_SETTLE_MS";
/// Edge configurations per ListEdgeAgentConfigurations page when MaxResults is absent.
const DEFAULT_LIST_MAX: i64 = 5;

/// Whether this module serves `op`.
pub fn serves(op: Operation) -> bool {
    use Operation::*;
    matches!(
        op,
        StartEdgeConfigurationUpdate
            | DescribeEdgeConfiguration
            | DeleteEdgeConfiguration
            | ListEdgeAgentConfigurations
    )
}

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// The time limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub sync_timeout: Duration,
    pub delete_settle: Duration,
}

impl Timing {
    pub fn from_env() -> Timing {
        Timing {
            sync_timeout: env_duration(SYNC_TIMEOUT_ENV, SYNC_TIMEOUT),
            delete_settle: env_duration(DELETE_SETTLE_ENV, DELETE_SETTLE),
        }
    }
}

/// What a stored edge configuration shows at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Syncing,
    SyncFailed,
    Deleting,
    /// The deletion completed: the configuration no longer exists.
    Gone,
}

impl SyncStatus {
    pub fn of(rec: &EdgeRecord, now_ms: u64, timing: Timing) -> SyncStatus {
        let elapsed = Duration::from_millis(now_ms.saturating_sub(rec.last_updated_ms));
        match rec.request {
            EdgeRequest::Sync if elapsed < timing.sync_timeout => SyncStatus::Syncing,
            EdgeRequest::Sync => SyncStatus::SyncFailed,
            EdgeRequest::Delete if elapsed < timing.delete_settle => SyncStatus::Deleting,
            EdgeRequest::Delete => SyncStatus::Gone,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Syncing => "SYNCING",
            SyncStatus::SyncFailed => "SYNC_FAILED",
            SyncStatus::Deleting | SyncStatus::Gone => "DELETING",
        }
    }
}

pub async fn handle(
    app: &Arc<App>,
    op: Operation,
    input: Input,
    raw: &Value,
) -> Result<Response<ResponseBody>, ApiError> {
    use Operation::*;
    let timing = Timing::from_env();
    match op {
        DescribeEdgeConfiguration => describe(app, &input, timing).await,
        ListEdgeAgentConfigurations => list(app, &input, timing).await,
        StartEdgeConfigurationUpdate => {
            let _serial = app.control.lock().await;
            start(app, &input, raw, timing).await
        }
        DeleteEdgeConfiguration => {
            let _serial = app.control.lock().await;
            delete(app, &input, timing).await
        }
        other => Err(ApiError::internal(format!(
            "{other:?} is not an edge configuration operation"
        ))),
    }
}

fn not_found(stream: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::NOT_FOUND,
        "StreamEdgeConfigurationNotFoundException",
        format!("the stream '{stream}' has no edge configuration"),
    )
}

fn description(rec: &EdgeRecord, stream_arn: &str, status: SyncStatus) -> Value {
    let mut v = json!({
        "StreamName": rec.stream_name,
        "StreamARN": stream_arn,
        "CreationTime": epoch_seconds(rec.creation_time_ms),
        "LastUpdatedTime": epoch_seconds(rec.last_updated_ms),
        "SyncStatus": status.as_str(),
        "EdgeConfig": rec.config,
    });
    if status == SyncStatus::SyncFailed {
        v["FailedStatusDetails"] = Value::String(format!(
            "the Edge Agent of {} did not acknowledge the edge configuration",
            rec.hub_device_arn
        ));
    }
    v
}

/// The stream's edge configuration as it stands now. A completed deletion reads as absent; its row is dropped
/// with the next write of the stream's configurations.
async fn current(
    app: &App,
    stream: &StreamHandle,
    timing: Timing,
) -> Result<(StreamConfigs, Option<(EdgeRecord, SyncStatus)>), ApiError> {
    let arn = stream.record().arn;
    let mut configs = load_configs(app, &arn).await?;
    let Some(edge) = configs.edge.clone() else {
        return Ok((configs, None));
    };
    let status = SyncStatus::of(&edge, now_ms(), timing);
    if status == SyncStatus::Gone {
        configs.edge = None;
        return Ok((configs, None));
    }
    Ok((configs, Some((edge, status))))
}

async fn describe(
    app: &App,
    input: &Input,
    timing: Timing,
) -> Result<Response<ResponseBody>, ApiError> {
    let stream = resolve_stream(app, input)?;
    let rec = stream.record();
    match current(app, &stream, timing).await?.1 {
        Some((edge, status)) => Ok(json_response(&description(&edge, &rec.arn, status))),
        None => Err(not_found(&rec.name)),
    }
}

async fn start(
    app: &App,
    input: &Input,
    raw: &Value,
    timing: Timing,
) -> Result<Response<ResponseBody>, ApiError> {
    let stream = resolve_stream(app, input)?;
    let config = input
        .opt_object("EdgeConfig")?
        .ok_or_else(|| ApiError::invalid_argument("EdgeConfig is required"))?;
    let raw_config = raw.get("EdgeConfig").unwrap_or(&Value::Null);
    let (config, hub) = edge_config(&config, raw_config)?;
    let rec = stream.record();
    if rec.retention_hours == 0 {
        return Err(ApiError::no_data_retention(format!(
            "the stream '{}' has a data retention of 0 hours: the Edge Agent uploads into the stream",
            rec.name
        )));
    }
    let (mut configs, existing) = current(app, &stream, timing).await?;
    let now = now_ms();
    let creation = match &existing {
        Some((edge, SyncStatus::Syncing)) => {
            return Err(ApiError::in_use(format!(
                "the edge configuration of '{}' is still SYNCING with {}: wait for IN_SYNC or SYNC_FAILED",
                rec.name, edge.hub_device_arn
            )));
        }
        Some((_, SyncStatus::Deleting)) => {
            return Err(ApiError::in_use(format!(
                "the edge configuration of '{}' is being deleted",
                rec.name
            )));
        }
        Some((edge, _)) if edge.hub_device_arn != hub => {
            return Err(ApiError::invalid_argument(format!(
                "the edge configuration of '{}' belongs to the hub device {}: delete it with \
                 DeleteEdgeConfiguration before moving it to {hub}",
                rec.name, edge.hub_device_arn
            )));
        }
        Some((edge, _)) => edge.creation_time_ms,
        None => now,
    };
    let edge = EdgeRecord {
        stream_name: rec.name.clone(),
        hub_device_arn: hub,
        config,
        creation_time_ms: creation,
        last_updated_ms: now,
        request: EdgeRequest::Sync,
    };
    configs.edge = Some(edge.clone());
    save_configs(app, &rec.arn, configs).await?;
    tracing::info!(stream = %rec.name, hub = %edge.hub_device_arn, "edge configuration syncing");
    Ok(json_response(&description(
        &edge,
        &rec.arn,
        SyncStatus::Syncing,
    )))
}

async fn delete(
    app: &App,
    input: &Input,
    timing: Timing,
) -> Result<Response<ResponseBody>, ApiError> {
    let stream = resolve_stream(app, input)?;
    let rec = stream.record();
    let (mut configs, existing) = current(app, &stream, timing).await?;
    let Some((mut edge, status)) = existing else {
        return Err(not_found(&rec.name));
    };
    if status != SyncStatus::Deleting {
        edge.request = EdgeRequest::Delete;
        edge.last_updated_ms = now_ms();
        configs.edge = Some(edge);
        save_configs(app, &rec.arn, configs).await?;
    }
    Ok(empty_response())
}

async fn list(
    app: &App,
    input: &Input,
    timing: Timing,
) -> Result<Response<ResponseBody>, ApiError> {
    let hub = input.req_str("HubDeviceArn")?;
    check_hub_arn("HubDeviceArn", hub)?;
    let max = input
        .opt_int_range("MaxResults", 1, 10)?
        .unwrap_or(DEFAULT_LIST_MAX) as usize;
    let after = next_token(input)?;
    let rows: Vec<(String, StreamConfigs)> = app
        .blocking(|s| s.with_database(|db| resources::all(db, Table::StreamConfigs)))
        .await?;
    let now = now_ms();
    let mut items: Vec<(String, Value)> = rows
        .into_iter()
        .filter_map(|(arn, configs)| {
            let edge = configs.edge?;
            // Rows of deleted streams (a stream ARN the registry no longer holds) are not listed.
            let live = app.registry.by_arn(&arn)?;
            let status = SyncStatus::of(&edge, now, timing);
            (edge.hub_device_arn == hub && status != SyncStatus::Gone)
                .then(|| (live.record().name, description(&edge, &arn, status)))
        })
        .filter(|(name, _)| after.as_deref().is_none_or(|a| name.as_str() > a))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let more = items.len() > max;
    items.truncate(max);
    let mut out = Map::new();
    if more && let Some((last, _)) = items.last() {
        out.insert("NextToken".into(), Value::String(encode_token(last)));
    }
    out.insert(
        "EdgeConfigs".into(),
        Value::Array(items.into_iter().map(|(_, v)| v).collect()),
    );
    Ok(json_response(&Value::Object(out)))
}

/// `arn:[a-z\d-]+:iot:[a-z0-9-]+:[0-9]+:thing/[a-zA-Z0-9_.-]+`, 1 to 1024 characters.
fn check_hub_arn(member: &str, value: &str) -> Result<(), ApiError> {
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let lower = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let ok = match parts.as_slice() {
        ["arn", partition, "iot", region, account, resource] => {
            lower(partition)
                && lower(region)
                && !account.is_empty()
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("thing/")
                    .is_some_and(super::input::is_name)
        }
        _ => false,
    };
    if value.is_empty() || value.len() > 1024 || !ok {
        return Err(constraint(
            member,
            value,
            "Member must satisfy regular expression pattern: \
             arn:[a-z\\d-]+:iot:[a-z0-9-]+:[0-9]+:thing/[a-zA-Z0-9_.-]+",
        ));
    }
    Ok(())
}

/// `arn:[a-z\d-]+:secretsmanager:[a-z0-9-]+:[0-9]+:secret:[a-zA-Z0-9_.-]+`, 20 to 2048 characters.
fn check_secret_arn(member: &str, value: &str) -> Result<(), ApiError> {
    let parts: Vec<&str> = value.splitn(7, ':').collect();
    let lower = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let ok = match parts.as_slice() {
        [
            "arn",
            partition,
            "secretsmanager",
            region,
            account,
            "secret",
            name,
        ] => {
            lower(partition)
                && lower(region)
                && !account.is_empty()
                && account.bytes().all(|b| b.is_ascii_digit())
                && super::input::is_name(name)
        }
        _ => false,
    };
    if !(20..=2048).contains(&value.len()) || !ok {
        return Err(constraint(
            member,
            value,
            "Member must have length between 20 and 2048 and satisfy regular expression pattern: \
             arn:[a-z\\d-]+:secretsmanager:[a-z0-9-]+:[0-9]+:secret:[a-zA-Z0-9_.-]+",
        ));
    }
    Ok(())
}

fn required(input: &Input, path: &str, name: &str) -> Result<Input, ApiError> {
    input
        .opt_object(name)?
        .ok_or_else(|| ApiError::invalid_argument(format!("{path}.{name} is required")))
}

fn schedule(input: &Input, path: &str) -> Result<Value, ApiError> {
    let expr = input.opt_str("ScheduleExpression")?.ok_or_else(|| {
        ApiError::invalid_argument(format!("{path}.ScheduleExpression is required"))
    })?;
    let n = expr.chars().count();
    if !(11..=100).contains(&n) || expr.contains('\n') {
        return Err(constraint(
            &format!("{path}.ScheduleExpression"),
            expr,
            "Member must satisfy regular expression pattern: [^\\n]{11,100}",
        ));
    }
    let duration = input.opt_i64("DurationInSeconds")?.ok_or_else(|| {
        ApiError::invalid_argument(format!("{path}.DurationInSeconds is required"))
    })?;
    if !(60..=3600).contains(&duration) {
        return Err(constraint(
            &format!("{path}.DurationInSeconds"),
            &duration.to_string(),
            "Member must have value between 60 and 3600",
        ));
    }
    Ok(json!({ "ScheduleExpression": expr, "DurationInSeconds": duration }))
}

fn int_in(
    input: &Input,
    path: &str,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let v = input.opt_i64(name)?;
    if let Some(n) = v
        && !(min..=max).contains(&n)
    {
        return Err(constraint(
            &format!("{path}.{name}"),
            &n.to_string(),
            &format!("Member must have value between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// Checks an EdgeConfig and returns it normalised (only the reference's members) with its hub device ARN.
fn edge_config(input: &Input, raw: &Value) -> Result<(Value, String), ApiError> {
    const P: &str = "EdgeConfig";
    let hub = input
        .opt_str("HubDeviceArn")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{P}.HubDeviceArn is required")))?;
    check_hub_arn(&format!("{P}.HubDeviceArn"), hub)?;

    let recorder = required(input, P, "RecorderConfig")?;
    let source = required(&recorder, "EdgeConfig.RecorderConfig", "MediaSourceConfig")?;
    const SP: &str = "EdgeConfig.RecorderConfig.MediaSourceConfig";
    let secret = source
        .opt_str("MediaUriSecretArn")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{SP}.MediaUriSecretArn is required")))?;
    check_secret_arn(&format!("{SP}.MediaUriSecretArn"), secret)?;
    let uri_type = source
        .opt_str("MediaUriType")?
        .ok_or_else(|| ApiError::invalid_argument(format!("{SP}.MediaUriType is required")))?;
    if uri_type != "RTSP_URI" && uri_type != "FILE_URI" {
        return Err(constraint(
            &format!("{SP}.MediaUriType"),
            uri_type,
            "Member must satisfy enum value set: [RTSP_URI, FILE_URI]",
        ));
    }
    let mut recorder_out = json!({
        "MediaSourceConfig": { "MediaUriSecretArn": secret, "MediaUriType": uri_type },
    });
    if let Some(s) = recorder.opt_object("ScheduleConfig")? {
        recorder_out["ScheduleConfig"] = schedule(&s, "EdgeConfig.RecorderConfig.ScheduleConfig")?;
    }
    let mut out = json!({ "HubDeviceArn": hub, "RecorderConfig": recorder_out });

    if let Some(uploader) = input.opt_object("UploaderConfig")? {
        let s = required(&uploader, "EdgeConfig.UploaderConfig", "ScheduleConfig")?;
        out["UploaderConfig"] =
            json!({ "ScheduleConfig": schedule(&s, "EdgeConfig.UploaderConfig.ScheduleConfig")? });
    }

    if let Some(deletion) = input.opt_object("DeletionConfig")? {
        const DP: &str = "EdgeConfig.DeletionConfig";
        let mut d = Map::new();
        if let Some(h) = int_in(&deletion, DP, "EdgeRetentionInHours", 1, 720)? {
            d.insert("EdgeRetentionInHours".into(), json!(h));
        }
        if let Some(local) = deletion.opt_object("LocalSizeConfig")? {
            const LP: &str = "EdgeConfig.DeletionConfig.LocalSizeConfig";
            let mut l = Map::new();
            if let Some(mb) = int_in(&local, LP, "MaxLocalMediaSizeInMB", 64, 2_000_000)? {
                l.insert("MaxLocalMediaSizeInMB".into(), json!(mb));
            }
            if let Some(s) = local.opt_str("StrategyOnFullSize")? {
                if s != "DELETE_OLDEST_MEDIA" && s != "DENY_NEW_MEDIA" {
                    return Err(constraint(
                        &format!("{LP}.StrategyOnFullSize"),
                        s,
                        "Member must satisfy enum value set: [DELETE_OLDEST_MEDIA, DENY_NEW_MEDIA]",
                    ));
                }
                l.insert("StrategyOnFullSize".into(), json!(s));
            }
            d.insert("LocalSizeConfig".into(), Value::Object(l));
        }
        match raw
            .get("DeletionConfig")
            .and_then(|d| d.get("DeleteAfterUpload"))
        {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => {
                d.insert("DeleteAfterUpload".into(), json!(b));
            }
            Some(_) => {
                return Err(ApiError::new(
                    http::StatusCode::BAD_REQUEST,
                    "SerializationException",
                    format!("{DP}.DeleteAfterUpload must be a boolean"),
                ));
            }
        }
        out["DeletionConfig"] = Value::Object(d);
    }
    Ok((out, hub.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(request: EdgeRequest, last_updated_ms: u64) -> EdgeRecord {
        EdgeRecord {
            stream_name: "s".into(),
            hub_device_arn: "arn:aws:iot:us-east-1:123456789012:thing/hub".into(),
            config: json!({}),
            creation_time_ms: 0,
            last_updated_ms,
            request,
        }
    }

    #[test]
    fn sync_status_life_cycle() {
        let t = Timing {
            sync_timeout: Duration::from_secs(900),
            delete_settle: Duration::from_secs(1),
        };
        let r = record(EdgeRequest::Sync, 1_000);
        assert_eq!(SyncStatus::of(&r, 1_000, t), SyncStatus::Syncing);
        assert_eq!(SyncStatus::of(&r, 900_999, t), SyncStatus::Syncing);
        assert_eq!(SyncStatus::of(&r, 901_000, t), SyncStatus::SyncFailed);
        let d = record(EdgeRequest::Delete, 1_000);
        assert_eq!(SyncStatus::of(&d, 1_999, t), SyncStatus::Deleting);
        assert_eq!(SyncStatus::of(&d, 2_000, t), SyncStatus::Gone);
        // A clock that went backwards keeps the status of "just updated".
        assert_eq!(SyncStatus::of(&r, 0, t), SyncStatus::Syncing);
    }

    #[test]
    fn arns_follow_the_patterns() {
        assert!(check_hub_arn("H", "arn:aws:iot:us-east-1:123456789012:thing/my-hub").is_ok());
        assert!(check_hub_arn("H", "arn:aws:iot:us-east-1:123456789012:thing/").is_err());
        assert!(check_hub_arn("H", "arn:aws:kinesisvideo:us-east-1:1:thing/x").is_err());
        assert!(
            check_secret_arn(
                "S",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:cam-1"
            )
            .is_ok()
        );
        assert!(check_secret_arn("S", "arn:aws:secretsmanager:us-east-1:1:secret:a b").is_err());
    }

    #[test]
    fn edge_config_is_checked_and_normalised() {
        let body = br#"{"HubDeviceArn":"arn:aws:iot:us-east-1:123456789012:thing/hub",
            "RecorderConfig":{"MediaSourceConfig":{"MediaUriSecretArn":"arn:aws:secretsmanager:us-east-1:123456789012:secret:cam","MediaUriType":"RTSP_URI"}},
            "DeletionConfig":{"EdgeRetentionInHours":24,"DeleteAfterUpload":false,"LocalSizeConfig":{"MaxLocalMediaSizeInMB":64}},
            "Unknown":1}"#;
        let raw: Value = serde_json::from_slice(body).unwrap();
        let input = Input::parse(body).unwrap();
        let (v, hub) = edge_config(&input, &raw).unwrap();
        assert_eq!(hub, "arn:aws:iot:us-east-1:123456789012:thing/hub");
        assert_eq!(v["DeletionConfig"]["DeleteAfterUpload"], false);
        assert_eq!(
            v["DeletionConfig"]["LocalSizeConfig"]["MaxLocalMediaSizeInMB"],
            64
        );
        assert!(v.get("Unknown").is_none());

        let bad: &[u8] = br#"{"HubDeviceArn":"arn:aws:iot:us-east-1:123456789012:thing/hub",
            "RecorderConfig":{"MediaSourceConfig":{"MediaUriSecretArn":"arn:aws:secretsmanager:us-east-1:123456789012:secret:cam","MediaUriType":"RTSP_URI"},
            "ScheduleConfig":{"ScheduleExpression":"0 0 * * * ?","DurationInSeconds":30}}}"#;
        let raw: Value = serde_json::from_slice(bad).unwrap();
        let e = edge_config(&Input::parse(bad).unwrap(), &raw).unwrap_err();
        assert!(e.message.contains("DurationInSeconds"), "{}", e.message);
    }
}
