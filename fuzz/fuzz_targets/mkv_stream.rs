//! The Matroska stream parser fed arbitrary bytes in arbitrary pieces. Besides not panicking or growing without
//! bound, the events must not depend on how the bytes were cut: the same input pushed whole and pushed in pieces
//! gives the same events and fails (or not) the same way.
#![no_main]

use kvs_fuzz::{parse_mkv, pieces};
use kvs_mkv::stream::{ClusterAssembler, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits so that the "element too large" paths are reached by small inputs too.
    let limits = Limits {
        max_element_size: 256 * 1024,
        max_header_element_size: 64 * 1024,
    };
    let whole = parse_mkv(&[data], limits);
    let split = parse_mkv(&pieces(data), limits);
    assert_eq!(
        whole.events, split.events,
        "events differ between one push and split pushes"
    );
    assert_eq!(
        whole.error.is_some(),
        split.error.is_some(),
        "one push failed with {:?}, split pushes with {:?}",
        whole.error,
        split.error
    );
    let mut assembler = ClusterAssembler::default();
    for ev in &whole.events {
        if let Some(cluster) = assembler.handle(ev) {
            // A cluster's blocks all come from bytes inside it.
            let payload: usize = cluster.blocks.iter().map(|b| b.payload_len).sum();
            assert!(
                payload <= cluster.raw.len(),
                "blocks larger than their cluster"
            );
            let _ = cluster.starts_with_keyframe();
            let _ = cluster.block_time_range();
        }
    }
});
