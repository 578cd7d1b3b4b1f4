//! `berth backup …` commands and the `[backup]` configuration section.

use crate::config::Config;
use crate::remote;
use anyhow::{anyhow, bail, Context};
use berth_backup::ops::{self, Source};
use berth_backup::policy::Policy;
use berth_backup::{Access, Repository, Secret};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Scheduled backups run by `berth serve`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    pub schedule: String,
    pub repo: String,
    pub password_file: String,
    pub key_file: String,
    pub keep_last: u64,
    pub keep_hourly: u64,
    pub keep_daily: u64,
    pub keep_weekly: u64,
    pub keep_monthly: u64,
    pub prune: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            schedule: String::new(),
            repo: String::new(),
            password_file: String::new(),
            key_file: String::new(),
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            prune: true,
        }
    }
}

impl BackupConfig {
    fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last as usize,
            keep_hourly: self.keep_hourly as usize,
            keep_daily: self.keep_daily as usize,
            keep_weekly: self.keep_weekly as usize,
            keep_monthly: self.keep_monthly as usize,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.schedule.is_empty() {
            return Ok(());
        }
        berth_backup::schedule::parse(&self.schedule).map_err(|e| anyhow!("backup.schedule: {e}"))?;
        if self.repo.is_empty() {
            bail!("backup.repo: required when backup.schedule is set");
        }
        if self.password_file.is_empty() == self.key_file.is_empty() {
            bail!("backup: set exactly one of backup.password_file and backup.key_file");
        }
        Ok(())
    }

    fn secret(&self) -> anyhow::Result<Secret> {
        if !self.key_file.is_empty() {
            return Ok(Secret::KeyFile(std::fs::read(&self.key_file).with_context(|| format!("backup.key_file {}", self.key_file))?));
        }
        let text = std::fs::read_to_string(&self.password_file).with_context(|| format!("backup.password_file {}", self.password_file))?;
        Ok(Secret::Password(text.trim_end_matches(['\r', '\n']).to_string()))
    }
}

/// Starts scheduled backups when configured.
pub fn spawn_scheduled(config: &Config, blobs: Arc<berth_storage::FsBlobStore>, encryption_key_id: Option<String>) -> anyhow::Result<()> {
    let b = &config.backup;
    if b.schedule.is_empty() {
        return Ok(());
    }
    // Unlock once now so a wrong password fails at start-up, not at 3 a.m.
    let secret = b.secret()?;
    Repository::open(Path::new(&b.repo), &secret, Access::Shared).context("backup.repo")?;
    berth_backup::schedule::spawn(
        berth_backup::schedule::Settings {
            schedule: b.schedule.clone(),
            repo: PathBuf::from(&b.repo),
            secret,
            policy: b.policy(),
            prune: b.prune,
        },
        Source { data_dir: config.storage.data_dir.clone(), blobs, encryption_key_id },
    )?;
    tracing::info!(schedule = %b.schedule, repo = %b.repo, "scheduled backups on");
    Ok(())
}

#[derive(Args)]
pub struct RepoArgs {
    /// Backup repository (a local directory).
    #[arg(long)]
    repo: PathBuf,
    /// Unlock with this key file instead of a password (BERTH_BACKUP_PASSWORD or a prompt).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Create a backup repository and its key material.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Take a snapshot of a data directory (the server may keep running).
    Create {
        #[command(flatten)]
        repo: RepoArgs,
        /// Data directory to back up (default: storage.data_dir of --config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Server configuration (data directory and encryption at rest).
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List snapshots.
    List {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Check that every snapshot is complete; with --read-all-data, that
    /// every object decrypts and matches its digest.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        read_all_data: bool,
    },
    /// Restore a snapshot (an id, a unique id prefix, or `latest`).
    Restore {
        snapshot: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// Restore the whole registry into this new or empty data directory.
        #[arg(long, conflicts_with_all = ["url", "repository"])]
        to: Option<PathBuf>,
        /// Push selected repositories into the running registry at this
        /// http(s)://HOST:PORT.
        #[arg(long, requires = "repository")]
        url: Option<String>,
        /// CA certificate (PEM) trusted for an https:// --url, besides the system roots.
        #[arg(long, requires = "url")]
        ca_cert: Option<PathBuf>,
        /// Repositories to push (glob: `*` within a component, `**` across).
        #[arg(long)]
        repository: Option<String>,
        /// Configuration whose [encryption] key opens (and, with --to, seals) the data.
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Remove snapshots the policy does not keep; --prune deletes unneeded data.
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        #[arg(long, default_value_t = 0)]
        keep_hourly: usize,
        #[arg(long, default_value_t = 0)]
        keep_daily: usize,
        #[arg(long, default_value_t = 0)]
        keep_weekly: usize,
        #[arg(long, default_value_t = 0)]
        keep_monthly: usize,
        #[arg(long)]
        prune: bool,
    },
}

fn secret(args: &RepoArgs, confirm: bool) -> anyhow::Result<Secret> {
    if let Some(file) = &args.key_file {
        return Ok(Secret::KeyFile(std::fs::read(file).with_context(|| format!("reading key file {}", file.display()))?));
    }
    if let Ok(pw) = std::env::var("BERTH_BACKUP_PASSWORD") {
        if pw.is_empty() {
            bail!("BERTH_BACKUP_PASSWORD is empty");
        }
        return Ok(Secret::Password(pw));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("no password: set BERTH_BACKUP_PASSWORD, use --key-file, or run in a terminal");
    }
    let pw = rpassword::prompt_password("Backup repository password: ")?;
    if confirm && rpassword::prompt_password("Again: ")? != pw {
        bail!("passwords differ");
    }
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(Secret::Password(pw))
}

fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(file)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn time_fmt(t: i64) -> String {
    let Ok(d) = time::OffsetDateTime::from_unix_timestamp(t) else { return String::new() };
    format!("{}-{:02}-{:02} {:02}:{:02}:{:02}", d.year(), d.month() as u8, d.day(), d.hour(), d.minute(), d.second())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

pub fn run(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Init { repo } => {
            if let Some(file) = &repo.key_file {
                if !file.exists() {
                    use base64::Engine as _;
                    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
                    write_private(file, format!("{key}\n").as_bytes())?;
                    println!("wrote a new random key to {} (keep a copy somewhere safe)", file.display());
                }
            }
            let secret = secret(&repo, true)?;
            Repository::init(&repo.repo, &secret)?;
            println!("created backup repository {}", repo.repo.display());
            Ok(())
        }
        BackupCommand::Create { repo: args, data_dir, config } => {
            let config = load_config(config.as_deref())?;
            let data_dir = data_dir.unwrap_or_else(|| config.storage.data_dir.clone());
            if !data_dir.join("metadata.db").is_file() {
                bail!("{} is not a berth data directory (no metadata.db)", data_dir.display());
            }
            let secret = secret(&args, false)?;
            let repo = Repository::open(&args.repo, &secret, Access::Exclusive)?;
            let setup = crate::encryption::setup(&config.encryption, &data_dir)?;
            let time = std::env::var("BERTH_BACKUP_TIME").ok().and_then(|v| v.parse().ok());
            let rt = runtime()?;
            let started = std::time::Instant::now();
            let encryption_key_id = key_id(&setup);
            let blobs = Arc::new(rt.block_on(berth_storage::FsBlobStore::open_with(&data_dir, setup.keyring))?);
            let handle = rt.handle().clone();
            let source = Source { data_dir: data_dir.clone(), blobs, encryption_key_id };
            let report = rt.block_on(async {
                tokio::task::spawn_blocking(move || ops::create(&repo, &source, &handle, time)).await
            })??;
            let s = &report.snapshot;
            println!(
                "snapshot {} saved: {} repositories, {} manifests, {} tags, {} blobs ({}); added {} objects ({}), reused {} blobs, {:.2}s",
                s.id,
                s.repositories,
                s.manifests,
                s.tags,
                s.blobs.len(),
                mib(s.total_bytes),
                s.objects_added,
                mib(s.bytes_added),
                report.blobs_reused,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BackupCommand::List { repo: args } => {
            let repo = Repository::open(&args.repo, &secret(&args, false)?, Access::Shared)?;
            println!("{:<16}  {:<19}  {:>6}  {:>9}  {:>6}  {:>12}  {:>12}", "ID", "TIME (UTC)", "REPOS", "MANIFESTS", "BLOBS", "SIZE", "ADDED");
            let (snaps, damaged) = repo.scan_snapshots()?;
            for s in snaps {
                println!(
                    "{:<16}  {:<19}  {:>6}  {:>9}  {:>6}  {:>12}  {:>12}",
                    s.id,
                    time_fmt(s.time),
                    s.repositories,
                    s.manifests,
                    s.blobs.len(),
                    mib(s.total_bytes),
                    mib(s.bytes_added)
                );
            }
            for e in &damaged {
                eprintln!("error: {e:#}");
            }
            if !damaged.is_empty() {
                bail!("{} damaged snapshot records (not listed); the snapshots listed are intact", damaged.len());
            }
            Ok(())
        }
        BackupCommand::Verify { repo: args, read_all_data } => {
            let repo = Repository::open(&args.repo, &secret(&args, false)?, Access::Shared)?;
            let r = ops::verify(&repo, read_all_data)?;
            for e in &r.errors {
                eprintln!("error: {e}");
            }
            println!(
                "{} snapshots, {} objects checked{}, {} unreferenced objects (removed by forget --prune)",
                r.snapshots,
                r.objects,
                if read_all_data { format!(", {} read and verified", mib(r.bytes_read)) } else { String::new() },
                r.unreferenced
            );
            if !r.errors.is_empty() {
                bail!("verification failed: {} problems", r.errors.len());
            }
            println!("no problems found");
            Ok(())
        }
        BackupCommand::Restore { snapshot, repo: args, to, url, repository, ca_cert, config } => {
            let config = load_config(config.as_deref())?;
            // The target first, so a mistake there is reported before any work.
            let push = match (&to, url, repository) {
                (Some(_), _, _) => None,
                (None, Some(url), Some(pattern)) => {
                    let creds = match (std::env::var("BERTH_RESTORE_USERNAME"), std::env::var("BERTH_RESTORE_PASSWORD")) {
                        (Ok(u), Ok(p)) => Some((u, p)),
                        _ => None,
                    };
                    let user = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                    let client = remote::Client::for_url(&url, ca_cert.as_deref(), user)
                        .context("--url")?
                        .with_limits(std::time::Duration::from_secs(600), remote::MAX_BODY);
                    Some((url, pattern, client))
                }
                _ => bail!("give --to DATA_DIR (whole registry) or --url URL --repository PATTERN"),
            };
            let repo = Repository::open(&args.repo, &secret(&args, false)?, Access::Shared)?;
            let snap = repo.find_snapshot(&snapshot)?;
            // Load the configured key (if any) without touching the target.
            let keyring = {
                let scratch = tempfile_dir()?;
                let setup = crate::encryption::setup(&config.encryption, &scratch);
                let _ = std::fs::remove_dir_all(&scratch);
                setup?.keyring
            };
            let started = std::time::Instant::now();
            let Some((url, pattern, mut client)) = push else {
                let target = to.expect("--to, when not --url");
                let rt = runtime()?;
                let handle = rt.handle().clone();
                let t = target.clone();
                let report = rt.block_on(async {
                    tokio::task::spawn_blocking(move || ops::restore_to_dir(&repo, &snap, &t, keyring, &handle)).await
                })??;
                println!(
                    "restored {} blobs ({}) and {} manifests into {} in {:.2}s; every blob re-verified against its digest",
                    report.blobs,
                    mib(report.bytes),
                    report.manifests,
                    target.display(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            };
            let report = ops::restore_http(&repo, &snap, &mut client, &pattern, keyring.as_ref())
                .with_context(|| format!("restoring into {url}"))?;
            println!(
                "pushed {} blobs ({}) and {} manifests to {url} in {:.2}s",
                report.blobs,
                mib(report.bytes),
                report.manifests,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BackupCommand::Forget { repo: args, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, prune } => {
            let policy = Policy { keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly };
            if policy.is_empty() && !prune {
                bail!("give at least one --keep-* rule (or --prune alone to only remove unneeded data)");
            }
            let repo = Repository::open(&args.repo, &secret(&args, false)?, Access::Exclusive)?;
            let r = ops::forget(&repo, &policy, prune)?;
            for id in &r.removed {
                println!("removed snapshot {id}");
            }
            println!("kept {} snapshots, removed {}", r.kept.len(), r.removed.len());
            if prune {
                println!("pruned {} objects ({})", r.objects_deleted, mib(r.bytes_freed));
            }
            Ok(())
        }
    }
}

/// The id of the key a data directory is sealed with, which a snapshot records.
pub fn key_id(setup: &crate::encryption::Setup) -> Option<String> {
    setup.keyring.as_ref().map(|ring| ring.current().id_hex())
}

impl ops::Http for remote::Client {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<ops::HttpAnswer> {
        let resp = remote::Client::send(self, method, path, headers, body).with_context(|| format!("{method} {path}"))?;
        Ok(ops::HttpAnswer { status: resp.status, location: resp.header("location").map(str::to_string), text: resp.text() })
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-keycheck-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
