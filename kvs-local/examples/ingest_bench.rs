//! Ingest benchmark: one stream pushed flat out, then 100 streams at 4 Mbit/s each.
//!
//! `cargo run --release -p kvs-local --example ingest_bench [-- --data-dir DIR --seconds N --streams N]`
//!
//! The server runs in-process on its own runtime (threads named `kvs-srv`, plus the store writer thread), the load
//! on another, so the CPU figure counts the server's threads only. Latency is measured by the client from the
//! RECEIVED acknowledgement of a fragment to its PERSISTED acknowledgement. The data directory defaults to a
//! temporary directory (on the same disk as the system's temp dir: fsync cost depends on that disk).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};
use kvs_local::{Config, Credential, Server, sigv4};
use kvs_mkv::ack::{AckEventType, AckParser};
use kvs_mkv::ebml::{self, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

fn credential() -> Credential {
    Credential {
        access_key_id: "AKIDBENCH".into(),
        secret_access_key: "bench-secret".into(),
        session_token: None,
    }
}

fn header() -> Vec<u8> {
    let mut out = kvs_mkv::writer::ebml_header("matroska");
    out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
    let mut info = Vec::new();
    ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
    ebml::write_master_element(&mut out, id::INFO, &info);
    let mut entry = Vec::new();
    ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
    ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
    ebml::write_str_element(&mut entry, id::CODEC_ID, "V_MPEG4/ISO/AVC");
    let mut tracks = Vec::new();
    ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
    ebml::write_master_element(&mut out, id::TRACKS, &tracks);
    out
}

/// One fragment as a list of writes: the cluster start, then one frame per write.
fn fragment(timecode: u64, frames: usize, frame_size: usize) -> Vec<Vec<u8>> {
    let mut out = vec![kvs_mkv::writer::cluster_start(timecode)];
    let payload = vec![0x5Au8; frame_size];
    for i in 0..frames {
        out.push(kvs_mkv::writer::simple_block(
            1,
            (i * 33) as i16,
            i == 0,
            &payload,
        ));
    }
    out
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Latencies (ms) from RECEIVED to PERSISTED, collected per fragment number.
#[derive(Default)]
struct Latencies {
    received: std::collections::HashMap<String, Instant>,
    samples: Vec<f64>,
    persisted: usize,
    errors: usize,
}

async fn open_put(
    addr: SocketAddr,
    stream: &str,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    tokio::net::tcp::OwnedReadHalf,
) {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(&addr.to_string()).unwrap());
    headers.insert("x-amzn-stream-name", HeaderValue::from_str(stream).unwrap());
    headers.insert(
        "x-amzn-fragment-timecode-type",
        HeaderValue::from_static("ABSOLUTE"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sigv4::sign(
        &Method::POST,
        &"/putMedia".parse().unwrap(),
        &mut headers,
        sigv4::EMPTY_SHA256,
        &credential(),
        "us-east-1",
        now,
    )
    .unwrap();
    let mut head = String::from("POST /putMedia HTTP/1.1\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    head.push_str("transfer-encoding: chunked\r\n\r\n");
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(head.as_bytes()).await.unwrap();
    (w, r)
}

/// Reads the ack stream (after the response head) and records latencies until the connection ends.
async fn read_acks(mut r: tokio::net::tcp::OwnedReadHalf, lat: Arc<Mutex<Latencies>>) {
    let mut parser = AckParser::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head_done = false;
    let mut pending = Vec::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if !head_done {
            pending.extend_from_slice(data);
            let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            let rest = pending.split_off(p + 4);
            pending = rest;
            data = &[];
        }
        // Chunk framing lines are not JSON; the ack parser skips blank lines, so strip the size lines crudely by
        // feeding only the JSON objects.
        pending.extend_from_slice(data);
        let text = String::from_utf8_lossy(&pending).to_string();
        let mut consumed = 0;
        for (start, _) in text.match_indices('{') {
            if start < consumed {
                continue;
            }
            if let Some(end) = text[start..].find("}\n") {
                let line = &text[start..start + end + 2];
                for ack in parser.push(line.as_bytes()).into_iter().flatten() {
                    let mut l = lat.lock().await;
                    let number = ack.fragment_number.clone().unwrap_or_default();
                    match ack.event_type {
                        AckEventType::Received => {
                            l.received.insert(number, Instant::now());
                        }
                        AckEventType::Persisted => {
                            if let Some(t) = l.received.remove(&number) {
                                l.samples.push(t.elapsed().as_secs_f64() * 1000.0);
                            }
                            l.persisted += 1;
                        }
                        AckEventType::Error => l.errors += 1,
                        _ => {}
                    }
                }
                consumed = start + end + 2;
            }
        }
        pending.drain(..consumed.min(pending.len()));
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// CPU seconds used by this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) && !comm.starts_with("kvs-store") {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            if let Some(after) = stat.rsplit(") ").next() {
                let f: Vec<&str> = after.split(' ').collect();
                let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                total += (ut + st) / ticks;
            }
        }
    }
    total
}

async fn create_stream(addr: SocketAddr, name: &str) {
    let body = format!("{{\"StreamName\":\"{name}\",\"DataRetentionInHours\":1}}").into_bytes();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(&addr.to_string()).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sigv4::sign(
        &Method::POST,
        &"/createStream".parse().unwrap(),
        &mut headers,
        &sigv4::sha256_hex(&body),
        &credential(),
        "us-east-1",
        now,
    )
    .unwrap();
    let mut req = String::from("POST /createStream HTTP/1.1\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

async fn single_stream(addr: SocketAddr, seconds: u64) {
    create_stream(addr, "bench-single").await;
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let (mut w, r) = open_put(addr, "bench-single").await;
    let reader = tokio::spawn(read_acks(r, lat.clone()));
    w.write_all(&chunk(&header())).await.unwrap();
    // 1 MiB fragments of 32 frames of 32 KiB, each frame its own HTTP chunk.
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut tc = 1_000_000u64;
    let mut fragments = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut batch = Vec::with_capacity(1 << 20);
        for piece in fragment(tc, 32, 32 * 1024) {
            batch.extend_from_slice(&chunk(&piece));
            bytes += piece.len() as u64;
        }
        w.write_all(&batch).await.unwrap();
        tc += 1100;
        fragments += 1;
    }
    w.write_all(&chunk(&kvs_mkv::writer::tags_element(&[(
        kvs_mkv::tags::END_OF_FRAGMENT,
        "",
    )])))
    .await
    .unwrap();
    w.write_all(b"0\r\n\r\n").await.unwrap();
    loop {
        if lat.lock().await.persisted >= fragments
            || started.elapsed() > Duration::from_secs(seconds + 30)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(w);
    reader.abort();
    let mut l = lat.lock().await;
    let errors = l.errors;
    let persisted = l.persisted;
    let p50 = percentile(&mut l.samples, 0.5);
    let p99 = percentile(&mut l.samples, 0.99);
    println!(
        "single stream: {:.1} MB/s ({} fragments of 1 MiB, {} persisted, {} errors in {:.1} s); RECEIVED->PERSISTED p50 {:.1} ms, p99 {:.1} ms",
        bytes as f64 / elapsed / 1e6,
        fragments,
        persisted,
        errors,
        elapsed,
        p50,
        p99
    );
}

async fn many_streams(addr: SocketAddr, streams: usize, seconds: u64) {
    for i in 0..streams {
        create_stream(addr, &format!("bench-{i}")).await;
    }
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let cpu_before = thread_cpu("kvs-srv");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            // Stagger the starts over the first second.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1000) / streams as u64)).await;
            let (mut w, r) = open_put(addr, &format!("bench-{i}")).await;
            let reader = tokio::spawn(read_acks(r, lat));
            w.write_all(&chunk(&header())).await.unwrap();
            // 4 Mbit/s = 500 kB/s: 1 s fragments of 30 frames of 16 666 bytes, one frame every 33 ms.
            let mut tc = 1_000_000u64;
            let mut tick = tokio::time::interval(Duration::from_micros(33_333));
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                for piece in fragment(tc, 30, 16_666) {
                    tick.tick().await;
                    if w.write_all(&chunk(&piece)).await.is_err() {
                        return;
                    }
                }
                tc += 1000;
            }
            let _ = w
                .write_all(&chunk(&kvs_mkv::writer::tags_element(&[(
                    kvs_mkv::tags::END_OF_FRAGMENT,
                    "",
                )])))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = w.write_all(b"0\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            reader.abort();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu("kvs-srv") - cpu_before;
    let mut l = lat.lock().await;
    let persisted = l.persisted;
    let errors = l.errors;
    let p50 = percentile(&mut l.samples, 0.5);
    let p99 = percentile(&mut l.samples, 0.99);
    let max = l.samples.iter().cloned().fold(0.0, f64::max);
    println!(
        "{streams} streams x 4 Mbit/s for {seconds} s: server CPU {:.0}% of one core; {} fragments persisted, {} errors; \
         RECEIVED->PERSISTED p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        cpu / elapsed * 100.0,
        persisted,
        errors,
        p50,
        p99,
        max
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut data_dir = None;
    let mut seconds = 10u64;
    let mut streams = 100usize;
    let mut single = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--skip-single" => single = false,
            "--data-dir" => data_dir = args.next(),
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--streams" => streams = args.next().and_then(|v| v.parse().ok()).unwrap_or(streams),
            other => {
                eprintln!(
                    "unknown argument {other}; use --data-dir DIR --seconds N --streams N --skip-single"
                );
                std::process::exit(2);
            }
        }
    }
    // RUST_LOG=kvs_local::store=debug shows each group commit's write, sync and commit times.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = data_dir
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kvs-srv")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-cli")
        .enable_all()
        .build()
        .expect("client runtime");
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), &dir);
    config.add_credential(credential());
    let server = server_rt
        .block_on(Server::start(config))
        .expect("server starts");
    let addr = server.local_addr();
    println!("kvs-local ingest benchmark, data in {}", dir.display());
    if single {
        client_rt.block_on(single_stream(addr, seconds));
    }
    client_rt.block_on(many_streams(addr, streams, seconds.max(10)));
    server_rt.block_on(server.shutdown());
}
