//! Helpers shared by the fuzz targets: deterministic splitting of an input into read-sized pieces, event
//! collection for the Matroska stream parser, and an in-process kvs-local driven over real TCP for PutMedia.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvs_local::Credential;
use kvs_mkv::stream::{Limits, MkvEvent, MkvStreamParser};

pub mod put_media;

/// FNV-1a of the input: a seed that depends only on the bytes, so a crash reproduces from its file alone.
pub fn seed_of(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Splits `data` into pieces the way network reads might cut it: every piece size is drawn from a generator seeded
/// by the data, with a largest size of 1, 3, 17, 256 or 4096 bytes (also chosen by the seed).
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    pieces_seeded(data, seed_of(data))
}

/// [`pieces`] with the generator's seed given.
pub fn pieces_seeded(data: &[u8], seed: u64) -> Vec<&[u8]> {
    pieces_with(data, seed, &[1, 3, 17, 256, 4096])
}

/// Splits `data` into pieces whose largest size is one of `max_sizes` (chosen by the seed).
pub fn pieces_with<'a>(data: &'a [u8], seed: u64, max_sizes: &[u64]) -> Vec<&'a [u8]> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let max = max_sizes
        .get((next() % max_sizes.len().max(1) as u64) as usize)
        .copied()
        .unwrap_or(4096)
        .max(1);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = ((next() % max) + 1).min(rest.len() as u64) as usize;
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// What parsing a byte stream produced: the events in order and the first error, if any.
#[derive(Debug, PartialEq)]
pub struct MkvOutcome {
    pub events: Vec<MkvEvent>,
    pub error: Option<String>,
}

/// Feeds the chunks to a fresh parser one by one, draining events after each, then calls `finish` until it is done.
pub fn parse_mkv(chunks: &[&[u8]], limits: Limits) -> MkvOutcome {
    let mut parser = MkvStreamParser::new(limits);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    return MkvOutcome {
                        events,
                        error: Some(e.to_string()),
                    };
                }
            }
        }
    }
    loop {
        match parser.finish() {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => {
                return MkvOutcome {
                    events,
                    error: None,
                };
            }
            Err(e) => {
                return MkvOutcome {
                    events,
                    error: Some(e.to_string()),
                };
            }
        }
    }
}

/// Credentials the in-process server accepts.
pub const ACCESS_KEY: &str = "AKIDFUZZ0000000001";
pub const SECRET_KEY: &str = "fuzz/secret/key/0123456789abcdef0123";
pub const REGION: &str = "us-east-1";

pub fn credential() -> Credential {
    Credential {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

/// A kvs-local served from this process on 127.0.0.1, started once per fuzzing process.
pub struct InProcessServer {
    pub addr: SocketAddr,
    /// ARNs of the streams created at start-up, by index (names are `fuzz-<index>`).
    pub arns: Vec<String>,
    _runtime: tokio::runtime::Runtime,
    _server: kvs_local::RunningServer,
    _dir: tempfile::TempDir,
}

/// Streams created at start-up: PutMedia calls rotate over them so that one slow session does not make the next
/// input meet a ConnectionLimitExceeded answer.
pub const STREAMS: usize = 4;

/// The process-wide server, started on first use.
pub fn server() -> &'static InProcessServer {
    static SERVER: OnceLock<InProcessServer> = OnceLock::new();
    SERVER.get_or_init(|| match start_server() {
        Ok(s) => s,
        Err(e) => panic!("the in-process kvs-local does not start: {e}"),
    })
}

fn start_server() -> Result<InProcessServer, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let dir = tempfile::Builder::new()
        .prefix("kvs-fuzz")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = kvs_local::Config::new(listen, dir.path().join("data"));
    config.region = REGION.into();
    config.add_credential(credential());
    config.check_clock_skew = false;
    let server = runtime
        .block_on(kvs_local::Server::start(config))
        .map_err(|e| format!("server: {e}"))?;
    let addr = server.local_addr();
    let mut arns = Vec::new();
    for i in 0..STREAMS {
        let body = format!(r#"{{"StreamName":"fuzz-{i}","DataRetentionInHours":1}}"#);
        let resp = http_request(addr, "/createStream", &[], Body::Json(body.as_bytes()))
            .map_err(|e| format!("createStream: {e}"))?;
        if resp.status != 200 {
            return Err(format!(
                "createStream answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("createStream body: {e}"))?;
        let arn = v["StreamARN"]
            .as_str()
            .ok_or("createStream answered without StreamARN")?;
        arns.push(arn.to_owned());
    }
    Ok(InProcessServer {
        addr,
        arns,
        _runtime: runtime,
        _server: server,
        _dir: dir,
    })
}

/// A request body: JSON (Content-Length, payload hash of the body) or chunked media (payload hash of "").
pub enum Body<'a> {
    Json(&'a [u8]),
    Chunked(Vec<&'a [u8]>),
}

/// The parts of a response this harness looks at.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The body, de-chunked when the response was chunked.
    pub body: Vec<u8>,
    /// Whether the whole response arrived (the terminating chunk or the full Content-Length).
    pub complete: bool,
}

/// Why [`http_request`] produced no response.
#[derive(Debug)]
pub enum RequestError {
    /// The request cannot be written as HTTP/1.1 or signed (e.g. a control character in a header value): it never
    /// reaches the server.
    Unsendable(String),
    /// The exchange failed or the answer is not HTTP.
    Exchange(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Unsendable(e) => write!(f, "request cannot be sent: {e}"),
            RequestError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// Sends one signed POST over a new connection and reads the answer until the server closes it or 10 s pass.
/// `headers` are added (and signed when their name starts with `x-amz`) besides host and the signature.
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Body<'_>,
) -> Result<HttpResponse, RequestError> {
    use RequestError::{Exchange, Unsendable};
    let uri: http::Uri = path
        .parse()
        .map_err(|e| Unsendable(format!("path {path:?}: {e}")))?;
    let mut map = http::HeaderMap::new();
    map.insert(
        http::header::HOST,
        http::HeaderValue::from_static("127.0.0.1"),
    );
    for (name, value) in headers {
        let name =
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| Unsendable(e.to_string()))?;
        let value = http::HeaderValue::from_bytes(value).map_err(|e| Unsendable(e.to_string()))?;
        map.append(name, value);
    }
    let payload_hash = match &body {
        Body::Json(b) => kvs_local::sigv4::sha256_hex(b),
        Body::Chunked(_) => kvs_local::sigv4::EMPTY_SHA256.to_owned(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    kvs_local::sigv4::sign(
        &http::Method::POST,
        &uri,
        &mut map,
        &payload_hash,
        &credential(),
        REGION,
        now,
    )
    .map_err(|e| Unsendable(format!("signing: {}", e.message)))?;
    let mut head = format!("POST {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &map {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n");
    let mut stream = TcpStream::connect(addr).map_err(|e| Exchange(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Exchange(e.to_string()))?;
    // A server that answers early may stop reading the body: writing then gives up and the answer is read.
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| Exchange(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    match body {
        Body::Json(b) => {
            head.extend_from_slice(format!("content-length: {}\r\n\r\n", b.len()).as_bytes());
            head.extend_from_slice(b);
            stream
                .write_all(&head)
                .map_err(|e| Exchange(format!("write: {e}")))?;
        }
        Body::Chunked(chunks) => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            // The server may answer and close early (a header error): a failed write is then expected.
            let mut out = head;
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = stream.write_all(&out);
        }
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // libFuzzer's timer signal (-timeout) interrupts blocking reads: not the end of the answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    parse_response(&raw).map_err(Exchange)
}

/// Parses a raw HTTP/1.1 response (skipping `100 Continue` heads).
pub fn parse_response(mut raw: &[u8]) -> Result<HttpResponse, String> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
            format!(
                "no complete response head in {} bytes: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response head is not UTF-8")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let rest = &raw[end + 4..];
        if status == 100 {
            raw = rest;
            continue;
        }
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            let (body, complete) = dechunk(rest)?;
            return Ok(HttpResponse {
                status,
                body,
                complete,
            });
        }
        let len = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let complete = len.is_none_or(|l| rest.len() >= l);
        let body = match len {
            Some(l) => rest[..l.min(rest.len())].to_vec(),
            None => rest.to_vec(),
        };
        return Ok(HttpResponse {
            status,
            body,
            complete,
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// De-chunks a chunked body; `false` when it stops before the terminating chunk.
fn dechunk(mut rest: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok((body, false));
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunk size not UTF-8")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size line {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((body, true));
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            return Ok((body, false));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
