//! HTTPS: a rustls acceptor from PEM certificate chain and key files.

use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::PrivateKeyDer};

use crate::config::TlsFiles;
use crate::error::Error;

/// Builds the acceptor; errors name the file and what is wrong with it.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    let read = |path: &std::path::Path| {
        std::fs::File::open(path)
            .map(BufReader::new)
            .map_err(|e| Error::Tls(format!("cannot open {}: {e}", path.display())))
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "cannot parse certificates in {}: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "no certificate in {}",
            files.cert.display()
        )));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(&files.key)?)
        .map_err(|e| {
            Error::Tls(format!(
                "cannot parse private key in {}: {e}",
                files.key.display()
            ))
        })?
        .ok_or_else(|| Error::Tls(format!("no private key in {}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Tls(format!(
                "certificate and key do not form a usable pair: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
