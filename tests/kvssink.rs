// SPDX-License-Identifier: MPL-2.0
//! kvssink against a real kvs-local over HTTP: what a user observes (fragments in ListFragments, PERSISTED
//! acknowledgements, frames decoded back, error messages).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstkvs::aws::{self, Fragment, KvsClient, StreamRef};

use common::{LocalServer, RunResult};

/// Live H.264 test video: `frames` frames at 30 fps, a key frame every 30 (one fragment per second).
fn h264_live(frames: u32) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au"
    )
}

fn sink(server: &LocalServer, stream: &str, extra: &str) -> String {
    format!(
        "kvssink name=sink stream-name={stream} {} {extra}",
        server.launch_props()
    )
}

fn client(server: &LocalServer) -> KvsClient {
    common::kvs_client(&server.url())
}

/// Every fragment of the stream, in fragment-number order.
fn list_all(server: &LocalServer, stream: &str) -> Vec<Fragment> {
    common::list_fragments(&server.url(), stream)
}

/// Downloads the fragments with GetMediaForFragmentList and counts the frames matroskademux decodes from them.
fn frames_stored(server: &LocalServer, stream: &str, fragments: &[Fragment]) -> (usize, usize) {
    frames_stored_tracks(server, stream, fragments, false)
}

/// Like [`frames_stored`]; `audio` says whether the stream has an audio track to count too.
fn frames_stored_tracks(
    server: &LocalServer,
    stream: &str,
    fragments: &[Fragment],
    audio: bool,
) -> (usize, usize) {
    let media = common::fragment_list_media(&server.url(), stream, fragments);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stored.mkv");
    std::fs::write(&path, &media).expect("write media");
    // A video-only file has no audio_0 pad: a branch waiting for it would never preroll.
    let desc = if audio {
        format!(
            "filesrc location=\"{}\" ! matroskademux name=d d.video_0 ! queue ! fakesink name=v sync=false \
             d.audio_0 ! queue ! fakesink name=a sync=false",
            path.display()
        )
    } else {
        format!(
            "filesrc location=\"{}\" ! matroskademux name=d d.video_0 ! queue ! fakesink name=v sync=false",
            path.display()
        )
    };
    let (v, a, _) = common::count_demuxed(&desc);
    (v, a)
}

/// Counts the buffers entering kvssink (named `sink`) through its request pad `pad`.
fn count_buffers_into(
    pipeline: &gst::Pipeline,
    pad: &str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    pipeline
        .by_name("sink")
        .expect("sink")
        .static_pad(pad)
        .expect("request pad linked by the launch line")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    count
}

fn acks(r: &RunResult, kind: &str) -> Vec<u64> {
    r.messages_named("kvs-fragment-ack")
        .into_iter()
        .filter(|s| s.get::<&str>("event-type").ok() == Some(kind))
        .filter_map(|s| s.get::<u64>("timecode").ok())
        .collect()
}

fn assert_no_duplicates(fragments: &[Fragment]) {
    let mut seen = BTreeMap::new();
    for f in fragments {
        *seen
            .entry((f.producer_timestamp * 1000.0).round() as u64)
            .or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "fragments stored twice (producer ms -> count): {dups:?}"
    );
}

/// Runs `run` while a second thread kills the server at `down_at` and restarts it at `up_at`.
fn with_outage<R>(
    server: &mut LocalServer,
    down_at: Duration,
    up_at: Option<Duration>,
    run: impl FnOnce() -> R,
) -> R {
    std::thread::scope(|scope| {
        let started = Instant::now();
        let killer = scope.spawn(move || {
            std::thread::sleep(down_at);
            server.kill9();
            if let Some(up) = up_at {
                std::thread::sleep(up.saturating_sub(started.elapsed()));
                server.restart();
            }
        });
        let r = run();
        killer.join().expect("outage thread");
        r
    })
}

/// An epoch time a minute ago, for file-start-time (the stream's retention applies to producer times).
fn recent_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(60)
}

fn stats(pipeline: &gst::Pipeline) -> gst::Structure {
    pipeline
        .by_name("sink")
        .expect("sink")
        .property::<gst::Structure>("stats")
}

#[test]
fn video_is_uploaded_persisted_and_decodes_back() {
    common::init();
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(90),
        sink(&server, "video", "")
    ));
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}\n{}", r.errors, server.logs());
    assert!(r.eos);
    let persisted = acks(&r, "PERSISTED");
    let fragments = list_all(&server, "video");
    assert_eq!(fragments.len(), 3, "{fragments:?}");
    // EOS came after the PERSISTED acknowledgement of every fragment, the last one included.
    assert_eq!(persisted.len(), 3);
    assert_no_duplicates(&fragments);
    let (video, _) = frames_stored(&server, "video", &fragments);
    assert_eq!(video, 90, "every frame pushed into kvssink is stored");
    // Producer timestamps are wall-clock times of this run.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    assert!(
        (now - fragments[0].producer_timestamp).abs() < 60.0,
        "{fragments:?}"
    );
}

#[test]
fn audio_and_video_are_both_stored() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! queue ! sink.video_0 \
         audiotestsrc is-live=true num-buffers=150 samplesperbuffer=960 ! \
         audio/x-raw,format=S16LE,rate=48000,channels=2 ! voaacenc bitrate=64000 ! aacparse ! \
         audio/mpeg,mpegversion=4,stream-format=raw ! queue ! sink.audio_0 {}",
        h264_live(90),
        sink(&server, "av", "")
    );
    let p = common::parse_pipeline(&desc);
    let video_in = count_buffers_into(&p, "video_0");
    let audio_in = count_buffers_into(&p, "audio_0");
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "av");
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_no_duplicates(&fragments);
    let (video, audio) = frames_stored_tracks(&server, "av", &fragments, true);
    let audio_in = audio_in.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(video_in.load(std::sync::atomic::Ordering::SeqCst), 90);
    // 150 buffers of 960 samples make about 140 AAC frames of 1024 samples.
    assert!(audio_in >= 135, "{audio_in} AAC frames entered kvssink");
    assert_eq!(video, 90);
    assert_eq!(
        audio, audio_in,
        "every AAC frame is stored, the first and the last included"
    );
}

#[test]
fn h265_is_uploaded() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "videotestsrc is-live=true num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x265enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h265parse ! \
         video/x-h265,stream-format=hvc1,alignment=au ! {}",
        sink(&server, "hevc", "")
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "hevc");
    assert_eq!(fragments.len(), 2);
    let desc_out = aws::runtime()
        .expect("rt")
        .block_on(client(&server).describe_stream(&StreamRef::Name("hevc".into())))
        .expect("stream exists");
    assert_eq!(desc_out.media_type.as_deref(), Some("video/h265"));
    assert_eq!(frames_stored(&server, "hevc", &fragments).0, 60);
}

#[test]
fn the_stream_is_created_with_retention_and_media_type() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! {}",
        h264_live(30),
        sink(
            &server,
            "created",
            "retention-period=5 stream-tags=\"tags,owner=test,site=lab\""
        )
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let d = aws::runtime()
        .expect("rt")
        .block_on(client(&server).describe_stream(&StreamRef::Name("created".into())))
        .expect("stream created");
    assert_eq!(d.data_retention_in_hours, Some(5));
    assert_eq!(d.media_type.as_deref(), Some("video/h264"));
    assert!(d.is_active());
    assert!(
        server.logs().to_lowercase().contains("tagstream"),
        "TagStream was called: {}",
        server.logs()
    );
}

#[test]
fn missing_stream_without_create_permission_is_an_error_naming_the_stream() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! {}",
        h264_live(30),
        sink(&server, "absent", "allow-create-stream=false")
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(30));
    let err = r.errors.join("\n");
    assert!(
        err.contains("absent") && err.to_lowercase().contains("not"),
        "{err}"
    );
}

#[test]
fn wrong_credentials_are_reported_as_not_authorized() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! kvssink name=sink stream-name=denied endpoint={} access-key={} secret-key=wrong aws-region={}",
        h264_live(30),
        server.url(),
        common::ACCESS_KEY,
        common::REGION
    );
    let p = common::parse_pipeline(&desc);
    let bus = p.bus().expect("bus");
    p.set_state(gst::State::Playing).expect("plays");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = None;
    while Instant::now() < deadline && found.is_none() {
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200))
            && let gst::MessageView::Error(e) = msg.view()
        {
            found = Some((e.error(), msg.src().map(|s| s.name().to_string())));
        }
    }
    let _ = p.set_state(gst::State::Null);
    let (err, src) = found.expect("an error message");
    assert!(err.matches(gst::ResourceError::NotAuthorized), "{err:?}");
    assert!(
        err.message().contains("Signature") || err.message().contains("signature"),
        "{err}"
    );
    assert_eq!(
        src.as_deref(),
        Some("sink"),
        "the error names kvssink itself"
    );
}

#[test]
fn kill_9_and_restart_loses_nothing_and_duplicates_nothing() {
    common::init();
    let mut server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(300),
        sink(&server, "crash", "")
    ));
    let r = with_outage(
        &mut server,
        Duration::from_millis(3500),
        Some(Duration::from_millis(5500)),
        || common::run_pipeline(&p, Duration::from_secs(90)),
    );
    assert!(r.errors.is_empty(), "{:?}\n{}", r.errors, server.logs());
    assert!(r.eos);
    let fragments = list_all(&server, "crash");
    assert_no_duplicates(&fragments);
    assert_eq!(fragments.len(), 10, "{fragments:?}");
    assert_eq!(frames_stored(&server, "crash", &fragments).0, 300);
    let s = stats(&p);
    assert!(s.get::<u64>("reconnects").unwrap_or(0) >= 1, "{s}");
    assert!(
        !r.warnings.is_empty(),
        "the reconnection was reported as a warning"
    );
    assert!(
        !r.messages_named("kvs-stats").is_empty(),
        "periodic kvs-stats messages"
    );
}

#[test]
fn eos_times_out_with_an_error_counting_unacknowledged_fragments() {
    common::init();
    let mut server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(120),
        sink(&server, "gone", "stop-stream-timeout=2")
    ));
    let r = with_outage(&mut server, Duration::from_millis(1500), None, || {
        common::run_pipeline(&p, Duration::from_secs(60))
    });
    let err = r.errors.join("\n");
    assert!(err.contains("fragments were not acknowledged"), "{err}");
    assert!(err.contains("stop-stream-timeout"), "{err}");
}

/// Moves timestamps around on h264parse's output: PTS going backwards, DTS missing or jumping.
fn break_timestamps(pipeline: &gst::Pipeline, parser: &str) {
    let pad = pipeline
        .by_name(parser)
        .expect("parser")
        .static_pad("src")
        .expect("src pad");
    let counter = std::sync::atomic::AtomicU64::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(gst::PadProbeData::Buffer(buffer)) = info.data.as_mut() {
            let b = buffer.make_mut();
            match n % 7 {
                0 => b.set_dts(gst::ClockTime::NONE),
                3 => {
                    if let Some(pts) = b.pts() {
                        b.set_pts(pts.saturating_sub(gst::ClockTime::from_mseconds(400)));
                    }
                }
                5 => {
                    if let Some(dts) = b.dts() {
                        b.set_dts(dts + gst::ClockTime::from_mseconds(250));
                    }
                }
                _ => {}
            }
        }
        gst::PadProbeReturn::Ok
    });
}

#[test]
fn broken_timestamps_are_repaired_and_everything_is_stored() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse name=parse ! \
         video/x-h264,stream-format=avc,alignment=au ! {}",
        sink(&server, "broken", "")
    );
    let p = common::parse_pipeline(&desc);
    break_timestamps(&p, "parse");
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let errors = acks(&r, "ERROR");
    assert!(
        errors.is_empty(),
        "the service rejected fragments: {errors:?}"
    );
    let fragments = list_all(&server, "broken");
    assert_eq!(fragments.len(), 5);
    let mut starts: Vec<f64> = fragments.iter().map(|f| f.producer_timestamp).collect();
    let sorted = {
        let mut s = starts.clone();
        s.sort_by(f64::total_cmp);
        s
    };
    assert_eq!(starts, sorted, "fragment start times increase");
    starts.dedup();
    assert_eq!(starts.len(), 5);
    assert_eq!(frames_stored(&server, "broken", &fragments).0, 150);
    assert!(stats(&p).get::<u64>("timestamp-repairs").unwrap_or(0) > 0);
}

/// Writes an H.264 Matroska file like a camera recording.
fn record_mkv(path: &std::path::Path, frames: u32) {
    let desc = format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc key-int-max=30 speed-preset=ultrafast bframes=2 ! h264parse ! matroskamux ! \
         filesink location=\"{}\"",
        path.display()
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "recording failed: {:?}", r.errors);
}

#[test]
fn a_recorded_file_through_matroskademux_is_uploaded_offline() {
    common::init();
    let server = LocalServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("recording.mkv");
    record_mkv(&file, 150);
    let started = Instant::now();
    let start = recent_start();
    let desc = format!(
        "filesrc location=\"{}\" ! matroskademux ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! {}",
        file.display(),
        sink(
            &server,
            "file",
            &format!("streaming-type=offline file-start-time={start}")
        )
    );
    let p = common::parse_pipeline(&desc);
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang at shutdown"
    );
    let fragments = list_all(&server, "file");
    assert_eq!(fragments.len(), 5, "{fragments:?}");
    assert!(
        (fragments[0].producer_timestamp - start as f64).abs() < 1.0,
        "{fragments:?}"
    );
    assert_eq!(frames_stored(&server, "file", &fragments).0, 150);
}

#[test]
fn realtime_drops_oldest_fragments_with_a_warning_while_the_service_is_down() {
    common::init();
    let mut server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(240),
        sink(
            &server,
            "overflow",
            "buffer-duration=2 stop-stream-timeout=20"
        )
    ));
    let r = with_outage(
        &mut server,
        Duration::from_millis(1500),
        Some(Duration::from_millis(6500)),
        || common::run_pipeline(&p, Duration::from_secs(60)),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let dropped = r
        .warnings
        .iter()
        .any(|w| w.contains("dropped") && w.contains("fragments"));
    assert!(
        dropped,
        "a warning names the dropped fragments: {:?}",
        r.warnings
    );
    let s = stats(&p);
    let n_dropped = s.get::<u64>("fragments-dropped").unwrap_or(0);
    assert!(n_dropped >= 1, "{s}");
    let fragments = list_all(&server, "overflow");
    assert_no_duplicates(&fragments);
    // Every fragment is either stored or reported dropped. A fragment the server stored just before it was
    // killed, without acknowledging it, may be both.
    assert!(fragments.len() <= 8, "{fragments:?}");
    assert!(
        fragments.len() as u64 + n_dropped >= 8,
        "stored + dropped >= pushed: {s}"
    );
}

#[test]
fn offline_never_drops_while_the_service_is_down() {
    common::init();
    let mut server = LocalServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("recording.mkv");
    record_mkv(&file, 240);
    let p = common::parse_pipeline(&format!(
        "filesrc location=\"{}\" ! matroskademux ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! \
         identity sleep-time=5000 ! {}",
        file.display(),
        sink(
            &server,
            "offline",
            &format!(
                "streaming-type=offline buffer-duration=2 file-start-time={}",
                recent_start()
            )
        )
    ));
    let r = with_outage(
        &mut server,
        Duration::from_millis(300),
        Some(Duration::from_millis(3000)),
        || common::run_pipeline(&p, Duration::from_secs(60)),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = stats(&p);
    assert_eq!(s.get::<u64>("fragments-dropped").unwrap_or(99), 0, "{s}");
    let fragments = list_all(&server, "offline");
    assert_no_duplicates(&fragments);
    assert_eq!(fragments.len(), 8);
    assert_eq!(frames_stored(&server, "offline", &fragments).0, 240);
}

#[test]
fn sessions_rotate_without_gaps() {
    common::init();
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(240),
        sink(&server, "rotate", "rotation-period=2")
    ));
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = stats(&p);
    assert!(s.get::<u64>("connections").unwrap_or(0) >= 3, "{s}");
    let fragments = list_all(&server, "rotate");
    assert_no_duplicates(&fragments);
    assert_eq!(fragments.len(), 8);
    assert_eq!(frames_stored(&server, "rotate", &fragments).0, 240);
}

#[test]
fn every_cpp_property_name_is_accepted() {
    common::init();
    let element = gst::ElementFactory::make("kvssink")
        .build()
        .expect("kvssink");
    for name in [
        "stream-name",
        "aws-region",
        "access-key",
        "secret-key",
        "session-token",
        "credential-path",
        "iot-certificate",
        "retention-period",
        "allow-create-stream",
        "stream-tags",
        "content-type",
        "streaming-type",
        "fragment-duration",
        "key-frame-fragmentation",
        "timecode-scale",
        "absolute-fragment-times",
        "frame-timecodes",
        "file-start-time",
        "fragment-acks",
        "restart-on-error",
        "buffer-duration",
        "replay-duration",
        "storage-size",
        "connection-staleness",
        "max-latency",
        "connection-timeout",
        "completion-timeout",
        "stop-stream-timeout",
        "rotation-period",
        "user-agent",
        "codec-id",
        "track-name",
        "recalculate-metrics",
        "framerate",
        "avg-bandwidth-bps",
        "log-config",
        "disable-buffer-clipping",
        "use-original-pts",
        "get-kvs-metrics",
        "stream-arn",
        "endpoint",
        "ca-file",
        "aws-profile",
        "kms-key-id",
        "stats",
    ] {
        let pspec = element.find_property(name);
        assert!(pspec.is_some(), "property {name} exists");
        let blurb = pspec
            .and_then(|p| p.blurb().map(str::to_owned))
            .unwrap_or_default();
        assert!(!blurb.is_empty(), "property {name} is documented");
    }
    element.set_property_from_str("streaming-type", "offline");
    assert_eq!(
        element
            .property_value("streaming-type")
            .serialize()
            .map(|s| s.to_string())
            .ok()
            .as_deref(),
        Some("offline")
    );
    element.set_property_from_str("streaming-type", "0");
    element.set_property("framerate", 30u32);
    assert_eq!(element.property::<u32>("framerate"), 30);
}

#[test]
fn two_sinks_in_one_process_are_independent() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! {} {} ! kvssink name=sink2 stream-name=second {}",
        h264_live(60),
        sink(&server, "first", ""),
        h264_live(90),
        server.launch_props()
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(list_all(&server, "first").len(), 2);
    assert_eq!(list_all(&server, "second").len(), 3);
}

/// A CA and a certificate for 127.0.0.1 signed by it, written as PEM files: (ca, cert, key).
fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kvssink test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write cert");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

#[test]
fn https_with_a_test_ca_works_and_an_unknown_ca_is_refused() {
    common::init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_ca(dir.path());
    let server = LocalServer::start_with(&[
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ]);
    assert!(server.url().starts_with("https://"));
    let desc = format!(
        "{} ! {} ca-file=\"{}\"",
        h264_live(60),
        sink(&server, "tls", ""),
        ca.display()
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}\n{}", r.errors, server.logs());
    assert_eq!(acks(&r, "PERSISTED").len(), 2);

    // Without the CA the server's certificate is not trusted: an error, not a silent retry loop.
    let desc = format!("{} ! {}", h264_live(60), sink(&server, "tls-untrusted", ""));
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    let err = r.errors.join("\n");
    assert!(
        !err.is_empty() && !r.eos,
        "an untrusted certificate must fail"
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
}

#[test]
fn kvs_add_metadata_reaches_the_next_fragment() {
    common::init();
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(90),
        sink(&server, "meta", "")
    ));
    let pad = p
        .by_name("sink")
        .expect("sink")
        .static_pad("video_0")
        .expect("video pad");
    let mut sent = false;
    let r = common::run_pipeline_with(&p, Duration::from_secs(60), |msg| {
        // After the first acknowledgement, tag the following fragments.
        if !sent && matches!(msg.view(), gst::MessageView::Element(_)) {
            sent = true;
            let s = gst::Structure::builder("kvs-add-metadata")
                .field("name", "camera")
                .field("value", "front-door")
                .field("persist", true)
                .build();
            assert!(pad.send_event(gst::event::CustomDownstream::new(s)));
        }
    });
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "meta");
    let client = client(&server);
    let numbers: Vec<String> = fragments
        .iter()
        .map(|f| f.fragment_number.clone())
        .collect();
    let mut media = Vec::new();
    aws::runtime().expect("rt").block_on(async {
        let mut resp = client
            .get_media_for_fragment_list(&StreamRef::Name("meta".into()), &numbers)
            .await
            .expect("GetMediaForFragmentList");
        while let Some(bytes) = resp.next_chunk().await.expect("body") {
            media.extend_from_slice(&bytes);
        }
    });
    let mut parser = kvs_mkv::stream::MkvStreamParser::default();
    parser.push(&media);
    let mut tagged = 0;
    while let Ok(Some(ev)) = parser.finish() {
        if let kvs_mkv::stream::MkvEvent::Tags(t) = ev
            && t.get("camera") == Some("front-door")
        {
            tagged += 1;
        }
    }
    assert!(
        tagged >= 1,
        "the metadata is stored with the fragments that followed the event"
    );
}

#[test]
fn audio_only_is_cut_every_fragment_duration() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "audiotestsrc is-live=true num-buffers=150 samplesperbuffer=960 ! \
         audio/x-raw,format=S16LE,rate=48000,channels=2 ! voaacenc bitrate=64000 ! aacparse ! \
         audio/mpeg,mpegversion=4,stream-format=raw ! {}",
        sink(&server, "audio-only", "fragment-duration=1000")
    );
    let p = common::parse_pipeline(&desc);
    let audio_in = count_buffers_into(&p, "audio_0");
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "audio-only");
    assert!((3..=4).contains(&fragments.len()), "{fragments:?}");
    for pair in fragments.windows(2) {
        let gap_ms = (pair[1].producer_timestamp - pair[0].producer_timestamp) * 1000.0;
        assert!(
            (950.0..1100.0).contains(&gap_ms),
            "fragments every ~1 s: {fragments:?}"
        );
    }
    let d = aws::runtime()
        .expect("rt")
        .block_on(client(&server).describe_stream(&StreamRef::Name("audio-only".into())))
        .expect("stream");
    assert_eq!(d.media_type.as_deref(), Some("audio/aac"));
    let (_, audio) = frames_stored_audio_only(&server, "audio-only", &fragments);
    assert_eq!(audio, audio_in.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn g711_audio_with_video_is_stored() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "{} ! queue ! sink.video_0 \
         audiotestsrc is-live=true num-buffers=100 samplesperbuffer=240 ! audio/x-raw,rate=8000,channels=1 ! \
         alawenc ! queue ! sink.audio_0 {}",
        h264_live(60),
        sink(&server, "g711", "")
    );
    let p = common::parse_pipeline(&desc);
    let audio_in = count_buffers_into(&p, "audio_0");
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "g711");
    assert_eq!(fragments.len(), 2);
    let d = aws::runtime()
        .expect("rt")
        .block_on(client(&server).describe_stream(&StreamRef::Name("g711".into())))
        .expect("stream");
    assert_eq!(d.media_type.as_deref(), Some("video/h264,audio/alaw"));
    let (video, audio) = frames_stored_tracks(&server, "g711", &fragments, true);
    assert_eq!(video, 60);
    assert_eq!(audio, audio_in.load(std::sync::atomic::Ordering::SeqCst));
}

/// Counts the audio frames of an audio-only stream.
fn frames_stored_audio_only(
    server: &LocalServer,
    stream: &str,
    fragments: &[Fragment],
) -> (usize, usize) {
    let client = client(server);
    let rt = aws::runtime().expect("runtime");
    let numbers: Vec<String> = fragments
        .iter()
        .map(|f| f.fragment_number.clone())
        .collect();
    let mut media = Vec::new();
    rt.block_on(async {
        let mut resp = client
            .get_media_for_fragment_list(&StreamRef::Name(stream.into()), &numbers)
            .await
            .expect("GetMediaForFragmentList");
        while let Some(bytes) = resp.next_chunk().await.expect("media body") {
            media.extend_from_slice(&bytes);
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stored.mkv");
    std::fs::write(&path, &media).expect("write media");
    common::count_demuxed(&format!(
        "filesrc location=\"{}\" ! matroskademux name=d d.audio_0 ! queue ! fakesink name=a sync=false",
        path.display()
    ))
    .pipe_counts()
}

trait PipeCounts {
    fn pipe_counts(self) -> (usize, usize);
}

impl PipeCounts for (usize, usize, Option<gst::ClockTime>) {
    fn pipe_counts(self) -> (usize, usize) {
        (self.0, self.1)
    }
}

/// A service that answers the start-up calls and accepts PutMedia but never acknowledges anything: a connection
/// that looks alive while the service has stopped working. Counts the PutMedia calls.
struct SilentService {
    url: String,
    put_media_calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentService {
    fn start() -> SilentService {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (url2, calls2) = (url.clone(), calls.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (url, calls) = (url2.clone(), calls2.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone socket"));
                    let mut out = conn;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request_line
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or("")
                            .to_string();
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        if path == "/putMedia" {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = out.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
                            );
                            // Swallow the body, never answer.
                            let mut sink = [0u8; 65536];
                            while reader.read(&mut sink).unwrap_or(0) > 0 {}
                            return;
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let json = match path.as_str() {
                            "/describeStream" => "{\"StreamInfo\":{\"StreamName\":\"silent\",\"StreamARN\":\"arn:aws:kinesisvideo:us-east-1:123456789012:stream/silent/1\",\"Status\":\"ACTIVE\",\"DataRetentionInHours\":2}}"
                                .to_string(),
                            "/getDataEndpoint" => format!("{{\"DataEndpoint\":\"{url}\"}}"),
                            _ => "{}".to_string(),
                        };
                        let _ = out.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                                json.len()
                            )
                            .as_bytes(),
                        );
                    }
                });
            }
        });
        SilentService {
            url,
            put_media_calls: calls,
        }
    }
}

#[test]
fn a_connection_without_acknowledgements_is_replaced_after_connection_staleness() {
    common::init();
    let service = SilentService::start();
    let desc = format!(
        "{} ! kvssink name=sink stream-name=silent endpoint={} access-key=AK secret-key=SK aws-region=us-east-1 \
         connection-staleness=2 stop-stream-timeout=1",
        h264_live(200),
        service.url
    );
    let p = common::parse_pipeline(&desc);
    let r = common::run_pipeline(&p, Duration::from_secs(30));
    let calls = service
        .put_media_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        calls >= 2,
        "PutMedia was called again after the connection went stale ({calls} calls)"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("connection-staleness")),
        "the staleness was reported: {:?}",
        r.warnings
    );
    // Nothing was ever acknowledged: EOS says so instead of pretending success.
    assert!(
        r.errors.join("\n").contains("not acknowledged"),
        "{:?}",
        r.errors
    );
}

#[test]
fn without_key_frame_fragmentation_key_frames_are_requested_every_fragment_duration() {
    common::init();
    let server = LocalServer::start();
    // The encoder alone would make one 10 s group of pictures; kvssink asks for a key frame every second.
    let desc = format!(
        "videotestsrc is-live=true num-buffers=120 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=300 speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! {}",
        sink(
            &server,
            "long-gop",
            "key-frame-fragmentation=false fragment-duration=1000"
        )
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "long-gop");
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_eq!(frames_stored(&server, "long-gop", &fragments).0, 120);
}

#[test]
fn an_intermittent_source_resumes_at_the_next_key_frame_without_errors() {
    common::init();
    let server = LocalServer::start();
    let desc = format!(
        "videotestsrc is-live=true num-buffers=420 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! valve name=gate ! {}",
        sink(&server, "intermittent", "")
    );
    let p = common::parse_pipeline(&desc);
    let passed = count_buffers_into(&p, "video_0");
    let gate = p.by_name("gate").expect("valve");
    let r = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Open 2 s, closed 10 s (longer than the idle close, shorter than the service's idle cut), open.
            std::thread::sleep(Duration::from_secs(2));
            gate.set_property("drop", true);
            std::thread::sleep(Duration::from_secs(10));
            gate.set_property("drop", false);
        });
        common::run_pipeline(&p, Duration::from_secs(60))
    });
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let errors = acks(&r, "ERROR");
    assert!(
        errors.is_empty(),
        "the service rejected fragments: {errors:?}"
    );
    let fragments = list_all(&server, "intermittent");
    assert_no_duplicates(&fragments);
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert!(
        fragments.iter().all(|f| f.length_ms < 5_000),
        "no fragment spans the pause: {fragments:?}"
    );
    let passed = passed.load(std::sync::atomic::Ordering::SeqCst);
    let stored = frames_stored(&server, "intermittent", &fragments).0;
    // Frames after the pause up to the next key frame cannot start a fragment; kvssink asks for one at once.
    assert!(
        stored <= passed && stored + 30 >= passed,
        "{stored} of {passed} frames stored"
    );
}

#[test]
fn a_pipeline_stopped_to_ready_and_restarted_uploads_again() {
    common::init();
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(60),
        sink(&server, "restart", "")
    ));
    let bus = p.bus().expect("bus");
    for round in 0..2 {
        p.set_state(gst::State::Playing).expect("plays");
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(30),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS or error");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("round {round}: {} ({:?})", e.error(), e.debug());
        }
        p.set_state(gst::State::Ready).expect("back to READY");
    }
    let _ = p.set_state(gst::State::Null);
    let fragments = list_all(&server, "restart");
    assert_no_duplicates(&fragments);
    assert_eq!(fragments.len(), 4, "two fragments per round: {fragments:?}");
    assert_eq!(frames_stored(&server, "restart", &fragments).0, 120);
}

#[test]
fn frame_timecodes_false_stamps_buffers_on_arrival() {
    common::init();
    let server = LocalServer::start();
    // x264enc puts its segment at 1000 hours: arrival times must be converted into that segment.
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(60),
        sink(&server, "arrival", "frame-timecodes=false")
    ));
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fragments = list_all(&server, "arrival");
    assert_eq!(fragments.len(), 2, "{fragments:?}");
    assert_eq!(frames_stored(&server, "arrival", &fragments).0, 60);
}

#[test]
fn a_stream_named_by_arn_is_uploaded_to() {
    common::init();
    let server = LocalServer::start();
    let r = common::run_pipeline(
        &common::parse_pipeline(&format!(
            "{} ! {}",
            h264_live(30),
            sink(&server, "by-arn", "")
        )),
        Duration::from_secs(60),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let arn = aws::runtime()
        .expect("rt")
        .block_on(client(&server).describe_stream(&StreamRef::Name("by-arn".into())))
        .expect("stream")
        .stream_arn;
    let desc = format!(
        "{} ! kvssink name=sink stream-arn={arn} allow-create-stream=false {}",
        h264_live(60),
        server.launch_props()
    );
    let r = common::run_pipeline(&common::parse_pipeline(&desc), Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(list_all(&server, "by-arn").len(), 3);
}

#[test]
fn without_retention_eos_waits_for_received_only() {
    common::init();
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{} ! {}",
        h264_live(60),
        sink(
            &server,
            "no-retention",
            "retention-period=0 stop-stream-timeout=10"
        )
    ));
    let started = Instant::now();
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.eos);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "EOS did not wait for a PERSISTED that never comes"
    );
    assert_eq!(acks(&r, "RECEIVED").len(), 2);
    assert!(acks(&r, "PERSISTED").is_empty());
}
