//! TLS credentials in QEMU's tls-creds-x509 layout, made into rustls
//! configurations: TLS 1.3 only, the peer's certificate always verified
//! against `ca-cert.pem` (and `ca-crl.pem` when present), and on the
//! listening side an optional allowlist of client subject DNs (tls-authz).
//!
//! Every error names the file it is about, since a user with a directory of
//! five PEM files needs to know which one is wrong.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which end of the migration the credentials serve, which decides the
/// files read (QEMU's `endpoint=server|client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The destination: `server-cert.pem`, `server-key.pem`.
    Server,
    /// The source: `client-cert.pem`, `client-key.pem`.
    Client,
}

/// A credentials failure: the errno JavaScript sees and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredsError {
    pub errno: i32,
    pub message: String,
}

impl fmt::Display for CredsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn bad(path: &Path, why: impl fmt::Display) -> CredsError {
    CredsError { errno: libc::EINVAL, message: format!("{}: {why}", path.display()) }
}

/// Loaded credentials: the configuration for the role they were loaded for.
#[derive(Clone)]
pub enum Creds {
    Server(Arc<ServerConfig>),
    Client(Arc<ClientConfig>),
}

fn read(path: &Path) -> Result<Vec<u8>, CredsError> {
    std::fs::read(path).map_err(|e| CredsError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: format!("{}: {}", path.display(), e),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(path, format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, CredsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(path, format!("holds no usable PEM private key ({e})")))
}

/// `ca-crl.pem` if it is there: QEMU's is optional too. Any error but a
/// missing file is an error (a CRL that cannot be read must not be skipped).
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CredsError> {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CredsError { errno: e.raw_os_error().unwrap_or(libc::EIO), message: format!("{}: {}", path.display(), e) }),
    };
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(path, format!("not PEM CRLs ({e})")))?;
    if crls.is_empty() {
        return Err(bad(path, "holds no PEM CRL"));
    }
    Ok(crls)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, CredsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| bad(path, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<CryptoProvider> {
    // Deprecated only for lacking post-quantum key exchange, which ring
    // does not have; aws-lc-rs, which has it, needs cmake and nasm to build.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `dir` for `role`. `authz`, for the server only, is the list of
/// client subject DNs let in (None: any client the CA vouches for).
pub fn load(dir: &Path, role: Role, authz: Option<Vec<String>>) -> Result<Creds, CredsError> {
    let md = std::fs::metadata(dir).map_err(|e| CredsError { errno: e.raw_os_error().unwrap_or(libc::EIO), message: format!("tls-creds directory {}: {e}", dir.display()) })?;
    if !md.is_dir() {
        return Err(CredsError { errno: libc::ENOTDIR, message: format!("tls-creds directory {}: not a directory", dir.display()) });
    }
    let file = |name: &str| -> PathBuf { dir.join(name) };
    let ca = file("ca-cert.pem");
    let roots = roots(&ca)?;
    let crl_path = file("ca-crl.pem");
    let crls = crls(&crl_path)?;
    let (cert_name, key_name) = match role {
        Role::Server => ("server-cert.pem", "server-key.pem"),
        Role::Client => ("client-cert.pem", "client-key.pem"),
    };
    let cert_path = file(cert_name);
    let key_path = file(key_name);
    let chain = certs(&cert_path)?;
    let key = key(&key_path)?;
    let provider = provider();
    let tls13 = &[&rustls::version::TLS13];
    match role {
        Role::Server => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| bad(&crl_path, format!("CA or CRL not usable ({e})")))?;
            let verifier: Arc<dyn ClientCertVerifier> = match authz {
                Some(allowed) => Arc::new(Authz { inner: verifier, allowed: allowed.iter().map(|d| normalize_dn(d)).collect() }),
                None => verifier,
            };
            let mut cfg = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(tls13)
                .map_err(|e| bad(dir, e))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| bad(&key_path, format!("does not go with {cert_name} ({e})")))?;
            // One ticket: the client's sign that its certificate was accepted
            // (tls.rs, Confirm). It is never used to resume.
            cfg.send_tls13_tickets = 1;
            cfg.alpn_protocols = vec![super::tls::VERDICT_ALPN.to_vec()];
            Ok(Creds::Server(Arc::new(cfg)))
        }
        Role::Client => {
            if authz.is_some() {
                return Err(CredsError { errno: libc::EINVAL, message: "tls-authz applies to the destination (the listening side) only".into() });
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| bad(&crl_path, format!("CA or CRL not usable ({e})")))?;
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(tls13)
                .map_err(|e| bad(dir, e))?
                .with_webpki_verifier(verifier)
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(&key_path, format!("does not go with {cert_name} ({e})")))?;
            cfg.resumption = rustls::client::Resumption::disabled();
            // Asks the server to promise its verdict on our certificate (tls.rs, Confirm).
            cfg.alpn_protocols = vec![super::tls::VERDICT_ALPN.to_vec()];
            Ok(Creds::Client(Arc::new(cfg)))
        }
    }
}

/// A client whose verified certificate's subject is not on the list.
#[derive(Debug)]
struct NotAuthorized(String);

impl fmt::Display for NotAuthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client certificate subject \"{}\" is not in tls-authz", self.0)
    }
}

impl std::error::Error for NotAuthorized {}

/// The CA's verdict first, then the allowlist: a DN alone proves nothing
/// unless the chain behind it was verified.
#[derive(Debug)]
struct Authz {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for Authz {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let dn = subject_dn(end_entity).map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotAuthorized(e))))))?;
        if self.allowed.contains(&dn) {
            return Ok(ok);
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotAuthorized(dn))))))
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 4514 escaping of one attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A certificate's subject as an RFC 4514 string, most specific RDN first
/// ("CN=src,O=Example,C=GB"), the form GnuTLS prints and QEMU's tls-authz
/// lists match.
pub fn subject_dn(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unparsable certificate ({e})"))?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type().to_id_string();
            let name = short_name(&oid).map(str::to_string).unwrap_or(oid);
            let value = match atv.as_str() {
                Ok(s) => escape(s),
                Err(_) => format!("#{}", atv.attr_value().data.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            };
            parts.push(format!("{name}={value}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// A DN as a user may type it ("CN=src, O=Example"), in the form
/// [`subject_dn`] gives: no blanks around separators and '=', attribute
/// names upper case. Escaped characters are kept as they are.
pub fn normalize_dn(dn: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut seps: Vec<char> = Vec::new();
    let mut cur = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' | '+' => {
                parts.push(std::mem::take(&mut cur));
                seps.push(c);
            }
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        let p = p.trim_start();
        // A trailing blank that was escaped belongs to the value.
        let p = if p.ends_with("\\ ") { p } else { p.trim_end() };
        match p.split_once('=') {
            Some((name, value)) => {
                let name = name.trim();
                let name = if name.chars().all(|c| c.is_ascii_alphabetic()) { name.to_ascii_uppercase() } else { name.to_string() };
                out.push_str(&name);
                out.push('=');
                out.push_str(value.trim_start());
            }
            None => out.push_str(p),
        }
        if let Some(s) = seps.get(i) {
            out.push(*s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_dns_normalize_to_the_printed_form() {
        assert_eq!(normalize_dn("cn = src , O=Example Org,C=GB"), "CN=src,O=Example Org,C=GB");
        assert_eq!(normalize_dn("CN=a\\, b,O=x"), "CN=a\\, b,O=x");
        assert_eq!(normalize_dn("CN=a+UID=7 , DC=example"), "CN=a+UID=7,DC=example");
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("#x"), "\\#x");
    }

    #[test]
    fn a_missing_directory_and_a_file_in_place_of_it_are_named() {
        let e = load(Path::new("/nonexistent-vmm-tls-dir"), Role::Server, None).err().unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.message.contains("/nonexistent-vmm-tls-dir"), "{}", e.message);
        let e = load(Path::new("/proc/self/status"), Role::Client, None).err().unwrap();
        assert_eq!(e.errno, libc::ENOTDIR);
    }

    #[test]
    fn a_directory_without_the_ca_names_ca_cert_pem() {
        let dir = std::env::temp_dir().join(format!("vmm-tls-creds-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load(&dir, Role::Server, None).err().unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.message.contains("ca-cert.pem"), "{}", e.message);
        std::fs::write(dir.join("ca-cert.pem"), b"not pem at all\n").unwrap();
        let e = load(&dir, Role::Server, None).err().unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("ca-cert.pem") && e.message.contains("no PEM certificate"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
