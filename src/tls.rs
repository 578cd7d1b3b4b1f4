//! TLS: serving with rustls (certificates reloaded when their files
//! change, optional client certificates) and `berth tls self-signed`.

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when this and `key` are set.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA bundle for client certificates (mTLS); off when empty.
    pub client_ca: String,
    /// `required` or `optional` client certificates when `client_ca` is set.
    pub client_auth: String,
    /// How often certificate files are checked for changes.
    pub reload_interval_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            client_auth: "required".into(),
            reload_interval_secs: 10,
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cert.is_empty() != self.key.is_empty() {
            bail!("tls: cert and key must be set together");
        }
        if !matches!(self.client_auth.as_str(), "required" | "optional") {
            bail!("tls.client_auth: must be \"required\" or \"optional\", not {:?}", self.client_auth);
        }
        Ok(())
    }
}

fn read_certs(path: &str) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {path}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {path}"))?;
    if certs.is_empty() {
        bail!("{path}: no certificate found");
    }
    Ok(certs)
}

/// Builds a rustls server configuration from the files named in `config`.
pub fn server_config(config: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(&config.cert)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&config.key)
        .with_context(|| format!("reading private key from {}", config.key))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if config.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs(&config.client_ca)? {
            roots.add(ca).context("adding client CA")?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if config.client_auth == "optional" { verifier.allow_unauthenticated() } else { verifier };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| anyhow!("client CA: {e}"))?)
    };
    let mut server = builder.with_single_cert(certs, key).context("certificate and key do not match")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The current acceptor; swapped when certificate files change.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
}

impl Acceptor {
    pub fn new(config: &TlsConfig) -> anyhow::Result<Acceptor> {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(config)?);
        Ok(Acceptor { current: Arc::new(RwLock::new(acceptor)) })
    }

    pub fn get(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().unwrap().clone()
    }

    /// Watches the certificate files and reloads them when they change
    /// (certificate renewals need no restart). A broken new file is logged
    /// and the previous certificate stays in use.
    pub fn spawn_reloader(&self, config: TlsConfig) {
        let this = self.clone();
        tokio::spawn(async move {
            let files: Vec<PathBuf> = [&config.cert, &config.key, &config.client_ca]
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            let stamp = |files: &[PathBuf]| -> Vec<Option<SystemTime>> {
                files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
            };
            let mut last = stamp(&files);
            loop {
                tokio::time::sleep(Duration::from_secs(config.reload_interval_secs.max(1))).await;
                let now = stamp(&files);
                if now == last {
                    continue;
                }
                last = now;
                match server_config(&config) {
                    Ok(c) => {
                        *this.current.write().unwrap() = tokio_rustls::TlsAcceptor::from(c);
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "TLS certificate reload failed; keeping the previous one"),
                }
            }
        });
    }
}

/// Writes `ca.crt`, `ca.key`, `server.crt` and `server.key` into `out`:
/// a private CA and a server certificate for `hosts` signed by it.
pub fn self_signed(hosts: &[String], out: &Path, days: u32) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    if hosts.is_empty() {
        bail!("give at least one --host (a DNS name or IP address)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Never replace a CA: clients that trust it would stop trusting the
    // server the moment it reloads the new certificate.
    for name in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        if out.join(name).exists() {
            bail!("{} already exists: choose another --out, or remove the old files first", out.join(name).display());
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Berth private CA");
    ca_params.distinguished_name = dn;
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(days as i64 * 2);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(hosts.to_vec()).context("invalid --host")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hosts[0].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days as i64);
    // Strict verifiers (OpenSSL's -x509_strict, Python's default context)
    // want the issuer's key identifier in the leaf.
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    let write = |name: &str, text: &str, private: bool| -> anyhow::Result<()> {
        let path = out.join(name);
        if private {
            berth_auth::htpasswd::write_private(&path, text.as_bytes())
        } else {
            std::fs::write(&path, text)
        }
        .with_context(|| format!("writing {}", path.display()))
    };
    write("ca.crt", &ca_cert.pem(), false)?;
    write("ca.key", &ca_key.serialize_pem(), true)?;
    // The chain clients need: server certificate then CA.
    write("server.crt", &format!("{}{}", cert.pem(), ca_cert.pem()), false)?;
    write("server.key", &key.serialize_pem(), true)?;
    Ok(())
}
