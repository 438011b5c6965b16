//! The `kvs-local` binary: start-up line, --help, SIGTERM, and durability across `kill -9`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Client, mkv};
use kvs_mkv::ack::AckEventType;
use serde_json::json;

fn spawn(dir: &std::path::Path, extra: &[&str]) -> common::Binary {
    let p = common::spawn_binary(dir, extra, &[]);
    assert!(p.url.starts_with("http://127.0.0.1:"), "{}", p.url);
    p
}

fn client(p: &common::Binary) -> Client {
    p.client.clone()
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvs-local"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--region",
        "--credentials",
        "--tls-cert",
        "--tls-key",
        "--max-connection-duration",
        "--ordered-list-fragments",
        "--put-media-idle-timeout",
        "--idle-ack-interval-ms",
        "--get-media-idle-end-ms",
        "--no-clock-skew-check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn without_credentials_it_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvs-local"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"));
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_a_credentials_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "# keys\nAKIDFILE secretfile\n").unwrap();
    let mut p = spawn(
        &dir.path().join("data"),
        &["--credentials", creds.to_str().unwrap()],
    );
    let addr = p.url.trim_start_matches("http://").parse().unwrap();
    let from_file = Client::new(
        addr,
        kvs_local::Credential {
            access_key_id: "AKIDFILE".into(),
            secret_access_key: "secretfile".into(),
            session_token: None,
        },
    );
    from_file.call("/listStreams", json!({})).await.ok();
    client(&p).call("/listStreams", json!({})).await.ok();
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut waited = 0;
    let exit = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            waited < 100,
            "kvs-local did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    };
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn persisted_fragments_survive_kill_9_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = spawn(&data, &[]);
    let c = client(&p);
    c.create_stream("durable", 24).await;
    let mut put = c.put_media("durable", &[]).await;
    put.chunk(&mkv::video_header()).await;
    let mut sent = Vec::new();
    for i in 0..6u64 {
        let cluster = mkv::cluster(1_000_000 + i * 1000, 5, 3000 + i as usize);
        sent.push(cluster.clone());
        put.chunk(&cluster).await;
    }
    // Fragments 0..5 are complete (each followed by another cluster start); wait for their PERSISTED.
    let mut persisted = Vec::new();
    while persisted.len() < 5 {
        let a = put.until(AckEventType::Persisted).await;
        persisted.push(a.fragment_number.unwrap());
    }
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let p2 = spawn(&data, &[]);
    let c2 = client(&p2);
    let mut listed: Vec<String> = c2
        .fragments("durable")
        .await
        .iter()
        .map(|f| f["FragmentNumber"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    // Every PERSISTED fragment is there (the sixth was never acknowledged as persisted and may or may not be).
    for n in &persisted {
        assert!(
            listed.contains(n),
            "persisted fragment {n} lost after kill -9"
        );
    }
    let media = c2
        .get_media("durable", json!({"StartSelectorType": "EARLIEST"}))
        .await
        .ok();
    let docs = common::parse_chain(&media.body);
    for (doc, cluster) in docs.iter().zip(&sent).take(5) {
        assert_eq!(
            &doc.cluster_raw, cluster,
            "a fragment reads back different after kill -9"
        );
    }
    // New fragments get higher numbers than the old ones.
    let mut put = c2.put_media("durable", &[]).await;
    let mut body = mkv::video_header();
    body.extend(mkv::cluster(2_000_000, 2, 10));
    body.extend(mkv::end_of_fragment());
    put.chunk(&body).await;
    let newest = put
        .until(AckEventType::Persisted)
        .await
        .fragment_number
        .unwrap();
    assert!(listed.iter().all(|n| *n < newest));
    put.finish().await;
    let mut p2 = p2;
    p2.child.kill().unwrap();
    p2.child.wait().unwrap();
}
