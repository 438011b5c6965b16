//! Where the credentials come from, and keeping them fresh.
//!
//! The first configured source wins:
//! 1. the `access-key` / `secret-key` / `session-token` properties (static; never any network lookup),
//! 2. `iot-certificate`: the AWS IoT credentials provider, a mutual-TLS `GET
//!    https://<endpoint>/role-aliases/<alias>/credentials` with the `x-amzn-iot-thingname` header,
//! 3. `credential-path`: a file in the C++ producer format, re-read when it changes or nears its expiration,
//! 4. the standard aws-config chain (environment, shared files with `aws-profile`, web identity, ECS, IMDS, SSO,
//!    credential_process).
//!
//! Credentials are cached and refreshed shortly before they expire, so every new connection is signed with
//! current credentials without a lookup per request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use gst::prelude::GstValueExt;
use serde::Deserialize;

use super::CAT;
use super::error::AwsError;
use super::settings::AwsSettings;

/// Credentials are refreshed this long before they expire (or at half their remaining lifetime if shorter).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiration from the default chain are looked up again after this long, so that
/// edited profile files are picked up.
pub const NON_EXPIRING_RECHECK: Duration = Duration::from_secs(10 * 60);

const PROVIDER_PROPERTIES: &str = "gst-kvs-properties";
const PROVIDER_IOT: &str = "gst-kvs-iot-certificate";
const PROVIDER_FILE: &str = "gst-kvs-credential-path";

/// The source chosen for an element, as logged (never secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Properties,
    IotCertificate {
        endpoint: String,
        role_alias: String,
        thing_name: String,
    },
    CredentialFile(PathBuf),
    DefaultChain {
        profile: Option<String>,
    },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Properties => write!(f, "access-key/secret-key properties"),
            CredentialSource::IotCertificate {
                endpoint,
                role_alias,
                thing_name,
            } => write!(
                f,
                "iot-certificate (endpoint {endpoint}, role alias {role_alias}, thing {thing_name})"
            ),
            CredentialSource::CredentialFile(p) => write!(f, "credential-path {}", p.display()),
            CredentialSource::DefaultChain { profile: Some(p) } => {
                write!(f, "default AWS credential chain (profile {p})")
            }
            CredentialSource::DefaultChain { profile: None } => {
                write!(f, "default AWS credential chain")
            }
        }
    }
}

/// The C++ kvssink `iot-certificate` structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotCertificate {
    /// Host (optionally `host:port`, or a full `https://` URL) of the IoT credentials endpoint.
    pub endpoint: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: Option<PathBuf>,
    pub role_alias: String,
    pub thing_name: String,
}

impl IotCertificate {
    /// Reads the structure's fields; `fallback_thing_name` (the stream name in the C++ kvssink) is used when it
    /// has no `iot-thing-name`.
    pub fn from_structure(
        s: &gst::StructureRef,
        fallback_thing_name: Option<&str>,
    ) -> Result<IotCertificate, AwsError> {
        // An unquoted value in a gst-launch line may be parsed as a number (a thing named 12345): take its text.
        let field = |name: &str| -> Option<String> {
            s.get::<String>(name)
                .ok()
                .or_else(|| {
                    s.value(name)
                        .ok()
                        .and_then(|v| v.serialize().ok())
                        .map(|v| v.to_string())
                })
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| {
            field(name).ok_or_else(|| {
                AwsError::Config(format!(
                    "iot-certificate has no {name} field (it needs endpoint, cert-path, key-path, \
                     role-aliases and optionally ca-path and iot-thing-name)"
                ))
            })
        };
        let endpoint = required("endpoint")?;
        let cert_path = required("cert-path")?.into();
        let key_path = required("key-path")?.into();
        let role_alias = required("role-aliases")?;
        let thing_name = field("iot-thing-name")
            .or_else(|| fallback_thing_name.map(str::to_string))
            .ok_or_else(|| {
                AwsError::Config(
                    "iot-certificate has no iot-thing-name field and there is no stream name to use instead"
                        .into(),
                )
            })?;
        Ok(IotCertificate {
            endpoint,
            cert_path,
            key_path,
            ca_path: field("ca-path").map(PathBuf::from),
            role_alias,
            thing_name,
        })
    }

    /// `https://<endpoint>/role-aliases/<alias>/credentials`.
    pub fn url(&self) -> String {
        let base = if self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")
        {
            self.endpoint.trim_end_matches('/').to_string()
        } else {
            format!("https://{}", self.endpoint.trim_end_matches('/'))
        };
        format!("{base}/role-aliases/{}/credentials", self.role_alias)
    }
}

/// Parses the C++ producer credential file: `CREDENTIALS <ak> <sk>` or
/// `CREDENTIALS <ak> <YYYY-MM-DDTHH:MM:SSZ> <sk> <token>`.
pub fn parse_credential_file(text: &str, path: &Path) -> Result<Credentials, AwsError> {
    let bad = |why: &str| {
        AwsError::Credentials(format!(
            "credential file {} is not in the expected format ({why}); expected \
             'CREDENTIALS <access-key> <secret-key>' or \
             'CREDENTIALS <access-key> <YYYY-MM-DDTHH:MM:SSZ> <secret-key> <session-token>'",
            path.display()
        ))
    };
    let tokens: Vec<&str> = text.split_whitespace().collect();
    match tokens.as_slice() {
        ["CREDENTIALS", ak, sk] => Ok(Credentials::new(*ak, *sk, None, None, PROVIDER_FILE)),
        ["CREDENTIALS", ak, expiration, sk, token] => {
            let expiry = parse_timestamp(expiration).map_err(|e| bad(&e))?;
            Ok(Credentials::new(
                *ak,
                *sk,
                Some(token.to_string()),
                Some(expiry),
                PROVIDER_FILE,
            ))
        }
        [] => Err(bad("the file is empty")),
        [first, ..] if *first != "CREDENTIALS" => Err(bad("it does not start with CREDENTIALS")),
        _ => Err(bad(&format!("{} fields", tokens.len()))),
    }
}

/// RFC 3339 / ISO 8601 UTC timestamp (`2026-11-21T16:00:00Z`, fractions allowed).
pub(crate) fn parse_timestamp(s: &str) -> Result<SystemTime, String> {
    let dt = aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime)
        .map_err(|e| format!("invalid expiration {s:?}: {e}"))?;
    SystemTime::try_from(dt).map_err(|e| format!("invalid expiration {s:?}: {e}"))
}

fn format_time(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// When cached credentials expiring at `expiry` (fetched at `now`) should be replaced.
pub fn refresh_time(now: SystemTime, expiry: Option<SystemTime>) -> Option<SystemTime> {
    let expiry = expiry?;
    let remaining = expiry.duration_since(now).unwrap_or(Duration::ZERO);
    Some(expiry - REFRESH_MARGIN.min(remaining / 2))
}

#[derive(Deserialize)]
struct IotResponse {
    credentials: IotCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IotCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// A file's identity for change detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn file_stamp(path: &Path) -> Result<FileStamp, AwsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        AwsError::Credentials(format!(
            "cannot read credential file {}: {e}",
            path.display()
        ))
    })?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

#[derive(Clone)]
struct Cached {
    credentials: Credentials,
    refresh_at: Option<SystemTime>,
    stamp: Option<FileStamp>,
}

enum Fetcher {
    Static,
    Iot {
        config: IotCertificate,
        client: reqwest::Client,
    },
    File(PathBuf),
    Chain {
        profile: Option<String>,
        chain: tokio::sync::OnceCell<
            aws_config::default_provider::credentials::DefaultCredentialsChain,
        >,
    },
}

struct Inner {
    source: CredentialSource,
    /// The client's resolved region, handed to the default chain so that building it never asks IMDS for one.
    region: std::sync::OnceLock<String>,
    fetcher: Fetcher,
    cached: Mutex<Option<Cached>>,
    /// Serialises refreshes so that concurrent callers wait for one lookup instead of starting several.
    refresh: tokio::sync::Mutex<()>,
}

/// The cached credential source of a client. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct CredentialsProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for CredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsProvider")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl CredentialsProvider {
    /// Chooses the source from the settings (first match wins) and checks its configuration; no lookup happens
    /// until the first [`CredentialsProvider::credentials`] call.
    pub fn from_settings(settings: &AwsSettings) -> Result<CredentialsProvider, AwsError> {
        let (source, fetcher, cached) = match (&settings.access_key, &settings.secret_key) {
            (Some(ak), Some(sk)) => {
                let credentials = Credentials::new(
                    ak,
                    sk,
                    settings.session_token.clone(),
                    None,
                    PROVIDER_PROPERTIES,
                );
                (
                    CredentialSource::Properties,
                    Fetcher::Static,
                    Some(Cached {
                        credentials,
                        refresh_at: None,
                        stamp: None,
                    }),
                )
            }
            (Some(_), None) => {
                return Err(AwsError::Config(
                    "access-key is set but secret-key is not; set both or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(AwsError::Config(
                    "secret-key is set but access-key is not; set both or neither".into(),
                ));
            }
            (None, None) => {
                if let Some(s) = &settings.iot_certificate {
                    let config = IotCertificate::from_structure(
                        s,
                        settings.iot_thing_name_fallback.as_deref(),
                    )?;
                    let client = iot_client(&config, settings.connection_timeout())?;
                    (
                        CredentialSource::IotCertificate {
                            endpoint: config.endpoint.clone(),
                            role_alias: config.role_alias.clone(),
                            thing_name: config.thing_name.clone(),
                        },
                        Fetcher::Iot { config, client },
                        None,
                    )
                } else if let Some(path) = &settings.credential_path {
                    (
                        CredentialSource::CredentialFile(path.clone()),
                        Fetcher::File(path.clone()),
                        None,
                    )
                } else {
                    (
                        CredentialSource::DefaultChain {
                            profile: settings.aws_profile.clone(),
                        },
                        Fetcher::Chain {
                            profile: settings.aws_profile.clone(),
                            chain: tokio::sync::OnceCell::new(),
                        },
                        None,
                    )
                }
            }
        };
        Ok(CredentialsProvider {
            inner: Arc::new(Inner {
                source,
                region: std::sync::OnceLock::new(),
                fetcher,
                cached: Mutex::new(cached),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Tells the provider the region in use (the first call wins); the default chain needs one for STS/SSO.
    pub fn set_region(&self, region: &str) {
        let _ = self.inner.region.set(region.to_string());
    }

    /// The chosen source, for logs and messages.
    pub fn source(&self) -> &CredentialSource {
        &self.inner.source
    }

    /// Expiration of the cached credentials, `None` when they do not expire or none were fetched yet.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.lock().as_ref().and_then(|c| c.credentials.expiry())
    }

    /// Drops the cached credentials (after the service said ExpiredToken), so the next call looks them up again.
    /// Static credentials stay.
    pub fn invalidate(&self) {
        if !matches!(self.inner.fetcher, Fetcher::Static) {
            *self.lock() = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.inner.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current credentials: the cached ones while they are fresh, otherwise a new lookup. If a refresh fails
    /// while the cached credentials have not expired yet, those are used and a warning is logged.
    pub async fn credentials(&self) -> Result<Credentials, AwsError> {
        let now = SystemTime::now();
        if let Some(c) = self.fresh(now)? {
            return Ok(c);
        }
        let _refreshing = self.inner.refresh.lock().await;
        let now = SystemTime::now();
        if let Some(c) = self.fresh(now)? {
            return Ok(c);
        }
        let previous = self.lock().clone();
        match self.fetch(now).await {
            Ok(new) => {
                let credentials = new.credentials.clone();
                gst::debug!(
                    CAT,
                    "credentials from {} refreshed; expiry {}",
                    self.inner.source,
                    credentials
                        .expiry()
                        .map(format_time)
                        .unwrap_or_else(|| "none".into())
                );
                *self.lock() = Some(new);
                Ok(credentials)
            }
            Err(e) => match previous {
                Some(prev) if prev.credentials.expiry().is_none_or(|exp| exp > now) => {
                    gst::warning!(
                        CAT,
                        "refreshing credentials from {} failed, using the cached ones until they expire: {e}",
                        self.inner.source
                    );
                    Ok(prev.credentials)
                }
                _ => Err(e),
            },
        }
    }

    /// The cached credentials if they need no refresh at `now`.
    fn fresh(&self, now: SystemTime) -> Result<Option<Credentials>, AwsError> {
        let cached = self.lock().clone();
        let Some(cached) = cached else {
            return Ok(None);
        };
        if cached.refresh_at.is_some_and(|t| now >= t) {
            return Ok(None);
        }
        if let (Fetcher::File(path), Some(stamp)) = (&self.inner.fetcher, cached.stamp) {
            // A changed file is re-read at once: whoever rotates it may do so long before expiry.
            match file_stamp(path) {
                Ok(current) if current == stamp => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(cached.credentials))
    }

    async fn fetch(&self, now: SystemTime) -> Result<Cached, AwsError> {
        match &self.inner.fetcher {
            Fetcher::Static => self
                .lock()
                .clone()
                .ok_or_else(|| AwsError::Credentials("static credentials vanished".into())),
            Fetcher::File(path) => {
                let stamp = file_stamp(path)?;
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    AwsError::Credentials(format!(
                        "cannot read credential file {}: {e}",
                        path.display()
                    ))
                })?;
                let credentials = parse_credential_file(&text, path)?;
                if let Some(exp) = credentials.expiry()
                    && exp <= now
                {
                    return Err(AwsError::Credentials(format!(
                        "the credentials in {} expired at {}; the file must be rotated",
                        path.display(),
                        format_time(exp)
                    )));
                }
                Ok(Cached {
                    refresh_at: refresh_time(now, credentials.expiry()),
                    credentials,
                    stamp: Some(stamp),
                })
            }
            Fetcher::Iot { config, client } => {
                let credentials = fetch_iot(client, config).await?;
                Ok(Cached {
                    refresh_at: refresh_time(now, credentials.expiry()),
                    credentials,
                    stamp: None,
                })
            }
            Fetcher::Chain { profile, chain } => {
                let chain = chain
                    .get_or_init(|| async {
                        let mut builder =
                            aws_config::default_provider::credentials::DefaultCredentialsChain::builder();
                        if let Some(p) = profile {
                            builder = builder.profile_name(p);
                        }
                        if let Some(region) = self.inner.region.get() {
                            builder = builder.region(aws_config::Region::new(region.clone()));
                        }
                        builder.build().await
                    })
                    .await;
                let credentials = chain.provide_credentials().await.map_err(|e| {
                    AwsError::Credentials(format!(
                        "no credentials: no access-key/secret-key, iot-certificate or credential-path property \
                         is set, and the default AWS credential chain found none: {}",
                        error_chain(&e)
                    ))
                })?;
                gst::info!(
                    CAT,
                    "the default credential chain provided credentials (expiry {})",
                    credentials
                        .expiry()
                        .map(format_time)
                        .unwrap_or_else(|| "none".into())
                );
                let refresh_at = refresh_time(now, credentials.expiry())
                    .or_else(|| Some(now + NON_EXPIRING_RECHECK));
                Ok(Cached {
                    credentials,
                    refresh_at,
                    stamp: None,
                })
            }
        }
    }
}

/// The error and its sources on one line: the outermost error of the SDK often says only "an error occurred".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, AwsError> {
    std::fs::read(path).map_err(|e| {
        AwsError::Config(format!(
            "cannot read the iot-certificate {what} {}: {e}",
            path.display()
        ))
    })
}

fn iot_client(
    config: &IotCertificate,
    connect_timeout: Option<Duration>,
) -> Result<reqwest::Client, AwsError> {
    let mut pem = read_file(&config.cert_path, "cert-path")?;
    pem.push(b'\n');
    pem.extend(read_file(&config.key_path, "key-path")?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
        AwsError::Config(format!(
            "iot-certificate cert-path {} / key-path {} do not hold a PEM certificate and private key: {}",
            config.cert_path.display(),
            config.key_path.display(),
            error_chain(&e)
        ))
    })?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .identity(identity)
        .http1_only();
    if let Some(t) = connect_timeout {
        builder = builder.connect_timeout(t);
    }
    if let Some(ca) = &config.ca_path {
        let certs =
            reqwest::Certificate::from_pem_bundle(&read_file(ca, "ca-path")?).map_err(|e| {
                AwsError::Config(format!(
                    "iot-certificate ca-path {} is not a PEM certificate bundle: {}",
                    ca.display(),
                    error_chain(&e)
                ))
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| {
        AwsError::Config(format!(
            "cannot build the IoT HTTPS client: {}",
            error_chain(&e)
        ))
    })
}

/// How long an IoT credentials request may take in total.
const IOT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn fetch_iot(
    client: &reqwest::Client,
    config: &IotCertificate,
) -> Result<Credentials, AwsError> {
    let url = config.url();
    let response = client
        .get(&url)
        .header("x-amzn-iot-thingname", &config.thing_name)
        .timeout(IOT_REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            AwsError::Credentials(format!(
                "IoT credentials request to {url} failed: {}",
                error_chain(&e)
            ))
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        AwsError::Credentials(format!(
            "IoT credentials response from {url} broke off: {}",
            error_chain(&e)
        ))
    })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        return Err(AwsError::Credentials(format!(
            "IoT credentials provider {url} answered HTTP {} for thing {}: {message}",
            status.as_u16(),
            config.thing_name
        )));
    }
    let parsed: IotResponse = serde_json::from_slice(&body).map_err(|e| {
        AwsError::Credentials(format!(
            "IoT credentials response from {url} is not the expected JSON: {e}"
        ))
    })?;
    let c = parsed.credentials;
    let expiry = parse_timestamp(&c.expiration)
        .map_err(|e| AwsError::Credentials(format!("IoT credentials response from {url}: {e}")))?;
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        Some(expiry),
        PROVIDER_IOT,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn credential_file_formats() {
        let p = Path::new("/x/creds");
        let c = parse_credential_file("CREDENTIALS AKID SECRET\n", p).expect("static");
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), None);
        assert_eq!(c.expiry(), None);

        let c = parse_credential_file("CREDENTIALS AKID 2030-01-02T03:04:05Z SECRET TOKEN", p)
            .expect("temp");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), Some("TOKEN"));
        assert_eq!(
            c.expiry(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445))
        );

        for bad in [
            "",
            "CREDS A B",
            "CREDENTIALS A",
            "CREDENTIALS A not-a-date S T",
        ] {
            let e = parse_credential_file(bad, p).expect_err(bad);
            assert!(e.to_string().contains("/x/creds"), "{e}");
        }
    }

    #[test]
    fn refresh_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(refresh_time(now, None), None);
        let in_hour = now + Duration::from_secs(3600);
        assert_eq!(
            refresh_time(now, Some(in_hour)),
            Some(in_hour - REFRESH_MARGIN)
        );
        // Short-lived credentials are refreshed at half their remaining life.
        let in_2min = now + Duration::from_secs(120);
        assert_eq!(
            refresh_time(now, Some(in_2min)),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(refresh_time(now, Some(now)), Some(now));
    }

    #[test]
    fn iot_structure_fields() {
        gst::init().expect("gst init");
        let s = gst::Structure::from_str(
            "iot-certificate,endpoint=abc.credentials.iot.us-west-2.amazonaws.com,cert-path=/c.pem,\
             key-path=/k.pem,ca-path=/ca.pem,role-aliases=KvsAlias",
        )
        .expect("structure");
        let iot = IotCertificate::from_structure(&s, Some("stream-1")).expect("valid");
        assert_eq!(iot.thing_name, "stream-1");
        assert_eq!(iot.ca_path, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            iot.url(),
            "https://abc.credentials.iot.us-west-2.amazonaws.com/role-aliases/KvsAlias/credentials"
        );
        let e = IotCertificate::from_structure(&s, None).expect_err("no thing name");
        assert!(e.to_string().contains("iot-thing-name"), "{e}");
        let s = gst::Structure::from_str(
            "iot-certificate,endpoint=e,cert-path=/c,role-aliases=a,iot-thing-name=12345",
        )
        .expect("structure");
        let e = IotCertificate::from_structure(&s, None).expect_err("no key");
        assert!(e.to_string().contains("key-path"), "{e}");
        let s = gst::Structure::from_str(
            "iot-certificate,endpoint=e,cert-path=/c,key-path=/k,role-aliases=a,iot-thing-name=12345",
        )
        .expect("structure");
        let iot = IotCertificate::from_structure(&s, Some("stream-1")).expect("valid");
        assert_eq!(
            iot.thing_name, "12345",
            "a numeric thing name is kept, not replaced"
        );
    }

    #[tokio::test]
    async fn static_properties_win_and_need_no_lookup() {
        let settings = AwsSettings {
            access_key: Some("AKID".into()),
            secret_key: Some("SECRET".into()),
            session_token: Some("TOKEN".into()),
            // Ignored: the properties come first.
            credential_path: Some("/nonexistent".into()),
            ..Default::default()
        };
        let p = CredentialsProvider::from_settings(&settings).expect("provider");
        assert_eq!(p.source(), &CredentialSource::Properties);
        let c = p.credentials().await.expect("credentials");
        assert_eq!(
            (c.access_key_id(), c.session_token()),
            ("AKID", Some("TOKEN"))
        );
        p.invalidate();
        assert_eq!(
            p.credentials().await.expect("still there").access_key_id(),
            "AKID"
        );

        let half = AwsSettings {
            access_key: Some("AKID".into()),
            ..Default::default()
        };
        let e = CredentialsProvider::from_settings(&half).expect_err("half configured");
        assert!(e.to_string().contains("secret-key"), "{e}");
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write credential file");
    }

    #[tokio::test]
    async fn credential_file_is_reread_when_it_changes_and_when_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials");
        write(&path, "CREDENTIALS AK1 SECRET1");
        let settings = AwsSettings {
            credential_path: Some(path.clone()),
            aws_profile: Some("ignored".into()),
            ..Default::default()
        };
        let p = CredentialsProvider::from_settings(&settings).expect("provider");
        assert_eq!(p.source(), &CredentialSource::CredentialFile(path.clone()));
        assert_eq!(p.credentials().await.expect("first").access_key_id(), "AK1");

        // A rotation (different size) is noticed on the next call.
        write(&path, "CREDENTIALS AK2-ROTATED SECRET2");
        assert_eq!(
            p.credentials().await.expect("rotated").access_key_id(),
            "AK2-ROTATED"
        );

        // Credentials that expire within the refresh margin are re-read on every call until renewed.
        let soon = format_time(SystemTime::now() + Duration::from_secs(60));
        write(&path, &format!("CREDENTIALS AK3 {soon} SECRET3 TOKEN3"));
        let c = p.credentials().await.expect("expiring");
        assert_eq!(c.access_key_id(), "AK3");
        assert!(p.expiry().is_some());
        let later = format_time(SystemTime::now() + Duration::from_secs(7200));
        // Same length as before: only the expiry-driven refresh can see the new content... once the refresh
        // time (half of the 60 s) passes. Simulate that by making the cached refresh time due.
        write(&path, &format!("CREDENTIALS AK4 {later} SECRET4 TOKEN4"));
        if let Some(c) = p.lock().as_mut() {
            c.refresh_at = Some(SystemTime::now() - Duration::from_secs(1));
            c.stamp = file_stamp(&path).ok();
        }
        assert_eq!(
            p.credentials().await.expect("renewed").access_key_id(),
            "AK4"
        );

        // An expired file with nothing cached is an error naming the file.
        let past = format_time(SystemTime::now() - Duration::from_secs(10));
        write(&path, &format!("CREDENTIALS AK5 {past} SECRET5 TOKEN5"));
        let fresh = CredentialsProvider::from_settings(&settings).expect("provider");
        let e = fresh.credentials().await.expect_err("expired");
        assert!(
            e.to_string().contains("expired") && e.to_string().contains("credentials"),
            "{e}"
        );
        assert!(e.is_auth());

        let missing = AwsSettings {
            credential_path: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = CredentialsProvider::from_settings(&missing)
            .expect("provider")
            .credentials()
            .await
            .expect_err("missing file");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}

/// The IoT credentials provider against a local mutual-TLS server with certificates made here.
#[cfg(test)]
mod iot_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    struct Pki {
        dir: tempfile::TempDir,
        ca_der: rustls::pki_types::CertificateDer<'static>,
        server_der: rustls::pki_types::CertificateDer<'static>,
        server_key_der: Vec<u8>,
    }

    fn make_pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kvs test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");

        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params")
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "camera-thing");
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");

        // A client certificate from a CA the server does not trust.
        let rogue_ca_key = KeyPair::generate().expect("rogue key");
        let mut rogue_params = CertificateParams::new(Vec::<String>::new()).expect("rogue params");
        rogue_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let rogue_ca = rogue_params.self_signed(&rogue_ca_key).expect("rogue ca");
        let rogue_key = KeyPair::generate().expect("rogue client key");
        let rogue = CertificateParams::new(Vec::<String>::new())
            .expect("rogue client params")
            .signed_by(&rogue_key, &rogue_ca, &rogue_ca_key)
            .expect("rogue client");

        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write pem")
        };
        write("ca.pem", &ca.pem());
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        write("rogue.pem", &rogue.pem());
        write("rogue.key", &rogue_key.serialize_pem());
        Pki {
            ca_der: ca.der().clone(),
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
            dir,
        }
    }

    /// Serves `GET /role-aliases/<alias>/credentials` over mutual TLS: 200 with credentials for thing
    /// `camera-thing`, 403 with an IoT-style message otherwise. Returns the port and the request counter.
    async fn serve(pki: &Pki, expiration: String) -> (u16, Arc<AtomicUsize>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("ca root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server_der.clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                let expiration = expiration.clone();
                tokio::spawn(async move {
                    // Handshake failures (untrusted client certificate) just drop the connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let right_path = head.starts_with("get /role-aliases/kvsalias/credentials ");
                    let right_thing = head.contains("\r\nx-amzn-iot-thingname: camera-thing\r\n");
                    let (status, body) = if right_path && right_thing {
                        (
                            "200 OK",
                            format!(
                                r#"{{"credentials":{{"accessKeyId":"ASIAIOT","secretAccessKey":"iot-secret","sessionToken":"iot-token","expiration":"{expiration}"}}}}"#
                            ),
                        )
                    } else {
                        (
                            "403 Forbidden",
                            r#"{"message":"Access Denied"}"#.to_string(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, requests)
    }

    fn settings(pki: &Pki, port: u16, cert: &str, key: &str, thing: Option<&str>) -> AwsSettings {
        let p = |n: &str| pki.dir.path().join(n).display().to_string();
        let mut s = gst::Structure::builder("iot-certificate")
            .field("endpoint", format!("127.0.0.1:{port}"))
            .field("cert-path", p(cert))
            .field("key-path", p(key))
            .field("ca-path", p("ca.pem"))
            .field("role-aliases", "KvsAlias")
            .build();
        if let Some(t) = thing {
            s.set("iot-thing-name", t);
        }
        AwsSettings {
            iot_certificate: Some(s),
            iot_thing_name_fallback: Some("camera-thing".into()),
            // Lower in the order: must be ignored.
            credential_path: Some("/nonexistent/credentials".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn iot_credentials_over_mutual_tls_are_fetched_cached_and_refreshed() {
        gst::init().expect("gst init");
        let pki = make_pki();
        let expiry = SystemTime::now() + Duration::from_secs(3600);
        let (port, requests) = serve(&pki, format_time(expiry)).await;

        // Thing name from the stream-name fallback.
        let p = CredentialsProvider::from_settings(&settings(
            &pki,
            port,
            "client.pem",
            "client.key",
            None,
        ))
        .expect("provider");
        assert!(
            matches!(p.source(), CredentialSource::IotCertificate { thing_name, .. } if thing_name == "camera-thing")
        );
        let c = p.credentials().await.expect("IoT credentials");
        assert_eq!(c.access_key_id(), "ASIAIOT");
        assert_eq!(c.secret_access_key(), "iot-secret");
        assert_eq!(c.session_token(), Some("iot-token"));
        let got = c.expiry().expect("expiry");
        let skew = got.duration_since(expiry).unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(1),
            "expiry {got:?} vs {expiry:?}"
        );
        assert_eq!(p.expiry(), Some(got));
        assert_eq!(requests.load(Ordering::SeqCst), 1);

        // Cached while fresh.
        p.credentials().await.expect("cached");
        assert_eq!(requests.load(Ordering::SeqCst), 1);

        // Due for refresh: fetched again.
        if let Some(cached) = p.lock().as_mut() {
            cached.refresh_at = Some(SystemTime::now() - Duration::from_secs(1));
        }
        p.credentials().await.expect("refreshed");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn iot_errors_name_their_cause() {
        gst::init().expect("gst init");
        let pki = make_pki();
        let (port, requests) = serve(
            &pki,
            format_time(SystemTime::now() + Duration::from_secs(3600)),
        )
        .await;

        let wrong_thing = CredentialsProvider::from_settings(&settings(
            &pki,
            port,
            "client.pem",
            "client.key",
            Some("someone-else"),
        ))
        .expect("provider");
        let e = wrong_thing.credentials().await.expect_err("403");
        let text = e.to_string();
        assert!(
            text.contains("HTTP 403")
                && text.contains("Access Denied")
                && text.contains("someone-else"),
            "{text}"
        );
        assert!(e.is_auth());

        let rogue = CredentialsProvider::from_settings(&settings(
            &pki,
            port,
            "rogue.pem",
            "rogue.key",
            None,
        ))
        .expect("provider");
        let e = rogue.credentials().await.expect_err("handshake refused");
        assert!(
            e.to_string().contains(&format!(
                "https://127.0.0.1:{port}/role-aliases/KvsAlias/credentials"
            )),
            "{e}"
        );
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "the rogue client never got a request through"
        );

        let mut missing = settings(&pki, port, "client.pem", "nonexistent.key", None);
        missing.iot_thing_name_fallback = None;
        missing
            .iot_certificate
            .as_mut()
            .expect("structure")
            .set("iot-thing-name", "camera-thing");
        let e = CredentialsProvider::from_settings(&missing).expect_err("missing key file");
        assert!(e.to_string().contains("nonexistent.key"), "{e}");
    }
}
