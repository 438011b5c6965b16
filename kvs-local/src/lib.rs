//! kvs-local: a local Amazon Kinesis Video Streams endpoint.
//!
//! It serves the control plane, PutMedia, GetMedia, ListFragments and GetMediaForFragmentList on one address,
//! verifies SigV4 on every request and stores media durably under a data directory. Run it as the `kvs-local`
//! binary, or in-process with [`Server::start`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), kvs_local::Error> {
//! let mut config = kvs_local::Config::new("127.0.0.1:0".parse().unwrap(), "/tmp/kvs-data");
//! config.add_credential(kvs_local::Credential {
//!     access_key_id: "AKIDEXAMPLE".into(),
//!     secret_access_key: "secret".into(),
//!     session_token: None,
//! });
//! let server = kvs_local::Server::start(config).await?;
//! println!("{}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod fragment_id;
pub mod resources;
pub mod sigv4;
pub mod store;

pub use config::{Config, Credential, TlsFiles};
pub use error::{ApiError, Error};
pub mod api;
pub mod app;
pub mod body;
pub mod media;
pub mod remux;
pub mod server;
pub mod streams;
pub mod tls;

pub use server::{RunningServer, Server};
