//! The store on its own: appends, recovery of torn tails, retention sweeps, stream deletion.

use std::io::Write;

use bytes::Bytes;
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
        matches!(late, Err(kvs_local::error::StoreError::StreamDeleted(2))),
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
