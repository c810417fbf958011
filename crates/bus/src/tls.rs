//! TLS for the Bus API (rustls): the server's certificate and key, and the client side a bus
//! sidecar uses to trust a bus's CA.
//!
//! Files are read and checked before anything starts; an error names the file and what is wrong
//! with it, never the key's contents.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that cannot be used.
#[derive(Debug)]
pub struct TlsError {
    pub file: PathBuf,
    /// What the file was meant to hold: "certificate", "private key", "CA certificate".
    pub what: &'static str,
    pub reason: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the TLS {} file {} cannot be used: {}",
            self.what,
            self.file.display(),
            self.reason
        )
    }
}

impl std::error::Error for TlsError {}

/// The server's identity, checked; what [`crate::Options::tls`] holds.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: ServerTlsConfig,
    cert_file: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

fn read(file: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError {
        file: file.to_owned(),
        what,
        reason: e.to_string(),
    })
}

/// Why PEM text does not parse, without quoting it (it may be a key).
fn pem_reason(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("it holds no PEM {what}"),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        other => format!("it is not PEM: {other}"),
    }
}

/// Reads every certificate of a PEM file; at least one.
fn certificates(file: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read(file, what)?;
    let err = |reason: String| TlsError {
        file: file.to_owned(),
        what,
        reason,
    };
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| err(pem_reason(&e, "certificate")))?;
        n += 1;
    }
    if n == 0 {
        return Err(err(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

/// The server's certificate chain and private key, from PEM files.
pub fn server(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
    let cert = certificates(cert_file, "certificate")?;
    let key = read(key_file, "private key")?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError {
        file: key_file.to_owned(),
        what: "private key",
        reason: pem_reason(
            &e,
            "private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)",
        ),
    })?;
    let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    // What only rustls can tell (a key of another kind, a key that is not the certificate's).
    if let Err(e) = tonic::transport::Server::builder().tls_config(config.clone()) {
        return Err(TlsError {
            file: key_file.to_owned(),
            what: "private key",
            reason: format!(
                "it does not go with the certificate {}: {}",
                cert_file.display(),
                crate::error_chain(&e)
            ),
        });
    }
    Ok(ServerTls {
        config,
        cert_file: cert_file.to_owned(),
    })
}

/// A client's TLS settings that trust the CA certificates in `ca_file` (PEM), for a bus sidecar
/// connecting to `https://…`. `domain` is the name the bus's certificate must carry, when it is
/// not the host of the address connected to.
pub fn client_tls(ca_file: &Path, domain: Option<&str>) -> Result<ClientTlsConfig, TlsError> {
    let ca = certificates(ca_file, "CA certificate")?;
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    Ok(match domain {
        Some(d) => config.domain_name(d),
        None => config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong_and_no_key_text() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let (other_cert, _) = pair();
        let f = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key, other) = (f("c.pem", &cert), f("k.pem", &key), f("o.pem", &other_cert));
        assert!(server(&cert, &key).is_ok());

        let missing = dir.path().join("missing.pem");
        let e = server(&missing, &key).unwrap_err();
        assert_eq!(e.file, missing);
        assert!(
            e.to_string().starts_with(&format!(
                "the TLS certificate file {} cannot be used: No such file",
                missing.display()
            )),
            "{e}"
        );

        let e = server(&key, &key).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the TLS certificate file {} cannot be used: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                key.display()
            )
        );

        let e = server(&cert, &cert).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the TLS private key file {} cannot be used: it holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)",
                cert.display()
            )
        );

        let broken = std::fs::read_to_string(&key).unwrap();
        let broken = f("broken.pem", &broken[..broken.len() / 2]);
        let e = server(&cert, &broken).unwrap_err();
        assert_eq!(e.file, broken);
        assert!(
            e.to_string().ends_with("a PEM section has no END line"),
            "{e}"
        );

        let e = server(&other, &key).unwrap_err();
        assert_eq!(e.file, key);
        assert!(
            e.to_string().contains(&format!(
                "it does not go with the certificate {}",
                other.display()
            )),
            "{e}"
        );

        assert!(client_tls(&cert, Some("localhost")).is_ok());
        let e = client_tls(&key, None).unwrap_err();
        assert_eq!((e.file, e.what), (key, "CA certificate"));
    }
}
