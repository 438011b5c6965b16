//! kvs-local's PutMedia handling driven over TCP against an in-process server: arbitrary stream-naming, timecode
//! type, producer start timestamp and ack-required headers (see `kvs_fuzz::put_media::decode`) with an arbitrary
//! chunked MKV body. The server must not panic (a panic in any thread aborts the fuzzer), must answer without an
//! internal error, and every acknowledgement it streams back must be valid JSON of the service's shape.
#![no_main]

use kvs_fuzz::put_media::{decode, send};
use kvs_fuzz::{RequestError, pieces_with, seed_of};
use kvs_mkv::ack::AckParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(req) = decode(data) else {
        return;
    };
    // Chunks of at least a few dozen bytes: byte-sized HTTP chunks cost the server (under the sanitizer) far more
    // than the parser splitting they exercise, which the mkv_stream target covers.
    let chunks = pieces_with(req.body, seed_of(data), &[64, 700, 4096, 16384]);
    let resp = match send(&req, chunks) {
        Ok(r) => r,
        Err(RequestError::Unsendable(_)) => return,
        Err(e) => panic!("kvs-local gave no usable answer: {e}"),
    };
    assert!(
        resp.status != 500,
        "kvs-local answered 500: {}",
        String::from_utf8_lossy(&resp.body)
    );
    if resp.status == 200 && resp.complete {
        let mut parser = AckParser::new();
        for ack in parser.push(&resp.body) {
            if let Err(e) = ack {
                panic!("kvs-local sent an unreadable acknowledgement: {e}");
            }
        }
        assert_eq!(
            parser.pending(),
            0,
            "acknowledgement stream ends mid-ack: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
});
