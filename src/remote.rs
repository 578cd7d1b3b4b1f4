//! A small blocking client for the distribution API, used by `berth sign`,
//! `berth verify`, `berth gc`/`usage --url` and `berth backup restore --url`:
//! one HTTP/1.1 request per connection, plain TCP or TLS (rustls, system
//! roots plus an optional CA file), Basic credentials and the Docker token
//! protocol.

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Largest response body read.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Manifest types asked for when resolving a reference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// An image reference: `host[:port]/repository(:tag|@digest)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    pub host: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> anyhow::Result<ImageRef> {
        let (host, rest) = s
            .split_once('/')
            .filter(|(h, _)| h.contains('.') || h.contains(':') || *h == "localhost")
            .ok_or_else(|| anyhow!("{s:?}: expected HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/REPOSITORY@sha256:…"))?;
        let (repository, reference) = if let Some((r, d)) = rest.split_once('@') {
            (r, d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (rest, "latest".to_string()),
            }
        };
        if repository.is_empty() || reference.is_empty() {
            bail!("{s:?}: missing repository or reference");
        }
        Ok(ImageRef { host: host.to_string(), repository: repository.to_string(), reference })
    }

    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(2000).collect()
    }
}

pub struct Client {
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    basic: Option<String>,
    bearer: Option<String>,
    timeout: Duration,
    max_body: usize,
}

impl Client {
    /// Plain HTTP when `insecure`, or for a loopback address unless a
    /// `ca_file` is given; TLS otherwise (system roots, plus `ca_file`).
    pub fn new(host: &str, insecure: bool, ca_file: Option<&std::path::Path>, user: Option<(&str, &str)>) -> anyhow::Result<Client> {
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
        let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        // A CA file asks for TLS even on loopback (a local server with a private CA).
        let tls = if insecure || (loopback && ca_file.is_none()) { None } else { Some(tls_config(ca_file)?) };
        Ok(Client::build(host, tls, user))
    }

    /// A client for a base URL, `http://HOST[:PORT]` or `https://HOST[:PORT]`
    /// (TLS: system roots plus `ca_file`); anything else is refused.
    pub fn for_url(url: &str, ca_file: Option<&std::path::Path>, user: Option<(&str, &str)>) -> anyhow::Result<Client> {
        let bad = || anyhow!("{url:?}: expected http://HOST[:PORT] or https://HOST[:PORT]");
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let host = rest.strip_suffix('/').unwrap_or(rest);
        let port_ok = match host.rsplit_once(':') {
            Some((h, port)) if !port.contains(']') => !h.is_empty() && port.parse::<u16>().is_ok(),
            _ => true,
        };
        if host.is_empty() || !port_ok || host.contains(['/', '?', '#', '@']) || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "https" => Some(tls_config(ca_file)?),
            "http" if ca_file.is_some() => bail!("{url:?}: --ca-cert is for https:// URLs"),
            "http" => None,
            _ => return Err(bad()),
        };
        Ok(Client::build(host, tls, user))
    }

    fn build(host: &str, tls: Option<Arc<rustls::ClientConfig>>, user: Option<(&str, &str)>) -> Client {
        let basic = user.map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        Client { host: host.to_string(), tls, basic, bearer: None, timeout: Duration::from_secs(120), max_body: MAX_BODY }
    }

    /// How long to wait for an answer, and the largest body read.
    pub fn with_limits(mut self, timeout: Duration, max_body: usize) -> Client {
        self.timeout = timeout;
        self.max_body = max_body;
        self
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            self.host.clone()
        } else if self.tls.is_some() {
            format!("{}:443", self.host)
        } else {
            format!("{}:80", self.host)
        }
    }

    /// Sends a request; on a token challenge, fetches a token and retries once.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<Response> {
        let resp = self.once(method, path, headers, body)?;
        if resp.status == 401 {
            if let Some(challenge) = resp.header("www-authenticate").map(str::to_string) {
                if challenge.trim_start().to_ascii_lowercase().starts_with("bearer") {
                    self.bearer = Some(self.token(&challenge)?);
                    return self.once(method, path, headers, body);
                }
            }
        }
        Ok(resp)
    }

    fn once(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\nUser-Agent: berth\r\n", self.host, body.len());
        match (&self.bearer, &self.basic) {
            (Some(t), _) => req.push_str(&format!("Authorization: Bearer {t}\r\n")),
            (None, Some(b)) => req.push_str(&format!("Authorization: Basic {b}\r\n")),
            _ => {}
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let authority = self.authority();
        let tcp = TcpStream::connect(&authority).with_context(|| format!("connecting to {authority}"))?;
        tcp.set_read_timeout(Some(self.timeout))?;
        let raw = match &self.tls {
            None => exchange(tcp, &bytes, self.max_body)?,
            Some(config) => {
                let name = self.host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.host).trim_matches(['[', ']']).to_string();
                let server = rustls::pki_types::ServerName::try_from(name).context("server name")?;
                let conn = rustls::ClientConnection::new(config.clone(), server)?;
                exchange(rustls::StreamOwned::new(conn, tcp), &bytes, self.max_body)?
            }
        };
        parse_response(&raw)
    }

    /// The Docker token protocol: GET the realm with Basic credentials.
    fn token(&self, challenge: &str) -> anyhow::Result<String> {
        let params = challenge_params(challenge);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| anyhow!("token challenge without realm"))?;
        let (scheme_https, rest) = match realm.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            _ => bail!("unsupported token realm {realm:?}"),
        };
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let mut query = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = get(k) {
                query.push((k, v));
            }
        }
        let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={}", encode(&v))).collect();
        let query = query.join("&");
        let sep = if path.contains('?') { '&' } else { '?' };
        let tls = if scheme_https { Some(self.tls.clone().map(Ok).unwrap_or_else(|| tls_config(None))?) } else { None };
        let client = Client { host: host.to_string(), tls, basic: self.basic.clone(), bearer: None, timeout: self.timeout, max_body: MAX_BODY };
        let resp = client.once("GET", &format!("{path}{sep}{query}"), &[], b"")?;
        if resp.status != 200 {
            bail!("token endpoint answered {}: {}", resp.status, resp.text());
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body).context("token response")?;
        v["token"].as_str().or(v["access_token"].as_str()).map(str::to_string).ok_or_else(|| anyhow!("token response without a token"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn exchange<S: Read + Write>(mut s: S, request: &[u8], max_body: usize) -> anyhow::Result<Vec<u8>> {
    s.write_all(request)?;
    s.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > max_body + 65536 {
                    bail!("response too large");
                }
            }
            // A TLS peer that closes without close_notify: what was read is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = s.windows(2).position(|w| w == b"\r\n") {
        let Ok(n) = usize::from_str_radix(String::from_utf8_lossy(&s[..pos]).trim(), 16) else { break };
        let rest = &s[pos + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `key="value"` pairs of a `WWW-Authenticate` challenge.
fn challenge_params(challenge: &str) -> Vec<(String, String)> {
    let rest = challenge.trim_start().split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().skip_while(|c| *c == ',' || c.is_whitespace()).take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        out.push((key.trim().to_string(), value));
    }
    out
}

fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let mut files: Vec<std::path::PathBuf> =
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
            .iter()
            .map(std::path::PathBuf::from)
            .filter(|p| p.exists())
            .collect();
    if let Some(f) = ca_file {
        files.push(f.to_path_buf());
    }
    for f in files {
        let certs = CertificateDer::pem_file_iter(&f).with_context(|| format!("reading {}", f.display()))?;
        for c in certs.flatten() {
            let _ = roots.add(c);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.reference.as_str()), ("127.0.0.1:5000", "team/app", "v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("reg.example.com/app@{d}")).unwrap();
        assert!(r.is_digest());
        assert_eq!(ImageRef::parse("localhost:5000/app").unwrap().reference, "latest");
        assert!(ImageRef::parse("app:v1").is_err());
    }

    #[test]
    fn base_urls() {
        for good in ["http://127.0.0.1:5000", "https://reg.example.com/", "https://[::1]:5000", "http://localhost"] {
            assert!(Client::for_url(good, None, None).is_ok(), "{good}");
        }
        assert!(Client::for_url("https://h:5000", None, None).unwrap().tls.is_some());
        assert!(Client::for_url("http://h:5000", None, None).unwrap().tls.is_none());
        for bad in ["127.0.0.1:5000", "ftp://h", "http://", "http://h:port", "http://h:5000/v2/", "http://u@h"] {
            assert!(Client::for_url(bad, None, None).is_err(), "{bad}");
        }
        let err = Client::for_url("http://h:5000", Some(std::path::Path::new("/ca.crt")), None).err().unwrap();
        assert!(err.to_string().contains("--ca-cert"), "{err}");
    }

    #[test]
    fn challenges() {
        let p = challenge_params(r#"Bearer realm="http://127.0.0.1:5000/token",service="berth",scope="repository:a/b:pull,push""#);
        assert_eq!(p[0], ("realm".into(), "http://127.0.0.1:5000/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
    }
}
