//! TLS: serving `wss://` and `https://` with rustls when `--tls-cert` and `--tls-key` are given.
//!
//! TLS wraps the TCP connection before anything else happens, so the rest of the server does not
//! change: hyper reads HTTP from the decrypted stream, and the upgraded WebSocket runs over it.
//! The TLS handshake happens in the connection's own task (see [`crate::http::serve_tcp`]), never
//! in the accept loop, so a slow client cannot hold up everyone else's `accept`, and it counts
//! against `--handshake-timeout` like the rest of the handshake.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::AppError;

/// Reads a certificate chain and its private key, both PEM, and builds the server's TLS settings.
///
/// The chain file holds the server's certificate first, then any intermediates; the key file
/// holds one PKCS#8, PKCS#1 or SEC1 private key. Only HTTP/1.1 is offered through ALPN: the
/// WebSocket upgrade this server speaks is an HTTP/1.1 mechanism.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, AppError> {
    let bad_file = |path: &Path, err: &dyn std::fmt::Display| {
        AppError::Tls(format!("cannot read {}: {err}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|err| bad_file(cert_path, &err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad_file(cert_path, &err))?;
    if certs.is_empty() {
        return Err(AppError::Tls(format!(
            "{} holds no certificate",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|err| bad_file(key_path, &err))?;

    // The provider is named explicitly rather than installed process-wide, so that nothing
    // depends on which crypto backend some other crate might have installed first.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| AppError::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| AppError::Tls(format!("certificate and key do not fit: {err}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
