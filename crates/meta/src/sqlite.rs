//! Embedded metadata store: SQLite in WAL mode with one writer connection
//! and a small pool of readers. Calls run on tokio's blocking threads.

use crate::{
    BlobLink, GcSnapshot, ManifestNode, ManifestRecord, MetaError, MetadataStore, PullCount, Referrer, RepoFilter,
    RepoSnapshot, RepositoryInfo, Result, SearchPage, SearchQuery, StoredManifest, TagInfo, UntaggedDeletion,
    UploadRecord,
};
use std::collections::{HashMap, HashSet};
use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepoName, Tag};
use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE repositories (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE repo_blobs (
    repo_id    INTEGER NOT NULL REFERENCES repositories(id),
    digest     TEXT NOT NULL REFERENCES blobs(digest),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
CREATE TABLE manifests (
    repo_id       INTEGER NOT NULL REFERENCES repositories(id),
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    size          INTEGER NOT NULL,
    body          BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests(repo_id, subject) WHERE subject IS NOT NULL;
CREATE TABLE manifest_refs (
    repo_id  INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    target   TEXT NOT NULL,
    kind     INTEGER NOT NULL, -- 0 blob, 1 child manifest
    PRIMARY KEY (repo_id, manifest, target, kind)
) WITHOUT ROWID;
CREATE INDEX manifest_refs_by_target ON manifest_refs(target);
CREATE TABLE tags (
    repo_id    INTEGER NOT NULL REFERENCES repositories(id),
    name       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name)
) WITHOUT ROWID;
CREATE INDEX tags_by_digest ON tags(repo_id, digest);
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    repo       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
// Garbage collection: when each blob link and manifest was last written or
// confirmed, so recent pushes survive a collection running at the same time.
r#"
ALTER TABLE repo_blobs ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
UPDATE repo_blobs SET last_seen = created_at;
ALTER TABLE manifests ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
UPDATE manifests SET last_seen = created_at;
CREATE INDEX repo_blobs_by_digest ON repo_blobs(digest);
"#,
// Search: one full-text document per repository (trigram, so substrings of
// names match), per-manifest fields extracted at push time, label and
// platform filters, and pull counters. Triggers mark repositories whose
// tags or manifests changed; the writing transaction re-indexes them before
// it commits (see `reindex_dirty`).
r#"
CREATE VIRTUAL TABLE search_docs USING fts5(name, tags, body, tokenize = 'trigram', content = '', contentless_delete = 1);
CREATE TABLE search_manifests (
    repo_id     INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    title       TEXT,
    description TEXT,
    labels      TEXT,
    platforms   TEXT,
    created     TEXT,
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
CREATE TABLE search_repos (
    repo_id     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    tags        TEXT NOT NULL,
    description TEXT,
    platforms   TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE search_labels (
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    repo_id INTEGER NOT NULL,
    PRIMARY KEY (key, value, repo_id)
) WITHOUT ROWID;
CREATE TABLE search_platforms (
    platform TEXT NOT NULL,
    repo_id  INTEGER NOT NULL,
    PRIMARY KEY (platform, repo_id)
) WITHOUT ROWID;
CREATE INDEX search_labels_by_repo ON search_labels(repo_id);
CREATE INDEX search_platforms_by_repo ON search_platforms(repo_id);
CREATE TABLE search_dirty (repo_id INTEGER PRIMARY KEY);
CREATE TABLE pulls (
    repo_id   INTEGER NOT NULL,
    digest    TEXT NOT NULL,
    count     INTEGER NOT NULL,
    last_pull INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
CREATE TRIGGER search_tags_ins AFTER INSERT ON tags BEGIN
    INSERT OR IGNORE INTO search_dirty(repo_id) VALUES (NEW.repo_id);
END;
CREATE TRIGGER search_tags_upd AFTER UPDATE ON tags BEGIN
    INSERT OR IGNORE INTO search_dirty(repo_id) VALUES (NEW.repo_id);
END;
CREATE TRIGGER search_tags_del AFTER DELETE ON tags BEGIN
    INSERT OR IGNORE INTO search_dirty(repo_id) VALUES (OLD.repo_id);
END;
CREATE TRIGGER search_manifests_ins AFTER INSERT ON manifests BEGIN
    INSERT OR IGNORE INTO search_dirty(repo_id) VALUES (NEW.repo_id);
END;
CREATE TRIGGER search_manifests_del AFTER DELETE ON manifests BEGIN
    DELETE FROM search_manifests WHERE repo_id = OLD.repo_id AND digest = OLD.digest;
    DELETE FROM pulls WHERE repo_id = OLD.repo_id AND digest = OLD.digest;
    INSERT OR IGNORE INTO search_dirty(repo_id) VALUES (OLD.repo_id);
END;
INSERT INTO search_dirty(repo_id) SELECT id FROM repositories;
"#,
// Search at scale: the name suffixes that start at a path component (exact
// and prefix matches of names are index lookups) and names in order.
r#"
CREATE TABLE search_suffixes (
    suffix  TEXT NOT NULL,
    repo_id INTEGER NOT NULL,
    PRIMARY KEY (suffix, repo_id)
) WITHOUT ROWID;
CREATE INDEX search_suffixes_by_repo ON search_suffixes(repo_id);
CREATE INDEX search_repos_by_name ON search_repos(name);
INSERT OR IGNORE INTO search_dirty(repo_id) SELECT repo_id FROM search_repos;
"#,
// Backups: blobs a running backup still has to copy. Garbage collection
// keeps a pinned blob's row (and so its file) until the lease expires.
r#"
CREATE TABLE backup_pins (
    lease   TEXT NOT NULL,
    digest  TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (lease, digest)
) WITHOUT ROWID;
CREATE INDEX backup_pins_by_digest ON backup_pins(digest);
"#];

const READERS: usize = 8;

pub struct SqliteMetadata {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// When set, manifest bodies are stored encrypted.
    keyring: Option<berth_crypt::Keyring>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend(e.to_string())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // FULL: an acknowledged push survives power loss, not just a crash.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    Ok(())
}

impl SqliteMetadata {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteMetadata> {
        Self::open_with(path, None)
    }

    /// Opens a store that encrypts manifest bodies with `keyring`.
    pub fn open_with(path: impl AsRef<Path>, keyring: Option<berth_crypt::Keyring>) -> Result<SqliteMetadata> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let mut writer = Connection::open(&path).map_err(backend)?;
        configure(&writer).map_err(backend)?;
        migrate(&mut writer)?;
        {
            let tx = writer.transaction().map_err(backend)?;
            crate::search::reindex_dirty(&tx).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(SqliteMetadata {
            inner: Arc::new(Inner { path, keyring, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) }),
        })
    }

    /// Re-encrypts manifest bodies sealed with an older key; returns how many.
    pub async fn reencrypt_manifests(&self) -> Result<usize> {
        let Some(ring) = self.inner.keyring.clone() else { return Ok(0) };
        self.write(move |tx| {
            let rows: Vec<(i64, String, Vec<u8>, Option<Vec<u8>>)> = {
                let mut stmt = tx
                    .prepare("SELECT repo_id, digest, body, CAST(annotations AS BLOB) FROM manifests")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(backend)?;
                rows
            };
            let mut n = 0;
            let reseal = |v: &[u8]| -> Result<Vec<u8>> {
                let plain = berth_crypt::open_value(&ring, v).map_err(backend)?;
                Ok(berth_crypt::seal_value(&ring, &plain))
            };
            for (repo, digest, body, annotations) in rows {
                if body.get(8..16) == Some(&ring.current().id()[..]) {
                    continue;
                }
                let annotations = annotations.map(|a| reseal(&a)).transpose()?;
                tx.execute(
                    "UPDATE manifests SET body = ?3, annotations = ?4 WHERE repo_id = ?1 AND digest = ?2",
                    params![repo, digest, reseal(&body)?, annotations],
                )
                .map_err(backend)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().unwrap().pop();
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(backend)?;
                    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
                    c
                }
            };
            let out = f(&conn).map_err(backend);
            let mut pool = inner.readers.lock().unwrap();
            if pool.len() < READERS {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(backend)?
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let out = f(&tx)?;
            crate::search::reindex_dirty(&tx).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(backend)?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(MetaError::Backend(format!(
            "database schema version {version} is newer than this berth understands ({}); upgrade berth",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}


/// Refuses (`InUse`) to remove `target` from a repository while one of its
/// manifests refers to it as a blob (`kind` 0) or a child manifest (1):
/// deleting it would leave a pullable tag pointing at nothing.
fn refuse_if_referenced(tx: &Connection, repo_id: i64, target: &str, kind: i64) -> Result<()> {
    let by: Option<String> = tx
        .query_row(
            "SELECT manifest FROM manifest_refs WHERE repo_id = ?1 AND target = ?2 AND kind = ?3 AND manifest <> ?2 LIMIT 1",
            params![repo_id, target, kind],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    match by {
        Some(by) => Err(MetaError::InUse {
            target: target.parse().map_err(|_| MetaError::Backend(format!("stored digest {target:?}")))?,
            by: by.parse().map_err(|_| MetaError::Backend(format!("stored digest {by:?}")))?,
        }),
        None => Ok(()),
    }
}

fn repo_id(conn: &Connection, repo: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM repositories WHERE name = ?1", [repo], |r| r.get(0)).optional()
}

fn ensure_repo(tx: &Connection, repo: &str, now: i64) -> Result<i64> {
    tx.execute("INSERT OR IGNORE INTO repositories(name, created_at) VALUES (?1, ?2)", params![repo, now])
        .map_err(backend)?;
    repo_id(tx, repo).map_err(backend)?.ok_or_else(|| backend("repository row vanished"))
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |tx| {
            let now = now_secs();
            let id = ensure_repo(tx, &repo, now)?;
            tx.execute(
                "INSERT OR IGNORE INTO blobs(digest, size, created_at) VALUES (?1, ?2, ?3)",
                params![digest, size as i64, now],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT OR IGNORE INTO repo_blobs(repo_id, digest, created_at, last_seen) VALUES (?1, ?2, ?3, ?3)",
                params![id, digest, now],
            )
            .map_err(backend)?;
            tx.execute(
                "UPDATE repo_blobs SET last_seen = ?3 WHERE repo_id = ?1 AND digest = ?2 AND last_seen < ?3",
                params![id, digest, now],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            c.query_row(
                "SELECT b.size FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest WHERE r.name = ?1 AND rb.digest = ?2",
                params![repo, digest],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|s| s as u64))
        })
        .await
    }

    async fn any_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let digest = digest.to_string();
        self.read(move |c| {
            c.query_row("SELECT size FROM blobs WHERE digest = ?1", [digest], |r| r.get::<_, i64>(0))
                .optional()
                .map(|o| o.map(|s| s as u64))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(false) };
            refuse_if_referenced(tx, id, &digest, 0)?;
            let n = tx
                .execute("DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2", params![id, digest])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_manifest(&self, repo: &RepoName, record: ManifestRecord, tag: Option<&Tag>) -> Result<()> {
        let repo = repo.to_string();
        let tag = tag.map(|t| t.to_string());
        let (stored_body, stored_annotations): (Vec<u8>, Option<Vec<u8>>) = match &self.inner.keyring {
            Some(ring) => (
                berth_crypt::seal_value(ring, &record.body),
                record.annotations_json.as_ref().map(|a| berth_crypt::seal_value(ring, a.as_bytes())),
            ),
            None => (record.body.to_vec(), record.annotations_json.as_ref().map(|a| a.as_bytes().to_vec())),
        };
        let encrypted = self.inner.keyring.is_some();
        self.write(move |tx| {
            let now = now_secs();
            let id = ensure_repo(tx, &repo, now)?;
            let digest = record.digest.to_string();
            for blob in &record.blobs {
                let found: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2",
                        params![id, blob.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if found.is_none() {
                    return Err(MetaError::MissingBlob(blob.clone()));
                }
            }
            for child in &record.children {
                let found: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2",
                        params![id, child.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if found.is_none() {
                    return Err(MetaError::MissingManifest(child.clone()));
                }
            }
            // Same digest means same bytes: re-pushing only refreshes last_seen.
            tx.execute(
                "INSERT OR IGNORE INTO manifests(repo_id, digest, media_type, artifact_type, subject,
                    annotations, size, body, created_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![
                    id,
                    digest,
                    record.media_type,
                    record.artifact_type,
                    record.subject.as_ref().map(|s| s.to_string()),
                    stored_annotations,
                    record.body.len() as i64,
                    &stored_body[..],
                    now
                ],
            )
            .map_err(backend)?;
            // A plain UPDATE (not an upsert), so search triggers keep their own conflict handling.
            tx.execute("UPDATE manifests SET last_seen = ?3 WHERE repo_id = ?1 AND digest = ?2 AND last_seen < ?3", params![id, digest, now])
                .map_err(backend)?;
            crate::search::put_fields(tx, id, &digest, &record.search, encrypted).map_err(backend)?;
            let refs = record.blobs.iter().map(|d| (d, 0)).chain(record.children.iter().map(|d| (d, 1)));
            for (target, kind) in refs {
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_refs(repo_id, manifest, target, kind) VALUES (?1, ?2, ?3, ?4)",
                    params![id, digest, target.to_string(), kind],
                )
                .map_err(backend)?;
            }
            if let Some(tag) = tag {
                // UPDATE, then INSERT: an upsert would override the search
                // triggers' own conflict handling and fail on a moved tag.
                let moved = tx
                    .execute(
                        "UPDATE tags SET digest = ?3, updated_at = ?4 WHERE repo_id = ?1 AND name = ?2",
                        params![id, tag, digest, now],
                    )
                    .map_err(backend)?;
                if moved == 0 {
                    tx.execute(
                        "INSERT INTO tags(repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)",
                        params![id, tag, digest, now],
                    )
                    .map_err(backend)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        let repo = repo.to_string();
        let reference = reference.clone();
        let keyring = self.inner.keyring.clone();
        let found = self.read(move |c| {
            let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(String, String, Vec<u8>)> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            };
            let found = match &reference {
                Reference::Digest(d) => c
                    .query_row(
                        "SELECT m.digest, m.media_type, m.body FROM manifests m
                         JOIN repositories r ON r.id = m.repo_id WHERE r.name = ?1 AND m.digest = ?2",
                        params![repo, d.to_string()],
                        row,
                    )
                    .optional()?,
                Reference::Tag(t) => c
                    .query_row(
                        "SELECT m.digest, m.media_type, m.body FROM tags t
                         JOIN repositories r ON r.id = t.repo_id
                         JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                         WHERE r.name = ?1 AND t.name = ?2",
                        params![repo, t.as_str()],
                        row,
                    )
                    .optional()?,
            };
            Ok(found)
        })
        .await?;
        let Some((digest, media_type, body)) = found else { return Ok(None) };
        let body = match &keyring {
            Some(ring) => berth_crypt::open_value(ring, &body).map_err(backend)?,
            None => body,
        };
        let Ok(digest) = digest.parse() else { return Ok(None) };
        Ok(Some(StoredManifest { digest, media_type, body: Bytes::from(body) }))
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(false) };
            refuse_if_referenced(tx, id, &digest, 1)?;
            let n = tx
                .execute("DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2", params![id, digest])
                .map_err(backend)?;
            tx.execute("DELETE FROM tags WHERE repo_id = ?1 AND digest = ?2", params![id, digest]).map_err(backend)?;
            tx.execute("DELETE FROM manifest_refs WHERE repo_id = ?1 AND manifest = ?2", params![id, digest])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(false) };
            let n = tx.execute("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2", params![id, tag]).map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>> {
        let repo = repo.to_string();
        let last = last.unwrap_or("").to_string();
        self.read(move |c| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT r.id FROM repositories r WHERE r.name = ?1
                     AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
                    [&repo],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            let mut stmt = c.prepare_cached(
                "SELECT name FROM tags WHERE repo_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )?;
            let tags = stmt
                .query_map(params![id, last, n as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(Some(tags))
        })
        .await
    }

    async fn list_repositories(&self, last: Option<&str>, n: usize) -> Result<Vec<String>> {
        let last = last.unwrap_or("").to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.name FROM repositories r WHERE r.name > ?1
                 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)
                 ORDER BY r.name LIMIT ?2",
            )?;
            let names = stmt.query_map(params![last, n as i64], |r| r.get(0))?.collect();
            names
        })
        .await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>> {
        let (repo, subject) = (repo.to_string(), subject.to_string());
        let keyring = self.inner.keyring.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.digest, m.media_type, m.size, m.artifact_type, CAST(m.annotations AS BLOB) FROM manifests m
                 JOIN repositories r ON r.id = m.repo_id WHERE r.name = ?1 AND m.subject = ?2
                 ORDER BY m.created_at, m.digest",
            )?;
            let rows = stmt
                .query_map(params![repo, subject], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<Vec<(String, String, i64, Option<String>, Option<Vec<u8>>)>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(d, media_type, size, artifact_type, annotations)| {
                    let annotations_json = annotations.and_then(|a| match &keyring {
                        Some(ring) => berth_crypt::open_value(ring, &a).ok().and_then(|p| String::from_utf8(p).ok()),
                        None => String::from_utf8(a).ok(),
                    });
                    Some(Referrer { digest: d.parse().ok()?, media_type, size: size as u64, artifact_type, annotations_json })
                })
                .collect())
        })
        .await
    }

    async fn create_upload(&self, id: &str, repo: &RepoName, now: i64) -> Result<()> {
        let (id, repo) = (id.to_string(), repo.to_string());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO uploads(id, repo, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![id, repo, now],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row("SELECT id, repo, created_at, updated_at FROM uploads WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map(|o| {
                o.and_then(|(id, repo, created_at, updated_at)| {
                    Some(UploadRecord { id, repo: RepoName::parse(&repo)?, created_at, updated_at })
                })
            })
        })
        .await
    }

    async fn touch_upload(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx| {
            tx.execute("UPDATE uploads SET updated_at = ?2 WHERE id = ?1", params![id, now]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |tx| Ok(tx.execute("DELETE FROM uploads WHERE id = ?1", [id]).map_err(backend)? > 0))
            .await
    }

    async fn idle_uploads(&self, before: i64) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT id FROM uploads WHERE updated_at < ?1")?;
            let ids = stmt.query_map([before], |r| r.get(0))?.collect();
            ids
        })
        .await
    }

    async fn stored_bytes(&self) -> Result<u64> {
        self.read(|c| c.query_row("SELECT COALESCE(SUM(size), 0) FROM blobs", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|s| s as u64)
    }

    async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobLink>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            c.query_row(
                "SELECT b.size, rb.last_seen FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest WHERE r.name = ?1 AND rb.digest = ?2",
                params![repo, digest],
                |r| Ok(BlobLink { size: r.get::<_, i64>(0)? as u64, last_seen: r.get(1)? }),
            )
            .optional()
        })
        .await
    }

    async fn touch_blob(&self, repo: &RepoName, digest: &Digest, now: i64) -> Result<()> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |tx| {
            tx.execute(
                "UPDATE repo_blobs SET last_seen = ?3
                 WHERE repo_id = (SELECT id FROM repositories WHERE name = ?1) AND digest = ?2 AND last_seen < ?3",
                params![repo, digest, now],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT mr.manifest FROM manifest_refs mr JOIN repositories r ON r.id = mr.repo_id
                 WHERE r.name = ?1 AND mr.target = ?2 AND mr.kind = 1 ORDER BY mr.manifest LIMIT 64",
            )?;
            let rows = stmt.query_map(params![repo, digest], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().filter_map(|d| d.parse().ok()).collect())
        })
        .await
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id
                 WHERE r.name = ?1 AND t.digest = ?2 ORDER BY t.name",
            )?;
            let names = stmt.query_map(params![repo, digest], |r| r.get(0))?.collect();
            names
        })
        .await
    }

    async fn repository_names(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name FROM repositories ORDER BY name")?;
            let names = stmt.query_map([], |r| r.get(0))?.collect();
            names
        })
        .await
    }

    async fn usage(&self, repos: Vec<String>, digest: Option<&Digest>) -> Result<(u64, bool)> {
        let digest = digest.map(|d| d.to_string());
        self.read(move |c| {
            if repos.is_empty() {
                return Ok((0, false));
            }
            let marks = vec!["?"; repos.len()].join(",");
            let ids = format!("SELECT id FROM repositories WHERE name IN ({marks})");
            let total: i64 = c.query_row(
                &format!(
                    "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE digest IN
                     (SELECT digest FROM repo_blobs WHERE repo_id IN ({ids}))"
                ),
                rusqlite::params_from_iter(repos.iter()),
                |r| r.get(0),
            )?;
            let present = match digest {
                None => false,
                Some(d) => c
                    .query_row(
                        &format!("SELECT 1 FROM repo_blobs WHERE digest = ? AND repo_id IN ({ids})"),
                        rusqlite::params_from_iter(std::iter::once(&d).chain(repos.iter())),
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some(),
            };
            Ok((total as u64, present))
        })
        .await
    }

    async fn usage_by_repository(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.name, COALESCE(SUM(b.size), 0) FROM repositories r
                 LEFT JOIN repo_blobs rb ON rb.repo_id = r.id LEFT JOIN blobs b ON b.digest = rb.digest
                 GROUP BY r.id ORDER BY r.name",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect();
            rows
        })
        .await
    }

    async fn gc_snapshot(&self) -> Result<GcSnapshot> {
        self.read(|c| {
            // One read transaction: every query sees the same state.
            let tx = c.unchecked_transaction()?;
            let parse = |s: String| s.parse::<Digest>().ok();
            let mut repos: HashMap<i64, RepoSnapshot> = HashMap::new();
            {
                let mut stmt = tx.prepare("SELECT id, name FROM repositories")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    repos.insert(r.get(0)?, RepoSnapshot { name: r.get(1)?, ..Default::default() });
                }
            }
            let mut index: HashMap<(i64, String), usize> = HashMap::new();
            {
                let mut stmt = tx.prepare("SELECT repo_id, digest, subject, last_seen FROM manifests")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    let digest: String = r.get(1)?;
                    let (Some(repo), Some(d)) = (repos.get_mut(&id), parse(digest.clone())) else { continue };
                    index.insert((id, digest), repo.manifests.len());
                    repo.manifests.push(ManifestNode {
                        digest: d,
                        subject: r.get::<_, Option<String>>(2)?.and_then(parse),
                        last_seen: r.get(3)?,
                        blobs: vec![],
                        children: vec![],
                    });
                }
            }
            {
                let mut stmt = tx.prepare("SELECT repo_id, manifest, target, kind FROM manifest_refs")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    let Some(&i) = index.get(&(id, r.get::<_, String>(1)?)) else { continue };
                    let Some(target) = parse(r.get(2)?) else { continue };
                    let Some(repo) = repos.get_mut(&id) else { continue };
                    if r.get::<_, i64>(3)? == 0 {
                        repo.manifests[i].blobs.push(target);
                    } else {
                        repo.manifests[i].children.push(target);
                    }
                }
            }
            {
                let mut stmt = tx.prepare("SELECT repo_id, name, digest, updated_at FROM tags")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let (Some(repo), Some(digest)) = (repos.get_mut(&r.get(0)?), parse(r.get(2)?)) else { continue };
                    repo.tags.push(TagInfo { name: r.get(1)?, digest, updated_at: r.get(3)? });
                }
            }
            {
                let mut stmt = tx.prepare("SELECT repo_id, digest, last_seen FROM repo_blobs")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let (Some(repo), Some(digest)) = (repos.get_mut(&r.get(0)?), parse(r.get(1)?)) else { continue };
                    repo.links.push((digest, r.get(2)?));
                }
            }
            let mut blobs = Vec::new();
            {
                let mut stmt = tx.prepare("SELECT digest, size FROM blobs")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    if let Some(d) = parse(r.get(0)?) {
                        blobs.push((d, r.get::<_, i64>(1)? as u64));
                    }
                }
            }
            tx.finish()?;
            let mut repos: Vec<RepoSnapshot> = repos.into_values().collect();
            repos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(GcSnapshot { repos, blobs })
        })
        .await
    }

    async fn delete_tag_if(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool> {
        let (repo, tag, digest) = (repo.to_string(), tag.to_string(), digest.to_string());
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(false) };
            let n = tx
                .execute("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2 AND digest = ?3", params![id, tag, digest])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_untagged(&self, repo: &RepoName, plan: UntaggedDeletion) -> Result<Vec<Digest>> {
        let repo = repo.to_string();
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(vec![]) };
            let exempt: HashSet<String> = plan.exempt.iter().map(|d| d.to_string()).collect();
            let mut set: HashSet<String> = plan.candidates.iter().map(|d| d.to_string()).collect();
            // Drop candidates that are no longer garbage until nothing changes:
            // keeping one may keep its children and referrers.
            loop {
                let mut keep = Vec::new();
                for d in &set {
                    let row: Option<(i64, Option<String>)> = tx
                        .query_row(
                            "SELECT last_seen, subject FROM manifests WHERE repo_id = ?1 AND digest = ?2",
                            params![id, d],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()
                        .map_err(backend)?;
                    let Some((last_seen, subject)) = row else {
                        keep.push(d.clone());
                        continue;
                    };
                    let tagged = tx
                        .query_row("SELECT 1 FROM tags WHERE repo_id = ?1 AND digest = ?2 LIMIT 1", params![id, d], |_| Ok(()))
                        .optional()
                        .map_err(backend)?
                        .is_some();
                    let fresh = last_seen > plan.cutoff && !(exempt.contains(d) && last_seen <= plan.exempt_before);
                    let mut parents = tx
                        .prepare_cached("SELECT manifest FROM manifest_refs WHERE repo_id = ?1 AND target = ?2 AND kind = 1")
                        .map_err(backend)?;
                    let parents = parents
                        .query_map(params![id, d], |r| r.get::<_, String>(0))
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(backend)?;
                    let kept_parent = parents.iter().any(|p| !set.contains(p));
                    // A manifest whose referrer stays (tagged, or kept because
                    // referrers do not follow subjects) stays with it.
                    let mut referrers = tx
                        .prepare_cached("SELECT digest FROM manifests WHERE repo_id = ?1 AND subject = ?2")
                        .map_err(backend)?;
                    let kept_referrer = referrers
                        .query_map(params![id, d], |r| r.get::<_, String>(0))
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(backend)?
                        .iter()
                        .any(|r| !set.contains(r));
                    let kept_by_subject = match &subject {
                        None => fresh,
                        Some(_) if !plan.follow_subject => true,
                        Some(s) => {
                            let present = tx
                                .query_row("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2", params![id, s], |_| Ok(()))
                                .optional()
                                .map_err(backend)?
                                .is_some();
                            if present { !set.contains(s) } else { fresh }
                        }
                    };
                    if tagged || kept_parent || kept_referrer || kept_by_subject {
                        keep.push(d.clone());
                    }
                }
                if keep.is_empty() {
                    break;
                }
                for d in keep {
                    set.remove(&d);
                }
            }
            let mut deleted = Vec::new();
            for d in set {
                tx.execute("DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2", params![id, d]).map_err(backend)?;
                tx.execute("DELETE FROM manifest_refs WHERE repo_id = ?1 AND manifest = ?2", params![id, d])
                    .map_err(backend)?;
                if let Ok(d) = d.parse() {
                    deleted.push(d);
                }
            }
            deleted.sort();
            Ok(deleted)
        })
        .await
    }

    async fn unlink_unused(&self, repo: &RepoName, digests: Vec<Digest>, cutoff: i64) -> Result<Vec<Digest>> {
        let repo = repo.to_string();
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo).map_err(backend)? else { return Ok(vec![]) };
            let mut removed = Vec::new();
            for d in digests {
                let n = tx
                    .execute(
                        "DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2 AND last_seen <= ?3
                         AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE repo_id = ?1 AND target = ?2 AND kind = 0)",
                        params![id, d.to_string(), cutoff],
                    )
                    .map_err(backend)?;
                if n > 0 {
                    removed.push(d);
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn delete_blob_if_unused(&self, digest: &Digest) -> Result<Option<u64>> {
        let digest = digest.to_string();
        self.write(move |tx| {
            let size: Option<i64> = tx
                .query_row(
                    "SELECT size FROM blobs WHERE digest = ?1
                     AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE digest = ?1)
                     AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE target = ?1 AND kind = 0)
                     AND NOT EXISTS (SELECT 1 FROM backup_pins WHERE digest = ?1 AND expires > ?2)",
                    params![&digest, now_secs()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if size.is_some() {
                tx.execute("DELETE FROM blobs WHERE digest = ?1", [&digest]).map_err(backend)?;
            }
            Ok(size.map(|s| s as u64))
        })
        .await
    }

    async fn search(&self, query: SearchQuery, allow: RepoFilter) -> Result<SearchPage> {
        self.read(move |c| crate::search::search(c, &query, &allow)).await
    }

    async fn repository_info(&self, repo: &RepoName) -> Result<Option<RepositoryInfo>> {
        let repo = repo.to_string();
        self.read(move |c| crate::search::repository_info(c, &repo)).await
    }

    async fn record_pulls(&self, pulls: Vec<PullCount>) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        self.write(move |tx| crate::search::record_pulls(tx, &pulls).map_err(backend)).await
    }

    async fn pulls_of(&self, repo: &RepoName, digest: &Digest) -> Result<(u64, Option<i64>)> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| crate::search::pulls_of(c, &repo, &digest)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn record(body: &[u8], blobs: Vec<Digest>, subject: Option<Digest>) -> ManifestRecord {
        ManifestRecord {
            digest: Digest::sha256_of(body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: Some("application/x".into()),
            body: Bytes::copy_from_slice(body),
            subject,
            annotations_json: None,
            blobs,
            children: vec![],
            search: Default::default(),
        }
    }

    #[tokio::test]
    async fn manifests_tags_and_catalog_agree() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteMetadata::open(dir.path().join("m.db")).unwrap();
        let blob = Digest::sha256_of(b"layer");
        // A blob alone does not make a repository visible.
        db.link_blob(&repo("a/b"), &blob, 5).await.unwrap();
        assert!(db.list_repositories(None, 10).await.unwrap().is_empty());
        assert_eq!(db.list_tags(&repo("a/b"), None, 10).await.unwrap(), None);

        let missing = record(b"m0", vec![Digest::sha256_of(b"nope")], None);
        assert!(matches!(db.put_manifest(&repo("a/b"), missing, None).await, Err(MetaError::MissingBlob(_))));

        let m = record(b"m1", vec![blob.clone()], None);
        let tag = Tag::parse("v1").unwrap();
        db.put_manifest(&repo("a/b"), m.clone(), Some(&tag)).await.unwrap();
        assert_eq!(db.list_repositories(None, 10).await.unwrap(), vec!["a/b"]);
        assert_eq!(db.list_tags(&repo("a/b"), None, 10).await.unwrap(), Some(vec!["v1".to_string()]));
        let got = db.get_manifest(&repo("a/b"), &Reference::Tag(tag.clone())).await.unwrap().unwrap();
        assert_eq!(got.digest, m.digest);
        assert_eq!(&got.body[..], b"m1");

        let referrer = record(b"sig", vec![blob.clone()], Some(m.digest.clone()));
        db.put_manifest(&repo("a/b"), referrer.clone(), None).await.unwrap();
        let refs = db.referrers(&repo("a/b"), &m.digest).await.unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].digest, referrer.digest);

        assert!(db.delete_manifest(&repo("a/b"), &m.digest).await.unwrap());
        assert_eq!(db.list_tags(&repo("a/b"), None, 10).await.unwrap(), Some(vec![]));
        assert!(db.delete_manifest(&repo("a/b"), &referrer.digest).await.unwrap());
        assert!(db.list_repositories(None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn moving_a_tag_to_another_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteMetadata::open(dir.path().join("m.db")).unwrap();
        let blob = Digest::sha256_of(b"layer");
        db.link_blob(&repo("a/b"), &blob, 5).await.unwrap();
        let tag = Tag::parse("latest").unwrap();
        let first = record(b"first", vec![blob.clone()], None);
        let second = record(b"second", vec![blob.clone()], None);
        db.put_manifest(&repo("a/b"), first.clone(), Some(&tag)).await.unwrap();
        // The tag moves in one transaction, with the search index refreshed.
        db.put_manifest(&repo("a/b"), second.clone(), Some(&tag)).await.unwrap();
        let got = db.get_manifest(&repo("a/b"), &Reference::Tag(tag.clone())).await.unwrap().unwrap();
        assert_eq!(got.digest, second.digest);
        db.put_manifest(&repo("a/b"), first.clone(), Some(&tag)).await.unwrap();
        let got = db.get_manifest(&repo("a/b"), &Reference::Tag(tag)).await.unwrap().unwrap();
        assert_eq!(got.digest, first.digest);
        assert_eq!(db.list_tags(&repo("a/b"), None, 10).await.unwrap(), Some(vec!["latest".to_string()]));
    }

    #[tokio::test]
    async fn encrypted_bodies() {
        use berth_crypt::{Keyring, MasterKey};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let old = Keyring::new(MasterKey::new([1; 32]), vec![]);
        let db = SqliteMetadata::open_with(&path, Some(old)).unwrap();
        let m = record(b"secret-manifest-marker", vec![], None);
        db.put_manifest(&repo("x"), m.clone(), Some(&Tag::parse("t").unwrap())).await.unwrap();
        drop(db);
        let raw = std::fs::read(&path).unwrap();
        let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
        let needle = b"secret-manifest-marker";
        assert!(!raw.windows(needle.len()).any(|w| w == needle) && !wal.windows(needle.len()).any(|w| w == needle));
        let rotated = Keyring::new(MasterKey::new([2; 32]), vec![MasterKey::new([1; 32])]);
        let db = SqliteMetadata::open_with(&path, Some(rotated)).unwrap();
        assert_eq!(db.reencrypt_manifests().await.unwrap(), 1);
        drop(db);
        let db = SqliteMetadata::open_with(&path, Some(Keyring::new(MasterKey::new([2; 32]), vec![]))).unwrap();
        let got = db.get_manifest(&repo("x"), &Reference::Digest(m.digest.clone())).await.unwrap().unwrap();
        assert_eq!(&got.body[..], needle);
        let wrong = SqliteMetadata::open_with(&path, Some(Keyring::new(MasterKey::new([3; 32]), vec![]))).unwrap();
        assert!(wrong.get_manifest(&repo("x"), &Reference::Digest(m.digest)).await.is_err());
    }

    #[tokio::test]
    async fn pagination_is_lexical() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteMetadata::open(dir.path().join("m.db")).unwrap();
        for name in ["c", "a", "b"] {
            let m = record(name.as_bytes(), vec![], None);
            db.put_manifest(&repo(name), m.clone(), Some(&Tag::parse(name).unwrap())).await.unwrap();
            for t in ["z", "y"] {
                db.put_manifest(&repo(name), m.clone(), Some(&Tag::parse(t).unwrap())).await.unwrap();
            }
        }
        assert_eq!(db.list_repositories(None, 2).await.unwrap(), vec!["a", "b"]);
        assert_eq!(db.list_repositories(Some("b"), 2).await.unwrap(), vec!["c"]);
        assert_eq!(db.list_tags(&repo("a"), Some("a"), 5).await.unwrap().unwrap(), vec!["y", "z"]);
    }
}
