//! go-plugin AutoMTLS: when the host sets `PLUGIN_CLIENT_CERT` (a PEM certificate it made
//! for this run), the plugin serves TLS with a fresh self-signed server certificate, accepts
//! exactly that client certificate, and puts its own certificate in the handshake line.
//!
//! SPIRE never enables AutoMTLS; this exists so a go-plugin host that does gets mutual TLS
//! instead of plaintext. The client certificate is **pinned** (byte-for-byte DER match):
//! go-plugin's client certificates are self-signed with CA:true, which X.509 path
//! validation would reject as an end entity anyway.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    AlpnError, Ssl, SslAcceptor, SslMethod, SslVerifyMode, SslVersion, select_next_proto,
};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_openssl::SslStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("PLUGIN_CLIENT_CERT is not a PEM certificate: {0}")]
    ClientCert(#[source] openssl::error::ErrorStack),
    #[error("cannot create the server certificate: {0}")]
    ServerCert(#[source] openssl::error::ErrorStack),
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] openssl::error::ErrorStack),
}

/// TLS settings for one plugin run.
pub struct AutoMtls {
    acceptor: SslAcceptor,
    /// The server certificate, DER, base64 standard alphabet without padding (the
    /// handshake line's 6th field, as go-plugin expects it).
    cert_field: String,
}

impl AutoMtls {
    pub fn from_client_pem(pem: &str) -> Result<AutoMtls, MtlsError> {
        let client = X509::from_pem(pem.as_bytes()).map_err(MtlsError::ClientCert)?;
        let client_der = client.to_der().map_err(MtlsError::ClientCert)?;
        let (cert, key) = self_signed().map_err(MtlsError::ServerCert)?;
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(MtlsError::Tls)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(MtlsError::Tls)?;
        b.set_certificate(&cert).map_err(MtlsError::Tls)?;
        b.set_private_key(&key).map_err(MtlsError::Tls)?;
        b.check_private_key().map_err(MtlsError::Tls)?;
        // gRPC over TLS negotiates h2 with ALPN.
        b.set_alpn_select_callback(|_, offered| {
            select_next_proto(b"\x02h2", offered).ok_or(AlpnError::NOACK)
        });
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_preverified, ctx| {
                // Accept the one certificate the host gave us, nothing else (the TLS
                // handshake itself proves the peer holds its private key).
                ctx.current_cert()
                    .and_then(|c| c.to_der().ok())
                    .is_some_and(|der| der == client_der)
            },
        );
        let der = cert.to_der().map_err(MtlsError::ServerCert)?;
        let cert_field = openssl::base64::encode_block(&der)
            .trim_end_matches('=')
            .to_string();
        Ok(AutoMtls {
            acceptor: b.build(),
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
                let ssl = match Ssl::new(acceptor.context()) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!(error = e.to_string(); "TLS session setup failed");
                        continue;
                    }
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut stream = match SslStream::new(ssl, io) {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!(error = e.to_string(); "TLS session setup failed");
                            return;
                        }
                    };
                    match Pin::new(&mut stream).accept().await {
                        Ok(()) => {
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
/// (CA:true, server+client auth), valid from 30 s ago for 30 years.
fn self_signed() -> Result<(X509, PKey<openssl::pkey::Private>), openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "attestor")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let not_before = Asn1Time::from_unix(now - 30)?;
    let not_after = Asn1Time::from_unix(now + 30 * 365 * 86_400)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .key_agreement()
            .key_cert_sign()
            .build()?,
    )?;
    b.append_extension(
        ExtendedKeyUsage::new()
            .client_auth()
            .server_auth()
            .build()?,
    )?;
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

/// A TLS connection handed to tonic.
pub struct TlsConn<IO>(SslStream<IO>);

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
        let pem = String::from_utf8(client.to_pem().expect("pem")).expect("utf8");
        let m = AutoMtls::from_client_pem(&pem).expect("mtls");
        assert!(!m.cert_field().contains('='));
        assert!(
            m.cert_field().len() > 50,
            "go-plugin ignores fields <= 50 chars"
        );
        let mut padded = m.cert_field().to_string();
        while !padded.len().is_multiple_of(4) {
            padded.push('=');
        }
        let der = openssl::base64::decode_block(&padded).expect("base64");
        let cert = X509::from_der(&der).expect("DER");
        let sans: Vec<String> = cert
            .subject_alt_names()
            .expect("SAN")
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert_eq!(sans, ["localhost"]);
    }

    #[test]
    fn garbage_client_certificate_is_an_error() {
        assert!(matches!(
            AutoMtls::from_client_pem("not a certificate"),
            Err(MtlsError::ClientCert(_))
        ));
    }
}
