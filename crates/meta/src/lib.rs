//! What the registry knows: repositories, which blobs each may read,
//! manifests (their exact bytes), tags, referrers and upload sessions.
//!
//! Visibility is decided here: a blob or manifest exists for clients only
//! once its row is committed. Every multi-row change is one transaction, so
//! a crash leaves either the old state or the new one.

mod search;
mod sqlite;
pub mod snapshot;

pub use search::seed_synthetic;
pub use sqlite::SqliteMetadata;

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepoName, Tag};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("blob {0} is not known in this repository")]
    MissingBlob(Digest),
    #[error("manifest {0} is not known in this repository")]
    MissingManifest(Digest),
    /// A delete refused because a manifest in the repository still
    /// refers to the target (a layer, a config, an index's child).
    #[error("{target} is referenced by manifest {by} in this repository; delete that manifest first")]
    InUse { target: Digest, by: Digest },
    #[error("metadata store: {0}")]
    Backend(String),
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A manifest to store, with what it refers to.
#[derive(Debug, Clone)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub body: Bytes,
    /// The `subject` this manifest refers to (referrers API).
    pub subject: Option<Digest>,
    /// `annotations` of the manifest, as JSON, reported by the referrers API.
    pub annotations_json: Option<String>,
    /// Blobs that must be readable in the repository.
    pub blobs: Vec<Digest>,
    /// Manifests (index children) that must exist in the repository.
    pub children: Vec<Digest>,
    /// What search indexes of this manifest (stored in the same transaction).
    pub search: SearchFields,
}

/// What the search index keeps of one manifest, extracted by the registry
/// at push time from the manifest and its image config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFields {
    pub title: Option<String>,
    pub description: Option<String>,
    /// Image-config labels and manifest annotations, key and value.
    pub labels: Vec<(String, String)>,
    /// `os/arch[/variant]` of the image, or of each entry of an index.
    pub platforms: Vec<String>,
    /// The config's `created` time, as written there.
    pub created: Option<String>,
}

/// A parsed search: every term must match (name, tags, descriptions,
/// labels); every filter must hold.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Lower-case terms.
    pub terms: Vec<String>,
    /// `label:key=value` filters.
    pub labels: Vec<(String, String)>,
    /// `platform:os/arch[/variant]` filters (a shorter one matches longer ones).
    pub platforms: Vec<String>,
    pub offset: usize,
    pub limit: usize,
}

/// One matching repository.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub platforms: Vec<String>,
    /// 0 exact name, 1 name prefix, 2 name substring, 3 tag, 4 other text.
    pub rank: u8,
    /// Last tag change, seconds since the epoch.
    pub updated_at: i64,
}

/// A page of hits and how many there are in all (after authorization).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchPage {
    /// Matches, counted up to a limit (`more` says there are more).
    pub total: usize,
    /// More than `total` repositories match: the search is broad.
    pub more: bool,
    pub hits: Vec<SearchHit>,
}

/// Decides which repositories the caller may see.
pub type RepoFilter = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A repository as the web interface shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryInfo {
    pub name: String,
    pub description: Option<String>,
    pub created_at: i64,
    pub tags: Vec<TagDetail>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagDetail {
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    /// Manifest bytes plus the bytes of the blobs it references (for an
    /// index: of its children's blobs).
    pub size: u64,
    pub platforms: Vec<String>,
    pub pushed_at: i64,
    pub created: Option<String>,
    pub pulls: u64,
    pub last_pull: Option<i64>,
}

/// Pulls of one manifest counted in memory, added to the store in batches.
#[derive(Debug, Clone, PartialEq)]
pub struct PullCount {
    pub repo: String,
    pub digest: String,
    pub count: u64,
    pub last: i64,
}

#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// One entry of a referrers listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord {
    pub id: String,
    pub repo: RepoName,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A repository's link to a blob: the blob's size and when the link was
/// last written, mounted or confirmed by a read (for the GC grace period).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlobLink {
    pub size: u64,
    pub last_seen: i64,
}

/// Everything garbage collection needs to decide, read in one consistent
/// transaction.
#[derive(Debug, Clone, Default)]
pub struct GcSnapshot {
    pub repos: Vec<RepoSnapshot>,
    /// Every blob row: digest and size.
    pub blobs: Vec<(Digest, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct RepoSnapshot {
    pub name: String,
    pub manifests: Vec<ManifestNode>,
    pub tags: Vec<TagInfo>,
    /// Blob links: digest and last-seen time.
    pub links: Vec<(Digest, i64)>,
}

#[derive(Debug, Clone)]
pub struct ManifestNode {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Last time the manifest was pushed.
    pub last_seen: i64,
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    pub name: String,
    pub digest: Digest,
    pub updated_at: i64,
}

/// Manifests garbage collection wants to delete from one repository, and
/// the rules to re-check, inside the deleting transaction, that each is
/// still garbage.
#[derive(Debug, Clone)]
pub struct UntaggedDeletion {
    pub candidates: Vec<Digest>,
    /// A manifest pushed after this time is kept (unless exempt, below).
    pub cutoff: i64,
    /// Manifests whose last tag this run removed: age does not protect them
    /// unless they were pushed again after `exempt_before`.
    pub exempt: Vec<Digest>,
    pub exempt_before: i64,
    /// Whether a referrer whose subject is kept must be kept (referrers
    /// follow their subject); when false every referrer is kept.
    pub follow_subject: bool,
}

/// Metadata operations the registry needs. Implementations: embedded SQLite
/// today; PostgreSQL fits the same shape.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Records that `digest` (of `size` bytes) is stored and readable in `repo`.
    async fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()>;
    /// Size of `digest` if `repo` may read it.
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// Size of `digest` if any repository holds it (for mounts and dedup).
    async fn any_blob(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Removes `repo`'s link to a blob; `false` when there was none.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// Stores a manifest and, optionally, points `tag` at it: one transaction
    /// that fails with `MissingBlob`/`MissingManifest` when a reference is absent.
    async fn put_manifest(&self, repo: &RepoName, record: ManifestRecord, tag: Option<&Tag>) -> Result<()>;
    async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>>;
    /// Deletes a manifest and every tag pointing at it.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Tags in lexical order after `last`; `None` when the repository has no manifests.
    async fn list_tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>>;
    /// Repositories holding at least one manifest, in lexical order after `last`.
    async fn list_repositories(&self, last: Option<&str>, n: usize) -> Result<Vec<String>>;
    /// Manifests in `repo` whose `subject` is `digest`.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>>;
    /// Indexes in `repo` that list `digest` as a child manifest.
    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>>;

    async fn create_upload(&self, id: &str, repo: &RepoName, now: i64) -> Result<()>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    async fn touch_upload(&self, id: &str, now: i64) -> Result<()>;
    async fn delete_upload(&self, id: &str) -> Result<bool>;
    /// Uploads not touched since `before`.
    async fn idle_uploads(&self, before: i64) -> Result<Vec<String>>;

    /// Total size of all distinct blobs known.
    async fn stored_bytes(&self) -> Result<u64>;

    // ---- garbage collection, quotas, immutability --------------------------

    /// `repo`'s link to `digest`, with when it was last seen.
    async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobLink>>;
    /// Marks `repo`'s link to `digest` as seen at `now`.
    async fn touch_blob(&self, repo: &RepoName, digest: &Digest, now: i64) -> Result<()>;
    /// Names of the tags pointing at `digest` in `repo`.
    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>>;
    /// Every repository name, with or without manifests.
    async fn repository_names(&self) -> Result<Vec<String>>;
    /// Bytes of distinct blobs linked in any of `repos`, and whether
    /// `digest` is already among them.
    async fn usage(&self, repos: Vec<String>, digest: Option<&Digest>) -> Result<(u64, bool)>;
    /// Bytes of distinct blobs linked in each repository, by name.
    async fn usage_by_repository(&self) -> Result<Vec<(String, u64)>>;
    /// A consistent view of manifests, tags, links and blobs.
    async fn gc_snapshot(&self) -> Result<GcSnapshot>;
    /// Deletes a tag only while it still points at `digest`.
    async fn delete_tag_if(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool>;
    /// Deletes the candidates that are still garbage by the rules given,
    /// in one transaction; returns those deleted.
    async fn delete_untagged(&self, repo: &RepoName, plan: UntaggedDeletion) -> Result<Vec<Digest>>;
    /// Removes `repo`'s links to `digests` that no manifest of `repo`
    /// references and that were last seen at or before `cutoff`, in one
    /// transaction; returns those removed.
    async fn unlink_unused(&self, repo: &RepoName, digests: Vec<Digest>, cutoff: i64) -> Result<Vec<Digest>>;
    /// Deletes the blob row when no repository links it and no manifest
    /// references it; returns its size when deleted.
    async fn delete_blob_if_unused(&self, digest: &Digest) -> Result<Option<u64>>;

    // ---- search and browsing ------------------------------------------------

    /// Repositories matching `query`, ranked, only those `allow` accepts.
    async fn search(&self, query: SearchQuery, allow: RepoFilter) -> Result<SearchPage>;
    /// A repository's tags with sizes, platforms, push and pull times.
    async fn repository_info(&self, repo: &RepoName) -> Result<Option<RepositoryInfo>>;
    /// Adds counted pulls.
    async fn record_pulls(&self, pulls: Vec<PullCount>) -> Result<()>;
    /// Pull count and last pull time of one manifest.
    async fn pulls_of(&self, repo: &RepoName, digest: &Digest) -> Result<(u64, Option<i64>)>;
}
