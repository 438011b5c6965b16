//! Names of the tags Kinesis Video Streams puts in its Matroska output, and the one a producer uses to close a
//! fragment. Producer tag names must not start with [`AWS_PREFIX`].

pub const AWS_PREFIX: &str = "AWS_";
pub const FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
pub const SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
pub const PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
/// GetMediaForFragmentList names its timestamp tags with `_SIDE_` (API reference, GetMediaForFragmentList).
pub const SERVER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP";
pub const PRODUCER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP";
pub const MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
pub const CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
/// GetMediaForFragmentList reports a fragment it cannot return with these instead of the error tags.
pub const EXCEPTION_ERROR_CODE: &str = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE";
pub const EXCEPTION_MESSAGE: &str = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE";
pub const ERROR_CODE: &str = "AWS_KINESISVIDEO_ERROR_CODE";
pub const ERROR_ID: &str = "AWS_KINESISVIDEO_ERROR_ID";
pub const END_OF_FRAGMENT: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";

/// Formats epoch milliseconds the way the service writes timestamps in tags: seconds with three decimals.
pub fn format_timestamp_ms(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Parses a tag timestamp (`"1511852109.126"`) into epoch milliseconds.
pub fn parse_timestamp_ms(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut ms = 0u64;
    for (i, c) in frac.chars().take(3).enumerate() {
        ms += u64::from(c.to_digit(10)?) * [100, 10, 1][i];
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_timestamp_ms(1_511_852_109_126), "1511852109.126");
        assert_eq!(format_timestamp_ms(1_000_005), "1000.005");
        assert_eq!(
            parse_timestamp_ms("1511852109.126"),
            Some(1_511_852_109_126)
        );
        assert_eq!(parse_timestamp_ms("1511852109.1"), Some(1_511_852_109_100));
        assert_eq!(parse_timestamp_ms("1511852109"), Some(1_511_852_109_000));
        assert_eq!(parse_timestamp_ms("15x.1"), None);
    }
}
