//! The viewer page in headless Chromium (Debian's chromium, driven by playwright-core from viewer/node_modules):
//! a stream fed in real time is listed, its fragments drawn, played live and on demand through hls.js (the video's
//! current time advances, no media error), thumbnailed and downloaded as a clip.
//!
//! Needs `/usr/bin/chromium` (or $CHROMIUM) and `npm install` in kvs-local/viewer; fails naming what is missing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestServer;
use gst::prelude::*;
use kvs_mkv::ack::AckEventType;
use kvs_mkv::ebml::{self, id};

const FPS: u64 = 25;
const GOP: usize = 25;

/// An encoded frame: presentation time (ms from the first), key frame, bytes (AVC).
type Frame = (u64, bool, Vec<u8>);

/// H.264 (avcC, frames) of `seconds` of a moving test pattern, one key frame per second.
fn encode(seconds: usize) -> (Vec<u8>, Vec<Frame>) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={} pattern=ball ! video/x-raw,width=320,height=240,framerate={FPS}/1 \
         ! x264enc key-int-max={GOP} bframes=0 tune=zerolatency speed-preset=ultrafast \
         ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink sync=false",
        seconds * GOP
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut avcc = Vec::new();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        if avcc.is_empty() {
            let caps = sample.caps().unwrap();
            let data = caps
                .structure(0)
                .unwrap()
                .get::<gst::Buffer>("codec_data")
                .unwrap();
            avcc = data.map_readable().unwrap().to_vec();
        }
        let b = sample.buffer().unwrap();
        frames.push((
            b.pts().unwrap().mseconds(),
            !b.flags().contains(gst::BufferFlags::DELTA_UNIT),
            b.map_readable().unwrap().to_vec(),
        ));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let first = frames[0].0;
    for f in &mut frames {
        f.0 -= first;
    }
    (avcc, frames)
}

fn header(avcc: &[u8]) -> Vec<u8> {
    let mut out = kvs_mkv::writer::ebml_header("matroska");
    out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
    let mut info = Vec::new();
    ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
    ebml::write_master_element(&mut out, id::INFO, &info);
    let mut entry = Vec::new();
    ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_UID, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
    ebml::write_str_element(&mut entry, id::CODEC_ID, "V_MPEG4/ISO/AVC");
    ebml::write_binary_element(&mut entry, id::CODEC_PRIVATE, avcc);
    let mut tracks = Vec::new();
    ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
    ebml::write_master_element(&mut out, id::TRACKS, &tracks);
    out
}

fn viewer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("viewer")
}

#[tokio::test]
async fn viewer_lists_plays_live_and_on_demand_thumbnails_and_clips() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (or set CHROMIUM)"
    );
    assert!(
        viewer_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm install` in {}",
        viewer_dir().display()
    );
    let seconds = 40;
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("camera", 1).await;

    // The camera: the project's kvssink when its plugin is built (target/debug/libgstkvs.so), else one-second
    // fragments put in real time by this test, timestamped now, as kvssink would.
    let plugin_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    let mut camera = None;
    // KVS_VIEWER_PUT_MEDIA=1 forces the test's own PutMedia.
    if plugin_dir.join("libgstkvs.so").exists()
        && std::env::var_os("KVS_VIEWER_PUT_MEDIA").is_none()
    {
        let cred = common::credential();
        let child = std::process::Command::new("gst-launch-1.0")
            .args(["-e", "-q"])
            .args(
                format!(
                    "videotestsrc is-live=true num-buffers={} pattern=ball ! \
                     video/x-raw,width=320,height=240,framerate={FPS}/1 ! x264enc tune=zerolatency \
                     key-int-max={GOP} bframes=0 speed-preset=ultrafast ! h264parse ! \
                     video/x-h264,stream-format=avc,alignment=au ! kvssink stream-name=camera \
                     endpoint=http://{} access-key={} secret-key={} aws-region=us-east-1",
                    seconds * GOP,
                    srv.addr,
                    cred.access_key_id,
                    cred.secret_access_key
                )
                .split_whitespace(),
            )
            .env("GST_PLUGIN_PATH", &plugin_dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 runs");
        eprintln!("camera: kvssink");
        camera = Some(child);
    }
    let feeder_client = c.clone();
    let use_put_media = camera.is_none();
    let feeder = tokio::spawn(async move {
        if !use_put_media {
            return;
        }
        eprintln!("camera: PutMedia from the test");
        let (avcc, frames) = tokio::task::spawn_blocking(move || encode(seconds))
            .await
            .unwrap();
        let mut put = feeder_client.put_media("camera", &[]).await;
        put.chunk(&header(&avcc)).await;
        let start = common::now_secs() as u64 * 1000;
        let begun = tokio::time::Instant::now();
        for (i, gop) in frames.chunks(GOP).enumerate() {
            let tc = start + gop[0].0;
            let mut cluster = kvs_mkv::writer::cluster_start(tc);
            for (pts, key, frame) in gop {
                let rel = i16::try_from(start + pts - tc).unwrap();
                cluster.extend(kvs_mkv::writer::simple_block(1, rel, *key, frame));
            }
            put.chunk(&cluster).await;
            tokio::time::sleep_until(begun + Duration::from_secs(i as u64 + 1)).await;
        }
        put.chunk(&kvs_mkv::writer::tags_element(&[(
            kvs_mkv::tags::END_OF_FRAGMENT,
            "",
        )]))
        .await;
        put.until(AckEventType::Persisted).await;
        put.finish().await;
    });
    // A few fragments before the page opens, so that the timeline and on-demand playback have something.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let cred = common::credential();
    let screenshot = std::env::temp_dir().join("kvs-local-viewer.png");
    let url = format!("http://{}/", srv.addr);
    // The driver bounds each of its waits (30 s at most), so it ends on its own.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(viewer_dir().join("test/viewer.mjs"))
            .arg(url)
            .arg(&cred.access_key_id)
            .arg(&cred.secret_access_key)
            .arg("camera")
            .arg(&screenshot)
            .env("CHROMIUM", &chromium)
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the browser test finishes within 3 minutes")
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed: {stderr}\n{stdout}"
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    eprintln!("viewer: {r}");

    assert!(r["fragmentsListed"].as_u64().unwrap() >= 5, "{r}");
    assert_eq!(
        r["timelineBars"], r["fragmentsListed"],
        "one bar per fragment"
    );
    assert!(
        r["details"]
            .as_str()
            .unwrap()
            .contains("arn:aws:kinesisvideo:")
    );
    for mode in ["live", "onDemand"] {
        let p = &r[mode];
        assert!(p["currentTime"].as_f64().unwrap() > 2.0, "{mode}: {p}");
        assert!(p["mediaError"].is_null(), "{mode}: media error {p}");
        assert_eq!(p["pageError"], "", "{mode}: {p}");
        assert_eq!(p["width"], 320, "{mode}: {p}");
    }
    let thumbs = r["thumbnails"].as_array().unwrap();
    assert!(!thumbs.is_empty());
    assert!(
        thumbs.iter().all(|t| t[0] == 160 && t[1] == 90),
        "{thumbs:?}"
    );
    assert_eq!(r["clip"]["name"], "camera.mp4");
    assert!(r["clip"]["bytes"].as_u64().unwrap() > 10_000, "{r}");
    assert_eq!(r["pageErrors"].as_array().unwrap().len(), 0, "{r}");
    feeder.abort();
    if let Some(mut child) = camera {
        let _ = child.kill();
        let _ = child.wait();
    }
    srv.stop().await;
}
