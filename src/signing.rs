//! `berth keys generate`, `berth sign` and `berth verify`: cosign-compatible
//! signatures made and checked from the command line, against any registry
//! speaking the distribution API.

use crate::remote::{Client, ImageRef, Response, MANIFEST_ACCEPT};
use anyhow::{anyhow, bail, Context};
use berth_sign::{cosign, Format, Outcome, PublicKey, SigningKey, Subject, Trust};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

/// How to reach the registry.
#[derive(clap::Args)]
pub struct Remote {
    /// User for the registry; the password comes from BERTH_PASSWORD, or
    /// from standard input with --password-stdin.
    #[arg(long)]
    username: Option<String>,
    /// Read the registry password from standard input (after the key's
    /// password, when that is read from standard input too).
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Plain HTTP even for a non-loopback host.
    #[arg(long)]
    insecure: bool,
    /// Extra CA certificate (PEM) to trust for HTTPS (also makes a loopback
    /// host use HTTPS).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

/// One line of standard input, without the line end.
fn stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// A password from a prompt (twice when `confirm`), or the next line of
/// standard input when it is not a terminal.
fn password(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    let pw = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt)?;
        if confirm && rpassword::prompt_password("Again: ")? != first {
            bail!("passwords differ");
        }
        first
    } else {
        stdin_line()?
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

fn client(image: &ImageRef, remote: &Remote) -> anyhow::Result<Client> {
    let secret;
    let user = match &remote.username {
        Some(u) => {
            secret = match std::env::var("BERTH_PASSWORD") {
                Ok(p) if !remote.password_stdin => p,
                _ if remote.password_stdin => stdin_line()?,
                _ => rpassword::prompt_password(format!("Password for {u}: "))?,
            };
            Some((u.as_str(), secret.as_str()))
        }
        None => None,
    };
    Client::new(&image.host, remote.insecure, remote.ca_cert.as_deref(), user)
}

/// `berth keys generate --out PREFIX`: PREFIX.key (encrypted) and PREFIX.pub.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let key_path = PathBuf::from(format!("{}.key", out.display()));
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            bail!("{} exists; not overwriting it", p.display());
        }
    }
    let pw = password("Password for the private key: ", true)?;
    let key = SigningKey::generate()?;
    let encrypted = key.to_encrypted_pem(pw.as_bytes())?;
    write_private(&key_path, encrypted.as_bytes())?;
    std::fs::write(&pub_path, key.public_pem()?).with_context(|| format!("writing {}", pub_path.display()))?;
    let id = key.public_key()?.id;
    println!("wrote {} (ECDSA P-256, encrypted; cosign can use it) and {}", key_path.display(), pub_path.display());
    println!("key id {id}");
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn expect(resp: &Response, ok: &[u16], what: &str) -> anyhow::Result<()> {
    if ok.contains(&resp.status) {
        Ok(())
    } else {
        bail!("{what}: HTTP {}: {}", resp.status, resp.text())
    }
}

/// The digest (and bytes, when the registry serves them) of `image`.
fn resolve(c: &mut Client, image: &ImageRef) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    let path = format!("/v2/{}/manifests/{}", image.repository, image.reference);
    let resp = c.send("GET", &path, &[("Accept", MANIFEST_ACCEPT)], b"")?;
    if resp.status == 200 {
        let digest = cosign::sha256_digest(&resp.body);
        if image.is_digest() && digest != image.reference {
            bail!("the registry served bytes with digest {digest} for {}", image.reference);
        }
        return Ok((digest, Some(resp.body)));
    }
    if image.is_digest() {
        return Ok((image.reference.clone(), None));
    }
    if resp.status == 403 {
        // An enforced repository refuses unsigned content; Berth's
        // repository API still tells the digest a tag points at.
        let api = c.send("GET", &format!("/api/v1/repositories/{}/manifests/{}", image.repository, image.reference), &[], b"")?;
        if api.status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&api.body)?;
            if let Some(d) = v["digest"].as_str() {
                return Ok((d.to_string(), None));
            }
        }
    }
    bail!("resolving {}:{}: HTTP {}: {}", image.repository, image.reference, resp.status, resp.text())
}

fn push_blob(c: &mut Client, repo: &str, data: &[u8]) -> anyhow::Result<String> {
    let digest = cosign::sha256_digest(data);
    let head = c.send("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], b"")?;
    if head.status == 200 {
        return Ok(digest);
    }
    let resp = c.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )?;
    if resp.status == 202 {
        // The registry wants a session: finish it with one PUT.
        let location = resp.header("location").ok_or_else(|| anyhow!("upload without Location"))?.to_string();
        let path = location.split_once("://").map(|(_, r)| r.split_once('/').map(|(_, p)| format!("/{p}")).unwrap_or_default()).unwrap_or(location);
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = c.send("PUT", &format!("{path}{sep}digest={digest}"), &[("Content-Type", "application/octet-stream")], data)?;
        expect(&put, &[201], "uploading a blob")?;
        return Ok(digest);
    }
    expect(&resp, &[201], "uploading a blob")?;
    Ok(digest)
}

/// `berth sign IMAGE --key KEY`.
pub fn sign(image: &str, key_file: &Path, remote: &Remote) -> anyhow::Result<()> {
    let image = ImageRef::parse(image)?;
    let text = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let needs_password = !String::from_utf8_lossy(&text).contains("-----BEGIN PRIVATE KEY-----");
    let key_password = if needs_password { Some(password("Password for the private key: ", false)?) } else { None };
    let key = SigningKey::from_pem(&text, key_password.as_deref().map(str::as_bytes))
        .map_err(|e| anyhow!("{}: {e}", key_file.display()))?;
    let mut c = client(&image, remote)?;
    let (digest, _) = resolve(&mut c, &image)?;
    let identity = format!("{}/{}", image.host, image.repository);
    let signed = cosign::sign(&key, &identity, &digest)?;
    let tag = cosign::signature_tag(&digest).ok_or_else(|| anyhow!("unexpected digest {digest}"))?;
    let repo = &image.repository;

    // cosign appends to the signatures already stored under the tag.
    let mut layers: Vec<serde_json::Value> = Vec::new();
    let existing = c.send("GET", &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", "application/vnd.oci.image.manifest.v1+json")], b"")?;
    if existing.status == 200 {
        if let Ok(m) = serde_json::from_slice::<serde_json::Value>(&existing.body) {
            layers.extend(m["layers"].as_array().into_iter().flatten().filter(|l| l["mediaType"] == berth_sign::COSIGN_SIMPLESIGNING).cloned());
        }
    }
    let layer = cosign::layer_descriptor(&signed);
    layers.retain(|l| l["digest"] != layer["digest"] || l["annotations"] != layer["annotations"]);
    layers.push(layer);
    push_blob(&mut c, repo, &signed.payload)?;
    let (config, manifest) = cosign::manifest(&layers);
    push_blob(&mut c, repo, &config)?;
    let resp = c.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )?;
    expect(&resp, &[201], "storing the signature manifest")?;
    println!("signed {}/{repo}@{digest}", image.host);
    println!("signature: {}/{repo}:{tag} (key {})", image.host, key.public_key()?.id);
    Ok(())
}

/// `berth verify IMAGE --key PUB`: true when a signature verifies.
pub fn verify(image: &str, key_file: &Path, remote: &Remote) -> anyhow::Result<bool> {
    let image = ImageRef::parse(image)?;
    let text = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let name = key_file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let key = PublicKey::from_pem(&name, &text).map_err(|e| anyhow!("{}: {e}", key_file.display()))?;
    let trust = Trust { keys: vec![key], stores: vec![] };
    let mut c = client(&image, remote)?;
    let (digest, body) = resolve(&mut c, &image)?;
    let body = body.unwrap_or_default();
    let subject = Subject { digest: &digest, size: body.len() as u64, body: &body };
    let repo = &image.repository;
    println!("{}/{repo}@{digest}", image.host);

    let mut artifacts: Vec<(String, Vec<u8>)> = Vec::new();
    let tag = cosign::signature_tag(&digest).unwrap_or_default();
    let m = c.send("GET", &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", "application/vnd.oci.image.manifest.v1+json")], b"")?;
    if m.status == 200 {
        artifacts.push((format!("{repo}:{tag}"), m.body));
    }
    let refs = c.send("GET", &format!("/v2/{repo}/referrers/{digest}"), &[], b"")?;
    if refs.status == 200 {
        let index: serde_json::Value = serde_json::from_slice(&refs.body).unwrap_or_default();
        for r in index["manifests"].as_array().into_iter().flatten().take(16) {
            let (Some(d), Some(t)) = (r["digest"].as_str(), r["artifactType"].as_str()) else { continue };
            if !t.starts_with("application/vnd.dev.sigstore.bundle") {
                continue;
            }
            let m = c.send("GET", &format!("/v2/{repo}/manifests/{d}"), &[("Accept", "application/vnd.oci.image.manifest.v1+json")], b"")?;
            if m.status == 200 {
                artifacts.push((format!("{repo}@{d}"), m.body));
            }
        }
    }
    let mut valid = false;
    let mut checked = 0;
    for (name, body) in &artifacts {
        let Some(parsed) = berth_sign::parse_manifest(body) else {
            println!("  ✗ {name}: not a signature manifest");
            continue;
        };
        if parsed.format == Format::Notation {
            continue;
        }
        for layer in &parsed.layers {
            checked += 1;
            let blob = c.send("GET", &format!("/v2/{repo}/blobs/{}", layer.digest), &[], b"")?;
            let outcome = if blob.status != 200 {
                Outcome::Invalid { detail: format!("layer {} not readable (HTTP {})", layer.digest, blob.status) }
            } else if cosign::sha256_digest(&blob.body) != layer.digest {
                Outcome::Invalid { detail: format!("layer {} does not match its digest", layer.digest) }
            } else {
                berth_sign::verify_layer(parsed.format, layer, &blob.body, subject, &trust, now())
            };
            match &outcome {
                Outcome::Valid { signer } => {
                    valid = true;
                    println!("  ✓ {} signature in {name}: verified with key {signer}", parsed.format.as_str());
                }
                Outcome::Untrusted { detail } | Outcome::Invalid { detail } => {
                    println!("  ✗ {} signature in {name}: {detail}", parsed.format.as_str())
                }
                Outcome::WrongSubject { named } => {
                    println!("  ✗ {} signature in {name}: the payload names {named}, not this image", parsed.format.as_str())
                }
            }
        }
    }
    if checked == 0 {
        println!("  ✗ no cosign signature or sigstore bundle found");
    }
    println!("{}", if valid { "verified" } else { "NOT verified" });
    Ok(valid)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
