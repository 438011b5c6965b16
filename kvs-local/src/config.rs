//! Server configuration: listen address, storage, accepted credentials, TLS and the timeouts tests shorten.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;

/// An access key the server accepts, with its secret and, for temporary credentials, the session token that must
/// accompany it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Certificate chain and private key files (PEM) for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default PutMedia idle limit: the service closes a PutMedia request after 30 s without data.
pub const DEFAULT_PUT_MEDIA_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval of IDLE acknowledgements while a PutMedia request receives nothing.
pub const DEFAULT_IDLE_ACK_INTERVAL: Duration = Duration::from_secs(3);
/// Default time a GetMedia body waits for a new fragment before it ends.
pub const DEFAULT_GET_MEDIA_IDLE_END: Duration = Duration::from_secs(3);
/// Default maximum duration of one PutMedia or GetMedia connection (the service ends sessions after ~45 min).
pub const DEFAULT_MAX_CONNECTION_DURATION: Duration = Duration::from_secs(45 * 60);
/// Default interval of the retention sweep.
pub const DEFAULT_RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Largest fragment (cluster plus its tags), as the service enforces.
pub const DEFAULT_MAX_FRAGMENT_SIZE: u64 = 50 * 1024 * 1024;
/// Longest fragment.
pub const DEFAULT_MAX_FRAGMENT_DURATION: Duration = Duration::from_secs(20);
/// Largest JSON request body.
pub const DEFAULT_MAX_JSON_BODY: usize = 1024 * 1024;
/// Account id used in ARNs.
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory holding the index database and the media segments.
    pub data_dir: PathBuf,
    /// Region named in ARNs and expected in the credential scope of signatures.
    pub region: String,
    /// 12-digit account id named in ARNs.
    pub account_id: String,
    /// Accepted keys.
    pub credentials: Vec<Credential>,
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// Reject signatures whose date is more than 15 minutes from the server clock. Off only to replay old captures.
    pub check_clock_skew: bool,
    /// ListFragments returns fragments in fragment-number order instead of the service's arbitrary order.
    pub ordered_list_fragments: bool,
    /// URL that GetDataEndpoint returns instead of this server's own, e.g. a proxy in front of it.
    pub advertised_url: Option<String>,
    pub put_media_idle_timeout: Duration,
    pub idle_ack_interval: Duration,
    pub get_media_idle_end: Duration,
    pub max_connection_duration: Duration,
    pub retention_sweep_interval: Duration,
    /// Length of one hour of DataRetentionInHours. Always an hour in service; tests shorten it to see fragments
    /// expire.
    pub retention_hour: Duration,
    pub max_fragment_size: u64,
    pub max_fragment_duration: Duration,
    pub max_json_body: usize,
}

impl Config {
    /// A configuration with the service's defaults, listening on `listen` and storing under `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen,
            data_dir: data_dir.into(),
            region: "us-east-1".to_owned(),
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            credentials: Vec::new(),
            tls: None,
            check_clock_skew: true,
            ordered_list_fragments: false,
            advertised_url: None,
            put_media_idle_timeout: DEFAULT_PUT_MEDIA_IDLE_TIMEOUT,
            idle_ack_interval: DEFAULT_IDLE_ACK_INTERVAL,
            get_media_idle_end: DEFAULT_GET_MEDIA_IDLE_END,
            max_connection_duration: DEFAULT_MAX_CONNECTION_DURATION,
            retention_sweep_interval: DEFAULT_RETENTION_SWEEP_INTERVAL,
            retention_hour: Duration::from_secs(3600),
            max_fragment_size: DEFAULT_MAX_FRAGMENT_SIZE,
            max_fragment_duration: DEFAULT_MAX_FRAGMENT_DURATION,
            max_json_body: DEFAULT_MAX_JSON_BODY,
        }
    }

    /// Adds a key, replacing an earlier one with the same access key id and session token. One access key may be
    /// accepted with several session tokens (and without one) by adding it once per token.
    pub fn add_credential(&mut self, credential: Credential) {
        self.credentials.retain(|c| {
            c.access_key_id != credential.access_key_id
                || c.session_token != credential.session_token
        });
        self.credentials.push(credential);
    }

    /// Adds the key in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) when both are set.
    pub fn add_credential_from_env(&mut self) {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(access_key_id), Some(secret_access_key)) =
            (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY"))
        {
            self.add_credential(Credential {
                access_key_id,
                secret_access_key,
                session_token: get("AWS_SESSION_TOKEN"),
            });
        }
    }

    /// Adds every key of a credentials file (see [`parse_credentials`]).
    pub fn add_credentials_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::CredentialsFile {
                path: path.to_owned(),
                source,
            })?;
        for credential in
            parse_credentials(&text).map_err(|(line, reason)| ConfigError::CredentialsSyntax {
                path: path.to_owned(),
                line,
                reason,
            })?
        {
            self.add_credential(credential);
        }
        Ok(())
    }

    /// Checks what cannot be checked by types alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.credentials.is_empty() {
            return Err(ConfigError::NoCredentials);
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid(format!(
                "account id '{}' is not 12 digits",
                self.account_id
            )));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "region '{}' is not a region name",
                self.region
            )));
        }
        if self.idle_ack_interval.is_zero()
            || self.get_media_idle_end.is_zero()
            || self.put_media_idle_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "timeouts and intervals must be greater than 0".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Parses a credentials file: one key per line, `ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]` separated by
/// blanks; empty lines and lines starting with `#` are ignored. Returns the 1-based line number and the reason on
/// error.
pub fn parse_credentials(text: &str) -> Result<Vec<Credential>, (usize, String)> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [ak, sk] => out.push(Credential {
                access_key_id: (*ak).to_owned(),
                secret_access_key: (*sk).to_owned(),
                session_token: None,
            }),
            [ak, sk, token] => out.push(Credential {
                access_key_id: (*ak).to_owned(),
                secret_access_key: (*sk).to_owned(),
                session_token: Some((*token).to_owned()),
            }),
            _ => {
                return Err((
                    index + 1,
                    format!(
                        "expected 'ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]', found {} fields",
                        fields.len()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_lines_comments_and_tokens() {
        let creds =
            parse_credentials("# local keys\n\nAKID1 secret1\n  AKID2 secret2 token2  \n").unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[0].access_key_id, "AKID1");
        assert_eq!(creds[0].session_token, None);
        assert_eq!(creds[1].secret_access_key, "secret2");
        assert_eq!(creds[1].session_token.as_deref(), Some("token2"));
    }

    #[test]
    fn credentials_file_errors_name_the_line() {
        let err = parse_credentials("AKID1 secret1\nonlyone\n").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("found 1 fields"), "{}", err.1);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credential {
            access_key_id: "AKID".into(),
            secret_access_key: "verysecret".into(),
            session_token: Some("tok".into()),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("verysecret") && !s.contains("tok\""), "{s}");
    }
}
