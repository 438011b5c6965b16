//! The Matroska pieces a producer or a GetMedia server writes.

use crate::ebml::{self, id};

/// An EBML header for `doc_type` ("matroska" or "webm"), version 1, DocTypeVersion 2, like the service's.
pub fn ebml_header(doc_type: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(40);
    ebml::write_uint_element(&mut body, id::EBML_VERSION, 1);
    ebml::write_uint_element(&mut body, id::EBML_READ_VERSION, 1);
    ebml::write_uint_element(&mut body, id::EBML_MAX_ID_LENGTH, 4);
    ebml::write_uint_element(&mut body, id::EBML_MAX_SIZE_LENGTH, 8);
    ebml::write_str_element(&mut body, id::DOC_TYPE, doc_type);
    ebml::write_uint_element(&mut body, id::DOC_TYPE_VERSION, 2);
    ebml::write_uint_element(&mut body, id::DOC_TYPE_READ_VERSION, 2);
    let mut out = Vec::with_capacity(body.len() + 8);
    ebml::write_master_element(&mut out, id::EBML, &body);
    out
}

/// The start of a Segment of unknown size.
pub fn segment_start_unknown() -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    ebml::write_id(&mut out, id::SEGMENT);
    ebml::write_unknown_size(&mut out);
    out
}

/// The start of a Cluster of unknown size with its Timecode (8-byte value, as the service writes it).
pub fn cluster_start(timecode: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    ebml::write_id(&mut out, id::CLUSTER);
    ebml::write_unknown_size(&mut out);
    ebml::write_uint8_element(&mut out, id::TIMECODE, timecode);
    out
}

/// A Tags element holding one Tag with one SimpleTag (TagName + TagString) per pair, without Targets, byte for
/// byte the way the service writes its AWS_KINESISVIDEO_* tags (every size field 4 bytes wide).
pub fn tags_element(tags: &[(&str, &str)]) -> Vec<u8> {
    fn element(out: &mut Vec<u8>, id: u32, body: &[u8]) {
        ebml::write_id(out, id);
        ebml::write_size_width(out, body.len() as u64, 4);
        out.extend_from_slice(body);
    }
    let mut tag = Vec::new();
    for (name, value) in tags {
        let mut simple = Vec::with_capacity(name.len() + value.len() + 12);
        element(&mut simple, id::TAG_NAME, name.as_bytes());
        element(&mut simple, id::TAG_STRING, value.as_bytes());
        element(&mut tag, id::SIMPLE_TAG, &simple);
    }
    let mut tags_body = Vec::with_capacity(tag.len() + 8);
    element(&mut tags_body, id::TAG, &tag);
    let mut out = Vec::with_capacity(tags_body.len() + 8);
    element(&mut out, id::TAGS, &tags_body);
    out
}

/// A SimpleBlock element: track number, timecode relative to the cluster, key frame flag and the frame.
pub fn simple_block(track: u64, rel_timecode: i16, keyframe: bool, frame: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(frame.len() + 4);
    ebml::write_size(&mut body, track);
    body.extend_from_slice(&rel_timecode.to_be_bytes());
    body.push(if keyframe { 0x80 } else { 0x00 });
    body.extend_from_slice(frame);
    let mut out = Vec::with_capacity(body.len() + 12);
    ebml::write_binary_element(&mut out, id::SIMPLE_BLOCK, &body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AWS tags of the first fragment of testdata/getmedia/output_get_media.mkv (offsets 916..1159), as the
    /// service wrote them.
    #[test]
    fn tags_match_the_service_byte_for_byte() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/getmedia/output_get_media.mkv"
        );
        let data = std::fs::read(path)
            .unwrap_or_else(|e| panic!("this test needs the real GetMedia capture at {path}: {e}"));
        let ours = tags_element(&[
            (
                crate::tags::FRAGMENT_NUMBER,
                "91343852333181432392682062607743920146159169392",
            ),
            (crate::tags::SERVER_TIMESTAMP, "1511852109.126"),
            (crate::tags::PRODUCER_TIMESTAMP, "1511852108.513"),
        ]);
        assert_eq!(&data[916..1159], &ours[..]);
    }

    #[test]
    fn written_pieces_parse_back() {
        let mut stream = ebml_header("matroska");
        stream.extend(segment_start_unknown());
        let mut info = Vec::new();
        ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
        ebml::write_master_element(&mut stream, id::INFO, &info);
        let mut entry = Vec::new();
        ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
        ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
        ebml::write_str_element(&mut entry, id::CODEC_ID, "V_MPEG4/ISO/AVC");
        let mut tracks = Vec::new();
        ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
        ebml::write_master_element(&mut stream, id::TRACKS, &tracks);
        stream.extend(cluster_start(1_000));
        stream.extend(simple_block(1, 0, true, b"frame"));
        stream.extend(tags_element(&[(crate::tags::END_OF_FRAGMENT, "")]));
        let mut p = crate::stream::MkvStreamParser::default();
        p.push(&stream);
        let mut events = Vec::new();
        while let Some(ev) = p.next_event().unwrap() {
            events.push(ev);
        }
        assert!(p.finish().unwrap().is_none());
        use crate::stream::MkvEvent::*;
        assert!(matches!(&events[0], Header(h) if h.track_list[0].codec_id == "V_MPEG4/ISO/AVC"));
        assert!(matches!(
            &events[1],
            ClusterStart {
                timecode: 1_000,
                ..
            }
        ));
        assert!(
            matches!(&events[2], ClusterChild { block: Some(b), .. } if b.keyframe && b.payload_len == 5)
        );
        assert!(matches!(&events[3], ClusterEnd));
        assert!(matches!(&events[4], Tags(t) if t.contains(crate::tags::END_OF_FRAGMENT)));
        assert_eq!(events.len(), 5);
    }
}
