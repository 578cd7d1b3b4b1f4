//! Blob uploads: sessions, chunks, verification and commit.

use crate::{now_secs, Registry, RegistryError, Result};
use berth_oci::{Algorithm, Digest, Hasher, RepoName};
use berth_storage::{ByteStream, UploadId};
use futures::StreamExt;
use std::sync::Arc;

/// The hash of the first `hashed` bytes of an upload.
pub(crate) struct HashState {
    hasher: Hasher,
    hashed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received so far.
    pub size: u64,
}

/// Wraps a stream so every chunk passing through updates `hasher`.
fn hashing(stream: ByteStream, state: Arc<std::sync::Mutex<Hasher>>) -> ByteStream {
    stream
        .map(move |chunk| {
            if let Ok(bytes) = &chunk {
                state.lock().unwrap().update(bytes);
            }
            chunk
        })
        .boxed()
}

impl Registry {
    fn session(&self, id: &UploadId, algorithm: Algorithm) -> Arc<tokio::sync::Mutex<HashState>> {
        let mut sessions = self.sessions.lock().unwrap();
        let entry = sessions
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(HashState { hasher: Hasher::new(algorithm), hashed: 0 })))
            .clone();
        metrics::gauge!("berth_uploads_in_flight").set(sessions.len() as f64);
        entry
    }

    fn forget_session(&self, id: &UploadId) {
        let mut sessions = self.sessions.lock().unwrap();
        sessions.remove(id.as_str());
        metrics::gauge!("berth_uploads_in_flight").set(sessions.len() as f64);
    }

    /// Opens an upload session. `algorithm` is the client's hint of the
    /// digest it will name at the end (sha256 when absent).
    pub async fn start_upload(&self, repo: &RepoName, algorithm: Option<Algorithm>) -> Result<UploadStatus> {
        let id = UploadId::random();
        // Session first: the expiry sweep never removes data a session knows.
        self.session(&id, algorithm.unwrap_or(Algorithm::Sha256));
        let created = async {
            self.blobs.create_upload(&id).await?;
            self.meta.create_upload(id.as_str(), repo, now_secs()).await?;
            Ok::<_, RegistryError>(())
        }
        .await;
        if let Err(e) = created {
            self.discard_upload(&id).await;
            return Err(e);
        }
        Ok(UploadStatus { id, size: 0 })
    }

    /// Finds an upload that belongs to `repo`.
    async fn check_upload(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        match self.meta.get_upload(id.as_str()).await? {
            Some(rec) if &rec.repo == repo => {}
            _ => return Err(RegistryError::BlobUploadUnknown),
        }
        self.blobs.upload_size(id).await?.ok_or(RegistryError::BlobUploadUnknown)
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let size = self.check_upload(repo, id).await?;
        Ok(UploadStatus { id: id.clone(), size })
    }

    /// Appends a chunk. `start` is where the client says the chunk begins
    /// (from Content-Range); it must equal the bytes held so far.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        self.check_upload(repo, id).await?;
        let session = self.session(id, Algorithm::Sha256);
        let mut state = session.lock().await;
        // Size read under the session lock: concurrent chunks serialize here.
        let size = self.blobs.upload_size(id).await?.ok_or(RegistryError::BlobUploadUnknown)?;
        if let Some(start) = start {
            if start != size {
                return Err(RegistryError::ChunkOutOfOrder { current_size: size });
            }
        }
        self.catch_up(id, &mut state).await?;
        let size = self.append_hashed(id, &mut state, data).await?;
        self.meta.touch_upload(id.as_str(), now_secs()).await?;
        Ok(UploadStatus { id: id.clone(), size })
    }

    /// Hashes stored bytes the in-memory state has not seen (after a restart).
    async fn catch_up(&self, id: &UploadId, state: &mut HashState) -> Result<()> {
        let size = self.blobs.upload_size(id).await?.ok_or(RegistryError::BlobUploadUnknown)?;
        if state.hashed > size {
            // Should not happen; start over rather than trust the state.
            state.hasher = Hasher::new(state.hasher.algorithm());
            state.hashed = 0;
        }
        if state.hashed < size {
            let mut rest = self.blobs.read_upload(id, state.hashed).await?;
            while let Some(chunk) = rest.next().await {
                let chunk = chunk?;
                state.hasher.update(&chunk);
                state.hashed += chunk.len() as u64;
            }
        }
        Ok(())
    }

    async fn append_hashed(&self, id: &UploadId, state: &mut HashState, data: ByteStream) -> Result<u64> {
        let hasher = Arc::new(std::sync::Mutex::new(state.hasher.clone()));
        match self.blobs.append_upload(id, hashing(data, hasher.clone())).await {
            Ok(size) => {
                state.hasher = Arc::try_unwrap(hasher)
                    .map(|m| m.into_inner().unwrap())
                    .unwrap_or_else(|shared| shared.lock().unwrap().clone());
                state.hashed = size;
                Ok(size)
            }
            // The store rolled back to the previous size; so does the hash.
            Err(e) => Err(RegistryError::BlobUploadInvalid(format!("upload interrupted: {e}"))),
        }
    }

    /// Finishes an upload: appends the final chunk (if any), verifies the
    /// digest over every byte, makes the blob durable and then visible.
    pub async fn complete_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        data: Option<ByteStream>,
    ) -> Result<()> {
        self.check_upload(repo, id).await?;
        let session = self.session(id, digest.algorithm());
        let mut state = session.lock().await;
        let size = self.blobs.upload_size(id).await?.ok_or(RegistryError::BlobUploadUnknown)?;
        if let Some(start) = start {
            if start != size {
                return Err(RegistryError::ChunkOutOfOrder { current_size: size });
            }
        }
        if state.hasher.algorithm() != digest.algorithm() {
            // The client named another algorithm than the one hashed so far.
            state.hasher = Hasher::new(digest.algorithm());
            state.hashed = 0;
        }
        self.catch_up(id, &mut state).await?;
        let size = match data {
            Some(data) => self.append_hashed(id, &mut state, data).await?,
            None => size,
        };
        let actual = std::mem::replace(&mut state.hasher, Hasher::new(digest.algorithm())).finish();
        state.hashed = 0;
        if &actual != digest {
            // Nothing is stored; the session is gone, as after a cancel.
            self.discard_upload(id).await;
            return Err(RegistryError::DigestInvalid(format!(
                "uploaded content has digest {actual}, not {digest}"
            )));
        }
        if let Err(e) = self.commit_and_link(repo, id, digest, size).await {
            if matches!(e, RegistryError::Denied(_)) {
                // Refused by quota: nothing of it is kept.
                tracing::info!(%repo, %digest, reason = %e, "upload refused");
                drop(state);
                self.discard_upload(id).await;
            }
            return Err(e);
        }
        self.meta.delete_upload(id.as_str()).await?;
        drop(state);
        self.forget_session(id);
        Ok(())
    }

    /// Single-request upload (`POST ?digest=`).
    pub async fn upload_monolithic(&self, repo: &RepoName, digest: &Digest, data: ByteStream) -> Result<()> {
        let id = UploadId::random();
        // Registered as a session only so the expiry sweep leaves it alone.
        self.session(&id, digest.algorithm());
        // If the client hangs up, this future is dropped mid-way: the
        // session goes with it, so the next sweep removes the partial file.
        struct Forget<'a>(&'a Registry, &'a UploadId);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget_session(self.1);
            }
        }
        let _forget = Forget(self, &id);
        if let Err(e) = self.blobs.create_upload(&id).await {
            return Err(e.into());
        }
        let mut state = HashState { hasher: Hasher::new(digest.algorithm()), hashed: 0 };
        let outcome = async {
            let size = self.append_hashed(&id, &mut state, data).await?;
            let actual = state.hasher.clone().finish();
            if &actual != digest {
                return Err(RegistryError::DigestInvalid(format!(
                    "uploaded content has digest {actual}, not {digest}"
                )));
            }
            Ok(size)
        }
        .await;
        match outcome {
            Ok(size) => {
                let committed = self.commit_and_link(repo, &id, digest, size).await;
                if committed.is_err() {
                    let _ = self.blobs.abort_upload(&id).await;
                }
                committed
            }
            Err(e) => {
                let _ = self.blobs.abort_upload(&id).await;
                Err(e)
            }
        }
    }

    /// Checks quotas, then makes a verified upload durable and visible.
    /// Holds the digest lock from the file's rename to the link, so a
    /// collection never deletes a file whose row is about to appear.
    async fn commit_and_link(&self, repo: &RepoName, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let _quota = match self.has_quota(repo) {
            true => Some(self.quota_lock.lock().await),
            false => None,
        };
        if _quota.is_some() {
            self.check_quota(repo, digest, size).await?;
        }
        let _digest = self.lock_digest(digest).await;
        self.blobs.commit_upload(id, digest).await?;
        self.meta.link_blob(repo, digest, size).await?;
        Ok(())
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.check_upload(repo, id).await?;
        self.discard_upload(id).await;
        Ok(())
    }

    async fn discard_upload(&self, id: &UploadId) {
        if let Err(e) = self.blobs.abort_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not remove upload data");
        }
        if let Err(e) = self.meta.delete_upload(id.as_str()).await {
            tracing::warn!(upload = %id, error = %e, "could not remove upload record");
        }
        self.forget_session(id);
    }

    /// Removes upload sessions idle for longer than the configured TTL, and
    /// upload data no session knows (left by a crash). Returns how many went.
    pub async fn expire_uploads(&self) -> Result<usize> {
        let before = now_secs() - self.config.upload_ttl.as_secs() as i64;
        let mut removed = 0;
        for id in self.meta.idle_uploads(before).await? {
            if let Some(id) = UploadId::parse(&id) {
                self.discard_upload(&id).await;
                removed += 1;
            } else {
                self.meta.delete_upload(&id).await?;
            }
        }
        for id in self.blobs.list_uploads().await? {
            if self.meta.get_upload(id.as_str()).await?.is_none() && !self.sessions.lock().unwrap().contains_key(id.as_str()) {
                // Monolithic uploads have no record; give them the TTL too.
                self.blobs.abort_upload(&id).await.ok();
                removed += 1;
            }
        }
        Ok(removed)
    }
}
