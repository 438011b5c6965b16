//! Durable storage under the data directory.
//!
//! - `index.redb`: stream records, the fragment index and the per-session stream headers, in redb (an embedded,
//!   crash-safe B-tree store with ACID transactions: a committed transaction survives `kill -9` and power loss,
//!   an uncommitted one leaves no trace, so the index never points at media that is not there).
//! - `streams/<id>/seg-<n>.dat`: the media of each stream in append-only segment files. The directory name is the
//!   stream's numeric id, never its name (`.` and `..` are valid stream names).
//!
//! Appends go through one writer thread that takes whatever jobs are queued (from any number of streams), writes
//! them, `fdatasync`s each touched file, then commits all their index rows in one transaction (group commit), and
//! only then reports success: PERSISTED means both the bytes and the index entry are durable. On start, segment
//! tails that no committed index row references (a crash between write and commit) are truncated.
//!
//! A failed write (a full disk) fails the fragments concerned and nothing else: their bytes are never referenced,
//! later appends go where the last committed one ended, and an index database that refuses work after an I/O
//! error is reopened (redb then rolls back to its last commit), so the store recovers when space returns.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;

const STREAMS: TableDefinition<u64, &[u8]> = TableDefinition::new("streams");
const FRAGMENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("fragments");
const HEADERS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("headers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A segment file is closed and a new one started past this size.
const SEGMENT_ROLL_BYTES: u64 = 256 * 1024 * 1024;
/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;

/// A stream's metadata as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: u64,
    pub name: String,
    pub arn: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: String,
    pub version: String,
    pub creation_time_ms: u64,
    pub retention_hours: u64,
    pub tags: std::collections::BTreeMap<String, String>,
    pub storage_tier: String,
}

/// Index entry of one stored fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentMeta {
    pub seq: u64,
    pub server_ts_ms: u64,
    pub producer_ts_ms: u64,
    pub duration_ms: u64,
    /// The cluster's Timecode as sent.
    pub timecode: u64,
    /// Key of the stream header (EBML header .. Tracks) of the session that sent the fragment.
    pub header_id: u64,
    pub segment: u64,
    pub offset: u64,
    /// Bytes of the Cluster element.
    pub cluster_len: u64,
    /// Bytes of the producer Tags elements that followed the cluster (stored right after it).
    pub tags_len: u64,
}

const META_LEN: usize = 80;

impl FragmentMeta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        let fields = [
            self.seq,
            self.server_ts_ms,
            self.producer_ts_ms,
            self.duration_ms,
            self.timecode,
            self.header_id,
            self.segment,
            self.offset,
            self.cluster_len,
            self.tags_len,
        ];
        for (i, f) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != META_LEN {
            return Err(StoreError::Corrupt(format!(
                "fragment record of {} bytes, expected {META_LEN}",
                b.len()
            )));
        }
        let f = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        Ok(FragmentMeta {
            seq: f(0),
            server_ts_ms: f(1),
            producer_ts_ms: f(2),
            duration_ms: f(3),
            timecode: f(4),
            header_id: f(5),
            segment: f(6),
            offset: f(7),
            cluster_len: f(8),
            tags_len: f(9),
        })
    }

    /// Bytes stored for the fragment: the cluster and its producer tags.
    pub fn stored_len(&self) -> u64 {
        self.cluster_len + self.tags_len
    }
}

/// A fragment to append: its index entry (segment and offset are filled in by the writer), the header of its
/// session (stored with the first fragment of the session that is committed; jobs may carry it every time), and
/// its bytes (cluster followed by producer tags).
#[derive(Debug)]
pub struct AppendJob {
    pub stream_id: u64,
    pub meta: FragmentMeta,
    pub header: Option<Bytes>,
    pub data: Bytes,
}

enum Job {
    Append(AppendJob, oneshot::Sender<Result<FragmentMeta, StoreError>>),
    DeleteStream(u64, oneshot::Sender<Result<(), StoreError>>),
    /// Removes fragments of each (stream, cutoff) whose server timestamp is before the cutoff.
    Sweep(Vec<(u64, u64)>, oneshot::Sender<Result<usize, StoreError>>),
}

/// The storage: index database, segment files and the writer thread.
pub struct Store {
    db: Arc<SharedDb>,
    dir: PathBuf,
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    headers: Mutex<HashMap<(u64, u64), Bytes>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The index database, reopened after an I/O error: redb refuses every transaction once a write failed (a full
/// disk), until the database is opened again and rolled back to its last commit.
pub(crate) struct SharedDb {
    path: PathBuf,
    current: RwLock<Option<Arc<Database>>>,
    /// When and why the last reopen failed: callers get that error until `REOPEN_RETRY` has passed, instead of
    /// each repeating the attempt (redb repairs the file when it opens it) while the disk is still full.
    failed_open: Mutex<Option<(Instant, String)>>,
}

/// How long a reopen waits for transactions still running on the failed database instance.
const REOPEN_WAIT: Duration = Duration::from_secs(5);
/// How long after a failed reopen the next one is tried.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

impl StoreError {
    /// Whether the index database failed on I/O and must be reopened before it takes more work.
    fn is_db_io(&self) -> bool {
        matches!(self, StoreError::Db(e) if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo))
    }
}

impl SharedDb {
    fn open(path: PathBuf) -> Result<SharedDb, StoreError> {
        let db = Database::create(&path)?;
        Ok(SharedDb {
            path,
            current: RwLock::new(Some(Arc::new(db))),
            failed_open: Mutex::new(None),
        })
    }

    /// Runs `f` on the database; an I/O failure reopens it for the next caller.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.get()?;
        let result = f(&db);
        if let Err(e) = &result
            && e.is_db_io()
        {
            tracing::warn!(error = %e, "the index database failed on I/O; reopening it");
            let failed = Arc::as_ptr(&db);
            // Our handle must be gone before the reopen waits for the old instance to close.
            drop(db);
            self.reopen(failed);
        }
        result
    }

    fn get(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.current.read().ok().and_then(|g| g.clone()) {
            return Ok(db);
        }
        let mut guard = self
            .current
            .write()
            .map_err(|_| StoreError::Corrupt("index database lock poisoned".into()))?;
        if let Some(db) = guard.as_ref() {
            return Ok(db.clone());
        }
        let mut failed = self
            .failed_open
            .lock()
            .map_err(|_| StoreError::Corrupt("index database lock poisoned".into()))?;
        if let Some((at, why)) = failed.as_ref()
            && at.elapsed() < REOPEN_RETRY
        {
            return Err(StoreError::Unavailable(why.clone()));
        }
        match self.open_again() {
            Ok(db) => {
                let db = Arc::new(db);
                *guard = Some(db.clone());
                *failed = None;
                tracing::info!(path = %self.path.display(), "index database reopened");
                Ok(db)
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the index database yet");
                *failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Drops the failed instance (unless another caller already replaced it); the next `get` opens it again.
    fn reopen(&self, failed: *const Database) {
        if let Ok(mut guard) = self.current.write()
            && guard
                .as_ref()
                .is_some_and(|cur| std::ptr::eq(Arc::as_ptr(cur), failed))
        {
            *guard = None;
        }
    }

    /// Opens the file again once every transaction of the old instance has ended (redb allows one instance).
    fn open_again(&self) -> Result<Database, StoreError> {
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match Database::create(&self.path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => return other.map_err(StoreError::from),
            }
        }
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn stream_dir(root: &Path, stream_id: u64) -> PathBuf {
    root.join("streams").join(format!("{stream_id:016}"))
}

fn segment_path(root: &Path, stream_id: u64, segment: u64) -> PathBuf {
    stream_dir(root, stream_id).join(format!("seg-{segment:08}.dat"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".dat")?
        .parse()
        .ok()
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", path))
}

impl Store {
    /// Opens (or creates) the store under `dir`, repairs segment tails and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir.join("streams")).map_err(io_err("creating", dir))?;
        let db = Arc::new(SharedDb::open(dir.join("index.redb"))?);
        let tails = db.with(|db| {
            let txn = db.begin_write()?;
            txn.open_table(STREAMS)?;
            txn.open_table(FRAGMENTS)?;
            txn.open_table(HEADERS)?;
            txn.open_table(META)?;
            txn.commit()?;
            recover(db, dir)
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            db: db.clone(),
            root: dir.to_owned(),
            files: HashMap::new(),
            tails,
            deleted: HashSet::new(),
            stored_headers: HashSet::new(),
            failed_sessions: HashSet::new(),
        };
        let handle = std::thread::Builder::new()
            .name("kvs-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("starting the writer thread for", dir))?;
        Ok(Store {
            db,
            dir: dir.to_owned(),
            jobs: Mutex::new(Some(tx)),
            headers: Mutex::new(HashMap::new()),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` on the index database, for the tables other modules keep beside the stream index
    /// (`crate::resources`); blocking.
    pub fn with_database<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.with(f)
    }

    /// Every stream record.
    pub fn load_streams(&self) -> Result<Vec<StreamRecord>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(STREAMS)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (_, v) = row?;
                let rec: StreamRecord = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("stream record: {e}")))?;
                out.push(rec);
            }
            Ok(out)
        })
    }

    /// Allocates a new stream id (never reused).
    pub fn next_stream_id(&self) -> Result<u64, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            let id = {
                let mut meta = txn.open_table(META)?;
                let id = meta.get("next_stream_id")?.map(|v| v.value()).unwrap_or(1);
                meta.insert("next_stream_id", id + 1)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })
    }

    /// Inserts or replaces a stream record (blocking: call from a blocking context).
    pub fn put_stream(&self, rec: &StreamRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| StoreError::Corrupt(format!("stream record: {e}")))?;
        self.db.with(|db| {
            let txn = db.begin_write()?;
            txn.open_table(STREAMS)?.insert(rec.id, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Appends a fragment; the receiver yields the stored index entry once bytes and index are durable.
    pub fn append(&self, job: AppendJob) -> oneshot::Receiver<Result<FragmentMeta, StoreError>> {
        let (tx, rx) = oneshot::channel();
        if let Some(h) = &job.header
            && let Ok(mut cache) = self.headers.lock()
        {
            cache
                .entry((job.stream_id, job.meta.header_id))
                .or_insert_with(|| h.clone());
        }
        // When the writer is gone the job (and its sender) is dropped, which the receiver reports as a failure.
        self.send(Job::Append(job, tx));
        rx
    }

    /// Deletes a stream's record, index and media.
    pub async fn delete_stream(&self, stream_id: u64) -> Result<(), StoreError> {
        if let Ok(mut cache) = self.headers.lock() {
            cache.retain(|(id, _), _| *id != stream_id);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Job::DeleteStream(stream_id, tx));
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Removes expired fragments; returns how many.
    pub async fn sweep(&self, cutoffs: Vec<(u64, u64)>) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Sweep(cutoffs, tx));
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Every fragment of a stream in sequence order (blocking).
    pub fn fragments(&self, stream_id: u64) -> Result<Vec<FragmentMeta>, StoreError> {
        self.fragments_after(stream_id, None, usize::MAX)
    }

    /// Up to `limit` fragments with a sequence number above `after` (all when `None`), in order (blocking).
    pub fn fragments_after(
        &self,
        stream_id: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<FragmentMeta>, StoreError> {
        let start = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(s) => s + 1,
            None => 0,
        };
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FRAGMENTS)?;
            let mut out = Vec::new();
            for row in table.range((stream_id, start)..=(stream_id, u64::MAX))? {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = row?;
                out.push(FragmentMeta::decode(v.value())?);
            }
            Ok(out)
        })
    }

    /// The fragment with this sequence number (blocking).
    pub fn fragment(&self, stream_id: u64, seq: u64) -> Result<Option<FragmentMeta>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FRAGMENTS)?;
            match table.get((stream_id, seq))? {
                Some(v) => Ok(Some(FragmentMeta::decode(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// The highest stored sequence number of a stream (blocking).
    pub fn last_seq(&self, stream_id: u64) -> Result<Option<u64>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FRAGMENTS)?;
            let mut range = table.range((stream_id, 0)..=(stream_id, u64::MAX))?;
            match range.next_back() {
                Some(row) => Ok(Some(row?.0.value().1)),
                None => Ok(None),
            }
        })
    }

    /// The stored header of a session (blocking).
    pub fn header(&self, stream_id: u64, header_id: u64) -> Result<Bytes, StoreError> {
        if let Ok(cache) = self.headers.lock()
            && let Some(h) = cache.get(&(stream_id, header_id))
        {
            return Ok(h.clone());
        }
        let bytes = self.db.with(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HEADERS)?;
            table
                .get((stream_id, header_id))?
                .map(|v| Bytes::copy_from_slice(v.value()))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("stream {stream_id} has no header {header_id}"))
                })
        })?;
        if let Ok(mut cache) = self.headers.lock() {
            cache.insert((stream_id, header_id), bytes.clone());
        }
        Ok(bytes)
    }

    /// The stored bytes (cluster + producer tags) of a fragment (blocking).
    pub fn read_fragment(&self, stream_id: u64, meta: &FragmentMeta) -> Result<Bytes, StoreError> {
        let path = segment_path(&self.dir, stream_id, meta.segment);
        let file = File::open(&path).map_err(io_err("opening segment", &path))?;
        let len = usize::try_from(meta.stored_len())
            .map_err(|_| StoreError::Corrupt(format!("fragment {} is too large", meta.seq)))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, meta.offset)
            .map_err(io_err("reading segment", &path))?;
        Ok(Bytes::from(buf))
    }

    fn send(&self, job: Job) {
        if let Ok(guard) = self.jobs.lock()
            && let Some(tx) = guard.as_ref()
        {
            let _ = tx.send(job);
        }
    }

    /// Stops the writer thread after the jobs already queued.
    pub fn close(&self) {
        if let Ok(mut guard) = self.jobs.lock() {
            guard.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where the next append of a stream goes.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    segment: u64,
    len: u64,
}

/// Truncates segment tails no index row references, removes unreferenced files and directories of streams that
/// no longer exist; returns where each stream appends next.
fn recover(db: &Database, root: &Path) -> Result<HashMap<u64, Tail>, StoreError> {
    let txn = db.begin_read()?;
    let streams = txn.open_table(STREAMS)?;
    let fragments = txn.open_table(FRAGMENTS)?;
    let mut ids = HashSet::new();
    for row in streams.iter()? {
        ids.insert(row?.0.value());
    }
    // Highest referenced end per (stream, segment).
    let mut ends: HashMap<(u64, u64), u64> = HashMap::new();
    for row in fragments.iter()? {
        let (k, v) = row?;
        let meta = FragmentMeta::decode(v.value())?;
        let end = meta.offset + meta.stored_len();
        let e = ends.entry((k.value().0, meta.segment)).or_default();
        *e = (*e).max(end);
    }
    let mut tails = HashMap::new();
    let streams_dir = root.join("streams");
    let entries = std::fs::read_dir(&streams_dir).map_err(io_err("listing", &streams_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", &streams_dir))?;
        let path = entry.path();
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok());
        let Some(id) = id.filter(|id| ids.contains(id)) else {
            tracing::info!(path = %path.display(), "removing media of a stream that no longer exists");
            std::fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            continue;
        };
        let mut tail = Tail::default();
        let files = std::fs::read_dir(&path).map_err(io_err("listing", &path))?;
        for file in files {
            let file = file.map_err(io_err("listing", &path))?;
            let fpath = file.path();
            let Some(seg) = file.file_name().to_str().and_then(parse_segment_name) else {
                continue;
            };
            match ends.get(&(id, seg)) {
                None => {
                    std::fs::remove_file(&fpath).map_err(io_err("removing", &fpath))?;
                }
                Some(&end) => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&fpath)
                        .map_err(io_err("opening", &fpath))?;
                    let len = f.metadata().map_err(io_err("inspecting", &fpath))?.len();
                    if len > end {
                        tracing::warn!(
                            path = %fpath.display(),
                            dropped = len - end,
                            "truncating media that was written but never committed"
                        );
                        f.set_len(end).map_err(io_err("truncating", &fpath))?;
                        f.sync_all().map_err(io_err("syncing", &fpath))?;
                    }
                    if seg >= tail.segment {
                        tail = Tail {
                            segment: seg,
                            len: end.min(len),
                        };
                    }
                }
            }
        }
        tails.insert(id, tail);
    }
    Ok(tails)
}

/// Most threads that `fdatasync` the files of one group commit at once.
const SYNC_THREADS: usize = 4;

/// `fdatasync`s the files, in parallel when there are several (after a stall one commit holds many streams and
/// their syncs would otherwise add up); returns the ids whose sync failed, with the reason.
fn sync_all(files: &[(u64, &File)]) -> Vec<(u64, String)> {
    if files.len() <= 1 {
        return files
            .iter()
            .filter_map(|(id, f)| f.sync_data().err().map(|e| (*id, e.to_string())))
            .collect();
    }
    let per_thread = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                let handle = scope.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(id, f)| f.sync_data().err().map(|e| (*id, e.to_string())))
                        .collect::<Vec<_>>()
                });
                (chunk, handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(chunk, handle)| match handle.join() {
                Ok(failed) => failed,
                // A sync thread that died synced nothing for certain.
                Err(_) => chunk
                    .iter()
                    .map(|(id, _)| (*id, "sync thread failed".to_owned()))
                    .collect(),
            })
            .collect()
    })
}

struct OpenSegment {
    file: File,
    segment: u64,
    len: u64,
}

struct Writer {
    db: Arc<SharedDb>,
    root: PathBuf,
    files: HashMap<u64, OpenSegment>,
    tails: HashMap<u64, Tail>,
    /// Streams deleted while running: fragments of theirs still in the queue are refused, not written.
    deleted: HashSet<u64>,
    /// Session headers (stream id, header id) committed since start.
    stored_headers: HashSet<(u64, u64)>,
    /// Sessions (stream id, header id) with a fragment that could not be stored.
    failed_sessions: HashSet<(u64, u64)>,
}

/// Most failed sessions remembered; a session is short-lived next to this many failures.
const MAX_FAILED_SESSIONS: usize = 4096;

/// The PutMedia session of a job: its stream and the id of its header.
fn session_of(job: &AppendJob) -> (u64, u64) {
    (job.stream_id, job.meta.header_id)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            for job in batch {
                match job {
                    Job::Append(a, tx) => appends.push((a, tx)),
                    Job::DeleteStream(id, tx) => {
                        self.commit_appends(std::mem::take(&mut appends));
                        let _ = tx.send(self.delete_stream(id));
                    }
                    Job::Sweep(cutoffs, tx) => {
                        self.commit_appends(std::mem::take(&mut appends));
                        let _ = tx.send(self.sweep(&cutoffs));
                    }
                }
            }
            self.commit_appends(appends);
        }
    }

    fn segment_for(
        &mut self,
        stream_id: u64,
        incoming: u64,
    ) -> Result<&mut OpenSegment, StoreError> {
        let roll = match self.files.get(&stream_id) {
            Some(open) => open.len > 0 && open.len + incoming > SEGMENT_ROLL_BYTES,
            None => false,
        };
        if roll && let Some(old) = self.files.remove(&stream_id) {
            let tail = Tail {
                segment: old.segment + 1,
                len: 0,
            };
            self.tails.insert(stream_id, tail);
        }
        if !self.files.contains_key(&stream_id) {
            let tail = self.tails.get(&stream_id).copied().unwrap_or_default();
            let dir = stream_dir(&self.root, stream_id);
            let created = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            let path = segment_path(&self.root, stream_id, tail.segment);
            let new_file = !path.exists();
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("opening segment", &path))?;
            file.set_len(tail.len)
                .map_err(io_err("truncating segment", &path))?;
            if new_file {
                sync_dir(&dir)?;
            }
            if created {
                sync_dir(&self.root.join("streams"))?;
            }
            self.files.insert(
                stream_id,
                OpenSegment {
                    file,
                    segment: tail.segment,
                    len: tail.len,
                },
            );
        }
        self.files
            .get_mut(&stream_id)
            .ok_or_else(|| StoreError::Corrupt("segment vanished".into()))
    }

    fn commit_appends(
        &mut self,
        appends: Vec<(AppendJob, oneshot::Sender<Result<FragmentMeta, StoreError>>)>,
    ) {
        if appends.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let jobs = appends.len();
        let bytes: usize = appends.iter().map(|(j, _)| j.data.len()).sum();
        let mut written = Vec::with_capacity(appends.len());
        let mut touched = HashSet::new();
        for (job, tx) in appends {
            // Once a fragment of a session failed, the later ones of the session fail too: a stream never has a
            // hole followed by the rest of the same session (the producer replays from the hole in a new one).
            if self.failed_sessions.contains(&session_of(&job)) {
                let _ = tx.send(Err(StoreError::EarlierFragmentFailed(job.stream_id)));
                continue;
            }
            match self.write_one(&job) {
                Ok(meta) => {
                    touched.insert(job.stream_id);
                    written.push((job, meta, tx));
                }
                Err(e) => {
                    tracing::error!(stream_id = job.stream_id, error = %e, "cannot write fragment");
                    self.fail_session(&job);
                    // Drop what a partial write left; the next append goes to the same place whatever happens,
                    // and start-up truncates anything no committed row references.
                    if let Some(open) = self.files.get(&job.stream_id)
                        && let Err(e) = open.file.set_len(open.len)
                    {
                        tracing::warn!(stream_id = job.stream_id, error = %e, "cannot cut a partial write");
                    }
                    let _ = tx.send(Err(e));
                }
            }
        }
        let mut sync_failed: HashMap<u64, String> = HashMap::new();
        let wrote = started.elapsed();
        let files: Vec<(u64, &File)> = touched
            .iter()
            .filter_map(|id| self.files.get(id).map(|o| (*id, &o.file)))
            .collect();
        sync_failed.extend(sync_all(&files));
        let mut ok = Vec::with_capacity(written.len());
        for (job, meta, tx) in written {
            if let Some(reason) = sync_failed.get(&job.stream_id) {
                self.fail_session(&job);
                self.files.remove(&job.stream_id);
                let _ = tx.send(Err(StoreError::Io {
                    what: "syncing segment",
                    path: segment_path(&self.root, job.stream_id, meta.segment),
                    source: std::io::Error::other(reason.clone()),
                }));
            } else {
                ok.push((job, meta, tx));
            }
        }
        if ok.is_empty() {
            return;
        }
        let synced = started.elapsed();
        let mut new_headers = HashSet::new();
        let result = self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut frags = txn.open_table(FRAGMENTS)?;
                let mut headers = txn.open_table(HEADERS)?;
                for (job, meta, _) in &ok {
                    let key = (job.stream_id, meta.header_id);
                    if let Some(h) = &job.header
                        && !self.stored_headers.contains(&key)
                        && new_headers.insert(key)
                    {
                        headers.insert(key, h.as_ref())?;
                    }
                    frags.insert((job.stream_id, meta.seq), meta.encode().as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        });
        tracing::debug!(
            jobs,
            bytes,
            files = touched.len(),
            write_us = wrote.as_micros() as u64,
            sync_us = (synced - wrote).as_micros() as u64,
            commit_us = (started.elapsed() - synced).as_micros() as u64,
            "group commit"
        );
        match result {
            Ok(()) => {
                self.stored_headers.extend(new_headers);
                for (job, meta, tx) in ok {
                    self.tails.insert(
                        job.stream_id,
                        Tail {
                            segment: meta.segment,
                            len: meta.offset + meta.stored_len(),
                        },
                    );
                    let _ = tx.send(Ok(meta));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot commit the fragment index");
                let msg = e.to_string();
                for (job, _, tx) in ok {
                    self.fail_session(&job);
                    self.files.remove(&job.stream_id);
                    let _ = tx.send(Err(StoreError::Corrupt(format!(
                        "index commit failed: {msg}"
                    ))));
                }
            }
        }
    }

    fn fail_session(&mut self, job: &AppendJob) {
        if self.failed_sessions.len() >= MAX_FAILED_SESSIONS {
            self.failed_sessions.clear();
        }
        self.failed_sessions.insert(session_of(job));
    }

    fn write_one(&mut self, job: &AppendJob) -> Result<FragmentMeta, StoreError> {
        if self.deleted.contains(&job.stream_id) {
            return Err(StoreError::StreamDeleted(job.stream_id));
        }
        let root = self.root.clone();
        let open = self.segment_for(job.stream_id, job.data.len() as u64)?;
        let path = segment_path(&root, job.stream_id, open.segment);
        open.file
            .write_all_at(&job.data, open.len)
            .map_err(io_err("writing segment", &path))?;
        let mut meta = job.meta;
        meta.segment = open.segment;
        meta.offset = open.len;
        open.len += job.data.len() as u64;
        Ok(meta)
    }

    fn delete_stream(&mut self, stream_id: u64) -> Result<(), StoreError> {
        self.deleted.insert(stream_id);
        self.files.remove(&stream_id);
        self.tails.remove(&stream_id);
        self.stored_headers.retain(|(id, _)| *id != stream_id);
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                txn.open_table(STREAMS)?.remove(stream_id)?;
                let mut frags = txn.open_table(FRAGMENTS)?;
                frags.retain_in((stream_id, 0)..=(stream_id, u64::MAX), |_, _| false)?;
                let mut headers = txn.open_table(HEADERS)?;
                headers.retain_in((stream_id, 0)..=(stream_id, u64::MAX), |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })?;
        let dir = stream_dir(&self.root, stream_id);
        if dir.exists() {
            // The index no longer references these files; a failure here is repaired at the next start.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove the media of a deleted stream");
            }
        }
        Ok(())
    }

    fn sweep(&mut self, cutoffs: &[(u64, u64)]) -> Result<usize, StoreError> {
        let shared = self.db.clone();
        shared.with(|db| self.sweep_in(db, cutoffs))
    }

    fn sweep_in(&mut self, db: &Database, cutoffs: &[(u64, u64)]) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut files_to_remove = Vec::new();
        let txn = db.begin_write()?;
        {
            let mut frags = txn.open_table(FRAGMENTS)?;
            let mut headers = txn.open_table(HEADERS)?;
            for &(stream_id, cutoff_ms) in cutoffs {
                let mut expired = Vec::new();
                let mut first_kept: Option<FragmentMeta> = None;
                let mut last_expired_header = 0;
                for row in frags.range((stream_id, 0)..=(stream_id, u64::MAX))? {
                    let (k, v) = row?;
                    let meta = FragmentMeta::decode(v.value())?;
                    if meta.server_ts_ms < cutoff_ms {
                        expired.push(k.value().1);
                        last_expired_header = meta.header_id;
                    } else {
                        first_kept = Some(meta);
                        break;
                    }
                }
                if expired.is_empty() {
                    continue;
                }
                for seq in &expired {
                    frags.remove((stream_id, *seq))?;
                }
                removed += expired.len();
                // Headers and whole segments below the first kept fragment are no longer referenced. With nothing
                // kept, the newest header stays (a PutMedia session that is still open stored it once and goes on
                // referring to it) and the writer moves to a fresh segment so that every old one can go.
                let (min_header, min_segment) = match first_kept {
                    Some(m) => (m.header_id, m.segment),
                    None => (last_expired_header, u64::MAX),
                };
                headers.retain_in((stream_id, 0)..(stream_id, min_header), |_, _| false)?;
                self.stored_headers
                    .retain(|&(id, h)| id != stream_id || h >= min_header);
                let mut current = self.files.get(&stream_id).map(|o| o.segment);
                let mut tail_segment = self.tails.get(&stream_id).map(|t| t.segment);
                if first_kept.is_none() {
                    let next = current.max(tail_segment).map_or(0, |s| s + 1);
                    self.files.remove(&stream_id);
                    self.tails.insert(
                        stream_id,
                        Tail {
                            segment: next,
                            len: 0,
                        },
                    );
                    current = None;
                    tail_segment = None;
                }
                let dir = stream_dir(&self.root, stream_id);
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        if let Some(seg) = entry.file_name().to_str().and_then(parse_segment_name)
                            && seg < min_segment
                            && Some(seg) != current
                            && Some(seg) != tail_segment
                        {
                            files_to_remove.push(entry.path());
                        }
                    }
                }
            }
        }
        txn.commit()?;
        for path in files_to_remove {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an expired segment");
            }
        }
        Ok(removed)
    }
}
