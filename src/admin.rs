//! `berth gc` and `berth usage`: through a running server's admin endpoints,
//! or directly on a data directory no server is using.

use crate::config::Config;
use crate::{remote, Target};
use anyhow::{anyhow, bail, Context};
use berth_meta::SqliteMetadata;
use berth_registry::{GcReport, Registry, RegistryConfig};
use berth_storage::FsBlobStore;
use std::sync::Arc;
use std::time::Duration;

pub fn gc(target: Target, dry_run: bool) -> anyhow::Result<()> {
    let json = match &target.url {
        Some(url) => {
            let path = if dry_run { "/admin/gc?dry_run=true" } else { "/admin/gc" };
            request(&target, url, "POST", path)?
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
        Some(url) => request(&target, url, "GET", "/admin/usage")?,
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
    let _lock = berth_storage::DataDirLock::acquire(&dir)
        .context("a berth server is using this data directory: go through it with --url instead")?;
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

/// One request to a running server's admin endpoint (HTTP or HTTPS);
/// returns the body of a 2xx answer.
fn request(target: &Target, url: &str, method: &str, path: &str) -> anyhow::Result<String> {
    let password = match &target.user {
        Some(_) => Some(std::env::var("BERTH_PASSWORD").map_err(|_| anyhow!("--user needs the password in BERTH_PASSWORD"))?),
        None => None,
    };
    let user = target.user.as_deref().zip(password.as_deref());
    // A collection of a large registry takes a while and reports every digest.
    let mut client =
        remote::Client::for_url(url, target.ca_cert.as_deref(), user).context("--url")?.with_limits(Duration::from_secs(3600), 256 << 20);
    let resp = client.send(method, path, &[], b"").with_context(|| format!("{method} {url}{path}"))?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    if !(200..300).contains(&resp.status) {
        bail!("{method} {path}: HTTP {}: {}", resp.status, body.trim());
    }
    Ok(body)
}
