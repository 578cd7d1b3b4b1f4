//! A backup repository on a local filesystem.
//!
//! Layout: `config` (key material, JSON, not secret), `data/<2 hex>/<name>`
//! (sealed objects: blobs and metadata copies), `snapshots/<id>` (sealed
//! snapshot records), `tmp/` (files being written), `lock`.
//!
//! Everything is written to `tmp/`, fsynced, renamed into place and its
//! directory fsynced. A snapshot record is written only after every object
//! it names is durable, so a crash at any point leaves earlier snapshots
//! intact and at worst some unreferenced objects (reused by the next run,
//! or removed by `prune`).

use crate::crypto::{self, KeyConfig, Keys, Secret};
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A blob held by a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobEntry {
    pub digest: String,
    pub size: u64,
}

/// The record that makes a snapshot exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    /// Unix seconds.
    pub time: i64,
    pub hostname: String,
    pub source: String,
    /// Object holding the metadata copy (SQLite), and its SHA-256.
    pub metadata_object: String,
    pub metadata_sha256: String,
    pub blobs: Vec<BlobEntry>,
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Plaintext bytes of all blobs.
    pub total_bytes: u64,
    /// What this run added to the repository.
    pub objects_added: u64,
    pub bytes_added: u64,
    pub berth_version: String,
    /// Ids of the encryption-at-rest keys of the source: its current key and
    /// every key sealing a manifest body in the metadata copy. A restore
    /// into a data directory needs all of them. Empty: not encrypted (or a
    /// record from before this field; restore then looks at the copy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encryption_keys: Vec<String>,
}

pub struct Repository {
    root: PathBuf,
    keys: Keys,
    _lock: File,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(format!("{:016x}.tmp", rand::random::<u64>()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().expect("has a parent"))
}

/// How a repository is locked while in use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// list, verify, restore: many at once.
    Shared,
    /// create, forget, prune: one at a time.
    Exclusive,
}

impl Repository {
    /// Creates a repository in `root` (absent or empty).
    pub fn init(root: &Path, secret: &Secret) -> anyhow::Result<()> {
        if root.exists() && fs::read_dir(root)?.next().is_some() {
            bail!("{} is not empty; a backup repository is created in a new or empty directory", root.display());
        }
        for d in ["data", "snapshots", "tmp"] {
            fs::create_dir_all(root.join(d)).with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        let (config, _) = crypto::new_key_config(secret)?;
        let text = serde_json::to_vec_pretty(&config)?;
        write_atomic(&root.join("tmp"), &root.join("config"), &text)?;
        sync_dir(root)?;
        Ok(())
    }

    /// Opens and unlocks a repository.
    pub fn open(root: &Path, secret: &Secret, access: Access) -> anyhow::Result<Repository> {
        let config_path = root.join("config");
        let text = fs::read(&config_path).with_context(|| {
            format!("{} is not a berth backup repository (run `berth backup init`)", root.display())
        })?;
        let config: KeyConfig =
            serde_json::from_slice(&text).map_err(|e| anyhow!("{} is damaged: {e}", config_path.display()))?;
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join("lock"))?;
        let locked = match access {
            Access::Shared => lock.try_lock_shared(),
            Access::Exclusive => lock.try_lock(),
        };
        if locked.is_err() {
            bail!("backup repository {} is in use by another backup, forget or prune; try again later", root.display());
        }
        let keys = crypto::unlock(&config, secret)?;
        let repo = Repository { root: root.to_path_buf(), keys, _lock: lock };
        if access == Access::Exclusive {
            // Left over by an interrupted run; nobody else can be writing them.
            if let Ok(entries) = fs::read_dir(repo.tmp_dir()) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(repo)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn object_path(&self, name: &str) -> PathBuf {
        self.root.join("data").join(&name[..2]).join(name)
    }

    pub fn blob_object(&self, digest: &str) -> String {
        self.keys.object_name(&format!("blob:{digest}"))
    }

    pub fn metadata_object(&self, sha256: &str) -> String {
        self.keys.object_name(&format!("metadata:{sha256}"))
    }

    pub fn has_object(&self, name: &str) -> bool {
        self.object_path(name).is_file()
    }

    /// Seals what `fill` writes into a new object named `name`; the object
    /// is durable when this returns Ok. Returns the stored size.
    pub fn write_object(
        &self,
        name: &str,
        compress: bool,
        fill: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let tmp = self.tmp_dir().join(format!("{name}.{:08x}.tmp", rand::random::<u32>()));
        let result = (|| -> anyhow::Result<u64> {
            let file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let mut w = crypto::ObjectWriter::new(&self.keys, name, compress, file)?;
            fill(&mut w)?;
            let (file, size) = w.finish()?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let dst = self.object_path(name);
            let dir = dst.parent().expect("has a parent");
            fs::create_dir_all(dir)?;
            fs::rename(&tmp, &dst)?;
            sync_dir(dir)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Plaintext reader of an object.
    pub fn read_object(&self, name: &str) -> anyhow::Result<Box<dyn Read>> {
        let path = self.object_path(name);
        let file = File::open(&path).with_context(|| format!("backup object {name} is missing"))?;
        let len = file.metadata()?.len();
        Ok(crypto::open_object(&self.keys, name, io::BufReader::with_capacity(1 << 20, file), len)
            .with_context(|| format!("backup object {name}"))?)
    }

    /// Every object name present.
    pub fn list_objects(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for prefix in fs::read_dir(self.root.join("data"))? {
            for e in fs::read_dir(prefix?.path())? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.insert(name);
                }
            }
        }
        Ok(out)
    }

    pub fn delete_object(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.object_path(name))
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(id)
    }

    /// Writes a snapshot record, last and atomically.
    pub fn write_snapshot(&self, snap: &Snapshot) -> anyhow::Result<()> {
        let mut sealed = Vec::new();
        {
            let mut w = crypto::ObjectWriter::new(&self.keys, &format!("snapshot:{}", snap.id), true, &mut sealed)?;
            serde_json::to_writer(&mut w, snap)?;
            w.finish()?;
        }
        write_atomic(&self.tmp_dir(), &self.snapshot_path(&snap.id), &sealed)?;
        Ok(())
    }

    /// Snapshot ids present (not yet read).
    pub fn snapshot_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in fs::read_dir(self.root.join("snapshots"))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn read_snapshot(&self, id: &str) -> anyhow::Result<Snapshot> {
        let path = self.snapshot_path(id);
        let file = File::open(&path).with_context(|| format!("snapshot {id} not found"))?;
        let len = file.metadata()?.len();
        let mut r = crypto::open_object(&self.keys, &format!("snapshot:{id}"), file, len)
            .with_context(|| format!("snapshot record {id}"))?;
        let mut text = Vec::new();
        r.read_to_end(&mut text).with_context(|| format!("snapshot record {id}"))?;
        let snap: Snapshot = serde_json::from_slice(&text).with_context(|| format!("snapshot record {id}"))?;
        if snap.id != id {
            bail!("snapshot record {id} names itself {}", snap.id);
        }
        Ok(snap)
    }

    /// Every snapshot, oldest first; fails if any record is unreadable.
    pub fn snapshots(&self) -> anyhow::Result<Vec<Snapshot>> {
        let (snaps, damaged) = self.scan_snapshots()?;
        if let Some(e) = damaged.into_iter().next() {
            return Err(e);
        }
        Ok(snaps)
    }

    /// The readable snapshots, oldest first, and the error of each record
    /// that could not be read.
    pub fn scan_snapshots(&self) -> anyhow::Result<(Vec<Snapshot>, Vec<anyhow::Error>)> {
        let (mut snaps, mut damaged) = (Vec::new(), Vec::new());
        for id in self.snapshot_ids()? {
            match self.read_snapshot(&id) {
                Ok(s) => snaps.push(s),
                Err(e) => damaged.push(e),
            }
        }
        snaps.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok((snaps, damaged))
    }

    /// Finds a snapshot by id, unique id prefix, or `latest`.
    pub fn find_snapshot(&self, which: &str) -> anyhow::Result<Snapshot> {
        if which == "latest" {
            // Refused when a record is damaged: it may have been the latest.
            let snaps = self.snapshots().context("cannot tell which snapshot is the latest (`berth backup list` shows the intact ones; restore one by id)")?;
            return snaps.into_iter().next_back().ok_or_else(|| anyhow!("the backup repository has no snapshots"));
        }
        let ids: Vec<String> = self.snapshot_ids()?.into_iter().filter(|id| id.starts_with(which)).collect();
        match ids.as_slice() {
            [one] => self.read_snapshot(one),
            [] => bail!("no snapshot {which}"),
            _ => bail!("snapshot prefix {which} is ambiguous"),
        }
    }

    pub fn delete_snapshot(&self, id: &str) -> anyhow::Result<()> {
        fs::remove_file(self.snapshot_path(id))?;
        sync_dir(&self.root.join("snapshots"))?;
        Ok(())
    }
}
