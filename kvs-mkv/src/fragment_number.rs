//! Fragment numbers: opaque 47-digit decimal strings that increase with ingestion order.
//!
//! The service's numbers have the shape `((2^64 + seq) << 92) | (server_ts_ms << 28) | low 28 bits`, about 157
//! bits: more than `u128` holds. They are kept as strings of equal length, so comparing them as strings orders
//! them as the big integers they are; numbers of other lengths compare by length first.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A fragment number. Ordering is numeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FragmentNumber(String);

/// Digits in the fragment numbers the service issues.
pub const DIGITS: usize = 47;

impl FragmentNumber {
    /// Builds a number in the service's shape from an ingestion sequence number and a server timestamp.
    pub fn compose(seq: u64, server_ts_ms: u64) -> FragmentNumber {
        // Big-integer arithmetic on base-10^9 limbs: value = ((2^64 + seq) << 92) | (ts << 28).
        let mut limbs = vec![0u32]; // little endian, base 1e9
        let mul_small = |limbs: &mut Vec<u32>, m: u32| {
            let mut carry = 0u64;
            for l in limbs.iter_mut() {
                let v = u64::from(*l) * u64::from(m) + carry;
                *l = (v % 1_000_000_000) as u32;
                carry = v / 1_000_000_000;
            }
            while carry > 0 {
                limbs.push((carry % 1_000_000_000) as u32);
                carry /= 1_000_000_000;
            }
        };
        let add_u64 = |limbs: &mut Vec<u32>, a: u64| {
            let mut carry = a;
            let mut i = 0;
            while carry > 0 {
                if i == limbs.len() {
                    limbs.push(0);
                }
                let v = u64::from(limbs[i]) + carry % 1_000_000_000;
                limbs[i] = (v % 1_000_000_000) as u32;
                carry = carry / 1_000_000_000 + v / 1_000_000_000;
                i += 1;
            }
        };
        // 2^64 + seq, as 2^32 * 2^32 + seq.
        add_u64(&mut limbs, 1);
        mul_small(&mut limbs, 1 << 16);
        mul_small(&mut limbs, 1 << 16);
        mul_small(&mut limbs, 1 << 16);
        mul_small(&mut limbs, 1 << 16);
        add_u64(&mut limbs, seq);
        // << 64, then + (ts mod 2^64 fits), then << 28.
        for _ in 0..4 {
            mul_small(&mut limbs, 1 << 16);
        }
        add_u64(&mut limbs, server_ts_ms);
        for _ in 0..7 {
            mul_small(&mut limbs, 1 << 4);
        }
        let mut s = String::new();
        for (i, l) in limbs.iter().rev().enumerate() {
            if i == 0 {
                s.push_str(&l.to_string());
            } else {
                s.push_str(&format!("{l:09}"));
            }
        }
        FragmentNumber(format!("{s:0>DIGITS$}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a fragment number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a fragment number (1-{DIGITS} decimal digits)")]
pub struct InvalidFragmentNumber(pub String);

impl FromStr for FragmentNumber {
    type Err = InvalidFragmentNumber;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidFragmentNumber(s.chars().take(64).collect()));
        }
        Ok(FragmentNumber(s.to_owned()))
    }
}

impl TryFrom<String> for FragmentNumber {
    type Error = InvalidFragmentNumber;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<FragmentNumber> for String {
    fn from(f: FragmentNumber) -> String {
        f.0
    }
}

impl fmt::Display for FragmentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for FragmentNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.0.trim_start_matches('0');
        let b = other.0.trim_start_matches('0');
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for FragmentNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_numbers_have_the_service_shape() {
        // ((2^64 + 0) << 92) | 0 = 2^156, which has 47 digits.
        let n = FragmentNumber::compose(0, 0);
        assert_eq!(
            n.as_str(),
            "91343852333181432387730302044767688728495783936"
        );
        assert_eq!(n.as_str().len(), DIGITS);
        let a = FragmentNumber::compose(1, 1_700_000_000_000);
        let b = FragmentNumber::compose(2, 1_600_000_000_000);
        assert_eq!(a.as_str().len(), DIGITS);
        assert!(a < b, "the sequence number dominates the timestamp");
        assert!(FragmentNumber::compose(1, 5) < FragmentNumber::compose(1, 6));
    }

    #[test]
    fn ordering_is_numeric_and_parsing_strict() {
        let small: FragmentNumber = "9".parse().unwrap();
        let big: FragmentNumber = "10".parse().unwrap();
        assert!(small < big);
        assert!("12a".parse::<FragmentNumber>().is_err());
        assert!("".parse::<FragmentNumber>().is_err());
        let json = serde_json::to_string(&big).unwrap();
        assert_eq!(json, "\"10\"");
        assert!(serde_json::from_str::<FragmentNumber>("\"x\"").is_err());
    }
}
