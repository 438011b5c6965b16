//! The process-wide HTTP connection pools: one `reqwest::Client` per TLS/connection configuration, shared by all
//! elements and clients with that configuration, so several streams in one process reuse connections.
//!
//! HTTPS uses rustls with the system roots (and the webpki roots), plus the PEM certificates of `ca-file` or,
//! when that is unset, of `KVSSINK_CA_CERT_PATH`. HTTP/1.1 only: PutMedia signs its hop-by-hop headers
//! (`connection`, `transfer-encoding`), which HTTP/2 cannot carry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use super::error::AwsError;

/// The environment variable C++ kvssink users set for an extra CA file.
pub const CA_CERT_ENV: &str = "KVSSINK_CA_CERT_PATH";

/// TCP keep-alive of pooled connections: long PutMedia/GetMedia sessions must notice a dead peer.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What distinguishes one connection pool from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpConfig {
    /// Extra trusted CA certificates (PEM bundle).
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect limit; `None` = no limit.
    pub connect_timeout: Option<Duration>,
}

impl HttpConfig {
    /// `ca_file` from the property, else from `KVSSINK_CA_CERT_PATH`.
    pub fn new(ca_file: Option<PathBuf>, connect_timeout: Option<Duration>) -> HttpConfig {
        let ca_file =
            ca_file.or_else(|| super::endpoint::process_env(CA_CERT_ENV).map(PathBuf::from));
        HttpConfig {
            ca_file,
            connect_timeout,
        }
    }
}

static CLIENTS: LazyLock<Mutex<HashMap<HttpConfig, reqwest::Client>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The shared client for `config`, built on first use.
pub fn shared_client(config: &HttpConfig) -> Result<reqwest::Client, AwsError> {
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(config) {
        return Ok(c.clone());
    }
    let client = build_client(config)?;
    clients.insert(config.clone(), client.clone());
    Ok(client)
}

/// Number of distinct pools in the process (for tests and stats).
pub fn pool_count() -> usize {
    CLIENTS.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn build_client(config: &HttpConfig) -> Result<reqwest::Client, AwsError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .http1_only()
        .tcp_keepalive(TCP_KEEPALIVE)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Redirects would re-send a signature made for another host.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(t) = config.connect_timeout {
        builder = builder.connect_timeout(t);
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            AwsError::Config(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            AwsError::Config(format!(
                "CA file {} is not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(AwsError::Config(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| AwsError::Config(format!("cannot build the HTTPS client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_config_shares_one_pool_and_bad_ca_files_are_named() {
        let a = HttpConfig {
            ca_file: None,
            connect_timeout: Some(Duration::from_secs(3)),
        };
        shared_client(&a).expect("client");
        let n = pool_count();
        shared_client(&a.clone()).expect("client");
        assert_eq!(pool_count(), n);

        let e = shared_client(&HttpConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            connect_timeout: None,
        })
        .expect_err("missing CA file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let e = shared_client(&HttpConfig {
            ca_file: Some(junk.clone()),
            connect_timeout: None,
        })
        .expect_err("junk CA file");
        assert!(e.to_string().contains("junk.pem"), "{e}");
    }
}
