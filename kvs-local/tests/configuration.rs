//! Stream configurations (image generation, notification, mapped resource) and edge configurations over real
//! HTTP with SigV4: validation, NoDataRetention, the edge sync status life cycle, pagination and persistence.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

fn image_config() -> Value {
    json!({
        "Status": "ENABLED",
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "DestinationConfig": { "Uri": "s3://bucket/prefix", "DestinationRegion": "us-east-1" },
        "SamplingInterval": 3000,
        "Format": "JPEG",
        "FormatConfig": { "JPEGQuality": "80" },
        "WidthPixels": 640,
        "HeightPixels": 480,
    })
}

fn edge_config(hub: &str) -> Value {
    json!({
        "HubDeviceArn": format!("arn:aws:iot:us-east-1:123456789012:thing/{hub}"),
        "RecorderConfig": {
            "MediaSourceConfig": {
                "MediaUriSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:camera-1",
                "MediaUriType": "RTSP_URI"
            },
            "ScheduleConfig": { "ScheduleExpression": "0 0/5 * * * ?", "DurationInSeconds": 120 }
        },
        "UploaderConfig": {
            "ScheduleConfig": { "ScheduleExpression": "0 0 * * * ?", "DurationInSeconds": 600 }
        },
        "DeletionConfig": {
            "EdgeRetentionInHours": 24,
            "DeleteAfterUpload": true,
            "LocalSizeConfig": { "MaxLocalMediaSizeInMB": 1024, "StrategyOnFullSize": "DELETE_OLDEST_MEDIA" }
        }
    })
}

#[tokio::test]
async fn image_generation_configuration() {
    let mut srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("img", 24).await;
    c.create_stream("img-live", 0).await;

    let none = c
        .call(
            "/describeImageGenerationConfiguration",
            json!({ "StreamName": "img" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(none, json!({}), "no configuration yet");

    c.call(
        "/updateImageGenerationConfiguration",
        json!({ "StreamName": "img-live", "ImageGenerationConfiguration": image_config() }),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    c.call(
        "/updateImageGenerationConfiguration",
        json!({ "StreamName": "missing", "ImageGenerationConfiguration": image_config() }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");

    let mut cases = Vec::new();
    for (member, value) in [
        ("Status", json!("ON")),
        ("Format", json!("GIF")),
        ("ImageSelectorType", json!("NOW")),
        ("SamplingInterval", json!(199)),
        ("WidthPixels", json!(3841)),
        ("HeightPixels", json!(0)),
        ("FormatConfig", json!({ "Quality": "80" })),
        ("JPEGQuality", json!({ "JPEGQuality": "101" })),
        (
            "DestinationRegion",
            json!({ "Uri": "s3://b", "DestinationRegion": "eu-west-1" }),
        ),
        (
            "Uri",
            json!({ "Uri": "nowhere", "DestinationRegion": "us-east-1" }),
        ),
    ] {
        let mut config = image_config();
        let key = match member {
            "JPEGQuality" => "FormatConfig",
            "DestinationRegion" | "Uri" => "DestinationConfig",
            other => other,
        };
        config[key] = value;
        cases.push((member, config));
    }
    let mut missing = image_config();
    missing.as_object_mut().unwrap().remove("Format");
    cases.push(("Format", missing));
    for (member, config) in cases {
        let r = c
            .call(
                "/updateImageGenerationConfiguration",
                json!({ "StreamName": "img", "ImageGenerationConfiguration": config }),
            )
            .await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }

    c.call(
        "/updateImageGenerationConfiguration",
        json!({ "StreamName": "img", "ImageGenerationConfiguration": image_config() }),
    )
    .await
    .ok();
    let arn = c.describe("img").await["StreamARN"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = c
        .call(
            "/describeImageGenerationConfiguration",
            json!({ "StreamARN": arn }),
        )
        .await
        .ok()
        .json();
    assert_eq!(got["ImageGenerationConfiguration"], image_config());

    srv.restart(|_| {}).await;
    let c = srv.client();
    let got = c
        .call(
            "/describeImageGenerationConfiguration",
            json!({ "StreamName": "img" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        got["ImageGenerationConfiguration"],
        image_config(),
        "survives a restart"
    );

    // A null configuration deletes it (and needs no retention).
    c.call(
        "/updateImageGenerationConfiguration",
        json!({ "StreamName": "img" }),
    )
    .await
    .ok();
    let none = c
        .call(
            "/describeImageGenerationConfiguration",
            json!({ "StreamName": "img" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(none, json!({}));
    srv.stop().await;
}

#[tokio::test]
async fn notification_configuration() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("note", 1).await;
    c.create_stream("note-live", 0).await;
    let config = json!({ "Status": "ENABLED", "DestinationConfig": { "Uri": "arn:aws:sns:us-east-1:123456789012:fragments" } });
    c.call(
        "/updateNotificationConfiguration",
        json!({ "StreamName": "note-live", "NotificationConfiguration": config }),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    for (member, bad) in [
        (
            "Status",
            json!({ "Status": "MAYBE", "DestinationConfig": { "Uri": "arn:aws:sns:x" } }),
        ),
        ("DestinationConfig", json!({ "Status": "ENABLED" })),
        (
            "Uri",
            json!({ "Status": "ENABLED", "DestinationConfig": { "Uri": "a*b" } }),
        ),
    ] {
        let r = c
            .call(
                "/updateNotificationConfiguration",
                json!({ "StreamName": "note", "NotificationConfiguration": bad }),
            )
            .await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }
    c.call(
        "/updateNotificationConfiguration",
        json!({ "StreamName": "note", "NotificationConfiguration": config }),
    )
    .await
    .ok();
    let got = c
        .call(
            "/describeNotificationConfiguration",
            json!({ "StreamName": "note" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(got["NotificationConfiguration"], config);
    c.call("/describeNotificationConfiguration", json!({}))
        .await
        .expect_error(400, "InvalidArgumentException");

    // A stream deleted and created again under the same name starts without configurations.
    let arn = c.describe("note").await["StreamARN"]
        .as_str()
        .unwrap()
        .to_owned();
    c.call("/deleteStream", json!({ "StreamARN": arn }))
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.create_stream("note", 1).await;
    let got = c
        .call(
            "/describeNotificationConfiguration",
            json!({ "StreamName": "note" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(got, json!({}));
    srv.stop().await;
}

#[tokio::test]
async fn mapped_resource_of_an_unmapped_stream_is_empty() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("plain", 1).await;
    let r = c
        .call(
            "/describeMappedResourceConfiguration",
            json!({ "StreamName": "plain", "MaxResults": 1 }),
        )
        .await
        .ok()
        .json();
    assert_eq!(r, json!({ "MappedResourceConfigurationList": [] }));
    c.call(
        "/describeMappedResourceConfiguration",
        json!({ "StreamName": "plain", "MaxResults": 2 }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/describeMappedResourceConfiguration",
        json!({ "StreamName": "absent" }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn edge_configuration_life_cycle() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("edge", 24).await;
    c.create_stream("edge-live", 0).await;
    let arn = c.describe("edge").await["StreamARN"]
        .as_str()
        .unwrap()
        .to_owned();

    c.call(
        "/describeEdgeConfiguration",
        json!({ "StreamName": "edge" }),
    )
    .await
    .expect_error(404, "StreamEdgeConfigurationNotFoundException");
    c.call("/deleteEdgeConfiguration", json!({ "StreamName": "edge" }))
        .await
        .expect_error(404, "StreamEdgeConfigurationNotFoundException");
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "edge-live", "EdgeConfig": edge_config("hub-1") }),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "missing", "EdgeConfig": edge_config("hub-1") }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");

    let started = c
        .call(
            "/startEdgeConfigurationUpdate",
            json!({ "StreamName": "edge", "EdgeConfig": edge_config("hub-1") }),
        )
        .await
        .ok()
        .json();
    assert_eq!(started["SyncStatus"], "SYNCING");
    assert_eq!(started["StreamName"], "edge");
    assert_eq!(started["StreamARN"], arn.as_str());
    assert_eq!(started["EdgeConfig"], edge_config("hub-1"));
    assert!(started["CreationTime"].as_f64().is_some());
    assert_eq!(started["CreationTime"], started["LastUpdatedTime"]);

    let described = c
        .call("/describeEdgeConfiguration", json!({ "StreamARN": arn }))
        .await
        .ok()
        .json();
    assert_eq!(described, started);

    // "If you invoke this API during the syncing process, a ResourceInUseException will be thrown."
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "edge", "EdgeConfig": edge_config("hub-1") }),
    )
    .await
    .expect_error(400, "ResourceInUseException");

    let listed = c
        .call(
            "/listEdgeAgentConfigurations",
            json!({ "HubDeviceArn": "arn:aws:iot:us-east-1:123456789012:thing/hub-1" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(listed, json!({ "EdgeConfigs": [started] }));
    let other = c
        .call(
            "/listEdgeAgentConfigurations",
            json!({ "HubDeviceArn": "arn:aws:iot:us-east-1:123456789012:thing/hub-2" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(other, json!({ "EdgeConfigs": [] }));

    c.call("/deleteEdgeConfiguration", json!({ "StreamName": "edge" }))
        .await
        .ok();
    let deleting = c
        .call(
            "/describeEdgeConfiguration",
            json!({ "StreamName": "edge" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(deleting["SyncStatus"], "DELETING");
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "edge", "EdgeConfig": edge_config("hub-1") }),
    )
    .await
    .expect_error(400, "ResourceInUseException");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.call(
        "/describeEdgeConfiguration",
        json!({ "StreamName": "edge" }),
    )
    .await
    .expect_error(404, "StreamEdgeConfigurationNotFoundException");

    // Deleted, the stream can sync with another hub device.
    let moved = c
        .call(
            "/startEdgeConfigurationUpdate",
            json!({ "StreamName": "edge", "EdgeConfig": edge_config("hub-2") }),
        )
        .await
        .ok()
        .json();
    assert_eq!(moved["SyncStatus"], "SYNCING");
    srv.stop().await;
}

/// A change that makes an EdgeConfig invalid.
type Edit = dyn Fn(&mut Value);

#[tokio::test]
async fn edge_config_validation_names_the_member() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("edge-v", 1).await;
    let cases: Vec<(&str, Box<Edit>)> = vec![
        (
            "HubDeviceArn",
            Box::new(|v| v["HubDeviceArn"] = json!("arn:aws:iot:us-east-1:1:device/x")),
        ),
        (
            "RecorderConfig",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("RecorderConfig");
            }),
        ),
        (
            "MediaUriType",
            Box::new(|v| {
                v["RecorderConfig"]["MediaSourceConfig"]["MediaUriType"] = json!("HTTP_URI")
            }),
        ),
        (
            "MediaUriSecretArn",
            Box::new(|v| {
                v["RecorderConfig"]["MediaSourceConfig"]["MediaUriSecretArn"] = json!("secret")
            }),
        ),
        (
            "DurationInSeconds",
            Box::new(|v| v["RecorderConfig"]["ScheduleConfig"]["DurationInSeconds"] = json!(3601)),
        ),
        (
            "ScheduleExpression",
            Box::new(|v| {
                v["UploaderConfig"]["ScheduleConfig"]["ScheduleExpression"] = json!("short")
            }),
        ),
        (
            "EdgeRetentionInHours",
            Box::new(|v| v["DeletionConfig"]["EdgeRetentionInHours"] = json!(721)),
        ),
        (
            "MaxLocalMediaSizeInMB",
            Box::new(|v| {
                v["DeletionConfig"]["LocalSizeConfig"]["MaxLocalMediaSizeInMB"] = json!(63)
            }),
        ),
        (
            "StrategyOnFullSize",
            Box::new(|v| {
                v["DeletionConfig"]["LocalSizeConfig"]["StrategyOnFullSize"] = json!("PANIC")
            }),
        ),
    ];
    for (member, change) in cases {
        let mut config = edge_config("hub-v");
        change(&mut config);
        let r = c
            .call(
                "/startEdgeConfigurationUpdate",
                json!({ "StreamName": "edge-v", "EdgeConfig": config }),
            )
            .await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }
    let mut config = edge_config("hub-v");
    config["DeletionConfig"]["DeleteAfterUpload"] = json!("yes");
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "edge-v", "EdgeConfig": config }),
    )
    .await
    .expect_error(400, "SerializationException");
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "edge-v" }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call("/listEdgeAgentConfigurations", json!({}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call(
        "/listEdgeAgentConfigurations",
        json!({ "HubDeviceArn": "arn:aws:iot:us-east-1:123456789012:thing/hub-v", "MaxResults": 11 }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/describeEdgeConfiguration",
        json!({ "StreamName": "edge-v" }),
    )
    .await
    .expect_error(404, "StreamEdgeConfigurationNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn edge_agent_configurations_page_by_five() {
    let srv = TestServer::start().await;
    let c = srv.client();
    for i in 0..7 {
        let name = format!("cam-{i}");
        c.create_stream(&name, 1).await;
        c.call(
            "/startEdgeConfigurationUpdate",
            json!({ "StreamName": name, "EdgeConfig": edge_config("shared-hub") }),
        )
        .await
        .ok();
    }
    let hub = "arn:aws:iot:us-east-1:123456789012:thing/shared-hub";
    let first = c
        .call(
            "/listEdgeAgentConfigurations",
            json!({ "HubDeviceArn": hub }),
        )
        .await
        .ok()
        .json();
    let names = |page: &Value| -> Vec<String> {
        page["EdgeConfigs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["StreamName"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&first),
        ["cam-0", "cam-1", "cam-2", "cam-3", "cam-4"],
        "the default page is 5"
    );
    let token = first["NextToken"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = c
        .call(
            "/listEdgeAgentConfigurations",
            json!({ "HubDeviceArn": hub, "NextToken": token }),
        )
        .await
        .ok()
        .json();
    assert_eq!(names(&second), ["cam-5", "cam-6"]);
    assert!(second.get("NextToken").is_none());
    srv.stop().await;
}

/// The binary with a short edge sync timeout, killed on drop.
#[tokio::test]
async fn an_edge_configuration_no_agent_acknowledges_fails_to_sync() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::spawn_binary(
        dir.path(),
        &[],
        &[("KVS_LOCAL_EDGE_SYNC_TIMEOUT_MS", "300")],
    );
    let c = &bin.client;
    c.create_stream("far", 1).await;
    let started = c
        .call(
            "/startEdgeConfigurationUpdate",
            json!({ "StreamName": "far", "EdgeConfig": edge_config("hub-1") }),
        )
        .await
        .ok()
        .json();
    assert_eq!(started["SyncStatus"], "SYNCING");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed = c
        .call("/describeEdgeConfiguration", json!({ "StreamName": "far" }))
        .await
        .ok()
        .json();
    assert_eq!(failed["SyncStatus"], "SYNC_FAILED");
    assert!(
        failed["FailedStatusDetails"]
            .as_str()
            .unwrap_or("")
            .contains("hub-1"),
        "{failed}"
    );

    // Moving to another hub device needs DeleteEdgeConfiguration first.
    c.call(
        "/startEdgeConfigurationUpdate",
        json!({ "StreamName": "far", "EdgeConfig": edge_config("hub-2") }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    // The same hub device may be tried again: SYNCING anew, creation time kept.
    let mut config = edge_config("hub-1");
    config["DeletionConfig"]["EdgeRetentionInHours"] = json!(48);
    let again = c
        .call(
            "/startEdgeConfigurationUpdate",
            json!({ "StreamName": "far", "EdgeConfig": config }),
        )
        .await
        .ok()
        .json();
    assert_eq!(again["SyncStatus"], "SYNCING");
    assert_eq!(again["CreationTime"], started["CreationTime"]);
    assert_ne!(again["LastUpdatedTime"], started["LastUpdatedTime"]);
    assert_eq!(
        again["EdgeConfig"]["DeletionConfig"]["EdgeRetentionInHours"],
        48
    );
}
