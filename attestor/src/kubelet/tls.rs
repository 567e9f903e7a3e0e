//! rustls client configuration for the kubelet's secure port: CA bundle, client
//! certificate, and the server-certificate verifiers (normal, loopback, skip).
//!
//! Reading files is the client's job ([`super::client`]); this module only turns bytes
//! into a [`rustls::ClientConfig`], so its errors carry the path they were given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::client::KubeletError;

/// Where the kernel keeps this machine's host name (the value `gethostname(2)` returns,
/// for this process's UTS namespace). Read instead of calling `gethostname` so that this
/// module needs no `unsafe`.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// This machine's host name as the kubelet's certificate would name it, or `None` when it
/// cannot be read or is not a valid DNS name (then only `127.0.0.1` is accepted).
pub fn local_hostname() -> Option<String> {
    let raw = std::fs::read_to_string(HOSTNAME_FILE).ok()?;
    let name = raw.trim();
    if name.is_empty() || ServerName::try_from(name).is_err() {
        return None;
    }
    Some(name.to_owned())
}

/// The TLS-relevant files, already read from disk. Private key bytes live here, so this
/// type deliberately has no `Debug`.
pub(super) struct TlsMaterial {
    pub ca: Option<(PathBuf, Vec<u8>)>,
    pub client_cert: Option<ClientCertFiles>,
}

pub(super) struct ClientCertFiles {
    pub cert_path: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_path: PathBuf,
    pub key_pem: Vec<u8>,
}

/// How the server certificate is checked.
pub(super) enum Verification {
    /// `skip_kubelet_verification`.
    Skip,
    /// Chain to the CA bundle and match the URL's host name (node name set).
    NodeName,
    /// Chain to the CA bundle and match `127.0.0.1` or this machine's host name.
    Loopback { hostname: Option<String> },
}

/// Build the client configuration for one generation of TLS material.
pub(super) fn client_config(
    material: &TlsMaterial,
    verification: Verification,
) -> Result<ClientConfig, KubeletError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeletError::Tls {
            reason: e.to_string(),
        })?;

    let builder = match verification {
        Verification::Skip => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerification(provider))),
        Verification::NodeName | Verification::Loopback { .. } => {
            let Some((ca_path, ca_pem)) = &material.ca else {
                return Err(KubeletError::Tls {
                    reason: "certificate verification is on but no CA bundle was loaded".into(),
                });
            };
            let roots = Arc::new(parse_ca(ca_path, ca_pem)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| KubeletError::ParseCa {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            match verification {
                Verification::Loopback { hostname } => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(LoopbackVerifier {
                        inner: webpki,
                        hostname: hostname.and_then(|h| ServerName::try_from(h).ok()),
                    })),
                _ => builder.with_webpki_verifier(webpki),
            }
        }
    };

    match &material.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some(files) => {
            let chain = parse_certificates(&files.cert_path, &files.cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| {
                KubeletError::ParseKey {
                    path: files.key_path.clone(),
                    // The pem error names the section kind, never key bytes.
                    reason: e.to_string(),
                }
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| KubeletError::KeyPair {
                    cert_path: files.cert_path.clone(),
                    key_path: files.key_path.clone(),
                    reason: e.to_string(),
                })
        }
    }
}

/// Parse a PEM CA bundle; at least one certificate must be usable.
fn parse_ca(path: &Path, pem: &[u8]) -> Result<RootCertStore, KubeletError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates_for_ca(path, pem)? {
        roots.add(cert).map_err(|e| KubeletError::ParseCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn parse_certificates_for_ca(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KubeletError> {
    pem_certificates(pem).map_err(|reason| KubeletError::ParseCa {
        path: path.to_owned(),
        reason,
    })
}

fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KubeletError> {
    pem_certificates(pem).map_err(|reason| KubeletError::ParseCertificate {
        path: path.to_owned(),
        reason,
    })
}

/// Every CERTIFICATE block of a PEM file; at least one. Also the API server client's.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// Verifier for the no-node-name case: the URL names `127.0.0.1`, and the certificate
/// must be valid for that IP or for this machine's host name (see the module rule in
/// [`super`]). Chain, validity period and signatures are checked by webpki as usual.
#[derive(Debug)]
struct LoopbackVerifier {
    inner: Arc<WebPkiServerVerifier>,
    hostname: Option<ServerName<'static>>,
}

fn is_name_mismatch(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// Reported when the certificate names neither `127.0.0.1` nor this host.
#[derive(Debug)]
struct LoopbackNameMismatch {
    hostname: Option<String>,
}

impl fmt::Display for LoopbackNameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hostname {
            Some(h) => write!(
                f,
                "kubelet certificate is valid neither for 127.0.0.1 nor for this host's name \
                 {h:?}; set the node name to the name in the certificate"
            ),
            None => write!(
                f,
                "kubelet certificate is not valid for 127.0.0.1 (this host's name is unknown); \
                 set the node name to the name in the certificate"
            ),
        }
    }
}

impl std::error::Error for LoopbackNameMismatch {}

impl ServerCertVerifier for LoopbackVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let first = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match first {
            Err(e) if is_name_mismatch(&e) => {
                if let Some(hostname) = &self.hostname {
                    let second = self.inner.verify_server_cert(
                        end_entity,
                        intermediates,
                        hostname,
                        ocsp_response,
                        now,
                    );
                    match second {
                        Err(e) if is_name_mismatch(&e) => {}
                        other => return other,
                    }
                }
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(LoopbackNameMismatch {
                        hostname: self.hostname.as_ref().map(|h| h.to_str().into_owned()),
                    })),
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `skip_kubelet_verification`: any certificate is accepted. Handshake signatures are
/// still checked (they prove the server holds the key of the certificate it sent, which
/// costs nothing), but without a trusted chain that proves nothing about who the server
/// is: anyone who can take the kubelet's address can feed the attestor a forged pod list.
#[derive(Debug)]
pub(crate) struct SkipVerification(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
