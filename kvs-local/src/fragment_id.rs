//! Fragment numbers: building them with `kvs_mkv::fragment_number::FragmentNumber::compose` and reading the
//! ingestion sequence number back out of one, which kvs-mkv does not offer (continuation tokens and
//! AfterFragmentNumber name a fragment by its number; the index is keyed by sequence number).

use kvs_mkv::fragment_number::FragmentNumber;

/// The number of the fragment with this sequence number and server timestamp.
pub fn fragment_number(seq: u64, server_ts_ms: u64) -> String {
    FragmentNumber::compose(seq, server_ts_ms)
        .as_str()
        .to_owned()
}

/// The sequence number and server timestamp inside a fragment number of the service's shape
/// (`((2^64 + seq) << 92) | (ts << 28) | low`), or `None` when the string is not one.
pub fn decode(number: &str) -> Option<(u64, u64)> {
    if number.is_empty() || number.len() > 60 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Little-endian base-2^32 limbs.
    let mut limbs: Vec<u32> = vec![0];
    for digit in number.bytes() {
        let mut carry = u64::from(digit - b'0');
        for limb in limbs.iter_mut() {
            let v = u64::from(*limb) * 10 + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let bit =
        |i: usize| -> u64 { u64::from(limbs.get(i / 32).copied().unwrap_or(0) >> (i % 32) & 1) };
    let field = |from: usize, width: usize| -> u64 {
        (0..width).fold(0u64, |acc, k| acc | (bit(from + k) << k))
    };
    // Bit 156 is the 2^64 marker; nothing may lie above it.
    if bit(156) != 1 || limbs.len() * 32 > 157 && (157..limbs.len() * 32).any(|i| bit(i) == 1) {
        return None;
    }
    let seq = field(92, 64);
    let ts = field(28, 64);
    Some((seq, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_compose() {
        for (seq, ts) in [
            (0, 0),
            (1, 1_795_268_464_239),
            (123_456, 1_600_000_000_000),
            (u32::MAX as u64, 7),
        ] {
            let n = fragment_number(seq, ts);
            assert_eq!(decode(&n), Some((seq, ts)), "{n}");
        }
    }

    #[test]
    fn decode_rejects_other_strings() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("12x"), None);
        assert_eq!(decode("12345"), None);
        // A real number issued by the service decodes to a plausible timestamp (2017-11-28).
        let (_, ts) = decode("91343852333181432392682062607743920146159169392").unwrap();
        assert_eq!(ts / 1000 / 86400, 1_511_852_109 / 86400);
    }
}
