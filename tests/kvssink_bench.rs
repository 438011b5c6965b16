// SPDX-License-Identifier: MPL-2.0
//! kvssink benchmarks (ignored by default; run one at a time on a quiet machine):
//!
//! ```text
//! cargo build --release -p gst-plugin-kvs -p kvs-local
//! KVS_BENCH_INPUT=/path/to/1080p.mkv KVS_PLUGIN_DIR=target/release KVS_LOCAL_BIN=target/release/kvs-local \
//!     cargo test --release -p gst-plugin-kvs --test kvssink_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! * `throughput_cpu_and_memory`: the same pre-encoded H.264 file pushed as fast as possible through
//!   `matroskamux streamable=true ! fakesink`, through `matroskamux ! tcpclientsink` to a socket this process
//!   drains, and through `kvssink` into kvs-local, each in its own `gst-launch-1.0` process (user+system CPU and
//!   peak RSS from `wait4`); then the same number of bytes written by a thread of this process to that socket in
//!   1 MiB writes (the raw send floor: the kernel's cost of sending the bytes, which no uploader avoids).
//! * `live_latency`: a 30 fps source in real time (`KVS_BENCH_INPUT` played at its pace, else a live
//!   videotestsrc + x264enc); p50/p90/p99 from the key frame that closes a fragment entering kvssink to that
//!   fragment's PERSISTED acknowledgement (against kvs-local), and from each buffer entering kvssink to its last
//!   byte arriving at a recording HTTP server.

mod common;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::LocalServer;

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[idx.min(values.len() - 1)]
}

/// Runs a gst-launch-1.0 description; returns (CPU seconds, peak RSS KiB, wall s) of that process, from
/// `wait4` (microsecond CPU times).
fn measure(desc: &str, plugin_dir: &str) -> (f64, u64, f64) {
    let started = Instant::now();
    // Reaped by the wait4 below, which also gives its resource usage (std's wait does not).
    #[allow(clippy::zombie_processes)]
    let child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(desc.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gst-launch-1.0");
    let pid = child.id() as libc::pid_t;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr {
        let _ = e.read_to_string(&mut stderr);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child, which std has not reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child; the pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(
        reaped,
        pid,
        "wait4 failed: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "pipeline failed (status {status}): {desc}\n{stderr}"
    );
    let cpu = cpu_seconds(&usage);
    (cpu, usage.ru_maxrss as u64, wall)
}

#[test]
#[ignore = "benchmark: needs KVS_BENCH_INPUT (>= 500 MB 1080p H.264 Matroska) and a quiet machine"]
fn throughput_cpu_and_memory() {
    common::init();
    let input = std::env::var("KVS_BENCH_INPUT").expect("KVS_BENCH_INPUT names the input file");
    let build_dir = std::env::var("KVS_PLUGIN_DIR").unwrap_or_else(|_| "target/debug".into());
    // The plugin alone in a directory: GStreamer stats every file under GST_PLUGIN_PATH at start-up, and a cargo
    // target directory holds thousands (tens of milliseconds of system time in every pipeline measured).
    let plugin_copy = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        std::path::Path::new(&build_dir).join("libgstkvs.so"),
        plugin_copy.path().join("libgstkvs.so"),
    )
    .expect("copy libgstkvs.so from KVS_PLUGIN_DIR");
    let plugin_dir = plugin_copy
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .to_owned();
    let size = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    let server = LocalServer::start();
    // A raw byte-stream file (.h264) goes through h264parse alone, a Matroska file through matroskademux.
    let source = if input.ends_with(".h264") {
        format!("filesrc location={input} ! h264parse")
    } else {
        format!("filesrc location={input} ! matroskademux ! h264parse")
    };
    let baseline = format!(
        "{source} ! video/x-h264,stream-format=avc,alignment=au ! matroskamux streamable=true ! \
         fakesink sync=false"
    );
    let kvssink = format!(
        "{source} ! video/x-h264,stream-format=avc,alignment=au ! kvssink stream-name=bench \
         streaming-type=offline {}",
        server.launch_props()
    );
    // The least any uploader pays: the muxed bytes written to a loopback TCP socket (drained by this process).
    let drain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let drain_port = drain.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in drain.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            });
        }
    });
    let socket = format!(
        "{source} ! video/x-h264,stream-format=avc,alignment=au ! matroskamux streamable=true ! \
         tcpclientsink host=127.0.0.1 port={drain_port} sync=false"
    );
    // Warm the page cache so that every run reads from memory (streamed: a forked child's peak RSS counts the
    // parent's pages until exec).
    if let Ok(mut f) = std::fs::File::open(&input) {
        let _ = std::io::copy(&mut f, &mut std::io::sink());
    }
    let (cpu_b, rss_b, wall_b) = measure(&baseline, &plugin_dir);
    let (cpu_s, _, _) = measure(&socket, &plugin_dir);
    let (cpu_k, rss_k, wall_k) = measure(&kvssink, &plugin_dir);
    let cpu_raw = raw_send_cpu(drain_port, size);
    println!("input: {input} ({:.1} MB)", size as f64 / 1e6);
    println!(
        "baseline matroskamux ! fakesink: cpu {cpu_b:.3} s, peak RSS {rss_b} KiB, wall {wall_b:.2} s"
    );
    println!("socket floor matroskamux ! tcpclientsink: cpu {cpu_s:.3} s");
    println!(
        "kvssink -> kvs-local:            cpu {cpu_k:.3} s, peak RSS {rss_k} KiB, wall {wall_k:.2} s"
    );
    println!(
        "ratio over the socket floor: kvssink {:.3}x, floor over baseline {:.3}x",
        cpu_k / cpu_s.max(1e-9),
        cpu_s / cpu_b.max(1e-9)
    );
    println!(
        "raw send floor ({:.1} MB in 1 MiB writes to a loopback socket): cpu {cpu_raw:.3} s, \
         baseline + raw floor {:.3}x",
        size as f64 / 1e6,
        (cpu_b + cpu_raw) / cpu_b.max(1e-9)
    );
    println!(
        "ratio cpu {:.3}x, RSS delta {:+.1} MiB, kvssink throughput {:.1} MB/s",
        cpu_k / cpu_b.max(1e-9),
        (rss_k as f64 - rss_b as f64) / 1024.0,
        size as f64 / 1e6 / wall_k.max(1e-9)
    );
}

/// User + system CPU seconds of a `getrusage`/`wait4` answer.
fn cpu_seconds(usage: &libc::rusage) -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds (user + system) this thread spends writing `bytes` bytes to a loopback TCP socket in 1 MiB
/// writes: the least the kernel charges any uploader for sending the stream, with no muxing or HTTP at all.
fn raw_send_cpu(port: u16, bytes: u64) -> f64 {
    let thread_cpu = || {
        // SAFETY: an all-zero rusage is a valid value; getrusage fills it for the calling thread.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer is valid for the call.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
        cpu_seconds(&usage)
    };
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the drain");
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let start = thread_cpu();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..n]).expect("write to the drain");
        left -= n as u64;
    }
    drop(conn);
    thread_cpu() - start
}

fn hash_of(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Records, for every SimpleBlock of every PutMedia body it receives, when its last byte arrived (keyed by a
/// hash of the frame). Answers the start-up calls; never acknowledges.
fn recording_server() -> (String, Arc<Mutex<HashMap<u64, Instant>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (url2, arr2) = (url.clone(), arrivals.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let _ = conn.set_nodelay(true);
            let (url, arrivals) = (url2.clone(), arr2.clone());
            std::thread::spawn(move || serve(conn, &url, &arrivals));
        }
    });
    (url, arrivals)
}

fn serve(conn: std::net::TcpStream, url: &str, arrivals: &Mutex<HashMap<u64, Instant>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if path == "/putMedia" {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            read_put_media(&mut reader, arrivals);
            return;
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json = match path.as_str() {
            "/describeStream" => "{\"StreamInfo\":{\"StreamName\":\"bench\",\"StreamARN\":\
                                  \"arn:aws:kinesisvideo:us-east-1:123456789012:stream/bench/1\",\
                                  \"Status\":\"ACTIVE\",\"DataRetentionInHours\":2}}"
                .to_string(),
            "/getDataEndpoint" => format!("{{\"DataEndpoint\":\"{url}\"}}"),
            _ => "{}".to_string(),
        };
        let _ = out.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            )
            .as_bytes(),
        );
    }
}

/// De-chunks the body as it arrives and timestamps each SimpleBlock when its last byte is read.
fn read_put_media(reader: &mut impl BufRead, arrivals: &Mutex<HashMap<u64, Instant>>) {
    let mut parser = kvs_mkv::stream::MkvStreamParser::default();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
            return;
        }
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            return;
        };
        if size == 0 {
            return;
        }
        let mut chunk = vec![0u8; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return;
        }
        let now = Instant::now();
        parser.push(&chunk[..size]);
        while let Ok(Some(ev)) = parser.next_event() {
            if let kvs_mkv::stream::MkvEvent::ClusterChild {
                raw,
                block: Some(b),
            } = ev
            {
                let payload = &raw[raw.len() - b.payload_len..];
                arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(hash_of(payload), now);
            }
        }
    }
}

#[test]
#[ignore = "benchmark: timing-sensitive, run alone"]
fn live_latency() {
    common::init();
    // With KVS_BENCH_INPUT, 600 frames of that pre-encoded file are played in real time (30 fps), so the figures
    // are kvssink's and not an encoder's fighting it for the CPU; otherwise videotestsrc + x264enc encode live
    // (KVS_BENCH_LIVE_SIZE=WxH, default 1280x720).
    let source = match std::env::var("KVS_BENCH_INPUT") {
        Ok(input) => format!(
            "filesrc location={input} ! matroskademux ! h264parse ! identity eos-after=600 ! clocksync ! \
             video/x-h264,stream-format=avc,alignment=au"
        ),
        Err(_) => {
            let size = std::env::var("KVS_BENCH_LIVE_SIZE").unwrap_or_else(|_| "1280x720".into());
            let (w, h) = size.split_once('x').unwrap_or(("1280", "720"));
            format!(
                "videotestsrc is-live=true num-buffers=600 ! video/x-raw,width={w},height={h},framerate=30/1 ! \
                 x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=4000 ! h264parse ! \
                 video/x-h264,stream-format=avc,alignment=au"
            )
        }
    };
    println!("live source: {source}");

    // 1. Key frame closing a fragment -> PERSISTED of that fragment, against kvs-local.
    let server = LocalServer::start();
    let p = common::parse_pipeline(&format!(
        "{source} ! kvssink name=sink stream-name=latency {}",
        server.launch_props()
    ));
    let keyframes: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let persisted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    {
        let k = keyframes.clone();
        p.by_name("sink")
            .and_then(|s| s.static_pad("video_0"))
            .expect("video pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer()
                    && !b.flags().contains(gst::BufferFlags::DELTA_UNIT)
                {
                    k.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now());
                }
                gst::PadProbeReturn::Ok
            });
        let pers = persisted.clone();
        p.bus().expect("bus").set_sync_handler(move |_, msg| {
            if let gst::MessageView::Element(e) = msg.view()
                && let Some(s) = e.structure()
                && s.name() == "kvs-fragment-ack"
                && s.get::<&str>("event-type").ok() == Some("PERSISTED")
            {
                pers.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
            }
            gst::BusSyncReply::Pass
        });
    }
    let r = common::run_pipeline(&p, Duration::from_secs(60));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let keyframes = keyframes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let persisted = persisted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Fragment n is closed by key frame n+1; the last fragment is closed by EOS and left out.
    let mut close_to_persisted: Vec<f64> = persisted
        .iter()
        .enumerate()
        .filter_map(|(n, at)| {
            keyframes
                .get(n + 1)
                .map(|k| at.duration_since(*k).as_secs_f64() * 1000.0)
        })
        .take(keyframes.len().saturating_sub(1))
        .collect();
    let n = close_to_persisted.len();
    println!(
        "fragment close -> PERSISTED over {n} fragments: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        percentile(&mut close_to_persisted, 0.50),
        percentile(&mut close_to_persisted, 0.90),
        percentile(&mut close_to_persisted, 0.99)
    );

    // 2. Buffer entering kvssink -> its last byte read by a server.
    let (url, arrivals) = recording_server();
    let p = common::parse_pipeline(&format!(
        "{source} ! kvssink name=sink stream-name=bench endpoint={url} access-key=AK secret-key=SK \
         aws-region=us-east-1 stop-stream-timeout=1"
    ));
    let entries: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    {
        let e = entries.clone();
        p.by_name("sink")
            .and_then(|s| s.static_pad("video_0"))
            .expect("video pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer()
                    && let Ok(map) = b.map_readable()
                {
                    e.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(hash_of(&map), Instant::now());
                }
                gst::PadProbeReturn::Ok
            });
    }
    let _ = common::run_pipeline(&p, Duration::from_secs(60));
    let entries = entries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut to_wire: Vec<f64> = entries
        .iter()
        .filter_map(|(h, at)| {
            arrivals
                .get(h)
                .map(|w| w.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    println!(
        "buffer -> wire over {} of {} buffers: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        to_wire.len(),
        entries.len(),
        percentile(&mut to_wire, 0.50),
        percentile(&mut to_wire, 0.90),
        percentile(&mut to_wire, 0.99),
        percentile(&mut to_wire, 1.0)
    );
    assert!(
        to_wire.len() * 10 >= entries.len() * 9,
        "most buffers were matched on the wire"
    );
}
