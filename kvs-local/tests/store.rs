//! The store on its own: appends, recovery of torn tails, retention sweeps, stream deletion.

use std::io::Write;

use bytes::Bytes;
use kvs_local::error::StoreError;
use kvs_local::store::{AppendJob, FragmentMeta, Store, StreamRecord};

fn record(id: u64) -> StreamRecord {
    StreamRecord {
        id,
        name: format!("s{id}"),
        arn: format!("arn:aws:kinesisvideo:us-east-1:123456789012:stream/s{id}/1"),
        device_name: None,
        media_type: None,
        kms_key_id: "k".into(),
        version: "v".into(),
        creation_time_ms: 1,
        retention_hours: 1,
        tags: Default::default(),
        storage_tier: "HOT".into(),
    }
}

fn meta(seq: u64, ts: u64, len: usize) -> FragmentMeta {
    FragmentMeta {
        seq,
        server_ts_ms: ts,
        producer_ts_ms: ts,
        duration_ms: 10,
        timecode: ts,
        header_id: 1,
        segment: 0,
        offset: 0,
        cluster_len: len as u64,
        tags_len: 0,
    }
}

async fn append(store: &Store, stream: u64, seq: u64, ts: u64, data: &[u8]) -> FragmentMeta {
    store
        .append(AppendJob {
            stream_id: stream,
            meta: meta(seq, ts, data.len()),
            header: (seq == 1).then(|| Bytes::from_static(b"HEADER")),
            data: Bytes::copy_from_slice(data),
        })
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn appends_read_back_and_torn_tails_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let seg_path;
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_stream(&record(7)).unwrap();
        let a = append(&store, 7, 1, 100, b"first fragment").await;
        let b = append(&store, 7, 2, 200, b"second").await;
        assert_eq!(b.offset, a.offset + a.stored_len());
        assert_eq!(
            store.read_fragment(7, &b).unwrap(),
            Bytes::from_static(b"second")
        );
        assert_eq!(store.header(7, 1).unwrap(), Bytes::from_static(b"HEADER"));
        assert_eq!(store.last_seq(7).unwrap(), Some(2));
        store.close();
        seg_path = dir
            .path()
            .join("streams")
            .join(format!("{:016}", 7))
            .join("seg-00000000.dat");
    }
    // A crash after writing media but before committing its index leaves a tail.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg_path)
        .unwrap()
        .write_all(b"torn garbage")
        .unwrap();
    // And a directory of a stream that does not exist.
    std::fs::create_dir_all(dir.path().join("streams").join("0000000000000099")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::metadata(&seg_path).unwrap().len(),
        (b"first fragment".len() + b"second".len()) as u64
    );
    assert!(!dir.path().join("streams").join("0000000000000099").exists());
    let frags = store.fragments(7).unwrap();
    assert_eq!(frags.len(), 2);
    assert_eq!(
        store.read_fragment(7, &frags[0]).unwrap(),
        Bytes::from_static(b"first fragment")
    );
    // Appends continue where the committed data ends.
    let c = append(&store, 7, 3, 300, b"third").await;
    assert_eq!(c.offset, frags[1].offset + frags[1].stored_len());
    assert_eq!(
        store.read_fragment(7, &c).unwrap(),
        Bytes::from_static(b"third")
    );
}

#[tokio::test]
async fn sweeps_remove_expired_fragments_and_deletes_remove_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_stream(&record(1)).unwrap();
    store.put_stream(&record(2)).unwrap();
    for seq in 1..=5 {
        append(&store, 1, seq, seq * 1000, b"data").await;
        append(&store, 2, seq, seq * 1000, b"data").await;
    }
    let removed = store.sweep(vec![(1, 3500)]).await.unwrap();
    assert_eq!(removed, 3);
    let left: Vec<u64> = store.fragments(1).unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(left, [4, 5]);
    assert_eq!(
        store.fragments(2).unwrap().len(),
        5,
        "other streams are untouched"
    );
    store.delete_stream(2).await.unwrap();
    assert!(store.fragments(2).unwrap().is_empty());
    // Fragments of the deleted stream still on their way are refused, not written.
    let late = store
        .append(AppendJob {
            stream_id: 2,
            meta: meta(6, 6000, 4),
            header: None,
            data: Bytes::from_static(b"late"),
        })
        .await
        .unwrap();
    assert!(
        matches!(late, Err(StoreError::StreamDeleted(2))),
        "{late:?}"
    );
    assert!(store.fragments(2).unwrap().is_empty());
    assert!(
        !dir.path()
            .join("streams")
            .join(format!("{:016}", 2))
            .exists()
    );
    assert_eq!(
        store
            .load_streams()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [1]
    );
}

fn session_job(stream: u64, seq: u64, session: u64, data: &[u8]) -> AppendJob {
    let mut m = meta(seq, seq * 1000, data.len());
    m.header_id = session;
    AppendJob {
        stream_id: stream,
        meta: m,
        header: Some(Bytes::from(format!("HEADER {session}"))),
        data: Bytes::copy_from_slice(data),
    }
}

/// The data directory fills up: a fragment that does not fit fails with the rest of its session (so a stream never
/// has a hole followed by more of the same session), what was stored before stays whole, and once space returns
/// the store takes writes again without a restart. After a restart every stored fragment reads back byte for byte
/// with its session header. Needs root for the tmpfs (set KVS_FAULTS_NO_MOUNT=1 to skip it where mounting is
/// impossible).
#[tokio::test]
async fn a_full_disk_fails_only_what_does_not_fit_and_the_store_recovers_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = kvs_fault_proxy::disk::Tmpfs::mount_or_skip(dir.path(), 8 * 1024) else {
        return;
    };
    let body = |seq: u64, len: usize| -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
    };
    let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_stream(&record(3)).unwrap();
        let first = body(1, 64 * 1024);
        store
            .append(session_job(3, 1, 1, &first))
            .await
            .unwrap()
            .expect("the first fragment fits");
        stored.push((1, first));

        let filler = kvs_fault_proxy::disk::fill(dir.path()).unwrap();
        // A new session whose first fragment does not fit.
        let refused = store
            .append(session_job(3, 2, 2, &body(2, 64 * 1024)))
            .await
            .unwrap();
        assert!(refused.is_err(), "a fragment was stored on a full disk");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(std::fs::metadata(&filler).unwrap().len() - 16 * 1024)
            .unwrap();
        // 16 KiB free, and the next session sends a small, a big and a small fragment at once.
        let small = body(3, 6 * 1024);
        let rx = [
            store.append(session_job(3, 3, 3, &small)),
            store.append(session_job(3, 4, 3, &body(4, 256 * 1024))),
            store.append(session_job(3, 5, 3, &body(5, 3 * 1024))),
        ];
        let mut results = Vec::new();
        for r in rx {
            results.push(r.await.unwrap());
        }
        let m = results[0].as_ref().expect("6 KiB fit in 16 KiB");
        assert_eq!(
            store.read_fragment(3, m).unwrap(),
            Bytes::copy_from_slice(&small)
        );
        stored.push((3, small));
        assert!(results[1].is_err(), "256 KiB stored in 16 KiB");
        assert!(
            matches!(results[2], Err(StoreError::EarlierFragmentFailed(3))),
            "a fragment after a failed one of its session: {:?}",
            results[2]
        );
        // The index database fails too (a record larger than any free space): redb refuses all work after that
        // until it is reopened.
        kvs_fault_proxy::disk::fill(dir.path()).unwrap();
        let mut big = record(4);
        big.tags.insert("k".into(), "v".repeat(1024 * 1024));
        assert!(
            store.put_stream(&big).is_err(),
            "1 MiB stored on a full disk"
        );
        assert!(
            store.put_stream(&big).is_err(),
            "1 MiB stored on a full disk (second try)"
        );

        // Space returns: no restart needed; a failed reopen is tried again after a second.
        tmpfs.resize(64 * 1024).unwrap();
        let back = std::time::Instant::now();
        while let Err(e) = store.put_stream(&big) {
            assert!(
                back.elapsed() < std::time::Duration::from_secs(3),
                "the index takes no writes 3 s after space returned: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let late = store
            .append(session_job(3, 6, 3, &body(6, 1024)))
            .await
            .unwrap();
        assert!(
            matches!(late, Err(StoreError::EarlierFragmentFailed(3))),
            "a failed session took more fragments: {late:?}"
        );
        let last = body(7, 32 * 1024);
        store
            .append(session_job(3, 7, 7, &last))
            .await
            .unwrap()
            .expect("appends of a new session work again once space returns");
        stored.push((7, last));
        store.close();
    }
    let store = Store::open(dir.path()).unwrap();
    let frags = store.fragments(3).unwrap();
    assert_eq!(
        frags.iter().map(|m| m.seq).collect::<Vec<_>>(),
        stored.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    for (m, (_, data)) in frags.iter().zip(&stored) {
        assert_eq!(
            store.read_fragment(3, m).unwrap(),
            Bytes::copy_from_slice(data)
        );
    }
    for session in [1, 3, 7] {
        assert_eq!(
            store.header(3, session).unwrap(),
            Bytes::from(format!("HEADER {session}"))
        );
    }
    assert!(store.load_streams().unwrap().iter().any(|r| r.id == 4));
    store.close();
    drop(store);
    drop(tmpfs);
}
