//! The official C++ producer's PutMedia requests (../shared/testdata/cpp-producer/*/004-putMedia.http +
//! .chunked), replayed byte for byte over TCP, verify, ingest with the same fragment count as the capture, and read
//! back byte-identical.

mod common;

use std::path::Path;

use common::TestServer;
use kvs_mkv::ack::AckEventType;
use kvs_mkv::stream::{MkvEvent, MkvStreamParser};
use serde_json::json;

/// Raw clusters of a Matroska stream.
fn clusters(mkv: &[u8]) -> Vec<Vec<u8>> {
    let mut p = MkvStreamParser::default();
    p.push(mkv);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut events = Vec::new();
    while let Ok(Some(e)) = p.next_event() {
        events.push(e);
    }
    while let Ok(Some(e)) = p.finish() {
        events.push(e);
    }
    for e in events {
        match e {
            MkvEvent::ClusterStart { raw_header, .. } => out.push(raw_header.to_vec()),
            MkvEvent::ClusterChild { raw, .. } => {
                if let Some(c) = out.last_mut() {
                    c.extend_from_slice(&raw);
                }
            }
            _ => {}
        }
    }
    out
}

async fn replay(scenario: &str) {
    let dir = common::testdata(&format!("cpp-producer/{scenario}"));
    let head = std::fs::read(dir.join("004-putMedia.http")).unwrap();
    let chunked = std::fs::read(dir.join("004-putMedia.chunked")).unwrap();
    let capture_acks = std::fs::read_to_string(dir.join("004-putMedia.acks.jsonl")).unwrap();
    let expected_fragments = capture_acks
        .lines()
        .filter(|l| l.contains("\"RECEIVED\""))
        .count();
    let head_text = String::from_utf8_lossy(&head).to_string();
    let stream = head_text
        .lines()
        .find_map(|l| l.strip_prefix("x-amzn-stream-name: "))
        .expect("stream name header")
        .trim()
        .to_owned();

    // The captures are dated 2026-11-21: replaying them needs the clock check off.
    let srv = TestServer::start_with(|c| c.check_clock_skew = false).await;
    let c = srv.client();
    c.create_stream(&stream, 2).await;

    let mut conn = common::PutConn::open(srv.addr, head).await;
    conn.raw(&chunked).await;
    assert_eq!(
        conn.status().await,
        200,
        "{scenario}: the captured signature verifies"
    );
    let acks = conn.drain().await;
    assert_eq!(
        conn.interim,
        [100],
        "{scenario}: Expect: 100-continue is answered"
    );
    let count = |k: AckEventType| acks.iter().filter(|a| a.event_type == k).count();
    assert!(
        acks.iter().all(|a| a.event_type != AckEventType::Error),
        "{scenario}: {acks:?}"
    );
    assert_eq!(
        count(AckEventType::Buffering),
        expected_fragments,
        "{scenario}"
    );
    assert_eq!(
        count(AckEventType::Received),
        expected_fragments,
        "{scenario}"
    );
    assert_eq!(
        count(AckEventType::Persisted),
        expected_fragments,
        "{scenario}"
    );
    // The acknowledged timecodes are the capture's cluster timecodes.
    let capture_timecodes: Vec<u64> = capture_acks
        .lines()
        .filter(|l| l.contains("\"PERSISTED\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["FragmentTimecode"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let timecodes: Vec<u64> = acks
        .iter()
        .filter(|a| a.event_type == AckEventType::Persisted)
        .map(|a| a.fragment_timecode.unwrap())
        .collect();
    assert_eq!(timecodes, capture_timecodes);

    assert_eq!(c.fragments(&stream).await.len(), expected_fragments);

    // Reading back gives the clusters byte for byte.
    let sent = clusters(&std::fs::read(dir.join("004-putMedia.mkv")).unwrap());
    assert_eq!(sent.len(), expected_fragments);
    let media = c
        .get_media(&stream, json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    assert_eq!(media.content_type.as_deref(), Some("video/webm"));
    let docs = common::parse_chain(&media.body);
    assert_eq!(docs.len(), expected_fragments);
    for (doc, cluster) in docs.iter().zip(&sent) {
        assert_eq!(
            &doc.cluster_raw, cluster,
            "{scenario}: a cluster read back differs from the one sent"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn video_h264_create_replays() {
    replay("video-h264-create").await;
}

#[tokio::test]
async fn video_h264_tags_replays() {
    replay("video-h264-tags").await;
}

#[tokio::test]
async fn audio_video_replays() {
    replay("audio-video").await;
}

#[test]
fn every_scenario_has_a_replay_test() {
    let root = common::testdata("cpp-producer");
    let mut scenarios: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| Path::new(&e.path()).join("004-putMedia.chunked").exists())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    scenarios.sort();
    assert_eq!(
        scenarios,
        ["audio-video", "video-h264-create", "video-h264-tags"]
    );
}

/// Replays a whole captured session in order (DescribeStream, CreateStream, GetDataEndpoint, PutMedia) on one
/// server, each request byte for byte on its own connection, and checks every answer's status against the
/// capture's. Only the scenarios where the producer creates its stream: the others name a stream ARN with the
/// recording server's creation time, which no other server reproduces.
async fn replay_session(scenario: &str) {
    let dir = common::testdata(&format!("cpp-producer/{scenario}"));
    let srv = TestServer::start_with(|c| c.check_clock_skew = false).await;
    let mut requests: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .collect();
    requests.sort();
    assert_eq!(requests.len(), 4, "{scenario}: four requests");
    for http in requests {
        let head = std::fs::read(&http).unwrap();
        let expected: u16 = {
            let raw = std::fs::read(http.with_extension("response.raw")).unwrap();
            let text = String::from_utf8_lossy(&raw).to_string();
            // PutMedia's capture starts with the interim 100; take the final status.
            text.lines()
                .filter(|l| l.starts_with("HTTP/1.1 "))
                .map(|l| l[9..12].parse::<u16>().unwrap())
                .find(|s| *s >= 200)
                .unwrap()
        };
        let name = http.file_name().unwrap().to_string_lossy().to_string();
        let body = if name.ends_with("putMedia.http") {
            std::fs::read(dir.join("004-putMedia.chunked")).unwrap()
        } else {
            std::fs::read(http.with_extension("body")).unwrap()
        };
        let mut conn = common::PutConn::open(srv.addr, head).await;
        conn.raw(&body).await;
        let status = conn.status().await;
        assert_eq!(status, expected, "{scenario} {name}");
        if name.ends_with("putMedia.http") {
            let acks = conn.drain().await;
            assert!(
                acks.iter().any(|a| a.event_type == AckEventType::Persisted),
                "{scenario}: the stream created by the session stores what it receives"
            );
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn video_h264_create_session_replays() {
    replay_session("video-h264-create").await;
}

#[tokio::test]
async fn audio_video_session_replays() {
    replay_session("audio-video").await;
}
