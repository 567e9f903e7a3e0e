//! go-plugin AutoMTLS: when the host sets `PLUGIN_CLIENT_CERT` (a PEM certificate it made
//! for this run), the plugin serves TLS with a fresh self-signed server certificate, accepts
//! exactly that client certificate, and puts its own certificate in the handshake line.
//!
//! SPIRE never enables AutoMTLS; this exists so a go-plugin host that does gets mutual TLS
//! instead of plaintext. The client certificate is **pinned** (byte-for-byte DER match):
//! go-plugin's client certificates are self-signed with CA:true, which X.509 path
//! validation would reject as an end entity anyway.
//!
//! TLS is rustls (ring), as everywhere else in the binary. go-plugin's host keys are ECDSA
//! P-521, which ring cannot verify, so the one signature check the handshake needs from the
//! client (its CertificateVerify) also accepts ECDSA P-521/SHA-512 through RustCrypto's
//! `p521` (pure Rust, no C library to link into the static binary).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, PrivateKeyDer, PrivatePkcs8KeyDer,
    SignatureVerificationAlgorithm, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("PLUGIN_CLIENT_CERT is not a PEM certificate: {0}")]
    ClientCert(String),
    #[error("cannot create the server certificate: {0}")]
    ServerCert(#[source] rcgen::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
}

/// TLS settings for one plugin run.
pub struct AutoMtls {
    acceptor: TlsAcceptor,
    /// The server certificate, DER, base64 standard alphabet without padding (the
    /// handshake line's 6th field, as go-plugin expects it).
    cert_field: String,
}

impl AutoMtls {
    pub fn from_client_pem(pem: &str) -> Result<AutoMtls, MtlsError> {
        let client = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| MtlsError::ClientCert(e.to_string()))?;
        let (cert, key) = self_signed().map_err(MtlsError::ServerCert)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedClient {
            der: client.as_ref().to_vec(),
            algorithms: algorithms(&provider),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(MtlsError::Tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.clone()], key)
            .map_err(MtlsError::Tls)?;
        // gRPC over TLS negotiates h2 with ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let cert_field = base64::engine::general_purpose::STANDARD_NO_PAD.encode(cert.as_ref());
        Ok(AutoMtls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_field,
        })
    }

    pub fn cert_field(&self) -> &str {
        &self.cert_field
    }

    /// TLS connections from raw ones: each handshake runs on its own task; failed
    /// handshakes are logged and dropped.
    pub fn incoming<S, IO>(
        self,
        mut raw: S,
        shutdown: CancellationToken,
    ) -> impl Stream<Item = Result<TlsConn<IO>, io::Error>> + Send + 'static
    where
        S: Stream<Item = Result<IO, io::Error>> + Send + Unpin + 'static,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let acceptor = self.acceptor;
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = raw.next() => c,
                };
                let Some(conn) = conn else { break };
                let io = match conn {
                    Ok(io) => io,
                    Err(e) => {
                        log::debug!(error = e.to_string(); "accept failed");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(io).await {
                        Ok(stream) => {
                            let _ = tx.send(Ok(TlsConn(stream))).await;
                        }
                        Err(e) => log::warn!(
                            error = e.to_string();
                            "TLS handshake with the host failed (AutoMTLS)"
                        ),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// A self-signed P-256 certificate for `localhost`, the shape go-plugin's own plugins use
/// (CA:true, server+client auth), valid from a minute ago for 30 years.
fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "localhost");
    name.push(DnType::OrganizationName, "attestor");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(60)).into();
    params.not_after = (now + std::time::Duration::from_secs(30 * 365 * 86_400)).into();
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// ring's signature algorithms plus ECDSA P-521/SHA-512 (go-plugin's host keys).
fn algorithms(provider: &rustls::crypto::CryptoProvider) -> WebPkiSupportedAlgorithms {
    static P521_ALGS: [&'static dyn SignatureVerificationAlgorithm; 1] = [&EcdsaP521Sha512];
    let base = provider.signature_verification_algorithms;
    let all: Vec<&'static dyn SignatureVerificationAlgorithm> =
        base.all.iter().copied().chain(P521_ALGS).collect();
    let mut mapping: Vec<(
        SignatureScheme,
        &'static [&'static dyn SignatureVerificationAlgorithm],
    )> = base.mapping.to_vec();
    mapping.push((SignatureScheme::ECDSA_NISTP521_SHA512, &P521_ALGS));
    // The structure wants 'static slices; one small leak per plugin start (AutoMTLS only).
    WebPkiSupportedAlgorithms {
        all: Vec::leak(all),
        mapping: Vec::leak(mapping),
    }
}

#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p521::ecdsa::signature::Verifier as _;
        let key =
            p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

/// Accepts exactly one client certificate; the handshake signatures prove the peer holds its
/// key.
#[derive(Debug)]
struct PinnedClient {
    der: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the certificate the plugin host gave (PLUGIN_CLIENT_CERT)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS connection handed to tonic.
pub struct TlsConn<IO>(TlsStream<IO>);

impl<IO> tonic::transport::server::Connected for TlsConn<IO> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_is_for_localhost_and_unpadded_base64() {
        let (client, _) = self_signed().expect("client cert");
        let client_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(client.as_ref())
        );
        let m = AutoMtls::from_client_pem(&client_pem).expect("mtls");
        assert!(!m.cert_field().contains('='));
        assert!(
            m.cert_field().len() > 50,
            "go-plugin ignores fields <= 50 chars"
        );
        let der = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(m.cert_field())
            .expect("base64");
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("localhost"), "SAN and CN name localhost");
    }

    #[test]
    fn garbage_client_certificate_is_an_error() {
        assert!(matches!(
            AutoMtls::from_client_pem("not a certificate"),
            Err(MtlsError::ClientCert(_))
        ));
    }

    #[test]
    fn p521_signatures_verify_and_forgeries_do_not() {
        use p521::ecdsa::signature::Signer as _;
        // A scalar below the P-521 group order (its top byte is at most 0x01).
        let mut scalar = [7u8; 66];
        scalar[0] = 1;
        let sk = p521::ecdsa::SigningKey::from_slice(&scalar).expect("key");
        let vk = p521::ecdsa::VerifyingKey::from(&sk);
        let sig: p521::ecdsa::Signature = sk.sign(b"message");
        let point = vk.to_sec1_point(false);
        let der = sig.to_der();
        assert!(
            EcdsaP521Sha512
                .verify_signature(point.as_bytes(), b"message", der.as_bytes())
                .is_ok()
        );
        assert!(
            EcdsaP521Sha512
                .verify_signature(point.as_bytes(), b"messagf", der.as_bytes())
                .is_err()
        );
        assert!(
            EcdsaP521Sha512
                .verify_signature(b"junk", b"message", der.as_bytes())
                .is_err()
        );
    }
}
