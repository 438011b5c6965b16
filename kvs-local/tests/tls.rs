//! HTTPS with --tls-cert/--tls-key: the same API over rustls.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let srv = TestServer::start_with(|c| {
        c.tls = Some(kvs_local::TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let c = srv.client();
    let body = json!({"StreamName": "tls-stream"}).to_string().into_bytes();
    let headers = c.signed_headers("/createStream", &body, common::now_secs());
    let resp = http
        .post(format!(
            "https://localhost:{}/createStream",
            srv.addr.port()
        ))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        v["StreamARN"]
            .as_str()
            .unwrap()
            .contains("stream/tls-stream/")
    );
    // The data endpoint is the https URL.
    let body = json!({"StreamName": "tls-stream", "APIName": "PUT_MEDIA"})
        .to_string()
        .into_bytes();
    let headers = c.signed_headers("/getDataEndpoint", &body, common::now_secs());
    let resp = http
        .post(format!(
            "https://localhost:{}/getDataEndpoint",
            srv.addr.port()
        ))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["DataEndpoint"], srv.url.as_str());
    srv.stop().await;
}

#[tokio::test]
async fn bad_tls_files_fail_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.pem");
    let mut c = common::base_config(dir.path());
    c.tls = Some(kvs_local::TlsFiles {
        cert: cert.clone(),
        key: cert.clone(),
    });
    let err = kvs_local::Server::start(c)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
