// SPDX-License-Identifier: MPL-2.0
//! Tests of the PutMedia session against an in-memory service that parses the body like the real one and
//! answers with acknowledgements, with switches for the failures the session must survive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kvs_mkv::ack::{Ack, AckErrorId, AckEventType};
use kvs_mkv::stream::{MkvEvent, MkvStreamParser};
use kvs_mkv::writer;

use super::*;

#[derive(Default)]
struct Behaviour {
    /// open() calls that fail with a network error before one succeeds.
    fail_opens: usize,
    /// The first connection breaks after this many fragments were acknowledged on it.
    break_after: Option<usize>,
    /// Connections with these indices never acknowledge anything.
    silent_connections: Vec<usize>,
    /// Send this ERROR id for the fragment with this timecode.
    error_for: Option<(u64, AckErrorId)>,
    /// Only RECEIVED, no PERSISTED (a stream without retention).
    no_persisted: bool,
    /// Deliver acknowledgements one byte at a time.
    split_acks: bool,
    /// What DescribeStream says about retention.
    retains_data: Option<bool>,
    /// The first connection breaks right after storing this many fragments, before acknowledging the last.
    break_before_ack_after: Option<usize>,
    /// ListFragments fails.
    list_fails: bool,
    /// The first connection's service dies right after acknowledging this many fragments as RECEIVED, before the
    /// last of them is durable: that one is lost on the service's side.
    crash_after_received: Option<usize>,
    /// Start-up calls that fail with a network error before one succeeds.
    fail_prepares: usize,
    /// Start-up calls fail with this error.
    prepare_error: Option<AwsError>,
}

#[derive(Default)]
struct ServiceState {
    behaviour: Behaviour,
    opens: usize,
    connections: usize,
    /// Timecodes of completed fragments stored by the service, in order (duplicates included).
    stored: Vec<u64>,
    /// Per connection: first fragment timecode, whether the body began with an EBML header.
    connection_starts: Vec<(Option<u64>, bool)>,
    /// Per connection: whether the body ended cleanly.
    bodies_ended: Vec<bool>,
    producer_start: Vec<Option<u64>>,
    media_types: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeService(Arc<Mutex<ServiceState>>);

impl FakeService {
    fn with(behaviour: Behaviour) -> Self {
        let s = FakeService::default();
        lock(&s.0).behaviour = behaviour;
        s
    }
    fn state(&self) -> std::sync::MutexGuard<'_, ServiceState> {
        lock(&self.0)
    }
}

struct ChannelAcks(tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, AwsError>>);

impl AckSource for ChannelAcks {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, AwsError>> {
        async move {
            match self.0.recv().await {
                Some(Ok(b)) => Ok(Some(b)),
                Some(Err(e)) => Err(e),
                None => Ok(None),
            }
        }
        .boxed()
    }
}

impl Transport for FakeService {
    fn prepare(&self, media_type: String) -> BoxFuture<'static, Result<StreamReady, AwsError>> {
        self.state().media_types.push(media_type);
        if self.state().behaviour.fail_prepares > 0 {
            self.state().behaviour.fail_prepares -= 1;
            return async { Err(AwsError::Network("no route to host (test)".into())) }.boxed();
        }
        if let Some(e) = self.state().behaviour.prepare_error.clone() {
            return async move { Err(e) }.boxed();
        }
        let retains = self.state().behaviour.retains_data;
        async move {
            Ok(StreamReady {
                retains_data: retains,
            })
        }
        .boxed()
    }

    fn open(
        &self,
        producer_start_ms: Option<u64>,
        mut body: BodyStream,
    ) -> BoxFuture<'static, Result<Box<dyn AckSource>, AwsError>> {
        let svc = self.clone();
        async move {
            let conn = {
                let mut st = svc.state();
                st.opens += 1;
                if st.behaviour.fail_opens > 0 {
                    st.behaviour.fail_opens -= 1;
                    return Err(AwsError::Network("connection refused (test)".into()));
                }
                st.connections += 1;
                st.connection_starts.push((None, false));
                st.bodies_ended.push(false);
                st.producer_start.push(producer_start_ms);
                st.connections - 1
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut parser = MkvStreamParser::default();
                let mut current: Option<u64> = None;
                let mut acked_here = 0usize;
                let send = |svc: &FakeService, ev: AckEventType, tc: u64| {
                    let st = svc.state();
                    if st.behaviour.silent_connections.contains(&conn) {
                        return;
                    }
                    let line = Ack::fragment(ev, tc, Some(format!("{tc:047}"))).to_line();
                    if st.behaviour.split_acks {
                        for b in line.as_bytes() {
                            let _ = tx.send(Ok(Bytes::copy_from_slice(std::slice::from_ref(b))));
                        }
                    } else {
                        let _ = tx.send(Ok(Bytes::from(line)));
                    }
                };
                // Completes the current fragment; returns false when the connection must break.
                let complete = |svc: &FakeService, tc: u64, acked_here: &mut usize| -> bool {
                    let error = svc.state().behaviour.error_for;
                    if let Some((etc, id)) = error
                        && etc == tc
                    {
                        let line = Ack::error(id, Some(tc), None).to_line();
                        let _ = tx.send(Ok(Bytes::from(line)));
                        return true;
                    }
                    let crash = svc.state().behaviour.crash_after_received;
                    if conn == 0 && crash == Some(*acked_here + 1) {
                        // RECEIVED goes out, then the service dies before the fragment is durable.
                        send(svc, AckEventType::Received, tc);
                        let _ = tx.send(Err(AwsError::Network("connection reset (test)".into())));
                        return false;
                    }
                    svc.state().stored.push(tc);
                    let lost_ack = svc.state().behaviour.break_before_ack_after;
                    if conn == 0 && lost_ack == Some(*acked_here + 1) {
                        // Stored, but the connection dies before the acknowledgement leaves.
                        let _ = tx.send(Err(AwsError::Network("connection reset (test)".into())));
                        return false;
                    }
                    send(svc, AckEventType::Received, tc);
                    if !svc.state().behaviour.no_persisted {
                        send(svc, AckEventType::Persisted, tc);
                    }
                    *acked_here += 1;
                    let brk = svc.state().behaviour.break_after;
                    if conn == 0 && brk == Some(*acked_here) {
                        let _ = tx.send(Err(AwsError::Network("connection reset (test)".into())));
                        return false;
                    }
                    true
                };
                let mut first = true;
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    if first {
                        first = false;
                        svc.state().connection_starts[conn].1 =
                            chunk.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]);
                    }
                    parser.push(&chunk);
                    while let Ok(Some(ev)) = parser.next_event() {
                        match ev {
                            MkvEvent::ClusterStart { timecode, .. } => {
                                if let Some(prev) = current.take()
                                    && !complete(&svc, prev, &mut acked_here)
                                {
                                    return;
                                }
                                {
                                    let mut st = svc.state();
                                    if st.connection_starts[conn].0.is_none() {
                                        st.connection_starts[conn].0 = Some(timecode);
                                    }
                                }
                                current = Some(timecode);
                                send(&svc, AckEventType::Buffering, timecode);
                            }
                            MkvEvent::Tags(t) if t.contains(kvs_mkv::tags::END_OF_FRAGMENT) => {
                                if let Some(prev) = current.take()
                                    && !complete(&svc, prev, &mut acked_here)
                                {
                                    return;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                svc.state().bodies_ended[conn] = true;
                if let Some(prev) = current.take() {
                    complete(&svc, prev, &mut acked_here);
                }
                // The response ends with the body, like the service.
            });
            Ok(Box::new(ChannelAcks(rx)) as Box<dyn AckSource>)
        }
        .boxed()
    }

    fn stored_fragments(
        &self,
        start_ms: u64,
        end_ms: u64,
    ) -> BoxFuture<'static, Result<Vec<u64>, AwsError>> {
        let st = self.state();
        let result = if st.behaviour.list_fails {
            Err(AwsError::Network("ListFragments refused (test)".into()))
        } else {
            Ok(st
                .stored
                .iter()
                .copied()
                .filter(|t| (start_ms..=end_ms).contains(t))
                .collect())
        };
        async move { result }.boxed()
    }

    fn credentials_expiry(&self) -> Option<SystemTime> {
        None
    }

    fn connection_failed(&self) {}
}

fn header_item() -> UploadItem {
    let mut out = writer::ebml_header("matroska");
    out.extend_from_slice(&writer::segment_start_unknown());
    let mut info = Vec::new();
    kvs_mkv::ebml::write_uint_element(&mut info, kvs_mkv::ebml::id::TIMECODE_SCALE, 1_000_000);
    kvs_mkv::ebml::write_master_element(&mut out, kvs_mkv::ebml::id::INFO, &info);
    let mut track = Vec::new();
    kvs_mkv::ebml::write_uint_element(&mut track, kvs_mkv::ebml::id::TRACK_NUMBER, 1);
    kvs_mkv::ebml::write_uint_element(&mut track, kvs_mkv::ebml::id::TRACK_TYPE, 1);
    kvs_mkv::ebml::write_str_element(&mut track, kvs_mkv::ebml::id::CODEC_ID, "V_MPEG4/ISO/AVC");
    let mut tracks = Vec::new();
    kvs_mkv::ebml::write_master_element(&mut tracks, kvs_mkv::ebml::id::TRACK_ENTRY, &track);
    kvs_mkv::ebml::write_master_element(&mut out, kvs_mkv::ebml::id::TRACKS, &tracks);
    UploadItem::Header {
        bytes: Bytes::from(out),
        producer_start_ms: None,
        media_type: "video/h264".into(),
    }
}

fn fragment(tc: u64, frames: usize, frame_size: usize) -> Vec<UploadItem> {
    let mut items = vec![UploadItem::FragmentStart {
        timecode: tc,
        bytes: Bytes::from(writer::cluster_start(tc)),
    }];
    for i in 0..frames {
        let frame = vec![i as u8; frame_size];
        items.push(UploadItem::Data(Bytes::from(writer::simple_block(
            1,
            (i * 33) as i16,
            i == 0,
            &frame,
        ))));
    }
    items
}

struct Harness {
    handle: UploadHandle,
    events: Arc<Mutex<Vec<UploadEvent>>>,
}

fn start(svc: &FakeService, cfg: UploadConfig, capacity: usize) -> Harness {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let sink: EventSink = Arc::new(move |ev| lock(&sink_events).push(ev));
    let handle = spawn(
        &tokio::runtime::Handle::current(),
        Arc::new(svc.clone()),
        cfg,
        sink,
        capacity,
    );
    Harness { handle, events }
}

impl Harness {
    async fn send(&self, items: Vec<UploadItem>) {
        for item in items {
            self.handle
                .sender()
                .send(item)
                .await
                .expect("upload task alive");
        }
    }
    async fn finish(&self, limit: Duration) -> Finished {
        tokio::time::timeout(limit, self.handle.finished())
            .await
            .expect("session finished in time")
    }
    fn count(&self, f: impl Fn(&UploadEvent) -> bool) -> usize {
        lock(&self.events).iter().filter(|e| f(e)).count()
    }
}

fn quick_cfg() -> UploadConfig {
    UploadConfig {
        staleness: Some(Duration::from_secs(5)),
        ..UploadConfig::default()
    }
}

fn counts(v: &[u64]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for t in v {
        *m.entry(*t).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn every_fragment_is_persisted_and_eos_waits_for_the_last() {
    let svc = FakeService::default();
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for i in 0..3 {
        h.send(fragment(1000 + i * 1000, 5, 100)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    assert_eq!(
        fin,
        Finished {
            unacknowledged: 0,
            error: None
        }
    );
    let st = svc.state();
    assert_eq!(st.stored, vec![1000, 2000, 3000]);
    assert_eq!(st.connections, 1);
    assert_eq!(st.media_types, vec!["video/h264".to_string()]);
    let stats = h.handle.stats();
    assert_eq!(stats.fragments_persisted, 3);
    assert_eq!(stats.buffered_fragments, 0);
    assert_eq!(
        h.count(|e| matches!(e, UploadEvent::Ack(a) if a.event_type == AckEventType::Persisted)),
        3
    );
}

#[tokio::test]
async fn a_broken_connection_is_replayed_without_duplicates() {
    let svc = FakeService::with(Behaviour {
        break_after: Some(2),
        split_acks: true,
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for i in 0..6 {
        h.send(fragment(1000 + i * 1000, 4, 200)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0, "{fin:?}");
    let st = svc.state();
    let c = counts(&st.stored);
    assert_eq!(
        c.keys().copied().collect::<Vec<_>>(),
        vec![1000, 2000, 3000, 4000, 5000, 6000]
    );
    assert!(
        c.values().all(|&n| n == 1),
        "a fragment was stored twice: {c:?}"
    );
    assert!(st.connections >= 2);
    assert!(
        st.connection_starts.iter().all(|(_, header)| *header),
        "every connection starts with the header"
    );
    let stats = h.handle.stats();
    assert!(stats.reconnects >= 1);
    // A replayed fragment is acknowledged BUFFERING again; the stats count fragments, not acknowledgements.
    assert_eq!(
        (stats.fragments_buffering, stats.fragments_persisted),
        (6, 6),
        "{stats:?}"
    );
}

#[tokio::test]
async fn failed_connects_are_retried_with_backoff() {
    let svc = FakeService::with(Behaviour {
        fail_opens: 3,
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 3, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0);
    assert_eq!(svc.state().opens, 4);
    assert_eq!(svc.state().stored, vec![1000]);
    assert_eq!(
        h.count(|e| matches!(e, UploadEvent::Reconnecting { .. })),
        3
    );
}

#[tokio::test]
async fn a_stale_connection_is_replaced() {
    let svc = FakeService::with(Behaviour {
        silent_connections: vec![0],
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        staleness: Some(Duration::from_millis(300)),
        ..UploadConfig::default()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 3, 10)).await;
    h.send(fragment(2000, 3, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0);
    let st = svc.state();
    assert_eq!(st.connections, 2);
    // The silent connection stored them (it simply never said so): ListFragments finds them, nothing is sent
    // twice.
    let c = counts(&st.stored);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.values().all(|&n| n == 1), "{c:?}");
    drop(st);
    assert_eq!(h.handle.stats().fragments_recovered, 2);
    let causes: Vec<String> = lock(&h.events)
        .iter()
        .filter_map(|e| match e {
            UploadEvent::Reconnecting { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("connection-staleness")),
        "{causes:?}"
    );
}

#[tokio::test]
async fn realtime_drops_whole_oldest_fragments_when_full() {
    let svc = FakeService::with(Behaviour {
        silent_connections: (0..100).collect(),
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        max_bytes: 5_000,
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    for i in 0..10 {
        h.send(fragment(1000 + i * 1000, 4, 500)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = h.handle.stats();
    assert!(stats.fragments_dropped >= 6, "{stats:?}");
    assert!(stats.buffered_bytes <= 5_000 + 2_100, "{stats:?}");
    let dropped: usize = lock(&h.events)
        .iter()
        .map(|e| match e {
            UploadEvent::Dropped { fragments, .. } => *fragments,
            _ => 0,
        })
        .sum();
    assert_eq!(dropped as u64, stats.fragments_dropped);
}

#[tokio::test]
async fn offline_blocks_instead_of_dropping() {
    let svc = FakeService::with(Behaviour {
        silent_connections: vec![0],
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        max_bytes: 5_000,
        drop_when_full: false,
        staleness: Some(Duration::from_millis(500)),
        ..UploadConfig::default()
    };
    let h = start(&svc, cfg, 4);
    h.send(vec![header_item()]).await;
    let sender = h.handle.sender();
    let producer = tokio::spawn(async move {
        for i in 0..10u64 {
            for item in fragment(1000 + i * 1000, 4, 500) {
                if sender.send(item).await.is_err() {
                    return;
                }
            }
        }
        let _ = sender.send(UploadItem::Eos).await;
    });
    // While the first connection is silent, the producer is held back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !producer.is_finished(),
        "the producer should be blocked by backpressure"
    );
    let fin = h.finish(Duration::from_secs(15)).await;
    assert_eq!(fin.unacknowledged, 0);
    assert_eq!(h.handle.stats().fragments_dropped, 0);
    let c = counts(&svc.state().stored);
    assert_eq!(c.len(), 10);
}

#[tokio::test]
async fn a_fatal_error_ack_ends_the_session_with_the_cause() {
    let svc = FakeService::with(Behaviour {
        error_for: Some((2000, AckErrorId::STREAM_NOT_ACTIVE)),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    h.send(fragment(2000, 2, 10)).await;
    h.send(fragment(3000, 2, 10)).await;
    let _ = h.handle.sender().send(UploadItem::Eos).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    let err = fin.error.expect("an error");
    assert!(
        err.contains("4008") && err.contains("STREAM_NOT_ACTIVE"),
        "{err}"
    );
    assert_eq!(h.count(|e| matches!(e, UploadEvent::Fatal(_))), 1);
}

#[tokio::test]
async fn a_rejected_fragment_is_skipped_and_the_rest_persisted() {
    let svc = FakeService::with(Behaviour {
        error_for: Some((2000, AckErrorId::INVALID_MKV_DATA)),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for tc in [1000, 2000, 3000] {
        h.send(fragment(tc, 2, 10)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    assert_eq!(
        fin,
        Finished {
            unacknowledged: 0,
            error: None
        }
    );
    assert_eq!(svc.state().stored, vec![1000, 3000]);
    assert_eq!(h.handle.stats().fragments_rejected, 1);
}

#[tokio::test]
async fn without_retention_received_is_enough() {
    let svc = FakeService::with(Behaviour {
        no_persisted: true,
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        wait_for_persisted: false,
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    assert_eq!(h.finish(Duration::from_secs(5)).await.unacknowledged, 0);
    assert_eq!(h.handle.stats().fragments_received, 1);
}

#[tokio::test]
async fn an_existing_stream_without_retention_needs_only_received() {
    // The element was configured with the default retention, but the stream exists and keeps no data: the
    // service never sends PERSISTED, so waiting for it would never end.
    let svc = FakeService::with(Behaviour {
        no_persisted: true,
        retains_data: Some(false),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    assert_eq!(h.finish(Duration::from_secs(5)).await.unacknowledged, 0);
}

#[tokio::test]
async fn without_restart_on_error_a_broken_connection_is_fatal() {
    let svc = FakeService::with(Behaviour {
        break_after: Some(1),
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        restart_on_error: false,
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    h.send(fragment(2000, 2, 10)).await;
    let _ = h.handle.sender().send(UploadItem::Eos).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    let err = fin.error.expect("fatal");
    assert!(err.contains("restart-on-error"), "{err}");
    assert_eq!(svc.state().opens, 1, "no second connection");
}

#[tokio::test]
async fn rotation_starts_each_session_at_a_fragment_start() {
    let svc = FakeService::default();
    let cfg = UploadConfig {
        rotation_period: Some(Duration::from_millis(150)),
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    for i in 0..8 {
        h.send(fragment(1000 + i * 1000, 3, 50)).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0);
    let st = svc.state();
    assert!(st.connections >= 2, "rotated {} times", st.connections);
    let c = counts(&st.stored);
    assert_eq!(c.len(), 8);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
    assert!(
        st.connection_starts
            .iter()
            .all(|(tc, h)| *h && tc.is_some())
    );
    assert!(
        st.bodies_ended.iter().all(|e| *e),
        "every rotated body was ended cleanly"
    );
}

#[tokio::test]
async fn idle_input_closes_the_fragment_and_resumes_at_the_next_one() {
    let svc = FakeService::default();
    let cfg = UploadConfig {
        idle_close: Duration::from_millis(200),
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 3, 10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The fragment was closed by the end tag while input was idle.
    assert_eq!(svc.state().stored, vec![1000]);
    assert_eq!(h.handle.stats().buffered_fragments, 0);
    // Resuming in the middle of a group of pictures: discarded until the next fragment start.
    h.send(vec![UploadItem::Data(Bytes::from(writer::simple_block(
        1, 40, false, b"p",
    )))])
    .await;
    h.send(fragment(5000, 2, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    assert_eq!(fin.unacknowledged, 0);
    assert_eq!(svc.state().stored, vec![1000, 5000]);
    assert_eq!(
        h.count(|e| matches!(e, UploadEvent::DiscardedUntilKeyframe { .. })),
        1
    );
}

#[tokio::test]
async fn without_acks_fragments_are_released_once_sent() {
    let svc = FakeService::with(Behaviour {
        silent_connections: vec![0],
        ..Behaviour::default()
    });
    let cfg = UploadConfig {
        ack_required: false,
        ..quick_cfg()
    };
    let h = start(&svc, cfg, 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    h.send(fragment(2000, 2, 10)).await;
    h.send(vec![UploadItem::Eos]).await;
    assert_eq!(h.finish(Duration::from_secs(5)).await.unacknowledged, 0);
}

#[tokio::test]
async fn relative_timecodes_send_the_same_producer_start_on_every_connection() {
    let svc = FakeService::with(Behaviour {
        break_after: Some(1),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    let UploadItem::Header { bytes, .. } = header_item() else {
        unreachable!()
    };
    h.send(vec![UploadItem::Header {
        bytes,
        producer_start_ms: Some(1_700_000_000_123),
        media_type: "video/h264".into(),
    }])
    .await;
    for tc in [0, 1000, 2000] {
        h.send(fragment(tc, 2, 10)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    assert_eq!(h.finish(Duration::from_secs(10)).await.unacknowledged, 0);
    let st = svc.state();
    assert!(st.producer_start.len() >= 2);
    assert!(
        st.producer_start
            .iter()
            .all(|p| *p == Some(1_700_000_000_123))
    );
}

#[tokio::test]
async fn a_fragment_stored_without_acknowledgement_is_not_sent_twice() {
    let svc = FakeService::with(Behaviour {
        break_before_ack_after: Some(2),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for i in 0..4 {
        h.send(fragment(1000 + i * 1000, 3, 100)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0, "{fin:?}");
    let c = counts(&svc.state().stored);
    assert_eq!(c.len(), 4, "{c:?}");
    assert!(c.values().all(|&n| n == 1), "stored twice: {c:?}");
    assert_eq!(h.handle.stats().fragments_recovered, 1);
}

#[tokio::test]
async fn a_fragment_received_but_lost_before_it_was_durable_is_sent_again() {
    let svc = FakeService::with(Behaviour {
        crash_after_received: Some(2),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for i in 0..4 {
        h.send(fragment(1000 + i * 1000, 3, 100)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0, "{fin:?}");
    // The second fragment was RECEIVED by a service that died before storing it: it must be stored after all,
    // once, and EOS must not wait for a PERSISTED that the dead connection can never send.
    let c = counts(&svc.state().stored);
    assert_eq!(
        c.keys().copied().collect::<Vec<_>>(),
        vec![1000, 2000, 3000, 4000]
    );
    assert!(c.values().all(|&n| n == 1), "stored twice: {c:?}");
    // The second fragment was acknowledged BUFFERING and RECEIVED on both connections: it counts once.
    let stats = h.handle.stats();
    assert_eq!(
        (
            stats.fragments_buffering,
            stats.fragments_received,
            stats.fragments_persisted
        ),
        (4, 4, 4),
        "{stats:?}"
    );
}

#[tokio::test]
async fn when_listfragments_fails_everything_unacknowledged_is_replayed() {
    let svc = FakeService::with(Behaviour {
        break_before_ack_after: Some(2),
        list_fails: true,
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for i in 0..3 {
        h.send(fragment(1000 + i * 1000, 3, 100)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    let fin = h.finish(Duration::from_secs(10)).await;
    assert_eq!(fin.unacknowledged, 0);
    // No gap: the unverifiable fragment was sent again (and stored twice by this service).
    let c = counts(&svc.state().stored);
    assert_eq!(c.get(&2000), Some(&2), "{c:?}");
    assert_eq!(
        h.count(|e| matches!(e, UploadEvent::VerificationFailed { .. })),
        1
    );
}

#[tokio::test]
async fn start_up_is_retried_while_the_network_is_down_and_data_is_kept() {
    let svc = FakeService::with(Behaviour {
        fail_prepares: 3,
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    for tc in [1000, 2000] {
        h.send(fragment(tc, 2, 10)).await;
    }
    h.send(vec![UploadItem::Eos]).await;
    assert_eq!(h.finish(Duration::from_secs(10)).await.unacknowledged, 0);
    assert_eq!(svc.state().media_types.len(), 4);
    assert_eq!(svc.state().stored, vec![1000, 2000]);
}

#[tokio::test]
async fn a_start_up_authorisation_error_is_fatal_with_the_service_cause() {
    let svc = FakeService::with(Behaviour {
        prepare_error: Some(AwsError::NotAuthorized {
            message: "User is not authorized to perform kinesisvideo:DescribeStream".into(),
        }),
        ..Behaviour::default()
    });
    let h = start(&svc, quick_cfg(), 64);
    h.send(vec![header_item()]).await;
    h.send(fragment(1000, 2, 10)).await;
    let fin = h.finish(Duration::from_secs(5)).await;
    let err = fin.error.expect("fatal");
    assert!(
        err.contains("not authorized") && err.contains("DescribeStream"),
        "{err}"
    );
    assert_eq!(svc.state().media_types.len(), 1, "not retried");
}
