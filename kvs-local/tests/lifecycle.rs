//! Retention enforcement by the background sweep, and shutdown ending streaming requests.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, mkv};
use kvs_mkv::ack::AckEventType;
use serde_json::json;

fn segment_files(dir: &std::path::Path) -> usize {
    let streams = dir.join("streams");
    std::fs::read_dir(streams)
        .map(|d| {
            d.flatten()
                .map(|s| std::fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn the_sweep_removes_fragments_past_their_retention() {
    // One "hour" lasts 1 s here.
    let srv = TestServer::start_with(|c| {
        c.retention_hour = Duration::from_secs(1);
        c.retention_sweep_interval = Duration::from_millis(200);
    })
    .await;
    let c = srv.client();
    c.create_stream("short", 1).await;
    c.create_stream("long", 1000).await;
    for stream in ["short", "long"] {
        let mut put = c.put_media(stream, &[]).await;
        let mut body = mkv::video_header();
        body.extend(mkv::cluster(1000, 2, 100));
        body.extend(mkv::cluster(2000, 2, 100));
        body.extend(mkv::end_of_fragment());
        put.chunk(&body).await;
        put.until(AckEventType::Persisted).await;
        put.until(AckEventType::Persisted).await;
        put.finish().await;
        put.drain().await;
    }
    assert_eq!(segment_files(srv.dir.path()), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = c.fragments("short").await;
        if listed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fragments older than the retention are still listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The expired stream's segment is gone, the other stream keeps everything.
    assert_eq!(segment_files(srv.dir.path()), 1);
    assert_eq!(c.fragments("long").await.len(), 2);
    let media = c
        .get_media("short", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    assert!(
        common::parse_chain(&media.body).is_empty(),
        "expired fragments are not served"
    );
    // New fragments on the swept stream go to a fresh segment and read back (with a retention long enough to
    // outlive the test).
    let version = c.describe("short").await["Version"]
        .as_str()
        .unwrap()
        .to_owned();
    c.call(
        "/updateDataRetention",
        json!({"StreamName": "short", "CurrentVersion": version,
               "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 1000}),
    )
    .await
    .ok();
    let mut put = c.put_media("short", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(9000, 2, 100));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    put.until(AckEventType::Persisted).await;
    put.finish().await;
    put.drain().await;
    let media = c
        .get_media("short", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    let docs = common::parse_chain(&media.body);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].cluster_timecode, Some(9000));
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streaming_requests() {
    let srv = TestServer::start_with(|c| {
        c.get_media_idle_end = Duration::from_secs(60);
        c.put_media_idle_timeout = Duration::from_secs(60);
    })
    .await;
    let c = srv.client();
    c.create_stream("open", 1).await;
    let mut put = c.put_media("open", &[]).await;
    put.chunk(&mkv::video_header()).await;
    assert_eq!(put.status().await, 200);
    let body = json!({"StreamName": "open", "StartSelector": {"StartSelectorType": "NOW"}})
        .to_string()
        .into_bytes();
    let headers = c.signed_headers("/getMedia", &body, common::now_secs());
    let reader = c.send("/getMedia", body, headers).await;
    assert_eq!(reader.status(), 200);
    let started = Instant::now();
    srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Both responses ended.
    assert!(
        put.drain()
            .await
            .iter()
            .all(|a| a.event_type == AckEventType::Idle)
    );
    let rest = tokio::time::timeout(Duration::from_secs(2), reader.bytes()).await;
    assert!(rest.is_ok(), "the GetMedia body ended with the server");
}
