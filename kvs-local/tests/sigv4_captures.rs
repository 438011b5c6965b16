//! Every signature the official C++ producer made in the captures (../shared/testdata/cpp-producer) verifies,
//! as does a request signed by botocore; altered requests do not.

mod common;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use kvs_local::sigv4::{self, Verifier};

struct Capture {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

fn load(http_file: &Path) -> Capture {
    let raw = std::fs::read(http_file).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method: Method = request_line.next().unwrap().parse().unwrap();
    let uri: Uri = request_line.next().unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    let body_path = http_file.with_extension("body");
    let body = body_path
        .exists()
        .then(|| std::fs::read(body_path).unwrap());
    Capture {
        method,
        uri,
        headers,
        body,
    }
}

fn verifier() -> Verifier {
    Verifier::new(
        vec![
            common::credential(),
            // video-h264-tags was signed with temporary credentials.
            kvs_local::Credential {
                session_token: Some(common::CAPTURE_TOKEN.into()),
                ..common::credential()
            },
        ],
        "us-east-1",
        false,
    )
}

fn payload_hash(c: &Capture) -> String {
    if c.uri.path() == "/putMedia" {
        sigv4::EMPTY_SHA256.to_owned()
    } else {
        sigv4::sha256_hex(c.body.as_deref().unwrap_or_default())
    }
}

#[test]
fn every_captured_cpp_producer_signature_verifies() {
    let root = common::testdata("cpp-producer");
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.path());
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "http"))
            .collect();
        files.sort();
        for file in files {
            let c = load(&file);
            let pending = verifier()
                .begin(&c.method, &c.uri, &c.headers)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            pending
                .verify(&[&payload_hash(&c)])
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            checked += 1;
        }
    }
    // 3 scenarios: 4 requests each (tags adds TagStream, create adds CreateStream) = 12 and more.
    assert!(
        checked >= 12,
        "only {checked} captured requests found under {}",
        root.display()
    );
}

#[test]
fn captured_signatures_fail_when_anything_signed_changes() {
    let file = common::testdata("cpp-producer/video-h264-create/004-putMedia.http");
    let c = load(&file);
    // Host with the port (what a proxy might rewrite it to) no longer matches: the Host must be taken as sent.
    let mut with_port = c.headers.clone();
    with_port.insert("host", HeaderValue::from_static("127.0.0.1:18201"));
    let err = verifier()
        .begin(&c.method, &c.uri, &with_port)
        .unwrap()
        .verify(&[sigv4::EMPTY_SHA256])
        .unwrap_err();
    assert_eq!(err.error_type, "AccessDeniedException");
    // A different stream name.
    let mut other = c.headers.clone();
    other.insert("x-amzn-stream-name", HeaderValue::from_static("cam-b"));
    assert!(
        verifier()
            .begin(&c.method, &c.uri, &other)
            .unwrap()
            .verify(&[sigv4::EMPTY_SHA256])
            .is_err()
    );
    // The body hash instead of the empty-payload hash.
    let body = std::fs::read(file.with_extension("body")).unwrap();
    assert!(
        verifier()
            .begin(&c.method, &c.uri, &c.headers)
            .unwrap()
            .verify(&[&sigv4::sha256_hex(&body)])
            .is_err()
    );
    // A wrong secret.
    let wrong = Verifier::new(
        vec![kvs_local::Credential {
            secret_access_key: "not-the-secret".into(),
            ..common::credential()
        }],
        "us-east-1",
        false,
    );
    assert_eq!(
        wrong
            .begin(&c.method, &c.uri, &c.headers)
            .unwrap()
            .verify(&[sigv4::EMPTY_SHA256])
            .unwrap_err()
            .error_type,
        "AccessDeniedException"
    );
}

#[test]
fn captured_requests_are_expired_with_the_clock_check_on() {
    let c = load(&common::testdata(
        "cpp-producer/video-h264-create/002-createStream.http",
    ));
    let strict = Verifier::new(vec![common::credential()], "us-east-1", true);
    // The captures are dated 2026-11-21 13:41 UTC; an hour later they are stale, a minute later they are fine.
    let capture_time = sigv4::parse_amz_date("20261121T134103Z").unwrap() as u64;
    let err = strict
        .begin_at(
            &c.method,
            &c.uri,
            &c.headers,
            UNIX_EPOCH + Duration::from_secs(capture_time + 3600),
        )
        .unwrap_err();
    assert_eq!(err.error_type, "ExpiredTokenException");
    assert!(err.message.contains("15 minutes"), "{}", err.message);
    strict
        .begin_at(
            &c.method,
            &c.uri,
            &c.headers,
            UNIX_EPOCH + Duration::from_secs(capture_time + 60),
        )
        .unwrap()
        .verify(&[&payload_hash(&c)])
        .unwrap();
}

/// Signed by botocore 1.43 `SigV4Auth(creds, "kinesisvideo", "us-east-1")` for
/// `POST http://127.0.0.1:4567/getDataEndpoint` with a session token: botocore signs content-type, the Host with
/// its port, and the token, but not user-agent.
#[test]
fn a_botocore_signature_verifies() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:4567"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static("Botocore/1.43.11 test"),
    );
    headers.insert("x-amz-date", HeaderValue::from_static("20261121T153019Z"));
    headers.insert("x-amz-security-token", HeaderValue::from_static("TOKEN123"));
    headers.insert(
        "authorization",
        HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/us-east-1/kinesisvideo/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
             Signature=2cb8aae2f58f1fe43f55d70ba7230bf67ac39bd46c99e41cb45774b7140c018a",
        ),
    );
    let body = br#"{"StreamName": "cam-x", "APIName": "GET_MEDIA"}"#;
    let uri: Uri = "/getDataEndpoint".parse().unwrap();
    let v = Verifier::new(
        vec![kvs_local::Credential {
            session_token: Some("TOKEN123".into()),
            ..common::credential()
        }],
        "us-east-1",
        false,
    );
    v.begin(&Method::POST, &uri, &headers)
        .unwrap()
        .verify(&[&sigv4::sha256_hex(body)])
        .unwrap();
    // The same key configured with another session token rejects it as an unknown client.
    let other = Verifier::new(
        vec![kvs_local::Credential {
            session_token: Some("OTHER".into()),
            ..common::credential()
        }],
        "us-east-1",
        false,
    );
    assert_eq!(
        other
            .begin(&Method::POST, &uri, &headers)
            .unwrap_err()
            .error_type,
        "UnrecognizedClientException"
    );
}
