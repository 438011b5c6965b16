//! PutMedia over a raw HTTP/1.1 connection: acknowledgements as they happen, every ERROR the service sends, the
//! connection limit, idle handling, the maximum connection duration and clients that vanish.

mod common;

use std::time::Duration;

use common::{TestServer, mkv};
use kvs_mkv::ack::{AckErrorId, AckEventType};
use serde_json::json;

#[tokio::test]
async fn acknowledgements_follow_each_fragment() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("cam", 1).await;
    let mut put = c.put_media("cam", &[]).await;
    put.chunk(&mkv::video_header()).await;
    assert_eq!(put.status().await, 200);
    let t0 = 1_700_000_000_000u64;
    put.chunk(&mkv::cluster(t0, 10, 1000)).await;
    let b = put.expect(AckEventType::Buffering).await;
    assert_eq!(b.fragment_timecode, Some(t0));
    let number1 = b.fragment_number.clone().unwrap();
    assert_eq!(number1.len(), 47);
    // The first fragment is complete when the second one starts.
    put.chunk(&mkv::cluster(t0 + 400, 10, 1000)).await;
    let r = put.expect(AckEventType::Received).await;
    assert_eq!(
        (r.fragment_timecode, r.fragment_number.as_deref()),
        (Some(t0), Some(number1.as_str()))
    );
    // BUFFERING of the second and PERSISTED of the first come in either order.
    let mut got = [put.next_ack().await.unwrap(), put.next_ack().await.unwrap()];
    got.sort_by_key(|a| a.event_type.as_str());
    assert_eq!(got[0].event_type, AckEventType::Buffering);
    assert_eq!(got[1].event_type, AckEventType::Persisted);
    assert_eq!(got[1].fragment_number.as_deref(), Some(number1.as_str()));
    let number2 = got[0].fragment_number.clone().unwrap();
    assert!(number2 > number1, "fragment numbers increase");
    // The closing tag ends the second fragment without a third cluster.
    put.chunk(&mkv::end_of_fragment()).await;
    assert_eq!(
        put.expect(AckEventType::Received).await.fragment_number,
        Some(number2.clone())
    );
    assert_eq!(
        put.expect(AckEventType::Persisted).await.fragment_number,
        Some(number2)
    );
    put.finish().await;
    assert!(
        put.drain()
            .await
            .iter()
            .all(|a| a.event_type == AckEventType::Idle)
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_body_ending_completes_the_last_fragment_and_no_persisted_without_retention() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("live-only", 0).await;
    let mut put = c.put_media("live-only", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1000, 5, 100));
    put.chunk(&body).await;
    put.finish().await;
    let acks = put.drain().await;
    let kinds: Vec<_> = acks
        .iter()
        .filter(|a| a.event_type != AckEventType::Idle)
        .map(|a| a.event_type)
        .collect();
    assert_eq!(kinds, [AckEventType::Buffering, AckEventType::Received]);
    srv.stop().await;
}

#[tokio::test]
async fn relative_timecodes_add_the_producer_start() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("rel", 1).await;
    let mut put = c
        .put_media(
            "rel",
            &[
                ("x-amzn-fragment-timecode-type", "RELATIVE"),
                ("x-amzn-producer-start-timestamp", "1700000100.250"),
            ],
        )
        .await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(2000, 3, 100));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    put.until(AckEventType::Persisted).await;
    put.finish().await;
    put.drain().await;
    let f = &c.fragments("rel").await[0];
    assert_eq!(f["ProducerTimestamp"].as_f64().unwrap(), 1_700_000_102.25);
    srv.stop().await;
}

async fn expect_error(
    srv: &TestServer,
    stream: &str,
    body: Vec<u8>,
    id: AckErrorId,
) -> (Vec<kvs_mkv::ack::Ack>, kvs_mkv::ack::Ack) {
    let c = srv.client();
    let mut put = c.put_media(stream, &[]).await;
    put.chunk(&body).await;
    let mut acks = Vec::new();
    let error = loop {
        let a = put
            .next_ack()
            .await
            .unwrap_or_else(|| panic!("no ERROR {id:?}; acks {acks:?}"));
        if a.event_type == AckEventType::Error {
            break a;
        }
        acks.push(a);
    };
    assert_eq!(error.error_id, Some(id.id()), "{error:?}");
    assert_eq!(error.error_code.as_deref(), Some(id.name()));
    // The session ends after an error.
    assert!(put.drain().await.is_empty());
    (acks, error)
}

#[tokio::test]
async fn every_media_error() {
    let srv = TestServer::start_with(|c| {
        c.max_fragment_size = 64 * 1024;
        c.max_fragment_duration = Duration::from_secs(2);
    })
    .await;
    let c = srv.client();
    c.create_stream("errs", 1).await;

    // Garbage instead of Matroska.
    expect_error(
        &srv,
        "errs",
        b"this is not matroska at all, not even close".to_vec(),
        AckErrorId::INVALID_MKV_DATA,
    )
    .await;

    // Timecode going backwards: the first fragment is received and stored before the error.
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(5000, 3, 100));
    body.extend(mkv::cluster(4000, 3, 100));
    let (acks, error) = expect_error(
        &srv,
        "errs",
        body,
        AckErrorId::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
    )
    .await;
    assert_eq!(
        error.fragment_timecode,
        Some(4000),
        "the error names the cluster that went backwards"
    );
    assert!(
        acks.iter()
            .any(|a| a.event_type == AckEventType::Persisted && a.fragment_timecode == Some(5000))
    );

    // Four tracks.
    let mut body = mkv::header(&[
        (1, "V_MPEG4/ISO/AVC"),
        (2, "A_AAC"),
        (3, "A_AAC"),
        (4, "A_AAC"),
    ]);
    body.extend(mkv::cluster(1, 1, 10));
    expect_error(
        &srv,
        "errs",
        body,
        AckErrorId::MORE_THAN_ALLOWED_TRACKS_FOUND,
    )
    .await;

    // A frame of a track the header does not define.
    let mut body = mkv::video_header();
    body.extend(mkv::cluster_tracks(1, 2, 10, &[1, 2]));
    expect_error(&srv, "errs", body, AckErrorId::TRACK_NUMBER_MISMATCH).await;

    // A track without frames.
    let mut body = mkv::header(&[(1, "V_MPEG4/ISO/AVC"), (2, "A_AAC")]);
    body.extend(mkv::cluster_tracks(10, 2, 10, &[1]));
    body.extend(mkv::end_of_fragment());
    expect_error(&srv, "errs", body, AckErrorId::FRAMES_MISSING_FOR_TRACK).await;

    // Too large and too long.
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(20, 10, 10_000));
    expect_error(&srv, "errs", body, AckErrorId::MAX_FRAGMENT_SIZE_REACHED).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(30, 100, 10)); // 100 frames 33 ms apart: 3.3 s
    expect_error(
        &srv,
        "errs",
        body,
        AckErrorId::MAX_FRAGMENT_DURATION_REACHED,
    )
    .await;

    // Producer tags named AWS_*.
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(40, 2, 10));
    body.extend(mkv::tags(&[("AWS_SECRET", "x")]));
    expect_error(&srv, "errs", body, AckErrorId::INVALID_FRAGMENT_METADATA).await;

    // Too many producer tags on one fragment.
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(50, 2, 10));
    let pairs: Vec<(String, String)> = (0..11)
        .map(|i| (format!("tag{i}"), "v".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    body.extend(mkv::tags(&refs));
    expect_error(
        &srv,
        "errs",
        body,
        AckErrorId::FRAGMENT_METADATA_LIMIT_REACHED,
    )
    .await;

    // Only the one good fragment was stored.
    assert_eq!(c.fragments("errs").await.len(), 1);
    srv.stop().await;
}

/// TimecodeScale is the producer's to choose, up to `u64::MAX` ns: a fragment far too long gets an ERROR naming
/// the limit, a one-frame fragment at a huge timecode is stored, and the server goes on serving.
#[tokio::test]
async fn extreme_timecode_scales_get_an_answer() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("scales", 1).await;
    let video = [(1, "V_MPEG4/ISO/AVC")];

    // Two frames 33 ticks of u64::MAX ns apart: far beyond the maximum fragment duration.
    let mut body = mkv::header_scaled(&video, u64::MAX);
    body.extend(mkv::cluster(1, 2, 10));
    let (_, error) = expect_error(
        &srv,
        "scales",
        body,
        AckErrorId::MAX_FRAGMENT_DURATION_REACHED,
    )
    .await;
    assert!(
        error.fragment_timecode == Some(1),
        "the error names the fragment: {error:?}"
    );

    // One frame per fragment at a huge timecode: a timestamp far in the future (saturated), stored.
    for scale in [u64::MAX, 1 << 40] {
        let mut put = c.put_media("scales", &[]).await;
        let mut body = mkv::header_scaled(&video, scale);
        body.extend(mkv::cluster(u64::MAX >> 1, 1, 10));
        body.extend(mkv::end_of_fragment());
        put.chunk(&body).await;
        let persisted = put.until(AckEventType::Persisted).await;
        assert_eq!(
            persisted.fragment_timecode,
            Some(u64::MAX >> 1),
            "scale {scale}"
        );
        put.finish().await;
    }
    // The server still answers, and an ordinary fragment is stored after them.
    c.put_fragments("scales", 5000, 1, 3, 10).await;
    let producer = c.producer_timestamps("scales").await;
    assert_eq!(producer.len(), 3, "{producer:?}");
    assert!(producer.contains(&5.0), "{producer:?}");
    srv.stop().await;
}

#[tokio::test]
async fn deleting_the_stream_stops_its_put_media() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = c.create_stream("doomed", 1).await;
    let mut put = c.put_media("doomed", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(100, 2, 10));
    put.chunk(&body).await;
    put.expect(AckEventType::Buffering).await;
    c.call("/deleteStream", json!({"StreamARN": arn}))
        .await
        .ok();
    put.chunk(&mkv::cluster(200, 2, 10)).await;
    let acks = put.drain().await;
    let err = acks
        .iter()
        .find(|a| a.event_type == AckEventType::Error)
        .expect("an ERROR ack");
    assert_eq!(err.error_id, Some(AckErrorId::STREAM_NOT_ACTIVE.id()));
    srv.stop().await;
}

#[tokio::test]
async fn request_errors_and_the_connection_limit() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("one", 1).await;

    let mut missing = c.put_media("nope", &[]).await;
    let (status, kind, body) = missing.error_body().await;
    assert_eq!(
        (status, kind.as_deref()),
        (404, Some("ResourceNotFoundException")),
        "{body}"
    );

    let mut bad_type = c
        .put_media("one", &[("x-amzn-fragment-timecode-type", "SOMETIMES")])
        .await;
    let (status, kind, _) = bad_type.error_body().await;
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("InvalidArgumentException"))
    );

    let mut no_start = c
        .put_media(
            "one",
            &[
                ("x-amzn-fragment-timecode-type", "RELATIVE"),
                ("x-amzn-producer-start-timestamp", ""),
            ],
        )
        .await;
    let (status, _, body) = no_start.error_body().await;
    assert_eq!(status, 400);
    assert!(body.contains("producer-start-timestamp"), "{body}");

    let mut first = c.put_media("one", &[]).await;
    first.chunk(&mkv::video_header()).await;
    assert_eq!(first.status().await, 200);
    let mut second = c.put_media("one", &[]).await;
    let (status, kind, _) = second.error_body().await;
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("ConnectionLimitExceededException"))
    );
    // Once the first ends, the stream takes a new PutMedia.
    first.finish().await;
    first.drain().await;
    let mut third = c.put_media("one", &[]).await;
    third.chunk(&mkv::video_header()).await;
    assert_eq!(third.status().await, 200);
    third.finish().await;
    third.drain().await;

    // A bad signature on PutMedia.
    let wrong = common::Client::new(
        srv.addr,
        kvs_local::Credential {
            secret_access_key: "bad".into(),
            ..common::credential()
        },
    );
    let mut denied = wrong.put_media("one", &[]).await;
    let (status, kind, _) = denied.error_body().await;
    assert_eq!(
        (status, kind.as_deref()),
        (403, Some("AccessDeniedException"))
    );
    srv.stop().await;
}

#[tokio::test]
async fn idle_acks_then_close_after_the_idle_limit() {
    let srv = TestServer::start_with(|c| {
        c.idle_ack_interval = Duration::from_millis(200);
        c.put_media_idle_timeout = Duration::from_millis(1200);
    })
    .await;
    let c = srv.client();
    c.create_stream("quiet", 1).await;
    let mut put = c.put_media("quiet", &[]).await;
    put.chunk(&mkv::video_header()).await;
    let started = std::time::Instant::now();
    let acks = put.drain().await;
    let idles = acks
        .iter()
        .filter(|a| a.event_type == AckEventType::Idle)
        .count();
    assert!(idles >= 3, "IDLE acks while nothing arrives: {acks:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed only after the idle limit"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    srv.stop().await;
}

#[tokio::test]
async fn the_maximum_connection_duration_ends_with_4003() {
    let srv =
        TestServer::start_with(|c| c.max_connection_duration = Duration::from_millis(700)).await;
    let c = srv.client();
    c.create_stream("long", 1).await;
    let mut put = c.put_media("long", &[]).await;
    put.chunk(&mkv::video_header()).await;
    for i in 0..20u64 {
        put.chunk(&mkv::cluster(1000 + i * 100, 2, 10)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acks = put.drain().await;
    let last = acks.last().expect("acks");
    assert_eq!(last.event_type, AckEventType::Error, "{acks:?}");
    assert_eq!(last.error_id, Some(4003));
    srv.stop().await;
}

#[tokio::test]
async fn a_client_vanishing_mid_fragment_keeps_the_complete_ones() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("flaky", 1).await;
    let mut put = c.put_media("flaky", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1000, 3, 100));
    body.extend(mkv::cluster(2000, 3, 100));
    put.chunk(&body).await;
    put.until(AckEventType::Persisted).await;
    // Half of a third cluster, then the connection drops.
    let third = mkv::cluster(3000, 3, 100);
    put.chunk(&third[..third.len() / 2]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    put.abort();
    drop(put);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first two fragments are complete (each was followed by the start of another cluster); the third was cut
    // off and is discarded.
    assert_eq!(c.producer_timestamps("flaky").await, [1.0, 2.0]);
    // The stream takes a new PutMedia right away and other streams were never affected.
    let mut again = c.put_media("flaky", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(4000, 2, 10));
    body.extend(mkv::end_of_fragment());
    again.chunk(&body).await;
    again.until(AckEventType::Persisted).await;
    again.finish().await;
    srv.stop().await;
}

#[tokio::test]
async fn producer_tags_are_kept_with_their_fragment() {
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("tagged", 1).await;
    let mut put = c.put_media("tagged", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1000, 2, 10));
    body.extend(mkv::tags(&[("camera", "front door")]));
    body.extend(mkv::cluster(2000, 2, 10));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    put.until(AckEventType::Persisted).await;
    put.until(AckEventType::Persisted).await;
    put.finish().await;
    let media = c
        .get_media("tagged", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    let docs = common::parse_chain(&media.body);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].tag("camera"), Some("front door"));
    assert_eq!(docs[1].tag("camera"), None);
    srv.stop().await;
}

#[tokio::test]
async fn by_arn_without_acknowledgements() {
    let srv = TestServer::start().await;
    let c = srv.client();
    let arn = c.create_stream("by-arn", 1).await;
    // Stream named by ARN, acknowledgements switched off: nothing comes back but the data is stored.
    let mut put = c
        .put_media(
            "by-arn",
            &[
                ("x-amzn-stream-name", ""),
                ("x-amzn-stream-arn", arn.as_str()),
                ("x-amzn-fragment-acknowledgment-required", "0"),
            ],
        )
        .await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1000, 2, 10));
    body.extend(mkv::cluster(2000, 2, 10));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    put.finish().await;
    assert_eq!(put.status().await, 200);
    assert!(
        put.drain().await.is_empty(),
        "no acknowledgements were asked for"
    );
    let list = c
        .call("/listFragments", json!({"StreamARN": arn}))
        .await
        .ok()
        .json();
    assert_eq!(list["Fragments"].as_array().unwrap().len(), 2);

    // Both name and ARN is an error.
    let mut both = c
        .put_media("by-arn", &[("x-amzn-stream-arn", arn.as_str())])
        .await;
    let (status, kind, _) = both.error_body().await;
    assert_eq!(
        (status, kind.as_deref()),
        (400, Some("InvalidArgumentException"))
    );
    srv.stop().await;
}

/// A full disk: the fragment that cannot be stored gets ERROR 5001 (ARCHIVAL_ERROR) and the session ends there,
/// so nothing after it in that body is stored and the producer replays from it in a new session, which stores
/// again once space returns, without a restart. Needs root for the tmpfs (KVS_FAULTS_NO_MOUNT=1 skips it).
#[tokio::test]
async fn a_full_disk_ends_the_session_at_the_fragment_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = kvs_fault_proxy::disk::Tmpfs::mount_or_skip(dir.path(), 8 * 1024) else {
        return;
    };
    let data = dir.path().to_owned();
    let srv = TestServer::start_with(|c| c.data_dir = data).await;
    let c = srv.client();
    c.create_stream("full", 1).await;
    let mut put = c.put_media("full", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(1000, 3, 1000));
    body.extend(mkv::cluster(2000, 3, 1000));
    put.chunk(&body).await;
    assert_eq!(
        put.until(AckEventType::Persisted).await.fragment_timecode,
        Some(1000)
    );
    kvs_fault_proxy::disk::fill(dir.path()).unwrap();
    // The fragment at 2000 completes now and cannot be stored; the ones after it must not be stored either.
    let mut rest = mkv::cluster(3000, 3, 1000);
    rest.extend(mkv::cluster(4000, 3, 1000));
    rest.extend(mkv::end_of_fragment());
    put.chunk(&rest).await;
    let acks = put.drain().await;
    let errors: Vec<_> = acks
        .iter()
        .filter(|a| a.event_type == AckEventType::Error)
        .collect();
    assert_eq!(errors.len(), 1, "{acks:?}");
    assert_eq!(
        (errors[0].error_id, errors[0].fragment_timecode),
        (Some(AckErrorId::ARCHIVAL_ERROR.id()), Some(2000)),
        "{acks:?}"
    );
    assert!(
        !acks.iter().any(|a| a.event_type == AckEventType::Persisted),
        "persisted on a full disk: {acks:?}"
    );

    // Space returns; the producer replays from the failed fragment in a new session.
    tmpfs.resize(64 * 1024).unwrap();
    let mut again = c.put_media("full", &[]).await;
    let mut body = mkv::video_header();
    for t in [2000, 3000, 4000] {
        body.extend(mkv::cluster(t, 3, 1000));
    }
    body.extend(mkv::end_of_fragment());
    again.chunk(&body).await;
    let mut persisted = Vec::new();
    while persisted.len() < 3 {
        persisted.push(again.until(AckEventType::Persisted).await.fragment_timecode);
    }
    assert_eq!(persisted, [Some(2000), Some(3000), Some(4000)]);
    again.finish().await;
    assert_eq!(
        c.producer_timestamps("full").await,
        [1.0, 2.0, 3.0, 4.0],
        "each fragment once"
    );
    srv.stop().await;
    drop(tmpfs);
}
