//! SigV4 signing of every request the plugin sends, built on `aws-sigv4`.
//!
//! One rule decides the signed headers, for every call: `host`, `user-agent`, `x-amz-date`, `connection`,
//! `transfer-encoding` and every `x-amzn-*` header present in the request. Control-plane calls carry none of the
//! last three kinds, so they sign `host;user-agent;x-amz-date`; PutMedia adds its hop-by-hop and `x-amzn-*`
//! parameter headers. This is exactly what the official C++ producer signs (see the captures in
//! `testdata/cpp-producer`), so a server that verifies its requests verifies ours. Everything else the HTTP stack
//! may add or rewrite (`content-length`, `content-type`, `accept`, `expect`) stays unsigned.
//!
//! The session token is sent as `x-amz-security-token` but not signed, and the payload hash is never sent as a
//! header (`x-amz-content-sha256`), again like the producer. JSON calls hash their exact body bytes; PutMedia,
//! whose body is an endless stream, hashes the empty string.

use std::borrow::Cow;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::AwsError;

/// SigV4 service name of every Kinesis Video Streams API (control plane, media and archived media).
pub const SERVICE: &str = "kinesisvideo";

/// Hex SHA-256 of the empty string: the payload hash of PutMedia's streaming body.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What the signature covers of the request body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The complete body (JSON calls): its SHA-256 is signed.
    Bytes(&'a [u8]),
    /// A streaming body (PutMedia): the SHA-256 of the empty string is signed, as the producer does.
    Streaming,
}

/// True if `name` (lower case) is signed: see the module documentation.
pub fn is_signed_header(name: &str) -> bool {
    matches!(
        name,
        "host" | "user-agent" | "x-amz-date" | "connection" | "transfer-encoding"
    ) || name.starts_with("x-amzn-")
}

/// Signs a request in place with the `kinesisvideo` service name.
///
/// `headers` must hold `host` exactly as it will be sent (the URL's host, with the port only when it is not the
/// scheme's default) and `user-agent`. On return it also holds `authorization`, `x-amz-date` and, with temporary
/// credentials, `x-amz-security-token`. Returns the hex signature.
pub fn sign_request(
    method: &str,
    url: &str,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<String, AwsError> {
    sign_request_for_service(
        SERVICE,
        method,
        url,
        headers,
        payload,
        credentials,
        region,
        time,
    )
}

/// [`sign_request`] for any service name (used by the test-suite vectors, which use the name `service`).
#[allow(clippy::too_many_arguments)]
pub fn sign_request_for_service(
    service: &str,
    method: &str,
    url: &str,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<String, AwsError> {
    if !headers.contains_key(http::header::HOST) {
        // aws-sigv4 would derive one from the URL (panicking on a URL without authority); the caller must decide
        // what goes on the wire.
        return Err(AwsError::Signing(format!(
            "request to {url} has no Host header to sign"
        )));
    }
    // Outputs of a previous signature (a retried request) must not feed the new one.
    headers.remove(http::header::AUTHORIZATION);
    headers.remove("x-amz-date");
    headers.remove("x-amz-security-token");

    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let value = value.to_str().map_err(|_| {
            AwsError::Signing(format!(
                "header {name} of the request to {url} is not visible ASCII"
            ))
        })?;
        pairs.push((name.as_str(), value));
    }
    let excluded: Vec<Cow<'static, str>> = headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| !is_signed_header(n))
        .map(|n| Cow::Owned(n.to_string()))
        .collect();

    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.signature_location = SignatureLocation::Headers;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    settings.session_token_mode = SessionTokenMode::Exclude;
    settings.excluded_headers = Some(excluded);

    let body = match payload {
        Payload::Bytes(bytes) => SignableBody::Bytes(bytes),
        Payload::Streaming => SignableBody::Precomputed(EMPTY_PAYLOAD_SHA256.to_string()),
    };
    let signable = SignableRequest::new(method, url, pairs.into_iter(), body)
        .map_err(|e| AwsError::Signing(format!("cannot sign the request to {url}: {e}")))?;
    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| AwsError::Signing(format!("invalid signing parameters: {e}")))?
        .into();
    let output = sign(signable, &params)
        .map_err(|e| AwsError::Signing(format!("cannot sign the request to {url}: {e}")))?;
    let (instructions, signature) = output.into_parts();
    let (new_headers, _query) = instructions.into_parts();
    for header in new_headers {
        let name = HeaderName::from_static(header.name());
        let mut value = HeaderValue::from_str(header.value()).map_err(|_| {
            AwsError::Signing(format!(
                "signed header {} is not a valid value",
                header.name()
            ))
        })?;
        value.set_sensitive(header.sensitive());
        headers.insert(name, value);
    }
    Ok(signature)
}

/// The `Host` header value for a URL as this client sends it: host, plus the port when it is not the scheme's
/// default.
pub fn host_header(url: &reqwest::Url) -> Result<String, AwsError> {
    let host = url
        .host_str()
        .ok_or_else(|| AwsError::Config(format!("URL {url} has no host")))?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, UNIX_EPOCH};

    const AK: &str = "AKIDEXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(AK, SK, token.map(str::to_string), None, "test")
    }

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The SigV4 chain written out by hand, independent of aws-sigv4: canonical request -> string to sign ->
    /// derived key -> signature.
    fn manual_signature(
        canonical_request: &str,
        amz_date: &str,
        region: &str,
        service: &str,
    ) -> String {
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let k_date = hmac(format!("AWS4{SK}").as_bytes(), date);
        let k_region = hmac(&k_date, region);
        let k_service = hmac(&k_region, service);
        let k_signing = hmac(&k_service, "aws4_request");
        hex::encode(hmac(&k_signing, &string_to_sign))
    }

    fn time_of(amz_date: &str) -> SystemTime {
        let dt = aws_smithy_types::DateTime::from_str(
            &format!(
                "{}-{}-{}T{}:{}:{}Z",
                &amz_date[0..4],
                &amz_date[4..6],
                &amz_date[6..8],
                &amz_date[9..11],
                &amz_date[11..13],
                &amz_date[13..15]
            ),
            aws_smithy_types::date_time::Format::DateTime,
        )
        .expect("valid date");
        UNIX_EPOCH + Duration::from_secs(dt.secs() as u64)
    }

    #[test]
    fn get_vanilla_matches_the_manual_chain_and_the_published_value() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        let sig = sign_request_for_service(
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &mut headers,
            Payload::Bytes(b""),
            &creds(None),
            "us-east-1",
            time_of("20150830T123600Z"),
        )
        .expect("signs");
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let manual = manual_signature(canonical, "20150830T123600Z", "us-east-1", "service");
        assert_eq!(sig, manual);
        // The value published with the AWS SigV4 test suite for get-vanilla.
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(
            headers["authorization"],
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={sig}"
            )
            .as_str()
        );
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert!(!headers.contains_key("x-amz-content-sha256"));
    }

    #[test]
    fn post_json_signs_only_the_chosen_headers_and_the_body_hash() {
        let body = br#"{"StreamName":"cam-1"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert("user-agent", HeaderValue::from_static("gst-plugin-kvs/0.1"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("22"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let sig = sign_request(
            "POST",
            "http://127.0.0.1:8080/describeStream",
            &mut headers,
            Payload::Bytes(body),
            &creds(Some("TOKEN")),
            "eu-west-1",
            time_of("20261121T134139Z"),
        )
        .expect("signs");
        let canonical = format!(
            "POST\n/describeStream\n\nhost:127.0.0.1:8080\nuser-agent:gst-plugin-kvs/0.1\nx-amz-date:20261121T134139Z\n\n\
             host;user-agent;x-amz-date\n{}",
            hex::encode(Sha256::digest(body))
        );
        assert_eq!(
            sig,
            manual_signature(&canonical, "20261121T134139Z", "eu-west-1", "kinesisvideo")
        );
        assert_eq!(headers["x-amz-security-token"], "TOKEN");
        assert!(
            headers["authorization"]
                .to_str()
                .expect("ascii")
                .contains("SignedHeaders=host;user-agent;x-amz-date,")
        );
    }

    #[test]
    fn resigning_replaces_the_previous_signature() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h"));
        headers.insert("user-agent", HeaderValue::from_static("ua"));
        let t = time_of("20261121T134139Z");
        let first = sign_request(
            "POST",
            "http://h/x",
            &mut headers,
            Payload::Bytes(b"{}"),
            &creds(None),
            "r",
            t,
        )
        .expect("signs");
        let second = sign_request(
            "POST",
            "http://h/x",
            &mut headers,
            Payload::Bytes(b"{}"),
            &creds(None),
            "r",
            t + Duration::from_secs(1),
        )
        .expect("signs");
        assert_ne!(first, second);
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert_eq!(headers["x-amz-date"], "20261121T134140Z");
    }

    #[test]
    fn missing_host_is_an_error_not_a_panic() {
        let mut headers = HeaderMap::new();
        let e = sign_request(
            "GET",
            "/relative",
            &mut headers,
            Payload::Streaming,
            &creds(None),
            "r",
            UNIX_EPOCH,
        )
        .expect_err("no host");
        assert!(e.to_string().contains("no Host header"), "{e}");
    }

    #[test]
    fn host_header_keeps_only_non_default_ports() {
        let h = |u: &str| host_header(&reqwest::Url::parse(u).expect("url")).expect("host");
        assert_eq!(
            h("https://kinesisvideo.us-west-2.amazonaws.com"),
            "kinesisvideo.us-west-2.amazonaws.com"
        );
        assert_eq!(h("https://example.com:443/x"), "example.com");
        assert_eq!(h("http://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(h("http://[::1]:9000/"), "[::1]:9000");
    }

    const CPP_DIR: &str = "/work/shared/testdata/cpp-producer";

    fn testdata_dir() -> PathBuf {
        let dir = PathBuf::from(CPP_DIR);
        assert!(
            dir.is_dir(),
            "the captured C++ producer requests are missing: {CPP_DIR} does not exist"
        );
        dir
    }

    struct CapturedRequest {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
    }

    fn parse_http(path: &Path) -> CapturedRequest {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut lines = text.split("\r\n");
        let request_line = lines.next().expect("request line");
        let mut parts = request_line.split(' ');
        let method = parts.next().expect("method").to_string();
        let target = parts.next().expect("target").to_string();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        CapturedRequest {
            method,
            path: target,
            headers,
        }
    }

    /// Re-signs every captured request of the official producer at its own time with `sign_request` and
    /// expects the very Authorization header it sent.
    #[test]
    fn captured_cpp_producer_signatures_recompute_byte_identically() {
        let dir = testdata_dir();
        let mut checked = 0;
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("list testdata")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        for folder in folders {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .expect("list folder")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "http"))
                .collect();
            files.sort();
            for http_file in files {
                let req = parse_http(&http_file);
                let get = |name: &str| {
                    req.headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let sent_auth = get("authorization").expect("Authorization sent");
                let amz_date = get("x-amz-date").expect("X-Amz-Date sent");
                let token = get("x-amz-security-token");
                let mut headers = HeaderMap::new();
                for (n, v) in &req.headers {
                    headers.append(
                        HeaderName::from_bytes(n.as_bytes()).expect("name"),
                        HeaderValue::from_str(v).expect("value"),
                    );
                }
                let body_path = http_file.with_extension("body");
                let body = std::fs::read(&body_path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", body_path.display()));
                let payload = if req.path == "/putMedia" {
                    Payload::Streaming
                } else {
                    Payload::Bytes(&body)
                };
                let url = format!("http://127.0.0.1:18202{}", req.path);
                let sig = sign_request(
                    &req.method,
                    &url,
                    &mut headers,
                    payload,
                    &creds(token.as_deref()),
                    "us-east-1",
                    time_of(&amz_date),
                )
                .expect("signs");
                assert_eq!(
                    headers["authorization"].to_str().expect("ascii"),
                    sent_auth,
                    "{}",
                    http_file.display()
                );
                assert!(sent_auth.ends_with(&sig));
                assert_eq!(
                    headers
                        .get("x-amz-security-token")
                        .map(|v| v.to_str().expect("ascii").to_string()),
                    token
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 12, "expected 3 captures x 4 requests");
    }
}
