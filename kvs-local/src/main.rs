//! The `kvs-local` binary: a local Kinesis Video Streams endpoint.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvs_local::{Config, Server, TlsFiles};

/// A local Amazon Kinesis Video Streams endpoint: control plane, PutMedia, GetMedia, ListFragments and
/// GetMediaForFragmentList on one address, with SigV4 verification and durable storage.
///
/// Accepted keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and from --credentials.
/// When ready it prints one line `kvs-local listening on http://HOST:PORT` to stdout.
#[derive(Debug, Parser)]
#[command(name = "kvs-local", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:4567")]
    listen: SocketAddr,
    /// Directory for the index database and media segments (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Region named in ARNs and expected in signatures' credential scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// 12-digit account id named in ARNs.
    #[arg(long, default_value = kvs_local::config::DEFAULT_ACCOUNT_ID)]
    account_id: String,
    /// File of accepted keys, one per line: `ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]`; `#` starts a comment.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (requires --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Longest PutMedia or GetMedia connection, in seconds; PutMedia then ends with error 4003.
    #[arg(long, default_value_t = 45 * 60)]
    max_connection_duration: u64,
    /// ListFragments returns fragments in fragment-number order (the service returns them in no order).
    #[arg(long)]
    ordered_list_fragments: bool,
    /// URL that GetDataEndpoint answers instead of this server's own (e.g. a proxy or a tunnel in front of it).
    #[arg(long, value_name = "URL")]
    advertised_url: Option<String>,
    /// Seconds without data after which a PutMedia request is closed.
    #[arg(long, default_value_t = 30)]
    put_media_idle_timeout: u64,
    /// Milliseconds between IDLE acknowledgements while a PutMedia request receives nothing.
    #[arg(long, default_value_t = 3000)]
    idle_ack_interval_ms: u64,
    /// Milliseconds without a new fragment after which a GetMedia body ends.
    #[arg(long, default_value_t = 3000)]
    get_media_idle_end_ms: u64,
    /// Seconds between retention sweeps.
    #[arg(long, default_value_t = 60)]
    retention_sweep_interval: u64,
    /// Largest fragment in bytes (error 4001 above it).
    #[arg(long, default_value_t = kvs_local::config::DEFAULT_MAX_FRAGMENT_SIZE)]
    max_fragment_size: u64,
    /// Longest fragment in milliseconds (error 4002 above it).
    #[arg(long, default_value_t = 20_000)]
    max_fragment_duration_ms: u64,
    /// Do not reject signatures dated more than 15 minutes from the server clock (for replaying old captures).
    #[arg(long)]
    no_clock_skew_check: bool,
}

fn config(args: Args) -> Result<Config, kvs_local::Error> {
    let mut c = Config::new(args.listen, args.data_dir);
    c.region = args.region;
    c.account_id = args.account_id;
    c.add_credential_from_env();
    if let Some(path) = &args.credentials {
        c.add_credentials_file(path)?;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        c.tls = Some(TlsFiles { cert, key });
    }
    c.max_connection_duration = Duration::from_secs(args.max_connection_duration);
    c.ordered_list_fragments = args.ordered_list_fragments;
    c.advertised_url = args.advertised_url;
    c.put_media_idle_timeout = Duration::from_secs(args.put_media_idle_timeout);
    c.idle_ack_interval = Duration::from_millis(args.idle_ack_interval_ms);
    c.get_media_idle_end = Duration::from_millis(args.get_media_idle_end_ms);
    c.retention_sweep_interval = Duration::from_secs(args.retention_sweep_interval.max(1));
    c.max_fragment_size = args.max_fragment_size;
    c.max_fragment_duration = Duration::from_millis(args.max_fragment_duration_ms);
    c.check_clock_skew = !args.no_clock_skew_check;
    Ok(c)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvs-local")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvs-local: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match config(args) {
            Ok(c) => Server::start(c).await,
            Err(e) => Err(e),
        };
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kvs-local: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "kvs-local listening on {}", server.url());
        let _ = out.flush();
        drop(out);
        terminated().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
