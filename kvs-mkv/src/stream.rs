//! Incremental parsing of a live Matroska byte stream: a PutMedia body (one Segment of unknown size holding
//! Clusters and Tags) or a GetMedia body (a chain of complete Matroska documents, one per fragment).
//!
//! Bytes are pushed as they arrive, in pieces of any size; events come out as soon as the bytes for them are
//! complete. Cluster children are reported one by one so that a sender can forward a frame before its cluster is
//! finished. Elements that must be held whole are bounded by [`Limits`], so a hostile stream ends in an error
//! instead of unbounded memory.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::MkvError;
use crate::ebml::{self, ElementHeader, id};

/// Bounds on what the parser holds in memory at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest element that is buffered whole: a block, a block group, a Tags element.
    pub max_element_size: u64,
    /// Largest EBML header, Info or Tracks element.
    pub max_header_element_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_element_size: 64 * 1024 * 1024,
            max_header_element_size: 4 * 1024 * 1024,
        }
    }
}

/// One track of the stream, from its TrackEntry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrackInfo {
    pub number: u64,
    pub uid: u64,
    /// 1 video, 2 audio, 17 subtitle, ...
    pub track_type: u64,
    pub codec_id: String,
    pub codec_private: Option<Bytes>,
    pub name: Option<String>,
    pub pixel_width: Option<u64>,
    pub pixel_height: Option<u64>,
    pub sampling_frequency: Option<f64>,
    pub channels: Option<u64>,
    pub default_duration: Option<u64>,
}

/// The stream header: everything a reader needs before the first cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentHeader {
    /// EBML header + Segment start (always written with unknown size) + Info + Tracks, ready to send.
    pub raw: Bytes,
    /// The EBML header element.
    pub ebml: Bytes,
    /// The Info element.
    pub info: Bytes,
    /// The Tracks element.
    pub tracks: Bytes,
    pub doc_type: String,
    /// Nanoseconds per timecode unit (1 000 000 when absent).
    pub timecode_scale: u64,
    pub track_list: Vec<TrackInfo>,
}

impl SegmentHeader {
    /// The track with this number.
    pub fn track(&self, number: u64) -> Option<&TrackInfo> {
        self.track_list.iter().find(|t| t.number == number)
    }
}

/// What a block inside a cluster says about its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub track: u64,
    /// Timecode relative to the cluster's, in timecode units.
    pub rel_timecode: i16,
    pub keyframe: bool,
    /// Bytes of frame data (after the block header).
    pub payload_len: usize,
    /// BlockDuration, when the block sits in a BlockGroup that has one.
    pub duration: Option<u64>,
}

/// A simple tag (name and value) of a Tags element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTag {
    pub name: String,
    pub value: TagValue,
}

/// The value of a simple tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    String(String),
    Binary(Bytes),
    None,
}

impl TagValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            TagValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A top-level Tags element.
#[derive(Debug, Clone, PartialEq)]
pub struct TagsElement {
    pub raw: Bytes,
    pub tags: Vec<SimpleTag>,
}

impl TagsElement {
    /// The string value of the first simple tag with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.value.as_str())
    }

    /// Whether a simple tag with this name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tags.iter().any(|t| t.name == name)
    }
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq)]
pub enum MkvEvent {
    /// A stream header is complete (EBML header, Segment, Info, Tracks).
    Header(SegmentHeader),
    /// A cluster began and its Timecode is known; `raw_header` holds its bytes so far (ID, size, Timecode and any
    /// element before the Timecode).
    ClusterStart { timecode: u64, raw_header: Bytes },
    /// A complete child element of the current cluster.
    ClusterChild {
        raw: Bytes,
        block: Option<BlockInfo>,
    },
    /// The current cluster is complete.
    ClusterEnd,
    /// A top-level Tags element.
    Tags(TagsElement),
    /// The current Segment ended (its known size was reached, or a new EBML document began).
    SegmentEnd,
}

#[derive(Debug)]
enum State {
    /// Expecting an EBML header (start of a document).
    Document,
    /// After the EBML header, expecting the Segment.
    SegmentStart { ebml: Bytes, doc_type: String },
    /// Inside a Segment.
    Segment,
    /// Inside a Cluster. `end` is the absolute end offset for a known-size cluster.
    Cluster {
        end: Option<u64>,
        timecode: Option<u64>,
        raw_header: BytesMut,
    },
    /// Discarding the body of an element nobody needs, then back to the state kept in `resume`.
    Skip { remaining: u64 },
}

#[derive(Debug, Default)]
struct HeaderParts {
    ebml: Bytes,
    doc_type: String,
    info: Option<Bytes>,
    tracks: Option<Bytes>,
    emitted: bool,
}

/// Incremental Matroska stream parser. See the module documentation.
#[derive(Debug)]
pub struct MkvStreamParser {
    buf: BytesMut,
    /// Absolute stream offset of `buf[0]`.
    pos: u64,
    state: State,
    /// State to return to after a `Skip`.
    resume: Option<Box<State>>,
    /// Absolute end offset of the current Segment when its size is known.
    segment_end: Option<u64>,
    header: HeaderParts,
    pending: VecDeque<MkvEvent>,
    limits: Limits,
}

impl Default for MkvStreamParser {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl MkvStreamParser {
    pub fn new(limits: Limits) -> Self {
        MkvStreamParser {
            buf: BytesMut::new(),
            pos: 0,
            state: State::Document,
            resume: None,
            segment_end: None,
            header: HeaderParts::default(),
            pending: VecDeque::new(),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes consumed so far (the absolute offset of the first unparsed byte).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes received but not yet turned into events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the parser is inside a cluster.
    pub fn in_cluster(&self) -> bool {
        matches!(self.state, State::Cluster { .. })
            || matches!(self.resume.as_deref(), Some(State::Cluster { .. }))
    }

    /// The header of the current document, once complete.
    pub fn header_complete(&self) -> bool {
        self.header.emitted
    }

    /// The next event, or `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<MkvEvent>, MkvError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if !self.step()? {
                return Ok(self.pending.pop_front());
            }
        }
    }

    /// Ends the input: closes an open unknown-size cluster. Bytes left over that do not form a complete element are
    /// an error (a truncated stream), reported after the events that are complete.
    pub fn finish(&mut self) -> Result<Option<MkvEvent>, MkvError> {
        if let Some(ev) = self.next_event()? {
            return Ok(Some(ev));
        }
        let in_cluster = self.in_cluster();
        if in_cluster && self.buf.is_empty() {
            if let State::Cluster { end: Some(end), .. } = self.state
                && end > self.pos
            {
                return Err(MkvError::Truncated(format!(
                    "stream ended {} bytes before the end of its cluster",
                    end - self.pos
                )));
            }
            if let State::Cluster { timecode: None, .. } = self.state {
                return Err(MkvError::invalid(
                    "stream ended inside a cluster that has no Timecode",
                ));
            }
            self.state = State::Segment;
            self.resume = None;
            return Ok(Some(MkvEvent::ClusterEnd));
        }
        if !self.buf.is_empty() {
            return Err(MkvError::Truncated(format!(
                "stream ended inside an element ({} bytes left at offset {})",
                self.buf.len(),
                self.pos
            )));
        }
        if let State::Skip { remaining } = self.state {
            return Err(MkvError::Truncated(format!(
                "stream ended {remaining} bytes before the end of a skipped element"
            )));
        }
        Ok(None)
    }

    fn take(&mut self, len: usize) -> Bytes {
        self.pos += len as u64;
        self.buf.split_to(len).freeze()
    }

    /// Reads the next element header, `None` when more bytes are needed.
    fn peek_header(&self) -> Result<Option<ElementHeader>, MkvError> {
        ebml::read_element_header(&self.buf)
    }

    /// Takes a whole element of known size when all its bytes are here.
    fn take_whole(
        &mut self,
        header: &ElementHeader,
        limit: u64,
        what: &str,
    ) -> Result<Option<Bytes>, MkvError> {
        let size = header.size.ok_or_else(|| {
            MkvError::invalid(format!("{what} (0x{:X}) has unknown size", header.id))
        })?;
        if size > limit {
            return Err(MkvError::TooLarge(format!(
                "{what} (0x{:X}) of {size} bytes exceeds {limit}",
                header.id
            )));
        }
        let total = header.header_len + size as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.take(total)))
    }

    /// One parsing step; false when more input is needed.
    fn step(&mut self) -> Result<bool, MkvError> {
        match &mut self.state {
            State::Skip { remaining } => {
                let n = (*remaining).min(self.buf.len() as u64) as usize;
                if n == 0 && *remaining > 0 {
                    return Ok(false);
                }
                *remaining -= n as u64;
                let done = *remaining == 0;
                let _ = self.take(n);
                if done {
                    self.state = self.resume.take().map(|s| *s).unwrap_or(State::Segment);
                }
                Ok(true)
            }
            State::Document => self.step_document(),
            State::SegmentStart { .. } => self.step_segment_start(),
            State::Segment => self.step_segment(),
            State::Cluster { .. } => self.step_cluster(),
        }
    }

    fn step_document(&mut self) -> Result<bool, MkvError> {
        let Some(h) = self.peek_header()? else {
            return Ok(false);
        };
        match h.id {
            id::EBML => {
                let Some(raw) =
                    self.take_whole(&h, self.limits.max_header_element_size, "EBML header")?
                else {
                    return Ok(false);
                };
                let mut doc_type = String::from("matroska");
                for child in ebml::children(&raw[h.header_len..]) {
                    let (ch, body) = child?;
                    if ch.id == id::DOC_TYPE {
                        doc_type = ebml::read_str(body);
                    }
                }
                if doc_type != "matroska" && doc_type != "webm" {
                    return Err(MkvError::invalid(format!(
                        "DocType '{doc_type}' is not matroska or webm"
                    )));
                }
                self.state = State::SegmentStart {
                    ebml: raw,
                    doc_type,
                };
                Ok(true)
            }
            id::VOID | id::CRC32 => self.skip(&h, State::Document),
            other => Err(MkvError::invalid(format!(
                "expected an EBML header at offset {}, found element 0x{other:X}",
                self.pos
            ))),
        }
    }

    fn step_segment_start(&mut self) -> Result<bool, MkvError> {
        let Some(h) = self.peek_header()? else {
            return Ok(false);
        };
        match h.id {
            id::SEGMENT => {
                let State::SegmentStart { ebml, doc_type } =
                    std::mem::replace(&mut self.state, State::Segment)
                else {
                    unreachable!("state checked by the caller");
                };
                let _ = self.take(h.header_len);
                self.segment_end = h.size.map(|s| self.pos + s);
                self.header = HeaderParts {
                    ebml,
                    doc_type,
                    ..Default::default()
                };
                Ok(true)
            }
            id::VOID | id::CRC32 => {
                let resume = std::mem::replace(&mut self.state, State::Document);
                self.skip(&h, resume)
            }
            other => Err(MkvError::invalid(format!(
                "expected a Segment after the EBML header at offset {}, found element 0x{other:X}",
                self.pos
            ))),
        }
    }

    fn end_segment_if_reached(&mut self) -> bool {
        if let Some(end) = self.segment_end
            && self.pos >= end
        {
            self.segment_end = None;
            self.state = State::Document;
            self.pending.push_back(MkvEvent::SegmentEnd);
            return true;
        }
        false
    }

    fn step_segment(&mut self) -> Result<bool, MkvError> {
        if self.end_segment_if_reached() {
            return Ok(true);
        }
        let Some(h) = self.peek_header()? else {
            return Ok(false);
        };
        if let (Some(end), Some(total)) = (self.segment_end, h.total_len())
            && self.pos + total > end
        {
            return Err(MkvError::invalid(format!(
                "element 0x{:X} at offset {} overruns its Segment",
                h.id, self.pos
            )));
        }
        match h.id {
            id::EBML => {
                // A new document in a chain: the current (unknown-size) Segment is over.
                self.segment_end = None;
                self.state = State::Document;
                self.pending.push_back(MkvEvent::SegmentEnd);
                Ok(true)
            }
            id::INFO | id::TRACKS => {
                let Some(raw) =
                    self.take_whole(&h, self.limits.max_header_element_size, "Info/Tracks")?
                else {
                    return Ok(false);
                };
                if h.id == id::INFO {
                    self.header.info = Some(raw);
                } else {
                    self.header.tracks = Some(raw);
                }
                Ok(true)
            }
            id::CLUSTER => {
                self.emit_header()?;
                let _ = self.take(h.header_len);
                let raw_header = BytesMut::from(&self.buf_prefix_of_cluster(&h)[..]);
                self.state = State::Cluster {
                    end: h.size.map(|s| self.pos + s),
                    timecode: None,
                    raw_header,
                };
                Ok(true)
            }
            id::TAGS => {
                let Some(raw) = self.take_whole(&h, self.limits.max_element_size, "Tags")? else {
                    return Ok(false);
                };
                self.emit_header_if_ready();
                let tags = parse_tags(&raw[h.header_len..])?;
                self.pending
                    .push_back(MkvEvent::Tags(TagsElement { raw, tags }));
                Ok(true)
            }
            id::SEGMENT => Err(MkvError::invalid(format!(
                "a Segment inside a Segment at offset {}",
                self.pos
            ))),
            _ => {
                if h.size.is_none() {
                    return Err(MkvError::invalid(format!(
                        "element 0x{:X} at offset {} has unknown size",
                        h.id, self.pos
                    )));
                }
                // SeekHead, Cues, Void, Chapters, Attachments and unknown elements are not needed: skip them.
                self.skip(&h, State::Segment)
            }
        }
    }

    /// The cluster's own ID and size, rebuilt for `raw_header` (the header bytes were already consumed).
    fn buf_prefix_of_cluster(&self, h: &ElementHeader) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        ebml::write_id(&mut out, id::CLUSTER);
        match h.size {
            Some(size) => {
                // Keep the size field's original width so that the raw cluster is byte-identical.
                let width = h.header_len - 4;
                let marked = size | (1u64 << (7 * width));
                out.extend_from_slice(&marked.to_be_bytes()[8 - width..]);
            }
            None => {
                let width = h.header_len - 4;
                out.push(0xFFu8 >> (width - 1));
                out.extend(std::iter::repeat_n(0xFF, width - 1));
            }
        }
        out
    }

    fn step_cluster(&mut self) -> Result<bool, MkvError> {
        let State::Cluster { end, timecode, .. } = &self.state else {
            unreachable!("state checked by the caller");
        };
        let (end, has_timecode) = (*end, timecode.is_some());
        if let Some(end) = end
            && self.pos >= end
        {
            return self.close_cluster();
        }
        let Some(h) = self.peek_header()? else {
            return Ok(false);
        };
        let is_child = matches!(
            h.id,
            id::TIMECODE
                | id::SIMPLE_BLOCK
                | id::BLOCK_GROUP
                | id::POSITION
                | id::PREV_SIZE
                | id::VOID
                | id::CRC32
                | 0x5854 // SilentTracks
                | 0xAF // EncryptedBlock
        );
        if !is_child {
            if end.is_some() {
                return Err(MkvError::invalid(format!(
                    "element 0x{:X} at offset {} inside a Cluster",
                    h.id, self.pos
                )));
            }
            // An unknown-size cluster ends where a top-level element begins.
            return self.close_cluster();
        }
        if let (Some(end), Some(total)) = (end, h.total_len())
            && self.pos + total > end
        {
            return Err(MkvError::invalid(format!(
                "element 0x{:X} at offset {} overruns its Cluster",
                h.id, self.pos
            )));
        }
        let Some(raw) = self.take_whole(&h, self.limits.max_element_size, "cluster child")? else {
            return Ok(false);
        };
        let body = &raw[h.header_len..];
        let State::Cluster {
            timecode,
            raw_header,
            ..
        } = &mut self.state
        else {
            unreachable!("state checked above");
        };
        match h.id {
            id::TIMECODE if !has_timecode => {
                let tc = ebml::read_uint(body)?;
                *timecode = Some(tc);
                raw_header.extend_from_slice(&raw);
                let raw_header = std::mem::take(raw_header).freeze();
                self.pending.push_back(MkvEvent::ClusterStart {
                    timecode: tc,
                    raw_header,
                });
            }
            id::TIMECODE => return Err(MkvError::invalid("a Cluster with two Timecodes")),
            id::SIMPLE_BLOCK | id::BLOCK_GROUP if !has_timecode => {
                return Err(MkvError::invalid("a block before the Cluster's Timecode"));
            }
            _ if !has_timecode => raw_header.extend_from_slice(&raw),
            id::SIMPLE_BLOCK => {
                let block = parse_block_header(body, true)?;
                self.pending.push_back(MkvEvent::ClusterChild {
                    raw,
                    block: Some(block),
                });
            }
            id::BLOCK_GROUP => {
                let block = parse_block_group(body)?;
                self.pending.push_back(MkvEvent::ClusterChild {
                    raw,
                    block: Some(block),
                });
            }
            _ => self
                .pending
                .push_back(MkvEvent::ClusterChild { raw, block: None }),
        }
        Ok(true)
    }

    fn close_cluster(&mut self) -> Result<bool, MkvError> {
        if let State::Cluster { timecode: None, .. } = self.state {
            return Err(MkvError::invalid("a Cluster without a Timecode"));
        }
        self.state = State::Segment;
        self.pending.push_back(MkvEvent::ClusterEnd);
        Ok(true)
    }

    fn skip(&mut self, h: &ElementHeader, resume: State) -> Result<bool, MkvError> {
        let size = h
            .size
            .ok_or_else(|| MkvError::invalid(format!("element 0x{:X} has unknown size", h.id)))?;
        let _ = self.take(h.header_len);
        self.state = State::Skip { remaining: size };
        self.resume = Some(Box::new(resume));
        Ok(true)
    }

    fn emit_header_if_ready(&mut self) {
        if !self.header.emitted && self.header.info.is_some() && self.header.tracks.is_some() {
            // Ignore the error: Tags before Tracks are simply reported without a header.
            let _ = self.emit_header();
        }
    }

    fn emit_header(&mut self) -> Result<(), MkvError> {
        if self.header.emitted {
            return Ok(());
        }
        let tracks = self
            .header
            .tracks
            .clone()
            .ok_or_else(|| MkvError::invalid("a Cluster before the Tracks element"))?;
        let info = self.header.info.clone().unwrap_or_else(|| {
            let mut out = Vec::new();
            ebml::write_master_element(&mut out, id::INFO, &[]);
            Bytes::from(out)
        });
        let timecode_scale = parse_timecode_scale(&info)?;
        let track_list = parse_tracks(&tracks)?;
        let mut raw = Vec::with_capacity(self.header.ebml.len() + 12 + info.len() + tracks.len());
        raw.extend_from_slice(&self.header.ebml);
        ebml::write_id(&mut raw, id::SEGMENT);
        ebml::write_unknown_size(&mut raw);
        raw.extend_from_slice(&info);
        raw.extend_from_slice(&tracks);
        self.header.emitted = true;
        self.pending.push_back(MkvEvent::Header(SegmentHeader {
            raw: Bytes::from(raw),
            ebml: self.header.ebml.clone(),
            info,
            tracks,
            doc_type: self.header.doc_type.clone(),
            timecode_scale,
            track_list,
        }));
        Ok(())
    }
}

fn element_body(raw: &[u8]) -> Result<&[u8], MkvError> {
    let h =
        ebml::read_element_header(raw)?.ok_or_else(|| MkvError::invalid("truncated element"))?;
    Ok(&raw[h.header_len..])
}

fn parse_timecode_scale(info: &[u8]) -> Result<u64, MkvError> {
    for child in ebml::children(element_body(info)?) {
        let (h, body) = child?;
        if h.id == id::TIMECODE_SCALE {
            let scale = ebml::read_uint(body)?;
            if scale == 0 {
                return Err(MkvError::invalid("TimecodeScale is 0"));
            }
            return Ok(scale);
        }
    }
    Ok(1_000_000)
}

/// Parses the TrackEntry elements of a Tracks element.
pub fn parse_tracks(tracks: &[u8]) -> Result<Vec<TrackInfo>, MkvError> {
    let mut out = Vec::new();
    for entry in ebml::children(element_body(tracks)?) {
        let (h, body) = entry?;
        if h.id != id::TRACK_ENTRY {
            continue;
        }
        let mut t = TrackInfo::default();
        for child in ebml::children(body) {
            let (ch, b) = child?;
            match ch.id {
                id::TRACK_NUMBER => t.number = ebml::read_uint(b)?,
                id::TRACK_UID => t.uid = ebml::read_uint(b)?,
                id::TRACK_TYPE => t.track_type = ebml::read_uint(b)?,
                id::CODEC_ID => t.codec_id = ebml::read_str(b),
                id::CODEC_PRIVATE => t.codec_private = Some(Bytes::copy_from_slice(b)),
                id::NAME => t.name = Some(ebml::read_str(b)),
                id::DEFAULT_DURATION => t.default_duration = Some(ebml::read_uint(b)?),
                id::VIDEO => {
                    for v in ebml::children(b) {
                        let (vh, vb) = v?;
                        match vh.id {
                            id::PIXEL_WIDTH => t.pixel_width = Some(ebml::read_uint(vb)?),
                            id::PIXEL_HEIGHT => t.pixel_height = Some(ebml::read_uint(vb)?),
                            _ => {}
                        }
                    }
                }
                id::AUDIO => {
                    for a in ebml::children(b) {
                        let (ah, ab) = a?;
                        match ah.id {
                            id::SAMPLING_FREQUENCY => {
                                t.sampling_frequency = Some(ebml::read_float(ab)?)
                            }
                            id::CHANNELS => t.channels = Some(ebml::read_uint(ab)?),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if t.number == 0 {
            return Err(MkvError::invalid("a TrackEntry without a TrackNumber"));
        }
        out.push(t);
    }
    Ok(out)
}

/// Parses the simple tags of a Tags element body (nested simple tags are flattened).
pub fn parse_tags(body: &[u8]) -> Result<Vec<SimpleTag>, MkvError> {
    fn simple(body: &[u8], out: &mut Vec<SimpleTag>) -> Result<(), MkvError> {
        let mut name = None;
        let mut value = TagValue::None;
        let mut nested = Vec::new();
        for child in ebml::children(body) {
            let (h, b) = child?;
            match h.id {
                id::TAG_NAME => name = Some(ebml::read_str(b)),
                id::TAG_STRING => value = TagValue::String(ebml::read_str(b)),
                id::TAG_BINARY => value = TagValue::Binary(Bytes::copy_from_slice(b)),
                id::SIMPLE_TAG => nested.push(b),
                _ => {}
            }
        }
        if let Some(name) = name {
            out.push(SimpleTag { name, value });
        }
        for b in nested {
            simple(b, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    for tag in ebml::children(body) {
        let (h, b) = tag?;
        if h.id != id::TAG {
            continue;
        }
        for child in ebml::children(b) {
            let (ch, cb) = child?;
            if ch.id == id::SIMPLE_TAG {
                simple(cb, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Parses the header of a (Simple)Block body: track number, relative timecode, flags.
pub fn parse_block_header(body: &[u8], simple: bool) -> Result<BlockInfo, MkvError> {
    let (track, len) = ebml::read_size(body)?
        .ok_or_else(|| MkvError::invalid("truncated block header"))
        .and_then(|(t, l)| {
            Ok((
                t.ok_or_else(|| MkvError::invalid("block with a reserved track number"))?,
                l,
            ))
        })?;
    if body.len() < len + 3 {
        return Err(MkvError::invalid("truncated block header"));
    }
    let rel_timecode = i16::from_be_bytes([body[len], body[len + 1]]);
    let flags = body[len + 2];
    Ok(BlockInfo {
        track,
        rel_timecode,
        keyframe: simple && flags & 0x80 != 0,
        payload_len: body.len() - len - 3,
        duration: None,
    })
}

fn parse_block_group(body: &[u8]) -> Result<BlockInfo, MkvError> {
    let mut block = None;
    let mut referenced = false;
    let mut duration = None;
    for child in ebml::children(body) {
        let (h, b) = child?;
        match h.id {
            id::BLOCK => block = Some(parse_block_header(b, false)?),
            id::REFERENCE_BLOCK => referenced = true,
            id::BLOCK_DURATION => duration = Some(ebml::read_uint(b)?),
            _ => {}
        }
    }
    let mut block = block.ok_or_else(|| MkvError::invalid("a BlockGroup without a Block"))?;
    block.keyframe = !referenced;
    block.duration = duration;
    Ok(block)
}

/// A complete cluster, as assembled by [`ClusterAssembler`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The cluster's bytes as received.
    pub raw: Bytes,
    pub timecode: u64,
    pub blocks: Vec<BlockInfo>,
}

impl Cluster {
    /// Whether the cluster's first block is a key frame.
    pub fn starts_with_keyframe(&self) -> bool {
        self.blocks.first().is_some_and(|b| b.keyframe)
    }

    /// Smallest and largest absolute block timecode, in timecode units.
    pub fn block_time_range(&self) -> Option<(i64, i64)> {
        let base = self.timecode as i64;
        let times = self.blocks.iter().map(|b| base + i64::from(b.rel_timecode));
        let min = times.clone().min()?;
        let max = times.max()?;
        Some((min, max))
    }
}

/// Turns the cluster events of [`MkvStreamParser`] into whole [`Cluster`] values.
#[derive(Debug, Default)]
pub struct ClusterAssembler {
    current: Option<(BytesMut, u64, Vec<BlockInfo>)>,
}

impl ClusterAssembler {
    /// Feeds one event; returns the cluster when the event completes one.
    pub fn handle(&mut self, event: &MkvEvent) -> Option<Cluster> {
        match event {
            MkvEvent::ClusterStart {
                timecode,
                raw_header,
            } => {
                self.current = Some((BytesMut::from(&raw_header[..]), *timecode, Vec::new()));
                None
            }
            MkvEvent::ClusterChild { raw, block } => {
                if let Some((buf, _, blocks)) = &mut self.current {
                    buf.extend_from_slice(raw);
                    blocks.extend(block.iter().copied());
                }
                None
            }
            MkvEvent::ClusterEnd => self.current.take().map(|(raw, timecode, blocks)| Cluster {
                raw: raw.freeze(),
                timecode,
                blocks,
            }),
            _ => None,
        }
    }

    /// Bytes of the cluster being assembled, if any.
    pub fn pending_len(&self) -> usize {
        self.current.as_ref().map_or(0, |(b, _, _)| b.len())
    }

    /// Drops a partly assembled cluster.
    pub fn discard(&mut self) {
        self.current = None;
    }
}
