//! Shared helpers of the kvs-local integration tests: an in-process server on a temporary directory, a SigV4
//! client for the JSON APIs, a raw HTTP/1.1 PutMedia connection that streams chunks and parses acknowledgements,
//! a small Matroska builder, and access to the captures in ../shared/testdata.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use kvs_local::{Config, Credential, RunningServer, Server, sigv4};
use kvs_mkv::ack::{Ack, AckEventType, AckParser};
use kvs_mkv::ebml::{self, id};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const ACCESS_KEY: &str = "AKIDEXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
pub const CAPTURE_TOKEN: &str = "FQoGZXIvYXdzEXAMPLETOKEN";
pub const TOKEN_KEY: &str = "AKIDTOKEN";
pub const TOKEN_SECRET: &str = "tokensecret";
pub const TOKEN: &str = "session-token-1";

pub fn credential() -> Credential {
    Credential {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

pub fn token_credential() -> Credential {
    Credential {
        access_key_id: TOKEN_KEY.into(),
        secret_access_key: TOKEN_SECRET.into(),
        session_token: Some(TOKEN.into()),
    }
}

/// ../shared/testdata (or $KVS_TESTDATA); panics with the path when it is absent.
pub fn testdata(sub: &str) -> PathBuf {
    let base = std::env::var_os("KVS_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    let path = base.join(sub);
    assert!(
        path.exists(),
        "test data {} is missing: these tests need the shared captures (../shared/testdata beside the project, or \
         set KVS_TESTDATA)",
        path.display()
    );
    path
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A server on 127.0.0.1:0 over a temporary directory, with short timeouts.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub url: String,
}

pub fn base_config(dir: &std::path::Path) -> Config {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap(), dir);
    c.add_credential(credential());
    c.add_credential(token_credential());
    // The same key with the session token of the captured video-h264-tags requests.
    c.add_credential(Credential {
        session_token: Some(CAPTURE_TOKEN.into()),
        ..credential()
    });
    c.get_media_idle_end = Duration::from_millis(800);
    c.idle_ack_interval = Duration::from_millis(300);
    c.put_media_idle_timeout = Duration::from_secs(3);
    c.ordered_list_fragments = false;
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut c = base_config(dir.path());
        f(&mut c);
        let server = Server::start(c).await.expect("server starts");
        TestServer {
            addr: server.local_addr(),
            url: server.url().to_owned(),
            server: Some(server),
            dir,
        }
    }

    /// Restarts on the same directory (a clean shutdown first).
    pub async fn restart(&mut self, f: impl FnOnce(&mut Config)) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut c = base_config(self.dir.path());
        f(&mut c);
        let server = Server::start(c).await.expect("server restarts");
        self.addr = server.local_addr();
        self.url = server.url().to_owned();
        self.server = Some(server);
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, credential())
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A JSON API response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub error_type: Option<String>,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn message(&self) -> String {
        self.json()["Message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[track_caller]
    pub fn ok(self) -> Reply {
        assert_eq!(
            self.status,
            200,
            "expected success: {} {:?} {}",
            self.status,
            self.error_type,
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, error_type: &str) {
        assert_eq!(
            (self.status, self.error_type.as_deref()),
            (status, Some(error_type)),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.request_id.is_some(),
            "error responses carry x-amzn-RequestId"
        );
        assert!(
            !self.message().is_empty(),
            "error responses say what is wrong"
        );
    }
}

/// Signs requests with SigV4 and sends them with reqwest.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub addr: SocketAddr,
    pub credential: Credential,
    pub region: String,
}

impl Client {
    pub fn new(addr: SocketAddr, credential: Credential) -> Client {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            addr,
            credential,
            region: "us-east-1".into(),
        }
    }

    pub fn signed_headers(&self, path: &str, body: &[u8], time: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            HeaderValue::from_str(&self.addr.to_string()).unwrap(),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let uri: Uri = path.parse().unwrap();
        sigv4::sign(
            &Method::POST,
            &uri,
            &mut headers,
            &sigv4::sha256_hex(body),
            &self.credential,
            &self.region,
            time,
        )
        .unwrap();
        headers
    }

    pub async fn send(&self, path: &str, body: Vec<u8>, headers: HeaderMap) -> reqwest::Response {
        self.http
            .post(format!("http://{}{path}", self.addr))
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn reply(resp: reqwest::Response) -> Reply {
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = resp.status().as_u16();
        let error_type = header("x-amzn-ErrorType");
        let request_id = header("x-amzn-RequestId");
        let content_type = header("content-type");
        let body = resp.bytes().await.expect("response body");
        Reply {
            status,
            error_type,
            request_id,
            content_type,
            body,
        }
    }

    /// A signed JSON call.
    pub async fn call(&self, path: &str, body: Value) -> Reply {
        self.call_raw(path, body.to_string().into_bytes()).await
    }

    pub async fn call_raw(&self, path: &str, body: Vec<u8>) -> Reply {
        let headers = self.signed_headers(path, &body, now_secs());
        Self::reply(self.send(path, body, headers).await).await
    }

    pub async fn create_stream(&self, name: &str, retention: u64) -> String {
        let r = self
            .call(
                "/createStream",
                serde_json::json!({"StreamName": name, "DataRetentionInHours": retention, "MediaType": "video/h264"}),
            )
            .await
            .ok();
        r.json()["StreamARN"].as_str().unwrap().to_owned()
    }

    pub async fn describe(&self, name: &str) -> Value {
        self.call("/describeStream", serde_json::json!({"StreamName": name}))
            .await
            .ok()
            .json()["StreamInfo"]
            .clone()
    }

    /// GetMedia: the whole body (it ends after the idle time without new fragments).
    pub async fn get_media(&self, name: &str, selector: Value) -> Reply {
        self.call(
            "/getMedia",
            serde_json::json!({"StreamName": name, "StartSelector": selector}),
        )
        .await
    }

    /// Starts a signed PutMedia on a raw connection.
    /// Puts `n` fragments of `frames` frames of `frame_size` bytes (timecodes base, base+1000, ...) in one
    /// PutMedia session and waits until all are persisted; returns their fragment numbers.
    pub async fn put_fragments(
        &self,
        stream: &str,
        base: u64,
        n: u64,
        frames: usize,
        frame_size: usize,
    ) -> Vec<String> {
        let mut put = self.put_media(stream, &[]).await;
        let mut body = mkv::video_header();
        for i in 0..n {
            body.extend(mkv::cluster(base + i * 1000, frames, frame_size));
        }
        body.extend(mkv::end_of_fragment());
        put.chunk(&body).await;
        let mut numbers = Vec::new();
        for _ in 0..n {
            let ack = put.until(AckEventType::Persisted).await;
            numbers.push(ack.fragment_number.expect("PERSISTED names its fragment"));
        }
        put.finish().await;
        put.drain().await;
        numbers
    }

    /// The stream's fragments as ListFragments lists them (one page: up to 1000), in the service's order.
    pub async fn fragments(&self, stream: &str) -> Vec<Value> {
        let list = self
            .call("/listFragments", serde_json::json!({"StreamName": stream}))
            .await
            .ok()
            .json();
        list["Fragments"]
            .as_array()
            .unwrap_or_else(|| panic!("ListFragments without Fragments: {list}"))
            .clone()
    }

    /// The ProducerTimestamp (seconds) of every fragment of the stream, in increasing order.
    pub async fn producer_timestamps(&self, stream: &str) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .fragments(stream)
            .await
            .iter()
            .map(|f| f["ProducerTimestamp"].as_f64().expect("ProducerTimestamp"))
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    pub async fn put_media(&self, name: &str, extra: &[(&str, &str)]) -> PutConn {
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.addr.to_string()),
            ("x-amzn-stream-name".into(), name.into()),
            ("x-amzn-fragment-timecode-type".into(), "ABSOLUTE".into()),
            (
                "x-amzn-producer-start-timestamp".into(),
                "1700000000.000".into(),
            ),
            ("x-amzn-fragment-acknowledgment-required".into(), "1".into()),
        ];
        for (k, v) in extra {
            headers.retain(|(n, _)| n != k);
            if !v.is_empty() {
                headers.push(((*k).into(), (*v).into()));
            }
        }
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        sigv4::sign(
            &Method::POST,
            &"/putMedia".parse().unwrap(),
            &mut map,
            sigv4::EMPTY_SHA256,
            &self.credential,
            &self.region,
            now_secs(),
        )
        .unwrap();
        let mut head = String::from("POST /putMedia HTTP/1.1\r\n");
        for (k, v) in &map {
            head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
        }
        head.push_str(
            "transfer-encoding: chunked\r\nconnection: keep-alive\r\nexpect: 100-continue\r\n\r\n",
        );
        PutConn::open(self.addr, head.into_bytes()).await
    }
}

/// What a raw PutMedia connection received.
#[derive(Debug)]
pub enum Incoming {
    Interim(u16),
    Status(u16, Vec<(String, String)>),
    Ack(Ack),
    Body(Bytes),
    End,
}

/// A PutMedia request on a raw TCP connection: chunks go out as written; acknowledgements come back parsed.
pub struct PutConn {
    pub write: Option<tokio::net::tcp::OwnedWriteHalf>,
    pub events: mpsc::UnboundedReceiver<Incoming>,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub acks: Vec<Ack>,
    pub interim: Vec<u16>,
}

async fn read_head(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Option<(u16, Vec<(String, String)>)> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            buf.drain(..pos + 4);
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Some((status, headers));
        }
        let mut tmp = [0u8; 8192];
        let n = read.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

impl PutConn {
    pub async fn open(addr: SocketAddr, head: Vec<u8>) -> PutConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(&head).await.expect("request head sent");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            // Skip interim 1xx responses.
            let (status, headers) = loop {
                match read_head(&mut read, &mut buf).await {
                    Some((s, _)) if s < 200 => {
                        let _ = tx.send(Incoming::Interim(s));
                        continue;
                    }
                    Some(h) => break h,
                    None => {
                        let _ = tx.send(Incoming::End);
                        return;
                    }
                }
            };
            let chunked = headers
                .iter()
                .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
            let length: Option<usize> = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok());
            let _ = tx.send(Incoming::Status(status, headers));
            let mut parser = AckParser::new();
            let mut tmp = [0u8; 8192];
            if chunked {
                loop {
                    // One chunk: size line, data, CRLF.
                    let line_end = loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            break Some(p);
                        }
                        match read.read(&mut tmp).await {
                            Ok(0) | Err(_) => break None,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let Some(line_end) = line_end else { break };
                    let size =
                        usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                            .unwrap_or(0);
                    buf.drain(..line_end + 2);
                    if size == 0 {
                        break;
                    }
                    while buf.len() < size + 2 {
                        match read.read(&mut tmp).await {
                            Ok(0) | Err(_) => {
                                let _ = tx.send(Incoming::End);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let data: Vec<u8> = buf.drain(..size).collect();
                    buf.drain(..2);
                    let _ = tx.send(Incoming::Body(Bytes::from(data.clone())));
                    for a in parser.push(&data).into_iter().flatten() {
                        let _ = tx.send(Incoming::Ack(a));
                    }
                }
            } else if let Some(len) = length {
                while buf.len() < len {
                    match read.read(&mut tmp).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let _ = tx.send(Incoming::Body(Bytes::from(buf.clone())));
            }
            let _ = tx.send(Incoming::End);
        });
        PutConn {
            write: Some(write),
            events: rx,
            status: None,
            headers: Vec::new(),
            acks: Vec::new(),
            interim: Vec::new(),
        }
    }

    /// Sends one HTTP chunk.
    pub async fn chunk(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some(w) = self.write.as_mut() {
            let mut out = format!("{:x}\r\n", data.len()).into_bytes();
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
            // The server may have closed after an error: that shows in the acknowledgements.
            let _ = w.write_all(&out).await;
        }
    }

    /// Sends raw bytes as they are.
    pub async fn raw(&mut self, data: &[u8]) {
        if let Some(w) = self.write.as_mut() {
            let _ = w.write_all(data).await;
        }
    }

    /// Ends the chunked body.
    pub async fn finish(&mut self) {
        if let Some(w) = self.write.as_mut() {
            let _ = w.write_all(b"0\r\n\r\n").await;
        }
    }

    /// Closes the connection abruptly.
    pub fn abort(&mut self) {
        self.write = None;
    }

    /// The response status.
    pub async fn status(&mut self) -> u16 {
        if let Some(s) = self.status {
            return s;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                Ok(Some(Incoming::Status(s, h))) => {
                    self.status = Some(s);
                    self.headers = h;
                    return s;
                }
                Ok(Some(Incoming::Interim(s))) => self.interim.push(s),
                Ok(Some(_)) => continue,
                _ => panic!("no response status"),
            }
        }
    }

    /// The next acknowledgement, or None when the response ended (or nothing came within `wait`).
    pub async fn next_ack_within(&mut self, wait: Duration) -> Option<Ack> {
        loop {
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(Incoming::Ack(a))) => {
                    self.acks.push(a.clone());
                    return Some(a);
                }
                Ok(Some(Incoming::Status(s, h))) => {
                    self.status = Some(s);
                    self.headers = h;
                }
                Ok(Some(Incoming::Body(_))) => {}
                Ok(Some(Incoming::Interim(s))) => self.interim.push(s),
                Ok(Some(Incoming::End)) | Ok(None) | Err(_) => return None,
            }
        }
    }

    pub async fn next_ack(&mut self) -> Option<Ack> {
        self.next_ack_within(Duration::from_secs(10)).await
    }

    /// The next acknowledgement that is not IDLE, panicking when none comes.
    pub async fn expect(&mut self, kind: AckEventType) -> Ack {
        loop {
            let a = self.next_ack().await.unwrap_or_else(|| {
                panic!(
                    "expected a {kind:?} acknowledgement, the response ended; got {:?}",
                    self.acks
                )
            });
            if a.event_type == AckEventType::Idle && kind != AckEventType::Idle {
                continue;
            }
            assert_eq!(a.event_type, kind, "acknowledgement {a:?}");
            return a;
        }
    }

    /// Skips acknowledgements until one of this kind, panicking when the response ends first.
    pub async fn until(&mut self, kind: AckEventType) -> Ack {
        loop {
            let a = self.next_ack().await.unwrap_or_else(|| {
                panic!(
                    "expected a {kind:?} acknowledgement, the response ended; got {:?}",
                    self.acks
                )
            });
            if a.event_type == kind {
                return a;
            }
            assert_ne!(a.event_type, AckEventType::Error, "unexpected error {a:?}");
        }
    }

    /// Every acknowledgement until the response ends.
    pub async fn drain(&mut self) -> Vec<Ack> {
        let mut out = Vec::new();
        while let Some(a) = self.next_ack().await {
            out.push(a);
        }
        out
    }

    /// The whole error body of a rejected request.
    pub async fn error_body(&mut self) -> (u16, Option<String>, String) {
        let status = self.status().await;
        let error_type = self
            .headers
            .iter()
            .find(|(k, _)| k == "x-amzn-errortype")
            .map(|(_, v)| v.clone());
        let mut body = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_secs(5), self.events.recv()).await
        {
            match ev {
                Incoming::Body(b) => body.extend_from_slice(&b),
                Incoming::End => break,
                _ => {}
            }
        }
        (
            status,
            error_type,
            String::from_utf8_lossy(&body).to_string(),
        )
    }
}

/// Builds Matroska the way producers send it.
pub mod mkv {
    use super::*;

    /// EBML header, unknown-size Segment, Info (1 ms timecode scale) and Tracks with the given tracks
    /// (number, codec id).
    pub fn header(tracks: &[(u64, &str)]) -> Vec<u8> {
        header_scaled(tracks, 1_000_000)
    }

    /// Like [`header`], with a TimecodeScale of `scale` nanoseconds.
    pub fn header_scaled(tracks: &[(u64, &str)], scale: u64) -> Vec<u8> {
        let mut out = kvs_mkv::writer::ebml_header("matroska");
        out.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
        let mut info = Vec::new();
        ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, scale);
        ebml::write_str_element(&mut info, id::MUXING_APP, "kvs-local tests");
        ebml::write_master_element(&mut out, id::INFO, &info);
        let mut tracks_body = Vec::new();
        for (number, codec) in tracks {
            let mut entry = Vec::new();
            ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, *number);
            ebml::write_uint_element(&mut entry, id::TRACK_UID, *number);
            ebml::write_uint_element(
                &mut entry,
                id::TRACK_TYPE,
                if codec.starts_with('V') { 1 } else { 2 },
            );
            ebml::write_str_element(&mut entry, id::CODEC_ID, codec);
            ebml::write_master_element(&mut tracks_body, id::TRACK_ENTRY, &entry);
        }
        ebml::write_master_element(&mut out, id::TRACKS, &tracks_body);
        out
    }

    pub fn video_header() -> Vec<u8> {
        header(&[(1, "V_MPEG4/ISO/AVC")])
    }

    /// An unknown-size cluster with `frames` frames of `frame_size` bytes on track 1, 33 ms apart, the first a key
    /// frame. The payload bytes carry the timecode so that corruption shows.
    pub fn cluster(timecode: u64, frames: usize, frame_size: usize) -> Vec<u8> {
        cluster_tracks(timecode, frames, frame_size, &[1])
    }

    /// Like [`cluster`], one frame per listed track at each step.
    pub fn cluster_tracks(
        timecode: u64,
        frames: usize,
        frame_size: usize,
        tracks: &[u64],
    ) -> Vec<u8> {
        let mut out = kvs_mkv::writer::cluster_start(timecode);
        for i in 0..frames {
            for &t in tracks {
                let fill = (timecode as usize + i * 7 + t as usize) as u8;
                let frame = vec![fill; frame_size];
                out.extend_from_slice(&kvs_mkv::writer::simple_block(
                    t,
                    (i * 33) as i16,
                    i == 0,
                    &frame,
                ));
            }
        }
        out
    }

    pub fn tags(pairs: &[(&str, &str)]) -> Vec<u8> {
        kvs_mkv::writer::tags_element(pairs)
    }

    pub fn end_of_fragment() -> Vec<u8> {
        kvs_mkv::writer::tags_element(&[(kvs_mkv::tags::END_OF_FRAGMENT, "")])
    }
}

/// One document of a GetMedia chain, summarised.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    pub tags: Vec<(String, String)>,
    pub cluster_timecode: Option<u64>,
    pub blocks: usize,
    pub cluster_raw: Vec<u8>,
}

impl Doc {
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every simple tag (name, value) anywhere in a GetMedia body, in order.
pub fn all_tags(body: &[u8]) -> Vec<(String, String)> {
    use kvs_mkv::stream::{MkvEvent, MkvStreamParser};
    let mut p = MkvStreamParser::default();
    p.push(body);
    let mut out = Vec::new();
    while let Ok(Some(e)) = p.next_event() {
        if let MkvEvent::Tags(t) = e {
            for s in t.tags {
                out.push((s.name, s.value.as_str().unwrap_or("").to_owned()));
            }
        }
    }
    out
}

/// Splits a GetMedia body into its fragment documents with kvs-mkv's parser.
pub fn parse_chain(body: &[u8]) -> Vec<Doc> {
    use kvs_mkv::stream::{MkvEvent, MkvStreamParser};
    let mut p = MkvStreamParser::default();
    p.push(body);
    let mut docs: Vec<Doc> = Vec::new();
    let mut events = Vec::new();
    loop {
        match p.next_event() {
            Ok(Some(e)) => events.push(e),
            Ok(None) => break,
            Err(e) => panic!("GetMedia output does not parse: {e}"),
        }
    }
    while let Ok(Some(e)) = p.finish() {
        events.push(e);
    }
    for e in events {
        match e {
            MkvEvent::Header(_) => docs.push(Doc::default()),
            MkvEvent::Tags(t) => {
                if let Some(d) = docs.last_mut() {
                    for s in t.tags {
                        d.tags
                            .push((s.name, s.value.as_str().unwrap_or("").to_owned()));
                    }
                }
            }
            MkvEvent::ClusterStart {
                timecode,
                raw_header,
            } => {
                if let Some(d) = docs.last_mut() {
                    d.cluster_timecode = Some(timecode);
                    d.cluster_raw.extend_from_slice(&raw_header);
                }
            }
            MkvEvent::ClusterChild { raw, block } => {
                if let Some(d) = docs.last_mut() {
                    d.cluster_raw.extend_from_slice(&raw);
                    if block.is_some() {
                        d.blocks += 1;
                    }
                }
            }
            _ => {}
        }
    }
    docs
}

/// The kvs-local binary running as a child process; killed when dropped.
pub struct Binary {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`, from its start-up line.
    pub url: String,
    pub client: Client,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the kvs-local binary on a free port, storing under `dir`, accepting the test key, with extra arguments
/// and environment variables, and waits for its start-up line.
pub fn spawn_binary(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Binary {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvs-local"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("kvs-local starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("start-up line");
    let url = line
        .trim()
        .strip_prefix("kvs-local listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let addr = url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected address in {url:?}"));
    Binary {
        child,
        url,
        client: Client::new(addr, credential()),
    }
}
