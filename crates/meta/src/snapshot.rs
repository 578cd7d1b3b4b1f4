//! Consistent point-in-time copies of the SQLite metadata, and read-only
//! queries on such a copy (for backups). These work on a live database
//! while a server writes to it: WAL lets a reader see one committed state.

use crate::{MetaError, Result};
use berth_oci::Digest;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend(e.to_string())
}

fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(MetaError::Backend(format!("{} does not exist", path.display())));
    }
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(30)).map_err(backend)?;
    Ok(c)
}

/// Writes a consistent copy of the database at `db` to `dest` (which must
/// not exist) with `VACUUM INTO`, then trims what a restored registry must
/// not inherit: upload sessions (their bytes are not part of a snapshot)
/// and blob rows no repository links (their files may be gone).
pub fn snapshot_into(db: &Path, dest: &Path) -> Result<()> {
    copy_into(db, dest)?;
    trim(dest)
}

fn copy_into(db: &Path, dest: &Path) -> Result<()> {
    let src = open_read_only(db)?;
    let dest_str = dest.to_str().ok_or_else(|| backend("snapshot path is not UTF-8"))?;
    src.execute("VACUUM INTO ?1", [dest_str]).map_err(backend)?;
    Ok(())
}

fn trim(dest: &Path) -> Result<()> {
    let copy = Connection::open(dest).map_err(backend)?;
    copy.execute_batch(
        "DELETE FROM uploads;
         DELETE FROM blobs WHERE digest NOT IN (SELECT digest FROM repo_blobs);",
    )
    .map_err(backend)?;
    if has_pin_table(&copy)? {
        copy.execute("DELETE FROM backup_pins", []).map_err(backend)?;
    }
    copy.execute_batch("VACUUM").map_err(backend)?;
    Ok(())
}

fn has_pin_table(c: &Connection) -> Result<bool> {
    let found: Option<i64> = c
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'backup_pins'", [], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(found.is_some())
}

fn open_writable(db: &Path) -> Result<Connection> {
    if !db.exists() {
        return Err(MetaError::Backend(format!("{} does not exist", db.display())));
    }
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(60)).map_err(backend)?;
    Ok(c)
}

/// Like [`snapshot_into`], and pins every blob the copy holds in the live
/// database under `lease` until `expires` (Unix seconds): garbage collection
/// deletes no pinned blob row, and a blob file goes only after its row, so
/// the files stay until [`release_pins`] or the lease expires.
///
/// The pins and the copy describe the same moment: the pins are inserted in
/// a write transaction that stays open while the copy is read (readers are
/// not blocked in WAL mode, and no other writer can commit in between), so
/// every blob of the copy is pinned. Writers wait for the copy (the server's
/// busy timeout covers it). Returns false, having made an unpinned copy,
/// when the database predates pins.
pub fn snapshot_pinned(db: &Path, dest: &Path, lease: &str, expires: i64) -> Result<bool> {
    let mut c = open_writable(db)?;
    if !has_pin_table(&c)? {
        drop(c);
        snapshot_into(db, dest)?;
        return Ok(false);
    }
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    tx.execute("DELETE FROM backup_pins WHERE expires <= ?1", [crate_now()]).map_err(backend)?;
    tx.execute(
        "INSERT OR REPLACE INTO backup_pins(lease, digest, expires) SELECT DISTINCT ?1, digest, ?2 FROM repo_blobs",
        params![lease, expires],
    )
    .map_err(backend)?;
    // Another connection reads the last committed state, which nobody can
    // change until this transaction ends.
    copy_into(db, dest)?;
    tx.commit().map_err(backend)?;
    trim(dest)
        .map(|_| true)
}

/// Extends the pins of `lease` until `expires`.
pub fn refresh_pins(db: &Path, lease: &str, expires: i64) -> Result<()> {
    let c = open_writable(db)?;
    if has_pin_table(&c)? {
        c.execute("UPDATE backup_pins SET expires = ?2 WHERE lease = ?1", params![lease, expires]).map_err(backend)?;
    }
    Ok(())
}

/// Drops the pins of `lease`.
pub fn release_pins(db: &Path, lease: &str) -> Result<()> {
    let c = open_writable(db)?;
    if has_pin_table(&c)? {
        c.execute("DELETE FROM backup_pins WHERE lease = ?1", [lease]).map_err(backend)?;
    }
    Ok(())
}

fn crate_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Whether any repository of the (live) database at `db` still links `digest`.
pub fn blob_referenced(db: &Path, digest: &Digest) -> Result<bool> {
    let c = open_read_only(db)?;
    let found: Option<i64> = c
        .query_row("SELECT 1 FROM repo_blobs WHERE digest = ?1 LIMIT 1", [digest.to_string()], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    Ok(found.is_some())
}

/// A manifest as found in a snapshot, with its body as stored (sealed when
/// the source registry encrypts manifests at rest).
#[derive(Debug, Clone)]
pub struct SnapshotManifest {
    pub repo: String,
    pub digest: Digest,
    pub media_type: String,
    pub stored_body: Vec<u8>,
    pub children: Vec<Digest>,
    pub tags: Vec<String>,
}

/// Counts of what a snapshot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotCounts {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
}

/// Read-only view of a metadata copy made by [`snapshot_into`].
pub struct SnapshotView {
    conn: Connection,
}

impl SnapshotView {
    pub fn open(path: &Path) -> Result<SnapshotView> {
        Ok(SnapshotView { conn: open_read_only(path)? })
    }

    /// Every distinct blob some repository links, with its size.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT b.digest, b.size FROM blobs b
                 WHERE EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest) ORDER BY b.digest",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        rows.into_iter()
            .map(|(d, s)| Ok((d.parse().map_err(|_| backend(format!("bad digest in metadata: {d}")))?, s as u64)))
            .collect()
    }

    pub fn counts(&self) -> Result<SnapshotCounts> {
        let q = |sql: &str| -> Result<u64> { self.conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(backend) };
        Ok(SnapshotCounts {
            repositories: q("SELECT COUNT(*) FROM repositories r WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)")?,
            manifests: q("SELECT COUNT(*) FROM manifests")?,
            tags: q("SELECT COUNT(*) FROM tags")?,
            blobs: q("SELECT COUNT(DISTINCT digest) FROM repo_blobs")?,
        })
    }

    /// Repositories holding at least one manifest.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM repositories r WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) ORDER BY name")
            .map_err(backend)?;
        let names = stmt.query_map([], |r| r.get(0)).map_err(backend)?.collect::<rusqlite::Result<Vec<String>>>();
        names.map_err(backend)
    }

    /// Blobs `repo` links, with sizes.
    pub fn repo_blobs(&self, repo: &str) -> Result<Vec<(Digest, u64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT rb.digest, b.size FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest WHERE r.name = ?1 ORDER BY rb.digest",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([repo], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        rows.into_iter().filter_map(|(d, s)| Some(Ok((d.parse().ok()?, s as u64)))).collect()
    }

    /// Manifests of `repo` with their child manifests and tags.
    pub fn manifests(&self, repo: &str) -> Result<Vec<SnapshotManifest>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.repo_id, m.digest, m.media_type, m.body FROM manifests m
                 JOIN repositories r ON r.id = m.repo_id WHERE r.name = ?1 ORDER BY m.created_at, m.digest",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([repo], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Vec<u8>>(3)?)))
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        let mut out = Vec::new();
        for (repo_id, digest, media_type, stored_body) in rows {
            let strings = |sql: &str| -> Result<Vec<String>> {
                let mut s = self.conn.prepare(sql).map_err(backend)?;
                let v = s
                    .query_map(params![repo_id, digest], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(backend)?;
                Ok(v)
            };
            let children = strings("SELECT target FROM manifest_refs WHERE repo_id = ?1 AND manifest = ?2 AND kind = 1")?
                .into_iter()
                .filter_map(|d| d.parse().ok())
                .collect();
            let tags = strings("SELECT name FROM tags WHERE repo_id = ?1 AND digest = ?2 ORDER BY name")?;
            let Ok(digest) = digest.parse() else { continue };
            out.push(SnapshotManifest { repo: repo.to_string(), digest, media_type, stored_body, children, tags });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManifestRecord, MetadataStore, SqliteMetadata};
    use berth_oci::{RepoName, Tag};
    use bytes::Bytes;

    #[tokio::test]
    async fn snapshot_is_consistent_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let db = SqliteMetadata::open(&path).unwrap();
        let repo = RepoName::parse("a/b").unwrap();
        let blob = Digest::sha256_of(b"layer");
        db.link_blob(&repo, &blob, 5).await.unwrap();
        let body = b"{}".to_vec();
        let record = ManifestRecord {
            digest: Digest::sha256_of(&body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            body: Bytes::from(body),
            subject: None,
            annotations_json: None,
            blobs: vec![blob.clone()],
            children: vec![],
            search: Default::default(),
        };
        db.put_manifest(&repo, record.clone(), Some(&Tag::parse("v1").unwrap())).await.unwrap();
        db.create_upload("u1", &repo, 1).await.unwrap();
        let orphan = Digest::sha256_of(b"orphan");
        db.link_blob(&repo, &orphan, 6).await.unwrap();
        db.unlink_blob(&repo, &orphan).await.unwrap();

        let copy = dir.path().join("copy.db");
        snapshot_into(&path, &copy).unwrap();
        // Writes after the snapshot do not show up in it.
        db.link_blob(&repo, &Digest::sha256_of(b"later"), 5).await.unwrap();
        let view = SnapshotView::open(&copy).unwrap();
        assert_eq!(view.blobs().unwrap(), vec![(blob.clone(), 5)]);
        assert_eq!(view.counts().unwrap(), SnapshotCounts { repositories: 1, manifests: 1, tags: 1, blobs: 1 });
        assert_eq!(view.repositories().unwrap(), vec!["a/b"]);
        let ms = view.manifests("a/b").unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].tags, vec!["v1"]);
        assert!(blob_referenced(&path, &blob).unwrap());
        assert!(!blob_referenced(&path, &orphan).unwrap());
        drop(view);
        // The copy opens as a registry database (schema version kept), without uploads.
        let restored = SqliteMetadata::open(&copy).unwrap();
        assert!(restored.get_upload("u1").await.unwrap().is_none());
        assert!(restored.any_blob(&orphan).await.unwrap().is_none());
        assert_eq!(restored.list_tags(&repo, None, 10).await.unwrap(), Some(vec!["v1".to_string()]));
    }

    #[tokio::test]
    async fn pinned_blobs_survive_collection_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let db = SqliteMetadata::open(&path).unwrap();
        let repo = RepoName::parse("a").unwrap();
        let kept = Digest::sha256_of(b"kept");
        db.link_blob(&repo, &kept, 4).await.unwrap();
        let copy = dir.path().join("copy.db");
        assert!(snapshot_pinned(&path, &copy, "lease1", crate_now() + 600).unwrap());
        assert_eq!(SnapshotView::open(&copy).unwrap().blobs().unwrap(), vec![(kept.clone(), 4)]);
        // Deleted after the copy: collection keeps the pinned row (and so the file).
        db.unlink_blob(&repo, &kept).await.unwrap();
        assert_eq!(db.delete_blob_if_unused(&kept).await.unwrap(), None);
        refresh_pins(&path, "lease1", crate_now() + 1200).unwrap();
        assert_eq!(db.delete_blob_if_unused(&kept).await.unwrap(), None);
        // A copy never carries pins into a restored registry.
        let copy2 = dir.path().join("copy2.db");
        snapshot_into(&path, &copy2).unwrap();
        let c = Connection::open(&copy2).unwrap();
        assert_eq!(c.query_row("SELECT COUNT(*) FROM backup_pins", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
        let c = Connection::open(&copy).unwrap();
        assert_eq!(c.query_row("SELECT COUNT(*) FROM backup_pins", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
        release_pins(&path, "lease1").unwrap();
        assert_eq!(db.delete_blob_if_unused(&kept).await.unwrap(), Some(4));
        // An expired lease (a backup killed midway) pins nothing.
        db.link_blob(&repo, &kept, 4).await.unwrap();
        assert!(snapshot_pinned(&path, &dir.path().join("copy3.db"), "dead", crate_now() - 1).unwrap());
        db.unlink_blob(&repo, &kept).await.unwrap();
        assert_eq!(db.delete_blob_if_unused(&kept).await.unwrap(), Some(4));
    }
}
