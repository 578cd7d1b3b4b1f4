//! Online garbage collection: retention, untagged manifests, unreferenced
//! blob links, blob rows and files, expired uploads — while pushes and pulls
//! go on.
//!
//! A run first reads one consistent snapshot of the metadata and plans
//! everything from it in memory (a dry run stops there and reports the
//! plan). It then carries the plan out step by step, each deletion in a
//! transaction that re-checks, at delete time, that the thing is still
//! garbage; so a push that raced with the plan wins:
//!
//! 1. tags removed by retention policies (only while they still point where
//!    the plan saw them);
//! 2. manifests no tag reaches: not tagged, not a child of a kept manifest,
//!    not a referrer of a kept subject, and older than `untagged_after`
//!    (or untagged by step 1 in this run);
//! 3. blob links no manifest of the repository references, last seen
//!    (pushed, mounted, HEAD or GET) before the grace period;
//! 4. blob rows nothing links or references, then their files. Row first,
//!    file after, under the digest's lock, which upload commits and mounts
//!    also hold from rename to link: a file without a row is invisible, a
//!    row without its file never exists;
//! 5. files no row knows (left by a crash) and expired upload sessions.
//!
//! The race "HEAD a blob, collection runs, PUT a manifest needing it" is
//! safe: the HEAD refreshed the link's last-seen time, so within the grace
//! period the link stays; after it, the link removal and the manifest
//! insert are serialized by the metadata store, and the manifest insert
//! checks its links in its own transaction, so the PUT either finds the
//! link (and the collection then sees the reference and keeps it) or fails
//! with `MANIFEST_BLOB_UNKNOWN`.

use crate::{now_secs, policy::Policies, Registry, Result};
use berth_meta::{GcSnapshot, UntaggedDeletion};
use berth_oci::{Digest, RepoName};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GcReport {
    pub dry_run: bool,
    /// `repo:tag`, removed by retention policies.
    pub tags_deleted: Vec<String>,
    /// `repo@digest`.
    pub manifests_deleted: Vec<String>,
    /// `repo@digest`: links no manifest needs, past the grace period.
    pub links_removed: Vec<String>,
    /// Digests whose row and file were removed.
    pub blobs_deleted: Vec<String>,
    /// Files no metadata row knew.
    pub orphan_files_deleted: Vec<String>,
    /// Bytes of the blobs and orphan files removed.
    pub bytes_freed: u64,
    /// Upload sessions (with their data) removed.
    pub uploads_expired: usize,
    pub duration_ms: u64,
}

impl GcReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<GcReport> {
        serde_json::from_str(text).ok()
    }

    /// One line for logs and the CLI.
    pub fn summary(&self) -> String {
        format!(
            "{}{} blobs ({} bytes) freed, {} manifests, {} tags, {} links, {} orphan files, {} uploads removed in {} ms",
            if self.dry_run { "dry run: " } else { "" },
            self.blobs_deleted.len(),
            self.bytes_freed,
            self.manifests_deleted.len(),
            self.tags_deleted.len(),
            self.links_removed.len(),
            self.orphan_files_deleted.len(),
            self.uploads_expired,
            self.duration_ms
        )
    }
}

/// What one run intends to delete, decided from a snapshot.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// (repo, tag, digest it points at)
    pub tags: Vec<(String, String, Digest)>,
    /// Per repository: manifests to delete, and those of them whose last
    /// tag this run removes.
    pub manifests: Vec<(String, Vec<Digest>, Vec<Digest>)>,
    pub links: Vec<(String, Vec<Digest>)>,
    pub blobs: Vec<(Digest, u64)>,
}

/// Decides, from one snapshot, everything a run at `now` removes.
pub(crate) fn plan(snap: &GcSnapshot, policies: &Policies, now: i64) -> Plan {
    let grace_cutoff = now - policies.gc.grace.as_secs() as i64;
    let untagged_cutoff = policies.gc.untagged_after.map(|a| now - a.as_secs() as i64);
    let follow = policies.gc.delete_referrers_with_subject;
    let mut out = Plan::default();
    // Blobs something still needs: a kept link or a kept manifest.
    let mut needed: HashSet<&Digest> = HashSet::new();
    for repo in &snap.repos {
        // 1. Retention: the first policy matching the repository decides.
        // cosign's `sha256-<hex>.sig` (and .att, .sbom) tags are not
        // versions of the image: they neither count towards keep_last nor
        // expire on their own; they go with their subject below.
        let by_name: HashMap<String, &Digest> = repo.manifests.iter().map(|m| (m.digest.to_string(), &m.digest)).collect();
        // A signature tag names a subject that is there; any other tag, even
        // one shaped like a signature tag, is an ordinary tag.
        let signs = |tag: &str| berth_sign::cosign::tag_subject(tag).and_then(|s| by_name.get(&s).copied());
        let mut removed: HashSet<String> = HashSet::new();
        if let Some(policy) = policies.retention_for(&repo.name).next() {
            let tags: Vec<(String, i64)> = repo
                .tags
                .iter()
                .filter(|t| signs(&t.name).is_none())
                .map(|t| (t.name.clone(), t.updated_at))
                .collect();
            for name in policy.expired(&tags, now) {
                if !policies.is_immutable(&repo.name, name) {
                    removed.insert(name.to_string());
                }
            }
        }
        let present: HashSet<&Digest> = repo.manifests.iter().map(|m| &m.digest).collect();
        let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for m in &repo.manifests {
            if let Some(s) = &m.subject {
                referrers.entry(s).or_default().push(&m.digest);
            }
        }
        let by_digest: HashMap<&Digest, &berth_meta::ManifestNode> =
            repo.manifests.iter().map(|m| (&m.digest, m)).collect();
        // 2. Manifests: live ones are reachable from roots (tagged, or
        // untagged but young) through index children, subjects and (when
        // referrers follow their subject) referrers. When a subject dies,
        // its cosign tags are removed too and liveness is computed again.
        let (exempt, live) = loop {
            let tagged: HashSet<&Digest> =
                repo.tags.iter().filter(|t| !removed.contains(&t.name)).map(|t| &t.digest).collect();
            let exempt: HashSet<&Digest> =
                repo.tags.iter().map(|t| &t.digest).filter(|d| !tagged.contains(d)).collect();
            let fresh = |m: &berth_meta::ManifestNode| {
                !exempt.contains(&m.digest) && untagged_cutoff.is_none_or(|c| m.last_seen > c)
            };
            let mut live: HashSet<&Digest> = HashSet::new();
            let mut queue: Vec<&Digest> = Vec::new();
            for m in &repo.manifests {
                let root = tagged.contains(&m.digest)
                    || match &m.subject {
                        None => fresh(m),
                        Some(_) if !follow => true,
                        Some(s) if present.contains(s) => false,
                        Some(_) => fresh(m),
                    };
                if root && live.insert(&m.digest) {
                    queue.push(&m.digest);
                }
            }
            while let Some(d) = queue.pop() {
                let Some(m) = by_digest.get(d) else { continue };
                // Children, referrers (which follow their subject), and the
                // subject itself: a kept referrer keeps what it refers to.
                let next = m
                    .children
                    .iter()
                    .chain(referrers.get(d).into_iter().flatten().copied())
                    .chain(m.subject.iter());
                for n in next {
                    if present.contains(n) && live.insert(n) {
                        queue.push(n);
                    }
                }
            }
            let orphaned: Vec<String> = if follow {
                repo.tags
                    .iter()
                    .filter(|t| !removed.contains(&t.name) && !policies.is_immutable(&repo.name, &t.name))
                    .filter(|t| signs(&t.name).is_some_and(|subject| !live.contains(subject)))
                    .map(|t| t.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            if orphaned.is_empty() {
                break (exempt, live);
            }
            removed.extend(orphaned);
        };
        for t in &repo.tags {
            if removed.contains(&t.name) {
                out.tags.push((repo.name.clone(), t.name.clone(), t.digest.clone()));
            }
        }
        let mut dead: Vec<Digest> =
            repo.manifests.iter().filter(|m| !live.contains(&m.digest)).map(|m| m.digest.clone()).collect();
        dead.sort();
        if !dead.is_empty() {
            let ex = dead.iter().filter(|d| exempt.contains(d)).cloned().collect();
            out.manifests.push((repo.name.clone(), dead, ex));
        }

        // 3. Links: kept when a live manifest of the repository references
        // the blob, or it was seen within the grace period.
        let referenced: HashSet<&Digest> =
            repo.manifests.iter().filter(|m| live.contains(&m.digest)).flat_map(|m| m.blobs.iter()).collect();
        let mut gone = Vec::new();
        for (d, last_seen) in &repo.links {
            if !referenced.contains(d) && *last_seen <= grace_cutoff {
                gone.push(d.clone());
            } else {
                needed.insert(d);
            }
        }
        needed.extend(referenced);
        if !gone.is_empty() {
            gone.sort();
            out.links.push((repo.name.clone(), gone));
        }
    }
    // 4. Blob rows nothing needs.
    out.blobs = snap.blobs.iter().filter(|(d, _)| !needed.contains(d)).cloned().collect();
    out.blobs.sort();
    out
}

impl Registry {
    /// Runs one collection. With `dry_run`, reports what would go and
    /// changes nothing.
    pub async fn collect_garbage(&self, dry_run: bool) -> Result<GcReport> {
        let _one = self.gc_lock.lock().await;
        let started = Instant::now();
        let now = now_secs();
        let gc = &self.policies.gc;
        let snap = self.meta.gc_snapshot().await?;
        let plan = plan(&snap, &self.policies, now);
        let mut report = GcReport { dry_run, ..Default::default() };

        // 1. Tags.
        for (repo, tag, digest) in &plan.tags {
            let Some(name) = RepoName::parse(repo) else { continue };
            if dry_run || self.meta.delete_tag_if(&name, tag, digest).await? {
                report.tags_deleted.push(format!("{repo}:{tag}"));
            }
        }
        // 2. Manifests.
        for (repo, dead, exempt) in &plan.manifests {
            let Some(name) = RepoName::parse(repo) else { continue };
            let deleted = if dry_run {
                dead.clone()
            } else {
                let deletion = UntaggedDeletion {
                    candidates: dead.clone(),
                    cutoff: gc.untagged_after.map_or(i64::MAX, |a| now - a.as_secs() as i64),
                    exempt: exempt.clone(),
                    exempt_before: now,
                    follow_subject: gc.delete_referrers_with_subject,
                };
                let mut deleted = self.meta.delete_untagged(&name, deletion).await?;
                if gc.delete_referrers_with_subject {
                    // cosign's signatures hang off a tag, not a subject field.
                    for d in deleted.clone() {
                        deleted.extend(self.delete_cosign_signatures(&name, &d).await?);
                    }
                }
                deleted
            };
            report.manifests_deleted.extend(deleted.iter().map(|d| format!("{repo}@{d}")));
        }
        // 3. Links.
        let grace_cutoff = now - gc.grace.as_secs() as i64;
        for (repo, digests) in &plan.links {
            let Some(name) = RepoName::parse(repo) else { continue };
            let removed = if dry_run {
                digests.clone()
            } else {
                self.meta.unlink_unused(&name, digests.clone(), grace_cutoff).await?
            };
            report.links_removed.extend(removed.iter().map(|d| format!("{repo}@{d}")));
        }
        // 4. Blob rows, then files.
        for (digest, size) in &plan.blobs {
            if dry_run {
                report.blobs_deleted.push(digest.to_string());
                report.bytes_freed += size;
                continue;
            }
            let _lock = self.lock_digest(digest).await;
            if let Some(size) = self.meta.delete_blob_if_unused(digest).await? {
                if let Err(e) = self.blobs.delete(digest).await {
                    // Invisible without its row; the next run retries.
                    tracing::warn!(%digest, error = %e, "could not delete blob file");
                }
                report.blobs_deleted.push(digest.to_string());
                report.bytes_freed += size;
            }
        }
        // 5. Files no row knows, and uploads.
        let rows: HashSet<&Digest> = snap.blobs.iter().map(|(d, _)| d).collect();
        for digest in self.blobs.list().await? {
            if rows.contains(&digest) {
                continue;
            }
            let _lock = self.lock_digest(&digest).await;
            if self.meta.any_blob(&digest).await?.is_some() {
                continue;
            }
            let Some(size) = self.blobs.stat(&digest).await? else { continue };
            if dry_run || self.blobs.delete(&digest).await? {
                report.orphan_files_deleted.push(digest.to_string());
                report.bytes_freed += size;
            }
        }
        report.uploads_expired = if dry_run {
            let before = now - self.config.upload_ttl.as_secs() as i64;
            self.meta.idle_uploads(before).await?.len()
        } else {
            self.expire_uploads().await?
        };
        report.duration_ms = started.elapsed().as_millis() as u64;
        if !dry_run {
            metrics::counter!("berth_gc_runs_total").increment(1);
            metrics::counter!("berth_gc_blobs_deleted_total").increment(report.blobs_deleted.len() as u64);
            metrics::counter!("berth_gc_bytes_freed_total").increment(report.bytes_freed);
            metrics::counter!("berth_gc_manifests_deleted_total").increment(report.manifests_deleted.len() as u64);
            metrics::counter!("berth_gc_tags_deleted_total").increment(report.tags_deleted.len() as u64);
        }
        tracing::info!(
            target: "berth::gc",
            dry_run,
            blobs = report.blobs_deleted.len(),
            bytes = report.bytes_freed,
            manifests = report.manifests_deleted.len(),
            tags = report.tags_deleted.len(),
            links = report.links_removed.len(),
            orphans = report.orphan_files_deleted.len(),
            uploads = report.uploads_expired,
            ms = report.duration_ms,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// Bytes used per repository, and per configured quota.
    pub async fn usage(&self) -> Result<UsageReport> {
        let repositories = self.meta.usage_by_repository().await?;
        let names: Vec<String> = repositories.iter().map(|(n, _)| n.clone()).collect();
        let mut quotas = Vec::new();
        for q in &self.policies.quotas {
            let matching: Vec<String> =
                names.iter().filter(|n| crate::policy::glob_matches(&q.repositories, n)).cloned().collect();
            let (used, _) = self.meta.usage(matching, None).await?;
            quotas.push(QuotaUsage { repositories: q.repositories.clone(), max_bytes: q.max_bytes, used_bytes: used });
        }
        Ok(UsageReport {
            total_bytes: self.meta.stored_bytes().await?,
            repositories: repositories.into_iter().map(|(name, bytes)| RepoUsage { name, bytes }).collect(),
            quotas,
        })
    }
}

impl UsageReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageReport {
    /// Distinct blob bytes stored, all repositories together.
    pub total_bytes: u64,
    pub repositories: Vec<RepoUsage>,
    pub quotas: Vec<QuotaUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoUsage {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuotaUsage {
    pub repositories: String,
    pub max_bytes: u64,
    pub used_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::GcSettings;
    use berth_meta::SqliteMetadata;
    use berth_oci::Reference;
    use berth_storage::FsBlobStore;
    use bytes::Bytes;
    use futures::StreamExt;
    use std::sync::Arc;
    use std::time::Duration;

    async fn registry(dir: &std::path::Path, untagged: Option<u64>) -> Registry {
        let blobs = Arc::new(FsBlobStore::open(dir).await.unwrap());
        let meta = Arc::new(SqliteMetadata::open(dir.join("m.db")).unwrap());
        Registry::new(blobs, meta, Default::default()).with_policies(Policies {
            gc: GcSettings {
                grace: Duration::ZERO,
                untagged_after: untagged.map(Duration::from_secs),
                delete_referrers_with_subject: true,
            },
            ..Default::default()
        })
    }

    async fn blob(r: &Registry, repo: &RepoName, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let s = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]).boxed();
        r.upload_monolithic(repo, &d, s).await.unwrap();
        d
    }

    async fn image(r: &Registry, repo: &RepoName, layer: &Digest, subject: Option<&Digest>, tag: Option<&str>) -> Digest {
        let size = r.meta.repo_blob(repo, layer).await.unwrap().unwrap_or(0);
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": layer.to_string(), "size": size},
            "layers": [],
        });
        if let Some(s) = subject {
            m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": s.to_string(), "size": 1});
        }
        let body = Bytes::from(m.to_string());
        let d = Digest::sha256_of(&body);
        let reference = match tag {
            Some(t) => Reference::Tag(berth_oci::Tag::parse(t).unwrap()),
            None => Reference::Digest(d.clone()),
        };
        r.put_manifest(repo, &reference, None, body).await.unwrap();
        d
    }

    async fn index(r: &Registry, repo: &RepoName, child: &Digest, tag: &str) -> Digest {
        let size = r.get_manifest(repo, &Reference::Digest(child.clone())).await.map_or(0, |m| m.body.len());
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child.to_string(), "size": size}],
        });
        let body = Bytes::from(m.to_string());
        r.put_manifest(repo, &Reference::Tag(berth_oci::Tag::parse(tag).unwrap()), None, body.clone()).await.unwrap();
        Digest::sha256_of(&body)
    }

    #[tokio::test]
    async fn collects_only_unreachable_and_dry_run_matches() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), Some(0)).await;
        let repo = RepoName::parse("a/b").unwrap();
        let l1 = blob(&r, &repo, b"l1").await;
        let l2 = blob(&r, &repo, b"l2").await;
        let l3 = blob(&r, &repo, b"l3").await;
        let l4 = blob(&r, &repo, b"l4-unreferenced").await;
        let m1 = image(&r, &repo, &l1, None, Some("v1")).await;
        let m2 = image(&r, &repo, &l2, None, None).await;
        let _i = index(&r, &repo, &m2, "multi").await;
        let m3 = image(&r, &repo, &l3, None, None).await;
        let sig1 = image(&r, &repo, &l1, Some(&m1), None).await;
        let sig3 = image(&r, &repo, &l2, Some(&m3), None).await;

        let dry = r.collect_garbage(true).await.unwrap();
        let real = r.collect_garbage(false).await.unwrap();
        let strip = |g: &GcReport| GcReport { dry_run: false, duration_ms: 0, uploads_expired: 0, ..g.clone() };
        assert_eq!(strip(&dry), strip(&real));
        let mut gone = vec![format!("a/b@{m3}"), format!("a/b@{sig3}")];
        gone.sort();
        assert_eq!(real.manifests_deleted, gone);
        let mut blobs = vec![l3.to_string(), l4.to_string()];
        blobs.sort();
        assert_eq!(real.blobs_deleted, blobs);
        assert_eq!(real.bytes_freed, 2 + 15);
        // Kept: the tagged image, its referrer, the index child and their blobs.
        for d in [&m1, &m2, &sig1] {
            r.get_manifest(&repo, &Reference::Digest(d.clone())).await.unwrap();
        }
        for d in [&l1, &l2] {
            assert!(r.read_blob(&repo, d, None).await.is_ok());
        }
        assert!(r.blobs.stat(&l3).await.unwrap().is_none());
        assert!(r.blobs.stat(&l4).await.unwrap().is_none());
        // Nothing more to do.
        let again = r.collect_garbage(false).await.unwrap();
        assert!(again.blobs_deleted.is_empty() && again.manifests_deleted.is_empty());
    }

    #[tokio::test]
    async fn kept_referrers_keep_their_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), Some(0)).await;
        let repo = RepoName::parse("a/b").unwrap();
        let mut ls = Vec::new();
        for i in 0..5u8 {
            ls.push(blob(&r, &repo, &[b'l', i]).await);
        }
        // A tagged referrer (a signature pushed under a tag) keeps its
        // untagged subject, and the subject's other referrers follow it.
        let subject = image(&r, &repo, &ls[0], None, None).await;
        let tagged_sig = image(&r, &repo, &ls[1], Some(&subject), Some("sig")).await;
        let sbom = image(&r, &repo, &ls[2], Some(&subject), None).await;
        // Without a kept referrer, subject and referrer go together.
        let lone = image(&r, &repo, &ls[3], None, None).await;
        let lone_sig = image(&r, &repo, &ls[4], Some(&lone), None).await;
        let dry = r.collect_garbage(true).await.unwrap();
        let real = r.collect_garbage(false).await.unwrap();
        let mut gone = vec![format!("a/b@{lone}"), format!("a/b@{lone_sig}")];
        gone.sort();
        assert_eq!(dry.manifests_deleted, gone);
        assert_eq!(real.manifests_deleted, gone);
        for d in [&subject, &tagged_sig, &sbom] {
            r.get_manifest(&repo, &Reference::Digest(d.clone())).await.unwrap();
        }

        // Referrers that do not follow their subject are kept, and so is
        // the subject they point at.
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(FsBlobStore::open(dir.path()).await.unwrap());
        let meta = Arc::new(SqliteMetadata::open(dir.path().join("m.db")).unwrap());
        let r = Registry::new(blobs, meta, Default::default()).with_policies(Policies {
            gc: GcSettings { grace: Duration::ZERO, untagged_after: Some(Duration::ZERO), delete_referrers_with_subject: false },
            ..Default::default()
        });
        let (l1, l2) = (blob(&r, &repo, b"one").await, blob(&r, &repo, b"two").await);
        let subject = image(&r, &repo, &l1, None, None).await;
        let sig = image(&r, &repo, &l1, Some(&subject), None).await;
        let loose = image(&r, &repo, &l2, None, Some("gone")).await;
        r.delete_manifest(&repo, &Reference::Tag(berth_oci::Tag::parse("gone").unwrap())).await.unwrap();
        let report = r.collect_garbage(false).await.unwrap();
        assert_eq!(report.manifests_deleted, vec![format!("a/b@{loose}")]);
        for d in [&subject, &sig] {
            r.get_manifest(&repo, &Reference::Digest(d.clone())).await.unwrap();
        }
    }

    #[tokio::test]
    async fn untagged_off_keeps_manifests_and_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), None).await;
        let repo = RepoName::parse("x").unwrap();
        let l = blob(&r, &repo, b"layer").await;
        let m = image(&r, &repo, &l, None, None).await;
        let report = r.collect_garbage(false).await.unwrap();
        assert!(report.manifests_deleted.is_empty() && report.blobs_deleted.is_empty());
        r.get_manifest(&repo, &Reference::Digest(m)).await.unwrap();
        // Deleting the manifest frees the blob.
        let report = {
            r.delete_manifest(&repo, &Reference::Digest(Digest::sha256_of(
                &r.get_manifest(&repo, &Reference::Tag(berth_oci::Tag::parse("x").unwrap())).await.map(|m| m.body).unwrap_or_default(),
            )))
            .await
            .ok();
            let all = r.meta.gc_snapshot().await.unwrap();
            for repo_snap in &all.repos {
                for mm in &repo_snap.manifests {
                    r.delete_manifest(&repo, &Reference::Digest(mm.digest.clone())).await.unwrap();
                }
            }
            r.collect_garbage(false).await.unwrap()
        };
        assert_eq!(report.blobs_deleted, vec![l.to_string()]);
        assert!(r.blobs.stat(&l).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn orphan_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), None).await;
        let repo = RepoName::parse("x").unwrap();
        let l = blob(&r, &repo, b"orphan").await;
        // Simulate a crash between the file rename and the metadata row.
        r.meta.unlink_blob(&repo, &l).await.unwrap();
        r.meta.delete_blob_if_unused(&l).await.unwrap();
        assert!(r.blobs.stat(&l).await.unwrap().is_some());
        let report = r.collect_garbage(false).await.unwrap();
        assert_eq!(report.orphan_files_deleted, vec![l.to_string()]);
        assert!(r.blobs.stat(&l).await.unwrap().is_none());
    }
}
