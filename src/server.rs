//! Wiring: open storage and metadata, build the HTTP app, accept
//! connections, shut down gracefully.

use crate::config::Config;
use anyhow::Context;
use berth_api::access::{ClientAddr, Tls};
use berth_api::{ApiState, MetricsRender};
use tower::ServiceExt as _;
use berth_meta::SqliteMetadata;
use berth_registry::{Registry, RegistryConfig};
use berth_storage::FsBlobStore;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A client must finish the TLS handshake within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    // Held until the server exits: a second server, or `berth gc
    // --data-dir`, on the same directory is refused.
    let _lock = berth_storage::DataDirLock::acquire(data_dir)
        .context("another berth server (or a berth gc --data-dir) is using this data directory")?;
    let encryption = crate::encryption::setup(&config.encryption, data_dir)?;
    // Scheduled backups record it (taken before a rotation task owns the setup).
    let encryption_key_id = crate::backup::key_id(&encryption);
    if encryption.keyring.is_some() {
        tracing::info!("encryption at rest is on");
    }
    let blobs = Arc::new(FsBlobStore::open_with(data_dir, encryption.keyring.clone()).await.context("opening blob storage")?);
    let meta = Arc::new(
        SqliteMetadata::open_with(data_dir.join("metadata.db"), encryption.keyring.clone()).context("opening metadata")?,
    );
    if encryption.rotate {
        // Serve while re-encrypting; old keys keep reading until it is done.
        let (blobs, meta, dir) = (blobs.clone(), meta.clone(), data_dir.clone());
        tokio::spawn(async move {
            tracing::info!("encryption key changed: re-encrypting stored data in the background");
            let result = async {
                let b = blobs.reencrypt_all().await?;
                let m = meta.reencrypt_manifests().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                encryption.rotation_done(&dir)?;
                Ok::<_, anyhow::Error>((b, m))
            }
            .await;
            match result {
                Ok((b, m)) => tracing::info!(blobs = b, manifests = m, "re-encryption finished"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "re-encryption failed; it resumes at the next start"),
            }
        });
    }
    let registry = Arc::new(Registry::new(
        blobs.clone(),
        meta,
        RegistryConfig {
            delete_enabled: config.registry.delete_enabled,
            upload_ttl: Duration::from_secs(config.registry.upload_ttl_secs),
            max_manifest_bytes: config.registry.max_manifest_bytes,
            max_page: config.registry.max_page_size,
        },
    )
    .with_policies(config.policies()?)
    .with_signatures(config.signature_settings()?));

    let metrics: Option<MetricsRender> = if config.server.metrics {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0])?
            .install_recorder()
            .context("installing metrics recorder")?;
        Some(Arc::new(move || handle.render()))
    } else {
        None
    };

    let auth = berth_auth::Auth::new(config.auth.clone(), &data_dir.join("auth")).map_err(|e| anyhow::anyhow!("{e}"))?;
    if auth.enabled() && !config.tls.enabled() && !config.listen_addr().ip().is_loopback() {
        tracing::warn!(
            "!!! authentication is enabled but TLS is not, on a non-loopback address: passwords and tokens \
             cross the network in clear text. Configure [tls] (see `berth tls self-signed`). !!!"
        );
    }
    let tls = if config.tls.enabled() {
        let acceptor = crate::tls::Acceptor::new(&config.tls).context("TLS")?;
        acceptor.spawn_reloader(config.tls.clone());
        Some(acceptor)
    } else {
        None
    };
    let app = berth_api::app(ApiState {
        registry: registry.clone(),
        auth: Arc::new(auth),
        metrics,
        body_idle_timeout: Duration::from_secs(config.server.body_idle_timeout_secs),
        loopback_only: config.listen_addr().ip().is_loopback(),
    });

    spawn_upload_expiry(registry.clone());
    crate::backup::spawn_scheduled(&config, blobs.clone(), encryption_key_id).context("scheduled backups")?;
    spawn_gc(registry.clone(), Duration::from_secs(config.gc.interval_secs), config.gc.dry_run);

    let listener = TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, data_dir = %data_dir.display(), "berth listening");
    // Tests and scripts read the bound address (port 0 picks one) from stdout.
    println!("berth listening on {}://{local}", if tls.is_some() { "https" } else { "http" });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.server.header_read_timeout_secs));
    // HTTP/2 has no header timeout: pings find dead peers, so idle
    // connections that stop answering are closed.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(config.server.header_read_timeout_secs.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let is_tls = tls.is_some();
                let service = TowerToHyperService::new(app.clone().map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req.extensions_mut().insert(Tls(is_tls));
                    req
                }));
                match &tls {
                    None => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.get();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::warn!(client = %peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::warn!(client = %peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            if let Err(e) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    let limit = Duration::from_secs(config.server.shutdown_timeout_secs);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(limit) => tracing::warn!("shutdown timeout reached; closing remaining connections"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Removes stale upload sessions now and then.
fn spawn_upload_expiry(registry: Arc<Registry>) {
    let every = (registry.config().upload_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    tokio::spawn(async move {
        loop {
            match registry.expire_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired upload sessions"),
                Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Collects garbage on a schedule (the first run one interval after start).
fn spawn_gc(registry: Arc<Registry>, every: Duration, dry_run: bool) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match registry.collect_garbage(dry_run).await {
                Ok(report) => {
                    if dry_run {
                        tracing::info!(target: "berth::gc", report = %report.to_json(), "dry run");
                    }
                }
                Err(e) => tracing::warn!(target: "berth::gc", error = %e, "garbage collection failed"),
            }
        }
    });
}
