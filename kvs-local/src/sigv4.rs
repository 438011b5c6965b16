//! AWS Signature Version 4 verification from the request as received, and a signer for tests and tools.
//!
//! The canonical request is rebuilt from exactly the headers named in SignedHeaders with their values as received
//! (the official C++ producer signs `Host` without the port and signs hop-by-hop headers such as `connection` and
//! `transfer-encoding`), so nothing may be normalised beyond what SigV4 itself prescribes (trim, collapse spaces).

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, StatusCode, Uri};
use sha2::{Digest, Sha256};

use crate::config::Credential;
use crate::error::ApiError;

/// The service name every Kinesis Video Streams API is signed for.
pub const SERVICE: &str = "kinesisvideo";
/// SHA-256 of the empty string: the payload hash the C++ producer signs PutMedia with.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Payload hash value of requests that do not sign their body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Largest accepted difference between the request date and the server clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

fn auth_error(error_type: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, error_type, message)
}

fn incomplete(message: impl Into<String>) -> ApiError {
    auth_error("IncompleteSignature", message)
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub scope_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    /// Parses the header value; every malformation is an `IncompleteSignature` error saying what is wrong.
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let rest = value.strip_prefix(ALGORITHM).ok_or_else(|| {
            incomplete(format!(
                "Authorization header must start with '{ALGORITHM}'"
            ))
        })?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, val) = part.split_once('=').ok_or_else(|| {
                incomplete(format!("Authorization component '{part}' is not key=value"))
            })?;
            match key {
                "Credential" => credential = Some(val),
                "SignedHeaders" => signed = Some(val),
                "Signature" => signature = Some(val),
                _ => {
                    return Err(incomplete(format!(
                        "Authorization has an unknown component '{key}'"
                    )));
                }
            }
        }
        let credential = credential
            .ok_or_else(|| incomplete("Authorization header requires a 'Credential' parameter"))?;
        let signed = signed.ok_or_else(|| {
            incomplete("Authorization header requires a 'SignedHeaders' parameter")
        })?;
        let signature = signature
            .ok_or_else(|| incomplete("Authorization header requires a 'Signature' parameter"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope.as_slice() else {
            return Err(incomplete(format!(
                "Credential '{credential}' must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
            )));
        };
        if *terminator != "aws4_request" {
            return Err(incomplete(format!(
                "Credential scope must end with 'aws4_request', not '{terminator}'"
            )));
        }
        if access_key_id.is_empty() {
            return Err(incomplete("Credential has an empty access key id"));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(incomplete(format!(
                "Credential scope date '{date}' is not YYYYMMDD"
            )));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(incomplete("Signature must be 64 hexadecimal characters"));
        }
        let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
        if signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(incomplete(format!(
                "SignedHeaders '{signed}' must be lower-case names separated by ';'"
            )));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(incomplete("SignedHeaders must include 'host'"));
        }
        Ok(Authorization {
            access_key_id: (*access_key_id).to_owned(),
            scope_date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// Accepts or rejects signatures for a set of keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    credentials: Vec<Credential>,
    region: String,
    check_clock_skew: bool,
}

/// A request whose Authorization header, key, scope and date passed; the signature itself is checked by
/// [`PendingAuth::verify`] once the payload hash is known.
#[derive(Debug)]
pub struct PendingAuth {
    auth: Authorization,
    secret: String,
    amz_date: String,
    canonical_prefix: String,
}

impl Verifier {
    pub fn new(
        credentials: Vec<Credential>,
        region: impl Into<String>,
        check_clock_skew: bool,
    ) -> Self {
        Verifier {
            credentials,
            region: region.into(),
            check_clock_skew,
        }
    }

    /// Checks everything but the signature value: header syntax, key, session token, scope, date.
    pub fn begin(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<PendingAuth, ApiError> {
        self.begin_at(method, uri, headers, SystemTime::now())
    }

    /// [`Verifier::begin`] at a given time (for tests).
    pub fn begin_at(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<PendingAuth, ApiError> {
        let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            auth_error(
                "IncompleteSignature",
                "Request is missing Authentication Token: no Authorization header",
            )
        })?;
        let value = value
            .to_str()
            .map_err(|_| incomplete("Authorization header is not ASCII"))?;
        let auth = Authorization::parse(value)?;
        let mut candidates = self
            .credentials
            .iter()
            .filter(|c| c.access_key_id == auth.access_key_id)
            .peekable();
        if candidates.peek().is_none() {
            return Err(auth_error(
                "UnrecognizedClientException",
                format!(
                    "The security token included in the request is invalid: access key '{}' is unknown",
                    auth.access_key_id
                ),
            ));
        }
        // The session token sent (if any) must be one this key was configured with; a key configured without a
        // token accepts only requests without one.
        let sent = headers.get("x-amz-security-token").map(|v| v.as_bytes());
        let credential = candidates
            .find(|c| c.session_token.as_deref().map(str::as_bytes) == sent)
            .ok_or_else(|| {
                auth_error(
                    "UnrecognizedClientException",
                    match sent {
                        Some(_) => "The security token included in the request is invalid: x-amz-security-token \
                                    is not a session token of this access key",
                        None => "The security token included in the request is invalid: this access key requires \
                                 x-amz-security-token",
                    },
                )
            })?;
        if auth.service != SERVICE {
            return Err(incomplete(format!(
                "Credential should be scoped to correct service: '{SERVICE}', not '{}'",
                auth.service
            )));
        }
        if auth.region != self.region {
            return Err(incomplete(format!(
                "Credential should be scoped to a valid region: this server serves '{}', not '{}'",
                self.region, auth.region
            )));
        }
        let amz_date = headers
            .get("x-amz-date")
            .ok_or_else(|| incomplete("Request must carry an X-Amz-Date header"))?
            .to_str()
            .map_err(|_| incomplete("X-Amz-Date is not ASCII"))?
            .trim()
            .to_owned();
        let request_time = parse_amz_date(&amz_date).ok_or_else(|| {
            incomplete(format!(
                "X-Amz-Date '{amz_date}' is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?;
        if amz_date[..8] != auth.scope_date {
            return Err(incomplete(format!(
                "Date in Credential scope '{}' does not match the date of X-Amz-Date '{amz_date}'",
                auth.scope_date
            )));
        }
        if self.check_clock_skew {
            let now_secs = now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if (now_secs - request_time).abs() > MAX_CLOCK_SKEW_SECS {
                return Err(auth_error(
                    "ExpiredTokenException",
                    format!(
                        "Signature expired: X-Amz-Date {amz_date} is more than 15 minutes away from the server time \
                         ({})",
                        format_amz_date(now_secs)
                    ),
                ));
            }
        }
        let canonical_prefix =
            canonical_request_prefix(method, uri, headers, &auth.signed_headers)?;
        Ok(PendingAuth {
            secret: credential.secret_access_key.clone(),
            auth,
            amz_date,
            canonical_prefix,
        })
    }
}

impl PendingAuth {
    /// The access key that signed the request.
    pub fn access_key_id(&self) -> &str {
        &self.auth.access_key_id
    }

    /// Checks the signature against each candidate payload hash in turn; succeeds when one matches.
    pub fn verify(&self, payload_hashes: &[&str]) -> Result<(), ApiError> {
        let key = signing_key(
            &self.secret,
            &self.auth.scope_date,
            &self.auth.region,
            &self.auth.service,
        );
        for hash in payload_hashes {
            let canonical = format!("{}{hash}", self.canonical_prefix);
            let sts = string_to_sign(
                &self.amz_date,
                &self.auth.scope_date,
                &self.auth.region,
                &canonical,
            );
            let expected = hex::encode(hmac(&key, sts.as_bytes()));
            if constant_time_eq(expected.as_bytes(), self.auth.signature.as_bytes()) {
                return Ok(());
            }
        }
        Err(auth_error(
            "AccessDeniedException",
            format!(
                "The request signature we calculated does not match the signature you provided (signed headers: {}). \
                 Check your AWS secret access key and signing method.",
                self.auth.signed_headers.join(";")
            ),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch of an `YYYYMMDDTHHMMSSZ` date.
pub fn parse_amz_date(value: &str) -> Option<i64> {
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = value.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(s).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch.
pub fn format_amz_date(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "invalid-time".to_owned(),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn uri_encode(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

/// The canonical request up to (not including) the payload hash.
fn canonical_request_prefix(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[String],
) -> Result<String, ApiError> {
    let mut out = String::with_capacity(512);
    out.push_str(method.as_str());
    out.push('\n');
    // Non-S3 services encode the path as sent once more (botocore and the SDKs do the same).
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    uri_encode(&mut out, path.as_bytes(), true);
    out.push('\n');
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ke = String::new();
            uri_encode(&mut ke, &percent_decode(k), false);
            let mut ve = String::new();
            uri_encode(&mut ve, &percent_decode(v), false);
            (ke, ve)
        })
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&query.join("&"));
    out.push('\n');
    for name in signed_headers {
        let mut values = headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return Err(auth_error(
                "AccessDeniedException",
                format!("SignedHeaders names '{name}' but the request has no such header"),
            ));
        }
        out.push_str(name);
        out.push(':');
        let mut first = true;
        for v in values {
            if !first {
                out.push(',');
            }
            first = false;
            push_trimmed(&mut out, v.as_bytes());
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    Ok(out)
}

/// Trims a header value and collapses runs of spaces, as SigV4 requires.
fn push_trimmed(out: &mut String, value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let mut last_space = false;
    for c in text.trim().chars() {
        if c == ' ' || c == '\t' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
}

fn string_to_sign(amz_date: &str, scope_date: &str, region: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope_date}/{region}/{SERVICE}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Hex SHA-256 of a payload.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Signs a request for tests and tools: adds `x-amz-date` (and `x-amz-security-token`) and `authorization` to
/// `headers`, signing `host` plus every header already present whose name is in `extra_signed` or starts with
/// `x-amz`. `headers` must hold `host`.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    payload_hash: &str,
    credential: &Credential,
    region: &str,
    unix_time: i64,
) -> Result<(), ApiError> {
    let amz_date = format_amz_date(unix_time);
    let insert =
        |headers: &mut HeaderMap, name: &'static str, value: &str| -> Result<(), ApiError> {
            let v = http::HeaderValue::from_str(value).map_err(|_| {
                ApiError::invalid_argument(format!("{name} value is not a valid header value"))
            })?;
            headers.insert(name, v);
            Ok(())
        };
    insert(headers, "x-amz-date", &amz_date)?;
    if let Some(token) = &credential.session_token {
        insert(headers, "x-amz-security-token", token)?;
    }
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k == "host" || k == "content-type" || k.starts_with("x-amz"))
        .collect();
    signed.sort();
    signed.dedup();
    let prefix = canonical_request_prefix(method, uri, headers, &signed)?;
    let canonical = format!("{prefix}{payload_hash}");
    let scope_date = &amz_date[..8];
    let sts = string_to_sign(&amz_date, scope_date, region, &canonical);
    let key = signing_key(&credential.secret_access_key, scope_date, region, SERVICE);
    let signature = hex::encode(hmac(&key, sts.as_bytes()));
    let auth = format!(
        "{ALGORITHM} Credential={}/{scope_date}/{region}/{SERVICE}/aws4_request, SignedHeaders={}, Signature={signature}",
        credential.access_key_id,
        signed.join(";")
    );
    insert(headers, "authorization", &auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> Credential {
        Credential {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20261121T134104Z").unwrap();
        assert_eq!(format_amz_date(t), "20261121T134104Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    /// The canonical example of the SigV4 documentation (GET with a query string, IAM service) recomputed with the
    /// same primitives, to pin the key derivation and the query canonicalisation.
    #[test]
    fn signing_key_matches_the_documented_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let method = Method::POST;
        let uri: Uri = "/describeStream".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:4567".parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        let body = br#"{"StreamName":"a"}"#;
        let now = 1_795_268_464;
        sign(
            &method,
            &uri,
            &mut headers,
            &sha256_hex(body),
            &cred(),
            "us-east-1",
            now,
        )
        .unwrap();
        let v = Verifier::new(vec![cred()], "us-east-1", true);
        let at = UNIX_EPOCH + std::time::Duration::from_secs(now as u64 + 60);
        let pending = v.begin_at(&method, &uri, &headers, at).unwrap();
        pending.verify(&[&sha256_hex(body)]).unwrap();
        let err = pending.verify(&[&sha256_hex(b"{}")]).unwrap_err();
        assert_eq!(err.error_type, "AccessDeniedException");
        assert!(err.message.contains("does not match"), "{}", err.message);

        // 16 minutes later the same request has expired.
        let late = UNIX_EPOCH + std::time::Duration::from_secs(now as u64 + 16 * 60);
        let err = v.begin_at(&method, &uri, &headers, late).unwrap_err();
        assert_eq!(
            (err.status, err.error_type),
            (StatusCode::FORBIDDEN, "ExpiredTokenException")
        );

        // An unknown key and a wrong region.
        let other = Verifier::new(
            vec![Credential {
                access_key_id: "OTHER".into(),
                ..cred()
            }],
            "us-east-1",
            false,
        );
        let err = other.begin_at(&method, &uri, &headers, at).unwrap_err();
        assert_eq!(err.error_type, "UnrecognizedClientException");
        assert!(err.message.contains("AKIDEXAMPLE"), "{}", err.message);
        let err = Verifier::new(vec![cred()], "eu-west-1", false)
            .begin_at(&method, &uri, &headers, at)
            .unwrap_err();
        assert_eq!(err.error_type, "IncompleteSignature");
        assert!(err.message.contains("region"), "{}", err.message);
    }

    #[test]
    fn malformed_authorization_headers_are_incomplete_signatures() {
        for (value, needle) in [
            ("Bearer abc", "must start with"),
            (
                "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
                "'Credential'",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AK/2026/us-east-1/kinesisvideo/aws4_request, SignedHeaders=host, \
                 Signature=0000000000000000000000000000000000000000000000000000000000000000",
                "YYYYMMDD",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AK/20261121/us-east-1/kinesisvideo/aws4_request, SignedHeaders=x-amz-date, \
                 Signature=0000000000000000000000000000000000000000000000000000000000000000",
                "include 'host'",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AK/20261121/us-east-1/kinesisvideo/aws4_request, SignedHeaders=host, \
                 Signature=xyz",
                "64 hexadecimal",
            ),
        ] {
            let err = Authorization::parse(value).unwrap_err();
            assert_eq!(err.error_type, "IncompleteSignature", "{value}");
            assert_eq!(err.status, StatusCode::FORBIDDEN);
            assert!(err.message.contains(needle), "{value}: {}", err.message);
        }
    }

    #[test]
    fn wrong_service_is_rejected_with_a_message_naming_it() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "localhost".parse().unwrap());
        headers.insert("x-amz-date", "20261121T134104Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, \
             Signature=0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap(),
        );
        let err = Verifier::new(vec![cred()], "us-east-1", false)
            .begin(&Method::POST, &"/listStreams".parse().unwrap(), &headers)
            .unwrap_err();
        assert_eq!(err.error_type, "IncompleteSignature");
        assert!(
            err.message.contains("'kinesisvideo', not 's3'"),
            "{}",
            err.message
        );
    }
}
