//! Turning a fuzz input into a PutMedia request: the first [`PREFIX`] bytes choose each header's value from a table
//! of valid and invalid values (or take a string from the input), the rest is the media body. A seed is an MKV
//! stream with [`PREFIX`] zero bytes in front (all headers valid).

use crate::{HttpResponse, RequestError, server};

/// Control bytes before the body.
pub const PREFIX: usize = 6;

const TIMECODE_TYPES: &[&[u8]] = &[
    b"ABSOLUTE",
    b"RELATIVE",
    b"",
    b"absolute",
    b"ABSOLUTE ",
    b"\xe9t\xe9",
];
const START_TIMESTAMPS: &[&[u8]] = &[
    b"1795267585.324",
    b"0",
    b"-1",
    b"NaN",
    b"inf",
    b"1e309",
    b"18446744073709551616",
    b"1.7976931348623157e308",
    b"abc",
];
const ACK_REQUIRED: &[&[u8]] = &[b"1", b"0", b"true", b""];

/// How the request names its stream.
#[derive(Debug, Clone, Copy)]
enum StreamChoice {
    Name,
    Arn,
    Both,
    Neither,
    UnknownName,
    BadName,
    FromInput,
}

/// The headers and body a fuzz input stands for.
#[derive(Debug)]
pub struct PutMediaRequest<'a> {
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: &'a [u8],
}

/// Reads the control prefix: byte 0 the stream choice and stream index, bytes 1-3 the timecode type, producer start
/// timestamp and ack-required values (index past the table: absent, or a length-prefixed string taken from the
/// input), byte 4 whether the producer start timestamp is sent at all, byte 5 only varies how the body is cut
/// into chunks (the cut depends on the whole input).
pub fn decode(data: &[u8]) -> Option<PutMediaRequest<'_>> {
    if data.len() < PREFIX {
        return None;
    }
    let (ctl, mut rest) = data.split_at(PREFIX);
    let srv = server();
    let index = usize::from(ctl[0] >> 4) % crate::STREAMS;
    let name = format!("fuzz-{index}").into_bytes();
    let arn = srv.arns[index].clone().into_bytes();
    let choice = [
        StreamChoice::Name,
        StreamChoice::Arn,
        StreamChoice::Both,
        StreamChoice::Neither,
        StreamChoice::UnknownName,
        StreamChoice::BadName,
        StreamChoice::FromInput,
    ][usize::from(ctl[0] & 0x0f) % 7];
    let take_string = |rest: &mut &[u8]| -> Vec<u8> {
        let Some((&len, tail)) = rest.split_first() else {
            return Vec::new();
        };
        let n = usize::from(len).min(tail.len());
        let (s, tail) = tail.split_at(n);
        *rest = tail;
        s.to_vec()
    };
    let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
    match choice {
        StreamChoice::Name => headers.push(("x-amzn-stream-name", name)),
        StreamChoice::Arn => headers.push(("x-amzn-stream-arn", arn)),
        StreamChoice::Both => {
            headers.push(("x-amzn-stream-name", name));
            headers.push(("x-amzn-stream-arn", arn));
        }
        StreamChoice::Neither => {}
        StreamChoice::UnknownName => {
            headers.push(("x-amzn-stream-name", b"no-such-stream".to_vec()))
        }
        StreamChoice::BadName => headers.push(("x-amzn-stream-name", b"bad name/..".to_vec())),
        StreamChoice::FromInput => {
            let v = take_string(&mut rest);
            headers.push(("x-amzn-stream-name", v));
        }
    }
    let mut pick = |name: &'static str, table: &[&[u8]], b: u8, rest: &mut &[u8]| {
        let i = usize::from(b) % (table.len() + 2);
        if i < table.len() {
            headers.push((name, table[i].to_vec()));
        } else if i == table.len() + 1 {
            let v = take_string(rest);
            headers.push((name, v));
        }
    };
    pick(
        "x-amzn-fragment-timecode-type",
        TIMECODE_TYPES,
        ctl[1],
        &mut rest,
    );
    if ctl[4] & 1 == 0 {
        pick(
            "x-amzn-producer-start-timestamp",
            START_TIMESTAMPS,
            ctl[2],
            &mut rest,
        );
    }
    pick(
        "x-amzn-fragment-acknowledgment-required",
        ACK_REQUIRED,
        ctl[3],
        &mut rest,
    );
    Some(PutMediaRequest {
        headers,
        body: rest,
    })
}

/// Sends the request through the in-process server, with the body cut into `chunks`.
pub fn send(req: &PutMediaRequest<'_>, chunks: Vec<&[u8]>) -> Result<HttpResponse, RequestError> {
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_slice()))
        .collect();
    crate::http_request(
        server().addr,
        "/putMedia",
        &headers,
        crate::Body::Chunked(chunks),
    )
}
