// SPDX-License-Identifier: MPL-2.0
//! Network faults and server crashes during live streams, through the loopback fault proxy (see tests/stress):
//! kvssink must lose no fragment, store no acknowledged fragment twice and resume within 2 s of the network or
//! the server being back; kvssrc must output every fragment exactly once across the same faults.
//!
//! Each test streams live video for about 20 s; run them with `cargo test --test faults -- --test-threads=1`
//! (they measure recovery times, which parallel tests on 2 cores would distort).

mod common;
mod stress;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstkvs::aws::Fragment;
use kvs_fault_proxy::disk;

use common::{ACCESS_KEY, LocalServer, REGION, SECRET_KEY};
use stress::{Fault, Rig};

/// Frames per fragment: x264 key-int-max at 30 fps, one fragment a second.
const GOP: u32 = 30;
/// How soon after the network or the server is back a PERSISTED ack must arrive.
const RESUME_LIMIT: Duration = Duration::from_secs(2);

fn h264_live(frames: u32) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max={GOP} speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au"
    )
}

fn props(endpoint: &str) -> String {
    format!(
        "endpoint={endpoint} access-key={ACCESS_KEY} secret-key={SECRET_KEY} aws-region={REGION} \
         connection-timeout=2"
    )
}

/// Every fragment of the stream straight from kvs-local (not through the proxy), in fragment-number order.
fn list_all(server: &LocalServer, stream: &str) -> Vec<Fragment> {
    common::list_fragments(&server.url(), stream)
}

fn producer_ms(f: &Fragment) -> u64 {
    (f.producer_timestamp * 1000.0).round() as u64
}

/// Frames matroskademux finds in the given fragments (GetMediaForFragmentList, straight from kvs-local).
fn frames_in(server: &LocalServer, stream: &str, fragments: &[&Fragment]) -> usize {
    let media = common::fragment_list_media(&server.url(), stream, fragments.iter().copied());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stored.mkv");
    std::fs::write(&path, &media).expect("write media");
    common::count_demuxed(&format!(
        "filesrc location=\"{}\" ! matroskademux name=d d.video_0 ! queue ! fakesink name=v sync=false",
        path.display()
    ))
    .0
}

/// What a fault does and when.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// Nothing crosses the proxy for `lasting`; connections stay open.
    Stall { at: Duration, lasting: Duration },
    /// Current connections are closed (with a reset or a FIN) and new ones refused for `lasting`.
    Cut {
        at: Duration,
        lasting: Duration,
        reset: bool,
    },
    /// kvs-local is killed with SIGKILL and started again (same port, same data) after `lasting`.
    Kill { at: Duration, lasting: Duration },
}

/// Applies `outage`; returns when the network or the server is back, and the instant it was.
fn inflict(outage: Outage, rig: &Rig, server: &mut LocalServer) -> Instant {
    match outage {
        Outage::Stall { at, lasting } => {
            std::thread::sleep(at);
            rig.proxy.set_fault(Fault::Stall);
            std::thread::sleep(lasting);
            rig.proxy.set_fault(Fault::None);
        }
        Outage::Cut { at, lasting, reset } => {
            std::thread::sleep(at);
            rig.proxy.set_fault(Fault::Refuse);
            if reset {
                rig.proxy.reset();
            } else {
                rig.proxy.cut();
            }
            std::thread::sleep(lasting);
            rig.proxy.set_fault(Fault::None);
        }
        Outage::Kill { at, lasting } => {
            std::thread::sleep(at);
            server.kill9();
            std::thread::sleep(lasting);
            server.restart();
        }
    }
    Instant::now()
}

/// A PERSISTED acknowledgement as kvssink reported it, with when it arrived.
#[derive(Debug, Clone)]
struct Persisted {
    number: String,
    timecode: u64,
    at: Instant,
}

/// Streams `frames` live frames through the rig into `stream` while `outage` happens, then checks what a user
/// relies on: EOS without error, every fragment stored, no acknowledged fragment stored twice, every PERSISTED
/// ack naming a stored fragment, every frame decodable, and the first PERSISTED ack after recovery within
/// [`RESUME_LIMIT`].
fn kvssink_through(outage: Outage, stream: &str, frames: u32) {
    common::init();
    let mut server = LocalServer::start();
    let rig = Rig::new(server.port()).expect("fault proxy");
    let pipeline = common::parse_pipeline(&format!(
        "{} ! kvssink name=sink stream-name={stream} {}",
        h264_live(frames),
        props(&rig.endpoint())
    ));
    let persisted = Arc::new(Mutex::new(Vec::<Persisted>::new()));
    let started = Instant::now();
    let (result, back_at) = std::thread::scope(|scope| {
        let server = &mut server;
        let rig = &rig;
        let fault = scope.spawn(move || inflict(outage, rig, server));
        let p = persisted.clone();
        let r = common::run_pipeline_with(&pipeline, Duration::from_secs(150), move |msg| {
            if let gst::MessageView::Element(e) = msg.view()
                && let Some(s) = e.structure().filter(|s| s.name() == "kvs-fragment-ack")
                && s.get::<&str>("event-type").ok() == Some("PERSISTED")
            {
                p.lock().unwrap().push(Persisted {
                    number: s.get::<String>("fragment-number").unwrap_or_default(),
                    timecode: s.get::<u64>("timecode").unwrap_or(0),
                    at: Instant::now(),
                });
            }
        });
        (r, fault.join().expect("fault thread"))
    });
    let persisted = persisted.lock().unwrap().clone();
    let report = format!(
        "outage {outage:?} ended {:.1} s after the start; result {result:?}\nPERSISTED acks: {persisted:?}\n\
         proxy: {} connections, {} B up, {} B down; front rewrote {} data endpoints\nserver logs:\n{}",
        back_at.duration_since(started).as_secs_f64(),
        rig.proxy.connections_accepted(),
        rig.proxy.bytes_upstream(),
        rig.proxy.bytes_downstream(),
        rig.front.rewrites(),
        server.logs()
    );
    assert!(result.errors.is_empty(), "errors: {report}");
    assert!(result.eos, "no EOS: {report}");
    assert!(
        rig.front.rewrites() >= 1 && rig.proxy.bytes_upstream() > 100_000,
        "the media did not go through the fault proxy: {report}"
    );

    let stored = list_all(&server, stream);
    let expected = frames.div_ceil(GOP) as usize;
    // No fragment lost: one stored fragment per group of pictures, by producer timestamp.
    let mut by_time: BTreeMap<u64, Vec<&Fragment>> = BTreeMap::new();
    for f in &stored {
        by_time.entry(producer_ms(f)).or_default().push(f);
    }
    assert_eq!(
        by_time.len(),
        expected,
        "distinct fragments stored {} != {expected} sent: {stored:?}\n{report}",
        by_time.len()
    );
    // No acknowledged fragment stored twice, and every acknowledgement names a stored fragment.
    let numbers: BTreeSet<&str> = stored.iter().map(|f| f.fragment_number.as_str()).collect();
    for ack in &persisted {
        assert!(
            numbers.contains(ack.number.as_str()),
            "PERSISTED {} is not in ListFragments: {stored:?}\n{report}",
            ack.number
        );
        let copies = by_time.get(&ack.timecode).map_or(0, Vec::len);
        assert_eq!(
            copies, 1,
            "acknowledged fragment with timecode {} is stored {copies} times\n{report}",
            ack.timecode
        );
    }
    let acked: BTreeSet<&str> = persisted.iter().map(|a| a.number.as_str()).collect();
    assert_eq!(
        acked.len(),
        persisted.len(),
        "a fragment was acknowledged PERSISTED twice\n{report}"
    );
    // Every frame can be read back (one copy of each fragment).
    let one_each: Vec<&Fragment> = by_time.values().map(|v| v[0]).collect();
    assert_eq!(
        frames_in(&server, stream, &one_each),
        frames as usize,
        "frames read back\n{report}"
    );
    // Resumed promptly.
    let next = persisted
        .iter()
        .find(|a| a.at >= back_at)
        .unwrap_or_else(|| panic!("no PERSISTED ack after the outage ended\n{report}"));
    let resume = next.at.duration_since(back_at);
    eprintln!("{outage:?}: first PERSISTED ack {resume:?} after recovery");
    assert!(
        resume <= RESUME_LIMIT,
        "first PERSISTED ack came {resume:?} after recovery (limit {RESUME_LIMIT:?})\n{report}"
    );
}

#[test]
fn kvssink_loses_nothing_across_a_10s_stall() {
    kvssink_through(
        Outage::Stall {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
        },
        "sink-stall",
        600,
    );
}

#[test]
fn kvssink_loses_nothing_across_a_10s_cut() {
    kvssink_through(
        Outage::Cut {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
            reset: false,
        },
        "sink-cut",
        600,
    );
}

#[test]
fn kvssink_loses_nothing_across_a_10s_reset() {
    kvssink_through(
        Outage::Cut {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
            reset: true,
        },
        "sink-reset",
        600,
    );
}

#[test]
fn kvssink_loses_nothing_across_a_kill_9_and_restart() {
    kvssink_through(
        Outage::Kill {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(5),
        },
        "sink-kill",
        600,
    );
}

/// Writes `frames` live frames straight into kvs-local (no proxy) while a kvssrc reads the stream live through
/// the rig and `outage` happens on the reader's side (or to the server). Then every stored fragment must have
/// come out of kvssrc exactly once, in order.
fn kvssrc_through(outage: Outage, stream: &str, frames: u32) {
    common::init();
    let mut server = LocalServer::start();
    let rig = Rig::new(server.port()).expect("fault proxy");
    // The stream must exist before kvssrc asks for it.
    let first = common::run_pipeline(
        &common::parse_pipeline(&format!(
            "{} ! kvssink stream-name={stream} {}",
            h264_live(GOP),
            server.launch_props()
        )),
        Duration::from_secs(60),
    );
    assert!(first.eos && first.errors.is_empty(), "{first:?}");

    let reader = common::parse_pipeline(&format!(
        "kvssrc name=src stream-name={stream} start-selector=earliest {} ! fakesink sync=false",
        props(&rig.endpoint())
    ));
    let writer = common::parse_pipeline(&format!(
        "{} ! kvssink stream-name={stream} {}",
        h264_live(frames),
        server.launch_props()
    ));
    let mut seen: Vec<String> = Vec::new();
    let mut incomplete = 0usize;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    reader.set_state(gst::State::Playing).expect("reader plays");
    let bus = reader.bus().expect("bus");
    let write_result = std::thread::scope(|scope| {
        let server = &mut server;
        let rig = &rig;
        let writer = &writer;
        let w = scope.spawn(move || common::run_pipeline(writer, Duration::from_secs(150)));
        let f = scope.spawn(move || inflict(outage, rig, server));
        // Read while the writer runs, and until nothing new has come for 8 s after it finished.
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(200);
        loop {
            if Instant::now() > deadline {
                errors.push("reader timed out".to_string());
                break;
            }
            if w.is_finished() && f.is_finished() && quiet_since.elapsed() > Duration::from_secs(8)
            {
                break;
            }
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure().filter(|s| s.name() == "kvs-fragment") {
                        seen.push(s.get::<String>("fragment-number").unwrap_or_default());
                        if s.get::<bool>("complete") != Ok(true) {
                            incomplete += 1;
                        }
                        quiet_since = Instant::now();
                    }
                }
                gst::MessageView::Error(e) => {
                    errors.push(format!("{} ({:?})", e.error(), e.debug()));
                    break;
                }
                gst::MessageView::Warning(w) => {
                    warnings.push(format!("{} ({:?})", w.error(), w.debug()));
                }
                gst::MessageView::Eos(_) => {
                    errors.push("kvssrc ended a live read with EOS".to_string());
                    break;
                }
                _ => {}
            }
        }
        f.join().expect("fault thread");
        w.join().expect("writer thread")
    });
    reader.set_state(gst::State::Null).expect("reader stops");
    let stored: Vec<String> = list_all(&server, stream)
        .into_iter()
        .map(|f| f.fragment_number)
        .collect();
    let report = format!(
        "outage {outage:?}\nwriter: {write_result:?}\nreader errors {errors:?}\nreader warnings {warnings:?}\n\
         read {seen:?}\nstored {stored:?}\nproxy: {} connections, {} B down\nserver logs:\n{}",
        rig.proxy.connections_accepted(),
        rig.proxy.bytes_downstream(),
        server.logs()
    );
    assert!(
        write_result.eos && write_result.errors.is_empty(),
        "{report}"
    );
    assert!(errors.is_empty(), "{report}");
    assert!(
        rig.front.rewrites() >= 1 && rig.proxy.bytes_downstream() > 100_000,
        "the media did not come through the fault proxy\n{report}"
    );
    assert_eq!(
        stored.len(),
        (frames.div_ceil(GOP) + 1) as usize,
        "the writer's fragments are all stored\n{report}"
    );
    assert_eq!(
        seen, stored,
        "kvssrc must output every stored fragment exactly once, in order\n{report}"
    );
    assert_eq!(incomplete, 0, "fragments marked incomplete\n{report}");
}

#[test]
fn kvssrc_reads_every_fragment_once_across_a_10s_stall() {
    kvssrc_through(
        Outage::Stall {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
        },
        "src-stall",
        600,
    );
}

#[test]
fn kvssrc_reads_every_fragment_once_across_a_10s_cut() {
    kvssrc_through(
        Outage::Cut {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
            reset: false,
        },
        "src-cut",
        600,
    );
}

#[test]
fn kvssrc_reads_every_fragment_once_across_a_10s_reset() {
    kvssrc_through(
        Outage::Cut {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(10),
            reset: true,
        },
        "src-reset",
        600,
    );
}

#[test]
fn kvssrc_reads_every_fragment_once_across_a_kill_9_and_restart() {
    kvssrc_through(
        Outage::Kill {
            at: Duration::from_secs(4),
            lasting: Duration::from_secs(5),
        },
        "src-kill",
        600,
    );
}

/// kvs-local's data directory fills up during a live stream: the producer gets ERROR acknowledgements (not a
/// hang, not a crash), the store stays readable, and once space returns the stream is persisted again.
/// Every fragment stored reads back after a restart, in order and once: the session that hit the full disk ends
/// there and the producer replays the rest in a new one. Needs root for the tmpfs (KVS_FAULTS_NO_MOUNT=1 skips it).
#[test]
fn a_full_disk_gives_error_acks_keeps_the_store_readable_and_recovers() {
    common::init();
    let mut server = LocalServer::start();
    let stream = "disk-full";
    // Move the data directory onto a small tmpfs: stop, mount, copy back, start.
    server.kill9();
    let data = server.data_dir();
    let saved = data.with_extension("saved");
    std::fs::rename(&data, &saved).expect("move the data directory aside");
    std::fs::create_dir(&data).expect("recreate the data directory");
    let used = disk::disk_use_kib(&saved);
    let Some(tmpfs) = disk::Tmpfs::mount_or_skip(&data, used + 3 * 1024) else {
        return;
    };
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data)
        .status()
        .expect("cp");
    assert!(cp.success(), "copying the data directory onto the tmpfs");
    server.restart();

    // 3 Mbit/s: the 3 MiB left fill within seconds.
    let pipeline = common::parse_pipeline(&format!(
        "videotestsrc is-live=true num-buffers=900 ! video/x-raw,width=640,height=360,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max={GOP} speed-preset=ultrafast bitrate=3000 ! h264parse ! \
         video/x-h264,stream-format=avc,alignment=au ! kvssink name=sink stream-name={stream} \
         stop-stream-timeout=20 {}",
        props(&server.url())
    ));
    let errors_seen = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let persisted = Arc::new(Mutex::new(Vec::<Persisted>::new()));
    let freed_at = Arc::new(Mutex::new(None::<Instant>));
    let started = Instant::now();
    let (e, p, f) = (errors_seen.clone(), persisted.clone(), freed_at.clone());
    let result = common::run_pipeline_with(&pipeline, Duration::from_secs(150), |msg| {
        if let gst::MessageView::Element(el) = msg.view()
            && let Some(s) = el.structure().filter(|s| s.name() == "kvs-fragment-ack")
        {
            match s.get::<&str>("event-type").ok() {
                Some("ERROR") => e.lock().unwrap().push((
                    u64::from(s.get::<u32>("error-id").unwrap_or(0)),
                    Instant::now(),
                )),
                Some("PERSISTED") => p.lock().unwrap().push(Persisted {
                    number: s.get::<String>("fragment-number").unwrap_or_default(),
                    timecode: s.get::<u64>("timecode").unwrap_or(0),
                    at: Instant::now(),
                }),
                _ => {}
            }
        }
        // Space returns 3 s after the first ERROR ack, or after 20 s at the latest.
        let mut freed = f.lock().unwrap();
        let first_error = e.lock().unwrap().first().map(|(_, at)| *at);
        if freed.is_none()
            && (first_error.is_some_and(|at| at.elapsed() > Duration::from_secs(3))
                || started.elapsed() > Duration::from_secs(20))
        {
            tmpfs.resize(512 * 1024).expect("giving the space back");
            *freed = Some(Instant::now());
        }
    });
    let errors_seen = errors_seen.lock().unwrap().clone();
    let persisted = persisted.lock().unwrap().clone();
    let freed_at = freed_at.lock().unwrap().unwrap_or_else(Instant::now);
    let logs = server.logs();
    let report = format!(
        "errors {:?}\nwarnings {:#?}\nlast kvs-stats {:?}\nERROR acks (id, s after start) {:?}\n\
         PERSISTED {} (last {:.1} s after start), space returned {:.1} s after start\nserver log tail:\n{}",
        result.errors,
        result.warnings,
        result
            .messages_named("kvs-stats")
            .last()
            .map(|s| s.to_string()),
        errors_seen
            .iter()
            .map(|(id, at)| (id, at.duration_since(started).as_secs_f64()))
            .collect::<Vec<_>>(),
        persisted.len(),
        persisted
            .last()
            .map_or(0.0, |a| a.at.duration_since(started).as_secs_f64()),
        freed_at.duration_since(started).as_secs_f64(),
        logs.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !errors_seen.is_empty(),
        "no ERROR acknowledgement while the disk was full\n{report}"
    );
    assert!(
        errors_seen.iter().all(|(id, _)| *id == 5000 || *id == 5001),
        "a full disk is an INTERNAL_ERROR or ARCHIVAL_ERROR\n{report}"
    );
    assert!(
        persisted.iter().any(|a| a.at > freed_at),
        "nothing was persisted after space returned\n{report}"
    );
    assert!(result.errors.is_empty() && result.eos, "{report}");

    // The store survives a crash in that state and serves every acknowledged fragment.
    server.restart();
    let stored = list_all(&server, stream);
    let numbers: BTreeSet<&str> = stored.iter().map(|f| f.fragment_number.as_str()).collect();
    for ack in &persisted {
        assert!(
            numbers.contains(ack.number.as_str()),
            "PERSISTED {} is missing after the restart\n{report}",
            ack.number
        );
    }
    let acked: BTreeSet<&str> = persisted.iter().map(|a| a.number.as_str()).collect();
    let mut all: Vec<&Fragment> = stored.iter().collect();
    all.sort_by_key(|f| f.fragment_number.parse::<u128>().unwrap_or(0));
    let times: Vec<u64> = all.iter().map(|f| producer_ms(f)).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "the stored fragments are not once each and in order: producer times {times:?}\n{report}"
    );
    let frames = frames_in(&server, stream, &all);
    assert!(
        frames >= acked.len() * GOP as usize,
        "{frames} frames read back from {} stored fragments, {} acknowledged PERSISTED\n{report}",
        stored.len(),
        acked.len()
    );
    server.kill9();
    drop(tmpfs);
}
