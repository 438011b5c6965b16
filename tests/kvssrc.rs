// SPDX-License-Identifier: MPL-2.0
//! kvssrc against a real kvs-local (a child process): live reads across forced reconnects, cut responses and a
//! server restart; range reads; errors. Fragments are put with the AWS layer's PutMedia; every frame carries its
//! index, so the tests check that the demuxed output holds every frame sent, once, in order.
//!
//! Helpers beyond tests/common: [`Producer`] (creates a stream and puts numbered frames) and [`CuttingProxy`]
//! (a TCP proxy in front of kvs-local that breaks media responses in the middle of a fragment).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gst::prelude::*;
use gstkvs::aws::{self, CreateStreamInput, KvsClient, PutMediaParams, StreamRef, TimecodeType};
use kvs_mkv::ack::{AckEventType, AckParser};
use kvs_mkv::ebml::{self, id};
use kvs_mkv::writer;

use common::{ACCESS_KEY, LocalServer, REGION, SECRET_KEY};

const FRAMES_PER_FRAGMENT: u32 = 10;
const FRAME_MS: u64 = 40;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The payload of frame `index`: a JPEG-looking frame carrying the index, for matroskademux to pass through.
fn frame_payload(index: u32) -> Vec<u8> {
    let mut p = vec![0xFF, 0xD8];
    p.extend_from_slice(&index.to_be_bytes());
    p.extend_from_slice(&[0xFF, 0xD9]);
    p
}

fn frame_index(payload: &[u8]) -> Option<u32> {
    let b = payload.get(2..6)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Creates a stream on kvs-local and puts fragments of numbered frames into it, one PutMedia call per fragment
/// (so that forced connection limits on the server do not matter).
struct Producer {
    client: KvsClient,
    stream: String,
    header: Vec<u8>,
    next_frame: u32,
    /// Producer timestamp (epoch ms) of the next fragment.
    next_ms: u64,
}

impl Producer {
    fn new(server: &LocalServer, stream: &str) -> Producer {
        let client = client_for(&server.url());
        let input = CreateStreamInput {
            stream_name: stream.into(),
            media_type: Some("video/x-motion-jpeg".into()),
            data_retention_in_hours: Some(2),
            ..Default::default()
        };
        block_on(client.create_stream(&input)).expect("CreateStream");
        Producer {
            client,
            stream: stream.into(),
            header: stream_header(),
            next_frame: 0,
            // Fragments in the past, one every 400 ms: they never overlap and are not in the future.
            next_ms: now_ms() - 600_000,
        }
    }

    /// Puts one fragment; retries while the server is away. Returns the producer timestamp (ms) it got.
    fn put_fragment(&mut self) -> u64 {
        self.put_fragment_sized(0)
    }

    /// Like [`put_fragment`](Self::put_fragment) with `padding` more bytes in every frame.
    fn put_fragment_sized(&mut self, padding: usize) -> u64 {
        let timecode = self.next_ms;
        let mut cluster = writer::cluster_start(timecode);
        for i in 0..FRAMES_PER_FRAGMENT {
            let rel = (u64::from(i) * FRAME_MS) as i16;
            let mut payload = frame_payload(self.next_frame + i);
            payload.resize(payload.len() + padding, 0x55);
            cluster.extend(writer::simple_block(1, rel, i == 0, &payload));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_put(&cluster) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("PutMedia failed ({e}); retrying");
                    thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("PutMedia keeps failing: {e}"),
            }
        }
        self.next_frame += FRAMES_PER_FRAGMENT;
        self.next_ms += u64::from(FRAMES_PER_FRAGMENT) * FRAME_MS;
        timecode
    }

    fn try_put(&self, cluster: &[u8]) -> Result<(), String> {
        let mut body = self.header.clone();
        body.extend_from_slice(cluster);
        let params = PutMediaParams {
            timecode_type: TimecodeType::Absolute,
            producer_start_timestamp: None,
            ack_required: true,
        };
        let client = self.client.clone();
        let stream = StreamRef::Name(self.stream.clone());
        block_on(async move {
            let body = futures::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(body))]);
            let mut response = client
                .put_media(&stream, &params, body)
                .await
                .map_err(|e| e.to_string())?;
            let mut parser = AckParser::new();
            loop {
                let chunk = tokio::time::timeout(Duration::from_secs(10), response.next_chunk())
                    .await
                    .map_err(|_| "no acknowledgement within 10 s".to_string())?
                    .map_err(|e| e.to_string())?;
                let Some(chunk) = chunk else {
                    return Err("PutMedia ended before the fragment was received".to_string());
                };
                for ack in parser.push(&chunk) {
                    let ack = ack.map_err(|e| e.to_string())?;
                    match ack.event_type {
                        AckEventType::Persisted => return Ok(()),
                        AckEventType::Error => {
                            return Err(format!("error ack {:?}", ack.error_code));
                        }
                        _ => {}
                    }
                }
            }
        })
    }
}

fn client_for(url: &str) -> KvsClient {
    common::kvs_client(url)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    aws::runtime().expect("runtime").block_on(f)
}

/// EBML header + Segment + Info + Tracks of one V_MJPEG track, absolute millisecond timecodes.
fn stream_header() -> Vec<u8> {
    let mut out = writer::ebml_header("matroska");
    out.extend(writer::segment_start_unknown());
    let mut info = Vec::new();
    ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
    ebml::write_str_element(&mut info, id::MUXING_APP, "kvssrc-test");
    ebml::write_str_element(&mut info, id::WRITING_APP, "kvssrc-test");
    ebml::write_master_element(&mut out, id::INFO, &info);
    let mut entry = Vec::new();
    ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_UID, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
    ebml::write_str_element(&mut entry, id::CODEC_ID, "V_MJPEG");
    let mut video = Vec::new();
    ebml::write_uint_element(&mut video, id::PIXEL_WIDTH, 16);
    ebml::write_uint_element(&mut video, id::PIXEL_HEIGHT, 16);
    ebml::write_master_element(&mut entry, id::VIDEO, &video);
    let mut tracks = Vec::new();
    ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
    ebml::write_master_element(&mut out, id::TRACKS, &tracks);
    out
}

/// What a kvssrc pipeline delivered.
#[derive(Debug, Default)]
struct Received {
    frames: Vec<u32>,
    pts: Vec<gst::ClockTime>,
    fragments: Vec<gst::Structure>,
    warnings: Vec<String>,
    errors: Vec<String>,
    eos: bool,
    stats: Option<gst::Structure>,
}

/// Runs `kvssrc <props> ! matroskademux ! fakesink` until `want_frames` frames came (live), EOS or an error, or
/// `timeout`; `during` is called every 100 ms with the frames so far (to act on the server or the producer).
fn run_kvssrc(
    props: &str,
    want_frames: usize,
    timeout: Duration,
    mut during: impl FnMut(usize),
) -> Received {
    common::init();
    let desc = format!(
        "kvssrc name=src {props} ! matroskademux ! fakesink name=sink sync=false signal-handoffs=true"
    );
    let pipeline = common::parse_pipeline(&desc);
    let sink = pipeline.by_name("sink").expect("sink");
    let collected = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let c = collected.clone();
    sink.connect("handoff", false, move |args| {
        if let Ok(buffer) = args[1].get::<gst::Buffer>()
            && let Ok(map) = buffer.map_readable()
        {
            let mut c = c.lock().unwrap();
            if let Some(i) = frame_index(&map) {
                c.0.push(i);
            }
            if let Some(pts) = buffer.pts() {
                c.1.push(pts);
            }
        }
        None
    });
    let mut received = Received::default();
    pipeline.set_state(gst::State::Playing).expect("playing");
    let bus = pipeline.bus().expect("bus");
    let deadline = Instant::now() + timeout;
    loop {
        let count = collected.lock().unwrap().0.len();
        if want_frames > 0 && count >= want_frames {
            break;
        }
        if Instant::now() >= deadline {
            received
                .errors
                .push(format!("timed out with {count} of {want_frames} frames"));
            break;
        }
        during(count);
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                received.eos = true;
                break;
            }
            gst::MessageView::Error(e) => {
                received
                    .errors
                    .push(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Warning(w) => received.warnings.push(w.error().to_string()),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "kvs-fragment") {
                    received.fragments.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    // Messages posted before the last frames arrived (the bus drops them once the pipeline is in NULL).
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Element(e) = msg.view()
            && let Some(s) = e.structure().filter(|s| s.name() == "kvs-fragment")
        {
            received.fragments.push(s.to_owned());
        }
    }
    if let Some(src) = pipeline.by_name("src") {
        received.stats = Some(src.property::<gst::Structure>("stats"));
    }
    pipeline.set_state(gst::State::Null).expect("null");
    let c = collected.lock().unwrap();
    received.frames = c.0.clone();
    received.pts = c.1.clone();
    received
}

fn assert_in_order(frames: &[u32], expected: std::ops::Range<u32>) {
    let expected: Vec<u32> = expected.collect();
    if frames != expected.as_slice() {
        let first_bad = frames.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "frames differ from {}..{} ({} received, first difference at {first_bad:?}); received: {frames:?}",
            expected.first().unwrap_or(&0),
            expected.last().map_or(0, |l| l + 1),
            frames.len()
        );
    }
}

fn fragment_numbers(received: &Received) -> Vec<String> {
    received
        .fragments
        .iter()
        .filter_map(|s| s.get::<String>("fragment-number").ok())
        .collect()
}

#[test]
fn live_reads_every_frame_across_forced_reconnects() {
    // GetMedia connections end after 1 s and after 300 ms without a new fragment: many reconnects.
    let server = LocalServer::start_with(&[
        "--max-connection-duration",
        "1",
        "--get-media-idle-end-ms",
        "300",
    ]);
    let mut producer = Producer::new(&server, "live-reconnects");
    for _ in 0..3 {
        producer.put_fragment();
    }
    let fragments = 15u32;
    let want = (fragments * FRAMES_PER_FRAGMENT) as usize;
    let mut put = 3;
    let mut last_put = Instant::now();
    let read_started = Instant::now();
    let received = run_kvssrc(
        &format!(
            "stream-name=live-reconnects start-selector=earliest {}",
            server.launch_props()
        ),
        want,
        Duration::from_secs(90),
        |_| {
            // The rest arrives while kvssrc reads, some after pauses longer than the idle end.
            let pause = if put % 4 == 0 { 700 } else { 150 };
            if put < fragments && last_put.elapsed() > Duration::from_millis(pause) {
                producer.put_fragment();
                put += 1;
                last_put = Instant::now();
            }
        },
    );
    assert!(received.errors.is_empty(), "errors: {:?}", received.errors);
    assert_in_order(&received.frames, 0..fragments * FRAMES_PER_FRAGMENT);
    let numbers = fragment_numbers(&received);
    assert_eq!(numbers.len(), fragments as usize);
    let mut sorted = numbers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, numbers, "fragment numbers increase, none twice");
    let stats = received.stats.expect("stats");
    let requests = stats.get::<u64>("requests").expect("requests");
    assert!(
        requests >= 4,
        "the reads were cut into several GetMedia calls ({requests})"
    );
    // Within the service's 5 GetMedia calls per second.
    let allowed = 5.0 * read_started.elapsed().as_secs_f64() + 1.0;
    assert!(
        (requests as f64) <= allowed,
        "{requests} calls, at most {allowed:.0} allowed"
    );
    // The output timestamps are the producer's: 40 ms apart, increasing.
    assert!(
        received.pts.windows(2).all(|w| w[1] > w[0]),
        "timestamps increase"
    );
    // Every message carries the service's fields.
    let first = &received.fragments[0];
    assert!(first.get::<f64>("producer-timestamp").is_ok());
    assert!(first.get::<f64>("server-timestamp").is_ok());
    assert!(first.get::<u64>("millis-behind-now").is_ok());
    assert_eq!(
        first.get::<String>("continuation-token").ok(),
        Some(numbers[0].clone())
    );
    assert_eq!(
        first.get::<u64>("frames").ok(),
        Some(u64::from(FRAMES_PER_FRAGMENT))
    );
}

#[test]
fn live_read_survives_a_server_restart() {
    let mut server = LocalServer::start();
    let mut producer = Producer::new(&server, "live-restart");
    for _ in 0..4 {
        producer.put_fragment();
    }
    let server_cell = std::cell::RefCell::new(&mut server);
    let mut restarted = false;
    let mut put_after = 0;
    let fragments_after = 6u32;
    let want = ((4 + fragments_after) * FRAMES_PER_FRAGMENT) as usize;
    let received = run_kvssrc(
        &format!(
            "stream-name=live-restart start-selector=earliest {}",
            server_cell.borrow().launch_props()
        ),
        want,
        Duration::from_secs(120),
        |count| {
            if !restarted && count >= (4 * FRAMES_PER_FRAGMENT) as usize {
                // kvssrc is waiting for more in an open GetMedia: the server dies and comes back.
                server_cell.borrow_mut().restart();
                restarted = true;
            } else if restarted && put_after < fragments_after {
                producer.put_fragment();
                put_after += 1;
            }
        },
    );
    assert!(restarted);
    assert!(received.errors.is_empty(), "errors: {:?}", received.errors);
    assert!(
        !received.warnings.is_empty(),
        "the broken response and the refused connections are reported as warnings"
    );
    assert_in_order(
        &received.frames,
        0..(4 + fragments_after) * FRAMES_PER_FRAGMENT,
    );
    assert_eq!(
        fragment_numbers(&received).len(),
        (4 + fragments_after) as usize
    );
}

/// A TCP proxy in front of kvs-local that rewrites the data endpoint the server announces to its own address
/// (same length: both are 5-digit ports in practice) and breaks every connection after a number of response
/// bytes that only media responses reach, so GetMedia bodies stop in the middle of a fragment.
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    fn start(server_port: u16, cut_points: Vec<usize>) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            port.to_string().len(),
            server_port.to_string().len(),
            "the proxy rewrites ports in place"
        );
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (stop2, cuts2) = (stop.clone(), cuts.clone());
        thread::spawn(move || {
            let mut n = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let cut = cut_points[n % cut_points.len()];
                        n += 1;
                        let cuts = cuts2.clone();
                        thread::spawn(move || {
                            proxy_connection(client, server_port, port, cut, cuts)
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        CuttingProxy { port, stop, cuts }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_connection(
    client: TcpStream,
    server_port: u16,
    proxy_port: u16,
    cut: usize,
    cuts: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
        return;
    };
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = client_r.read(&mut buf) {
            if n == 0 || server_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let (mut server_r, mut client_w) = (server, client);
    let from = format!("127.0.0.1:{server_port}").into_bytes();
    let to = format!("127.0.0.1:{proxy_port}").into_bytes();
    let mut sent = 0usize;
    let mut buf = [0u8; 16384];
    while let Ok(n) = server_r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut data = buf[..n].to_vec();
        for i in 0..data.len().saturating_sub(from.len() - 1) {
            if data[i..i + from.len()] == from[..] {
                data[i..i + to.len()].copy_from_slice(&to);
            }
        }
        let take = data.len().min(cut - sent);
        if client_w.write_all(&data[..take]).is_err() {
            break;
        }
        sent += take;
        if sent >= cut {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = server_r.shutdown(Shutdown::Both);
}

#[test]
fn cut_responses_lose_and_repeat_nothing() {
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "live-cuts");
    let fragments = 12u32;
    for _ in 0..fragments {
        producer.put_fragment();
    }
    // A fragment document is about 500 bytes here: cut every response somewhere inside its 2nd to 4th fragment.
    let proxy = CuttingProxy::start(server.port(), vec![1300, 1900, 1650, 2200]);
    let props = format!(
        "stream-name=live-cuts start-selector=earliest endpoint=http://127.0.0.1:{} access-key={ACCESS_KEY} \
         secret-key={SECRET_KEY} aws-region={REGION}",
        proxy.port
    );
    let received = run_kvssrc(
        &props,
        (fragments * FRAMES_PER_FRAGMENT) as usize,
        Duration::from_secs(120),
        |_| {},
    );
    assert!(received.errors.is_empty(), "errors: {:?}", received.errors);
    assert!(
        proxy.cuts.load(Ordering::Relaxed) >= 4,
        "responses were cut"
    );
    assert_in_order(&received.frames, 0..fragments * FRAMES_PER_FRAGMENT);
    assert!(
        received
            .fragments
            .iter()
            .all(|s| s.get::<bool>("complete") == Ok(true))
    );
    assert!(
        !received.warnings.is_empty(),
        "the retried failures are reported as warnings"
    );
}

#[test]
fn range_reads_exactly_the_fragments_in_order_then_eos() {
    // ListFragments answers in arbitrary order here (the server's default, like the service).
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "range");
    let starts: Vec<u64> = (0..12).map(|_| producer.put_fragment()).collect();
    // Fragments 3..=8 start inside [start, end] (inclusive, on each fragment's start).
    let start = starts[3] as f64 / 1000.0 - 0.1;
    let end = starts[8] as f64 / 1000.0;
    let received = run_kvssrc(
        &format!(
            "stream-name=range start-timestamp={start:.3} end-timestamp={end:.3} fragment-selector-type=producer {}",
            server.launch_props()
        ),
        0,
        Duration::from_secs(60),
        |_| {},
    );
    assert!(received.errors.is_empty(), "errors: {:?}", received.errors);
    assert!(received.eos, "a range read ends with EOS");
    assert_in_order(
        &received.frames,
        3 * FRAMES_PER_FRAGMENT..9 * FRAMES_PER_FRAGMENT,
    );
    let producer_ts: Vec<u64> = received
        .fragments
        .iter()
        .filter_map(|s| s.get::<f64>("producer-timestamp").ok())
        .map(|t| (t * 1000.0).round() as u64)
        .collect();
    assert_eq!(producer_ts, starts[3..=8].to_vec());
    assert!(
        received
            .fragments
            .iter()
            .all(|s| !s.has_field("continuation-token"))
    );
    let numbers = fragment_numbers(&received);
    let mut sorted = numbers.clone();
    sorted.sort();
    assert_eq!(numbers, sorted);
}

#[test]
fn range_of_a_whole_stream_as_one_file_plays() {
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "range-file");
    let starts: Vec<u64> = (0..5).map(|_| producer.put_fragment()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.mkv");
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc stream-name=range-file start-timestamp={:.3} end-timestamp={:.3} {} ! filesink location=\"{}\"",
        starts[0] as f64 / 1000.0,
        (starts[4] + 1) as f64 / 1000.0,
        server.launch_props(),
        path.display()
    ));
    let result = common::run_pipeline(&pipeline, Duration::from_secs(60));
    assert!(result.eos && result.errors.is_empty(), "{result:?}");
    assert_eq!(result.messages_named("kvs-fragment").len(), 5);
    // The saved file is one Matroska document: one EBML header, no AWS tags.
    let bytes = std::fs::read(&path).expect("output file");
    let headers = bytes
        .windows(4)
        .filter(|w| *w == [0x1A, 0x45, 0xDF, 0xA3])
        .count();
    assert_eq!(headers, 1);
    assert!(!bytes.windows(16).any(|w| w == b"AWS_KINESISVIDEO"));
    // A range read knows its length in advance and writes it into Info, so players show the right duration of
    // the saved file (without it, matroskademux guesses from a cluster near the end).
    let mut parser = kvs_mkv::stream::MkvStreamParser::default();
    parser.push(&bytes);
    let Ok(Some(kvs_mkv::stream::MkvEvent::Header(header))) = parser.next_event() else {
        panic!("the saved file starts with a Matroska header");
    };
    let info_header = kvs_mkv::ebml::read_element_header(&header.info)
        .ok()
        .flatten()
        .expect("an Info element");
    let duration = kvs_mkv::ebml::children(&header.info[info_header.header_len..])
        .filter_map(Result::ok)
        .find(|(h, _)| h.id == kvs_mkv::ebml::id::DURATION)
        .map(|(_, body)| kvs_mkv::ebml::read_float(body).expect("a float Duration"))
        .expect("Info has a Duration");
    let streamed_ms = (5 * u64::from(FRAMES_PER_FRAGMENT) * FRAME_MS) as f64;
    assert!(
        (duration - streamed_ms).abs() <= FRAME_MS as f64,
        "Info says {duration} ms, {streamed_ms} ms were streamed"
    );
    let (frames, audio_frames, last_frame_end) = common::demux_counts(&path);
    assert_eq!(frames, 5 * FRAMES_PER_FRAGMENT as usize);
    assert_eq!(audio_frames, 0);
    // The file's timeline starts at 0, so players show the duration that was streamed (50 frames of 40 ms), not
    // the producer's epoch timestamps.
    let streamed = 5 * u64::from(FRAMES_PER_FRAGMENT) * FRAME_MS;
    let last_start = last_frame_end.expect("frames have timestamps").mseconds();
    assert!(
        (streamed - FRAME_MS..=streamed).contains(&last_start),
        "the last frame ends at {last_start} ms, {streamed} ms were streamed"
    );
}

#[test]
fn missing_stream_is_a_not_found_error() {
    let server = LocalServer::start();
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc stream-name=no-such-stream {} ! fakesink",
        server.launch_props()
    ));
    let result = common::run_pipeline(&pipeline, Duration::from_secs(30));
    assert_eq!(result.errors.len(), 1, "{result:?}");
    let error = &result.errors[0];
    assert!(error.contains("no-such-stream"), "{error}");
    assert!(
        error.to_lowercase().contains("not found") || error.contains("ResourceNotFound"),
        "{error}"
    );
}

#[test]
fn wrong_credentials_are_not_authorized() {
    let server = LocalServer::start();
    let _producer = Producer::new(&server, "auth");
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc stream-name=auth endpoint={} access-key={ACCESS_KEY} secret-key=wrong aws-region={REGION} ! fakesink",
        server.url()
    ));
    let bus = pipeline.bus().expect("bus");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Error])
        .expect("an error");
    pipeline.set_state(gst::State::Null).expect("null");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().matches(gst::ResourceError::NotAuthorized),
        "{:?}",
        e.error()
    );
}

#[test]
fn properties_are_checked_at_start() {
    common::init();
    let src = gst::ElementFactory::make("kvssrc").build().expect("kvssrc");
    assert!(src.property::<bool>("is-live"));
    src.set_property("end-timestamp", 1_700_000_000.0f64);
    assert!(
        !src.property::<bool>("is-live"),
        "a range read is not live unless is-live is set"
    );
    src.set_property_from_str("start-selector", "fragment-number");
    assert_eq!(
        src.property_value("start-selector")
            .get::<gstkvs::kvssrc::StartSelectorType>()
            .ok(),
        Some(gstkvs::kvssrc::StartSelectorType::FragmentNumber)
    );

    // No stream named: start fails with a message saying what to set.
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("kvssrc").build().expect("kvssrc");
    let sink = gst::ElementFactory::make("fakesink")
        .build()
        .expect("fakesink");
    pipeline.add_many([&src, &sink]).expect("add");
    src.link(&sink).expect("link");
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message");
    let _ = pipeline.set_state(gst::State::Null);
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().matches(gst::ResourceError::Settings),
        "{:?}",
        e.error()
    );
    assert!(
        e.error()
            .to_string()
            .contains("set stream-name or stream-arn"),
        "{}",
        e.error()
    );
}

#[test]
fn live_now_reads_what_comes_after_the_start_and_skips_nothing_while_idle() {
    // Bodies end 300 ms after the last fragment: kvssrc asks again and again before anything comes.
    let server = LocalServer::start_with(&["--get-media-idle-end-ms", "300"]);
    let mut producer = Producer::new(&server, "live-now");
    for _ in 0..3 {
        producer.put_fragment();
    }
    let old_frames = 3 * FRAMES_PER_FRAGMENT;
    let new_fragments = 5u32;
    let started = Instant::now();
    let mut put = 0;
    let received = run_kvssrc(
        &format!("stream-name=live-now {}", server.launch_props()),
        (new_fragments * FRAMES_PER_FRAGMENT) as usize,
        Duration::from_secs(60),
        |_| {
            // Nothing for 1.5 s (several empty GetMedia responses), then one fragment every 200 ms.
            if started.elapsed() > Duration::from_millis(1500 + 200 * put as u64)
                && put < new_fragments
            {
                producer.put_fragment();
                put += 1;
            }
        },
    );
    assert!(received.errors.is_empty(), "errors: {:?}", received.errors);
    assert_in_order(
        &received.frames,
        old_frames..old_frames + new_fragments * FRAMES_PER_FRAGMENT,
    );
    let requests = received
        .stats
        .and_then(|s| s.get::<u64>("requests").ok())
        .unwrap_or(0);
    assert!(
        requests >= 2,
        "empty responses were followed by new requests ({requests})"
    );
}

/// Live H.264 test video for kvssink: `frames` frames at 30 fps, a key frame (and a fragment) every 30.
fn h264_into_kvssink(server: &LocalServer, stream: &str, frames: u32) -> gst::Pipeline {
    common::parse_pipeline(&format!(
        "videotestsrc is-live=true num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! kvssink stream-name={stream} {}",
        server.launch_props()
    ))
}

/// Counts the frames decodebin decodes from kvssrc's output.
fn decode_kvssrc(
    props: &str,
    want: usize,
    timeout: Duration,
    during: impl FnMut(usize),
) -> (usize, Received) {
    let desc_props = props.to_string();
    let decoded = Arc::new(AtomicUsize::new(0));
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc name=src {desc_props} ! decodebin ! video/x-raw ! fakesink name=sink sync=false"
    ));
    let sink = pipeline.by_name("sink").expect("sink");
    let d = decoded.clone();
    sink.static_pad("sink")
        .expect("pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            d.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    let received = run_pipeline_until(
        &pipeline,
        || decoded.load(Ordering::Relaxed),
        want,
        timeout,
        during,
    );
    (decoded.load(Ordering::Relaxed), received)
}

/// Plays `pipeline` until `count()` reaches `want` (0: until EOS), an error or `timeout`.
fn run_pipeline_until(
    pipeline: &gst::Pipeline,
    count: impl Fn() -> usize,
    want: usize,
    timeout: Duration,
    mut during: impl FnMut(usize),
) -> Received {
    let mut received = Received::default();
    pipeline.set_state(gst::State::Playing).expect("playing");
    let bus = pipeline.bus().expect("bus");
    let deadline = Instant::now() + timeout;
    loop {
        let n = count();
        if want > 0 && n >= want {
            break;
        }
        if Instant::now() >= deadline {
            received
                .errors
                .push(format!("timed out with {n} of {want}"));
            break;
        }
        during(n);
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                received.eos = true;
                break;
            }
            gst::MessageView::Error(e) => {
                received
                    .errors
                    .push(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Warning(w) => {
                received
                    .warnings
                    .push(format!("{} ({:?})", w.error(), w.debug()))
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "kvs-fragment") {
                    received.fragments.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("null");
    received
}

#[test]
fn kvssink_output_decodes_back_through_kvssrc_range() {
    common::init();
    let server = LocalServer::start();
    let upload = common::run_pipeline(
        &h264_into_kvssink(&server, "h264", 90),
        Duration::from_secs(60),
    );
    assert!(upload.eos && upload.errors.is_empty(), "{upload:?}");
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 60;
    let (decoded, received) = decode_kvssrc(
        &format!(
            "stream-name=h264 start-timestamp=1 end-timestamp={end} {}",
            server.launch_props()
        ),
        0,
        Duration::from_secs(60),
        |_| {},
    );
    assert!(received.errors.is_empty() && received.eos, "{received:?}");
    assert!(received.warnings.is_empty(), "{:?}", received.warnings);
    assert_eq!(received.fragments.len(), 3);
    assert_eq!(decoded, 90, "every frame kvssink sent decodes");
}

#[test]
fn kvssink_output_decodes_live_through_kvssrc() {
    common::init();
    let server = LocalServer::start();
    // The stream must exist before kvssrc asks for it: a first short upload creates it.
    let first = common::run_pipeline(
        &h264_into_kvssink(&server, "h264-live", 30),
        Duration::from_secs(60),
    );
    assert!(first.eos && first.errors.is_empty(), "{first:?}");
    let upload = h264_into_kvssink(&server, "h264-live", 150);
    let mut uploading = false;
    let (decoded, received) = decode_kvssrc(
        &format!(
            "stream-name=h264-live start-selector=earliest {}",
            server.launch_props()
        ),
        180,
        Duration::from_secs(60),
        |_| {
            if !uploading {
                upload
                    .set_state(gst::State::Playing)
                    .expect("upload starts");
                uploading = true;
            }
        },
    );
    let _ = upload.set_state(gst::State::Null);
    assert!(received.errors.is_empty(), "{received:?}");
    assert_eq!(decoded, 180, "every frame of both uploads decodes, live");
}

// ---- benchmarks (run with --ignored --nocapture; figures are printed) ----

/// Read throughput: a stored stream of `KVSSRC_BENCH_MB` MiB (default 1024) read by range into fakesink.
#[test]
#[ignore = "benchmark: cargo test -p gst-plugin-kvs --test kvssrc bench -- --ignored --nocapture --test-threads=1"]
fn bench_range_read_throughput() {
    let mib: usize = std::env::var("KVSSRC_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let server = LocalServer::start_with(&["--max-fragment-size", "104857600"]);
    let mut producer = Producer::new(&server, "bench");
    // 4 MiB fragments of ten 400 KiB frames.
    let frame = 400 * 1024;
    let fragment_bytes = frame * FRAMES_PER_FRAGMENT as usize;
    let fragments = (mib * 1024 * 1024).div_ceil(fragment_bytes);
    let t = Instant::now();
    let starts: Vec<u64> = (0..fragments)
        .map(|_| producer.put_fragment_sized(frame))
        .collect();
    eprintln!(
        "stored {fragments} fragments ({mib} MiB) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc name=src stream-name=bench start-timestamp={:.3} end-timestamp={:.3} {} ! \
         fakesink name=sink sync=false",
        starts[0] as f64 / 1000.0,
        (starts[fragments - 1] + 1) as f64 / 1000.0,
        server.launch_props()
    ));
    let bytes = Arc::new(AtomicUsize::new(0));
    let b = bytes.clone();
    let sink = pipeline.by_name("sink").expect("sink");
    sink.static_pad("sink")
        .expect("pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                b.fetch_add(buffer.size(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    let t = Instant::now();
    let result = common::run_pipeline(&pipeline, Duration::from_secs(1800));
    let secs = t.elapsed().as_secs_f64();
    assert!(
        result.eos && result.errors.is_empty(),
        "{:?}",
        result.errors
    );
    let total = bytes.load(Ordering::Relaxed);
    assert!(total >= mib * 1024 * 1024);
    eprintln!(
        "BENCH range read: {:.1} MiB in {secs:.2} s = {:.1} MiB/s ({} fragments)",
        total as f64 / 1048576.0,
        total as f64 / 1048576.0 / secs,
        result.messages_named("kvs-fragment").len()
    );
}

/// Live latency: from a fragment's PERSISTED acknowledgement (as its producer sees it) to the first byte of
/// that fragment leaving kvssrc's source pad.
#[test]
#[ignore = "benchmark: cargo test -p gst-plugin-kvs --test kvssrc bench -- --ignored --nocapture --test-threads=1"]
fn bench_live_latency() {
    let fragments: usize = std::env::var("KVSSRC_BENCH_FRAGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "latency");
    producer.put_fragment();
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc name=src stream-name=latency {} ! fakesink sync=false",
        server.launch_props()
    ));
    // Arrival time of every fragment buffer (header buffers excluded), in order.
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let a = arrivals.clone();
    let src = pipeline.by_name("src").expect("src");
    src.static_pad("src")
        .expect("pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer()
                && !buffer.flags().contains(gst::BufferFlags::HEADER)
            {
                a.lock().unwrap().push(Instant::now());
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).expect("playing");
    // Let the first GetMedia (from now) reach the server.
    thread::sleep(Duration::from_millis(500));
    let mut persisted = Vec::with_capacity(fragments);
    for _ in 0..fragments {
        producer.put_fragment_sized(2000);
        persisted.push(Instant::now());
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < fragments && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    pipeline.set_state(gst::State::Null).expect("null");
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), fragments, "every fragment arrived");
    // Signed: kvs-local serves a fragment as soon as it is RECEIVED, which can be before PERSISTED.
    let mut ms: Vec<f64> = arrivals
        .iter()
        .zip(&persisted)
        .map(|(a, p)| {
            if a >= p {
                a.duration_since(*p).as_secs_f64() * 1000.0
            } else {
                -(p.duration_since(*a).as_secs_f64() * 1000.0)
            }
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "BENCH live latency PERSISTED -> first byte out ({} fragments): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        pct(0.5),
        pct(0.99),
        ms[ms.len() - 1]
    );
}

#[test]
fn range_by_arn_and_an_empty_range() {
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "by-arn");
    let starts: Vec<u64> = (0..3).map(|_| producer.put_fragment()).collect();
    let arn = block_on(
        producer
            .client
            .describe_stream(&StreamRef::Name("by-arn".into())),
    )
    .expect("DescribeStream")
    .stream_arn;
    let received = run_kvssrc(
        &format!(
            "stream-arn={arn} start-timestamp={:.3} end-timestamp={:.3} fragment-selector-type=producer {}",
            starts[0] as f64 / 1000.0,
            starts[2] as f64 / 1000.0,
            server.launch_props()
        ),
        0,
        Duration::from_secs(30),
        |_| {},
    );
    assert!(received.errors.is_empty() && received.eos, "{received:?}");
    assert_in_order(&received.frames, 0..3 * FRAMES_PER_FRAGMENT);

    // A range before the first fragment: EOS at once, and a warning that says why nothing came (the output is
    // empty, which a demuxer would reject: plain fakesink here).
    let before = starts[0] as f64 / 1000.0 - 100.0;
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc stream-arn={arn} start-timestamp={:.3} end-timestamp={before:.3} {} ! fakesink",
        before - 10.0,
        server.launch_props()
    ));
    let result = common::run_pipeline(&pipeline, Duration::from_secs(30));
    assert!(result.eos && result.errors.is_empty(), "{result:?}");
    assert!(result.messages_named("kvs-fragment").is_empty());
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.contains("no fragment in the requested time range")),
        "{:?}",
        result.warnings
    );
}

#[test]
fn range_of_more_than_1000_fragments_is_listed_in_pages_and_read_in_batches() {
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "many");
    let count = 1100u32;
    let starts: Vec<u64> = (0..count).map(|_| producer.put_fragment()).collect();
    let received = run_kvssrc(
        &format!(
            "stream-name=many start-timestamp={:.3} end-timestamp={:.3} {}",
            starts[0] as f64 / 1000.0,
            starts[starts.len() - 1] as f64 / 1000.0,
            server.launch_props()
        ),
        0,
        Duration::from_secs(120),
        |_| {},
    );
    assert!(
        received.errors.is_empty() && received.eos,
        "{:?}",
        received.errors
    );
    assert_in_order(&received.frames, 0..count * FRAMES_PER_FRAGMENT);
    let requests = received.stats.and_then(|s| s.get::<u64>("requests").ok());
    assert_eq!(requests, Some(2), "1000 fragments, then 100");
}

#[test]
fn live_reads_start_after_a_token_or_a_fragment_number_or_at_a_timestamp() {
    let server = LocalServer::start();
    let mut producer = Producer::new(&server, "resume");
    for _ in 0..6 {
        producer.put_fragment();
    }
    let first = run_kvssrc(
        &format!(
            "stream-name=resume start-selector=earliest {}",
            server.launch_props()
        ),
        (3 * FRAMES_PER_FRAGMENT) as usize,
        Duration::from_secs(30),
        |_| {},
    );
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let third = &first.fragments[2];
    let token = third.get::<String>("continuation-token").expect("token");
    let number = third.get::<String>("fragment-number").expect("number");
    let fourth_start = third.get::<f64>("producer-timestamp").expect("timestamp")
        + (FRAMES_PER_FRAGMENT as f64 * FRAME_MS as f64) / 1000.0;

    for props in [
        format!("start-selector=continuation-token continuation-token={token}"),
        format!("start-selector=fragment-number start-fragment-number={number}"),
        format!("start-selector=producer-timestamp start-timestamp={fourth_start:.3}"),
    ] {
        let next = run_kvssrc(
            &format!("stream-name=resume {props} {}", server.launch_props()),
            (3 * FRAMES_PER_FRAGMENT) as usize,
            Duration::from_secs(30),
            |_| {},
        );
        assert!(next.errors.is_empty(), "{props}: {:?}", next.errors);
        assert_in_order(
            &next.frames,
            3 * FRAMES_PER_FRAGMENT..6 * FRAMES_PER_FRAGMENT,
        );
    }
}

#[test]
fn stopping_a_waiting_live_read_is_prompt() {
    // Responses stay open for a minute without data: kvssrc is blocked in a read when the pipeline stops.
    let server = LocalServer::start_with(&["--get-media-idle-end-ms", "60000"]);
    let _producer = Producer::new(&server, "idle");
    common::init();
    let pipeline = common::parse_pipeline(&format!(
        "kvssrc name=src stream-name=idle {} ! fakesink",
        server.launch_props()
    ));
    pipeline.set_state(gst::State::Playing).expect("playing");
    let src = pipeline.by_name("src").expect("src");
    let deadline = Instant::now() + Duration::from_secs(10);
    while src
        .property::<gst::Structure>("stats")
        .get::<u64>("requests")
        != Ok(1)
    {
        assert!(Instant::now() < deadline, "no GetMedia request was made");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    pipeline.set_state(gst::State::Null).expect("null");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stopping took {:?}",
        t.elapsed()
    );
}
