// SPDX-License-Identifier: MPL-2.0
//! Tests of the rewriter on the real GetMedia captures in `../shared/testdata/getmedia` and on synthetic chains.
//! Every test checks what a player sees: the continuous output goes through GStreamer's matroskademux and the
//! frames that come out are counted and their timestamps checked.

use std::path::PathBuf;
use std::sync::Once;

use gst::prelude::*;
use kvs_mkv::ebml::{self, id};
use kvs_mkv::fragment_number::FragmentNumber;
use kvs_mkv::stream::{ClusterAssembler, MkvEvent, MkvStreamParser};
use kvs_mkv::{tags, writer};

use super::*;

fn capture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/getmedia");
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the GetMedia capture {} ({e}); these tests need the folder ../shared/testdata/getmedia \
             next to the repository",
            path.display()
        )
    })
}

/// Everything the rewriter produced for some input.
#[derive(Debug, Default)]
struct Output {
    bytes: Vec<u8>,
    headers: usize,
    fragments: Vec<FragmentInfo>,
    duplicates: Vec<String>,
    errors: Vec<ServiceError>,
    /// Fragments left out, with the error that names them.
    unwritable: Vec<(Option<String>, String)>,
}

impl Output {
    fn drain(&mut self, remuxer: &mut Remuxer) {
        while let Some(item) = remuxer.pop() {
            match item {
                RemuxItem::Header(h) => {
                    self.headers += 1;
                    self.bytes.extend_from_slice(&h);
                }
                RemuxItem::Fragment { data, info } => {
                    self.bytes.extend_from_slice(&data);
                    self.fragments.push(info);
                }
                RemuxItem::Duplicate(n) => self.duplicates.push(n),
                RemuxItem::ServiceError(e) => self.errors.push(e),
                RemuxItem::FragmentError(e) => panic!("unexpected fragment error: {e}"),
                RemuxItem::Unwritable {
                    fragment_number,
                    error,
                } => self.unwritable.push((fragment_number, error)),
            }
        }
    }
}

/// Feeds `body` in uneven pieces, the way a network delivers it.
fn feed(remuxer: &mut Remuxer, out: &mut Output, body: &[u8]) {
    let mut pos = 0;
    let mut piece = 1;
    while pos < body.len() {
        let end = (pos + piece).min(body.len());
        remuxer.push(&body[pos..end]).expect("valid input");
        out.drain(remuxer);
        pos = end;
        piece = piece * 7 % 65_521 + 1;
    }
}

fn remux_whole(
    body: &[u8],
    trailer_expected: bool,
    end: BodyEnd,
) -> (Output, Option<FragmentInfo>) {
    let mut remuxer = Remuxer::new(trailer_expected);
    let mut out = Output::default();
    feed(&mut remuxer, &mut out, body);
    let dropped = remuxer.end_body(end).expect("body ends");
    out.drain(&mut remuxer);
    (out, dropped)
}

/// What matroskademux makes of a byte stream: the timestamp of every frame and the warnings and errors it posts.
#[derive(Debug)]
struct Demuxed {
    pts: Vec<gst::ClockTime>,
    problems: Vec<String>,
}

fn demux(bytes: &[u8]) -> Demuxed {
    static INIT: Once = Once::new();
    INIT.call_once(|| gst::init().expect("GStreamer initialises"));
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property_from_str("format", "bytes")
        .property("caps", gst::Caps::builder("video/x-matroska").build())
        .build()
        .expect("appsrc");
    let demux = gst::ElementFactory::make("matroskademux")
        .build()
        .expect("matroskademux (gst-plugins-good)");
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("signal-handoffs", true)
        .build()
        .expect("fakesink");
    pipeline.add_many([&src, &demux, &sink]).expect("add");
    src.link(&demux).expect("link");
    let sink_pad = sink.static_pad("sink").expect("fakesink pad");
    demux.connect_pad_added(move |_, pad| {
        if !sink_pad.is_linked() {
            let _ = pad.link(&sink_pad);
        }
    });
    let pts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collected = pts.clone();
    sink.connect("handoff", false, move |args| {
        if let Ok(buffer) = args[1].get::<gst::Buffer>()
            && let Some(pts) = buffer.pts()
        {
            collected.lock().expect("lock").push(pts);
        }
        None
    });
    let buffer = gst::Buffer::from_slice(bytes.to_vec());
    let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);

    pipeline.set_state(gst::State::Playing).expect("playing");
    let bus = pipeline.bus().expect("bus");
    let mut problems = Vec::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(30)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                problems.push(format!("error: {} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Warning(w) => {
                problems.push(format!("warning: {} ({:?})", w.error(), w.debug()))
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("null");
    let pts = pts.lock().expect("lock").clone();
    Demuxed { pts, problems }
}

/// Checks the continuous output's structure: one document, clusters in increasing time with no frame before the
/// previous cluster's last one. Returns the number of blocks.
fn check_structure(bytes: &[u8], headers: usize) -> usize {
    let mut parser = MkvStreamParser::default();
    parser.push(bytes);
    let mut assembler = ClusterAssembler::default();
    let (mut seen_headers, mut segment_ends, mut blocks) = (0, 0, 0);
    let mut last_max: Option<i64> = None;
    let mut events = Vec::new();
    while let Some(ev) = parser.next_event().expect("output parses") {
        events.push(ev);
    }
    while let Some(ev) = parser.finish().expect("output is not truncated") {
        events.push(ev);
    }
    for ev in events {
        match &ev {
            MkvEvent::Header(_) => seen_headers += 1,
            MkvEvent::SegmentEnd => segment_ends += 1,
            MkvEvent::Tags(_) => panic!("the output carries a Tags element"),
            _ => {}
        }
        if let Some(cluster) = assembler.handle(&ev) {
            blocks += cluster.blocks.len();
            if let Some((min, max)) = cluster.block_time_range() {
                if let Some(prev) = last_max {
                    assert!(
                        min > prev,
                        "cluster at {} starts at {min}, not after {prev}",
                        cluster.timecode
                    );
                }
                last_max = Some(max);
            }
        }
    }
    assert_eq!(seen_headers, headers, "stream headers in the output");
    assert_eq!(segment_ends, headers - 1, "segments in the output");
    blocks
}

fn assert_clean(demuxed: &Demuxed) {
    assert!(
        demuxed.problems.is_empty(),
        "matroskademux reported: {:?}",
        demuxed.problems
    );
}

#[test]
fn capture_output_get_media_plays_as_one_stream() {
    let (out, dropped) = remux_whole(&capture("output_get_media.mkv"), true, BodyEnd::Complete);
    assert!(dropped.is_none());
    assert_eq!(out.headers, 1);
    assert_eq!(check_structure(&out.bytes, 1), 300);
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    assert_eq!(demuxed.pts.len(), 300);

    let numbers: Vec<_> = out
        .fragments
        .iter()
        .map(|f| f.fragment_number.clone().unwrap_or_default())
        .collect();
    assert_eq!(numbers.len(), 5);
    assert_eq!(
        numbers[0],
        "91343852333181432392682062607743920146159169392"
    );
    assert_eq!(
        numbers[4],
        "91343852333181432412489103236310005892133364608"
    );
    let first = &out.fragments[0];
    assert_eq!(first.server_timestamp_ms, Some(1_511_852_109_126));
    assert_eq!(first.producer_timestamp_ms, Some(1_511_852_108_513));
    assert_eq!(first.millis_behind_now, Some(15858));
    assert_eq!(
        first.continuation_token.as_deref(),
        Some(numbers[0].as_str())
    );
    assert_eq!(first.frames, 60);
    assert!(first.complete);
    // The source's timecodes (0, 2 s, 4 s, ...) are kept as they are: they increase.
    assert_eq!(out.fragments[2].first_timestamp_ns, Some(4_000_000_000));
    assert!(out.fragments.iter().all(|f| f.timeline_shift_ns == 0));
    // The file's own metadata tags are reported, not output.
    assert!(
        first
            .producer_tags
            .contains(&("MAJOR_BRAND".into(), "M4V ".into()))
    );
}

#[test]
fn capture_non_increasing_timecodes_become_monotonic() {
    let body = capture("output-get-media-non-increasing-timecode.mkv");

    // Read as a file: every frame, also those of the last fragment, which the capture cuts.
    let (out, _) = remux_whole(&body, true, BodyEnd::Flush);
    assert_eq!(out.fragments.len(), 12);
    assert!(!out.fragments[11].complete);
    assert_eq!(check_structure(&out.bytes, 1), 358);
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    assert_eq!(demuxed.pts.len(), 358);
    // The output starts at 0 with the first fragment (source timecode 10 014 ms).
    assert_eq!(out.fragments[0].first_timestamp_ns, Some(0));
    assert_eq!(out.fragments[0].timeline_shift_ns, -10_014_000_000);
    // The second fragment restarts its source timecodes at 0: it is moved to right after the first one's last
    // frame (968 ms into the output) by one frame (33 ms).
    assert_eq!(out.fragments[1].first_timestamp_ns, Some(1_001_000_000));
    assert_eq!(out.fragments[1].timeline_shift_ns, 1_001_000_000);
    assert_eq!(
        out.fragments[2].timeline_shift_ns, 1_001_000_000,
        "later fragments keep the shift"
    );
    let mut keyframe_pts: Vec<_> = demuxed.pts.chunks(30).map(|c| c[0]).collect();
    let sorted = {
        let mut s = keyframe_pts.clone();
        s.sort();
        s
    };
    assert_eq!(keyframe_pts, sorted, "fragments play in order");
    keyframe_pts.dedup();
    assert_eq!(keyframe_pts.len(), 12);

    // Read live: the cut fragment is dropped (to be read again whole), the others are all there.
    let (live, dropped) = remux_whole(&body, true, BodyEnd::Complete);
    assert_eq!(live.fragments.len(), 11);
    assert_eq!(check_structure(&live.bytes, 1), 330);
    let dropped = dropped.expect("the cut fragment is reported");
    assert_eq!(
        dropped.fragment_number.as_deref(),
        Some("91343852338381298630635340538417522006416018997")
    );
}

#[test]
fn capture_mixed_tags_reports_producer_tags() {
    let (out, _) = remux_whole(&capture("test_mixed_tags.mkv"), true, BodyEnd::Complete);
    assert_eq!(out.fragments.len(), 10);
    assert_eq!(check_structure(&out.bytes, 1), 100);
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    assert_eq!(demuxed.pts.len(), 100);
    for (i, fragment) in out.fragments.iter().enumerate() {
        assert_eq!(fragment.frames, 10);
        assert_eq!(fragment.producer_timestamp_ms, Some(5000 * i as u64));
        // Five producer tags before the header of the first fragment and after each cluster.
        let expected: Vec<_> = (0..5)
            .map(|t| (format!("testTag_{t}"), format!("testTag_{t}_Value")))
            .collect();
        if i == 0 {
            assert_eq!(fragment.producer_tags.len(), 10);
        }
        assert!(
            fragment.producer_tags.ends_with(&expected),
            "tags of fragment {i}: {:?}",
            fragment.producer_tags
        );
    }
}

#[test]
fn capture_empty_fragment_gives_a_header_and_a_record() {
    let body = capture("empty-mkv-with-tags.mkv");
    let (out, dropped) = remux_whole(&body, false, BodyEnd::Complete);
    assert!(dropped.is_none());
    assert_eq!(out.headers, 1);
    assert_eq!(out.fragments.len(), 1);
    let fragment = &out.fragments[0];
    assert_eq!(
        fragment.fragment_number.as_deref(),
        Some("91343852338378294813695855977007281634605393997")
    );
    assert_eq!(fragment.server_timestamp_ms, Some(1_516_124_526_822));
    assert_eq!(fragment.frames, 0);
    assert_eq!(fragment.bytes, 0);
    assert!(out.bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]));
    // matroskademux wants a Cluster before it calls a header complete: with no frame at all it fails the same
    // way on the raw capture and on the rewritten output.
    let demuxed = demux(&out.bytes);
    assert_eq!(demuxed.pts.len(), 0);
    let raw = demux(&body);
    assert_eq!(raw.pts.len(), 0);
    assert_eq!(demuxed.problems.len(), raw.problems.len());
}

/// Byte offset of the n-th EBML header (0-based) of a chain.
fn document_start(body: &[u8], n: usize) -> usize {
    let marker = [0x1A, 0x45, 0xDF, 0xA3];
    body.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .nth(n)
        .expect("document present")
}

#[test]
fn cut_fragment_is_dropped_and_read_again_whole() {
    let body = capture("output_get_media.mkv");
    let third = document_start(&body, 2);
    let mut remuxer = Remuxer::new(true);
    let mut out = Output::default();

    // The connection breaks in the middle of the third fragment.
    feed(&mut remuxer, &mut out, &body[..third + 200_000]);
    let dropped = remuxer.end_body(BodyEnd::Cut).expect("cut");
    out.drain(&mut remuxer);
    assert_eq!(out.fragments.len(), 2);
    assert_eq!(
        dropped.and_then(|d| d.fragment_number).as_deref(),
        Some("91343852333181432402585582922026963247510532162")
    );
    let token = remuxer.resume_token().expect("a token");
    assert_eq!(token, "91343852333181432397633822764885441725874549018");

    // The resumed request starts again one fragment early (the service may repeat one): no frame twice.
    feed(&mut remuxer, &mut out, &body[document_start(&body, 1)..]);
    remuxer.end_body(BodyEnd::Complete).expect("end");
    out.drain(&mut remuxer);
    assert_eq!(
        out.duplicates,
        vec!["91343852333181432397633822764885441725874549018".to_string()]
    );
    assert_eq!(out.fragments.len(), 5);
    assert_eq!(out.headers, 1);
    assert_eq!(check_structure(&out.bytes, 1), 300);
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    assert_eq!(demuxed.pts.len(), 300);
}

// ---- synthetic chains ----

struct Frag {
    seq: u64,
    scale: u64,
    codec: &'static str,
    width: u64,
    timecode: u64,
    /// (relative timecode, keyframe)
    blocks: Vec<(i16, bool)>,
}

fn frag(seq: u64, timecode: u64, blocks: &[i16]) -> Frag {
    Frag {
        seq,
        scale: 1_000_000,
        codec: "V_MJPEG",
        width: 16,
        timecode,
        blocks: blocks.iter().map(|&r| (r, r == blocks[0])).collect(),
    }
}

fn number(seq: u64) -> String {
    FragmentNumber::compose(seq, 1_700_000_000_000 + seq).to_string()
}

/// A GetMedia-style document for one fragment.
fn document(f: &Frag, trailer: bool) -> Vec<u8> {
    document_named(f, trailer, tags::SERVER_TIMESTAMP, tags::PRODUCER_TIMESTAMP)
}

/// Like [`document`], with the given names for the timestamp tags.
fn document_named(f: &Frag, trailer: bool, server_tag: &str, producer_tag: &str) -> Vec<u8> {
    let mut out = writer::ebml_header("matroska");
    out.extend(writer::segment_start_unknown());
    let mut info = Vec::new();
    ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, f.scale);
    ebml::write_str_element(&mut info, id::MUXING_APP, "test");
    ebml::write_float_element(&mut info, id::DURATION, 1000.0);
    ebml::write_master_element(&mut out, id::INFO, &info);
    let mut entry = Vec::new();
    ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_UID, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
    ebml::write_str_element(&mut entry, id::CODEC_ID, f.codec);
    let mut video = Vec::new();
    ebml::write_uint_element(&mut video, id::PIXEL_WIDTH, f.width);
    ebml::write_uint_element(&mut video, id::PIXEL_HEIGHT, 16);
    ebml::write_master_element(&mut entry, id::VIDEO, &video);
    let mut tracks = Vec::new();
    ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
    ebml::write_master_element(&mut out, id::TRACKS, &tracks);
    let n = number(f.seq);
    out.extend(writer::tags_element(&[
        (tags::FRAGMENT_NUMBER, &n),
        (server_tag, "1700000000.000"),
        (producer_tag, "1700000000.000"),
    ]));
    out.extend(writer::cluster_start(f.timecode));
    for &(rel, key) in &f.blocks {
        out.extend(writer::simple_block(
            1,
            rel,
            key,
            &[0xFF, 0xD8, rel as u8, 0xFF, 0xD9],
        ));
    }
    if trailer {
        out.extend(writer::tags_element(&[
            (tags::MILLIS_BEHIND_NOW, "12"),
            (tags::CONTINUATION_TOKEN, &n),
        ]));
    }
    out
}

#[test]
fn error_tags_become_a_service_error() {
    let mut body = document(&frag(1, 0, &[0, 40, 80]), true);
    body.extend(writer::ebml_header("matroska"));
    body.extend(writer::segment_start_unknown());
    body.extend(writer::tags_element(&[
        (tags::ERROR_CODE, "REQUESTED_FRAGMENT_NOT_FOUND"),
        (tags::ERROR_ID, "4000"),
    ]));
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    assert_eq!(out.fragments.len(), 1);
    assert_eq!(out.errors.len(), 1);
    let error = &out.errors[0];
    assert_eq!(error.id, Some(4000));
    assert_eq!(error.code.as_deref(), Some("REQUESTED_FRAGMENT_NOT_FOUND"));
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        format!(
            "the service ended the media with error 4000 REQUESTED_FRAGMENT_NOT_FOUND: requested fragment is not \
             found (after fragment {})",
            number(1)
        )
    );
}

#[test]
fn fragment_list_output_without_trailers_is_complete_at_each_new_document() {
    let mut body = Vec::new();
    for seq in 0..4 {
        body.extend(document(&frag(seq, seq * 120, &[0, 40, 80]), false));
    }
    let (out, dropped) = remux_whole(&body, false, BodyEnd::Complete);
    assert!(dropped.is_none());
    assert_eq!(out.fragments.len(), 4);
    assert!(
        out.fragments
            .iter()
            .all(|f| f.continuation_token.is_none() && f.millis_behind_now.is_none())
    );
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    let ms: Vec<u64> = demuxed.pts.iter().map(|t| t.mseconds()).collect();
    assert_eq!(
        ms,
        vec![0, 40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 440]
    );
}

#[test]
fn new_tracks_start_a_new_segment_on_the_same_timeline() {
    let mut body = document(&frag(1, 1000, &[0, 40, 80]), true);
    // The producer restarted with another picture size (and its timecodes from 0).
    let mut other = frag(2, 0, &[0, 40]);
    other.width = 32;
    body.extend(document(&other, true));
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    assert_eq!(out.headers, 2);
    assert_eq!(check_structure(&out.bytes, 2), 5);
    // The output starts at 0 (source 1000 ms); the second segment's clusters restart at 0 in the source and
    // continue after the first one's last frame (80 ms) in the output.
    assert_eq!(out.fragments[1].first_timestamp_ns, Some(120_000_000));
    // matroskademux follows the new segment (it accepts new Tracks with the same codecs): all five frames, on
    // one timeline.
    let demuxed = demux(&out.bytes);
    let ms: Vec<u64> = demuxed.pts.iter().map(|t| t.mseconds()).collect();
    assert_eq!(ms, vec![0, 40, 80, 120, 160], "{:?}", demuxed.problems);
}

#[test]
fn another_timecode_scale_is_converted_and_clusters_split() {
    // The output counts in milliseconds (first fragment); fragments 2 and 3 count in microseconds and are
    // converted (32.7 ms rounds to 33 ms); fragment 4 is in milliseconds again.
    let mut body = document(&frag(1, 0, &[0, 40, 80]), true);
    let mut micro = frag(2, 120_000, &[0, 20_000, 30_000]);
    micro.scale = 1_000;
    body.extend(document(&micro, true));
    let mut micro2 = frag(3, 200_000, &[0, 32_700]);
    micro2.scale = 1_000;
    body.extend(document(&micro2, true));
    body.extend(document(&frag(4, 300, &[0, 30_000]), true));
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    assert_eq!(out.headers, 1, "same tracks: one segment");
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    let ms: Vec<u64> = demuxed.pts.iter().map(|t| t.mseconds()).collect();
    assert_eq!(ms, vec![0, 40, 80, 120, 140, 150, 200, 233, 300, 30_300]);
}

#[test]
fn scale_conversion_splits_a_cluster_whose_offsets_overflow() {
    // Output in µs (first fragment), then a fragment in ms whose block 100 ms after the cluster start is
    // 100 000 µs: more than the 16-bit field holds.
    let mut first = frag(1, 0, &[0, 20_000]);
    first.scale = 1_000;
    let mut body = document(&first, true);
    body.extend(document(&frag(2, 40, &[0, 100, 200]), true));
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    assert_eq!(check_structure(&out.bytes, 1), 5);
    let demuxed = demux(&out.bytes);
    assert_clean(&demuxed);
    let ms: Vec<u64> = demuxed.pts.iter().map(|t| t.mseconds()).collect();
    assert_eq!(ms, vec![0, 20, 40, 140, 240]);
}

#[test]
fn oversized_fragment_is_an_error() {
    let mut remuxer = Remuxer::new(true);
    remuxer.max_fragment_bytes = 100;
    let body = document(&frag(1, 0, &[0; 40]), true);
    let err = remuxer.push(&body).expect_err("too large");
    assert!(
        err.to_string().contains("is larger than 100 bytes"),
        "{err}"
    );
}

#[test]
fn fragment_list_exception_tags_skip_one_fragment() {
    // The first requested fragment fails (bare Tags at the start of the body), then one is read, then another
    // fails between two documents.
    let failure = |seq: u64| {
        writer::tags_element(&[
            (tags::FRAGMENT_NUMBER, &number(seq)),
            (EXCEPTION_ERROR_CODE, "4000"),
            (EXCEPTION_MESSAGE, "fragment not found"),
        ])
    };
    let mut body = failure(1);
    body.extend(document(&frag(2, 0, &[0, 40]), false));
    body.extend(failure(3));
    body.extend(document(&frag(4, 80, &[0, 40]), false));
    let mut remuxer = Remuxer::new(false);
    let mut items = Vec::new();
    feed_items(&mut remuxer, &body, &mut items);
    remuxer.end_body(BodyEnd::Complete).expect("end");
    while let Some(item) = remuxer.pop() {
        items.push(item);
    }
    let summary: Vec<String> = items
        .iter()
        .map(|i| match i {
            RemuxItem::Header(_) => "header".to_string(),
            RemuxItem::Fragment { info, .. } => {
                format!("fragment {}", info.fragment_number.as_deref().unwrap_or(""))
            }
            RemuxItem::FragmentError(e) => {
                format!("error {}", e.fragment_number.as_deref().unwrap_or(""))
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            format!("error {}", number(1)),
            "header".to_string(),
            format!("fragment {}", number(2)),
            format!("error {}", number(3)),
            format!("fragment {}", number(4)),
        ]
    );
    let RemuxItem::FragmentError(e) = &items[0] else {
        unreachable!()
    };
    assert_eq!(
        e.to_string(),
        format!(
            "the service could not read fragment {} (error 4000: fragment not found)",
            number(1)
        )
    );
}

fn feed_items(remuxer: &mut Remuxer, body: &[u8], items: &mut Vec<RemuxItem>) {
    for piece in body.chunks(7) {
        remuxer.push(piece).expect("valid input");
        while let Some(item) = remuxer.pop() {
            items.push(item);
        }
    }
}

#[test]
fn service_timestamps_under_their_fragment_list_names_are_read() {
    let mut body = document(&frag(1, 0, &[0]), false);
    body.extend(document_named(
        &frag(2, 40, &[0]),
        false,
        SERVER_SIDE_TIMESTAMP,
        PRODUCER_SIDE_TIMESTAMP,
    ));
    let (out, _) = remux_whole(&body, false, BodyEnd::Complete);
    assert_eq!(out.fragments.len(), 2);
    assert_eq!(
        out.fragments[1].server_timestamp_ms,
        Some(1_700_000_000_000)
    );
    assert_eq!(
        out.fragments[1].producer_timestamp_ms,
        Some(1_700_000_000_000)
    );
    assert!(out.fragments[1].producer_tags.is_empty());
}

#[test]
fn error_tags_as_the_whole_body_become_a_service_error() {
    let body = writer::tags_element(&[
        (tags::ERROR_CODE, "KMS_ACCESS_DENIED"),
        (tags::ERROR_ID, "4500"),
    ]);
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    assert!(out.fragments.is_empty());
    assert_eq!(out.errors.len(), 1);
    assert!(out.errors[0].is_kms());
    assert_eq!(out.errors[0].id, Some(4500));
}

#[test]
fn extreme_timecode_scales_skip_the_fragment_not_panic() {
    // TimecodeScale comes from the stored media: any value up to u64::MAX must leave out, with an error naming it,
    // the fragment whose times are not valid timestamps (u64 nanoseconds), never overflow; the other fragment is
    // output. Per case: the two fragments' scales and timecodes, and which fragment is left out.
    let cases: [(u64, u64, u64, u64, u64); 4] = [
        (1, u64::MAX, u64::MAX, u64::MAX, 2),
        (u64::MAX, 0, 1, u64::MAX, 1),
        (u64::MAX, u64::MAX, 1, u64::MAX, 1),
        (1_000_000, 1 << 40, 7, 1 << 62, 2),
    ];
    for (scale1, tc1, scale2, tc2, failing) in cases {
        let mut first = frag(1, tc1, &[0, i16::MAX, i16::MIN]);
        first.scale = scale1;
        let mut second = frag(2, tc2, &[0, 1, i16::MAX]);
        second.scale = scale2;
        second.width = 32; // other tracks: a new segment that converts the timeline to its scale
        let mut body = document(&first, true);
        body.extend(document(&second, true));
        let case = format!("scales {scale1}/{scale2}");
        let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
        assert_eq!(out.unwritable.len(), 1, "{case}: {:?}", out.unwritable);
        let (fragment, error) = &out.unwritable[0];
        assert_eq!(
            fragment.as_deref(),
            Some(number(failing).as_str()),
            "{case}"
        );
        assert!(
            error.contains("out of range") && error.contains(&number(failing)),
            "{case}: {error}"
        );
        let output: Vec<_> = out
            .fragments
            .iter()
            .map(|f| f.fragment_number.clone())
            .collect();
        assert_eq!(output, vec![Some(number(3 - failing))], "{case}");
    }
}

#[test]
fn a_fragment_that_cannot_be_written_is_left_out_and_the_read_goes_on() {
    // The middle fragment's cluster is at u64::MAX ms, past any GStreamer timestamp: it is reported and left
    // out; the fragments on either side are output, in order, with time going forward.
    let mut body = document(&frag(1, 0, &[0, 40, 80]), true);
    body.extend(document(&frag(2, u64::MAX, &[0, 40]), true));
    body.extend(document(&frag(3, 120, &[0, 40, 80]), true));
    let (out, _) = remux_whole(&body, true, BodyEnd::Complete);
    let output: Vec<_> = out
        .fragments
        .iter()
        .map(|f| f.fragment_number.clone())
        .collect();
    assert_eq!(output, vec![Some(number(1)), Some(number(3))]);
    assert_eq!(
        out.unwritable
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        vec![Some(number(2))]
    );
    assert!(out.unwritable[0].1.contains("out of range"));
    assert_eq!(out.fragments.iter().map(|f| f.frames).sum::<u64>(), 6);
    let first = out.fragments[0].first_timestamp_ns.expect("first time");
    let third = out.fragments[1].first_timestamp_ns.expect("third time");
    assert!(third > first, "{first} then {third}");
    // matroskademux plays the output: six frames, time going forward, no complaint.
    assert_eq!(out.headers, 1);
    assert_eq!(check_structure(&out.bytes, 1), 6);
    let demuxed = demux(&out.bytes);
    assert!(demuxed.problems.is_empty(), "{:?}", demuxed.problems);
    assert_eq!(demuxed.pts.len(), 6, "{:?}", demuxed.pts);
    assert!(
        demuxed.pts.windows(2).all(|w| w[0] <= w[1]),
        "{:?}",
        demuxed.pts
    );
}

/// A small deterministic generator (xorshift64*), so that a failure names an input that can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_media_gives_errors_not_panics() {
    // Whatever a server or a network sends, the rewriter answers with output or an error: the captures and a
    // two-scale chain, each with bytes overwritten (runs of 0x00, 0xFF or noise, where sizes and integers live),
    // pushed in uneven pieces, then the body ends.
    let mut sources: Vec<Vec<u8>> = [
        "output_get_media.mkv",
        "output-get-media-non-increasing-timecode.mkv",
        "test_mixed_tags.mkv",
        "empty-mkv-with-tags.mkv",
    ]
    .iter()
    .map(|name| {
        let mut c = capture(name);
        c.truncate(48 * 1024);
        c
    })
    .collect();
    let mut micro = frag(2, 120_000, &[0, 20_000, -3_000]);
    micro.scale = 1_000;
    let mut chain = document(&frag(1, 0, &[0, 40, 80]), true);
    chain.extend(document(&micro, true));
    sources.push(chain);

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut runs, mut failed, mut output) = (0, 0, 0);
    for source in &sources {
        for _ in 0..1000 {
            let mut body = source.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body.len());
                let len = (1 + rng.below(8)).min(body.len() - at);
                let fill = rng.below(3);
                for b in &mut body[at..at + len] {
                    *b = match fill {
                        0 => 0x00,
                        1 => 0xFF,
                        _ => rng.next() as u8,
                    };
                }
            }
            let mut remuxer = Remuxer::new(rng.below(2) == 0);
            let mut pos = 0;
            let mut result = Ok(());
            while pos < body.len() && result.is_ok() {
                let end = (pos + 1 + rng.below(8192)).min(body.len());
                result = remuxer.push(&body[pos..end]);
                pos = end;
            }
            if result.is_ok() {
                result = remuxer.end_body(BodyEnd::Complete).map(|_| ());
            }
            while let Some(item) = remuxer.pop() {
                if matches!(item, RemuxItem::Fragment { .. }) {
                    output += 1;
                }
            }
            runs += 1;
            if let Err(e) = result {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Both paths were exercised: some mutated inputs are refused, most still give fragments.
    assert!(
        failed > 0 && output > 0,
        "{runs} runs, {failed} errors, {output} fragments"
    );
    println!("{runs} runs, {failed} errors, {output} fragments");
}
