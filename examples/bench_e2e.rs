// SPDX-License-Identifier: MPL-2.0
//! End-to-end latency on loopback: a live H.264 stream into kvssink -> kvs-local (child process) -> kvssrc reading
//! live (GetMedia) -> matroskademux, in one process. Each encoded frame is recognised on both sides by a hash of
//! its bytes (H.264 access units cross Matroska unchanged), and the time from the frame entering kvssink to the
//! same frame leaving the demuxer is reported (p50/p90/p99/max over all frames, and over the key frames, which
//! open a fragment and so wait for the whole fragment: kvs-local serves a fragment once it is complete).
//!
//! ```text
//! cargo build --release -p kvs-local && cargo run --release --example bench_e2e -- [--seconds 10] [--gop 30]
//! ```
//! Prints one line starting with `BENCH e2e`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::LocalServer;

fn hash_of(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// (time the frame entered kvssink, whether it is a key frame), by hash of its bytes.
type Entries = Arc<Mutex<HashMap<u64, (Instant, bool)>>>;

fn main() -> ExitCode {
    let mut seconds = 10u32;
    let mut gop = 30u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args
            .next()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| *v > 0);
        match (a.as_str(), v) {
            ("--seconds", Some(v)) => seconds = v,
            ("--gop", Some(v)) => gop = v,
            _ => {
                eprintln!("usage: bench_e2e [--seconds N] [--gop FRAMES]");
                return ExitCode::from(2);
            }
        }
    }
    common::init();
    let server = LocalServer::start();
    let props = server.launch_props();
    let frames = seconds * 30;
    // The stream must exist before kvssrc reads it live: a one-fragment upload creates it.
    let source = |n: u32| {
        format!(
            "videotestsrc is-live=true num-buffers={n} ! video/x-raw,width=1280,height=720,framerate=30/1 ! \
             x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=4000 ! h264parse ! \
             video/x-h264,stream-format=avc,alignment=au"
        )
    };
    let first = common::run_pipeline(
        &common::parse_pipeline(&format!(
            "{} ! kvssink stream-name=e2e {props}",
            source(gop)
        )),
        Duration::from_secs(60),
    );
    if !first.eos || !first.errors.is_empty() {
        eprintln!("the first upload failed: {:?}", first.errors);
        return ExitCode::FAILURE;
    }
    let writer = common::parse_pipeline(&format!(
        "{} ! kvssink name=sink stream-name=e2e {props}",
        source(frames)
    ));
    let reader = common::parse_pipeline(&format!(
        "kvssrc stream-name=e2e start-selector=now {props} ! matroskademux ! \
         video/x-h264 ! fakesink name=out sync=false"
    ));
    let entries: Entries = Arc::default();
    let exits: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let e = entries.clone();
    let Some(sink_pad) = writer.by_name("sink").and_then(|s| s.static_pad("video_0")) else {
        eprintln!("kvssink has no video_0 pad");
        return ExitCode::FAILURE;
    };
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(b) = info.buffer()
            && let Ok(map) = b.map_readable()
        {
            let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
            e.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hash_of(&map), (Instant::now(), key));
        }
        gst::PadProbeReturn::Ok
    });
    let x = exits.clone();
    let Some(out_pad) = reader.by_name("out").and_then(|s| s.static_pad("sink")) else {
        eprintln!("no fakesink pad");
        return ExitCode::FAILURE;
    };
    out_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(b) = info.buffer()
            && let Ok(map) = b.map_readable()
        {
            x.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((hash_of(&map), Instant::now()));
        }
        gst::PadProbeReturn::Ok
    });
    if reader.set_state(gst::State::Playing).is_err() {
        eprintln!("the reader does not start");
        return ExitCode::FAILURE;
    }
    // Let the first GetMedia reach the server before the frames start.
    std::thread::sleep(Duration::from_millis(1000));
    let w = common::run_pipeline(&writer, Duration::from_secs(u64::from(seconds) + 60));
    // The last fragment is complete at EOS; give the reader a moment to deliver it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && exits.lock().unwrap_or_else(|p| p.into_inner()).len() < frames as usize
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = reader.set_state(gst::State::Null);
    if !w.eos || !w.errors.is_empty() {
        eprintln!("the upload failed: {:?}", w.errors);
        return ExitCode::FAILURE;
    }
    let entries = entries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let exits = exits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut all = Vec::new();
    let mut keys = Vec::new();
    for (h, out) in &exits {
        if let Some((inp, key)) = entries.get(h) {
            let ms = out.saturating_duration_since(*inp).as_secs_f64() * 1000.0;
            all.push(ms);
            if *key {
                keys.push(ms);
            }
        }
    }
    all.sort_by(f64::total_cmp);
    keys.sort_by(f64::total_cmp);
    println!(
        "BENCH e2e kvssink -> kvs-local -> kvssrc, 720p30, {gop}-frame fragments: {} of {} frames matched; \
         all frames p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms; key frames p50 {:.1} ms p99 {:.1} ms",
        all.len(),
        entries.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
        percentile(&keys, 0.5),
        percentile(&keys, 0.99)
    );
    if all.len() < entries.len() * 9 / 10 {
        eprintln!("fewer than 90 % of the frames came back");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
