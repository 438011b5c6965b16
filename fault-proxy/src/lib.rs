//! A TCP proxy on 127.0.0.1 that sits between a client and a server and injects network faults on command:
//! added delay, a bandwidth cap, a stall (bytes held, connections kept open), a half-open link (one direction
//! stops), refused connections, and cuts (all current connections closed, or reset with RST).
//!
//! It runs on its own small runtime so that synchronous tests (GStreamer pipelines) can drive it directly.
//!
//! [`disk`] has the disk fault: a small tmpfs to fill up.

pub mod disk;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats traffic; applies to new and current connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    None,
    /// Hold each read for this long before forwarding it.
    Delay(Duration),
    /// Forward at most this many bytes per second in each direction.
    Throttle { bytes_per_sec: u64 },
    /// Forward nothing in either direction; connections stay open (a dead network path).
    Stall,
    /// Forward client -> server, but nothing server -> client (the server's answers, e.g. acks, vanish).
    HalfOpenDownstream,
    /// Accept new connections and close them at once; current ones keep going.
    Refuse,
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Upstream,
    Downstream,
}

struct Shared {
    fault: watch::Sender<Fault>,
    /// Bumped by `cut`/`reset`: every connection older than the new generation closes.
    generation: watch::Sender<(u64, bool)>,
    upstream: Mutex<SocketAddr>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A running fault proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_on(0, upstream)
    }

    /// Starts a proxy on 127.0.0.1:`port` forwarding to `upstream`.
    pub fn start_on(port: u16, upstream: SocketAddr) -> io::Result<FaultProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", port)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fault: watch::channel(Fault::None).0,
            generation: watch::channel((0, false)).0,
            upstream: Mutex::new(upstream),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        runtime.spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies a fault (or `Fault::None` to heal).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// Forwards new connections to another server address (e.g. a restarted server on a new port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        if let Ok(mut u) = self.shared.upstream.lock() {
            *u = upstream;
        }
    }

    /// Closes every current connection with a FIN (an orderly cut).
    pub fn cut(&self) {
        self.shared.generation.send_modify(|(g, rst)| {
            *g += 1;
            *rst = false;
        });
    }

    /// Closes every current connection with a TCP reset.
    pub fn reset(&self) {
        self.shared.generation.send_modify(|(g, rst)| {
            *g += 1;
            *rst = true;
        });
    }

    /// Bytes forwarded client -> server so far.
    pub fn bytes_upstream(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded server -> client so far.
    pub fn bytes_downstream(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn connections_open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if *shared.fault.borrow() == Fault::Refuse {
            drop(client);
            continue;
        }
        tokio::spawn(serve(client, shared.clone()));
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let upstream = match shared.upstream.lock() {
        Ok(u) => *u,
        Err(_) => return,
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client sees its connection close, as it would see a refusal.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let born = shared.generation.borrow().0;
    let mut generation = shared.generation.subscribe();
    let reset = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, Direction::Upstream, &shared);
        let down = pump(sr, cw, Direction::Downstream, &shared);
        let killed = async {
            loop {
                if generation.changed().await.is_err() {
                    return false;
                }
                let (g, rst) = *generation.borrow();
                if g > born {
                    return rst;
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            rst = killed => rst,
        }
    };
    shared.open.fetch_sub(1, Ordering::Relaxed);
    if reset {
        // Linger 0 turns the close below into a TCP reset.
        for s in [&client, &server] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

async fn pump<R, W>(mut from: R, mut to: W, dir: Direction, shared: &Shared)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut faults = shared.fault.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Hold the bytes while the fault forbids forwarding in this direction.
        loop {
            let blocked = match *faults.borrow_and_update() {
                Fault::Stall => true,
                Fault::HalfOpenDownstream => dir == Direction::Downstream,
                _ => false,
            };
            if !blocked {
                break;
            }
            if faults.changed().await.is_err() {
                return;
            }
        }
        let fault = *faults.borrow();
        match fault {
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Throttle { bytes_per_sec } if bytes_per_sec > 0 => {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64)).await;
            }
            _ => {}
        }
        // Counted before the write: once the peer has the bytes, a test reading the counter must see them.
        let counter = match dir {
            Direction::Upstream => &shared.bytes_up,
            Direction::Downstream => &shared.bytes_down,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    /// An echo server on a free port.
    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(c: &mut StdStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        c.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_and_counts() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        assert_eq!(roundtrip(&mut c, b"hello").unwrap(), b"hello");
        assert_eq!(proxy.bytes_upstream(), 5);
        assert_eq!(proxy.bytes_downstream(), 5);
        assert_eq!(proxy.connections_accepted(), 1);
    }

    #[test]
    fn stall_holds_bytes_until_healed() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        proxy.set_fault(Fault::Stall);
        c.write_all(b"held").unwrap();
        let mut buf = [0u8; 4];
        assert!(
            c.read_exact(&mut buf).is_err(),
            "nothing comes back during a stall"
        );
        proxy.set_fault(Fault::None);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
    }

    #[test]
    fn half_open_drops_only_the_answers() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        proxy.set_fault(Fault::HalfOpenDownstream);
        c.write_all(b"up").unwrap();
        let mut buf = [0u8; 2];
        assert!(c.read_exact(&mut buf).is_err());
        assert_eq!(proxy.bytes_upstream(), 2);
        assert_eq!(proxy.bytes_downstream(), 0);
    }

    #[test]
    fn cut_and_reset_close_current_connections() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        for reset in [false, true] {
            let mut c = StdStream::connect(proxy.addr()).unwrap();
            roundtrip(&mut c, b"x").unwrap();
            if reset {
                proxy.reset();
            } else {
                proxy.cut();
            }
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1];
            match c.read(&mut buf) {
                Ok(0) => assert!(!reset, "a reset must not look like an orderly close"),
                Err(e) => assert!(reset, "an orderly cut gave {e}"),
                Ok(n) => panic!("read {n} bytes from a cut connection"),
            }
        }
        // New connections still work.
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        assert_eq!(roundtrip(&mut c, b"again").unwrap(), b"again");
    }

    #[test]
    fn refuse_closes_new_connections() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        proxy.set_fault(Fault::Refuse);
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(roundtrip(&mut c, b"no").is_err());
    }

    #[test]
    fn throttle_caps_the_rate() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        proxy.set_fault(Fault::Throttle {
            bytes_per_sec: 20_000,
        });
        let mut c = StdStream::connect(proxy.addr()).unwrap();
        let t = std::time::Instant::now();
        roundtrip(&mut c, &[7u8; 4000]).unwrap();
        // 4000 bytes each way at 20 kB/s: at least 0.2 s per direction.
        assert!(
            t.elapsed() >= Duration::from_millis(350),
            "took {:?}",
            t.elapsed()
        );
    }
}
