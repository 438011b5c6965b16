//! Archived playback: GetClip output decoded with GStreamer (tracks, frame count, timestamps) and its errors.

mod common;

use common::{Client, TestServer};
use gst::prelude::*;
use kvs_mkv::ack::AckEventType;
use kvs_mkv::ebml::{self, id};
use serde_json::json;

/// Frames per second and per fragment (one GOP per fragment) of the encoded test video.
const FPS: u64 = 25;
const GOP: usize = 25;
const BASE_MS: u64 = 1_700_000_000_000;

/// Encoded video: the codec configuration record (avcC or hvcC) and (pts ms, keyframe, frame) per frame.
struct Encoded {
    avcc: Vec<u8>,
    frames: Vec<(u64, bool, Vec<u8>)>,
}

fn encode(frames: usize, gop: usize) -> Encoded {
    encode_with(
        frames,
        &format!(
            "x264enc key-int-max={gop} bframes=0 tune=zerolatency speed-preset=ultrafast \
             ! video/x-h264,stream-format=avc,alignment=au"
        ),
    )
}

/// H.265 in HVCC form (hvcC record as codec data), one key frame every `gop` frames.
fn encode_h265(frames: usize, gop: usize) -> Encoded {
    encode_with(
        frames,
        &format!(
            "x265enc key-int-max={gop} tune=zerolatency speed-preset=ultrafast ! h265parse \
             ! video/x-h265,stream-format=hvc1,alignment=au"
        ),
    )
}

fn encode_with(frames: usize, encoder: &str) -> Encoded {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width=320,height=240,framerate={FPS}/1 \
         ! {encoder} ! appsink name=sink sync=false"
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
    let mut out = Vec::new();
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
        let buffer = sample.buffer().unwrap();
        let pts = buffer.pts().unwrap().mseconds();
        let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        out.push((pts, key, buffer.map_readable().unwrap().to_vec()));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(out.len(), frames, "the encoder produced every frame");
    // x264enc starts its timestamps at 1000 hours; make them start at 0.
    let first = out[0].0;
    for f in &mut out {
        f.0 -= first;
    }
    Encoded { avcc, frames: out }
}

fn header(tracks: &[(u64, &str, &[u8])]) -> Vec<u8> {
    let mut out = kvs_mkv::writer::ebml_header("matroska");
    out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
    let mut info = Vec::new();
    ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
    ebml::write_master_element(&mut out, id::INFO, &info);
    let mut body = Vec::new();
    for (number, codec, private) in tracks {
        let mut entry = Vec::new();
        ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, *number);
        ebml::write_uint_element(&mut entry, id::TRACK_UID, *number);
        ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
        ebml::write_str_element(&mut entry, id::CODEC_ID, codec);
        if !private.is_empty() {
            ebml::write_binary_element(&mut entry, id::CODEC_PRIVATE, private);
        }
        ebml::write_master_element(&mut body, id::TRACK_ENTRY, &entry);
    }
    ebml::write_master_element(&mut out, id::TRACKS, &body);
    out
}

/// The PutMedia body: one cluster per GOP at `BASE_MS + pts`.
fn matroska(enc: &Encoded, codec_private: &[u8], gop: usize) -> Vec<u8> {
    matroska_as(enc, "V_MPEG4/ISO/AVC", codec_private, gop)
}

fn matroska_as(enc: &Encoded, codec_id: &str, codec_private: &[u8], gop: usize) -> Vec<u8> {
    let mut out = header(&[(1, codec_id, codec_private)]);
    for gop in enc.frames.chunks(gop) {
        let tc = BASE_MS + gop[0].0;
        out.extend(kvs_mkv::writer::cluster_start(tc));
        for (pts, key, frame) in gop {
            let rel = i16::try_from(BASE_MS + pts - tc).unwrap();
            out.extend(kvs_mkv::writer::simple_block(1, rel, *key, frame));
        }
    }
    out.extend(kvs_mkv::writer::tags_element(&[(
        kvs_mkv::tags::END_OF_FRAGMENT,
        "",
    )]));
    out
}

async fn put(c: &Client, stream: &str, body: &[u8], fragments: usize) {
    let mut put = c.put_media(stream, &[]).await;
    put.chunk(body).await;
    for _ in 0..fragments {
        put.until(AckEventType::Persisted).await;
    }
    put.finish().await;
    put.drain().await;
}

/// What decoding an MP4 shows.
#[derive(Debug)]
struct Decoded {
    top_level_boxes: Vec<String>,
    video_tracks: usize,
    frames: usize,
    audio_frames: usize,
    first_pts_ms: u64,
    last_pts_ms: u64,
    width: i32,
}

fn top_level_boxes(mut data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&data[4..8]).into_owned());
        if size < 8 || size > data.len() {
            break;
        }
        data = &data[size..];
    }
    out
}

fn decode_mp4(mp4: &[u8]) -> Decoded {
    decode_mp4_with(mp4, false)
}

/// Decodes the video of an MP4 and, with `audio`, counts the AAC frames of its audio track.
fn decode_mp4_with(mp4: &[u8], audio: bool) -> Decoded {
    gst::init().unwrap();
    let audio_branch = if audio {
        " d.audio_0 ! queue ! aacparse ! appsink name=asink sync=false async=false"
    } else {
        ""
    };
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src caps=video/quicktime ! qtdemux name=d d.video_0 ! queue ! decodebin \
         ! videoconvert ! appsink name=sink sync=false async=false{audio_branch}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let demux = pipeline.by_name("d").unwrap();
    let pads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pads.clone();
    demux.connect_pad_added(move |_, pad| {
        if pad.name().starts_with("video_") {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let audio_frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if let Some(asink) = pipeline.by_name("asink") {
        let count = audio_frames.clone();
        asink.downcast::<gst_app::AppSink>().unwrap().set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    src.push_buffer(gst::Buffer::from_slice(mp4.to_vec()))
        .unwrap();
    src.end_of_stream().unwrap();
    let (mut frames, mut first, mut last, mut width) = (0, u64::MAX, 0, 0);
    while let Ok(sample) = sink.pull_sample() {
        let pts = sample.buffer().unwrap().pts().unwrap().mseconds();
        first = first.min(pts);
        last = last.max(pts);
        width = sample
            .caps()
            .unwrap()
            .structure(0)
            .unwrap()
            .get::<i32>("width")
            .unwrap();
        frames += 1;
    }
    let bus = pipeline.bus().unwrap();
    let end = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    if let Some(msg) = end.filter(|m| m.type_() == gst::MessageType::Error) {
        panic!("the clip does not decode: {msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    Decoded {
        top_level_boxes: top_level_boxes(mp4),
        video_tracks: pads.load(std::sync::atomic::Ordering::SeqCst),
        frames,
        audio_frames: audio_frames.load(std::sync::atomic::Ordering::SeqCst),
        first_pts_ms: first,
        last_pts_ms: last,
        width,
    }
}

fn clip_request(stream: &str, kind: &str, start_ms: u64, end_ms: u64) -> serde_json::Value {
    json!({
        "StreamName": stream,
        "ClipFragmentSelector": {
            "FragmentSelectorType": kind,
            "TimestampRange": {
                "StartTimestamp": start_ms as f64 / 1000.0,
                "EndTimestamp": end_ms as f64 / 1000.0,
            }
        }
    })
}

#[tokio::test]
async fn get_clip_is_a_decodable_mp4_of_the_range() {
    let enc = tokio::task::spawn_blocking(|| encode(6 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("cam", 1).await;
    put(&c, "cam", &matroska(&enc, &enc.avcc, GOP), 6).await;

    // Everything: 6 fragments of 25 frames, 6 s.
    let all = c
        .call(
            "/getClip",
            clip_request("cam", "PRODUCER_TIMESTAMP", BASE_MS, BASE_MS + 10_000),
        )
        .await
        .ok();
    assert_eq!(all.content_type.as_deref(), Some("video/mp4"));
    let d = decode_mp4(&all.body);
    assert_eq!(
        &d.top_level_boxes[..2],
        ["ftyp", "moov"],
        "moov comes first"
    );
    assert!(d.top_level_boxes.contains(&"mdat".to_owned()));
    assert_eq!(d.video_tracks, 1);
    assert_eq!(d.frames, 6 * GOP);
    assert_eq!(d.width, 320);
    assert_eq!(d.first_pts_ms, 0, "the clip starts at 0");
    assert_eq!(d.last_pts_ms, (6 * GOP as u64 - 1) * 1000 / FPS);

    // Fragments 2..=3 by producer timestamp (fragment starts at +2 s and +3 s).
    let part = c
        .call(
            "/getClip",
            clip_request(
                "cam",
                "PRODUCER_TIMESTAMP",
                BASE_MS + 1_500,
                BASE_MS + 3_000,
            ),
        )
        .await
        .ok();
    let d = decode_mp4(&part.body);
    assert_eq!(d.frames, 2 * GOP);
    assert_eq!(
        d.last_pts_ms - d.first_pts_ms,
        (2 * GOP as u64 - 1) * 1000 / FPS
    );

    // By server timestamp: every fragment arrived within the last minute.
    let now = common::now_secs() as u64 * 1000;
    let by_server = c
        .call(
            "/getClip",
            clip_request("cam", "SERVER_TIMESTAMP", now - 60_000, now + 60_000),
        )
        .await
        .ok();
    assert_eq!(decode_mp4(&by_server.body).frames, 6 * GOP);

    // No fragment in range.
    c.call(
        "/getClip",
        clip_request(
            "cam",
            "PRODUCER_TIMESTAMP",
            BASE_MS + 60_000,
            BASE_MS + 70_000,
        ),
    )
    .await
    .expect_error(404, "ResourceNotFoundException");
    srv.stop().await;
}

#[tokio::test]
async fn get_clip_errors() {
    let enc = tokio::task::spawn_blocking(|| encode(GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    let range = |s: &str| clip_request(s, "PRODUCER_TIMESTAMP", BASE_MS, BASE_MS + 5_000);

    c.call("/getClip", range("missing"))
        .await
        .expect_error(404, "ResourceNotFoundException");

    c.create_stream("nokeep", 0).await;
    let r = c.call("/getClip", range("nokeep")).await;
    r.expect_error(400, "NoDataRetentionException");
    assert!(r.message().contains("DataRetentionInHours is 0"));

    c.create_stream("cam", 1).await;
    let too_long = clip_request(
        "cam",
        "SERVER_TIMESTAMP",
        BASE_MS,
        BASE_MS + 24 * 3600 * 1000 + 1000,
    );
    let r = c.call("/getClip", too_long).await;
    r.expect_error(400, "InvalidArgumentException");
    assert!(r.message().contains("24 hours"), "{}", r.message());
    c.call(
        "/getClip",
        clip_request("cam", "SERVER_TIMESTAMP", BASE_MS + 10, BASE_MS),
    )
    .await
    .expect_error(400, "InvalidArgumentException");
    c.call("/getClip", json!({"StreamName": "cam"}))
        .await
        .expect_error(400, "InvalidArgumentException");
    let mut bad_kind = range("cam");
    bad_kind["ClipFragmentSelector"]["FragmentSelectorType"] = json!("CONTINUATION_TOKEN");
    c.call("/getClip", bad_kind)
        .await
        .expect_error(400, "InvalidArgumentException");

    // Codec problems, each on its own stream.
    c.create_stream("noprivate", 1).await;
    put(&c, "noprivate", &matroska(&enc, &[], GOP), 1).await;
    let r = c.call("/getClip", range("noprivate")).await;
    r.expect_error(400, "MissingCodecPrivateDataException");
    assert!(r.message().contains("track 1"), "{}", r.message());

    c.create_stream("annexb", 1).await;
    put(
        &c,
        "annexb",
        &matroska(&enc, &[0, 0, 0, 1, 0x67, 0x42, 0, 0x1e], GOP),
        1,
    )
    .await;
    c.call("/getClip", range("annexb"))
        .await
        .expect_error(400, "InvalidCodecPrivateDataException");

    c.create_stream("vp8", 1).await;
    let mut body = header(&[(1, "V_VP8", b"x")]);
    body.extend(common::mkv::cluster(BASE_MS, 3, 40));
    body.extend(common::mkv::end_of_fragment());
    put(&c, "vp8", &body, 1).await;
    let r = c.call("/getClip", range("vp8")).await;
    r.expect_error(400, "UnsupportedStreamMediaTypeException");
    assert!(r.message().contains("V_VP8"));
    srv.stop().await;
}

#[tokio::test]
async fn get_clip_stops_after_200_fragments() {
    // One key frame per fragment: 230 fragments of 40 ms.
    let enc = tokio::task::spawn_blocking(|| encode(230, 1))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("many", 1).await;
    put(&c, "many", &matroska(&enc, &enc.avcc, 1), 230).await;
    let clip = c
        .call(
            "/getClip",
            clip_request(
                "many",
                "PRODUCER_TIMESTAMP",
                BASE_MS + 200,
                BASE_MS + 60_000,
            ),
        )
        .await
        .ok();
    let d = decode_mp4(&clip.body);
    assert_eq!(
        d.frames, 200,
        "the first 200 fragments from the start of the range"
    );
    assert_eq!(d.last_pts_ms - d.first_pts_ms, 199 * 40);
    srv.stop().await;
}

#[tokio::test]
async fn get_clip_of_the_cpp_producer_capture_has_video_and_aac() {
    // kvssink's H.264 + AAC capture: 5 fragments, 150 video frames, 232 AAC frames.
    let dir = common::testdata("cpp-producer/audio-video");
    let body = std::fs::read(dir.join("004-putMedia.mkv")).unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("cam-av", 1).await;
    put(&c, "cam-av", &body, 5).await;
    let first_ms = 1_795_268_509_622;
    let clip = c
        .call(
            "/getClip",
            clip_request("cam-av", "PRODUCER_TIMESTAMP", first_ms, first_ms + 4_000),
        )
        .await
        .ok();
    let d = decode_mp4_with(&clip.body, true);
    assert_eq!(d.video_tracks, 1);
    assert_eq!(d.frames, 150);
    // The capture's AAC blocks carry no duration; GStreamer 1.22's mp4mux leaves out the last one (it cannot
    // know how long it lasts), so 231 or 232 frames reach the clip.
    assert!(
        (231..=232).contains(&d.audio_frames),
        "AAC frames: {}",
        d.audio_frames
    );
    assert_eq!(d.width, 640);
    srv.stop().await;
}

async fn hls_url(c: &Client, body: serde_json::Value) -> String {
    let r = c.call("/getHLSStreamingSessionURL", body).await.ok().json();
    r["HLSStreamingSessionURL"].as_str().unwrap().to_owned()
}

/// Plays an HLS URL with GStreamer's hlsdemux to EOS; returns the decoded video frames. Fails on a pipeline error
/// or when EOS does not come within a minute.
fn play_hls(url: &str) -> usize {
    play_with(url, "hlsdemux")
}

/// Plays a manifest URL through `demux` (hlsdemux, dashdemux) to EOS; returns the decoded video frames.
fn play_with(url: &str, demux: &str) -> usize {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "souphttpsrc location=\"{url}\" ! {demux} ! decodebin ! videoconvert ! appsink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut frames = 0;
    let outcome = loop {
        if let Some(_sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(50)) {
            frames += 1;
            continue;
        }
        if sink.is_eos() {
            break Ok(frames);
        }
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(e) = msg.view()
        {
            break Err(format!(
                "HLS playback failed after {frames} frames: {} ({:?})",
                e.error(),
                e.debug()
            ));
        }
        if std::time::Instant::now() > deadline {
            break Err(format!(
                "HLS playback did not reach EOS; {frames} frames so far"
            ));
        }
    };
    pipeline.set_state(gst::State::Null).unwrap();
    outcome.unwrap()
}

/// The body of the first box at this path of box types.
fn find_box<'a>(mut data: &'a [u8], path: &[&str]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    while data.len() >= 8 {
        let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if size < 8 || size > data.len() {
            return None;
        }
        if &data[4..8] == first.as_bytes() {
            let body = &data[8..size];
            return if rest.is_empty() {
                Some(body)
            } else {
                find_box(body, rest)
            };
        }
        data = &data[size..];
    }
    None
}

fn hls_request(stream: &str, mode: &str, container: &str) -> serde_json::Value {
    json!({
        "StreamName": stream,
        "PlaybackMode": mode,
        "ContainerFormat": container,
        "HLSFragmentSelector": {
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": BASE_MS as f64 / 1000.0,
                "EndTimestamp": (BASE_MS + 60_000) as f64 / 1000.0,
            }
        }
    })
}

#[tokio::test]
async fn hls_on_demand_plays_to_the_end_in_both_containers() {
    let enc = tokio::task::spawn_blocking(|| encode(6 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("hls", 1).await;
    put(&c, "hls", &matroska(&enc, &enc.avcc, GOP), 6).await;

    let url = hls_url(&c, hls_request("hls", "ON_DEMAND", "FRAGMENTED_MP4")).await;
    assert!(
        url.contains("/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken="),
        "{url}"
    );
    let http = reqwest::Client::new();
    let master = http.get(&url).send().await.unwrap();
    assert_eq!(master.status(), 200);
    let master = master.text().await.unwrap();
    assert!(
        master.contains("CODECS=\"avc1.")
            && master.contains("getHLSMediaPlaylist.m3u8?SessionToken="),
        "{master}"
    );
    let media_url = url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist");
    let media = http
        .get(&media_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(media.matches("#EXTINF:1.000,").count(), 6, "{media}");
    assert!(
        media.contains("#EXT-X-MAP:URI=\"getMP4InitFragment.mp4"),
        "{media}"
    );
    assert!(media.contains("#EXT-X-ENDLIST"));
    assert!(
        !media.contains("#EXT-X-DISCONTINUITY\n"),
        "PRODUCER_TIMESTAMP defaults to NEVER"
    );
    // Each fMP4 fragment sits at its place on the session timeline: the third starts 2 s in.
    let base = url.split("getHLSMasterPlaylist").next().unwrap().to_owned();
    let token = url.split("SessionToken=").nth(1).unwrap().to_owned();
    let init = http
        .get(format!("{base}getMP4InitFragment.mp4?SessionToken={token}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let third = media
        .lines()
        .filter(|l| l.starts_with("getMP4MediaFragment.mp4"))
        .nth(2)
        .unwrap();
    let fragment = http
        .get(format!("{base}{third}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let timescale = find_box(&init, &["moov", "trak", "mdia", "mdhd"])
        .map(|b| u32::from_be_bytes(b[12..16].try_into().unwrap()) as u64)
        .expect("mdhd in the init segment");
    let tfdt = find_box(&fragment, &["moof", "traf", "tfdt"]).expect("tfdt in the fragment");
    let decode_time = if tfdt[0] == 1 {
        u64::from_be_bytes(tfdt[4..12].try_into().unwrap())
    } else {
        u32::from_be_bytes(tfdt[4..8].try_into().unwrap()) as u64
    };
    assert_eq!(decode_time, 2 * timescale, "timescale {timescale}");
    let frames = tokio::task::spawn_blocking(move || play_hls(&url))
        .await
        .unwrap();
    assert_eq!(frames, 6 * GOP, "every frame of the six fragments plays");

    let ts_url = hls_url(&c, hls_request("hls", "ON_DEMAND", "MPEG_TS")).await;
    let ts_media = http
        .get(ts_url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        ts_media.matches("getTSFragment.ts?FragmentNumber=").count(),
        6
    );
    let frames = tokio::task::spawn_blocking(move || play_hls(&ts_url))
        .await
        .unwrap();
    assert_eq!(frames, 6 * GOP);
    srv.stop().await;
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn hls_live_and_live_replay_playlists_and_session_checks() {
    let enc = tokio::task::spawn_blocking(|| encode(8 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("live", 1).await;

    // LIVE needs a fragment from the last 30 seconds.
    c.call("/getHLSStreamingSessionURL", json!({"StreamName": "live"}))
        .await
        .expect_error(404, "ResourceNotFoundException");
    put(&c, "live", &matroska(&enc, &enc.avcc, GOP), 8).await;

    // LIVE: the newest MaxMediaPlaylistFragmentResults fragments, no end, a discontinuity between each
    // (SERVER_TIMESTAMP default ALWAYS), program date-times when asked.
    let url = hls_url(
        &c,
        json!({"StreamName": "live", "MaxMediaPlaylistFragmentResults": 3, "DisplayFragmentTimestamp": "ALWAYS"}),
    )
    .await;
    let (status, media) =
        get_text(&url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist")).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media.matches("#EXTINF:").count(), 3, "{media}");
    assert_eq!(
        media.matches("#EXT-X-DISCONTINUITY\n").count(),
        2,
        "{media}"
    );
    assert_eq!(
        media.matches("#EXT-X-PROGRAM-DATE-TIME:").count(),
        3,
        "{media}"
    );
    assert!(!media.contains("#EXT-X-ENDLIST"));
    assert!(!media.contains("PLAYLIST-TYPE:VOD"));
    // The three newest: producer timestamps 5, 6 and 7 s into the stream.
    let list = c
        .call("/listFragments", json!({"StreamName": "live"}))
        .await
        .json();
    let mut frags: Vec<(u64, String)> = list["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                (f["ProducerTimestamp"].as_f64().unwrap() * 1000.0).round() as u64,
                f["FragmentNumber"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    frags.sort();
    for (_, number) in &frags[5..] {
        assert!(
            media.contains(number.as_str()),
            "{number} missing from {media}"
        );
    }
    assert!(!media.contains(frags[4].1.as_str()));

    // LIVE_REPLAY starts with the first fragment of the range and adds the next as time passes.
    let mut replay = hls_request("live", "LIVE_REPLAY", "FRAGMENTED_MP4");
    replay["HLSFragmentSelector"]["TimestampRange"]
        .as_object_mut()
        .unwrap()
        .remove("EndTimestamp");
    let url = hls_url(&c, replay).await;
    let (_, media) = get_text(&url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist")).await;
    assert_eq!(media.matches("#EXTINF:").count(), 1, "{media}");
    assert!(media.contains(frags[0].1.as_str()));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (_, media) = get_text(&url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist")).await;
    assert!(media.matches("#EXTINF:").count() >= 2, "{media}");

    // A LIVE DASH manifest is dynamic, refreshed every second, with the newest fragments.
    let dash = c
        .call(
            "/getDASHStreamingSessionURL",
            json!({"StreamName": "live", "MaxManifestFragmentResults": 3}),
        )
        .await
        .ok()
        .json();
    let (status, mpd) = get_text(dash["DASHStreamingSessionURL"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{mpd}");
    assert!(
        mpd.contains("type=\"dynamic\"") && mpd.contains("minimumUpdatePeriod=\"PT1S\""),
        "{mpd}"
    );
    assert_eq!(mpd.matches("<S t=").count(), 3, "{mpd}");
    assert!(
        mpd.contains(frags[7].1.as_str()) && !mpd.contains(frags[4].1.as_str()),
        "{mpd}"
    );

    // Tokens: a changed token is refused, a fragment of another stream is not served.
    let forged = url.replacen("SessionToken=ey", "SessionToken=ez", 1);
    let (status, body) = get_text(&forged).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("SessionToken"), "{body}");
    let (status, _) = get_text(&url.replace("SessionToken", "Token")).await;
    assert_eq!(status, 400);
    let wrong = url.replace(
        "getHLSMasterPlaylist.m3u8?",
        "getMP4MediaFragment.mp4?FragmentNumber=91343852333181432392682062600000000000000000001&",
    );
    let (status, body) = get_text(&wrong).await;
    assert_eq!(status, 404, "{body}");
    let ts = url.replace("getHLSMasterPlaylist.m3u8", "getTSFragment.ts");
    let (status, body) = get_text(&ts).await;
    assert_eq!(status, 400, "an fMP4 session serves no TS: {body}");

    // Parameter checks.
    for (bad, error) in [
        (
            json!({"StreamName": "live", "Expires": 299}),
            "InvalidArgumentException",
        ),
        (
            json!({"StreamName": "live", "PlaybackMode": "ON_DEMAND"}),
            "InvalidArgumentException",
        ),
        (
            json!({"StreamName": "live", "ContainerFormat": "MKV"}),
            "InvalidArgumentException",
        ),
        (
            json!({"StreamName": "live", "MaxMediaPlaylistFragmentResults": 5001}),
            "InvalidArgumentException",
        ),
        (
            json!({"StreamName": "live", "HLSFragmentSelector": {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1}}}),
            "InvalidArgumentException",
        ),
    ] {
        c.call("/getHLSStreamingSessionURL", bad)
            .await
            .expect_error(400, error);
    }
    c.create_stream("keepnothing", 0).await;
    c.call(
        "/getHLSStreamingSessionURL",
        json!({"StreamName": "keepnothing"}),
    )
    .await
    .expect_error(400, "NoDataRetentionException");
    srv.stop().await;
}

/// Width and height of a JPEG (first SOFn marker) or PNG (IHDR).
fn image_size(data: &[u8]) -> (u32, u32) {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        let w = u32::from_be_bytes(data[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(data[20..24].try_into().unwrap());
        return (w, h);
    }
    assert!(data.starts_with(&[0xFF, 0xD8]), "neither PNG nor JPEG");
    let mut i = 2;
    while i + 9 < data.len() {
        assert_eq!(data[i], 0xFF, "JPEG marker expected at {i}");
        let marker = data[i + 1];
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        if (0xC0..=0xC3).contains(&marker) {
            let h = u16::from_be_bytes([data[i + 5], data[i + 6]]) as u32;
            let w = u16::from_be_bytes([data[i + 7], data[i + 8]]) as u32;
            return (w, h);
        }
        i += 2 + len;
    }
    panic!("no SOF marker in the JPEG");
}

fn images_of(reply: &serde_json::Value) -> Vec<(u64, Result<Vec<u8>, String>)> {
    use base64::Engine;
    reply["Images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let t = (i["TimeStamp"].as_f64().unwrap() * 1000.0).round() as u64;
            match i["ImageContent"].as_str() {
                Some(b) => (
                    t,
                    Ok(base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
                ),
                None => (t, Err(i["Error"].as_str().unwrap().to_owned())),
            }
        })
        .collect()
}

#[tokio::test]
async fn get_images_samples_scales_and_pages() {
    let enc = tokio::task::spawn_blocking(|| encode(6 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("img", 1).await;
    put(&c, "img", &matroska(&enc, &enc.avcc, GOP), 6).await;
    let request = |extra: serde_json::Value| {
        let mut r = json!({
            "StreamName": "img",
            "ImageSelectorType": "PRODUCER_TIMESTAMP",
            "StartTimestamp": (BASE_MS + 500) as f64 / 1000.0,
            "EndTimestamp": (BASE_MS + 7_500) as f64 / 1000.0,
            "SamplingInterval": 1000,
            "Format": "JPEG",
        });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    // 0.5 s .. 7.5 s every second: 8 times, the last two after the 6 s of video.
    let first = c
        .call(
            "/getImages",
            request(json!({"MaxResults": 5, "WidthPixels": 160, "HeightPixels": 120})),
        )
        .await
        .ok()
        .json();
    let page1 = images_of(&first);
    assert_eq!(page1.len(), 5);
    for (i, (t, image)) in page1.iter().enumerate() {
        assert_eq!(*t, BASE_MS + 500 + i as u64 * 1000);
        let image = image.as_ref().expect("an image where there is video");
        assert_eq!(image_size(image), (160, 120));
    }
    let token = first["NextToken"]
        .as_str()
        .expect("more images to come")
        .to_owned();
    let second = c
        .call(
            "/getImages",
            request(json!({"MaxResults": 5, "NextToken": token, "Format": "PNG"})),
        )
        .await
        .ok()
        .json();
    assert!(second.get("NextToken").is_none());
    let page2 = images_of(&second);
    assert_eq!(page2.len(), 3);
    assert_eq!(page2[0].0, BASE_MS + 5_500);
    assert_eq!(
        image_size(page2[0].1.as_ref().unwrap()),
        (320, 240),
        "original size"
    );
    assert_eq!(page2[1].1, Err("NO_MEDIA".to_owned()));
    assert_eq!(page2[2].1, Err("NO_MEDIA".to_owned()));

    // Different times give different pictures (the ball moves).
    assert_ne!(page1[0].1, page1[1].1);

    // Undecodable media: MEDIA_ERROR per image.
    c.create_stream("junk", 1).await;
    let mut body = common::mkv::video_header();
    body.extend(common::mkv::cluster(BASE_MS, 10, 200));
    body.extend(common::mkv::end_of_fragment());
    put(&c, "junk", &body, 1).await;
    let mut junk = request(
        json!({"EndTimestamp": (BASE_MS + 100) as f64 / 1000.0, "StartTimestamp": BASE_MS as f64 / 1000.0}),
    );
    junk["StreamName"] = json!("junk");
    let reply = c.call("/getImages", junk).await.ok().json();
    assert_eq!(
        images_of(&reply),
        vec![(BASE_MS, Err("MEDIA_ERROR".to_owned()))]
    );

    for bad in [
        json!({"EndTimestamp": (BASE_MS + 301_000) as f64 / 1000.0}),
        json!({"SamplingInterval": 100}),
        json!({"Format": "GIF"}),
        json!({"FormatConfig": {"JPEGQuality": "101"}}),
        json!({"WidthPixels": 4000}),
        json!({"NextToken": "bm9wZQ=="}),
    ] {
        c.call("/getImages", request(bad))
            .await
            .expect_error(400, "InvalidArgumentException");
    }
    srv.stop().await;
}

#[tokio::test]
async fn dash_on_demand_plays_to_the_end_and_shows_numbers() {
    let enc = tokio::task::spawn_blocking(|| encode(6 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("dash", 1).await;
    put(&c, "dash", &matroska(&enc, &enc.avcc, GOP), 6).await;
    let reply = c
        .call(
            "/getDASHStreamingSessionURL",
            json!({
                "StreamName": "dash",
                "PlaybackMode": "ON_DEMAND",
                "DisplayFragmentNumber": "ALWAYS",
                "DisplayFragmentTimestamp": "ALWAYS",
                "DASHFragmentSelector": {
                    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                    "TimestampRange": {
                        "StartTimestamp": BASE_MS as f64 / 1000.0,
                        "EndTimestamp": (BASE_MS + 60_000) as f64 / 1000.0,
                    }
                }
            }),
        )
        .await
        .ok()
        .json();
    let url = reply["DASHStreamingSessionURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        url.contains("/dash/v1/getDASHManifest.mpd?SessionToken="),
        "{url}"
    );
    let (status, mpd) = get_text(&url).await;
    assert_eq!(status, 200, "{mpd}");
    assert!(
        mpd.contains("type=\"static\"") && mpd.contains("mediaPresentationDuration=\"PT6.000S\""),
        "{mpd}"
    );
    assert_eq!(mpd.matches("<S t=").count(), 6, "{mpd}");
    assert_eq!(mpd.matches("kvs:fn=\"").count(), 6);
    assert!(mpd.contains("kvs:ts=\"2023-11-14T22:13:20.000Z\""), "{mpd}");
    // An HLS URL made from a DASH token is refused.
    let (status, _) = get_text(&url.replace(
        "/dash/v1/getDASHManifest.mpd",
        "/hls/v1/getHLSMasterPlaylist.m3u8",
    ))
    .await;
    assert_eq!(status, 401);
    let frames = tokio::task::spawn_blocking(move || play_with(&url, "dashdemux"))
        .await
        .unwrap();
    assert_eq!(frames, 6 * GOP, "every frame of the six fragments plays");
    srv.stop().await;
}

#[tokio::test]
async fn get_clip_of_h265() {
    let enc = tokio::task::spawn_blocking(|| encode_h265(3 * GOP, GOP))
        .await
        .unwrap();
    let srv = TestServer::start().await;
    let c = srv.client();
    c.create_stream("hevc", 1).await;
    put(
        &c,
        "hevc",
        &matroska_as(&enc, "V_MPEGH/ISO/HEVC", &enc.avcc, GOP),
        3,
    )
    .await;
    let clip = c
        .call(
            "/getClip",
            clip_request("hevc", "PRODUCER_TIMESTAMP", BASE_MS, BASE_MS + 10_000),
        )
        .await
        .ok();
    let d = decode_mp4(&clip.body);
    assert_eq!(d.video_tracks, 1);
    assert_eq!(d.frames, 3 * GOP);
    assert_eq!(d.width, 320);
    assert!(
        find_box(
            &clip.body,
            &["moov", "trak", "mdia", "minf", "stbl", "stsd"]
        )
        .is_some_and(|b| b.windows(4).any(|w| w == b"hvc1" || w == b"hev1")),
        "an HEVC sample entry"
    );
    srv.stop().await;
}
