//! Backup operations: create, verify, restore, forget/prune.

use crate::policy::{self, Policy};
use crate::repo::{BlobEntry, Repository, Snapshot};
use anyhow::{anyhow, bail, Context};
use berth_meta::snapshot::{self as msnap, SnapshotView};
use berth_oci::{Digest, Hasher};
use berth_storage::{BlobStore, ByteStream, FsBlobStore, UploadId, KEY_ID_FILE};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::runtime::Handle;

/// Where a backup reads from: a data directory (of a running or stopped
/// server) and the blob store over it.
pub struct Source {
    pub data_dir: PathBuf,
    pub blobs: Arc<dyn BlobStore>,
    /// Id of the current encryption-at-rest key, when the source encrypts.
    pub encryption_key_id: Option<String>,
}

impl Source {
    pub fn metadata_path(&self) -> PathBuf {
        self.data_dir.join("metadata.db")
    }
}

/// How often a backup starts over with a fresh metadata copy when blobs
/// vanish under it (deleted after the copy was taken).
const MAX_ATTEMPTS: usize = 5;

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Outcome of [`create`] besides the record itself.
#[derive(Debug, Clone)]
pub struct CreateReport {
    pub snapshot: Snapshot,
    pub blobs_reused: u64,
    pub attempts: usize,
}

/// Copies one blob into the repository; `None` when the blob is gone from storage.
fn copy_blob(repo: &Repository, source: &Source, rt: &Handle, digest: &Digest, name: &str) -> anyhow::Result<Option<u64>> {
    let mut stream = match rt.block_on(source.blobs.read(digest, None)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!(e).context(format!("reading blob {digest}"))),
    };
    let first = rt.block_on(stream.next()).transpose().with_context(|| format!("reading blob {digest}"))?;
    let compress = !first.as_deref().map(crate::crypto::looks_compressed).unwrap_or(false);
    let mut hasher = Hasher::new(digest.algorithm());
    repo.write_object(name, compress, |w| {
        let mut next = first;
        while let Some(chunk) = next {
            hasher.update(&chunk);
            w.write_all(&chunk)?;
            next = rt.block_on(stream.next()).transpose().with_context(|| format!("reading blob {digest}"))?;
        }
        let got = std::mem::replace(&mut hasher, Hasher::new(digest.algorithm())).finish();
        if &got != digest {
            bail!("blob {digest} in the data directory is corrupt (its content hashes to {got}); not backed up");
        }
        Ok(())
    })?;
    Ok(Some(std::fs::metadata(repo.object_path(name))?.len()))
}

/// Takes a snapshot. Call from a thread that may block (not an async task);
/// `rt` drives the blob store's reads.
pub fn create(repo: &Repository, source: &Source, rt: &Handle, time: Option<i64>) -> anyhow::Result<CreateReport> {
    let (mut objects_added, mut bytes_added, mut reused) = (0u64, 0u64, 0u64);
    for attempt in 1..=MAX_ATTEMPTS {
        let copy = repo.tmp_dir().join(format!("metadata-{:016x}.db", rand::random::<u64>()));
        let _cleanup = RemoveOnDrop(copy.clone());
        let _pins = match Pins::take(&source.metadata_path(), &copy) {
            Ok(pins) => pins,
            Err(e) => {
                // A read-only data directory, for instance: without pins a
                // blob deleted during the backup makes it start over.
                tracing::warn!(error = %format!("{e:#}"), "could not pin blobs against garbage collection; copying metadata without");
                let _ = std::fs::remove_file(&copy);
                msnap::snapshot_into(&source.metadata_path(), &copy).context("copying metadata")?;
                None
            }
        };
        let view = SnapshotView::open(&copy)?;
        let blobs = view.blobs()?;
        let counts = view.counts()?;
        drop(view);
        let mut vanished = None;
        for (digest, _) in &blobs {
            let name = repo.blob_object(&digest.to_string());
            if repo.has_object(&name) {
                reused += 1;
                continue;
            }
            match copy_blob(repo, source, rt, digest, &name)? {
                Some(n) => {
                    objects_added += 1;
                    bytes_added += n;
                }
                None => {
                    vanished = Some(digest.clone());
                    break;
                }
            }
        }
        if let Some(digest) = vanished {
            // Deleted after our copy of the metadata was taken (garbage
            // collection, a delete)? Then a fresh copy no longer needs it.
            if msnap::blob_referenced(&source.metadata_path(), &digest)? {
                bail!("blob {digest} is referenced by the registry but missing from its storage; the data directory is damaged");
            }
            tracing::info!(%digest, attempt, "a blob was deleted during the backup; taking a fresh metadata copy");
            reused = 0;
            continue;
        }
        let sha = {
            let bytes = std::fs::read(&copy)?;
            crate::crypto::sha256_hex(&bytes)
        };
        let meta_name = repo.metadata_object(&sha);
        if !repo.has_object(&meta_name) {
            let mut file = std::fs::File::open(&copy)?;
            bytes_added += repo.write_object(&meta_name, true, |w| {
                io::copy(&mut file, w)?;
                Ok(())
            })?;
            objects_added += 1;
        }
        let snapshot = Snapshot {
            id: format!("{:016x}", rand::random::<u64>()),
            time: time.unwrap_or_else(now_secs),
            hostname: hostname(),
            source: source.data_dir.display().to_string(),
            metadata_object: meta_name,
            metadata_sha256: sha,
            total_bytes: blobs.iter().map(|(_, s)| s).sum(),
            blobs: blobs.into_iter().map(|(d, size)| BlobEntry { digest: d.to_string(), size }).collect(),
            repositories: counts.repositories,
            manifests: counts.manifests,
            tags: counts.tags,
            objects_added,
            bytes_added,
            berth_version: env!("CARGO_PKG_VERSION").to_string(),
            encryption_keys: source_keys(source),
        };
        repo.write_snapshot(&snapshot)?;
        return Ok(CreateReport { snapshot, blobs_reused: reused, attempts: attempt });
    }
    bail!("blobs kept disappearing during {MAX_ATTEMPTS} attempts (heavy deletion going on?); no snapshot written")
}

/// How long pins outlive the last sign of life of the backup holding them
/// (a backup killed midway stops protecting its blobs after this).
const PIN_LEASE_SECS: i64 = 600;

/// Blobs of one attempt pinned in the live database against garbage
/// collection; a thread renews the lease until this is dropped, which
/// releases the pins.
struct Pins {
    db: PathBuf,
    lease: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Pins {
    /// Copies the metadata into `copy` and pins its blobs; `None` (copy
    /// made, nothing pinned) when the database predates pins.
    fn take(db: &Path, copy: &Path) -> anyhow::Result<Option<Pins>> {
        let lease = format!("{:016x}", rand::random::<u64>());
        if !msnap::snapshot_pinned(db, copy, &lease, now_secs() + PIN_LEASE_SECS).context("copying metadata")? {
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (db2, lease2) = (db.to_path_buf(), lease.clone());
        let renewer = std::thread::spawn(move || {
            let every = std::time::Duration::from_secs((PIN_LEASE_SECS / 5) as u64);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = msnap::refresh_pins(&db2, &lease2, now_secs() + PIN_LEASE_SECS) {
                    tracing::warn!(error = %e, "could not renew the backup's blob pins");
                }
            }
        });
        Ok(Some(Pins { db: db.to_path_buf(), lease, stop: Some(tx), renewer: Some(renewer) }))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if let Err(e) = msnap::release_pins(&self.db, &self.lease) {
            tracing::warn!(error = %e, "could not release the backup's blob pins; they expire on their own");
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub objects: usize,
    pub bytes_read: u64,
    pub unreferenced: usize,
    pub errors: Vec<String>,
}

enum Expect {
    Blob(Digest, u64),
    Metadata(String),
}

/// Checks every snapshot record, that every object they need exists, and
/// with `read_all_data` that every object decrypts and hashes to its digest.
pub fn verify(repo: &Repository, read_all_data: bool) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut needed: BTreeMap<String, (Expect, String)> = BTreeMap::new();
    for id in repo.snapshot_ids()? {
        let snap = match repo.read_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                continue;
            }
        };
        report.snapshots += 1;
        needed.entry(snap.metadata_object.clone()).or_insert((Expect::Metadata(snap.metadata_sha256.clone()), id.clone()));
        for b in &snap.blobs {
            let Ok(digest) = b.digest.parse::<Digest>() else {
                report.errors.push(format!("snapshot {id}: bad digest {}", b.digest));
                continue;
            };
            let name = repo.blob_object(&b.digest);
            needed.entry(name).or_insert((Expect::Blob(digest, b.size), id.clone()));
        }
    }
    let present = repo.list_objects()?;
    report.unreferenced = present.iter().filter(|n| !needed.contains_key(*n)).count();
    for (name, (expect, id)) in &needed {
        report.objects += 1;
        let what = match expect {
            Expect::Blob(d, _) => format!("blob {d}"),
            Expect::Metadata(_) => "metadata".to_string(),
        };
        if !present.contains(name) {
            report.errors.push(format!("snapshot {id}: {what} is missing (object {name})"));
            continue;
        }
        if !read_all_data {
            continue;
        }
        let result = (|| -> anyhow::Result<u64> {
            let mut r = repo.read_object(name)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            match expect {
                Expect::Blob(digest, size) => {
                    let mut h = Hasher::new(digest.algorithm());
                    loop {
                        let k = r.read(&mut buf)?;
                        if k == 0 {
                            break;
                        }
                        h.update(&buf[..k]);
                        n += k as u64;
                    }
                    let got = h.finish();
                    if &got != digest || n != *size {
                        bail!("content hashes to {got} ({n} bytes), expected {size} bytes");
                    }
                }
                Expect::Metadata(sha) => {
                    let mut all = Vec::new();
                    r.read_to_end(&mut all)?;
                    n = all.len() as u64;
                    if &crate::crypto::sha256_hex(&all) != sha {
                        bail!("content does not match its recorded SHA-256");
                    }
                }
            }
            Ok(n)
        })();
        match result {
            Ok(n) => report.bytes_read += n,
            Err(e) => report.errors.push(format!("snapshot {id}: {what} (object {name}): {e:#}")),
        }
    }
    Ok(report)
}

fn check_empty_target(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty; restore into a new or empty data directory", dir.display());
    }
    Ok(())
}

/// Ids of the encryption-at-rest keys a data directory holds data under:
/// its current key, and the one in its marker while a rotation is going on.
fn source_keys(source: &Source) -> Vec<String> {
    let marker = std::fs::read_to_string(source.data_dir.join(KEY_ID_FILE)).ok().map(|s| s.trim().to_string());
    let keys: BTreeSet<String> = source.encryption_key_id.iter().cloned().chain(marker).collect();
    keys.into_iter().collect()
}

/// Ids of the keys sealing manifest bodies in a metadata copy.
fn sealing_keys(view: &SnapshotView) -> anyhow::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for name in view.repositories()? {
        for m in view.manifests(&name)? {
            if let Some(id) = m.stored_body.strip_prefix(berth_crypt::MAGIC).and_then(|rest| rest.get(..8)) {
                ids.insert(hex::encode(id));
            }
        }
    }
    Ok(ids)
}

/// Checks that `keyring` holds every key the snapshot's data is sealed
/// with; returns their ids (none: the snapshot's registry did not encrypt).
fn check_keys(snap: &Snapshot, view: &SnapshotView, keyring: Option<&berth_crypt::Keyring>) -> anyhow::Result<BTreeSet<String>> {
    let mut needed: BTreeSet<String> = snap.encryption_keys.iter().cloned().collect();
    needed.extend(sealing_keys(view)?);
    match keyring {
        None => {
            if let Some(id) = needed.first() {
                bail!(
                    "snapshot {} is of a registry encrypted at rest (key id {id}); give its encryption key \
                     (--config with an [encryption] section, or BERTH_ENCRYPTION_KEY)",
                    snap.id
                );
            }
        }
        Some(ring) => {
            if let Some(id) = needed.iter().find(|id| !hex::decode(id).is_ok_and(|raw| ring.find(&raw).is_some())) {
                bail!(
                    "snapshot {} is encrypted with key id {id}, but the given encryption key has id {}; \
                     give that key (or list it in encryption.previous_key_files to restore under a new key)",
                    snap.id,
                    ring.current().id_hex()
                );
            }
        }
    }
    Ok(needed)
}

/// Decrypts the snapshot's metadata copy into `dest`, checking its hash.
fn restore_metadata(repo: &Repository, snap: &Snapshot, dest: &Path) -> anyhow::Result<()> {
    let mut r = repo.read_object(&snap.metadata_object).context("metadata of the snapshot")?;
    let mut all = Vec::new();
    r.read_to_end(&mut all).context("metadata of the snapshot")?;
    if crate::crypto::sha256_hex(&all) != snap.metadata_sha256 {
        bail!("metadata of snapshot {} does not match its recorded SHA-256", snap.id);
    }
    Ok(write_synced(dest, &all)?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub blobs: u64,
    pub bytes: u64,
    pub manifests: u64,
}

/// Restores a whole snapshot into an empty (or absent) data directory.
/// `keyring` is the target's encryption at rest: required when the
/// snapshot's registry encrypted (manifests stay sealed in the metadata
/// copy, so it must hold the source's key), refused when it did not. On
/// failure everything written is removed again, so the target is left as it
/// was. Call from a blocking thread.
pub fn restore_to_dir(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    keyring: Option<berth_crypt::Keyring>,
    rt: &Handle,
) -> anyhow::Result<RestoreReport> {
    check_empty_target(target)?;
    let created = !target.exists();
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let result = restore_into(repo, snap, target, keyring, rt);
    if result.is_err() {
        // The target was empty: whatever is in it now is ours.
        let cleaned = if created {
            std::fs::remove_dir_all(target)
        } else {
            std::fs::read_dir(target).and_then(|entries| {
                entries.flatten().try_for_each(|e| match e.file_type()?.is_dir() {
                    true => std::fs::remove_dir_all(e.path()),
                    false => std::fs::remove_file(e.path()),
                })
            })
        };
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, target = %target.display(), "could not remove the files of the failed restore");
        }
    }
    result
}

fn restore_into(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    keyring: Option<berth_crypt::Keyring>,
    rt: &Handle,
) -> anyhow::Result<RestoreReport> {
    // Metadata first (into a file the server does not read), so a missing
    // or wrong key is refused before any blob is written.
    let metadata = target.join("metadata.db.restore-tmp");
    restore_metadata(repo, snap, &metadata)?;
    let needed = check_keys(snap, &SnapshotView::open(&metadata)?, keyring.as_ref())?;
    // The marker names the key the data is sealed with: the snapshot's older
    // key when a new current key is given (the server re-encrypts at start-up).
    let marker = match &keyring {
        None => None,
        Some(_) if needed.is_empty() => bail!(
            "snapshot {} is of a registry without encryption at rest; restore it without an encryption key \
             (its plaintext manifests cannot be served from an encrypted data directory)",
            snap.id
        ),
        Some(ring) => {
            let current = ring.current().id_hex();
            Some(needed.into_iter().find(|id| *id != current).unwrap_or(current))
        }
    };
    let store = Arc::new(rt.block_on(FsBlobStore::open_with(target, keyring))?);
    let mut report = RestoreReport::default();
    for b in &snap.blobs {
        let digest: Digest = b.digest.parse().map_err(|_| anyhow!("bad digest {} in snapshot", b.digest))?;
        let name = repo.blob_object(&b.digest);
        let mut reader = repo.read_object(&name).with_context(|| format!("blob {digest}"))?;
        let id = UploadId::random();
        rt.block_on(store.create_upload(&id))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
        let stream: ByteStream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        let (s2, id2) = (store.clone(), id.clone());
        let task = rt.spawn(async move { s2.append_upload(&id2, stream).await });
        let mut h = Hasher::new(digest.algorithm());
        let mut failure = None;
        let mut n = 0u64;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let k = match reader.read(&mut buf) {
                Ok(k) => k,
                Err(e) => {
                    failure = Some(anyhow!("blob {digest}: {e}"));
                    break;
                }
            };
            if k == 0 {
                break;
            }
            buf.truncate(k);
            h.update(&buf);
            n += k as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                break;
            }
        }
        let got = h.finish();
        if failure.is_none() && (got != digest || n != b.size) {
            failure = Some(anyhow!("blob {digest} in the backup hashes to {got} ({n} bytes); refusing to restore it"));
        }
        if failure.is_some() {
            let _ = tx.blocking_send(Err(io::Error::other("restore aborted")));
        }
        drop(tx);
        let appended = rt.block_on(task)?;
        if let Some(e) = failure {
            let _ = rt.block_on(store.abort_upload(&id));
            return Err(e);
        }
        appended.with_context(|| format!("writing blob {digest}"))?;
        rt.block_on(store.commit_upload(&id, &digest)).with_context(|| format!("writing blob {digest}"))?;
        report.blobs += 1;
        report.bytes += n;
    }
    if let Some(id) = marker {
        write_synced(&target.join(KEY_ID_FILE), id.as_bytes())?;
    }
    // Metadata last: until it is in place the directory holds no visible data.
    std::fs::rename(&metadata, target.join("metadata.db"))?;
    std::fs::File::open(target)?.sync_all()?;
    report.manifests = snap.manifests;
    Ok(report)
}

/// Whether `name` matches `pattern`: `*` within a path component, `**` across.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=n.len()).any(|i| m(&p[2..], &n[i..])),
            Some(b'*') => (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != b'/').any(|i| m(&p[1..], &n[i..])),
            Some(c) => n.first() == Some(c) && m(&p[1..], &n[1..]),
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// An answer of the target registry, as [`restore_http`] needs it.
pub struct HttpAnswer {
    pub status: u16,
    pub location: Option<String>,
    pub text: String,
}

/// The HTTP client [`restore_http`] talks through (the binary's own, with
/// TLS and credentials). `path` is a path and query from `/`.
pub trait Http {
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<HttpAnswer>;
}

/// The path and query of an upload `Location` (absolute or not).
fn path_of(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| rest[i..].to_string()).unwrap_or_else(|| "/".into()),
        None => location.to_string(),
    }
}

/// Pushes the repositories of a snapshot matching `pattern` into a running
/// registry over the Distribution API. `keyring` opens manifest bodies when
/// the source encrypted them at rest. Call outside any async runtime.
pub fn restore_http(
    repo: &Repository,
    snap: &Snapshot,
    http: &mut dyn Http,
    pattern: &str,
    keyring: Option<&berth_crypt::Keyring>,
) -> anyhow::Result<RestoreReport> {
    let tmp = std::env::temp_dir().join(format!("berth-restore-{:016x}.db", rand::random::<u64>()));
    let _cleanup = RemoveOnDrop(tmp.clone());
    restore_metadata(repo, snap, &tmp)?;
    let view = SnapshotView::open(&tmp)?;
    check_keys(snap, &view, keyring)?;
    let repos: Vec<String> = view.repositories()?.into_iter().filter(|r| glob_match(pattern, r)).collect();
    if repos.is_empty() {
        bail!("no repository in snapshot {} matches {pattern:?}", snap.id);
    }
    // Reachable, trusted (TLS) and authorized before anything is pushed.
    let probe = http.send("GET", "/v2/", &[], b"")?;
    if probe.status != 200 {
        bail!("GET /v2/: HTTP {} {}", probe.status, probe.text);
    }
    let mut report = RestoreReport::default();
    for name in &repos {
        for (digest, size) in view.repo_blobs(name)? {
            let head = http.send("HEAD", &format!("/v2/{name}/blobs/{digest}"), &[], b"")?;
            if (200..300).contains(&head.status) {
                continue;
            }
            let start = http.send("POST", &format!("/v2/{name}/blobs/uploads/"), &[], b"")?;
            if start.status != 202 {
                bail!("{name}: starting an upload: HTTP {} {}", start.status, start.text);
            }
            let mut location = path_of(start.location.as_deref().unwrap_or(""));
            let mut reader = repo.read_object(&repo.blob_object(&digest.to_string()))?;
            let (mut h, mut n) = (Hasher::new(digest.algorithm()), 0u64);
            loop {
                let mut buf = vec![0u8; 8 << 20];
                let mut filled = 0;
                while filled < buf.len() {
                    let k = reader.read(&mut buf[filled..]).with_context(|| format!("blob {digest}"))?;
                    if k == 0 {
                        break;
                    }
                    filled += k;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                h.update(&buf);
                let range = format!("{}-{}", n, n + filled as u64 - 1);
                let headers = [("Content-Type", "application/octet-stream"), ("Content-Range", range.as_str())];
                let resp = http.send("PATCH", &location, &headers, &buf)?;
                if resp.status != 202 {
                    bail!("{name}: uploading blob {digest}: HTTP {} {}", resp.status, resp.text);
                }
                n += filled as u64;
                if let Some(l) = resp.location {
                    location = path_of(&l);
                }
            }
            if h.finish() != digest || n != size {
                bail!("blob {digest} in the backup does not match its digest; refusing to restore it");
            }
            let sep = if location.contains('?') { '&' } else { '?' };
            let resp = http.send("PUT", &format!("{location}{sep}digest={digest}"), &[], b"")?;
            if resp.status != 201 {
                bail!("{name}: completing blob {digest}: HTTP {} {}", resp.status, resp.text);
            }
            report.blobs += 1;
            report.bytes += n;
        }
        // Children before the indexes that list them.
        let mut pending = view.manifests(name)?;
        let mut done: BTreeSet<Digest> = BTreeSet::new();
        while !pending.is_empty() {
            let (ready, rest): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|m| m.children.iter().all(|c| done.contains(c)));
            if ready.is_empty() {
                bail!("{name}: manifests refer to children that are not in the snapshot");
            }
            pending = rest;
            for m in ready {
                let body = match keyring {
                    Some(ring) if m.stored_body.starts_with(berth_crypt::MAGIC) => berth_crypt::open_value(ring, &m.stored_body)?,
                    _ => m.stored_body.clone(),
                };
                let refs: Vec<String> = if m.tags.is_empty() { vec![m.digest.to_string()] } else { m.tags.clone() };
                for reference in refs {
                    let resp = http.send("PUT", &format!("/v2/{name}/manifests/{reference}"), &[("Content-Type", &m.media_type)], &body)?;
                    if resp.status != 201 {
                        bail!("{name}: manifest {}: HTTP {} {}", m.digest, resp.status, resp.text);
                    }
                }
                done.insert(m.digest.clone());
                report.manifests += 1;
            }
        }
    }
    Ok(report)
}

#[derive(Debug, Default)]
pub struct ForgetReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
}

/// Removes the snapshots `policy` does not keep; with `prune`, deletes every
/// object no remaining snapshot needs. An empty policy keeps everything
/// (only useful with `prune`).
pub fn forget(repo: &Repository, policy: &Policy, prune: bool) -> anyhow::Result<ForgetReport> {
    // Refuses to go on when any record is unreadable: pruning on partial
    // knowledge could delete what a damaged snapshot needs.
    let snaps = repo.snapshots().context("reading snapshot records (fix or remove damaged ones first)")?;
    let keep = if policy.is_empty() {
        (0..snaps.len()).collect()
    } else {
        policy::keep(&snaps.iter().map(|s| s.time).collect::<Vec<_>>(), policy)
    };
    let mut report = ForgetReport::default();
    let mut needed = BTreeSet::new();
    for (i, s) in snaps.iter().enumerate() {
        if keep.contains(&i) {
            report.kept.push(s.id.clone());
            needed.insert(s.metadata_object.clone());
            needed.extend(s.blobs.iter().map(|b| repo.blob_object(&b.digest)));
        } else {
            repo.delete_snapshot(&s.id)?;
            report.removed.push(s.id.clone());
        }
    }
    if prune {
        for name in repo.list_objects()? {
            if !needed.contains(&name) {
                let len = std::fs::metadata(repo.object_path(&name)).map(|m| m.len()).unwrap_or(0);
                repo.delete_object(&name)?;
                report.objects_deleted += 1;
                report.bytes_freed += len;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("**", "a/b/c"));
        assert!(glob_match("a/*", "a/b"));
        assert!(!glob_match("a/*", "a/b/c"));
        assert!(glob_match("a/**", "a/b/c"));
        assert!(glob_match("app", "app"));
        assert!(!glob_match("app", "apps"));
        assert!(glob_match("*-prod", "web-prod"));
    }
}
