//! Scheduled backups inside the server: a cron expression drives a tokio
//! task; each run takes a snapshot, applies retention, logs what it did and
//! exports it as metrics. A failed run writes no snapshot record, so it
//! cannot damage earlier snapshots.

use crate::ops::{self, Source};
use crate::policy::Policy;
use crate::repo::{Access, Repository};
use crate::Secret;
use anyhow::{anyhow, Context};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub struct Settings {
    pub schedule: String,
    pub repo: PathBuf,
    pub secret: Secret,
    pub policy: Policy,
    pub prune: bool,
}

/// Parses a cron expression: five fields, or six with seconds first.
pub fn parse(expr: &str) -> anyhow::Result<Cron> {
    CronParser::builder().seconds(Seconds::Optional).build().parse(expr).map_err(|e| anyhow!("{expr:?}: {e}"))
}

/// Starts the schedule; runs until the process ends.
pub fn spawn(settings: Settings, source: Source) -> anyhow::Result<()> {
    let cron = parse(&settings.schedule)?;
    let settings = Arc::new(settings);
    let source = Arc::new(source);
    metrics::describe_gauge!("berth_backup_last_success_timestamp_seconds", "Unix time of the last successful backup");
    metrics::describe_gauge!("berth_backup_last_duration_seconds", "Duration of the last backup run");
    metrics::describe_counter!("berth_backup_bytes_added_total", "Bytes written to the backup repository");
    metrics::describe_counter!("berth_backup_runs_total", "Backup runs by result");
    tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now();
            let next = match cron.find_next_occurrence(&now, false) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "backup schedule has no next run; scheduled backups stop");
                    return;
                }
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            let (s, src) = (settings.clone(), source.clone());
            let started = Instant::now();
            let rt = tokio::runtime::Handle::current();
            let result = tokio::task::spawn_blocking(move || run_once(&s, &src, &rt)).await.map_err(|e| anyhow!(e)).and_then(|r| r);
            let secs = started.elapsed().as_secs_f64();
            metrics::gauge!("berth_backup_last_duration_seconds").set(secs);
            match result {
                Ok((report, forgotten)) => {
                    let snap = &report.snapshot;
                    metrics::gauge!("berth_backup_last_success_timestamp_seconds").set(ops::now_secs() as f64);
                    metrics::counter!("berth_backup_bytes_added_total").increment(snap.bytes_added);
                    metrics::counter!("berth_backup_runs_total", "result" => "success").increment(1);
                    tracing::info!(
                        snapshot = %snap.id,
                        blobs = snap.blobs.len(),
                        blobs_reused = report.blobs_reused,
                        objects_added = snap.objects_added,
                        bytes_added = snap.bytes_added,
                        total_bytes = snap.total_bytes,
                        repositories = snap.repositories,
                        manifests = snap.manifests,
                        forgotten,
                        duration_secs = secs,
                        "scheduled backup finished"
                    );
                }
                Err(e) => {
                    metrics::counter!("berth_backup_runs_total", "result" => "failure").increment(1);
                    tracing::error!(error = %format!("{e:#}"), duration_secs = secs, "scheduled backup failed; earlier snapshots are untouched");
                }
            }
        }
    });
    Ok(())
}

fn run_once(s: &Settings, source: &Source, rt: &tokio::runtime::Handle) -> anyhow::Result<(ops::CreateReport, usize)> {
    let repo = Repository::open(&s.repo, &s.secret, Access::Exclusive)?;
    let report = ops::create(&repo, source, rt, None)?;
    let forgotten = if s.policy.is_empty() {
        0
    } else {
        ops::forget(&repo, &s.policy, s.prune).context("retention")?.removed.len()
    };
    Ok((report, forgotten))
}

#[cfg(test)]
mod tests {
    #[test]
    fn expressions() {
        assert!(super::parse("0 3 * * *").is_ok());
        assert!(super::parse("*/5 * * * * *").is_ok());
        assert!(super::parse("nonsense").is_err());
    }
}
