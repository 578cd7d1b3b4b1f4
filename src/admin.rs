//! `berth gc` and `berth usage`: through a running server's admin endpoints,
//! or directly on a data directory no server is using.

use crate::config::Config;
use crate::Target;
use anyhow::{anyhow, bail, Context};
use berth_meta::SqliteMetadata;
use berth_registry::{GcReport, Registry, RegistryConfig};
use berth_storage::FsBlobStore;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

pub fn gc(target: Target, dry_run: bool) -> anyhow::Result<()> {
    let json = match &target.url {
        Some(url) => {
            let path = if dry_run { "/admin/gc?dry_run=true" } else { "/admin/gc" };
            request(url, "POST", path, target.user.as_deref())?
        }
        None => local(&target, |registry| async move { Ok(registry.collect_garbage(dry_run).await?.to_json()) })?,
    };
    println!("{json}");
    if let Some(report) = GcReport::from_json(&json) {
        eprintln!("{}", report.summary());
    }
    Ok(())
}

pub fn usage(target: Target) -> anyhow::Result<()> {
    let json = match &target.url {
        Some(url) => request(url, "GET", "/admin/usage", target.user.as_deref())?,
        None => local(&target, |registry| async move { Ok(registry.usage().await?.to_json()) })?,
    };
    println!("{json}");
    Ok(())
}

/// Opens the data directory (with the configuration's policies and
/// encryption) and runs `f` on a registry over it.
fn local<F, Fut>(target: &Target, f: F) -> anyhow::Result<String>
where
    F: FnOnce(Arc<Registry>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let mut config = Config::load(target.config.as_deref())?;
    if let Some(dir) = &target.data_dir {
        config.storage.data_dir = dir.clone();
    }
    config.validate()?;
    let dir = config.storage.data_dir.clone();
    if !dir.join("metadata.db").exists() {
        bail!("{}: no metadata.db; not a berth data directory", dir.display());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let encryption = crate::encryption::setup(&config.encryption, &dir)?;
        let blobs = Arc::new(FsBlobStore::open_with(&dir, encryption.keyring.clone()).await.context("opening blob storage")?);
        let meta = Arc::new(SqliteMetadata::open_with(dir.join("metadata.db"), encryption.keyring).context("opening metadata")?);
        let registry = Registry::new(
            blobs,
            meta,
            RegistryConfig {
                delete_enabled: config.registry.delete_enabled,
                upload_ttl: Duration::from_secs(config.registry.upload_ttl_secs),
                max_manifest_bytes: config.registry.max_manifest_bytes,
                max_page: config.registry.max_page_size,
            },
        )
        .with_policies(config.policies()?);
        f(Arc::new(registry)).await
    })
}

/// One plain-HTTP request to a running server; returns the body of a 2xx answer.
fn request(url: &str, method: &str, path: &str, user: Option<&str>) -> anyhow::Result<String> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must be http://HOST:PORT (for a TLS-only server, run on a stopped data directory)"))?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
    let auth = match user {
        Some(u) => {
            use base64::Engine;
            let pw = std::env::var("BERTH_PASSWORD").map_err(|_| anyhow!("--user needs the password in BERTH_PASSWORD"))?;
            let cred = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"));
            format!("Authorization: Basic {cred}\r\n")
        }
        None => String::new(),
    };
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n{auth}\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("malformed answer from {host}"))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    if !(200..300).contains(&status) {
        bail!("{method} {path}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
