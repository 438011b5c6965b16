//! The properties that kvssink and kvssrc share (same names, types, units and defaults in both elements), and
//! their values as one `Clone` struct that the element copies once in `start()`.
//!
//! Times are whole seconds, like the C++ kvssink's `connection-timeout` / `completion-timeout`.

use std::path::PathBuf;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;

/// Default `connection-timeout` in seconds (C++ kvssink: 5 s).
pub const DEFAULT_CONNECTION_TIMEOUT_SECS: u32 = 5;
/// Default `completion-timeout` in seconds (C++ kvssink: 10 s).
pub const DEFAULT_COMPLETION_TIMEOUT_SECS: u32 = 10;
/// Region used when neither the property, the environment nor the profile names one.
pub const DEFAULT_REGION: &str = "us-west-2";

pub const PROP_ACCESS_KEY: &str = "access-key";
pub const PROP_SECRET_KEY: &str = "secret-key";
pub const PROP_SESSION_TOKEN: &str = "session-token";
pub const PROP_CREDENTIAL_PATH: &str = "credential-path";
pub const PROP_IOT_CERTIFICATE: &str = "iot-certificate";
pub const PROP_AWS_PROFILE: &str = "aws-profile";
pub const PROP_AWS_REGION: &str = "aws-region";
pub const PROP_ENDPOINT: &str = "endpoint";
pub const PROP_CA_FILE: &str = "ca-file";
pub const PROP_CONNECTION_TIMEOUT: &str = "connection-timeout";
pub const PROP_COMPLETION_TIMEOUT: &str = "completion-timeout";
pub const PROP_USER_AGENT: &str = "user-agent";

/// Values of the shared AWS properties. `None` / empty means "not set": the next source in the documented order
/// is used.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub credential_path: Option<PathBuf>,
    /// The C++ kvssink structure: endpoint, cert-path, key-path, ca-path, role-aliases, iot-thing-name.
    pub iot_certificate: Option<gst::Structure>,
    pub aws_profile: Option<String>,
    pub aws_region: Option<String>,
    pub endpoint: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Seconds; 0 = no limit.
    pub connection_timeout_secs: u32,
    /// Seconds; 0 = no limit.
    pub completion_timeout_secs: u32,
    pub user_agent: Option<String>,
    /// Not a property: the IoT thing name used when `iot-certificate` has no `iot-thing-name` (the C++ kvssink
    /// uses the stream name). Elements set it to their stream name before creating the client.
    pub iot_thing_name_fallback: Option<String>,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            access_key: None,
            secret_key: None,
            session_token: None,
            credential_path: None,
            iot_certificate: None,
            aws_profile: None,
            aws_region: None,
            endpoint: None,
            ca_file: None,
            connection_timeout_secs: DEFAULT_CONNECTION_TIMEOUT_SECS,
            completion_timeout_secs: DEFAULT_COMPLETION_TIMEOUT_SECS,
            user_agent: None,
            iot_thing_name_fallback: None,
        }
    }
}

impl AwsSettings {
    /// `connection-timeout` as a duration, `None` when 0 (no limit).
    pub fn connection_timeout(&self) -> Option<Duration> {
        secs(self.connection_timeout_secs)
    }

    /// `completion-timeout` as a duration, `None` when 0 (no limit).
    pub fn completion_timeout(&self) -> Option<Duration> {
        secs(self.completion_timeout_secs)
    }

    /// Stores `value` if `pspec` is one of the shared properties; returns false for any other property so the
    /// element handles it.
    pub fn set_property(&mut self, value: &glib::Value, pspec: &glib::ParamSpec) -> bool {
        let string = || -> Option<String> {
            value
                .get::<Option<String>>()
                .ok()
                .flatten()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        match pspec.name() {
            PROP_ACCESS_KEY => self.access_key = string(),
            PROP_SECRET_KEY => self.secret_key = string(),
            PROP_SESSION_TOKEN => self.session_token = string(),
            PROP_CREDENTIAL_PATH => self.credential_path = string().map(PathBuf::from),
            PROP_IOT_CERTIFICATE => {
                self.iot_certificate = value.get::<Option<gst::Structure>>().ok().flatten()
            }
            PROP_AWS_PROFILE => self.aws_profile = string(),
            PROP_AWS_REGION => self.aws_region = string(),
            PROP_ENDPOINT => self.endpoint = string(),
            PROP_CA_FILE => self.ca_file = string().map(PathBuf::from),
            PROP_CONNECTION_TIMEOUT => {
                self.connection_timeout_secs = value
                    .get::<u32>()
                    .unwrap_or(DEFAULT_CONNECTION_TIMEOUT_SECS)
            }
            PROP_COMPLETION_TIMEOUT => {
                self.completion_timeout_secs = value
                    .get::<u32>()
                    .unwrap_or(DEFAULT_COMPLETION_TIMEOUT_SECS)
            }
            PROP_USER_AGENT => self.user_agent = string(),
            _ => return false,
        }
        true
    }

    /// The value of a shared property, `None` if `pspec` is not one.
    pub fn property(&self, pspec: &glib::ParamSpec) -> Option<glib::Value> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Some(match pspec.name() {
            PROP_ACCESS_KEY => self.access_key.to_value(),
            PROP_SECRET_KEY => self.secret_key.to_value(),
            PROP_SESSION_TOKEN => self.session_token.to_value(),
            PROP_CREDENTIAL_PATH => path(&self.credential_path).to_value(),
            PROP_IOT_CERTIFICATE => self.iot_certificate.to_value(),
            PROP_AWS_PROFILE => self.aws_profile.to_value(),
            PROP_AWS_REGION => self.aws_region.to_value(),
            PROP_ENDPOINT => self.endpoint.to_value(),
            PROP_CA_FILE => path(&self.ca_file).to_value(),
            PROP_CONNECTION_TIMEOUT => self.connection_timeout_secs.to_value(),
            PROP_COMPLETION_TIMEOUT => self.completion_timeout_secs.to_value(),
            PROP_USER_AGENT => self.user_agent.to_value(),
            _ => return None,
        })
    }
}

fn secs(s: u32) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(u64::from(s)))
}

/// The ParamSpecs of the shared properties, to append to an element's own list. All are `mutable_ready()`: the
/// client is built in `start()`.
pub fn properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder(PROP_ACCESS_KEY)
            .nick("Access Key")
            .blurb(
                "AWS access key ID. With secret-key (and session-token) it takes precedence over every other \
                 credential source",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_SECRET_KEY)
            .nick("Secret Key")
            .blurb("AWS secret access key, used together with access-key")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_SESSION_TOKEN)
            .nick("Session Token")
            .blurb("AWS session token of temporary credentials given by access-key and secret-key")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_CREDENTIAL_PATH)
            .nick("Credential Path")
            .blurb(
                "File with credentials in the C++ producer format ('CREDENTIALS <access-key> <secret-key>' or \
                 'CREDENTIALS <access-key> <YYYY-MM-DDTHH:MM:SSZ expiration> <secret-key> <session-token>'); \
                 re-read when it changes and before the expiration",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>(PROP_IOT_CERTIFICATE)
            .nick("IoT Certificate")
            .blurb(
                "AWS IoT credentials provider: structure with endpoint, cert-path, key-path, ca-path, \
                 role-aliases and iot-thing-name (default: the stream name), e.g. \
                 'iot-certificate,endpoint=xxx.credentials.iot.us-west-2.amazonaws.com,cert-path=c.pem,\
                 key-path=k.pem,ca-path=ca.pem,role-aliases=alias,iot-thing-name=thing'",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_AWS_PROFILE)
            .nick("AWS Profile")
            .blurb(
                "Profile of the shared AWS config and credentials files used when no other credential source \
                 is set (default: AWS_PROFILE or 'default')",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_AWS_REGION)
            .nick("AWS Region")
            .blurb(
                "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region, then us-west-2)",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_ENDPOINT)
            .nick("Endpoint")
            .blurb(
                "Control-plane endpoint URL, e.g. http://127.0.0.1:8080 for a local server (default: \
                 AWS_ENDPOINT_URL_KINESIS_VIDEO, AWS_ENDPOINT_URL, CONTROL_PLANE_URI, then \
                 https://kinesisvideo.<region>.amazonaws.com)",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_CA_FILE)
            .nick("CA File")
            .blurb(
                "PEM file with extra CA certificates trusted for HTTPS in addition to the system roots \
                 (default: KVSSINK_CA_CERT_PATH if set)",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder(PROP_CONNECTION_TIMEOUT)
            .nick("Connection Timeout")
            .blurb("Time limit in seconds to establish a connection (TCP and TLS); 0 = no limit")
            .default_value(DEFAULT_CONNECTION_TIMEOUT_SECS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder(PROP_COMPLETION_TIMEOUT)
            .nick("Completion Timeout")
            .blurb(
                "Time limit in seconds for a whole API call, and for the response headers of a media \
                 streaming call; 0 = no limit",
            )
            .default_value(DEFAULT_COMPLETION_TIMEOUT_SECS)
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder(PROP_USER_AGENT)
            .nick("User Agent")
            .blurb("Text appended to the User-Agent header of every request (default: none)")
            .mutable_ready()
            .build(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_roundtrip_through_paramspecs() {
        gst::init().expect("gst init");
        let specs = properties();
        let names: Vec<&str> = specs.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "access-key",
                "secret-key",
                "session-token",
                "credential-path",
                "iot-certificate",
                "aws-profile",
                "aws-region",
                "endpoint",
                "ca-file",
                "connection-timeout",
                "completion-timeout",
                "user-agent"
            ]
        );
        let spec = |n: &str| {
            specs
                .iter()
                .find(|p| p.name() == n)
                .cloned()
                .expect("spec exists")
        };

        let mut s = AwsSettings::default();
        assert_eq!(s.connection_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(s.completion_timeout(), Some(Duration::from_secs(10)));
        assert!(s.set_property(&"AKID".to_value(), &spec("access-key")));
        assert!(s.set_property(&"  ".to_value(), &spec("aws-region")));
        assert!(s.set_property(&0u32.to_value(), &spec("completion-timeout")));
        assert!(s.set_property(&"/tmp/ca.pem".to_value(), &spec("ca-file")));
        let iot = gst::Structure::builder("iot-certificate")
            .field("endpoint", "example.com")
            .build();
        assert!(s.set_property(&iot.to_value(), &spec("iot-certificate")));
        assert_eq!(s.access_key.as_deref(), Some("AKID"));
        assert_eq!(s.aws_region, None, "blank means unset");
        assert_eq!(s.completion_timeout(), None);
        assert_eq!(s.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(
            s.property(&spec("access-key"))
                .and_then(|v| v.get::<Option<String>>().ok())
                .flatten()
                .as_deref(),
            Some("AKID")
        );
        assert_eq!(
            s.property(&spec("iot-certificate"))
                .and_then(|v| v.get::<Option<gst::Structure>>().ok())
                .flatten(),
            Some(iot)
        );

        let other = glib::ParamSpecString::builder("stream-name").build();
        assert!(!s.set_property(&"x".to_value(), &other));
        assert!(s.property(&other).is_none());
    }
}
