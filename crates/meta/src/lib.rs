//! What the registry knows: repositories, which blobs each may read,
//! manifests (their exact bytes), tags, referrers and upload sessions.
//!
//! Visibility is decided here: a blob or manifest exists for clients only
//! once its row is committed. Every multi-row change is one transaction, so
//! a crash leaves either the old state or the new one.

mod sqlite;
pub mod snapshot;

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

    async fn create_upload(&self, id: &str, repo: &RepoName, now: i64) -> Result<()>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    async fn touch_upload(&self, id: &str, now: i64) -> Result<()>;
    async fn delete_upload(&self, id: &str) -> Result<bool>;
    /// Uploads not touched since `before`.
    async fn idle_uploads(&self, before: i64) -> Result<Vec<String>>;

    /// Total size of all distinct blobs known.
    async fn stored_bytes(&self) -> Result<u64>;
}
