//! The Matroska the service sends back: per fragment a complete document (stream header, the AWS tags before the
//! cluster, the cluster as ingested with its producer tags, and for GetMedia the AWS tags after it).
//!
//! The AWS Tags are written exactly like the service's (kvs_mkv::writer::tags_element): no Targets, and every
//! size field 4 bytes wide (`0x10 xx xx xx`).

use bytes::Bytes;
use kvs_mkv::tags;

/// A Tags element with one Tag holding a SimpleTag (TagName, TagString) per pair, in the service's layout.
pub fn aws_tags(pairs: &[(&str, &str)]) -> Vec<u8> {
    kvs_mkv::writer::tags_element(pairs)
}

/// Identity and timestamps of a fragment as written in its tags.
#[derive(Debug, Clone)]
pub struct FragmentLabel<'a> {
    pub number: &'a str,
    pub server_ts_ms: u64,
    pub producer_ts_ms: u64,
}

pub use kvs_mkv::tags::{
    EXCEPTION_ERROR_CODE, EXCEPTION_MESSAGE, PRODUCER_SIDE_TIMESTAMP, SERVER_SIDE_TIMESTAMP,
};

/// Which API a document is for: the tags differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// GetMedia: SERVER_/PRODUCER_TIMESTAMP before the cluster, MILLIS_BEHIND_NOW and CONTINUATION_TOKEN after it.
    GetMedia { behind_ms: u64 },
    /// GetMediaForFragmentList: SERVER_SIDE_/PRODUCER_SIDE_TIMESTAMP and nothing after the cluster.
    FragmentList,
}

/// The pieces of one fragment's document, in order, to send as they are (no copy of the media).
pub fn fragment_document(
    header: &Bytes,
    label: &FragmentLabel<'_>,
    data: &Bytes,
    kind: DocumentKind,
) -> Vec<Bytes> {
    let server = tags::format_timestamp_ms(label.server_ts_ms);
    let producer = tags::format_timestamp_ms(label.producer_ts_ms);
    let (server_tag, producer_tag) = match kind {
        DocumentKind::GetMedia { .. } => (tags::SERVER_TIMESTAMP, tags::PRODUCER_TIMESTAMP),
        DocumentKind::FragmentList => (SERVER_SIDE_TIMESTAMP, PRODUCER_SIDE_TIMESTAMP),
    };
    let mut pieces = vec![
        header.clone(),
        Bytes::from(aws_tags(&[
            (tags::FRAGMENT_NUMBER, label.number),
            (server_tag, &server),
            (producer_tag, &producer),
        ])),
        data.clone(),
    ];
    if let DocumentKind::GetMedia { behind_ms } = kind {
        let behind = behind_ms.to_string();
        pieces.push(Bytes::from(aws_tags(&[
            (tags::MILLIS_BEHIND_NOW, &behind),
            (tags::CONTINUATION_TOKEN, label.number),
        ])));
    }
    pieces
}

/// The Tags GetMediaForFragmentList sends when it cannot read a fragment.
pub fn fragment_list_error(number: &str, code: u32, message: &str) -> Bytes {
    let code = code.to_string();
    Bytes::from(aws_tags(&[
        (tags::FRAGMENT_NUMBER, number),
        (EXCEPTION_ERROR_CODE, &code),
        (EXCEPTION_MESSAGE, message),
    ]))
}

/// GetMedia error ids (seed 003).
pub const ERROR_FRAGMENT_NOT_FOUND: u32 = 4000;
pub const ERROR_INTERNAL: u32 = 5000;

/// The document GetMedia ends with when it cannot go on: an EBML header, a Segment and a Tags element with
/// `AWS_KINESISVIDEO_ERROR_CODE` (a description) and `AWS_KINESISVIDEO_ERROR_ID`, so that readers that split the
/// body at EBML headers see it as one more document.
pub fn error_document(description: &str, error_id: u32) -> Bytes {
    let id_text = error_id.to_string();
    let mut out = kvs_mkv::writer::ebml_header("matroska");
    out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
    out.extend_from_slice(&aws_tags(&[
        (tags::ERROR_CODE, description),
        (tags::ERROR_ID, &id_text),
    ]));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_match_the_service_bytes() {
        let t = aws_tags(&[("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "15858")]);
        // Tags (4-byte id + 4-byte size), Tag, SimpleTag, TagName, TagString all with 4-byte sizes.
        assert_eq!(
            &t[..8],
            &[
                0x12,
                0x54,
                0xC3,
                0x67,
                0x10,
                0x00,
                0x00,
                (t.len() - 8) as u8
            ]
        );
        assert_eq!(
            &t[8..14],
            &[0x73, 0x73, 0x10, 0x00, 0x00, (t.len() - 14) as u8]
        );
        assert_eq!(&t[14..16], &[0x67, 0xC8]);
        assert_eq!(&t[20..26], &[0x45, 0xA3, 0x10, 0x00, 0x00, 34]);
        assert!(t.ends_with(b"\x44\x87\x10\x00\x00\x0515858"));
    }
}
