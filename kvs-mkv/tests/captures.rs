//! The stream parser on real traffic: GetMedia output captured from the service and PutMedia bodies of the
//! official C++ producer (both in ../shared/testdata).

use std::path::PathBuf;

use kvs_mkv::stream::{ClusterAssembler, MkvEvent, MkvStreamParser};
use kvs_mkv::tags;

fn testdata(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "this test reads the shared capture {} ({e}); check out ../shared beside the project",
            path.display()
        )
    })
}

#[derive(Debug, Default, PartialEq)]
struct Summary {
    headers: usize,
    clusters: usize,
    blocks: usize,
    keyframe_first: usize,
    fragment_numbers: Vec<String>,
    continuation_tokens: Vec<String>,
    end_of_fragment_tags: usize,
    segment_ends: usize,
    /// Blocks seen, including those of a cluster cut off by the end of the input.
    blocks_seen: usize,
    /// The error that ended the input, if it did not end cleanly.
    end_error: Option<String>,
}

fn summarise(data: &[u8], chunk: usize) -> Summary {
    let mut p = MkvStreamParser::default();
    let mut asm = ClusterAssembler::default();
    let mut s = Summary::default();
    let mut handle = |ev: MkvEvent, s: &mut Summary| {
        if let Some(c) = asm.handle(&ev) {
            s.clusters += 1;
            s.blocks += c.blocks.len();
            s.keyframe_first += usize::from(c.starts_with_keyframe());
        }
        match ev {
            MkvEvent::ClusterChild { block: Some(_), .. } => s.blocks_seen += 1,
            MkvEvent::Header(_) => s.headers += 1,
            MkvEvent::Tags(t) => {
                if let Some(n) = t.get(tags::FRAGMENT_NUMBER) {
                    s.fragment_numbers.push(n.to_owned());
                }
                if let Some(n) = t.get(tags::CONTINUATION_TOKEN) {
                    s.continuation_tokens.push(n.to_owned());
                }
                s.end_of_fragment_tags += usize::from(t.contains(tags::END_OF_FRAGMENT));
            }
            MkvEvent::SegmentEnd => s.segment_ends += 1,
            _ => {}
        }
    };
    for piece in data.chunks(chunk) {
        p.push(piece);
        while let Some(ev) = p.next_event().expect("capture parses") {
            handle(ev, &mut s);
        }
    }
    loop {
        match p.finish() {
            Ok(Some(ev)) => handle(ev, &mut s),
            Ok(None) => break,
            Err(e) => {
                s.end_error = Some(e.to_string());
                break;
            }
        }
    }
    s
}

#[test]
fn getmedia_capture_gives_five_fragments_of_tagged_clusters() {
    let data = testdata("getmedia/output_get_media.mkv");
    let s = summarise(&data, data.len());
    assert_eq!(s.headers, 5);
    assert_eq!(s.clusters, 5);
    assert_eq!(s.blocks, 300, "300 video frames per the capture's README");
    assert_eq!(s.keyframe_first, 5);
    assert_eq!(s.end_error, None);
    assert_eq!(s.fragment_numbers.len(), 5);
    assert_eq!(
        s.fragment_numbers, s.continuation_tokens,
        "the token names the fragment it follows"
    );
    for step in [1, 7, 4096, 65_537] {
        assert_eq!(
            summarise(&data, step),
            s,
            "pushed in pieces of {step} bytes"
        );
    }
}

#[test]
fn every_getmedia_capture_parses() {
    // (file, complete clusters, frames, whether the capture stops inside its last cluster)
    for (file, clusters, frames, cut) in [
        (
            "getmedia/output-get-media-non-increasing-timecode.mkv",
            11,
            358,
            true,
        ),
        ("getmedia/test_mixed_tags.mkv", 10, 100, false),
        ("getmedia/empty-mkv-with-tags.mkv", 0, 0, false),
    ] {
        let data = testdata(file);
        let s = summarise(&data, 1000);
        assert_eq!((s.clusters, s.blocks_seen), (clusters, frames), "{file}");
        assert_eq!(s.end_error.is_some(), cut, "{file}: {:?}", s.end_error);
    }
}

#[test]
fn cpp_producer_put_media_bodies_parse_into_their_fragments() {
    for (dir, fragments) in [
        ("video-h264-create", 13),
        ("video-h264-tags", 3),
        ("audio-video", 5),
    ] {
        let data = testdata(&format!("cpp-producer/{dir}/004-putMedia.body"));
        let s = summarise(&data, 3000);
        assert_eq!(s.headers, 1, "{dir}");
        assert_eq!(s.clusters, fragments, "{dir}");
        assert_eq!(s.keyframe_first, fragments, "{dir}");
        assert_eq!(
            s.end_of_fragment_tags, 1,
            "{dir}: the producer closes with the end-of-fragment tag"
        );
    }
}

#[test]
fn garbage_and_truncation_are_errors_not_panics() {
    let data = testdata("cpp-producer/audio-video/004-putMedia.body");
    // Truncated in the middle of a block.
    let mut p = MkvStreamParser::default();
    p.push(&data[..5000]);
    while p.next_event().expect("prefix parses").is_some() {}
    let mut tail = Vec::new();
    loop {
        match p.finish() {
            Ok(Some(ev)) => tail.push(ev),
            Ok(None) => panic!("a truncated stream must not end cleanly"),
            Err(e) => {
                assert!(e.to_string().contains("truncated"), "{e}");
                break;
            }
        }
    }
    // Random bytes.
    let mut p = MkvStreamParser::default();
    p.push(b"\x00\x01garbage that is not matroska");
    assert!(p.next_event().is_err());
    // A block whose size claims 2^50 bytes.
    let mut bad = data[..341].to_vec();
    bad.extend_from_slice(&[
        0x1F, 0x43, 0xB6, 0x75, 0xFF, 0xE7, 0x81, 0x00, 0xA3, 0x01, 0x04, 0, 0, 0, 0, 0, 0,
    ]);
    let mut p = MkvStreamParser::default();
    p.push(&bad);
    let err = loop {
        match p.next_event() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an oversized block must be refused"),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("too large"), "{err}");
}
