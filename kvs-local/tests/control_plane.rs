//! Control-plane operations over real HTTP with SigV4, their validation and errors, and authentication failures.

mod common;

use common::{Client, TestServer};
use serde_json::json;

#[tokio::test]
async fn create_describe_list_update_delete() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = c.create_stream("cam-1", 2).await;
    assert!(
        arn.starts_with("arn:aws:kinesisvideo:us-east-1:123456789012:stream/cam-1/"),
        "{arn}"
    );
    let created_ms: u64 = arn.rsplit('/').next().unwrap().parse().unwrap();

    let info = c.describe("cam-1").await;
    assert_eq!(info["StreamName"], "cam-1");
    assert_eq!(info["StreamARN"], arn.as_str());
    assert_eq!(info["Status"], "ACTIVE");
    assert_eq!(info["DataRetentionInHours"], 2);
    assert_eq!(info["MediaType"], "video/h264");
    // Timestamps are epoch seconds as numbers.
    let creation = info["CreationTime"]
        .as_f64()
        .expect("CreationTime is a number");
    assert_eq!((creation * 1000.0).round() as u64, created_ms);
    let version = info["Version"].as_str().unwrap().to_owned();

    // Describe by ARN too.
    let by_arn = c
        .call("/describeStream", json!({"StreamARN": arn}))
        .await
        .ok()
        .json();
    assert_eq!(by_arn["StreamInfo"]["StreamName"], "cam-1");

    // UpdateStream checks the version and changes it.
    c.call(
        "/updateStream",
        json!({"StreamName": "cam-1", "CurrentVersion": "stale", "DeviceName": "d"}),
    )
    .await
    .expect_error(400, "VersionMismatchException");
    c.call("/updateStream", json!({"StreamName": "cam-1", "CurrentVersion": version, "DeviceName": "dev-1", "MediaType": "video/h265"}))
        .await
        .ok();
    let info = c.describe("cam-1").await;
    assert_eq!(info["DeviceName"], "dev-1");
    assert_eq!(info["MediaType"], "video/h265");
    let v2 = info["Version"].as_str().unwrap().to_owned();
    assert_ne!(v2, version);

    // Retention up and down.
    c.call("/updateDataRetention", json!({"StreamName": "cam-1", "CurrentVersion": v2, "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 10}))
        .await
        .ok();
    let info = c.describe("cam-1").await;
    assert_eq!(info["DataRetentionInHours"], 12);
    let v3 = info["Version"].as_str().unwrap().to_owned();
    let r = c
        .call("/updateDataRetention", json!({"StreamName": "cam-1", "CurrentVersion": v3, "Operation": "DECREASE_DATA_RETENTION", "DataRetentionChangeInHours": 13}))
        .await;
    r.expect_error(400, "InvalidArgumentException");
    c.call("/updateDataRetention", json!({"StreamName": "cam-1", "CurrentVersion": v3, "Operation": "SIDEWAYS", "DataRetentionChangeInHours": 1}))
        .await
        .expect_error(400, "InvalidArgumentException");

    // Duplicate create.
    c.call("/createStream", json!({"StreamName": "cam-1"}))
        .await
        .expect_error(400, "ResourceInUseException");

    // Delete with a wrong version, then right.
    c.call(
        "/deleteStream",
        json!({"StreamARN": arn, "CurrentVersion": "nope"}),
    )
    .await
    .expect_error(400, "VersionMismatchException");
    c.call(
        "/deleteStream",
        json!({"StreamARN": arn, "CurrentVersion": v3}),
    )
    .await
    .ok();
    c.call("/describeStream", json!({"StreamName": "cam-1"}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    c.call("/deleteStream", json!({"StreamARN": arn}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn list_streams_pages_and_filters() {
    let srv = TestServer::start().await;
    let c = srv.client();
    for name in ["b-2", "a-1", "b-1", "c-1", "b-3"] {
        c.create_stream(name, 0).await;
    }
    let all = c.call("/listStreams", json!({})).await.ok().json();
    let names: Vec<&str> = all["StreamInfoList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["StreamName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-1", "b-1", "b-2", "b-3", "c-1"]);
    assert!(all.get("NextToken").is_none());

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({"MaxResults": 2, "StreamNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "b-"}});
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let page = c.call("/listStreams", req).await.ok().json();
        let list = page["StreamInfoList"].as_array().unwrap();
        assert!(list.len() <= 2);
        seen.extend(
            list.iter()
                .map(|s| s["StreamName"].as_str().unwrap().to_owned()),
        );
        match page.get("NextToken").and_then(|t| t.as_str()) {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["b-1", "b-2", "b-3"]);

    c.call("/listStreams", json!({"MaxResults": 0}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call("/listStreams", json!({"NextToken": "!!!"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call(
        "/listStreams",
        json!({"StreamNameCondition": {"ComparisonOperator": "ENDS_WITH", "ComparisonValue": "x"}}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    srv.stop().await;
}

#[tokio::test]
async fn data_endpoint_tags_and_storage_configuration() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = c.create_stream("cam-t", 1).await;
    for api in [
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_DASH_STREAMING_SESSION_URL",
        "GET_CLIP",
        "GET_IMAGES",
    ] {
        let r = c
            .call(
                "/getDataEndpoint",
                json!({"StreamName": "cam-t", "APIName": api}),
            )
            .await
            .ok()
            .json();
        assert_eq!(r["DataEndpoint"], srv.url.as_str(), "{api}");
    }
    c.call(
        "/getDataEndpoint",
        json!({"StreamName": "cam-t", "APIName": "PUT"}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/getDataEndpoint",
        json!({"StreamName": "nope", "APIName": "PUT_MEDIA"}),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");

    c.call(
        "/tagStream",
        json!({"StreamName": "cam-t", "Tags": {"team": "video", "env": "dev"}}),
    )
    .await
    .ok();
    let tags = c
        .call("/listTagsForStream", json!({"StreamName": "cam-t"}))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({"team": "video", "env": "dev"}));
    c.call(
        "/untagStream",
        json!({"StreamARN": arn, "TagKeyList": ["env"]}),
    )
    .await
    .ok();
    c.call(
        "/TagResource",
        json!({"ResourceARN": arn, "Tags": [{"Key": "owner", "Value": "me"}]}),
    )
    .await
    .ok();
    let tags = c
        .call("/ListTagsForResource", json!({"ResourceARN": arn}))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({"team": "video", "owner": "me"}));
    c.call(
        "/UntagResource",
        json!({"ResourceARN": arn, "TagKeyList": ["team", "owner"]}),
    )
    .await
    .ok();
    let tags = c
        .call("/listTagsForStream", json!({"StreamName": "cam-t"}))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({}));

    // 51 tags are too many.
    let many: serde_json::Map<String, serde_json::Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    c.call("/tagStream", json!({"StreamName": "cam-t", "Tags": many}))
        .await
        .expect_error(400, "TagsPerResourceExceededLimitException");
    c.call(
        "/createStream",
        json!({"StreamName": "cam-many", "Tags": many}),
    )
    .await
    .expect_error(400, "TagsPerResourceExceededLimitException");
    c.call("/TagResource", json!({"ResourceARN": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/ghost/1", "Tags": [{"Key": "a", "Value": "b"}]}))
        .await
        .expect_error(404, "ResourceNotFoundException");

    let sc = c
        .call(
            "/describeStreamStorageConfiguration",
            json!({"StreamName": "cam-t"}),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        sc["StreamStorageConfiguration"]["DefaultStorageTier"],
        "HOT"
    );
    assert_eq!(sc["StreamARN"], arn.as_str());
    let version = c.describe("cam-t").await["Version"]
        .as_str()
        .unwrap()
        .to_owned();
    c.call("/updateStreamStorageConfiguration", json!({"StreamName": "cam-t", "CurrentVersion": version, "StreamStorageConfiguration": {"DefaultStorageTier": "WARM"}}))
        .await
        .ok();
    let sc = c
        .call(
            "/describeStreamStorageConfiguration",
            json!({"StreamARN": arn}),
        )
        .await
        .ok()
        .json();
    assert_eq!(
        sc["StreamStorageConfiguration"]["DefaultStorageTier"],
        "WARM"
    );
    c.call("/updateStreamStorageConfiguration", json!({"StreamName": "cam-t", "CurrentVersion": version, "StreamStorageConfiguration": {"DefaultStorageTier": "COLD"}}))
        .await
        .expect_error(400, "InvalidArgumentException");
    srv.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_error_types() {
    let srv = TestServer::start().await;
    let c = srv.client();
    // Names off the pattern, including path-like ones; `.` and `..` are valid names and work.
    for bad in ["a/b", "", "cam a", &"x".repeat(257)] {
        let r = c.call("/createStream", json!({"StreamName": bad})).await;
        r.expect_error(400, "InvalidArgumentException");
        assert!(r.message().contains("StreamName"), "{}", r.message());
    }
    for odd in [".", ".."] {
        c.create_stream(odd, 1).await;
        assert_eq!(c.describe(odd).await["StreamName"], odd);
    }
    // Wrong types and malformed JSON.
    c.call("/createStream", json!({"StreamName": 42}))
        .await
        .expect_error(400, "SerializationException");
    c.call(
        "/createStream",
        json!({"StreamName": "ok-name", "DataRetentionInHours": "two"}),
    )
    .await
    .expect_error(400, "SerializationException");
    c.call(
        "/createStream",
        json!({"StreamName": "ok-name", "DataRetentionInHours": -1}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/createStream",
        json!({"StreamName": "ok-name", "MediaType": "h264"}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call_raw("/createStream", b"{\"StreamName\": ".to_vec())
        .await
        .expect_error(400, "SerializationException");
    c.call_raw("/createStream", b"[]".to_vec())
        .await
        .expect_error(400, "SerializationException");
    c.call("/describeStream", json!({}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call("/describeStream", json!({"StreamARN": "arn:nope"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    // Unknown operation and oversized bodies.
    c.call("/fooBar", json!({}))
        .await
        .expect_error(404, "UnknownOperationException");
    let big = format!("{{\"StreamName\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    c.call_raw("/createStream", big.into_bytes())
        .await
        .expect_error(413, "RequestEntityTooLargeException");
    // Nothing was created by any of that.
    let list = c.call("/listStreams", json!({})).await.ok().json();
    assert_eq!(list["StreamInfoList"].as_array().unwrap().len(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn authentication_failures() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("cam-auth", 0).await;
    let body = json!({"StreamName": "cam-auth"}).to_string().into_bytes();

    // No Authorization header.
    let mut h = c.signed_headers("/describeStream", &body, common::now_secs());
    h.remove("authorization");
    let r = Client::reply(c.send("/describeStream", body.clone(), h).await).await;
    r.expect_error(403, "IncompleteSignature");

    // Malformed Authorization.
    let mut h = c.signed_headers("/describeStream", &body, common::now_secs());
    h.insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=oops".parse().unwrap(),
    );
    Client::reply(c.send("/describeStream", body.clone(), h).await)
        .await
        .expect_error(403, "IncompleteSignature");

    // Unknown key.
    let stranger = Client::new(
        srv.addr,
        kvs_local::Credential {
            access_key_id: "AKIDUNKNOWN".into(),
            ..common::credential()
        },
    );
    let r = stranger
        .call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await;
    r.expect_error(403, "UnrecognizedClientException");
    assert!(r.message().contains("AKIDUNKNOWN"));

    // Wrong secret: the signature does not match.
    let wrong = Client::new(
        srv.addr,
        kvs_local::Credential {
            secret_access_key: "wrong".into(),
            ..common::credential()
        },
    );
    wrong
        .call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await
        .expect_error(403, "AccessDeniedException");

    // Body changed after signing.
    let h = c.signed_headers("/describeStream", &body, common::now_secs());
    let other = json!({"StreamName": "cam-other"}).to_string().into_bytes();
    Client::reply(c.send("/describeStream", other, h).await)
        .await
        .expect_error(403, "AccessDeniedException");

    // Signed 20 minutes ago.
    let h = c.signed_headers("/describeStream", &body, common::now_secs() - 20 * 60);
    let r = Client::reply(c.send("/describeStream", body.clone(), h).await).await;
    r.expect_error(403, "ExpiredTokenException");

    // Wrong region in the scope.
    let mut eu = c.clone();
    eu.region = "eu-west-1".into();
    let r = eu
        .call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await;
    r.expect_error(403, "IncompleteSignature");
    assert!(r.message().contains("region"));

    // Temporary credentials need their session token.
    let tok = Client::new(srv.addr, common::token_credential());
    tok.call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await
        .ok();
    let no_token = Client::new(
        srv.addr,
        kvs_local::Credential {
            session_token: None,
            ..common::token_credential()
        },
    );
    no_token
        .call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await
        .expect_error(403, "UnrecognizedClientException");

    // A session token this key was never given.
    let made_up = Client::new(
        srv.addr,
        kvs_local::Credential {
            session_token: Some("made-up".into()),
            ..common::credential()
        },
    );
    let r = made_up
        .call("/describeStream", json!({"StreamName": "cam-auth"}))
        .await;
    r.expect_error(403, "UnrecognizedClientException");
    assert!(r.message().contains("session token"), "{}", r.message());

    // x-amz-content-sha256 UNSIGNED-PAYLOAD is accepted when signed that way.
    let mut headers = http::HeaderMap::new();
    headers.insert("host", srv.addr.to_string().parse().unwrap());
    headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
    kvs_local::sigv4::sign(
        &http::Method::POST,
        &"/describeStream".parse().unwrap(),
        &mut headers,
        "UNSIGNED-PAYLOAD",
        &common::credential(),
        "us-east-1",
        common::now_secs(),
    )
    .unwrap();
    Client::reply(c.send("/describeStream", body, headers).await)
        .await
        .ok();
    srv.stop().await;
}

#[tokio::test]
async fn streams_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let c = srv.client();
    let arn = c.create_stream("keep-me", 5).await;
    c.call(
        "/tagStream",
        json!({"StreamName": "keep-me", "Tags": {"a": "b"}}),
    )
    .await
    .ok();
    let before = c.describe("keep-me").await;
    srv.restart(|_| {}).await;
    let c = srv.client();
    let after = c.describe("keep-me").await;
    assert_eq!(before, after);
    assert_eq!(after["StreamARN"], arn.as_str());
    let tags = c
        .call("/listTagsForStream", json!({"StreamName": "keep-me"}))
        .await
        .ok()
        .json();
    assert_eq!(tags["Tags"], json!({"a": "b"}));
    // A deleted stream stays deleted; a new stream with the same name is a different stream.
    c.call("/deleteStream", json!({"StreamARN": arn}))
        .await
        .ok();
    srv.restart(|_| {}).await;
    let c = srv.client();
    c.call("/describeStream", json!({"StreamName": "keep-me"}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn get_data_endpoint_answers_the_advertised_url_when_one_is_set() {
    // A proxy (or tunnel) in front of kvs-local must also be on the data path, so GetDataEndpoint names it.
    let srv =
        TestServer::start_with(|c| c.advertised_url = Some("http://127.0.0.1:9".to_owned())).await;
    let c = srv.client();
    c.create_stream("behind-proxy", 1).await;
    let r = c
        .call(
            "/getDataEndpoint",
            json!({"StreamName": "behind-proxy", "APIName": "PUT_MEDIA"}),
        )
        .await
        .ok()
        .json();
    assert_eq!(r["DataEndpoint"], "http://127.0.0.1:9");
    srv.stop().await;
}
