//! Certificates made at run time with rcgen: a CA, kubelet serving certificates with
//! chosen names and validity, and client certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Validity period of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validity {
    /// 2000-01-01 .. 4000-01-01.
    #[default]
    Valid,
    /// 2000-01-01 .. 2001-01-01.
    Expired,
    /// 3000-01-01 .. 4000-01-01.
    NotYetValid,
}

impl Validity {
    fn apply(self, params: &mut CertificateParams) {
        let (from, to) = match self {
            Validity::Valid => ((2000, 1, 1), (4000, 1, 1)),
            Validity::Expired => ((2000, 1, 1), (2001, 1, 1)),
            Validity::NotYetValid => ((3000, 1, 1), (4000, 1, 1)),
        };
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertKey { .. }")
    }
}

/// A certificate authority that issues server and client certificates.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa { .. }")
    }
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl TestCa {
    /// A new self-signed CA with this common name. Panics on rcgen failure (test helper).
    pub fn new(common_name: &str) -> TestCa {
        let mut params = must("CA params", CertificateParams::new(Vec::<String>::new()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Validity::Valid.apply(&mut params);
        let key = must("CA key", KeyPair::generate());
        let cert = must("CA self-sign", params.self_signed(&key));
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for these subject alternative names (IP literals become IP
    /// SANs, anything else DNS SANs).
    pub fn server_cert(&self, sans: &[&str], validity: Validity) -> CertKey {
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = must("server params", CertificateParams::new(names));
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("kubelet"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        self.issue(params)
    }

    /// A client certificate with this common name (the user a kubelet would see).
    pub fn client_cert(&self, common_name: &str, validity: Validity) -> CertKey {
        let mut params = must(
            "client params",
            CertificateParams::new(Vec::<String>::new()),
        );
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> CertKey {
        let key = must("leaf key", KeyPair::generate());
        let cert = must("leaf sign", params.signed_by(&key, &self.issuer));
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
