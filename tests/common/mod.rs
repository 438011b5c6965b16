//! Shared harness of the plugin's integration tests: GStreamer set-up, a real kvs-local server run as a child
//! process (so tests can kill -9 and restart it), and pipeline helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::prelude::*;

/// Credentials the test server accepts.
pub const ACCESS_KEY: &str = "AKIDKVSLOCALTEST0001";
pub const SECRET_KEY: &str = "kvs-local/test/secret/key/0123456789abcdef";
pub const REGION: &str = "us-east-1";

/// Initialises GStreamer and registers this crate's elements, once per test process.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstkvs::plugin_register_static().expect("the kvs plugin registers");
    });
}

/// The kvs-local binary: `$KVS_LOCAL_BIN`, else `kvs-local` next to the test's target directory.
pub fn kvs_local_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KVS_LOCAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/kvs-local
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kvs-local"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "kvs-local is not built at {}: run `cargo build -p kvs-local` (the README's test command does)",
        bin.display()
    );
    bin
}

/// A kvs-local server running as a child process on 127.0.0.1 with a throwaway data directory.
pub struct LocalServer {
    child: Option<Child>,
    port: u16,
    scheme: &'static str,
    dir: tempfile::TempDir,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    starts: usize,
}

impl LocalServer {
    /// Starts a server with the default test credentials.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts a server with extra arguments and environment variables.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut s = LocalServer {
            child: None,
            port: 0,
            scheme: if args.contains(&"--tls-cert") {
                "https"
            } else {
                "http"
            },
            dir: tempfile::Builder::new()
                .prefix("kvs-local-test")
                .tempdir()
                .expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let data_dir = self.dir.path().join("data");
        let log = self.log_path(self.starts);
        self.starts += 1;
        let log_file = std::fs::File::create(&log).expect("server log file");
        let mut cmd = Command::new(kvs_local_bin());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--region")
            .arg(REGION)
            .args(&self.args)
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env(
                "RUST_LOG",
                std::env::var("KVS_LOCAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("kvs-local starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("kvs-local listening on ") {
                        let port = url.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                        self.port =
                            port.unwrap_or_else(|| panic!("unexpected listening line: {line}"));
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "kvs-local did not report that it listens within 30 s; its log: {}\n{}",
                        log.display(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        self.child = Some(child);
    }

    /// Path of the server's log (stderr) for its n-th start.
    pub fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("kvs-local.{n}.log"))
    }

    /// The server's logs so far, all starts.
    pub fn logs(&self) -> String {
        (0..self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Stops the server with SIGTERM and waits up to 10 s for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets the properties that point a kvssink or kvssrc at this server.
    pub fn configure(&self, element: &gst::Element) {
        element.set_property("endpoint", self.url());
        element.set_property("access-key", ACCESS_KEY);
        element.set_property("secret-key", SECRET_KEY);
        element.set_property("aws-region", REGION);
    }

    /// The same settings as gst-launch property assignments.
    pub fn launch_props(&self) -> String {
        format!(
            "endpoint={} access-key={ACCESS_KEY} secret-key={SECRET_KEY} aws-region={REGION}",
            self.url()
        )
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a pipeline run produced on its bus.
#[derive(Debug, Default)]
pub struct RunResult {
    pub eos: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Element messages, by structure.
    pub element_messages: Vec<gst::Structure>,
}

impl RunResult {
    pub fn messages_named(&self, name: &str) -> Vec<&gst::Structure> {
        self.element_messages
            .iter()
            .filter(|s| s.name() == name)
            .collect()
    }
}

/// Plays `pipeline` until EOS, an error or `timeout`, then sets it to NULL.
pub fn run_pipeline(pipeline: &gst::Pipeline, timeout: Duration) -> RunResult {
    run_pipeline_with(pipeline, timeout, |_| {})
}

/// Like [`run_pipeline`], calling `on_message` for every bus message (e.g. to act at some point of the run).
pub fn run_pipeline_with(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    mut on_message: impl FnMut(&gst::Message),
) -> RunResult {
    let bus = pipeline.bus().expect("pipeline bus");
    let mut result = RunResult::default();
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        result
            .errors
            .push(format!("could not start the pipeline: {e}"));
        let _ = pipeline.set_state(gst::State::Null);
        return result;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            result.errors.push(format!("timed out after {timeout:?}"));
            break;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis() as u64))
        else {
            continue;
        };
        on_message(&msg);
        use gst::MessageView;
        match msg.view() {
            MessageView::Eos(_) => {
                result.eos = true;
                break;
            }
            MessageView::Error(e) => {
                result.errors.push(format!(
                    "{}: {} ({})",
                    e.src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default(),
                    e.error(),
                    e.debug().unwrap_or_default()
                ));
                break;
            }
            MessageView::Warning(w) => {
                result
                    .warnings
                    .push(format!("{} ({})", w.error(), w.debug().unwrap_or_default()))
            }
            MessageView::Element(e) => {
                if let Some(s) = e.structure() {
                    result.element_messages.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Builds a pipeline from a gst-launch description.
pub fn parse_pipeline(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}' does not parse: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

/// Counts the video and audio frames of a Matroska file by demuxing it, and the end time of its last video frame.
/// Works whatever tracks the file has: each demuxer pad is linked to its own counting sink when it appears.
pub fn demux_counts(path: &Path) -> (usize, usize, Option<gst::ClockTime>) {
    use std::sync::{Arc, Mutex};
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .expect("filesrc");
    let demux = gst::ElementFactory::make("matroskademux")
        .build()
        .expect("matroskademux");
    pipeline.add_many([&src, &demux]).expect("add");
    src.link(&demux).expect("link filesrc to matroskademux");
    let counts = Arc::new(Mutex::new((0usize, 0usize, None::<gst::ClockTime>)));
    let weak = pipeline.downgrade();
    let pad_counts = counts.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let video = pad.name().starts_with("video");
        let queue = gst::ElementFactory::make("queue").build().expect("queue");
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
            .expect("fakesink");
        pipeline.add_many([&queue, &sink]).expect("add");
        queue.link(&sink).expect("link");
        for e in [&queue, &sink] {
            let _ = e.sync_state_with_parent();
        }
        let _ = pad.link(&queue.static_pad("sink").expect("queue sink pad"));
        let counts = pad_counts.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                let mut c = counts.lock().unwrap();
                if video {
                    c.0 += 1;
                    if let Some(pts) = buf.pts() {
                        let end = pts + buf.duration().unwrap_or(gst::ClockTime::ZERO);
                        c.2 = Some(c.2.map_or(end, |e: gst::ClockTime| e.max(end)));
                    }
                } else {
                    c.1 += 1;
                }
            }
            gst::PadProbeReturn::Ok
        });
    });
    let r = run_pipeline(&pipeline, Duration::from_secs(120));
    assert!(
        r.errors.is_empty(),
        "demuxing {} failed: {:?}",
        path.display(),
        r.errors
    );
    let c = counts.lock().unwrap();
    (c.0, c.1, c.2)
}

/// Runs a pipeline that ends in fakesinks named `v` (video) and optionally `a` (audio) and counts their buffers and
/// the last video end time.
pub fn count_demuxed(desc: &str) -> (usize, usize, Option<gst::ClockTime>) {
    use std::sync::{Arc, Mutex};
    let pipeline = parse_pipeline(desc);
    let counts = Arc::new(Mutex::new((0usize, 0usize, None::<gst::ClockTime>)));
    for (name, video) in [("v", true), ("a", false)] {
        let Some(sink) = pipeline.by_name(name) else {
            continue;
        };
        let pad = sink.static_pad("sink").expect("sink pad");
        let counts = counts.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                let mut c = counts.lock().unwrap();
                if video {
                    c.0 += 1;
                    if let Some(pts) = buf.pts() {
                        let end = pts + buf.duration().unwrap_or(gst::ClockTime::ZERO);
                        c.2 = Some(c.2.map_or(end, |e: gst::ClockTime| e.max(end)));
                    }
                } else {
                    c.1 += 1;
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    let r = run_pipeline(&pipeline, Duration::from_secs(120));
    assert!(r.errors.is_empty(), "demuxing failed: {:?}", r.errors);
    let c = counts.lock().unwrap();
    (c.0, c.1, c.2)
}

/// A client of the plugin's AWS layer pointed at `url` with the test credentials, to check what a server stored.
pub fn kvs_client(url: &str) -> gstkvs::aws::KvsClient {
    let settings = gstkvs::aws::AwsSettings {
        access_key: Some(ACCESS_KEY.into()),
        secret_key: Some(SECRET_KEY.into()),
        aws_region: Some(REGION.into()),
        endpoint: Some(url.into()),
        ..Default::default()
    };
    gstkvs::aws::KvsClient::new(&settings).expect("client for kvs-local")
}

/// The stored media of these fragments, straight from the server at `url` (GetMediaForFragmentList, 1000 a call).
pub fn fragment_list_media<'a>(
    url: &str,
    stream: &str,
    fragments: impl IntoIterator<Item = &'a gstkvs::aws::Fragment>,
) -> Vec<u8> {
    let client = kvs_client(url);
    let rt = gstkvs::aws::runtime().expect("runtime");
    let numbers: Vec<String> = fragments
        .into_iter()
        .map(|f| f.fragment_number.clone())
        .collect();
    let mut media = Vec::new();
    for chunk in numbers.chunks(1000) {
        rt.block_on(async {
            let mut resp = client
                .get_media_for_fragment_list(&gstkvs::aws::StreamRef::Name(stream.into()), chunk)
                .await
                .expect("GetMediaForFragmentList");
            while let Some(bytes) = resp.next_chunk().await.expect("media body") {
                media.extend_from_slice(&bytes);
            }
        });
    }
    media
}

/// Every fragment of `stream` on the server at `url` (all ListFragments pages), in fragment-number order.
pub fn list_fragments(url: &str, stream: &str) -> Vec<gstkvs::aws::Fragment> {
    let client = kvs_client(url);
    let rt = gstkvs::aws::runtime().expect("runtime");
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = rt
            .block_on(client.list_fragments(&gstkvs::aws::ListFragmentsInput {
                stream: gstkvs::aws::StreamRef::Name(stream.into()),
                selector: None,
                max_results: Some(1000),
                next_token: token.take(),
            }))
            .expect("ListFragments");
        out.extend(page.fragments);
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out.sort_by(|a, b| a.fragment_number.cmp(&b.fragment_number));
    out
}
