//! Hostile and broken input: corrupted Matroska, random bytes, broken HTTP. The server answers with the right
//! error, keeps running, and other streams are unaffected.

mod common;

use std::time::Duration;

use common::{TestServer, mkv};
use kvs_mkv::ack::AckEventType;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn corrupted_and_random_media_never_breaks_the_server() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("victim", 1).await;
    c.create_stream("bystander", 1).await;

    // A healthy producer on another stream runs through it all.
    let mut healthy = c.put_media("bystander", &[]).await;
    healthy.chunk(&mkv::video_header()).await;

    let mut valid = mkv::video_header();
    for i in 0..4 {
        valid.extend(mkv::cluster(1000 + i * 1000, 4, 300));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..24u64 {
        let mut body = valid.clone();
        match round % 3 {
            // Flip a few bytes anywhere.
            0 => {
                for _ in 0..4 {
                    let i = rng.random_range(0..body.len());
                    body[i] = rng.random();
                }
            }
            // Random bytes after a valid header.
            1 => {
                body.truncate(mkv::video_header().len());
                body.extend((0..2000).map(|_| rng.random::<u8>()));
            }
            // Pure noise.
            _ => body = (0..3000).map(|_| rng.random::<u8>()).collect(),
        }
        let mut put = c.put_media("victim", &[]).await;
        put.chunk(&body).await;
        put.finish().await;
        let acks = put.drain().await;
        // Whatever happened, every ERROR is a known id and the session ended.
        for a in acks.iter().filter(|a| a.event_type == AckEventType::Error) {
            assert!(
                kvs_mkv::ack::AckErrorId::from_id(a.error_id.unwrap()).is_some(),
                "{a:?}"
            );
        }
        healthy
            .chunk(&mkv::cluster(10_000 + round * 1000, 2, 50))
            .await;
    }
    healthy.chunk(&mkv::end_of_fragment()).await;
    // Every bystander fragment is received and persisted.
    let mut persisted = 0;
    while persisted < 24 {
        healthy.until(AckEventType::Persisted).await;
        persisted += 1;
    }
    healthy.finish().await;
    // And the victim stream still takes a clean session.
    let stored = c.put_fragments("victim", 900_000, 1, 2, 10).await;
    assert_eq!(stored.len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn broken_http_is_answered_or_dropped_and_the_server_goes_on() {
    let srv = TestServer::start().await;
    for junk in [
        &b"\x16\x03\x01\x02\x00garbage-tls-hello\r\n\r\n"[..],
        b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /createStream HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 ") {
            let status: u16 = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
            assert!(
                (400..500).contains(&status),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    // A GET to an operation path is not an operation.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /listStreams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 404"), "{text}");
    assert!(
        text.contains("x-amzn-errortype: unknownoperationexception"),
        "{text}"
    );
    // Still serving.
    srv.client().call("/listStreams", json!({})).await.ok();
    srv.stop().await;
}
