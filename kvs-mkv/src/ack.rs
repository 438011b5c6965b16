//! PutMedia acknowledgements: the JSON events the service streams back on the PutMedia response, one per line,
//! and a parser that takes them from a byte stream cut at arbitrary places.

use serde::{Deserialize, Serialize};

/// Kind of a PutMedia acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AckEventType {
    Buffering,
    Received,
    Persisted,
    Error,
    Idle,
}

impl AckEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            AckEventType::Buffering => "BUFFERING",
            AckEventType::Received => "RECEIVED",
            AckEventType::Persisted => "PERSISTED",
            AckEventType::Error => "ERROR",
            AckEventType::Idle => "IDLE",
        }
    }
}

/// One PutMedia acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "EventType")]
    pub event_type: AckEventType,
    #[serde(
        rename = "FragmentTimecode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fragment_timecode: Option<u64>,
    #[serde(
        rename = "FragmentNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fragment_number: Option<String>,
    #[serde(rename = "ErrorId", default, skip_serializing_if = "Option::is_none")]
    pub error_id: Option<u32>,
    #[serde(rename = "ErrorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl Ack {
    /// An acknowledgement for a fragment.
    pub fn fragment(
        event_type: AckEventType,
        timecode: u64,
        fragment_number: Option<String>,
    ) -> Ack {
        Ack {
            event_type,
            fragment_timecode: Some(timecode),
            fragment_number,
            error_id: None,
            error_code: None,
        }
    }

    /// An ERROR acknowledgement.
    pub fn error(id: AckErrorId, timecode: Option<u64>, fragment_number: Option<String>) -> Ack {
        Ack {
            event_type: AckEventType::Error,
            fragment_timecode: timecode,
            fragment_number,
            error_id: Some(id.id()),
            error_code: Some(id.name().to_owned()),
        }
    }

    /// The IDLE acknowledgement.
    pub fn idle() -> Ack {
        Ack {
            event_type: AckEventType::Idle,
            fragment_timecode: None,
            fragment_number: None,
            error_id: None,
            error_code: None,
        }
    }

    /// The acknowledgement as one line of JSON, newline included, as the service sends it.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// What a producer should do about an ERROR acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckErrorClass {
    /// Transient on the service's side: reconnect and send the fragment again.
    Retry,
    /// The fragment itself is bad: drop it and go on with the next.
    SkipFragment,
    /// The session cannot go on as configured (stream gone, permissions, tracks): stop and report.
    Fatal,
    /// The session hit its maximum duration: open a new one and continue.
    Rotate,
}

macro_rules! ack_error_ids {
    ($($name:ident = $id:literal, $class:ident;)*) => {
        /// The error ids of ERROR acknowledgements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum AckErrorId {
            $($name,)*
        }

        impl AckErrorId {
            pub fn id(self) -> u32 {
                match self { $(AckErrorId::$name => $id,)* }
            }

            pub fn name(self) -> &'static str {
                match self { $(AckErrorId::$name => stringify!($name),)* }
            }

            pub fn class(self) -> AckErrorClass {
                match self { $(AckErrorId::$name => AckErrorClass::$class,)* }
            }

            pub fn from_id(id: u32) -> Option<AckErrorId> {
                match id { $($id => Some(AckErrorId::$name),)* _ => None }
            }
        }
    };
}

ack_error_ids! {
    STREAM_READ_ERROR = 4000, Retry;
    MAX_FRAGMENT_SIZE_REACHED = 4001, SkipFragment;
    MAX_FRAGMENT_DURATION_REACHED = 4002, SkipFragment;
    MAX_CONNECTION_DURATION_REACHED = 4003, Rotate;
    FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = 4004, SkipFragment;
    MORE_THAN_ALLOWED_TRACKS_FOUND = 4005, Fatal;
    INVALID_MKV_DATA = 4006, SkipFragment;
    INVALID_PRODUCER_TIMESTAMP = 4007, SkipFragment;
    STREAM_NOT_ACTIVE = 4008, Fatal;
    FRAGMENT_METADATA_LIMIT_REACHED = 4009, SkipFragment;
    TRACK_NUMBER_MISMATCH = 4010, Fatal;
    FRAMES_MISSING_FOR_TRACK = 4011, SkipFragment;
    INVALID_FRAGMENT_METADATA = 4012, SkipFragment;
    KMS_KEY_ACCESS_DENIED = 4500, Fatal;
    KMS_KEY_DISABLED = 4501, Fatal;
    KMS_KEY_VALIDATION_ERROR = 4502, Fatal;
    KMS_KEY_UNAVAILABLE = 4503, Retry;
    KMS_KEY_INVALID_USAGE = 4504, Fatal;
    KMS_KEY_INVALID_STATE = 4505, Fatal;
    KMS_KEY_NOT_FOUND = 4506, Fatal;
    INTERNAL_ERROR = 5000, Retry;
    ARCHIVAL_ERROR = 5001, Retry;
}

/// Why an acknowledgement line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckParseError {
    #[error("acknowledgement is not valid JSON ({reason}): {line}")]
    Json { line: String, reason: String },
    #[error("acknowledgement line longer than {0} bytes")]
    TooLong(usize),
}

/// Longest acknowledgement line accepted; real ones are under 300 bytes.
pub const MAX_ACK_LINE: usize = 64 * 1024;

/// Splits a byte stream into acknowledgements. The service separates them with newlines but reads may cut a line
/// anywhere or carry several; objects written back to back without a newline are accepted too.
#[derive(Debug, Default)]
pub struct AckParser {
    /// Bytes of the value being received; it starts at `buf[0]` (leading whitespace is dropped).
    buf: Vec<u8>,
    /// How far `buf` was scanned, and the scanner's state there: a value arriving in many small reads is scanned
    /// once, not once per read.
    scan: Scan,
}

#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    pos: usize,
    depth: usize,
    in_str: bool,
    esc: bool,
}

impl AckParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the acknowledgements (or per-line errors) completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<Result<Ack, AckParseError>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.scan.pos == 0 {
                let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
                match start {
                    Some(start) => {
                        self.buf.drain(..start);
                    }
                    None => {
                        self.buf.clear();
                        break;
                    }
                }
            }
            let Some(end) = self.value_end() else {
                if self.buf.len() > MAX_ACK_LINE {
                    self.buf.clear();
                    self.scan = Scan::default();
                    out.push(Err(AckParseError::TooLong(MAX_ACK_LINE)));
                }
                break;
            };
            let line = &self.buf[..end];
            out.push(
                serde_json::from_slice::<Ack>(line).map_err(|e| AckParseError::Json {
                    line: String::from_utf8_lossy(line).chars().take(200).collect(),
                    reason: e.to_string(),
                }),
            );
            self.buf.drain(..end);
            self.scan = Scan::default();
        }
        out
    }

    /// Bytes held that do not yet form an acknowledgement.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Length of the value at the start of `buf` once it is complete: an object by brace matching (strings and
    /// escapes respected), anything else up to the next newline. Continues from where the last call stopped.
    fn value_end(&mut self) -> Option<usize> {
        let s = &mut self.scan;
        if self.buf.first() != Some(&b'{') {
            // Not an object: the line is the value (and fails to parse as an acknowledgement).
            let from = s.pos;
            return match self.buf[from..].iter().position(|&b| b == b'\n') {
                Some(i) => Some(from + i),
                None => {
                    s.pos = self.buf.len();
                    None
                }
            };
        }
        for (i, &b) in self.buf.iter().enumerate().skip(s.pos) {
            if s.in_str {
                match b {
                    _ if s.esc => s.esc = false,
                    b'\\' => s.esc = true,
                    b'"' => s.in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => s.in_str = true,
                b'{' => s.depth += 1,
                b'}' => {
                    s.depth -= 1;
                    if s.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        s.pos = self.buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = concat!(
        "{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1795268509622,\"FragmentNumber\":\"913438523331814323926820626000000000000000000001\"}\n",
        "{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":1795268509622,\"FragmentNumber\":\"913438523331814323926820626000000000000000000001\"}\n",
        "{\"EventType\":\"IDLE\"}\n",
        "{\"EventType\":\"ERROR\",\"FragmentTimecode\":5,\"ErrorId\":4004,\"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\"}\n",
    );

    #[test]
    fn acks_parse_whatever_the_read_boundaries() {
        let whole: Vec<_> = AckParser::new()
            .push(LINES.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].event_type, AckEventType::Buffering);
        assert_eq!(whole[1].fragment_timecode, Some(1_795_268_509_622));
        assert_eq!(whole[2], Ack::idle());
        assert_eq!(
            whole[3].error_id.and_then(AckErrorId::from_id),
            Some(AckErrorId::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS)
        );
        for step in 1..LINES.len() {
            let mut p = AckParser::new();
            let mut got = Vec::new();
            for chunk in LINES.as_bytes().chunks(step) {
                got.extend(p.push(chunk).into_iter().map(Result::unwrap));
            }
            assert_eq!(got, whole, "chunks of {step} bytes");
            assert_eq!(p.pending(), 0);
        }
    }

    #[test]
    fn bad_lines_are_errors_and_parsing_goes_on() {
        let mut p = AckParser::new();
        let got =
            p.push(b"{\"EventType\":\"NOPE\"}\n{\"EventType\":\"IDLE\"}{\"EventType\":\"IDLE\"}\n");
        assert!(matches!(got[0], Err(AckParseError::Json { .. })));
        assert_eq!(got[1], Ok(Ack::idle()));
        assert_eq!(got[2], Ok(Ack::idle()));
        let long = vec![b'{'; MAX_ACK_LINE + 10];
        assert_eq!(
            p.push(&long),
            vec![Err(AckParseError::TooLong(MAX_ACK_LINE))]
        );
    }

    #[test]
    fn a_long_line_trickling_in_is_scanned_once() {
        // A 60 KB value delivered one byte per read: with a rescan per read this took seconds of CPU.
        let mut line = String::from("{\"EventType\":\"IDLE\",\"Pad\":\"");
        line.push_str(&"x".repeat(60_000));
        line.push_str("\"}\n");
        let mut p = AckParser::new();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        for b in line.as_bytes() {
            got.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(got, vec![Ok(Ack::idle())]);
        assert_eq!(p.pending(), 0);
        // Linear work is a few milliseconds even unoptimised; the quadratic scan took over two seconds.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn error_acks_serialise_like_the_service() {
        let ack = Ack::error(AckErrorId::INVALID_MKV_DATA, Some(12), None);
        assert_eq!(
            ack.to_line(),
            "{\"EventType\":\"ERROR\",\"FragmentTimecode\":12,\"ErrorId\":4006,\"ErrorCode\":\"INVALID_MKV_DATA\"}\n"
        );
        assert_eq!(
            AckErrorId::from_id(4003).map(AckErrorId::class),
            Some(AckErrorClass::Rotate)
        );
    }
}
