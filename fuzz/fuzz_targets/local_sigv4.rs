//! kvs-local's SigV4 verification from a raw request head (request line, then `name: value` lines, like the
//! `.http` files of the captures): the Authorization parser and the verifier must answer without panicking, and
//! any header set the signer accepts must verify after signing (signer and verifier canonicalise alike).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use kvs_local::sigv4::{self, Authorization, Verifier};
use libfuzzer_sys::fuzz_target;

/// 2026-11-21T12:00:00Z: the captures' date, so their X-Amz-Date and scope pass.
const NOW: u64 = 1_795_262_400;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let method = parts
        .next()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::POST);
    let uri: Uri = parts
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    let mut body = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            )
        {
            headers.append(n, v);
        }
    }
    for line in lines {
        body.extend_from_slice(line.as_bytes());
    }
    if let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let _ = Authorization::parse(auth);
    }
    let _ = Authorization::parse(&text);
    let _ = sigv4::parse_amz_date(&text);

    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    // Both the C++ captures' key and the fuzz key, so captured heads get as far as the signature check.
    let verifier = Verifier::new(
        vec![
            kvs_fuzz::credential(),
            kvs_local::Credential {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
        ],
        kvs_fuzz::REGION,
        true,
    );
    if let Ok(pending) = verifier.begin_at(&method, &uri, &headers, now) {
        let _ = pending.access_key_id();
        let _ = pending.verify(&[sigv4::EMPTY_SHA256, &sigv4::sha256_hex(&body)]);
    }

    // Round trip: sign what we parsed (without its own signature) and verify it.
    headers.remove(http::header::AUTHORIZATION);
    headers.remove("x-amz-date");
    headers.remove("x-amz-security-token");
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, HeaderValue::from_static("127.0.0.1"));
    }
    let hash = sigv4::sha256_hex(&body);
    let cred = kvs_fuzz::credential();
    if sigv4::sign(
        &method,
        &uri,
        &mut headers,
        &hash,
        &cred,
        kvs_fuzz::REGION,
        NOW as i64,
    )
    .is_ok()
    {
        let pending = verifier
            .begin_at(&method, &uri, &headers, now)
            .unwrap_or_else(|e| {
                panic!(
                    "a request signed by sigv4::sign is refused: {} {}",
                    e.error_type, e.message
                )
            });
        if let Err(e) = pending.verify(&[&hash]) {
            panic!(
                "a request signed by sigv4::sign does not verify: {}",
                e.message
            );
        }
    }
});
