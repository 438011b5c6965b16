//! The environment as a source of credentials, region, endpoint and CA file. Environment variables are
//! process-wide, so this file holds a single test that changes them step by step.

mod common;

use std::time::Duration;

use gstkvs::aws::credentials::{CredentialSource, CredentialsProvider};
use gstkvs::aws::endpoint::{EndpointSource, RegionSource};
use gstkvs::aws::{AwsError, AwsSettings, Canceller, KvsClient, StreamRef, WaitError, wait};

fn run<T>(future: impl std::future::Future<Output = Result<T, AwsError>>) -> Result<T, AwsError> {
    match wait(&Canceller::new(), future, Some(Duration::from_secs(30))) {
        Ok(v) => Ok(v),
        Err(WaitError::Failed(e)) => Err(e),
        Err(other) => panic!("the call did not complete: {other}"),
    }
}

fn set(name: &str, value: &str) {
    // SAFETY: this test binary runs one test, and no other thread reads the environment while it changes.
    unsafe { std::env::set_var(name, value) }
}

fn unset(name: &str) {
    // SAFETY: as in `set`.
    unsafe { std::env::remove_var(name) }
}

#[test]
fn environment_credentials_region_endpoint_and_ca_file() {
    common::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    let credentials = dir.path().join("credentials");
    std::fs::write(&config, "[profile work]\nregion = eu-north-1\n").expect("config file");
    std::fs::write(
        &credentials,
        "[work]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .expect("credentials file");
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KINESIS_VIDEO",
        "CONTROL_PLANE_URI",
        "KVSSINK_CA_CERT_PATH",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        unset(var);
    }
    set("AWS_EC2_METADATA_DISABLED", "true");
    set("AWS_CONFIG_FILE", &config.display().to_string());
    set(
        "AWS_SHARED_CREDENTIALS_FILE",
        &credentials.display().to_string(),
    );

    // 1. Environment variables, through the default chain, sign real requests.
    let server = common::LocalServer::start();
    set("AWS_ACCESS_KEY_ID", common::ACCESS_KEY);
    set("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
    set("AWS_REGION", common::REGION);
    set("AWS_ENDPOINT_URL_KINESIS_VIDEO", &server.url());
    let client = KvsClient::new(&AwsSettings::default()).expect("client");
    assert_eq!(
        client.credential_source(),
        &CredentialSource::DefaultChain { profile: None }
    );
    let resolved = run(async { client.resolved().await.cloned() }).expect("resolved");
    assert_eq!(resolved.region, common::REGION);
    assert_eq!(resolved.region_source, RegionSource::Env("AWS_REGION"));
    assert_eq!(resolved.endpoint, server.url());
    assert_eq!(
        resolved.endpoint_source,
        EndpointSource::Env("AWS_ENDPOINT_URL_KINESIS_VIDEO")
    );
    let e = run(client.describe_stream(&StreamRef::Name("env-cam".into()))).expect_err("no stream");
    assert!(
        e.is_not_found(),
        "signed with the environment's keys, the server got as far as the stream: {e:?}"
    );

    // 2. Without keys in the environment, the aws-profile property selects the shared files' profile for the
    //    credentials and the region.
    unset("AWS_ACCESS_KEY_ID");
    unset("AWS_SECRET_ACCESS_KEY");
    unset("AWS_REGION");
    unset("AWS_ENDPOINT_URL_KINESIS_VIDEO");
    let with_profile = AwsSettings {
        aws_profile: Some("work".into()),
        ..Default::default()
    };
    let provider = CredentialsProvider::from_settings(&with_profile).expect("provider");
    let c = run(provider.credentials()).expect("profile credentials");
    assert_eq!(c.access_key_id(), "AKIDFROMPROFILE");
    assert_eq!(c.secret_access_key(), "profile-secret");
    let client = KvsClient::new(&with_profile).expect("client");
    let resolved = run(async { client.resolved().await.cloned() }).expect("resolved");
    assert_eq!(resolved.region, "eu-north-1");
    assert_eq!(resolved.region_source, RegionSource::Profile("work".into()));
    assert_eq!(
        resolved.endpoint,
        "https://kinesisvideo.eu-north-1.amazonaws.com"
    );

    // 3. No source at all: the error says what was tried.
    let nothing = CredentialsProvider::from_settings(&AwsSettings {
        aws_profile: Some("absent".into()),
        ..Default::default()
    })
    .expect("provider");
    let e = run(nothing.credentials()).expect_err("no credentials anywhere");
    assert!(e.is_auth());
    assert!(
        e.to_string().contains("credential-path")
            && e.to_string().contains("default AWS credential chain"),
        "{e}"
    );

    // 4. Endpoint variables in their order, including the C++ producer's CONTROL_PLANE_URI.
    set("CONTROL_PLANE_URI", "https://cp.example.com/");
    let static_keys = AwsSettings {
        access_key: Some("AK".into()),
        secret_key: Some("SK".into()),
        aws_region: Some("cn-north-1".into()),
        ..Default::default()
    };
    let client = KvsClient::new(&static_keys).expect("client");
    let resolved = run(async { client.resolved().await.cloned() }).expect("resolved");
    assert_eq!(resolved.endpoint, "https://cp.example.com");
    assert_eq!(
        resolved.endpoint_source,
        EndpointSource::Env("CONTROL_PLANE_URI")
    );
    set("AWS_ENDPOINT_URL", "http://global.example.com:8443");
    let client = KvsClient::new(&static_keys).expect("client");
    let resolved = run(async { client.resolved().await.cloned() }).expect("resolved");
    assert_eq!(resolved.endpoint, "http://global.example.com:8443");
    unset("AWS_ENDPOINT_URL");
    unset("CONTROL_PLANE_URI");
    let client = KvsClient::new(&static_keys).expect("client");
    let resolved = run(async { client.resolved().await.cloned() }).expect("resolved");
    assert_eq!(
        resolved.endpoint,
        "https://kinesisvideo.cn-north-1.amazonaws.com.cn"
    );

    // 5. KVSSINK_CA_CERT_PATH is honoured (and a wrong one is reported by path).
    set("KVSSINK_CA_CERT_PATH", "/nonexistent/kvs-ca.pem");
    let e = KvsClient::new(&static_keys).expect_err("unreadable CA file");
    assert!(e.to_string().contains("/nonexistent/kvs-ca.pem"), "{e}");
    unset("KVSSINK_CA_CERT_PATH");
}
