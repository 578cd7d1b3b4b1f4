//! The registry domain: every operation of the distribution spec, in terms
//! of validated names and digests, over a [`BlobStore`] and a
//! [`MetadataStore`]. Nothing here knows about HTTP.
//!
//! Invariants kept here:
//! - a blob becomes visible (linked in metadata) only after its digest was
//!   verified over every byte and the store made it durable;
//! - a manifest is stored only when everything it references is present in
//!   its repository, checked in the same transaction that stores it;
//! - bytes are streamed; nothing blob-sized is held in memory.

mod error;
pub mod gc;
pub mod policy;
pub mod search;
pub mod signatures;
mod upload;

pub use error::{RegistryError, Result};
pub use gc::{GcReport, UsageReport};
pub use policy::Policies;
pub use signatures::{SignaturePolicy, SignatureSettings, VerifyMode};
pub use upload::UploadStatus;

use berth_meta::{ManifestRecord, MetadataStore, Referrer, StoredManifest};
use berth_oci::manifest::{ManifestError, ParsedManifest, MAX_MANIFEST_BYTES};
use berth_oci::{Algorithm, Digest, Reference, RepoName, Tag};
use berth_storage::{BlobStore, ByteRange, ByteStream};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Behaviour switches of the registry domain.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Whether DELETE of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    /// Upload sessions idle this long are removed with their data.
    pub upload_ttl: Duration,
    /// Largest manifest accepted.
    pub max_manifest_bytes: usize,
    /// Largest page of tags or repositories returned at once.
    pub max_page: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            delete_enabled: true,
            upload_ttl: Duration::from_secs(24 * 3600),
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            max_page: 1000,
        }
    }
}

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetadataStore>,
    config: RegistryConfig,
    /// Running hash of each active upload, so chunks are hashed as they
    /// stream in. Lost on restart and rebuilt from the stored bytes.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<upload::HashState>>>>,
    policies: Policies,
    /// Serializes, per digest (striped), making a blob visible (commit and
    /// link, mount) with garbage collection deleting it (row, then file).
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Serializes quota checks with the commits they admit.
    quota_lock: tokio::sync::Mutex<()>,
    /// One collection at a time.
    gc_lock: tokio::sync::Mutex<()>,
    /// Manifest pulls counted since the last write.
    pulls: search::PullCounter,
    /// Signature policies and trusted keys.
    signatures: SignatureSettings,
    /// Signature verdicts, bounded.
    sig_cache: signatures::SharedCache,
}

/// Number of digest lock stripes.
const STRIPES: usize = 256;

/// How often a read may refresh a blob link's last-seen time at most.
const TOUCH_EVERY_SECS: i64 = 60;

/// A blob (or a range of it) ready to stream.
pub struct BlobBody {
    /// Size of the whole blob.
    pub size: u64,
    /// The range served, when the request asked for one.
    pub range: Option<ByteRange>,
    pub stream: ByteStream,
}

/// A page of names, and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

/// Outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Outcome of a cross-repository mount request.
pub enum Mount {
    Mounted,
    /// The source blob is not readable: a fresh upload session was opened instead.
    Upload(UploadStatus),
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetadataStore>, config: RegistryConfig) -> Registry {
        Registry {
            blobs,
            meta,
            config,
            sessions: Mutex::new(HashMap::new()),
            policies: Policies::default(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            quota_lock: tokio::sync::Mutex::new(()),
            gc_lock: tokio::sync::Mutex::new(()),
            pulls: Default::default(),
            signatures: SignatureSettings::default(),
            sig_cache: Default::default(),
        }
    }

    /// Sets garbage-collection, immutability, quota and retention policies.
    pub fn with_policies(mut self, policies: Policies) -> Registry {
        self.policies = policies;
        self
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The lock stripe of `digest`.
    pub(crate) async fn lock_digest(&self, digest: &Digest) -> tokio::sync::MutexGuard<'_, ()> {
        let hex = digest.hex();
        let i = usize::from_str_radix(&hex[..2], 16).unwrap_or(0) % STRIPES;
        self.stripes[i].lock().await
    }

    /// Refuses a new blob of `size` bytes in `repo` when it would take a
    /// matching quota over its limit. Call with `quota_lock` held.
    pub(crate) async fn check_quota(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        for quota in self.policies.quotas_for(repo.as_str()) {
            let names: Vec<String> = self
                .meta
                .repository_names()
                .await?
                .into_iter()
                .filter(|n| policy::glob_matches(&quota.repositories, n))
                .collect();
            let (used, present) = self.meta.usage(names, Some(digest)).await?;
            if !present && used.saturating_add(size) > quota.max_bytes {
                return Err(RegistryError::Denied(format!(
                    "quota exceeded for {}: {used} of {} bytes used, this blob needs {size} more",
                    quota.repositories, quota.max_bytes
                )));
            }
        }
        Ok(())
    }

    /// Whether commits into `repo` need the quota lock.
    pub(crate) fn has_quota(&self, repo: &RepoName) -> bool {
        self.policies.quotas_for(repo.as_str()).next().is_some()
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn require_delete(&self) -> Result<()> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::Unsupported("deletes are disabled on this registry".into()))
        }
    }

    // ---- blobs -------------------------------------------------------------

    /// Size of a blob readable in `repo`.
    /// A read confirms the blob for the GC grace period (refreshed at most
    /// once a minute, so reads rarely write).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let link = self.meta.blob_link(repo, digest).await?.ok_or(RegistryError::BlobUnknown)?;
        let now = now_secs();
        let every = TOUCH_EVERY_SECS.min(self.policies.gc.grace.as_secs() as i64 / 4);
        if now - link.last_seen > every {
            self.meta.touch_blob(repo, digest, now).await?;
        }
        Ok(link.size)
    }

    /// Opens a blob for reading. `range` is `(first, last inclusive)`, with
    /// `last` open-ended when `None`; suffix ranges come as `first = None`.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<(Option<u64>, Option<u64>)>,
    ) -> Result<BlobBody> {
        let size = self.blob_size(repo, digest).await?;
        let range = match range {
            None => None,
            Some(spec) => Some(resolve_range(spec, size)?),
        };
        let stream = match self.blobs.read(digest, range).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(%digest, "blob is linked in metadata but missing from storage");
                return Err(RegistryError::BlobUnknown);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(BlobBody { size, range, stream })
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.require_delete()?;
        if self.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Makes a blob already held elsewhere readable in `repo`, or opens an
    /// upload when the source does not hold it.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<Mount> {
        let size = match from {
            Some(from) => self.meta.repo_blob(from, digest).await?,
            None => None,
        };
        if let Some(size) = size {
            let _quota = match self.has_quota(repo) {
                true => Some(self.quota_lock.lock().await),
                false => None,
            };
            // Under the digest lock a collection cannot remove the blob
            // between the check and the link.
            let _digest = self.lock_digest(digest).await;
            if self.meta.any_blob(digest).await?.is_some() && self.blobs.stat(digest).await?.is_some() {
                self.check_quota(repo, digest, size).await?;
                self.meta.link_blob(repo, digest, size).await?;
                return Ok(Mount::Mounted);
            }
        }
        Ok(Mount::Upload(self.start_upload(repo, None).await?))
    }

    // ---- manifests ---------------------------------------------------------

    /// Stores a manifest pushed under `reference`, byte for byte.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest> {
        if body.len() > self.config.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge { limit: self.config.max_manifest_bytes });
        }
        let parsed = ParsedManifest::parse(&body, content_type).map_err(|e| match e {
            ManifestError::Schema1 => RegistryError::ManifestInvalid(e.to_string()),
            other => RegistryError::ManifestInvalid(other.to_string()),
        })?;
        let (digest, tag) = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::of(expected.algorithm(), &body);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest digest is {actual}, not {expected}"
                    )));
                }
                (actual, None)
            }
            Reference::Tag(tag) => (Digest::of(Algorithm::Sha256, &body), Some(tag)),
        };
        if tag.is_some() {
            self.check_signed_tag(repo, &digest, &body).await?;
        }
        if let Some(tag) = tag {
            if self.policies.is_immutable(repo.as_str(), tag.as_str()) {
                if let Some(existing) = self.meta.get_manifest(repo, &Reference::Tag(tag.clone())).await? {
                    if existing.digest != digest {
                        return Err(RegistryError::Denied(format!(
                            "tag {tag} of {repo} is immutable: it points at {} and cannot be overwritten",
                            existing.digest
                        )));
                    }
                }
            }
        }
        self.check_descriptor_sizes(repo, &parsed).await?;
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            artifact_type: parsed.artifact_type.clone(),
            subject: subject.clone(),
            annotations_json: (!parsed.annotations.is_empty())
                .then(|| serde_json::to_string(&parsed.annotations).unwrap_or_default()),
            blobs: dedup(parsed.required_blobs().map(|d| d.digest.clone())),
            children: dedup(parsed.manifests.iter().map(|d| d.digest.clone())),
            search: self.search_fields(&parsed).await,
            body,
        };
        self.meta.put_manifest(repo, record, tag).await?;
        Ok(PushedManifest { digest, subject })
    }

    /// A descriptor's size must be the size of what it names (clients
    /// check it on pull, so a wrong one is an image nobody can pull).
    /// Missing targets are left to the metadata transaction, which refuses
    /// them with `MANIFEST_BLOB_UNKNOWN`.
    async fn check_descriptor_sizes(&self, repo: &RepoName, parsed: &ParsedManifest) -> Result<()> {
        let wrong = |d: &berth_oci::manifest::Descriptor, actual: u64| {
            RegistryError::ManifestInvalid(format!(
                "descriptor of {} says {} bytes, but it has {actual}",
                d.digest, d.size
            ))
        };
        for d in parsed.required_blobs() {
            if let Some(actual) = self.meta.repo_blob(repo, &d.digest).await? {
                if actual != d.size as u64 {
                    return Err(wrong(d, actual));
                }
            }
        }
        for d in &parsed.manifests {
            if let Some(child) = self.meta.get_manifest(repo, &Reference::Digest(d.digest.clone())).await? {
                if child.body.len() as u64 != d.size as u64 {
                    return Err(wrong(d, child.body.len() as u64));
                }
            }
        }
        Ok(())
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        self.meta.get_manifest(repo, reference).await?.ok_or(RegistryError::ManifestUnknown)
    }

    /// Deletes a manifest (by digest, with its tags) or just a tag. With
    /// `delete_referrers_with_subject`, the manifests referring to a deleted
    /// manifest go too (and theirs, recursively).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.require_delete()?;
        let deleted = match reference {
            Reference::Digest(d) => {
                self.refuse_immutable(repo, d).await?;
                let deleted = self.meta.delete_manifest(repo, d).await?;
                if deleted && self.policies.gc.delete_referrers_with_subject {
                    self.delete_referrers_of(repo, d).await?;
                    self.delete_cosign_signatures(repo, d).await?;
                }
                deleted
            }
            Reference::Tag(t) => {
                if self.policies.is_immutable(repo.as_str(), t.as_str())
                    && self.meta.get_manifest(repo, reference).await?.is_some()
                {
                    return Err(RegistryError::Denied(format!("tag {t} of {repo} is immutable and cannot be deleted")));
                }
                self.meta.delete_tag(repo, t).await?
            }
        };
        if deleted {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown)
        }
    }

    /// Refuses to delete a manifest an immutable tag points at.
    async fn refuse_immutable(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.policies.immutable_tags.is_empty() {
            return Ok(());
        }
        for tag in self.meta.tags_of(repo, digest).await? {
            if self.policies.is_immutable(repo.as_str(), &tag) {
                return Err(RegistryError::Denied(format!(
                    "{digest} is tagged {tag} in {repo}, an immutable tag; it cannot be deleted"
                )));
            }
        }
        Ok(())
    }

    /// Deletes the referrers of `subject` in `repo`, and theirs. Referrers
    /// an immutable tag protects stay.
    pub(crate) async fn delete_referrers_of(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        let mut deleted = Vec::new();
        let mut queue = vec![subject.clone()];
        while let Some(s) = queue.pop() {
            for r in self.meta.referrers(repo, &s).await? {
                if self.refuse_immutable(repo, &r.digest).await.is_err() {
                    continue;
                }
                // A referrer that an index of the repository lists stays
                // with that index.
                match self.meta.delete_manifest(repo, &r.digest).await {
                    Ok(true) => {
                        deleted.push(r.digest.clone());
                        queue.push(r.digest);
                    }
                    Ok(false) | Err(berth_meta::MetaError::InUse { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }

    // ---- discovery ---------------------------------------------------------

    pub async fn list_tags(&self, repo: &RepoName, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let n = n.unwrap_or(self.config.max_page).min(self.config.max_page);
        if n == 0 {
            // Still report an unknown repository.
            self.meta.list_tags(repo, last, 0).await?.ok_or(RegistryError::NameUnknown)?;
            return Ok(Page { items: vec![], more: false });
        }
        let mut items = self.meta.list_tags(repo, last, n + 1).await?.ok_or(RegistryError::NameUnknown)?;
        let more = items.len() > n;
        items.truncate(n);
        Ok(Page { items, more })
    }

    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let n = n.unwrap_or(self.config.max_page).min(self.config.max_page);
        if n == 0 {
            return Ok(Page { items: vec![], more: false });
        }
        let mut items = self.meta.list_repositories(last, n + 1).await?;
        let more = items.len() > n;
        items.truncate(n);
        Ok(Page { items, more })
    }

    /// Manifests referring to `subject`, optionally only of one artifact type.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Referrer>> {
        let mut all = self.meta.referrers(repo, subject).await?;
        if let Some(t) = artifact_type {
            all.retain(|r| r.artifact_type.as_deref() == Some(t));
        }
        Ok(all)
    }

    /// Total bytes of distinct blobs stored.
    pub async fn stored_bytes(&self) -> Result<u64> {
        Ok(self.meta.stored_bytes().await?)
    }
}

/// Parses a tag from a query parameter or path.
pub fn parse_tag(s: &str) -> Result<Tag> {
    Tag::parse(s).ok_or(RegistryError::TagInvalid)
}

fn dedup(it: impl Iterator<Item = Digest>) -> Vec<Digest> {
    let mut v: Vec<Digest> = it.collect();
    v.sort();
    v.dedup();
    v
}

/// Resolves an HTTP-style byte range against a blob size.
fn resolve_range((first, last): (Option<u64>, Option<u64>), size: u64) -> Result<ByteRange> {
    let unsatisfiable = RegistryError::RangeNotSatisfiable { size };
    let (start, end) = match (first, last) {
        (Some(f), Some(l)) if f <= l => (f, l.saturating_add(1).min(size)),
        (Some(f), None) => (f, size),
        // Suffix: the last `l` bytes.
        (None, Some(l)) if l > 0 => (size.saturating_sub(l), size),
        _ => return Err(unsatisfiable),
    };
    if start >= size {
        return Err(unsatisfiable);
    }
    Ok(ByteRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve_range((Some(0), Some(9)), 100).unwrap(), ByteRange { start: 0, end: 10 });
        assert_eq!(resolve_range((Some(90), None), 100).unwrap(), ByteRange { start: 90, end: 100 });
        assert_eq!(resolve_range((Some(90), Some(500)), 100).unwrap(), ByteRange { start: 90, end: 100 });
        assert_eq!(resolve_range((None, Some(10)), 100).unwrap(), ByteRange { start: 90, end: 100 });
        assert!(resolve_range((Some(100), None), 100).is_err());
        assert!(resolve_range((Some(5), Some(4)), 100).is_err());
    }
}
