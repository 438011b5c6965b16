//! Region and control-endpoint resolution, and the process-wide data-endpoint cache.
//!
//! Region: `aws-region` property, then `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, then
//! us-west-2. Endpoint: `endpoint` property, then `AWS_ENDPOINT_URL_KINESIS_VIDEO`, `AWS_ENDPOINT_URL`,
//! `CONTROL_PLANE_URI` (the C++ producer's variable), then `https://kinesisvideo.<region>.amazonaws.com`
//! (`.amazonaws.com.cn` for cn-* regions).
//!
//! Data endpoints (GetDataEndpoint results) are cached per (control endpoint, stream, API name) for 40 minutes,
//! like the producer, and dropped when a call to them fails in a way that suggests they moved.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::client::{ApiName, StreamRef};
use super::error::AwsError;
use super::settings::DEFAULT_REGION;

/// How long a GetDataEndpoint result is used (the producer's value).
pub const DATA_ENDPOINT_TTL: Duration = Duration::from_secs(40 * 60);

/// Where the region came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSource {
    Property,
    Env(&'static str),
    Profile(String),
    Default,
}

impl fmt::Display for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionSource::Property => write!(f, "aws-region property"),
            RegionSource::Env(var) => write!(f, "environment variable {var}"),
            RegionSource::Profile(p) => write!(f, "profile {p}"),
            RegionSource::Default => write!(f, "default"),
        }
    }
}

/// Where the control endpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSource {
    Property,
    Env(&'static str),
    RegionalDefault,
}

impl fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointSource::Property => write!(f, "endpoint property"),
            EndpointSource::Env(var) => write!(f, "environment variable {var}"),
            EndpointSource::RegionalDefault => write!(f, "regional default"),
        }
    }
}

/// Environment variables consulted for the region, in order.
pub const REGION_ENV_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
/// Environment variables consulted for the control endpoint, in order.
pub const ENDPOINT_ENV_VARS: [&str; 3] = [
    "AWS_ENDPOINT_URL_KINESIS_VIDEO",
    "AWS_ENDPOINT_URL",
    "CONTROL_PLANE_URI",
];

/// Reads a process environment variable, treating empty as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn non_empty(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Region from the property or the environment; `None` means the profile must be asked next.
pub fn region_without_profile(
    property: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, RegionSource)> {
    if let Some(r) = non_empty(property) {
        return Some((r, RegionSource::Property));
    }
    REGION_ENV_VARS
        .iter()
        .find_map(|var| non_empty(env(var).as_deref()).map(|r| (r, RegionSource::Env(var))))
}

/// The whole region order, with the profile's region (if any) already looked up.
pub fn resolve_region(
    property: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    profile: Option<(String, String)>,
) -> (String, RegionSource) {
    if let Some(found) = region_without_profile(property, env) {
        return found;
    }
    if let Some((name, region)) = profile
        && let Some(region) = non_empty(Some(&region))
    {
        return (region, RegionSource::Profile(name));
    }
    (DEFAULT_REGION.to_string(), RegionSource::Default)
}

/// The service's public endpoint for a region.
pub fn regional_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://kinesisvideo.{region}.{suffix}")
}

/// Makes a user-given endpoint a base URL: `https://` is assumed without a scheme, a trailing `/` dropped.
pub fn normalize_endpoint(raw: &str, origin: &dyn fmt::Display) -> Result<String, AwsError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| AwsError::Config(format!("{origin} {raw:?} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(AwsError::Config(format!(
            "{origin} {raw:?} must be an http:// or https:// URL with a host"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// The control endpoint for a region.
pub fn resolve_endpoint(
    property: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    region: &str,
) -> Result<(String, EndpointSource), AwsError> {
    if let Some(e) = non_empty(property) {
        return Ok((
            normalize_endpoint(&e, &"endpoint property")?,
            EndpointSource::Property,
        ));
    }
    for var in ENDPOINT_ENV_VARS {
        if let Some(e) = non_empty(env(var).as_deref()) {
            let origin = format!("environment variable {var}");
            return Ok((normalize_endpoint(&e, &origin)?, EndpointSource::Env(var)));
        }
    }
    Ok((regional_endpoint(region), EndpointSource::RegionalDefault))
}

/// Identifies one cached data endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub control_endpoint: String,
    pub stream: StreamRef,
    pub api: ApiName,
}

/// GetDataEndpoint results with their age. One instance ([`EndpointCache::global`]) is shared by every element
/// of the process; tests make their own.
#[derive(Debug)]
pub struct EndpointCache {
    ttl: Duration,
    entries: Mutex<HashMap<EndpointKey, (String, Instant)>>,
}

static GLOBAL_CACHE: LazyLock<EndpointCache> =
    LazyLock::new(|| EndpointCache::new(DATA_ENDPOINT_TTL));

impl EndpointCache {
    pub fn new(ttl: Duration) -> EndpointCache {
        EndpointCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The process-wide cache.
    pub fn global() -> &'static EndpointCache {
        &GLOBAL_CACHE
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointKey, (String, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached endpoint if it was stored less than the TTL before `now`; expired entries are removed.
    pub fn get(&self, key: &EndpointKey, now: Instant) -> Option<String> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((url, stored)) if now.saturating_duration_since(*stored) < self.ttl => {
                Some(url.clone())
            }
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: EndpointKey, url: String, now: Instant) {
        self.lock().insert(key, (url, now));
    }

    /// Drops an entry; returns whether there was one.
    pub fn invalidate(&self, key: &EndpointKey) -> bool {
        self.lock().remove(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a failed data-plane call means its endpoint should be looked up again: the service said the endpoint
/// is wrong, the path was not found there (404 without a stream-level cause), or it could not be reached.
pub fn invalidates_endpoint(error: &AwsError) -> bool {
    match error {
        AwsError::InvalidEndpoint { .. } | AwsError::Network(_) => true,
        AwsError::Other { status, .. } => *status == 404,
        // A 404 of a data endpoint: the stream may have moved, or the host is not a KVS endpoint any more.
        AwsError::ResourceNotFound { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn region_resolution_table() {
        type Row = (
            Option<&'static str>,
            &'static [(&'static str, &'static str)],
            Option<(&'static str, &'static str)>,
            &'static str,
            RegionSource,
        );
        let table: Vec<Row> = vec![
            (
                Some("eu-west-1"),
                &[("AWS_REGION", "us-east-1")],
                Some(("p", "ap-south-1")),
                "eu-west-1",
                RegionSource::Property,
            ),
            (
                None,
                &[
                    ("AWS_REGION", "us-east-1"),
                    ("AWS_DEFAULT_REGION", "us-east-2"),
                ],
                Some(("p", "ap-south-1")),
                "us-east-1",
                RegionSource::Env("AWS_REGION"),
            ),
            (
                Some("  "),
                &[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "us-east-2")],
                None,
                "us-east-2",
                RegionSource::Env("AWS_DEFAULT_REGION"),
            ),
            (
                None,
                &[],
                Some(("work", "ap-south-1")),
                "ap-south-1",
                RegionSource::Profile("work".into()),
            ),
            (
                None,
                &[],
                Some(("work", "")),
                "us-west-2",
                RegionSource::Default,
            ),
            (None, &[], None, "us-west-2", RegionSource::Default),
        ];
        for (prop, vars, profile, region, source) in table {
            let got = resolve_region(
                prop,
                &env_of(vars),
                profile.map(|(n, r)| (n.to_string(), r.to_string())),
            );
            assert_eq!(
                got,
                (region.to_string(), source),
                "{prop:?} {vars:?} {profile:?}"
            );
        }
    }

    #[test]
    fn endpoint_resolution_table() {
        type Row = (
            Option<&'static str>,
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
            EndpointSource,
        );
        let all: &[(&str, &str)] = &[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://kv.local:1"),
            ("AWS_ENDPOINT_URL", "http://global.local:2"),
            ("CONTROL_PLANE_URI", "https://cp.local:3"),
        ];
        let table: Vec<Row> = vec![
            (
                Some("http://127.0.0.1:8080/"),
                all,
                "us-west-2",
                "http://127.0.0.1:8080",
                EndpointSource::Property,
            ),
            (
                None,
                all,
                "us-west-2",
                "http://kv.local:1",
                EndpointSource::Env("AWS_ENDPOINT_URL_KINESIS_VIDEO"),
            ),
            (
                None,
                &all[1..],
                "us-west-2",
                "http://global.local:2",
                EndpointSource::Env("AWS_ENDPOINT_URL"),
            ),
            (
                None,
                &all[2..],
                "us-west-2",
                "https://cp.local:3",
                EndpointSource::Env("CONTROL_PLANE_URI"),
            ),
            (
                None,
                &[("CONTROL_PLANE_URI", "kinesisvideo.eu-west-1.amazonaws.com")],
                "us-west-2",
                "https://kinesisvideo.eu-west-1.amazonaws.com",
                EndpointSource::Env("CONTROL_PLANE_URI"),
            ),
            (
                None,
                &[],
                "us-west-2",
                "https://kinesisvideo.us-west-2.amazonaws.com",
                EndpointSource::RegionalDefault,
            ),
            (
                None,
                &[("AWS_ENDPOINT_URL", "")],
                "eu-central-1",
                "https://kinesisvideo.eu-central-1.amazonaws.com",
                EndpointSource::RegionalDefault,
            ),
            (
                None,
                &[],
                "cn-north-1",
                "https://kinesisvideo.cn-north-1.amazonaws.com.cn",
                EndpointSource::RegionalDefault,
            ),
        ];
        for (prop, vars, region, url, source) in table {
            let got = resolve_endpoint(prop, &env_of(vars), region).expect("valid");
            assert_eq!(got, (url.to_string(), source), "{prop:?} {vars:?} {region}");
        }
        let e = resolve_endpoint(Some("ftp://x"), &env_of(&[]), "r").expect_err("ftp");
        assert!(e.to_string().contains("endpoint property"), "{e}");
        let e = resolve_endpoint(None, &env_of(&[("AWS_ENDPOINT_URL", "http://")]), "r")
            .expect_err("empty host");
        assert!(e.to_string().contains("AWS_ENDPOINT_URL"), "{e}");
    }

    fn key(stream: &str, api: ApiName) -> EndpointKey {
        EndpointKey {
            control_endpoint: "http://127.0.0.1:1".into(),
            stream: StreamRef::Name(stream.into()),
            api,
        }
    }

    #[test]
    fn cache_hit_expiry_and_invalidation() {
        let cache = EndpointCache::new(DATA_ENDPOINT_TTL);
        let t0 = Instant::now();
        assert_eq!(cache.get(&key("a", ApiName::PutMedia), t0), None);
        cache.insert(
            key("a", ApiName::PutMedia),
            "https://put.example".into(),
            t0,
        );
        cache.insert(
            key("a", ApiName::GetMedia),
            "https://get.example".into(),
            t0,
        );

        // Hit, and the API name is part of the key.
        assert_eq!(
            cache
                .get(
                    &key("a", ApiName::PutMedia),
                    t0 + Duration::from_secs(39 * 60)
                )
                .as_deref(),
            Some("https://put.example")
        );
        assert_eq!(
            cache.get(&key("a", ApiName::GetMedia), t0).as_deref(),
            Some("https://get.example")
        );
        assert_eq!(cache.get(&key("b", ApiName::PutMedia), t0), None);
        let other_control = EndpointKey {
            control_endpoint: "http://other".into(),
            ..key("a", ApiName::PutMedia)
        };
        assert_eq!(cache.get(&other_control, t0), None);

        // Expiry at 40 minutes removes the entry.
        assert_eq!(
            cache.get(&key("a", ApiName::PutMedia), t0 + DATA_ENDPOINT_TTL),
            None
        );
        assert_eq!(cache.len(), 1);

        // Invalidation.
        assert!(cache.invalidate(&key("a", ApiName::GetMedia)));
        assert!(!cache.invalidate(&key("a", ApiName::GetMedia)));
        assert!(cache.is_empty());
    }

    #[test]
    fn which_errors_drop_the_endpoint() {
        let m = String::new;
        assert!(invalidates_endpoint(&AwsError::InvalidEndpoint {
            message: m()
        }));
        assert!(invalidates_endpoint(&AwsError::Network("refused".into())));
        assert!(invalidates_endpoint(&AwsError::Other {
            error_type: String::new(),
            status: 404,
            message: m()
        }));
        assert!(!invalidates_endpoint(&AwsError::NotAuthorized {
            message: m()
        }));
        assert!(!invalidates_endpoint(&AwsError::Throttling {
            message: m()
        }));
    }
}
