//! Puts the fault proxy between the elements and kvs-local, for the fault tests (tests/faults.rs), the soak
//! (examples/soak.rs) and the end-to-end benchmark (examples/bench_e2e.rs).
//!
//! kvs-local answers GetDataEndpoint with its own address, so an element pointed at a plain TCP proxy would send
//! its media around it. [`ControlFront`] is a small HTTP/1.1 relay for the control plane that forwards every
//! request byte for byte (signatures stay valid: the Host the element signed is the one kvs-local receives) and
//! rewrites only the `DataEndpoint` of GetDataEndpoint answers to the fault proxy. Its own upstream is the fault
//! proxy too, so a fault cuts control calls and media alike.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub use kvs_fault_proxy::{Fault, FaultProxy};

/// The fault proxy plus the control-plane front that routes data-plane calls through it.
pub struct Rig {
    pub proxy: FaultProxy,
    pub front: ControlFront,
}

impl Rig {
    /// Proxies to a kvs-local listening on 127.0.0.1:`server_port`.
    pub fn new(server_port: u16) -> io::Result<Rig> {
        let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server_port)))?;
        let front = ControlFront::start(proxy.addr(), proxy.url())?;
        Ok(Rig { proxy, front })
    }

    /// The `endpoint` property value for elements that should go through the faults.
    pub fn endpoint(&self) -> String {
        self.front.url()
    }
}

/// An HTTP/1.1 relay for control-plane calls that rewrites GetDataEndpoint answers. Dropping it stops accepting.
pub struct ControlFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    rewrites: Arc<AtomicUsize>,
}

impl ControlFront {
    /// Listens on 127.0.0.1 (a free port), relays to `upstream`, and answers GetDataEndpoint with `data_url`.
    pub fn start(upstream: SocketAddr, data_url: String) -> io::Result<ControlFront> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let rewrites = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), rewrites.clone());
        std::thread::Builder::new()
            .name("control-front".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let data_url = data_url.clone();
                            let r = r.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-front-conn".into())
                                .spawn(move || {
                                    let _ = relay(client, upstream, &data_url, &r);
                                });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(ControlFront {
            addr,
            stop,
            rewrites,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GetDataEndpoint answers rewritten so far.
    pub fn rewrites(&self) -> usize {
        self.rewrites.load(Ordering::Relaxed)
    }
}

impl Drop for ControlFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One HTTP message head: the start line and header lines as received, plus what framing needs.
struct Head {
    raw: Vec<u8>,
    start_line: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut start_line = String::new();
    let (mut content_length, mut chunked, mut close) = (None, false, false);
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "head cut short",
                ))
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if start_line.is_empty() {
            start_line = text;
            continue;
        }
        if text.is_empty() {
            break;
        }
        if let Some((name, value)) = text.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => content_length = value.parse().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    Ok(Some(Head {
        raw,
        start_line,
        content_length,
        chunked,
        close,
    }))
}

/// Reads a message body framed by `head`; a chunked body is returned de-chunked.
fn read_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    if let Some(n) = head.content_length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(body)
}

/// Serves one client connection: requests in order, each over one upstream connection kept alive.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    data_url: &str,
    rewrites: &AtomicUsize,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut up: Option<(BufReader<TcpStream>, TcpStream)> = None;
    let result = loop {
        let Some(req) = read_head(&mut from_client)? else {
            break Ok(());
        };
        let body = read_body(&mut from_client, &req)?;
        let is_data_endpoint = req.start_line.contains("/getDataEndpoint");
        if up.is_none() {
            let s = TcpStream::connect(upstream)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            let _ = s.set_nodelay(true);
            up = Some((BufReader::new(s.try_clone()?), s));
        }
        let Some((up_r, up_w)) = up.as_mut() else {
            break Ok(());
        };
        let mut out = req.raw.clone();
        if req.chunked {
            // Forwarded as one chunk: the framing is not signed, the bytes are.
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(&body);
        }
        up_w.write_all(&out)?;
        let Some(resp) = read_head(up_r)? else {
            break Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed before answering",
            ));
        };
        let mut resp_body = read_body(up_r, &resp)?;
        if is_data_endpoint
            && resp.start_line.contains(" 200")
            && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&resp_body)
            && v.get("DataEndpoint").is_some()
        {
            v["DataEndpoint"] = serde_json::Value::String(data_url.to_owned());
            resp_body = v.to_string().into_bytes();
            rewrites.fetch_add(1, Ordering::Relaxed);
        }
        // Re-frame the answer with a Content-Length (the body may have changed length).
        let mut head = Vec::new();
        for line in String::from_utf8_lossy(&resp.raw).split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if line.is_empty()
                || lower.starts_with("content-length:")
                || lower.starts_with("transfer-encoding:")
            {
                continue;
            }
            head.extend_from_slice(line.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", resp_body.len()).as_bytes());
        head.extend_from_slice(&resp_body);
        to_client.write_all(&head)?;
        if resp.close {
            up = None;
        }
        if req.close {
            break Ok(());
        }
    };
    let _ = to_client.shutdown(Shutdown::Both);
    result
}

/// Resident set size in KiB of a process, from /proc/<pid>/status (`self` for this one).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
