//! GetMedia: the per-fragment document layout (checked against the service's real output), every start selector,
//! live tailing, the end after idle time, continuation tokens and the reader limit.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, mkv};
use futures::StreamExt;
use kvs_mkv::ack::AckEventType;
use serde_json::json;

/// Puts `n` fragments (timecodes base, base+1000, ...) and waits until all are persisted.
async fn put_fragments(c: &Client, stream: &str, base: u64, n: u64) -> Vec<String> {
    c.put_fragments(stream, base, n, 3, 200).await
}

#[test]
fn aws_tags_are_byte_identical_to_the_services() {
    let capture = std::fs::read(common::testdata("getmedia/output_get_media.mkv")).unwrap();
    // The first document's Tags before its Cluster (offset 916, 8 + 235 bytes) and after it (547754, 8 + 163).
    let before = kvs_local::media::aws_tags(&[
        (
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "91343852333181432392682062607743920146159169392",
        ),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1511852109.126"),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "1511852108.513"),
    ]);
    assert_eq!(before.as_slice(), &capture[916..916 + 243]);
    let after = kvs_local::media::aws_tags(&[
        ("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "15858"),
        (
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
            "91343852333181432392682062607743920146159169392",
        ),
    ]);
    assert_eq!(after.as_slice(), &capture[547_754..547_754 + 171]);
}

#[tokio::test]
async fn documents_have_the_service_layout() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("layout", 1).await;
    let numbers = put_fragments(&c, "layout", 1_700_000_000_000, 2).await;
    let media = c
        .get_media("layout", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    assert_eq!(media.content_type.as_deref(), Some("video/webm"));
    let body = &media.body;
    // Each document starts with an EBML header and an unknown-size Segment (8-byte size, as the service writes).
    assert_eq!(&body[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
    let seg = body
        .windows(4)
        .position(|w| w == [0x18, 0x53, 0x80, 0x67])
        .unwrap();
    assert_eq!(
        &body[seg + 4..seg + 12],
        &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    let docs = common::parse_chain(body);
    assert_eq!(docs.len(), 2);
    for (doc, number) in docs.iter().zip(&numbers) {
        let names: Vec<&str> = doc.tags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
                "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
                "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
                "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
                "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
            ]
        );
        assert_eq!(
            doc.tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER"),
            Some(number.as_str())
        );
        assert_eq!(
            doc.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN"),
            Some(number.as_str())
        );
        assert_eq!(doc.blocks, 3);
        let server_ts = doc.tag("AWS_KINESISVIDEO_SERVER_TIMESTAMP").unwrap();
        assert_eq!(
            server_ts.split('.').nth(1).map(str::len),
            Some(3),
            "seconds with 3 decimals: {server_ts}"
        );
    }
    assert_eq!(
        docs[0].tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"),
        Some("1700000000.000")
    );
    assert_eq!(
        docs[1].tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"),
        Some("1700000001.000")
    );
    // The Tags before the cluster come right before it, and the trailing Tags right after it.
    srv.stop().await;
}

#[tokio::test]
async fn every_start_selector() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("sel", 1).await;
    let numbers = put_fragments(&c, "sel", 1_700_000_000_000, 4).await;
    let producer = |doc: &common::Doc| {
        doc.tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP")
            .unwrap()
            .to_owned()
    };
    let get = |sel: serde_json::Value| {
        let c = c.clone();
        async move { common::parse_chain(&c.get_media("sel", sel).await.ok().body) }
    };

    assert_eq!(get(json!({"StartSelectorType": "EARLIEST"})).await.len(), 4);
    let after =
        get(json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": numbers[1]}))
            .await;
    assert_eq!(
        after.iter().map(producer).collect::<Vec<_>>(),
        ["1700000002.000", "1700000003.000"]
    );
    let cont =
        get(json!({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": numbers[2]}))
            .await;
    assert_eq!(
        cont.iter().map(producer).collect::<Vec<_>>(),
        ["1700000003.000"]
    );
    let by_producer =
        get(json!({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": 1_700_000_001.5}))
            .await;
    assert_eq!(
        by_producer.iter().map(producer).collect::<Vec<_>>(),
        ["1700000002.000", "1700000003.000"]
    );
    let at_start =
        get(json!({"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": 1_700_000_001.0}))
            .await;
    assert_eq!(at_start.len(), 3);
    let server_ts: f64 = after[0]
        .tag("AWS_KINESISVIDEO_SERVER_TIMESTAMP")
        .unwrap()
        .parse()
        .unwrap();
    let by_server =
        get(json!({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": server_ts})).await;
    assert!(!by_server.is_empty() && by_server.len() <= 4);
    // NOW: only what arrives after the request; nothing arrives, so the body ends empty.
    let started = Instant::now();
    assert!(get(json!({"StartSelectorType": "NOW"})).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the body ends after the idle time"
    );

    // A fragment number that names no fragment: 200 and a body holding only the error tags (id 4000).
    for selector in [
        json!({"StartSelectorType": "FRAGMENT_NUMBER",
               "AfterFragmentNumber": kvs_local::fragment_id::fragment_number(1 << 40, 1000)}),
        json!({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": "12345"}),
    ] {
        let r = c.get_media("sel", selector).await.ok();
        assert_eq!(
            &r.body[..4],
            &[0x1A, 0x45, 0xDF, 0xA3],
            "the error is a document of its own"
        );
        let tags = common::all_tags(&r.body);
        let names: Vec<&str> = tags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["AWS_KINESISVIDEO_ERROR_CODE", "AWS_KINESISVIDEO_ERROR_ID"]
        );
        assert_eq!(tags[1].1, "4000");
    }
    // Errors.
    c.call("/getMedia", json!({"StreamName": "sel"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.get_media("sel", json!({"StartSelectorType": "LATEST"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.get_media("sel", json!({"StartSelectorType": "FRAGMENT_NUMBER"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.get_media(
        "sel",
        json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12ab"}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.get_media("nope", json!({"StartSelectorType": "NOW"}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn live_tailing_sends_a_fragment_once_received() {
    let srv = TestServer::start_with(|c| c.get_media_idle_end = Duration::from_secs(3)).await;
    let c = srv.client();
    c.create_stream("live", 0).await;
    let body = json!({"StreamName": "live", "StartSelector": {"StartSelectorType": "NOW"}})
        .to_string()
        .into_bytes();
    let headers = c.signed_headers("/getMedia", &body, common::now_secs());
    let resp = c.send("/getMedia", body, headers).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();

    let mut put = c.put_media("live", &[]).await;
    let mut data = mkv::video_header();
    data.extend(mkv::cluster(5000, 3, 100));
    data.extend(mkv::cluster(6000, 3, 100));
    put.chunk(&data).await;
    put.until(AckEventType::Received).await;
    // The PutMedia stays open; the first fragment must reach the reader now.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while common::parse_chain(&got)
        .iter()
        .all(|d| d.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN").is_none())
    {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("the received fragment arrives while the producer is still sending")
            .expect("body open")
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    let docs = common::parse_chain(&got);
    assert_eq!(docs[0].cluster_timecode, Some(5000));
    put.finish().await;
    put.drain().await;
    srv.stop().await;
}

#[tokio::test]
async fn at_most_three_readers_per_stream() {
    let srv = TestServer::start_with(|c| c.get_media_idle_end = Duration::from_secs(2)).await;
    let c = srv.client();
    c.create_stream("busy", 1).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let body = json!({"StreamName": "busy", "StartSelector": {"StartSelectorType": "NOW"}})
            .to_string()
            .into_bytes();
        let h = c.signed_headers("/getMedia", &body, common::now_secs());
        let r = c.send("/getMedia", body, h).await;
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    c.get_media("busy", json!({"StartSelectorType": "NOW"}))
        .await
        .expect_error(400, "ConnectionLimitExceededException");
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .get_media("busy", json!({"StartSelectorType": "EARLIEST"}))
        .await;
    assert_eq!(r.status, 200);
    srv.stop().await;
}
