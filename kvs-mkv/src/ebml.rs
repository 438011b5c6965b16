//! EBML primitives: element IDs, variable-length integers, element headers, value readers and writers.
//!
//! Everything here works on byte slices and never allocates more than the caller asks for, so a hostile length
//! field can only produce an error, never a huge allocation.

use crate::MkvError;

/// Matroska element IDs used by Kinesis Video Streams producers and readers (IDs keep their length marker bits).
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const VOID: u32 = 0xEC;
    pub const CRC32: u32 = 0xBF;

    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const INFO: u32 = 0x1549_A966;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const TAGS: u32 = 0x1254_C367;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const ATTACHMENTS: u32 = 0x1941_A469;

    pub const SEGMENT_UID: u32 = 0x73A4;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const DURATION: u32 = 0x4489;
    pub const DATE_UTC: u32 = 0x4461;
    pub const TITLE: u32 = 0x7BA9;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;

    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const NAME: u32 = 0x536E;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const DEFAULT_DURATION: u32 = 0x23_E383;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const BIT_DEPTH: u32 = 0x6264;

    pub const TIMECODE: u32 = 0xE7;
    pub const POSITION: u32 = 0xA7;
    pub const PREV_SIZE: u32 = 0xAB;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const BLOCK_DURATION: u32 = 0x9B;
    pub const REFERENCE_BLOCK: u32 = 0xFB;

    pub const TAG: u32 = 0x7373;
    pub const TARGETS: u32 = 0x63C0;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_LANGUAGE: u32 = 0x447A;
    pub const TAG_DEFAULT: u32 = 0x4484;
    pub const TAG_STRING: u32 = 0x4487;
    pub const TAG_BINARY: u32 = 0x4485;
}

/// The 8-byte "unknown size" marker used for live Segments and Clusters.
pub const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// An element's ID and size, as read from the start of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementHeader {
    pub id: u32,
    /// `None` for the reserved all-ones "unknown size" value.
    pub size: Option<u64>,
    /// Bytes taken by the ID and the size fields.
    pub header_len: usize,
}

impl ElementHeader {
    /// Total length of the element (header and body), when its size is known.
    pub fn total_len(&self) -> Option<u64> {
        self.size.map(|s| s + self.header_len as u64)
    }
}

/// Reads an element ID (1-4 bytes, marker bits kept). `Ok(None)` means more bytes are needed.
pub fn read_id(buf: &[u8]) -> Result<Option<(u32, usize)>, MkvError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Err(MkvError::invalid(format!(
            "invalid element ID lead byte 0x{first:02X}"
        )));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let id = buf[..len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    Ok(Some((id, len)))
}

/// Reads an element data size (1-8 bytes). `Ok(None)` means more bytes are needed; a size of `None` is "unknown".
#[allow(clippy::type_complexity)]
pub fn read_size(buf: &[u8]) -> Result<Option<(Option<u64>, usize)>, MkvError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == 0 {
        return Err(MkvError::invalid(
            "invalid element size: first byte is 0x00",
        ));
    }
    let len = first.leading_zeros() as usize + 1;
    if buf.len() < len {
        return Ok(None);
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut value = u64::from(first & mask);
    let mut all_ones = (first & mask) == mask;
    for &b in &buf[1..len] {
        value = (value << 8) | u64::from(b);
        all_ones &= b == 0xFF;
    }
    Ok(Some((if all_ones { None } else { Some(value) }, len)))
}

/// Reads an element header (ID + size). `Ok(None)` means more bytes are needed.
pub fn read_element_header(buf: &[u8]) -> Result<Option<ElementHeader>, MkvError> {
    let Some((id, id_len)) = read_id(buf)? else {
        return Ok(None);
    };
    let Some((size, size_len)) = read_size(&buf[id_len..])? else {
        return Ok(None);
    };
    Ok(Some(ElementHeader {
        id,
        size,
        header_len: id_len + size_len,
    }))
}

/// Reads an unsigned integer element body (0-8 bytes, big endian).
pub fn read_uint(data: &[u8]) -> Result<u64, MkvError> {
    if data.len() > 8 {
        return Err(MkvError::invalid(format!(
            "unsigned integer of {} bytes",
            data.len()
        )));
    }
    Ok(data.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Reads a float element body (0, 4 or 8 bytes).
pub fn read_float(data: &[u8]) -> Result<f64, MkvError> {
    match data.len() {
        0 => Ok(0.0),
        4 => Ok(f64::from(f32::from_be_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(data);
            Ok(f64::from_be_bytes(b))
        }
        n => Err(MkvError::invalid(format!("float of {n} bytes"))),
    }
}

/// Reads a string element body; trailing NUL padding is removed and invalid UTF-8 is replaced.
pub fn read_str(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Iterates over the children of a master element body whose children all have known sizes.
pub fn children(body: &[u8]) -> Children<'_> {
    Children { rest: body }
}

/// Iterator returned by [`children`].
pub struct Children<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(ElementHeader, &'a [u8]), MkvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = (|| {
            let header = read_element_header(self.rest)?
                .ok_or_else(|| MkvError::invalid("truncated child element header"))?;
            let size = header.size.ok_or_else(|| {
                MkvError::invalid(format!("child element 0x{:X} has unknown size", header.id))
            })?;
            let end = (header.header_len as u64)
                .checked_add(size)
                .filter(|&end| end <= self.rest.len() as u64)
                .ok_or_else(|| {
                    MkvError::invalid(format!(
                        "child element 0x{:X} of {size} bytes overruns its parent",
                        header.id
                    ))
                })? as usize;
            let body = &self.rest[header.header_len..end];
            self.rest = &self.rest[end..];
            Ok((header, body))
        })();
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

/// Writes an element ID.
pub fn write_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    out.extend_from_slice(&bytes[skip..]);
}

/// Writes a data size in the shortest form (never the reserved all-ones value).
pub fn write_size(out: &mut Vec<u8>, size: u64) {
    let mut len = 1;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Writes a data size in exactly `width` bytes (1-8), as some writers do to keep element sizes patchable.
/// Falls back to the shortest form when `size` does not fit in `width` bytes.
pub fn write_size_width(out: &mut Vec<u8>, size: u64, width: usize) {
    let width = width.clamp(1, 8);
    if size >= (1u64 << (7 * width)) - 1 {
        write_size(out, size);
        return;
    }
    let marked = size | (1u64 << (7 * width));
    out.extend_from_slice(&marked.to_be_bytes()[8 - width..]);
}

/// Writes the 8-byte unknown size.
pub fn write_unknown_size(out: &mut Vec<u8>) {
    out.extend_from_slice(&UNKNOWN_SIZE);
}

/// Writes an unsigned integer element in the fewest bytes (at least one).
pub fn write_uint_element(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    write_binary_element(out, id, &bytes[skip..]);
}

/// Writes an unsigned integer element with a fixed 8-byte body, as the service does for cluster timecodes.
pub fn write_uint8_element(out: &mut Vec<u8>, id: u32, value: u64) {
    write_binary_element(out, id, &value.to_be_bytes());
}

/// Writes a string element.
pub fn write_str_element(out: &mut Vec<u8>, id: u32, value: &str) {
    write_binary_element(out, id, value.as_bytes());
}

/// Writes a binary element.
pub fn write_binary_element(out: &mut Vec<u8>, id: u32, value: &[u8]) {
    write_id(out, id);
    write_size(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Writes an 8-byte float element.
pub fn write_float_element(out: &mut Vec<u8>, id: u32, value: f64) {
    write_binary_element(out, id, &value.to_be_bytes());
}

/// Writes a master element around an already-serialised body.
pub fn write_master_element(out: &mut Vec<u8>, id: u32, body: &[u8]) {
    write_binary_element(out, id, body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_trip_at_every_length_boundary() {
        for size in [0u64, 1, 126, 127, 128, 16382, 16383, 16384, (1 << 56) - 2] {
            let mut out = Vec::new();
            write_size(&mut out, size);
            let (read, len) = read_size(&out).unwrap().unwrap();
            assert_eq!(read, Some(size), "size {size} encoded as {out:02X?}");
            assert_eq!(len, out.len());
        }
        let mut out = Vec::new();
        write_size_width(&mut out, 35, 4);
        assert_eq!(out, [0x10, 0x00, 0x00, 0x23]);
        assert_eq!(read_size(&out).unwrap(), Some((Some(35), 4)));
        // 127 in one byte would be the reserved all-ones value, so it takes two.
        let mut out = Vec::new();
        write_size(&mut out, 127);
        assert_eq!(out, [0x40, 0x7F]);
    }

    #[test]
    fn unknown_size_is_recognised_in_any_length() {
        assert_eq!(read_size(&UNKNOWN_SIZE).unwrap(), Some((None, 8)));
        assert_eq!(read_size(&[0xFF]).unwrap(), Some((None, 1)));
        assert_eq!(read_size(&[0x7F, 0xFF]).unwrap(), Some((None, 2)));
    }

    #[test]
    fn ids_keep_their_marker_bits() {
        for id in [
            id::EBML,
            id::CLUSTER,
            id::TIMECODE_SCALE,
            id::TAG_NAME,
            id::SIMPLE_BLOCK,
        ] {
            let mut out = Vec::new();
            write_id(&mut out, id);
            assert_eq!(read_id(&out).unwrap(), Some((id, out.len())));
        }
    }

    #[test]
    fn partial_input_asks_for_more_and_bad_input_errors() {
        assert_eq!(read_element_header(&[0x1A, 0x45]).unwrap(), None);
        assert_eq!(
            read_element_header(&[0x1A, 0x45, 0xDF, 0xA3]).unwrap(),
            None
        );
        assert!(read_id(&[0x00, 0x01]).is_err());
        assert!(read_size(&[0x00]).is_err());
        assert!(read_uint(&[0; 9]).is_err());
    }

    #[test]
    fn children_reject_overruns() {
        let mut body = Vec::new();
        write_uint_element(&mut body, id::TRACK_NUMBER, 1);
        write_str_element(&mut body, id::CODEC_ID, "V_MPEG4/ISO/AVC");
        let kids: Vec<_> = children(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(kids.len(), 2);
        assert_eq!(read_str(kids[1].1), "V_MPEG4/ISO/AVC");
        body.truncate(body.len() - 1);
        assert!(children(&body).any(|c| c.is_err()));
    }
}
