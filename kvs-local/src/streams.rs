//! The streams in memory: their metadata (mirrored in the store), the per-stream live state GetMedia tails, and the
//! connection counters that enforce one PutMedia and at most three GetMedia per stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::store::{FragmentMeta, StreamRecord};

/// Most concurrent GetMedia readers of one stream.
pub const MAX_READERS: usize = 3;
/// Received fragments kept in memory for live readers: at most this many bytes per stream (the service keeps up to
/// 200 MB, but a local server with many streams must not hold that much each)...
const LIVE_MAX_BYTES: usize = 32 * 1024 * 1024;
/// ... and, for streams that do not retain data, for at most this long (the service's host buffer).
const LIVE_MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Fragments of retaining streams are dropped from memory once stored, beyond this many (readers that fall
/// further behind read from the store).
const LIVE_KEEP_STORED: usize = 3;

/// A fragment as received, held in memory until it is stored (and a little longer for live readers).
#[derive(Debug)]
pub struct LiveFragment {
    pub meta: FragmentMeta,
    pub header: Bytes,
    /// Cluster followed by producer tags.
    pub data: Bytes,
    /// The store has finished with it (stored or failed): it may leave memory.
    pub settled: AtomicBool,
}

/// One stream.
#[derive(Debug)]
pub struct StreamHandle {
    pub id: u64,
    record: Mutex<StreamRecord>,
    deleted: AtomicBool,
    put_active: AtomicBool,
    readers: AtomicUsize,
    next_seq: AtomicU64,
    live: Mutex<VecDeque<Arc<LiveFragment>>>,
    /// Sequence number of the last received fragment (0 before the first); GetMedia waits on it.
    received: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StreamHandle {
    pub fn new(record: StreamRecord, last_seq: u64) -> Self {
        StreamHandle {
            id: record.id,
            record: Mutex::new(record),
            deleted: AtomicBool::new(false),
            put_active: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
            next_seq: AtomicU64::new(last_seq + 1),
            live: Mutex::new(VecDeque::new()),
            received: watch::Sender::new(last_seq),
        }
    }

    pub fn record(&self) -> StreamRecord {
        lock(&self.record).clone()
    }

    pub fn set_record(&self, rec: StreamRecord) {
        *lock(&self.record) = rec;
    }

    pub fn retention_hours(&self) -> u64 {
        lock(&self.record).retention_hours
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        // Wake readers so they notice.
        self.received.send_modify(|_| {});
    }

    /// Takes the stream's single PutMedia slot.
    pub fn try_begin_put(self: &Arc<Self>) -> Option<PutGuard> {
        self.put_active
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| PutGuard(self.clone()))
    }

    /// Takes one of the stream's GetMedia slots.
    pub fn try_begin_read(self: &Arc<Self>) -> Option<ReadGuard> {
        let mut current = self.readers.load(Ordering::Acquire);
        loop {
            if current >= MAX_READERS {
                return None;
            }
            match self.readers.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(ReadGuard(self.clone())),
                Err(now) => current = now,
            }
        }
    }

    /// Allocates the next fragment sequence number.
    pub fn allocate_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::AcqRel)
    }

    /// Sequence number of the last received fragment (0 if none).
    pub fn last_received(&self) -> u64 {
        *self.received.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.received.subscribe()
    }

    /// Makes a complete fragment visible to live readers.
    pub fn publish(&self, fragment: Arc<LiveFragment>, now_ms: u64) {
        let seq = fragment.meta.seq;
        {
            let mut live = lock(&self.live);
            live.push_back(fragment);
            self.trim(&mut live, now_ms);
        }
        self.received.send_modify(|v| *v = (*v).max(seq));
    }

    /// Drops settled fragments from memory once enough newer ones are there.
    pub fn trim_live(&self, now_ms: u64) {
        let mut live = lock(&self.live);
        self.trim(&mut live, now_ms);
    }

    fn trim(&self, live: &mut VecDeque<Arc<LiveFragment>>, now_ms: u64) {
        let retains = self.retention_hours() > 0;
        let mut bytes: usize = live.iter().map(|f| f.data.len()).sum();
        while let Some(front) = live.front() {
            let settled = front.settled.load(Ordering::Acquire);
            let too_old =
                now_ms.saturating_sub(front.meta.server_ts_ms) > LIVE_MAX_AGE.as_millis() as u64;
            // The newest fragment always stays until a newer one arrives, so that a reader woken for it finds it
            // (unless it is older than the buffer's age limit).
            let over_bytes = bytes > LIVE_MAX_BYTES && live.len() > 1;
            let evict = if retains {
                settled && (live.len() > LIVE_KEEP_STORED || over_bytes)
            } else {
                settled && (too_old || over_bytes)
            };
            if !evict {
                break;
            }
            bytes -= front.data.len();
            live.pop_front();
        }
    }

    /// Drops stored fragments older than the retention cutoff from memory.
    pub fn expire_live(&self, cutoff_ms: u64) {
        lock(&self.live)
            .retain(|f| !(f.settled.load(Ordering::Acquire) && f.meta.server_ts_ms < cutoff_ms));
    }

    /// The first in-memory fragment with a sequence number above `after`.
    pub fn live_after(&self, after: u64) -> Option<Arc<LiveFragment>> {
        lock(&self.live)
            .iter()
            .find(|f| f.meta.seq > after)
            .cloned()
    }

    /// The in-memory fragment with this sequence number.
    pub fn live_get(&self, seq: u64) -> Option<Arc<LiveFragment>> {
        lock(&self.live).iter().find(|f| f.meta.seq == seq).cloned()
    }

    /// Metadata of every fragment in memory.
    pub fn live_metas(&self) -> Vec<FragmentMeta> {
        lock(&self.live).iter().map(|f| f.meta).collect()
    }
}

/// Holds a stream's PutMedia slot until dropped.
#[derive(Debug)]
pub struct PutGuard(Arc<StreamHandle>);

impl Drop for PutGuard {
    fn drop(&mut self) {
        self.0.put_active.store(false, Ordering::Release);
    }
}

/// Holds a GetMedia slot until dropped.
#[derive(Debug)]
pub struct ReadGuard(Arc<StreamHandle>);

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Streams by name.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: Mutex<HashMap<String, Arc<StreamHandle>>>,
}

impl Registry {
    pub fn insert(&self, handle: Arc<StreamHandle>) {
        let name = handle.record().name;
        lock(&self.by_name).insert(name, handle);
    }

    pub fn get(&self, name: &str) -> Option<Arc<StreamHandle>> {
        lock(&self.by_name).get(name).cloned()
    }

    pub fn by_arn(&self, arn: &str) -> Option<Arc<StreamHandle>> {
        lock(&self.by_name)
            .values()
            .find(|h| h.record().arn == arn)
            .cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<StreamHandle>> {
        lock(&self.by_name).remove(name)
    }

    pub fn all(&self) -> Vec<Arc<StreamHandle>> {
        lock(&self.by_name).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(retention_hours: u64) -> StreamHandle {
        StreamHandle::new(
            StreamRecord {
                id: 1,
                name: "s".into(),
                arn: "arn".into(),
                device_name: None,
                media_type: None,
                kms_key_id: "k".into(),
                version: "v".into(),
                creation_time_ms: 0,
                retention_hours,
                tags: Default::default(),
                storage_tier: "HOT".into(),
            },
            0,
        )
    }

    fn fragment(seq: u64, ts: u64, len: usize, settled: bool) -> Arc<LiveFragment> {
        Arc::new(LiveFragment {
            meta: FragmentMeta {
                seq,
                server_ts_ms: ts,
                producer_ts_ms: ts,
                duration_ms: 0,
                timecode: 0,
                header_id: 1,
                segment: 0,
                offset: 0,
                cluster_len: len as u64,
                tags_len: 0,
            },
            header: Bytes::new(),
            data: Bytes::from(vec![0u8; len]),
            settled: AtomicBool::new(settled),
        })
    }

    #[test]
    fn memory_is_bounded_but_the_newest_fragment_stays() {
        let s = stream(0);
        for seq in 1..=3 {
            s.publish(fragment(seq, 1000, 20 * 1024 * 1024, true), 1000);
        }
        let seqs: Vec<u64> = s.live_metas().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [3]);
        assert_eq!(s.last_received(), 3);
        // Past the age limit even the newest goes.
        s.trim_live(1000 + LIVE_MAX_AGE.as_millis() as u64 + 1);
        assert!(s.live_metas().is_empty());
    }

    #[test]
    fn fragments_not_yet_stored_are_never_dropped() {
        let s = stream(1);
        for seq in 1..=10 {
            s.publish(fragment(seq, 1000, 10 * 1024 * 1024, false), 1000);
        }
        assert_eq!(s.live_metas().len(), 10);
        // Once stored, all but the last few leave memory.
        for seq in 1..=10 {
            if let Some(f) = s.live_get(seq) {
                f.settled.store(true, Ordering::Release);
            }
        }
        s.trim_live(1000);
        let seqs: Vec<u64> = s.live_metas().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
    }

    #[test]
    fn slots_are_limited_and_freed() {
        let s = Arc::new(stream(1));
        let put = s.try_begin_put().expect("first PutMedia");
        assert!(s.try_begin_put().is_none());
        drop(put);
        assert!(s.try_begin_put().is_some());
        let readers: Vec<_> = (0..MAX_READERS)
            .map(|_| s.try_begin_read().expect("reader slot"))
            .collect();
        assert!(s.try_begin_read().is_none());
        drop(readers);
        assert!(s.try_begin_read().is_some());
    }
}
