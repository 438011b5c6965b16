//! Signaling channels over real HTTP with SigV4: their life cycle, validation, pagination, endpoints, media
//! storage configuration, resource tags, persistence across restarts, and the HTTPS signaling operations.

mod common;

use common::{Client, TestServer};
use serde_json::{Value, json};

async fn create_channel(c: &Client, name: &str) -> String {
    c.call("/createSignalingChannel", json!({ "ChannelName": name }))
        .await
        .ok()
        .json()["ChannelARN"]
        .as_str()
        .expect("ChannelARN is a string")
        .to_owned()
}

async fn describe_channel(c: &Client, name: &str) -> Value {
    c.call("/describeSignalingChannel", json!({ "ChannelName": name }))
        .await
        .ok()
        .json()["ChannelInfo"]
        .clone()
}

#[tokio::test]
async fn create_describe_update_delete() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "door-cam").await;
    let prefix = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/door-cam/";
    assert!(arn.starts_with(prefix), "{arn}");
    let created_ms: u64 = arn[prefix.len()..].parse().expect("creation ms");

    let info = describe_channel(&c, "door-cam").await;
    assert_eq!(info["ChannelName"], "door-cam");
    assert_eq!(info["ChannelARN"], arn.as_str());
    assert_eq!(info["ChannelType"], "SINGLE_MASTER");
    assert_eq!(info["ChannelStatus"], "ACTIVE");
    assert_eq!(info["SingleMasterConfiguration"]["MessageTtlSeconds"], 60);
    let creation = info["CreationTime"].as_f64().expect("epoch seconds");
    assert_eq!((creation * 1000.0).round() as u64, created_ms);
    let version = info["Version"].as_str().unwrap().to_owned();

    let by_arn = c
        .call("/describeSignalingChannel", json!({ "ChannelARN": arn }))
        .await
        .ok()
        .json();
    assert_eq!(by_arn["ChannelInfo"]["ChannelName"], "door-cam");

    c.call(
        "/createSignalingChannel",
        json!({ "ChannelName": "door-cam" }),
    )
    .await
    .expect_error(400, "ResourceInUseException");

    c.call(
        "/updateSignalingChannel",
        json!({ "ChannelARN": arn, "CurrentVersion": "stale", "SingleMasterConfiguration": { "MessageTtlSeconds": 30 } }),
    )
    .await
    .expect_error(400, "VersionMismatchException");
    c.call(
        "/updateSignalingChannel",
        json!({ "ChannelARN": arn, "CurrentVersion": version, "SingleMasterConfiguration": { "MessageTtlSeconds": 30 } }),
    )
    .await
    .ok();
    let info = describe_channel(&c, "door-cam").await;
    assert_eq!(info["SingleMasterConfiguration"]["MessageTtlSeconds"], 30);
    let v2 = info["Version"].as_str().unwrap().to_owned();
    assert_ne!(v2, version, "an update changes the version");

    let r = c
        .call(
            "/updateSignalingChannel",
            json!({ "ChannelARN": arn, "CurrentVersion": v2 }),
        )
        .await;
    r.expect_error(400, "InvalidArgumentException");
    assert!(r.message().contains("MessageTtlSeconds"), "{}", r.message());
    c.call(
        "/deleteSignalingChannel",
        json!({ "ChannelARN": arn, "CurrentVersion": version }),
    )
    .await
    .expect_error(400, "VersionMismatchException");
    c.call(
        "/deleteSignalingChannel",
        json!({ "ChannelARN": arn, "CurrentVersion": v2 }),
    )
    .await
    .ok();
    let r = c
        .call(
            "/describeSignalingChannel",
            json!({ "ChannelName": "door-cam" }),
        )
        .await;
    r.expect_error(404, "ResourceNotFoundException");
    assert!(r.message().contains("door-cam"), "{}", r.message());
    c.call("/deleteSignalingChannel", json!({ "ChannelARN": arn }))
        .await
        .expect_error(404, "ResourceNotFoundException");

    // The name is free again and the new channel has a new ARN.
    let again = create_channel(&c, "door-cam").await;
    assert_ne!(again, arn);
    c.call("/describeSignalingChannel", json!({ "ChannelARN": arn }))
        .await
        .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn invalid_input_is_rejected_naming_the_member() {
    let srv = TestServer::start().await;
    let c = srv.client();
    for (body, member) in [
        (json!({ "ChannelName": "a/b" }), "ChannelName"),
        (json!({ "ChannelName": "x".repeat(257) }), "ChannelName"),
        (
            json!({ "ChannelName": "ok", "SingleMasterConfiguration": { "MessageTtlSeconds": 4 } }),
            "SingleMasterConfiguration.MessageTtlSeconds",
        ),
        (
            json!({ "ChannelName": "ok", "SingleMasterConfiguration": { "MessageTtlSeconds": 121 } }),
            "SingleMasterConfiguration.MessageTtlSeconds",
        ),
        (
            json!({ "ChannelName": "ok", "ChannelType": "MESH" }),
            "ChannelType",
        ),
        (
            json!({ "ChannelName": "ok", "ChannelType": "FULL_MESH" }),
            "FULL_MESH",
        ),
        (
            json!({ "ChannelName": "ok", "Tags": [{ "Key": "bad{key}", "Value": "v" }] }),
            "Key",
        ),
    ] {
        let r = c.call("/createSignalingChannel", body).await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }
    let tags: Vec<Value> = (0..51)
        .map(|i| json!({ "Key": format!("k{i}"), "Value": "v" }))
        .collect();
    c.call(
        "/createSignalingChannel",
        json!({ "ChannelName": "ok", "Tags": tags }),
    )
    .await
    .expect_error(400, "TagsPerResourceExceededLimitException");
    c.call("/createSignalingChannel", json!({ "ChannelName": 5 }))
        .await
        .expect_error(400, "SerializationException");
    c.call("/describeSignalingChannel", json!({}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call(
        "/describeSignalingChannel",
        json!({ "ChannelARN": "arn:nope" }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    // Nothing was created by the refused calls.
    let list = c
        .call("/listSignalingChannels", json!({}))
        .await
        .ok()
        .json();
    assert_eq!(list["ChannelInfoList"], json!([]));
    srv.stop().await;
}

#[tokio::test]
async fn list_pages_and_filters_by_prefix() {
    let srv = TestServer::start().await;
    let c = srv.client();
    for name in ["cam-c", "cam-a", "door-1", "cam-b", "cam-d"] {
        create_channel(&c, name).await;
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut body = json!({ "MaxResults": 2, "ChannelNameCondition": { "ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam-" } });
        if let Some(t) = &token {
            body["NextToken"] = json!(t);
        }
        let page = c.call("/listSignalingChannels", body).await.ok().json();
        pages += 1;
        let items = page["ChannelInfoList"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(
            items
                .iter()
                .map(|i| i["ChannelName"].as_str().unwrap().to_owned()),
        );
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["cam-a", "cam-b", "cam-c", "cam-d"]);
    assert_eq!(pages, 2, "four channels in pages of two");
    let all = c
        .call("/listSignalingChannels", json!({}))
        .await
        .ok()
        .json();
    assert_eq!(all["ChannelInfoList"].as_array().unwrap().len(), 5);
    assert!(all.get("NextToken").is_none());

    c.call("/listSignalingChannels", json!({ "MaxResults": 0 }))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call(
        "/listSignalingChannels",
        json!({ "NextToken": "not a token!" }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/listSignalingChannels",
        json!({ "ChannelNameCondition": { "ComparisonOperator": "EQUALS", "ComparisonValue": "cam" } }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    srv.stop().await;
}

#[tokio::test]
async fn channels_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "kept").await;
    c.call(
        "/TagResource",
        json!({ "ResourceARN": arn, "Tags": [{ "Key": "team", "Value": "video" }] }),
    )
    .await
    .ok();
    let before = describe_channel(&c, "kept").await;
    srv.restart(|_| {}).await;
    let c = srv.client();
    let after = describe_channel(&c, "kept").await;
    assert_eq!(after, before);
    let tags = c
        .call("/ListTagsForResource", json!({ "ResourceARN": arn }))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({ "team": "video" }));
    srv.stop().await;
}

#[tokio::test]
async fn endpoints_point_at_this_server() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "ep").await;
    let r = c
        .call("/getSignalingChannelEndpoint", json!({
            "ChannelARN": arn,
            "SingleMasterChannelEndpointConfiguration": { "Protocols": ["WSS", "HTTPS"], "Role": "MASTER" }
        }))
        .await
        .ok()
        .json();
    let ws = srv.url.replacen("http://", "ws://", 1);
    assert_eq!(
        r["ResourceEndpointList"],
        json!([
            { "Protocol": "WSS", "ResourceEndpoint": ws },
            { "Protocol": "HTTPS", "ResourceEndpoint": srv.url },
        ])
    );
    let viewer = c
        .call("/getSignalingChannelEndpoint", json!({
            "ChannelARN": arn,
            "SingleMasterChannelEndpointConfiguration": { "Protocols": ["HTTPS"], "Role": "VIEWER" }
        }))
        .await
        .ok()
        .json();
    assert_eq!(
        viewer["ResourceEndpointList"],
        json!([{ "Protocol": "HTTPS", "ResourceEndpoint": srv.url }])
    );

    // WEBRTC needs a channel configured for ingestion.
    let r = c
        .call("/getSignalingChannelEndpoint", json!({
            "ChannelARN": arn,
            "SingleMasterChannelEndpointConfiguration": { "Protocols": ["WEBRTC"], "Role": "MASTER" }
        }))
        .await;
    r.expect_error(400, "InvalidArgumentException");
    assert!(r.message().contains("WEBRTC"), "{}", r.message());
    for config in [
        json!({ "Protocols": ["FTP"] }),
        json!({ "Protocols": [] }),
        json!({ "Protocols": ["WSS"], "Role": "BOSS" }),
    ] {
        c.call(
            "/getSignalingChannelEndpoint",
            json!({ "ChannelARN": arn, "SingleMasterChannelEndpointConfiguration": config }),
        )
        .await
        .expect_error(400, "InvalidArgumentException");
    }
    c.call(
        "/getSignalingChannelEndpoint",
        json!({ "ChannelARN": "arn:aws:kinesisvideo:us-east-1:123456789012:channel/none/1" }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn media_storage_maps_a_channel_to_a_stream() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "ingest").await;
    let other = create_channel(&c, "ingest-2").await;
    let stream = c.create_stream("stored", 24).await;
    let no_retention = c.create_stream("live-only", 0).await;

    let d = c
        .call(
            "/describeMediaStorageConfiguration",
            json!({ "ChannelName": "ingest" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        d["MediaStorageConfiguration"],
        json!({ "Status": "DISABLED" })
    );

    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "ENABLED", "StreamARN": no_retention } }),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "ENABLED" } }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "ON", "StreamARN": stream } }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "ENABLED",
            "StreamARN": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/none/1" } }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");

    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "ENABLED", "StreamARN": stream } }),
    )
    .await
    .ok();
    let d = c
        .call(
            "/describeMediaStorageConfiguration",
            json!({ "ChannelARN": arn }),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        d["MediaStorageConfiguration"],
        json!({ "Status": "ENABLED", "StreamARN": stream })
    );
    let mapped = c
        .call(
            "/describeMappedResourceConfiguration",
            json!({ "StreamName": "stored" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        mapped["MappedResourceConfigurationList"],
        json!([{ "Type": "SIGNALING_CHANNEL", "ARN": arn }])
    );

    // A stream stores one channel only.
    let r = c
        .call(
            "/updateMediaStorageConfiguration",
            json!({ "ChannelARN": other, "MediaStorageConfiguration": { "Status": "ENABLED", "StreamARN": stream } }),
        )
        .await;
    r.expect_error(400, "ResourceInUseException");
    assert!(r.message().contains(&arn), "{}", r.message());

    // The WEBRTC endpoint is served once the channel ingests.
    let ep = c
        .call("/getSignalingChannelEndpoint", json!({
            "ChannelARN": arn,
            "SingleMasterChannelEndpointConfiguration": { "Protocols": ["WEBRTC"], "Role": "MASTER" }
        }))
        .await
        .ok()
        .json();
    assert_eq!(ep["ResourceEndpointList"][0]["Protocol"], "WEBRTC");

    // Disabling frees the stream for the other channel.
    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": arn, "MediaStorageConfiguration": { "Status": "DISABLED" } }),
    )
    .await
    .ok();
    let mapped = c
        .call(
            "/describeMappedResourceConfiguration",
            json!({ "StreamName": "stored" }),
        )
        .await
        .ok()
        .json();
    assert_eq!(mapped["MappedResourceConfigurationList"], json!([]));
    c.call(
        "/updateMediaStorageConfiguration",
        json!({ "ChannelARN": other, "MediaStorageConfiguration": { "Status": "ENABLED", "StreamARN": stream } }),
    )
    .await
    .ok();
    srv.stop().await;
}

#[tokio::test]
async fn resource_tags_on_channels() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "tagged").await;
    let stream = c.create_stream("tagged-stream", 1).await;
    c.call(
        "/TagResource",
        json!({ "ResourceARN": arn, "Tags": [{ "Key": "a", "Value": "1" }, { "Key": "b", "Value": "2" }] }),
    )
    .await
    .ok();
    c.call(
        "/TagResource",
        json!({ "ResourceARN": arn, "Tags": [{ "Key": "b", "Value": "20" }, { "Key": "c" }] }),
    )
    .await
    .ok();
    let tags = c
        .call("/ListTagsForResource", json!({ "ResourceARN": arn }))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({ "a": "1", "b": "20", "c": "" }));
    c.call(
        "/UntagResource",
        json!({ "ResourceARN": arn, "TagKeyList": ["a", "missing"] }),
    )
    .await
    .ok();
    let tags = c
        .call("/ListTagsForResource", json!({ "ResourceARN": arn }))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({ "b": "20", "c": "" }));

    let many: Vec<Value> = (0..49)
        .map(|i| json!({ "Key": format!("k{i}"), "Value": "v" }))
        .collect();
    c.call("/TagResource", json!({ "ResourceARN": arn, "Tags": many }))
        .await
        .expect_error(400, "TagsPerResourceExceededLimitException");
    c.call("/TagResource", json!({ "ResourceARN": arn, "Tags": [] }))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call(
        "/UntagResource",
        json!({ "ResourceARN": arn, "TagKeyList": [] }),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    let missing = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/none/1";
    c.call("/ListTagsForResource", json!({ "ResourceARN": missing }))
        .await
        .expect_error(404, "ResourceNotFoundException");
    c.call(
        "/TagResource",
        json!({ "ResourceARN": missing, "Tags": [{ "Key": "a", "Value": "1" }] }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");

    // Stream ARNs still reach the stream's tags.
    c.call(
        "/TagResource",
        json!({ "ResourceARN": stream, "Tags": [{ "Key": "s", "Value": "1" }] }),
    )
    .await
    .ok();
    let tags = c
        .call("/ListTagsForResource", json!({ "ResourceARN": stream }))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({ "s": "1" }));
    srv.stop().await;
}

#[tokio::test]
async fn ice_server_config_without_a_turn_server_lists_none() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "ice").await;
    let r = c
        .call(
            "/v1/get-ice-server-config",
            json!({ "ChannelARN": arn, "ClientId": "viewer-1", "Service": "TURN" }),
        )
        .await
        .ok()
        .json();
    // The test process sets no KVS_LOCAL_TURN_* variables: there is no relay to hand out.
    assert_eq!(r, json!({ "IceServerList": [] }));
    for (body, member) in [
        (json!({ "ChannelARN": arn, "Service": "STUN" }), "Service"),
        (
            json!({ "ChannelARN": arn, "ClientId": "bad id" }),
            "ClientId",
        ),
        (json!({ "ChannelARN": arn, "Username": "" }), "Username"),
        (json!({}), "ChannelARN"),
    ] {
        let r = c.call("/v1/get-ice-server-config", body).await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }
    c.call(
        "/v1/get-ice-server-config",
        json!({ "ChannelARN": "arn:aws:kinesisvideo:us-east-1:123456789012:channel/none/1" }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn alexa_offer_gets_no_answer_without_a_master() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = create_channel(&c, "alexa").await;
    let r = c
        .call(
            "/v1/send-alexa-offer-to-master",
            json!({ "ChannelARN": arn, "SenderClientId": "alexa-1", "MessagePayload": "djA9MA==" }),
        )
        .await
        .ok();
    assert_eq!(r.json(), json!({}), "no master is connected, so no Answer");
    for (body, member) in [
        (
            json!({ "ChannelARN": arn, "SenderClientId": "alexa-1", "MessagePayload": "not base64!" }),
            "MessagePayload",
        ),
        (
            json!({ "ChannelARN": arn, "SenderClientId": "alexa-1", "MessagePayload": "" }),
            "MessagePayload",
        ),
        (
            json!({ "ChannelARN": arn, "MessagePayload": "djA9MA==" }),
            "SenderClientId",
        ),
        (
            json!({ "ChannelARN": arn, "SenderClientId": "a b", "MessagePayload": "djA9MA==" }),
            "SenderClientId",
        ),
    ] {
        let r = c.call("/v1/send-alexa-offer-to-master", body).await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains(member), "{member}: {}", r.message());
    }
    c.call(
        "/v1/send-alexa-offer-to-master",
        json!({ "ChannelARN": "arn:aws:kinesisvideo:us-east-1:123456789012:channel/none/1",
                "SenderClientId": "alexa-1", "MessagePayload": "djA9MA==" }),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

/// The binary started with a TURN server configured, killed on drop.
#[tokio::test]
async fn ice_server_config_hands_out_turn_rest_api_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::spawn_binary(
        dir.path(),
        &[],
        &[
            (
                "KVS_LOCAL_TURN_URIS",
                "turn:127.0.0.1:3478?transport=udp, turns:127.0.0.1:5349?transport=tcp",
            ),
            ("KVS_LOCAL_TURN_SECRET", "shared-secret"),
        ],
    );
    let c = &bin.client;
    let arn = create_channel(c, "relay").await;
    let before = common::now_secs() as u64;
    let r = c
        .call(
            "/v1/get-ice-server-config",
            json!({ "ChannelARN": arn, "ClientId": "viewer-9" }),
        )
        .await
        .ok()
        .json();
    let after = common::now_secs() as u64;
    let list = r["IceServerList"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{r}");
    let server = &list[0];
    assert_eq!(server["Ttl"], 300);
    assert_eq!(
        server["Uris"],
        json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turns:127.0.0.1:5349?transport=tcp"
        ])
    );
    let username = server["Username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(user, "viewer-9");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 300..=after + 300).contains(&expiry),
        "expiry {expiry}"
    );
    assert_eq!(
        server["Password"],
        kvs_local::api::signaling::turn_password("shared-secret", username).as_str()
    );
    // Username takes precedence over ClientId.
    let r = c
        .call(
            "/v1/get-ice-server-config",
            json!({ "ChannelARN": arn, "ClientId": "viewer-9", "Username": "alice" }),
        )
        .await
        .ok()
        .json();
    assert!(
        r["IceServerList"][0]["Username"]
            .as_str()
            .unwrap()
            .ends_with(":alice")
    );
}
