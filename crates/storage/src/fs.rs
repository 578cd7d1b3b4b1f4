//! Filesystem driver.
//!
//! Layout under the root:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: committed blobs, fanned out
//!   by digest prefix so no directory grows huge;
//! - `uploads/<upload id>`: in-progress uploads.
//!
//! Every path is built from a validated [`Digest`] or [`UploadId`], never
//! from a client string.

use berth_crypt::Keyring;
use crate::{sealed, BlobStore, ByteRange, ByteStream, UploadId};
use async_trait::async_trait;
use berth_oci::{Algorithm, Digest};
use futures::StreamExt;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use tokio::fs;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

/// Read and write buffer size: large enough that the per-operation cost of
/// tokio's blocking file I/O is negligible.
const IO_BUF: usize = 1 << 20;

pub struct FsBlobStore {
    root: PathBuf,
    /// When set, every stored file is encrypted (see [`berth_crypt`]).
    keyring: Option<Keyring>,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<FsBlobStore> {
        Self::open_with(root, None).await
    }

    /// Opens a store that encrypts what it writes with `keyring`.
    pub async fn open_with(root: impl Into<PathBuf>, keyring: Option<Keyring>) -> io::Result<FsBlobStore> {
        let root = root.into();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            fs::create_dir_all(root.join("blobs").join(alg.as_str())).await?;
        }
        fs::create_dir_all(root.join("uploads")).await?;
        Ok(FsBlobStore { root, keyring })
    }

    /// Re-encrypts every blob not sealed with the current key (after a key
    /// rotation). Online-safe: each blob is rewritten to a temporary file and
    /// renamed over the old one; readers keep the file they opened.
    pub async fn reencrypt_all(&self) -> io::Result<usize> {
        let Some(ring) = self.keyring.clone() else { return Ok(0) };
        let mut done = 0;
        for digest in self.list().await? {
            let path = self.blob_path(&digest);
            let ring = ring.clone();
            let rewritten = blocking(move || sealed::reseal_if_old(&path, &ring)).await?;
            done += rewritten as usize;
        }
        Ok(done)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs").join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// fsync a directory so a rename or create inside it survives a crash.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

async fn stream_file(path: PathBuf, range: Option<ByteRange>) -> io::Result<ByteStream> {
    let mut file = fs::File::open(&path).await?;
    let stream = match range {
        Some(r) => {
            file.seek(SeekFrom::Start(r.start)).await?;
            use tokio::io::AsyncReadExt;
            ReaderStream::with_capacity(file.take(r.end - r.start), IO_BUF).boxed()
        }
        None => ReaderStream::with_capacity(file, IO_BUF).boxed(),
    };
    Ok(stream)
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let path = self.blob_path(digest);
        if self.keyring.is_some() {
            return not_found_is_none(blocking(move || sealed::blob_len(&path)).await);
        }
        Ok(not_found_is_none(fs::metadata(path).await)?.map(|m| m.len()))
    }

    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream> {
        let path = self.blob_path(digest);
        if let Some(ring) = self.keyring.clone() {
            return blocking(move || sealed::read_blob(&path, ring, range)).await;
        }
        stream_file(path, range).await
    }

    async fn delete(&self, digest: &Digest) -> io::Result<bool> {
        Ok(not_found_is_none(fs::remove_file(self.blob_path(digest)).await)?.is_some())
    }

    async fn list(&self) -> io::Result<Vec<Digest>> {
        let root = self.root.join("blobs");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for alg in std::fs::read_dir(&root)? {
                let alg = alg?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for prefix in std::fs::read_dir(alg.path())? {
                    for blob in std::fs::read_dir(prefix?.path())? {
                        let name = blob?.file_name().to_string_lossy().into_owned();
                        if let Ok(d) = format!("{alg_name}:{name}").parse() {
                            out.push(d);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn create_upload(&self, id: &UploadId) -> io::Result<()> {
        if let Some(ring) = self.keyring.clone() {
            let path = self.upload_path(id);
            return blocking(move || sealed::create(&path, &ring)).await;
        }
        fs::OpenOptions::new().write(true).create_new(true).open(self.upload_path(id)).await?;
        Ok(())
    }

    async fn append_upload(&self, id: &UploadId, mut data: ByteStream) -> io::Result<u64> {
        let path = self.upload_path(id);
        if let Some(ring) = self.keyring.clone() {
            return append_sealed(path, ring, data).await;
        }
        let mut file = fs::OpenOptions::new().append(true).open(&path).await?;
        let start = file.metadata().await?.len();
        let mut writer = BufWriter::with_capacity(IO_BUF, &mut file);
        let mut written = 0u64;
        let result: io::Result<()> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                writer.write_all(&chunk).await?;
                written += chunk.len() as u64;
            }
            writer.flush().await
        }
        .await;
        if let Err(e) = result {
            // Keep the contract: all or nothing.
            drop(writer);
            file.set_len(start).await?;
            return Err(e);
        }
        Ok(start + written)
    }

    async fn upload_size(&self, id: &UploadId) -> io::Result<Option<u64>> {
        if let Some(ring) = self.keyring.clone() {
            let path = self.upload_path(id);
            return not_found_is_none(blocking(move || sealed::upload_scan(&path, &ring).map(|(n, _, _)| n)).await);
        }
        Ok(not_found_is_none(fs::metadata(self.upload_path(id)).await)?.map(|m| m.len()))
    }

    async fn read_upload(&self, id: &UploadId, offset: u64) -> io::Result<ByteStream> {
        let path = self.upload_path(id);
        if let Some(ring) = self.keyring.clone() {
            // Used only to rebuild a hash after a restart: decrypt record by record.
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
            tokio::task::spawn_blocking(move || {
                let mut seen = 0u64;
                let r = sealed::for_each_record(&path, &ring, |plain| {
                    let len = plain.len() as u64;
                    if seen + len > offset {
                        let from = offset.saturating_sub(seen) as usize;
                        tx.blocking_send(Ok(bytes::Bytes::copy_from_slice(&plain[from..]))).map_err(io::Error::other)?;
                    }
                    seen += len;
                    Ok(())
                });
                if let Err(e) = r {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            return Ok(tokio_stream_from(rx));
        }
        let len = fs::metadata(&path).await?.len();
        stream_file(path, Some(ByteRange { start: offset.min(len), end: len })).await
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> io::Result<()> {
        let src = self.upload_path(id);
        let dst = self.blob_path(digest);
        if let Some(ring) = self.keyring.clone() {
            let dir = dst.parent().expect("blob path has a parent").to_path_buf();
            fs::create_dir_all(&dir).await?;
            let tmp = dir.join(format!(".{}.tmp", id.as_str()));
            let (t, s2) = (tmp.clone(), src.clone());
            blocking(move || sealed::seal_blob(&s2, &t, &ring)).await?;
            fs::rename(&tmp, &dst).await?;
            sync_dir(&dir).await?;
            fs::remove_file(&src).await?;
            return Ok(());
        }
        let file = fs::OpenOptions::new().read(true).open(&src).await?;
        file.sync_all().await?;
        drop(file);
        let dir = dst.parent().expect("blob path has a parent").to_path_buf();
        fs::create_dir_all(&dir).await?;
        // Same content under the same name: an existing blob is as good as
        // ours, so renaming over it is harmless and keeps this idempotent.
        fs::rename(&src, &dst).await?;
        sync_dir(&dir).await?;
        Ok(())
    }

    async fn abort_upload(&self, id: &UploadId) -> io::Result<bool> {
        Ok(not_found_is_none(fs::remove_file(self.upload_path(id)).await)?.is_some())
    }

    async fn list_uploads(&self) -> io::Result<Vec<UploadId>> {
        let mut out = Vec::new();
        let mut dir = fs::read_dir(self.root.join("uploads")).await?;
        while let Some(entry) = dir.next_entry().await? {
            if let Some(id) = UploadId::parse(&entry.file_name().to_string_lossy()) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Appends to an encrypted upload in sealed records; all or nothing.
async fn append_sealed(path: PathBuf, ring: Keyring, mut data: ByteStream) -> io::Result<u64> {
    let (p, r) = (path.clone(), ring.clone());
    let (mut size, _, start_len) = blocking(move || sealed::upload_scan(&p, &r)).await?;
    let result: io::Result<u64> = async {
        let mut pending: Vec<bytes::Bytes> = Vec::new();
        let mut pending_len = 0usize;
        loop {
            let next = data.next().await.transpose()?;
            let done = next.is_none();
            if let Some(chunk) = next {
                pending_len += chunk.len();
                pending.push(chunk);
            }
            if pending_len >= berth_crypt::MAX_RECORD || (done && pending_len > 0) {
                let joined = bytes::Bytes::from(pending.concat());
                pending.clear();
                pending_len = 0;
                let (p, r) = (path.clone(), ring.clone());
                size = blocking(move || sealed::append_records(&p, &r, &[joined])).await?;
            }
            if done {
                return Ok(size);
            }
        }
    }
    .await;
    if result.is_err() {
        let p = path.clone();
        blocking(move || sealed::truncate_to(&p, start_len)).await?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream(parts: Vec<io::Result<Bytes>>) -> ByteStream {
        futures::stream::iter(parts).boxed()
    }

    async fn collect(s: ByteStream) -> Vec<u8> {
        let parts: Vec<_> = s.collect().await;
        parts.into_iter().flat_map(|p| p.unwrap().to_vec()).collect()
    }

    #[tokio::test]
    async fn upload_commit_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        let n = store.append_upload(&id, stream(vec![Ok(Bytes::from_static(b"hello "))])).await.unwrap();
        assert_eq!(n, 6);
        let n = store.append_upload(&id, stream(vec![Ok(Bytes::from_static(b"world"))])).await.unwrap();
        assert_eq!(n, 11);
        let digest = Digest::sha256_of(b"hello world");
        store.commit_upload(&id, &digest).await.unwrap();
        assert_eq!(store.stat(&digest).await.unwrap(), Some(11));
        assert_eq!(store.upload_size(&id).await.unwrap(), None);
        assert_eq!(collect(store.read(&digest, None).await.unwrap()).await, b"hello world");
        let part = store.read(&digest, Some(ByteRange { start: 6, end: 9 })).await.unwrap();
        assert_eq!(collect(part).await, b"wor");
        assert_eq!(store.list().await.unwrap(), vec![digest.clone()]);
        assert!(store.delete(&digest).await.unwrap());
        assert!(!store.delete(&digest).await.unwrap());
    }

    #[tokio::test]
    async fn failed_append_leaves_previous_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id = UploadId::random();
        store.create_upload(&id).await.unwrap();
        store.append_upload(&id, stream(vec![Ok(Bytes::from_static(b"abc"))])).await.unwrap();
        let broken = stream(vec![Ok(Bytes::from_static(b"def")), Err(io::Error::other("client went away"))]);
        assert!(store.append_upload(&id, broken).await.is_err());
        assert_eq!(store.upload_size(&id).await.unwrap(), Some(3));
        assert_eq!(store.list_uploads().await.unwrap(), vec![id.clone()]);
        assert!(store.abort_upload(&id).await.unwrap());
    }
}
