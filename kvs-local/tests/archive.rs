//! ListFragments and GetMediaForFragmentList, and what retention 0 means for them.

mod common;

use std::collections::BTreeSet;

use common::{Client, TestServer, mkv};
use kvs_mkv::ack::AckEventType;
use serde_json::{Value, json};

async fn put_fragments(c: &Client, stream: &str, base: u64, n: u64) -> Vec<String> {
    c.put_fragments(stream, base, n, 2, 50).await
}

fn numbers_of(list: &Value) -> Vec<String> {
    list["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FragmentNumber"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_fragments_ranges_pages_and_shapes() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("arch", 1).await;
    let numbers = put_fragments(&c, "arch", 1_700_000_000_000, 12).await;

    let all = c
        .call("/listFragments", json!({"StreamName": "arch"}))
        .await
        .ok()
        .json();
    let got: BTreeSet<String> = numbers_of(&all).into_iter().collect();
    assert_eq!(got, numbers.iter().cloned().collect());
    assert!(all.get("NextToken").is_none());
    let f = &all["Fragments"].as_array().unwrap()[0];
    assert!(f["FragmentSizeInBytes"].as_u64().unwrap() > 100);
    assert!(f["ServerTimestamp"].is_f64());
    assert!(f["ProducerTimestamp"].is_number());
    assert_eq!(
        f["FragmentLengthInMilliseconds"].as_u64(),
        Some(66),
        "2 frames 33 ms apart last 66 ms"
    );

    // Producer-timestamp range, inclusive at both ends: fragments 2..=5.
    let ranged = c
        .call(
            "/listFragments",
            json!({"StreamName": "arch", "FragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1_700_000_002.0, "EndTimestamp": 1_700_000_005.0}}}),
        )
        .await
        .ok()
        .json();
    let mut ranged = numbers_of(&ranged);
    ranged.sort();
    assert_eq!(ranged, numbers[2..=5].to_vec());

    // Server-timestamp range covering everything.
    let wide = c
        .call(
            "/listFragments",
            json!({"StreamName": "arch", "FragmentSelector": {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 4_000_000_000u64}}}),
        )
        .await
        .ok()
        .json();
    assert_eq!(numbers_of(&wide).len(), 12);

    // Pages of 5: 5, 5, 2, each with a NextToken but the last.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"StreamName": "arch", "MaxResults": 5});
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let page = c.call("/listFragments", req).await.ok().json();
        pages += 1;
        seen.extend(numbers_of(&page));
        match page.get("NextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, numbers);

    // Errors.
    c.call(
        "/listFragments",
        json!({"StreamName": "arch", "MaxResults": 1001}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/listFragments",
        json!({"StreamName": "arch", "NextToken": "garbage"}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call("/listFragments", json!({"StreamName": "arch", "FragmentSelector": {"FragmentSelectorType": "WALL_CLOCK", "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 1}}}))
        .await
        .expect_error(400, "InvalidArgumentException");
    c.call("/listFragments", json!({"StreamName": "ghost"}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn list_fragments_order_is_arbitrary_unless_asked() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("order", 1).await;
    let numbers = put_fragments(&c, "order", 1000, 20).await;
    // With 20 fragments a shuffled page is in order with probability 1/20!: eight tries all in order means no shuffle.
    let mut any_unordered = false;
    for _ in 0..8 {
        let list = c
            .call("/listFragments", json!({"StreamName": "order"}))
            .await
            .ok()
            .json();
        if numbers_of(&list) != numbers {
            any_unordered = true;
        }
    }
    assert!(
        any_unordered,
        "ListFragments is not ordered, like the service"
    );
    srv.stop().await;

    let srv = TestServer::start_with(|c| c.ordered_list_fragments = true).await;
    let c = srv.client();
    c.create_stream("order", 1).await;
    let numbers = put_fragments(&c, "order", 1000, 20).await;
    let list = c
        .call("/listFragments", json!({"StreamName": "order"}))
        .await
        .ok()
        .json();
    assert_eq!(numbers_of(&list), numbers);
    srv.stop().await;
}

#[tokio::test]
async fn get_media_for_fragment_list_returns_the_requested_fragments() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("gm", 1).await;
    let numbers = put_fragments(&c, "gm", 1_700_000_000_000, 5).await;
    let pick = vec![numbers[3].clone(), numbers[0].clone()];
    let r = c
        .call(
            "/getMediaForFragmentList",
            json!({"StreamName": "gm", "Fragments": pick}),
        )
        .await
        .ok();
    assert_eq!(r.content_type.as_deref(), Some("video/webm"));
    let docs = common::parse_chain(&r.body);
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0].tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER"),
        Some(numbers[3].as_str())
    );
    assert_eq!(
        docs[1].tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER"),
        Some(numbers[0].as_str())
    );
    for d in &docs {
        assert!(d.tag("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW").is_none());
        assert!(d.tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN").is_none());
        // Seed 003 names these tags differently for GetMediaForFragmentList.
        let names: Vec<&str> = d.tags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
                "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP",
                "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
            ]
        );
    }
    assert_eq!(docs[0].cluster_timecode, Some(1_700_000_003_000));

    let too_many: Vec<String> = (0..1001).map(|_| numbers[0].clone()).collect();
    c.call(
        "/getMediaForFragmentList",
        json!({"StreamName": "gm", "Fragments": too_many}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call(
        "/getMediaForFragmentList",
        json!({"StreamName": "gm", "Fragments": []}),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    let unknown = kvs_local::fragment_id::fragment_number(999_999, 1);
    c.call(
        "/getMediaForFragmentList",
        json!({"StreamName": "gm", "Fragments": [unknown]}),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn retention_zero_has_no_archive() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("ephemeral", 0).await;
    let mut put = c.put_media("ephemeral", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1, 2, 10));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    let received = put.until(AckEventType::Received).await;
    put.finish().await;
    let rest = put.drain().await;
    assert!(
        rest.iter().all(|a| a.event_type != AckEventType::Persisted),
        "no PERSISTED without retention"
    );
    let r = c
        .call("/listFragments", json!({"StreamName": "ephemeral"}))
        .await;
    r.expect_error(400, "NoDataRetentionException");
    c.call(
        "/getMediaForFragmentList",
        json!({"StreamName": "ephemeral", "Fragments": [received.fragment_number.unwrap()]}),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    // Live readers still get what is in the buffer.
    let media = c
        .get_media("ephemeral", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    assert_eq!(common::parse_chain(&media.body).len(), 1);
    // Nothing of it reached the disk.
    let segments = walk(srv.dir.path());
    assert!(
        segments.iter().all(|p| !p.ends_with(".dat")),
        "{segments:?}"
    );
    srv.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
