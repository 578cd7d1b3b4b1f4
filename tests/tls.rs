//! TLS against a real `berth` server: certificates from
//! `berth tls self-signed`, clients that trust the CA (or not), protocol
//! versions, certificate reload without restart, client certificates
//! (mTLS), and skopeo and the Docker engine over HTTPS with credentials.

mod clients_support;
mod common;

use clients_support::{make_oci_layout, output, run, unique};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Runs `berth tls self-signed` for 127.0.0.1 and localhost into `out`.
fn self_signed(out: &Path) {
    let o = output(Command::new(env!("CARGO_BIN_EXE_berth")).args(["tls", "self-signed", "--host", "127.0.0.1", "--host", "localhost", "--out"]).arg(out));
    assert!(o.status.success(), "berth tls self-signed: {}", String::from_utf8_lossy(&o.stderr));
    for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
}

fn tls_section(certs: &Path, extra: &str) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display()
    )
}

fn https_port(s: &common::Server) -> String {
    assert!(s.url.starts_with("https://"), "TLS server announces https: {}", s.url);
    s.addr.clone()
}

struct ClientOpts<'a> {
    /// PEM file of trusted CAs.
    ca: &'a Path,
    /// Client certificate chain and key.
    identity: Option<(&'a Path, &'a Path)>,
    versions: &'a [&'static rustls::SupportedProtocolVersion],
    server_name: &'a str,
}

impl<'a> ClientOpts<'a> {
    fn trusting(ca: &'a Path) -> Self {
        ClientOpts { ca, identity: None, versions: rustls::ALL_VERSIONS, server_name: "127.0.0.1" }
    }
}

/// `GET path` over HTTPS with a rustls client configured by `opts`;
/// returns the status code or the TLS/IO error.
fn https_get(addr: &str, path: &str, opts: &ClientOpts) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(opts.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(opts.versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match opts.identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(opts.server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let res = tls.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok());
    match (status, res) {
        (Some(code), _) => Ok(code),
        (None, Err(e)) => Err(e.to_string()),
        (None, Ok(_)) => Err(format!("no HTTP response: {text:?}")),
    }
}

/// Polls `f` until it returns true, at most `tries` times, `every` apart.
fn eventually(tries: u32, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(every);
    }
    false
}

fn openssl_connects(addr: &str, ca: &Path, version_flag: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, version_flag, "-servername", "localhost", "-verify_return_error", "-CAfile"])
        .arg(ca)
        // Let the client offer old protocols at all; the server must refuse them.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ok = out.status.success() && text.contains("Verify return code: 0 (ok)") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[test]
fn serves_tls_with_a_self_signed_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    self_signed(&certs);
    let other = dir.path().join("other");
    self_signed(&other);
    let s = common::Server::start_config(dir.path(), &tls_section(&certs, ""));
    let addr = https_port(&s);
    let ca = certs.join("ca.crt");

    // Trusting the CA: works, by IP and by name.
    assert_eq!(https_get(&addr, "/v2/", &ClientOpts::trusting(&ca)), Ok(200));
    assert_eq!(https_get(&addr, "/healthz", &ClientOpts { server_name: "localhost", ..ClientOpts::trusting(&ca) }), Ok(200));
    // Without it (only some other CA trusted): the handshake fails.
    let err = https_get(&addr, "/v2/", &ClientOpts::trusting(&other.join("ca.crt"))).unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A name the certificate does not cover.
    let err = https_get(&addr, "/v2/", &ClientOpts { server_name: "example.com", ..ClientOpts::trusting(&ca) }).unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A default client (no private CA) fails; plain HTTP to the TLS port gets no HTTP answer.
    assert!(common::client().get(format!("http://{addr}/v2/")).send().map(|r| r.status() != 200).unwrap_or(true));

    // TLS 1.2 and 1.3 each work on their own.
    let only12 = ClientOpts { versions: &[&rustls::version::TLS12], ..ClientOpts::trusting(&ca) };
    let only13 = ClientOpts { versions: &[&rustls::version::TLS13], ..ClientOpts::trusting(&ca) };
    assert_eq!(https_get(&addr, "/v2/", &only12), Ok(200));
    assert_eq!(https_get(&addr, "/v2/", &only13), Ok(200));

    if common::require("openssl") {
        for flag in ["-tls1_2", "-tls1_3"] {
            let (ok, text) = openssl_connects(&addr, &ca, flag);
            assert!(ok, "openssl {flag} should connect:\n{text}");
        }
        for flag in ["-tls1_1", "-tls1"] {
            let (ok, text) = openssl_connects(&addr, &ca, flag);
            assert!(!ok, "openssl {flag} must be refused:\n{text}");
        }
    }
}

#[test]
fn reloads_replaced_certificates_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    self_signed(&live);
    let old_ca = dir.path().join("old-ca.crt");
    std::fs::copy(live.join("ca.crt"), &old_ca).unwrap();
    let s = common::Server::start_config(dir.path(), &tls_section(&live, "reload_interval_secs = 1"));
    let addr = https_port(&s);
    assert_eq!(https_get(&addr, "/v2/", &ClientOpts::trusting(&old_ca)), Ok(200));

    // A new pair from a new CA, moved into place (key first, then cert).
    let fresh = dir.path().join("fresh");
    self_signed(&fresh);
    let new_ca = fresh.join("ca.crt");
    assert!(https_get(&addr, "/v2/", &ClientOpts::trusting(&new_ca)).is_err(), "not trusted before the swap");
    for f in ["server.key", "server.crt"] {
        let staged = live.join(format!(".{f}.new"));
        std::fs::copy(fresh.join(f), &staged).unwrap();
        std::fs::rename(&staged, live.join(f)).unwrap();
    }
    let switched = eventually(60, Duration::from_millis(500), || https_get(&addr, "/v2/", &ClientOpts::trusting(&new_ca)) == Ok(200));
    assert!(switched, "a client trusting only the new CA connects after the reload\n{}", s.stderr());
    assert!(https_get(&addr, "/v2/", &ClientOpts::trusting(&old_ca)).is_err(), "the old certificate is no longer served");

    // A broken replacement is ignored: the current certificate stays.
    std::fs::write(live.join("server.crt"), "not a certificate\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(https_get(&addr, "/v2/", &ClientOpts::trusting(&new_ca)), Ok(200));
}

#[test]
fn client_certificates_are_required_when_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    self_signed(&certs);
    let stranger = dir.path().join("stranger");
    self_signed(&stranger);
    let ca = certs.join("ca.crt");
    for mode in ["required", "optional"] {
        let extra = format!("client_ca = \"{}\"\nclient_auth = \"{mode}\"", ca.display());
        let s = common::Server::start_config(dir.path(), &tls_section(&certs, &extra));
        let addr = https_port(&s);
        // The server certificate carries clientAuth usage: usable as a client cert.
        let with_cert = ClientOpts { identity: Some((&certs.join("server.crt"), &certs.join("server.key"))), ..ClientOpts::trusting(&ca) };
        assert_eq!(https_get(&addr, "/v2/", &with_cert), Ok(200), "{mode}: a client certificate from the CA");
        for versions in [&[&rustls::version::TLS12][..], &[&rustls::version::TLS13][..]] {
            let o = ClientOpts { versions, ..ClientOpts::trusting(&ca) };
            let without = https_get(&addr, "/v2/", &o);
            let foreign = ClientOpts { versions, identity: Some((&stranger.join("server.crt"), &stranger.join("server.key"))), ..ClientOpts::trusting(&ca) };
            let from_other_ca = https_get(&addr, "/v2/", &foreign);
            if mode == "required" {
                assert!(without.is_err(), "{mode}: a client without a certificate is refused: {without:?}");
            } else {
                assert_eq!(without, Ok(200), "{mode}: no certificate is fine");
            }
            assert!(from_other_ca.is_err(), "{mode}: a certificate from another CA is refused: {from_other_ca:?}");
        }
    }
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

#[test]
fn skopeo_over_tls_with_cert_dir_and_credentials() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    self_signed(&certs);
    // skopeo's --cert-dir: *.crt files are trusted CAs.
    let cert_dir = dir.path().join("cert-dir");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(certs.join("ca.crt"), cert_dir.join("ca.crt")).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    common::write_htpasswd(&htpasswd, &[("tlsuser", "tls-Pw-9")]);
    let toml = format!(
        "[auth]\nmode = \"basic\"\nhtpasswd = \"{}\"\n[[auth.rules]]\nrepositories = [\"**\"]\nactions = [\"admin\"]\nusers = [\"tlsuser\"]\n\n{}",
        htpasswd.display(),
        tls_section(&certs, "")
    );
    let s = common::Server::start_config(dir.path(), &toml);
    let addr = https_port(&s);
    let src = dir.path().join("src");
    let made = make_oci_layout(&src, &json!({"images": [{"tag": "v1", "arch": "amd64", "layers": [200_000, 100]}]}));
    let digest = made["v1"]["digest"].as_str().unwrap();
    let image = format!("docker://{addr}/tls/skopeo-{}:v1", unique());
    let source = format!("oci:{}:v1", src.display());
    let cert_dir_s = cert_dir.display().to_string();

    // Verification on, CA unknown: refused.
    let out = output(skopeo().args(["copy", "--dest-creds", "tlsuser:tls-Pw-9", &source, &image]));
    assert!(!out.status.success(), "push without the CA must fail");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("x509"), "{err}");

    run(skopeo().args(["copy", "--dest-cert-dir", &cert_dir_s, "--dest-creds", "tlsuser:tls-Pw-9", &source, &image]));
    let got = run(skopeo().args(["inspect", "--cert-dir", &cert_dir_s, "--creds", "tlsuser:tls-Pw-9", "--format", "{{.Digest}}", &image]));
    assert_eq!(got.trim(), digest);
    let dst = dir.path().join("dst");
    run(skopeo()
        .args(["copy", "--src-cert-dir", &cert_dir_s, "--src-creds", "tlsuser:tls-Pw-9", &image])
        .arg(format!("oci:{}:v1", dst.display())));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"].as_str().unwrap(), digest);
    // The CA but no credentials: refused by auth, not TLS.
    let out = output(skopeo().args(["inspect", "--cert-dir", &cert_dir_s, "--raw", &image]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
}

/// Removes a directory under /etc/docker/certs.d on drop.
struct CertsD(PathBuf);

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn docker_engine_over_tls() {
    let docker_ok = common::have("docker") && output(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])).status.success();
    if !docker_ok {
        eprintln!("docker TLS test: skipped (no engine)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    self_signed(&certs);
    let htpasswd = dir.path().join("htpasswd");
    common::write_htpasswd(&htpasswd, &[("dockertls", "docker-Pw-7")]);
    let toml = format!(
        "[auth]\nmode = \"token\"\nhtpasswd = \"{}\"\n[[auth.rules]]\nrepositories = [\"**\"]\nactions = [\"admin\"]\nusers = [\"dockertls\"]\n\n{}",
        htpasswd.display(),
        tls_section(&certs, "")
    );
    let s = common::Server::start_config(dir.path(), &toml);
    let addr = https_port(&s);
    let certs_d = PathBuf::from("/etc/docker/certs.d").join(&addr);
    if std::fs::create_dir_all(&certs_d).is_err() {
        eprintln!("docker TLS test: skipped (cannot write /etc/docker/certs.d)");
        return;
    }
    let _cleanup = CertsD(certs_d.clone());
    std::fs::copy(certs.join("ca.crt"), certs_d.join("ca.crt")).unwrap();

    let config = tempfile::tempdir().unwrap();
    let docker = || {
        let mut c = Command::new("docker");
        c.env("DOCKER_BUILDKIT", "0").arg("--config").arg(config.path());
        c
    };
    let image = format!("{addr}/tls/docker-{}:v1", unique());
    struct Rmi<'a>(&'a dyn Fn() -> Command, String);
    impl Drop for Rmi<'_> {
        fn drop(&mut self) {
            let _ = output((self.0)().args(["rmi", "-f", &self.1]));
        }
    }
    let _rmi = Rmi(&docker, image.clone());
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("data.bin"), common::random_bytes(100_000)).unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY data.bin /data.bin\n").unwrap();
    run(docker().args(["build", "-q", "-t", &image]).arg(ctx.path()));
    let id = run(docker().args(["image", "inspect", "--format", "{{.Id}}", &image])).trim().to_string();

    let mut login = docker();
    login.args(["login", &addr, "-u", "dockertls", "--password-stdin"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "docker-Pw-7").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login over TLS: {}", String::from_utf8_lossy(&out.stderr));
    run(docker().args(["push", &image]));
    run(docker().args(["rmi", &image]));
    run(docker().args(["pull", &image]));
    assert_eq!(run(docker().args(["image", "inspect", "--format", "{{.Id}}", &image])).trim(), id);
    run(docker().args(["logout", &addr]));
    // The registry really served this over TLS.
    assert!(s.url.starts_with("https://"));
    eprintln!("docker TLS test: ran");
}

#[test]
fn self_signed_never_replaces_an_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    self_signed(&out);
    let before = std::fs::read(out.join("ca.key")).unwrap();
    let o = output(Command::new(env!("CARGO_BIN_EXE_berth")).args(["tls", "self-signed", "--host", "127.0.0.1", "--out"]).arg(&out));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before);
}
