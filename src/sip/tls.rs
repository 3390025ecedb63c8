//! TLS for SIP, the rustls side of the transports: server configurations from PEM files
//! (certificate chain and key, and for mutual TLS the CAs whose client certificates are
//! accepted), client configurations for carriers (the system's roots, or a trunk's
//! `ca_file`; the trunk's host name is always verified), and their reloading. A listener's
//! `ServerTls` and the `ClientTls` table are swapped on each configuration reload, so a
//! renewed certificate is served to new connections at once while open connections (and
//! the calls on them) keep the session they have. A file that cannot be read keeps the
//! previous configuration in force and says why.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsFiles, Transport, Trunk};

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn root_store(path: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(path, what)? {
        roots
            .add(c)
            .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A TLS server configuration from PEM files: the certificate chain and key, and with
/// `client_ca` a verifier that requires every client to present a certificate signed by
/// one of those CAs (mutual TLS).
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let certs = certificates(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("key {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = root_store(ca, "client_ca")?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crypto())
                    .build()
                    .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate {}: {e}", files.cert.display()))
}

/// A TLS client configuration for carriers: the CAs of `ca_file`, else the system's roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let roots = match ca_file {
        Some(p) => root_store(p, "ca_file")?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The server side of one TLS listener: the configuration last read from its files.
pub struct ServerTls {
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    pub fn new(files: &TlsFiles) -> Result<ServerTls, String> {
        let cfg = server_config(files)?;
        Ok(ServerTls {
            current: RwLock::new(Arc::new(cfg)),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self.current.read().expect("TLS lock").clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Reads `files` again (they may name the same paths with renewed contents) and
    /// serves the result from the next handshake on. On error the previous configuration
    /// stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), String> {
        let cfg = server_config(files)?;
        *self.current.write().expect("TLS lock") = Arc::new(cfg);
        Ok(())
    }
}

/// Client configurations for outbound TLS, by the host name verified: a trunk with a
/// `ca_file` gets its own, everything else the system's roots.
pub struct ClientTls {
    system: Arc<rustls::ClientConfig>,
    /// Lower-cased host -> the configuration, or why its CA file could not be used (then
    /// connecting fails rather than trusting other roots).
    by_host: RwLock<HashMap<String, Result<Arc<rustls::ClientConfig>, String>>>,
}

impl ClientTls {
    pub fn new() -> ClientTls {
        ClientTls {
            system: Arc::new(client_config(None).expect("the system roots build a config")),
            by_host: RwLock::new(HashMap::new()),
        }
    }

    /// Rebuilds the per-trunk table from the trunks' `ca_file`s. Returns the errors (one
    /// per file that could not be read); those hosts refuse to connect until fixed.
    pub fn configure(&self, trunks: &[Trunk]) -> Vec<String> {
        let mut table = HashMap::new();
        let mut errors = Vec::new();
        for t in trunks {
            let Some(o) = &t.outbound else { continue };
            let Some(ca) = o.ca_file.as_deref() else {
                continue;
            };
            if o.transport != Transport::Tls {
                continue;
            }
            let host = o.target.host.to_ascii_lowercase();
            if table.contains_key(&host) {
                continue;
            }
            let entry = client_config(Some(ca)).map(Arc::new).map_err(|e| {
                let e = format!("trunk {}: {e}", t.name);
                errors.push(e.clone());
                e
            });
            table.insert(host, entry);
        }
        *self.by_host.write().expect("TLS lock") = table;
        errors
    }

    /// The configuration to verify `host` with.
    pub fn config_for(&self, host: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        match self
            .by_host
            .read()
            .expect("TLS lock")
            .get(&host.to_ascii_lowercase())
        {
            Some(entry) => entry.clone(),
            None => Ok(self.system.clone()),
        }
    }
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls::new()
    }
}

/// Whether a failed handshake was about certificates (worth a log line at info: a client
/// without the right certificate, or a carrier whose certificate we refuse), rather than
/// a scanner or a dropped connection (debug).
pub fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::CertificateUnknown
                    )
            )
        })
}
