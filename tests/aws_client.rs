//! The shared AWS layer's typed client against a real kvs-local server (child process): control-plane round trip,
//! the data-endpoint cache, PutMedia streaming with acknowledgements, reading back, and authentication errors.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use gstkvs::aws::{
    ApiName, AwsError, AwsSettings, Canceller, CreateStreamInput, FragmentSelector,
    FragmentSelectorKind, KvsClient, ListFragmentsInput, PutMediaParams, StartSelector, StreamRef,
    TimecodeType, WaitError, wait,
};
use kvs_mkv::ack::{AckEventType, AckParser};

/// Runs a client call from this (plain) test thread through the layer's own wait bridge.
fn run<T>(future: impl Future<Output = Result<T, AwsError>>) -> Result<T, AwsError> {
    match wait(&Canceller::new(), future, Some(Duration::from_secs(60))) {
        Ok(v) => Ok(v),
        Err(WaitError::Failed(e)) => Err(e),
        Err(other) => panic!("the call did not complete: {other}"),
    }
}

fn settings(server: &common::LocalServer) -> AwsSettings {
    AwsSettings {
        endpoint: Some(server.url()),
        access_key: Some(common::ACCESS_KEY.into()),
        secret_key: Some(common::SECRET_KEY.into()),
        aws_region: Some(common::REGION.into()),
        ..Default::default()
    }
}

fn create(client: &KvsClient, name: &str) -> String {
    run(client.create_stream(&CreateStreamInput {
        stream_name: name.into(),
        media_type: Some("video/h264".into()),
        data_retention_in_hours: Some(2),
        tags: BTreeMap::from([("owner".to_string(), "aws-client-test".to_string())]),
        ..Default::default()
    }))
    .expect("CreateStream succeeds")
}

#[test]
fn control_plane_round_trip_and_endpoint_cache() {
    common::init();
    let mut server = common::LocalServer::start();
    let client = KvsClient::new(&settings(&server)).expect("client");
    let stream = StreamRef::Name("aws-client-cam".into());

    let missing = run(client.describe_stream(&stream)).expect_err("no such stream yet");
    assert!(missing.is_not_found(), "{missing:?}");
    assert!(!missing.is_retryable());

    let arn = create(&client, "aws-client-cam");
    assert!(arn.starts_with("arn:aws:kinesisvideo:us-east-1:"), "{arn}");
    assert!(arn.contains(":stream/aws-client-cam/"), "{arn}");

    let by_name = run(client.describe_stream(&stream)).expect("DescribeStream by name");
    assert_eq!(by_name.stream_name, "aws-client-cam");
    assert_eq!(by_name.stream_arn, arn);
    assert_eq!(by_name.media_type.as_deref(), Some("video/h264"));
    assert_eq!(by_name.data_retention_in_hours, Some(2));
    assert!(by_name.creation_time.is_some());
    let by_arn =
        run(client.describe_stream(&StreamRef::Arn(arn.clone()))).expect("DescribeStream by ARN");
    assert_eq!(by_arn.stream_name, "aws-client-cam");

    let again = run(client.create_stream(&CreateStreamInput {
        stream_name: "aws-client-cam".into(),
        ..Default::default()
    }))
    .expect_err("the name is taken");
    assert!(matches!(again, AwsError::ResourceInUse { .. }), "{again:?}");

    run(client.tag_stream(
        &stream,
        &BTreeMap::from([
            ("site".to_string(), "lab".to_string()),
            ("owner".to_string(), "replaced".to_string()),
        ]),
    ))
    .expect("TagStream");
    let tags =
        run(client.list_tags_for_stream(&StreamRef::Arn(arn.clone()))).expect("ListTagsForStream");
    assert_eq!(
        tags,
        BTreeMap::from([
            ("owner".to_string(), "replaced".to_string()),
            ("site".to_string(), "lab".to_string())
        ])
    );

    let put =
        run(client.data_endpoint(&stream, ApiName::PutMedia)).expect("GetDataEndpoint PUT_MEDIA");
    assert_eq!(put, server.url());
    let get =
        run(client.data_endpoint(&stream, ApiName::GetMedia)).expect("GetDataEndpoint GET_MEDIA");
    assert_eq!(get, server.url());

    // With the server gone, the cached endpoints still answer without any request, while a control-plane call
    // fails with a network error naming the endpoint.
    server.kill9();
    assert_eq!(
        run(client.data_endpoint(&stream, ApiName::PutMedia)).expect("cached"),
        server.url()
    );
    let down = run(client.describe_stream(&stream)).expect_err("server is down");
    assert!(matches!(down, AwsError::Network(_)), "{down:?}");
    assert!(down.to_string().contains(&server.url()), "{down}");

    // Invalidation drops exactly that entry.
    client.invalidate_data_endpoint(&stream, ApiName::PutMedia);
    let refetch = run(client.data_endpoint(&stream, ApiName::PutMedia))
        .expect_err("must ask the server again");
    assert!(matches!(refetch, AwsError::Network(_)), "{refetch:?}");
    assert_eq!(
        run(client.data_endpoint(&stream, ApiName::GetMedia)).expect("still cached"),
        server.url()
    );
}

#[test]
fn wrong_credentials_yield_auth_errors_naming_the_cause() {
    common::init();
    let server = common::LocalServer::start();

    let wrong_secret = KvsClient::new(&AwsSettings {
        secret_key: Some("not-the-secret".into()),
        ..settings(&server)
    })
    .expect("client");
    let e = run(wrong_secret.describe_stream(&StreamRef::Name("any".into())))
        .expect_err("bad signature");
    assert!(e.is_auth(), "{e:?}");
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains("signature") && e.to_string().contains("secret access key"),
        "{e}"
    );
    let (kind, message) = e.to_gst_error("DescribeStream failed");
    assert_eq!(kind, gst::ResourceError::NotAuthorized);
    assert!(message.starts_with("DescribeStream failed: "), "{message}");

    let unknown_key = KvsClient::new(&AwsSettings {
        access_key: Some("AKIDUNKNOWN000000000".into()),
        ..settings(&server)
    })
    .expect("client");
    let e =
        run(unknown_key.describe_stream(&StreamRef::Name("any".into()))).expect_err("unknown key");
    assert!(matches!(e, AwsError::UnrecognizedClient { .. }), "{e:?}");
    assert!(e.to_string().contains("AKIDUNKNOWN000000000"), "{e}");

    // The data plane is guarded too: PutMedia with a wrong secret is refused before any media is accepted.
    let good = KvsClient::new(&settings(&server)).expect("client");
    create(&good, "auth-cam");
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(
        b"\x1a\x45\xdf\xa3",
    ))]);
    let e = run(wrong_secret.put_media(
        &StreamRef::Name("auth-cam".into()),
        &PutMediaParams::default(),
        body,
    ))
    .expect_err("PutMedia with a bad signature");
    assert!(e.is_auth(), "{e:?}");
}

fn capture_dir() -> PathBuf {
    let dir = PathBuf::from("/work/shared/testdata/cpp-producer/video-h264-tags");
    assert!(
        dir.is_dir(),
        "the C++ producer capture this test replays is missing: {} does not exist",
        dir.display()
    );
    dir
}

#[test]
fn put_media_streams_a_body_and_reads_it_back() {
    common::init();
    let server = common::LocalServer::start();
    let client = KvsClient::new(&settings(&server)).expect("client");
    create(&client, "put-cam");
    let stream = StreamRef::Name("put-cam".into());

    // The official producer's body: 3 fragments with absolute timecodes, ending with its closing tag.
    let body_path = capture_dir().join("004-putMedia.body");
    let media = std::fs::read(&body_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", body_path.display()));
    let chunks: Vec<Result<Bytes, std::io::Error>> = media
        .chunks(16 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let params = PutMediaParams {
        timecode_type: TimecodeType::Absolute,
        producer_start_timestamp: Some(1_795_268_499.731),
        ack_required: true,
    };
    let mut response = run(client.put_media(&stream, &params, futures::stream::iter(chunks)))
        .expect("PutMedia accepted");

    let mut parser = AckParser::new();
    let mut persisted = Vec::new();
    while persisted.len() < 3 {
        let chunk = run(response.next_chunk()).expect("ack stream");
        let Some(chunk) = chunk else { break };
        for ack in parser.push(&chunk) {
            let ack = ack.expect("well-formed ack");
            assert_ne!(ack.event_type, AckEventType::Error, "{ack:?}");
            if ack.event_type == AckEventType::Persisted {
                persisted.push(ack.fragment_timecode.expect("timecode"));
            }
        }
    }
    assert_eq!(
        persisted,
        [1_795_268_499_731, 1_795_268_500_731, 1_795_268_501_731]
    );
    drop(response);

    let page = run(client.list_fragments(&ListFragmentsInput {
        stream: stream.clone(),
        selector: Some(FragmentSelector {
            kind: FragmentSelectorKind::ProducerTimestamp,
            start: 1_795_268_000.0,
            end: 1_795_269_000.0,
        }),
        max_results: Some(100),
        next_token: None,
    }))
    .expect("ListFragments");
    let mut fragments = page.fragments;
    fragments.sort_by(|a, b| a.fragment_number.cmp(&b.fragment_number));
    let starts: Vec<f64> = fragments.iter().map(|f| f.producer_timestamp).collect();
    assert_eq!(
        starts,
        [1_795_268_499.731, 1_795_268_500.731, 1_795_268_501.731]
    );
    assert!(fragments.iter().all(|f| f.size > 0));

    let numbers: Vec<String> = fragments
        .iter()
        .map(|f| f.fragment_number.clone())
        .collect();
    let mut media_out = run(client.get_media_for_fragment_list(&stream, &numbers))
        .expect("GetMediaForFragmentList");
    assert_eq!(media_out.content_type.as_deref(), Some("video/webm"));
    let mut received = Vec::new();
    while let Some(chunk) = run(media_out.next_chunk()).expect("media body") {
        received.extend_from_slice(&chunk);
    }
    // Each fragment comes back as its own MKV file, starting with an EBML header.
    let headers = received
        .windows(4)
        .filter(|w| *w == [0x1a, 0x45, 0xdf, 0xa3])
        .count();
    assert_eq!(headers, 3, "one EBML header per fragment");
    assert!(
        received.len() > media.len() / 2,
        "{} bytes back",
        received.len()
    );

    let mut live = run(client.get_media(&stream, &StartSelector::Earliest)).expect("GetMedia");
    let first = run(live.next_chunk())
        .expect("GetMedia body")
        .expect("some media");
    assert!(
        first.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]),
        "GetMedia starts with an EBML header"
    );
}

/// A CA and a server certificate for 127.0.0.1, written as PEM files: (dir, ca.pem, server.pem, server.key).
fn test_pki() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kvs-local test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = (
        dir.path().join("ca.pem"),
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    (dir, paths.0, paths.1, paths.2)
}

#[test]
fn https_trusts_the_ca_file_in_addition_to_the_system_roots() {
    common::init();
    let (_dir, ca, cert, key) = test_pki();
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();
    let server = common::LocalServer::start_with(&["--tls-cert", &cert_arg, "--tls-key", &key_arg]);
    assert!(server.url().starts_with("https://"));

    let trusted = KvsClient::new(&AwsSettings {
        ca_file: Some(ca.clone()),
        ..settings(&server)
    })
    .expect("client");
    create(&trusted, "tls-cam");
    let d = run(trusted.describe_stream(&StreamRef::Name("tls-cam".into())))
        .expect("DescribeStream over HTTPS");
    assert_eq!(d.stream_name, "tls-cam");
    let endpoint =
        run(trusted.data_endpoint(&StreamRef::Name("tls-cam".into()), ApiName::PutMedia))
            .expect("GetDataEndpoint over HTTPS");
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // The system roots alone do not know the test CA: the failure names the certificate problem.
    let untrusted = KvsClient::new(&settings(&server)).expect("client");
    let e = run(untrusted.describe_stream(&StreamRef::Name("tls-cam".into())))
        .expect_err("unknown issuer");
    assert!(matches!(e, AwsError::Config(_)), "{e:?}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("UnknownIssuer") && text.contains("ca-file") && text.contains(&server.url()),
        "{e}"
    );
}

#[test]
fn choices_are_logged_at_info_and_secrets_never() {
    use std::sync::{Arc, Mutex};
    common::init();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    gst::log::set_active(true);
    gst::log::set_threshold_for_name("kvs-aws", gst::DebugLevel::Info);
    let log_fn = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        if cat.name() == "kvs-aws"
            && let Some(text) = msg.get()
            && let Ok(mut l) = sink.lock()
        {
            l.push(text.to_string());
        }
    });

    let server = common::LocalServer::start();
    let client = KvsClient::new(&AwsSettings {
        session_token: Some("SESSION-TOKEN-NOT-FOR-LOGS".into()),
        ..settings(&server)
    })
    .expect("client");
    // Some traffic (the token is not accepted by the server, which does not matter here).
    let _ = run(client.describe_stream(&StreamRef::Name("log-cam".into())));
    gst::log::remove_log_function(log_fn);

    let lines = lines.lock().expect("lines").clone();
    let all = lines.join("\n");
    assert!(
        all.contains(&format!(
            "region us-east-1 (aws-region property), control endpoint {} (endpoint property)",
            server.url()
        )),
        "{all}"
    );
    assert!(
        all.contains("credentials source: access-key/secret-key properties"),
        "{all}"
    );
    assert!(
        !all.contains(common::SECRET_KEY),
        "secret key logged: {all}"
    );
    assert!(
        !all.contains("SESSION-TOKEN-NOT-FOR-LOGS"),
        "session token logged: {all}"
    );
}
