//! Encryption at rest: loading keys, refusing to start with a wrong or
//! missing key, and re-encrypting online after a key rotation.

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use berth_crypt::{Keyring, MasterKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// File holding the current key (base64 of 32 bytes; `berth encryption new-key`).
    pub key_file: String,
    /// The current key itself, base64; meant for the BERTH_ENCRYPTION_KEY variable.
    pub key: String,
    /// Earlier keys, still accepted for reading while data is re-encrypted.
    pub previous_key_files: Vec<String>,
}

/// Remembers which key the data directory is sealed with.
const MARKER: &str = berth_storage::KEY_ID_FILE;

fn parse_key(text: &str, what: &str) -> anyhow::Result<MasterKey> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| anyhow!("{what}: not base64"))?;
    let key: [u8; 32] = raw.try_into().map_err(|_| anyhow!("{what}: a key is 32 bytes (base64 of 32 random bytes)"))?;
    Ok(MasterKey::new(key))
}

fn read_key_file(path: &str) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {path}"))?;
    parse_key(&text, path)
}

/// A fresh key, base64.
pub fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// What the server should do about encryption.
pub struct Setup {
    pub keyring: Option<Keyring>,
    /// Data sealed with an older key must be re-encrypted.
    pub rotate: bool,
}

impl Setup {
    /// Records that everything is now sealed with the current key.
    pub fn rotation_done(&self, data_dir: &Path) -> anyhow::Result<()> {
        if let Some(ring) = &self.keyring {
            std::fs::write(data_dir.join(MARKER), ring.current().id_hex())?;
        }
        Ok(())
    }
}

fn has_blobs(data_dir: &Path) -> bool {
    let blobs = data_dir.join("blobs");
    let Ok(algs) = std::fs::read_dir(blobs) else { return false };
    algs.flatten().any(|alg| {
        std::fs::read_dir(alg.path())
            .map(|prefixes| prefixes.flatten().any(|p| std::fs::read_dir(p.path()).map(|mut d| d.next().is_some()).unwrap_or(false)))
            .unwrap_or(false)
    })
}

/// Loads keys and checks them against the data directory.
pub fn setup(config: &EncryptionConfig, data_dir: &Path) -> anyhow::Result<Setup> {
    let marker_path = data_dir.join(MARKER);
    let marker = std::fs::read_to_string(&marker_path).ok().map(|s| s.trim().to_string());
    let current = match (config.key.is_empty(), config.key_file.is_empty()) {
        (false, _) => Some(parse_key(&config.key, "encryption.key")?),
        (true, false) => Some(read_key_file(&config.key_file)?),
        (true, true) => None,
    };
    let Some(current) = current else {
        if let Some(id) = marker {
            bail!(
                "the data directory is encrypted (key id {id}) but no key is configured; \
                 set encryption.key_file or BERTH_ENCRYPTION_KEY"
            );
        }
        return Ok(Setup { keyring: None, rotate: false });
    };
    let previous = config.previous_key_files.iter().map(|p| read_key_file(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let keyring = Keyring::new(current, previous);
    let current_id = keyring.current().id_hex();
    let rotate = match marker {
        Some(id) if id == current_id => false,
        Some(id) => {
            let known = config.previous_key_files.iter().any(|p| read_key_file(p).map(|k| k.id_hex() == id).unwrap_or(false));
            if !known {
                bail!(
                    "wrong encryption key: the data directory is encrypted with key id {id}, the configured key has id {current_id}; \
                     to rotate keys, list the old key file in encryption.previous_key_files"
                );
            }
            true
        }
        None => {
            if has_blobs(data_dir) {
                bail!(
                    "cannot turn on encryption for a data directory that already holds unencrypted blobs; \
                     start from an empty data directory and copy images in"
                );
            }
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&marker_path, &current_id).with_context(|| format!("writing {}", marker_path.display()))?;
            false
        }
    };
    Ok(Setup { keyring: Some(keyring), rotate })
}
