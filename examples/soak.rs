// SPDX-License-Identifier: MPL-2.0
//! Soak: a live stream (videotestsrc -> x264enc -> kvssink) through the fault proxy into kvs-local (a child
//! process), with a kvssrc reading it live through the same proxy, and a fault every `--fault-every` seconds
//! (stall, cut, reset, delay, throttle, half-open, kill -9 of kvs-local). Every minute it prints the RSS of this
//! process and of kvs-local, the fragments sent / persisted / read back and the reconnection counts. At the end it
//! says whether RSS grew after warm-up and whether sent == persisted == read back == stored; the exit code is
//! non-zero if not.
//!
//! ```text
//! cargo build --release -p kvs-local
//! cargo run --release --example soak -- --minutes 30
//! ```
//!
//! Options: `--minutes N` (30), `--fault-every SECONDS` (45), `--warmup-minutes N` (a fifth of the run, at least
//! 1), `--rss-slack-mib N` (8: growth allowed after warm-up besides 10 %). kvs-local is `$KVS_LOCAL_BIN`, else
//! the one next to this example's target directory.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/stress/mod.rs"]
mod stress;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstkvs::aws::{self, AwsSettings, KvsClient, ListFragmentsInput, StreamRef};

use common::{ACCESS_KEY, LocalServer, REGION, SECRET_KEY};
use stress::{Fault, Rig, rss_kib};

const STREAM: &str = "soak";

struct Options {
    minutes: f64,
    fault_every: Duration,
    warmup: Option<Duration>,
    rss_slack_kib: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        minutes: 30.0,
        fault_every: Duration::from_secs(45),
        warmup: None,
        rss_slack_kib: 8 * 1024,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<f64, String> {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{name} needs a non-negative number"))
        };
        match a.as_str() {
            "--minutes" => o.minutes = value("--minutes")?,
            "--fault-every" => {
                o.fault_every = Duration::from_secs_f64(value("--fault-every")?.max(5.0))
            }
            "--warmup-minutes" => {
                o.warmup = Some(Duration::from_secs_f64(value("--warmup-minutes")? * 60.0))
            }
            "--rss-slack-mib" => o.rss_slack_kib = (value("--rss-slack-mib")? * 1024.0) as u64,
            "-h" | "--help" => {
                return Err(
                    "usage: soak [--minutes N] [--fault-every SECONDS] [--warmup-minutes N] \
                            [--rss-slack-mib N]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(o)
}

/// The faults applied in turn, each for a few seconds.
#[derive(Debug, Clone, Copy)]
enum Step {
    Stall(Duration),
    Cut(Duration),
    Reset(Duration),
    Delay(Duration),
    Throttle(Duration),
    HalfOpen(Duration),
    Kill9(Duration),
}

const STEPS: [Step; 7] = [
    Step::Stall(Duration::from_secs(10)),
    Step::Cut(Duration::from_secs(5)),
    Step::Delay(Duration::from_secs(10)),
    Step::Kill9(Duration::from_secs(3)),
    Step::Reset(Duration::from_secs(5)),
    Step::Throttle(Duration::from_secs(10)),
    Step::HalfOpen(Duration::from_secs(5)),
];

fn apply(step: Step, rig: &Rig, server: &mut LocalServer) {
    let hold = |fault: Fault, d: Duration| {
        rig.proxy.set_fault(fault);
        std::thread::sleep(d);
        rig.proxy.set_fault(Fault::None);
    };
    match step {
        Step::Stall(d) => hold(Fault::Stall, d),
        Step::Cut(d) => {
            rig.proxy.set_fault(Fault::Refuse);
            rig.proxy.cut();
            std::thread::sleep(d);
            rig.proxy.set_fault(Fault::None);
        }
        Step::Reset(d) => {
            rig.proxy.set_fault(Fault::Refuse);
            rig.proxy.reset();
            std::thread::sleep(d);
            rig.proxy.set_fault(Fault::None);
        }
        Step::Delay(d) => hold(Fault::Delay(Duration::from_millis(200)), d),
        Step::Throttle(d) => hold(
            Fault::Throttle {
                bytes_per_sec: 100_000,
            },
            d,
        ),
        Step::HalfOpen(d) => hold(Fault::HalfOpenDownstream, d),
        Step::Kill9(d) => {
            server.kill9();
            std::thread::sleep(d);
            server.restart();
        }
    }
}

/// The pid of the kvs-local child serving `data_dir` (the harness does not expose it).
fn server_pid(data_dir: &std::path::Path) -> Option<String> {
    let want = data_dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("kvs-local")) && args.contains(&want) {
            return Some(name);
        }
    }
    None
}

#[derive(Debug, Default)]
struct Counts {
    persisted: BTreeSet<String>,
    persisted_acks: u64,
    read: Vec<String>,
    sink_warnings: u64,
    src_warnings: u64,
    errors: Vec<String>,
    writer_eos: bool,
}

fn structure_u64(s: &gst::Structure, field: &str) -> u64 {
    s.get::<u64>(field).unwrap_or(0)
}

/// Drains both buses into `counts`.
fn pump(writer: &gst::Bus, reader: &gst::Bus, counts: &Mutex<Counts>) {
    for (bus, is_writer) in [(writer, true), (reader, false)] {
        while let Some(msg) = bus.pop() {
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            match msg.view() {
                gst::MessageView::Element(e) => {
                    let Some(s) = e.structure() else { continue };
                    if s.name() == "kvs-fragment-ack"
                        && s.get::<&str>("event-type").ok() == Some("PERSISTED")
                    {
                        c.persisted_acks += 1;
                        c.persisted
                            .insert(s.get::<String>("fragment-number").unwrap_or_default());
                    } else if s.name() == "kvs-fragment" {
                        c.read
                            .push(s.get::<String>("fragment-number").unwrap_or_default());
                    }
                }
                gst::MessageView::Warning(_) if is_writer => c.sink_warnings += 1,
                gst::MessageView::Warning(_) => c.src_warnings += 1,
                gst::MessageView::Error(e) => c.errors.push(format!(
                    "{}: {} ({:?})",
                    if is_writer { "writer" } else { "reader" },
                    e.error(),
                    e.debug()
                )),
                gst::MessageView::Eos(_) if is_writer => c.writer_eos = true,
                gst::MessageView::Eos(_) => c.errors.push("reader: EOS on a live read".into()),
                _ => {}
            }
        }
    }
}

fn stored_fragments(url: &str) -> Result<Vec<String>, String> {
    let client = KvsClient::new(&AwsSettings {
        access_key: Some(ACCESS_KEY.into()),
        secret_key: Some(SECRET_KEY.into()),
        aws_region: Some(REGION.into()),
        endpoint: Some(url.into()),
        ..AwsSettings::default()
    })
    .map_err(|e| e.to_string())?;
    let rt = aws::runtime().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = rt
            .block_on(client.list_fragments(&ListFragmentsInput {
                stream: StreamRef::Name(STREAM.into()),
                selector: None,
                max_results: Some(1000),
                next_token: token.take(),
            }))
            .map_err(|e| e.to_string())?;
        out.extend(page.fragments.into_iter().map(|f| f.fragment_number));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    common::init();
    let total = Duration::from_secs_f64(opts.minutes * 60.0);
    let warmup = opts
        .warmup
        .unwrap_or_else(|| (total / 5).max(Duration::from_secs(60)))
        .min(total);
    let mut server = LocalServer::start();
    let rig = match Rig::new(server.port()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the fault proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let props = format!(
        "endpoint={} access-key={ACCESS_KEY} secret-key={SECRET_KEY} aws-region={REGION} connection-timeout=2",
        rig.endpoint()
    );
    let writer = common::parse_pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast bitrate=1000 ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! kvssink name=sink stream-name={STREAM} {props}"
    ));
    let reader = common::parse_pipeline(&format!(
        "kvssrc name=src stream-name={STREAM} start-selector=earliest {props} ! fakesink sync=false"
    ));
    let (wbus, rbus) = match (writer.bus(), reader.bus()) {
        (Some(w), Some(r)) => (w, r),
        _ => {
            eprintln!("pipelines without a bus");
            return ExitCode::FAILURE;
        }
    };
    let counts = Arc::new(Mutex::new(Counts::default()));
    let started = Instant::now();
    if let Err(e) = writer.set_state(gst::State::Playing) {
        eprintln!("the writer does not start: {e}");
        return ExitCode::FAILURE;
    }
    // kvssrc needs the stream: wait for the first PERSISTED ack (kvssink creates the stream).
    while counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .persisted
        .is_empty()
    {
        pump(&wbus, &rbus, &counts);
        if started.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "no PERSISTED ack within 60 s; server logs:\n{}",
                server.logs()
            );
            let _ = writer.set_state(gst::State::Null);
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = reader.set_state(gst::State::Playing) {
        eprintln!("the reader does not start: {e}");
        return ExitCode::FAILURE;
    }
    let self_pid = std::process::id().to_string();
    println!(
        "soak: {:.0} min, a fault every {} s, warm-up {} s; kvs-local at {}, proxy {}, front {}",
        opts.minutes,
        opts.fault_every.as_secs(),
        warmup.as_secs(),
        server.url(),
        rig.proxy.url(),
        rig.endpoint()
    );
    println!(
        "{:>6} {:>10} {:>10} {:>6} {:>9} {:>6} {:>10} {:>8} {:>6} {:>8}  last fault",
        "min",
        "self MiB",
        "local MiB",
        "sent",
        "persisted",
        "read",
        "reconnects",
        "retries",
        "conns",
        "warnings"
    );
    let mut next_fault = started + opts.fault_every;
    let mut next_report = started + Duration::from_secs(60);
    let mut step = 0usize;
    let mut last_fault = String::from("-");
    // (elapsed, own RSS, kvs-local RSS, kvs-local pid): a kill -9 restarts kvs-local, so its RSS is compared
    // only within one process lifetime.
    let mut samples: Vec<(Duration, u64, u64, String)> = Vec::new();
    let report = |elapsed: Duration,
                  last_fault: &str,
                  server: &LocalServer|
     -> (u64, u64, String) {
        let me = rss_kib(&self_pid).unwrap_or(0);
        let pid = server_pid(&server.data_dir()).unwrap_or_default();
        let local = rss_kib(&pid).unwrap_or(0);
        let stats = writer
            .by_name("sink")
            .map(|s| s.property::<gst::Structure>("stats"));
        let src_stats = reader
            .by_name("src")
            .map(|s| s.property::<gst::Structure>("stats"));
        let c = counts.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "{:>6.1} {:>10.1} {:>10.1} {:>6} {:>9} {:>6} {:>10} {:>8} {:>6} {:>8}  {last_fault}",
            elapsed.as_secs_f64() / 60.0,
            me as f64 / 1024.0,
            local as f64 / 1024.0,
            stats
                .as_ref()
                .map_or(0, |s| structure_u64(s, "fragments-started")),
            c.persisted.len(),
            c.read.len(),
            stats.as_ref().map_or(0, |s| structure_u64(s, "reconnects")),
            src_stats
                .as_ref()
                .map_or(0, |s| structure_u64(s, "retries")),
            rig.proxy.connections_accepted(),
            c.sink_warnings + c.src_warnings,
        );
        (me, local, pid)
    };
    while started.elapsed() < total {
        pump(&wbus, &rbus, &counts);
        if !counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors
            .is_empty()
        {
            break;
        }
        let now = Instant::now();
        if now >= next_fault {
            let s = STEPS[step % STEPS.len()];
            step += 1;
            last_fault = format!("{s:?}");
            // The pipelines keep running on their own threads; the buses are drained after the fault.
            apply(s, &rig, &mut server);
            next_fault = Instant::now() + opts.fault_every;
        }
        if now >= next_report {
            let (me, local, pid) = report(started.elapsed(), &last_fault, &server);
            samples.push((started.elapsed(), me, local, pid));
            next_report += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Drain: EOS waits for the last PERSISTED ack; then the reader gets until it has everything (or 60 s).
    rig.proxy.set_fault(Fault::None);
    writer.send_event(gst::event::Eos::new());
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        pump(&wbus, &rbus, &counts);
        let c = counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.writer_eos || !c.errors.is_empty() || Instant::now() > drain_deadline {
            break;
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = writer
        .by_name("sink")
        .map(|s| s.property::<gst::Structure>("stats"));
    let _ = writer.set_state(gst::State::Null);
    let stored = match stored_fragments(&server.url()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ListFragments failed: {e}");
            let _ = reader.set_state(gst::State::Null);
            return ExitCode::FAILURE;
        }
    };
    let read_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < read_deadline {
        pump(&wbus, &rbus, &counts);
        if counts.lock().unwrap_or_else(|e| e.into_inner()).read.len() >= stored.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (me, local, pid) = report(started.elapsed(), "end", &server);
    samples.push((started.elapsed(), me, local, pid));
    let _ = reader.set_state(gst::State::Null);
    pump(&wbus, &rbus, &counts);

    let c = counts.lock().unwrap_or_else(|e| e.into_inner());
    let sent = stats
        .as_ref()
        .map_or(0, |s| structure_u64(s, "fragments-started"));
    let read_set: BTreeSet<&String> = c.read.iter().collect();
    let read_dups = c.read.len() - read_set.len();
    let mut ok = true;
    println!(
        "\nsummary after {:.1} min, {} faults:",
        started.elapsed().as_secs_f64() / 60.0,
        step
    );
    if !c.writer_eos {
        println!("  FAIL: the writer did not finish (no EOS)");
        ok = false;
    }
    for e in &c.errors {
        println!("  FAIL: error: {e}");
        ok = false;
    }
    let equal = sent as usize == c.persisted.len()
        && c.persisted.len() == stored.len()
        && read_set.len() == stored.len()
        && read_dups == 0
        && c.persisted.iter().collect::<Vec<_>>() == stored.iter().collect::<Vec<_>>();
    println!(
        "  fragments: sent {sent}, persisted {} ({} PERSISTED acks), stored {}, read back {} ({} duplicates): {}",
        c.persisted.len(),
        c.persisted_acks,
        stored.len(),
        c.read.len(),
        read_dups,
        if equal { "all equal" } else { "NOT EQUAL" }
    );
    ok &= equal;
    // RSS: the first sample after warm-up against the last one; for kvs-local, within its last lifetime.
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= warmup).collect();
    let last_pid = samples.last().map(|s| s.3.clone()).unwrap_or_default();
    let local_after: Vec<_> = after.iter().filter(|s| s.3 == last_pid).collect();
    let pairs = [
        (
            "this process",
            after.first().map(|s| s.1),
            after.last().map(|s| s.1),
            after.len(),
        ),
        (
            "kvs-local (since its last restart)",
            local_after.first().map(|s| s.2),
            local_after.last().map(|s| s.2),
            local_after.len(),
        ),
    ];
    for (name, a, b, n) in pairs {
        match (a, b) {
            (Some(a), Some(b)) if n >= 2 => {
                let grew = b > a + a / 10 + opts.rss_slack_kib;
                println!(
                    "  RSS {name}: {:.1} MiB after warm-up -> {:.1} MiB at the end ({n} samples): {}",
                    a as f64 / 1024.0,
                    b as f64 / 1024.0,
                    if grew { "GREW" } else { "no growth" }
                );
                ok &= !grew;
            }
            _ => println!("  RSS {name}: fewer than two samples after warm-up, no comparison"),
        }
    }
    if let Some(s) = &stats {
        println!("  kvssink stats: {s}");
    }
    println!(
        "  proxy: {} connections accepted",
        rig.proxy.connections_accepted()
    );
    println!("{}", if ok { "SOAK PASSED" } else { "SOAK FAILED" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
