//! Where blob bytes live. The registry talks to storage only through
//! [`BlobStore`]: a handful of operations on immutable, content-addressed
//! blobs and on append-only upload sessions. A backend never decides what is
//! visible to clients: that is the metadata store's job.

mod fs;
mod lock;
mod sealed;

pub use fs::FsBlobStore;
pub use lock::{DataDirLock, LOCK_FILE};

/// The data-directory file naming the encryption-at-rest key its data is
/// sealed with: written by the server (and by a restore), read at start-up
/// to refuse a wrong or missing key, and recorded by backups.
pub const KEY_ID_FILE: &str = "encryption-key-id";

use async_trait::async_trait;
use berth_oci::Digest;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::fmt;
use std::io;

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Identifier of an upload session: 32 lowercase hex characters (128 random
/// bits), so it is unguessable and safe as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub fn random() -> UploadId {
        UploadId(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn parse(s: &str) -> Option<UploadId> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| UploadId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inclusive-exclusive byte range `[start, end)` of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Storage for blobs and in-progress uploads.
///
/// Contract every backend keeps:
/// - `commit_upload` makes the blob durable under its digest atomically: a
///   reader sees either nothing or the whole blob.
/// - `append_upload` either appends the whole stream or leaves the upload at
///   its previous size.
/// - Digests are verified by the caller before `commit_upload`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a stored blob, or `None` when it is absent.
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Streams a blob, or a range of it.
    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream>;

    /// Removes a blob; `false` when it was not there.
    async fn delete(&self, digest: &Digest) -> io::Result<bool>;

    /// Every stored blob (for garbage collection and integrity checks).
    async fn list(&self) -> io::Result<Vec<Digest>>;

    /// Starts an empty upload.
    async fn create_upload(&self, id: &UploadId) -> io::Result<()>;

    /// Appends `data` to an upload and returns its new size.
    async fn append_upload(&self, id: &UploadId, data: ByteStream) -> io::Result<u64>;

    /// Current size of an upload, or `None` when there is no such upload.
    async fn upload_size(&self, id: &UploadId) -> io::Result<Option<u64>>;

    /// Streams an upload's bytes from `offset` (to rebuild a hash after a restart).
    async fn read_upload(&self, id: &UploadId, offset: u64) -> io::Result<ByteStream>;

    /// Moves a complete upload into place as `digest`, durably.
    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> io::Result<()>;

    /// Discards an upload; `false` when it was not there.
    async fn abort_upload(&self, id: &UploadId) -> io::Result<bool>;

    /// Every upload currently held (to remove those no session knows).
    async fn list_uploads(&self) -> io::Result<Vec<UploadId>>;
}
