//! Key material and the sealed object format of a backup repository.
//!
//! Keys: a random 256-bit master key, stored only wrapped (AES-256-GCM) by a
//! key-encryption key derived from a password (Argon2id) or a key file. A
//! key-check value derived from the key-encryption key tells a wrong
//! password apart from a damaged key file. From the master key come, by
//! HMAC-SHA256 with distinct labels, the data key (objects) and the naming
//! key (object names are HMAC(naming key, digest), so names reveal nothing).
//!
//! Object format: header (32 bytes) `BRTHBAK1` | flags (1) | 7 zero bytes |
//! salt (16); then chunks of [`CHUNK`] plaintext bytes sealed with
//! AES-256-GCM under HMAC(data key, salt), each followed by its tag. The
//! nonce is the chunk number and a final-chunk flag, so reordering,
//! truncation and extension are detected; the associated data is the
//! header and the object's name, so swapping two objects is detected too.
//! Flag bit 0: the plaintext is a zstd stream.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"BRTHBAK1";
pub const HEADER_LEN: usize = 32;
pub const CHUNK: usize = 1 << 20;
pub const TAG: usize = 16;
pub const FLAG_ZSTD: u8 = 1;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// How the key-encryption key is derived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kdf {
    Argon2id { m_kib: u32, t: u32, p: u32, salt: String },
    KeyFile { salt: String },
}

/// What unlocks a repository.
#[derive(Clone)]
pub enum Secret {
    Password(String),
    KeyFile(Vec<u8>),
}

impl Secret {
    fn kind(&self) -> &'static str {
        match self {
            Secret::Password(_) => "password",
            Secret::KeyFile(_) => "key file",
        }
    }
}

/// The repository's key file (`DEST/config`), stored in clear.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyConfig {
    pub version: u32,
    pub kdf: Kdf,
    /// HMAC(kek, "berth backup key check"), first 16 bytes, hex.
    pub key_check: String,
    /// nonce (12) | AES-256-GCM(kek, master key), hex.
    pub wrapped_key: String,
}

fn derive_kek(kdf: &Kdf, secret: &Secret) -> anyhow::Result<[u8; 32]> {
    match (kdf, secret) {
        (Kdf::Argon2id { m_kib, t, p, salt }, Secret::Password(pw)) => {
            let salt = hex::decode(salt).context("repository config: bad salt")?;
            let params = argon2::Params::new(*m_kib, *t, *p, Some(32)).map_err(|e| anyhow!("argon2 parameters: {e}"))?;
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            a.hash_password_into(pw.as_bytes(), &salt, &mut out).map_err(|e| anyhow!("argon2: {e}"))?;
            Ok(out)
        }
        (Kdf::KeyFile { salt }, Secret::KeyFile(bytes)) => {
            let salt = hex::decode(salt).context("repository config: bad salt")?;
            let trimmed = String::from_utf8_lossy(bytes);
            Ok(hmac(&salt, &[b"berth backup key file", trimmed.trim().as_bytes()]))
        }
        (Kdf::Argon2id { .. }, s) => bail!("this backup repository is unlocked with a password, not a {}", s.kind()),
        (Kdf::KeyFile { .. }, s) => bail!("this backup repository is unlocked with a key file, not a {}", s.kind()),
    }
}

fn key_check(kek: &[u8; 32]) -> String {
    hex::encode(&hmac(kek, &[b"berth backup key check"])[..16])
}

/// Argon2id cost: 64 MiB, 3 passes (tests may lower it through the environment).
fn argon2_cost() -> (u32, u32) {
    let m = std::env::var("BERTH_BACKUP_ARGON2_MEMORY_KIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64 * 1024);
    let t = std::env::var("BERTH_BACKUP_ARGON2_PASSES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    (m, t)
}

/// Creates new key material protected by `secret`.
pub fn new_key_config(secret: &Secret) -> anyhow::Result<(KeyConfig, Keys)> {
    let salt = hex::encode(rand::random::<[u8; 16]>());
    let kdf = match secret {
        Secret::Password(_) => {
            let (m_kib, t) = argon2_cost();
            Kdf::Argon2id { m_kib, t, p: 1, salt }
        }
        Secret::KeyFile(_) => Kdf::KeyFile { salt },
    };
    let kek = derive_kek(&kdf, secret)?;
    let master: [u8; 32] = rand::random();
    let nonce: [u8; 12] = rand::random();
    let sealed = Aes256Gcm::new_from_slice(&kek)
        .expect("32-byte key")
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &master, aad: b"berth backup master key" })
        .expect("in-memory encryption");
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&sealed);
    let config = KeyConfig { version: 1, kdf, key_check: key_check(&kek), wrapped_key: hex::encode(wrapped) };
    Ok((config, Keys::from_master(master)))
}

/// Unwraps the master key; a wrong secret and a damaged config are told apart.
pub fn unlock(config: &KeyConfig, secret: &Secret) -> anyhow::Result<Keys> {
    let kek = derive_kek(&config.kdf, secret)?;
    if key_check(&kek) != config.key_check {
        bail!("wrong {} for this backup repository", secret.kind());
    }
    let wrapped = hex::decode(&config.wrapped_key).map_err(|_| anyhow!("backup repository config is damaged (wrapped key)"))?;
    if wrapped.len() != 12 + 32 + TAG {
        bail!("backup repository config is damaged (wrapped key length)");
    }
    let master = Aes256Gcm::new_from_slice(&kek)
        .expect("32-byte key")
        .decrypt(Nonce::from_slice(&wrapped[..12]), Payload { msg: &wrapped[12..], aad: b"berth backup master key" })
        .map_err(|_| anyhow!("backup repository config is damaged: the key check passed but the master key does not decrypt"))?;
    Ok(Keys::from_master(master.try_into().expect("32 bytes")))
}

/// Keys derived from the master key.
#[derive(Clone)]
pub struct Keys {
    data: [u8; 32],
    names: [u8; 32],
}

impl Keys {
    pub fn from_master(master: [u8; 32]) -> Keys {
        Keys { data: hmac(&master, &[b"berth backup data key"]), names: hmac(&master, &[b"berth backup naming key"]) }
    }

    /// The object name for a labelled value (e.g. `blob:sha256:…`): 64 hex chars.
    pub fn object_name(&self, label: &str) -> String {
        hex::encode(hmac(&self.names, &[label.as_bytes()]))
    }

    fn cipher(&self, salt: &[u8]) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&hmac(&self.data, &[b"object", salt])).expect("32-byte key")
    }
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[8] = last as u8;
    n
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes a sealed object to `inner`; call [`SealWriter::finish`] at the end.
pub struct SealWriter<W: Write> {
    inner: W,
    aead: Aes256Gcm,
    aad: Vec<u8>,
    buf: Vec<u8>,
    index: u64,
    /// Sealed bytes written so far.
    pub written: u64,
}

impl<W: Write> SealWriter<W> {
    pub fn new(keys: &Keys, name: &str, flags: u8, mut inner: W) -> io::Result<SealWriter<W>> {
        let salt: [u8; 16] = rand::random();
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = flags;
        header[16..].copy_from_slice(&salt);
        inner.write_all(&header)?;
        let mut aad = header.to_vec();
        aad.extend_from_slice(name.as_bytes());
        Ok(SealWriter { inner, aead: keys.cipher(&salt), aad, buf: Vec::with_capacity(CHUNK), index: 0, written: HEADER_LEN as u64 })
    }

    fn seal(&mut self, last: bool, n: usize) -> io::Result<()> {
        let sealed = self
            .aead
            .encrypt(Nonce::from_slice(&nonce(self.index, last)), Payload { msg: &self.buf[..n], aad: &self.aad })
            .map_err(|_| invalid("encryption failed"))?;
        self.inner.write_all(&sealed)?;
        self.written += sealed.len() as u64;
        self.buf.drain(..n);
        self.index += 1;
        Ok(())
    }

    /// Seals the final chunk (possibly empty) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let n = self.buf.len();
        self.seal(true, n)?;
        self.inner.flush()?;
        Ok((self.inner, self.written))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len().min(CHUNK);
        if room == 0 {
            // A full chunk waits until more data proves it is not the last.
            self.seal(false, CHUNK)?;
            return self.write(data);
        }
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads and authenticates a sealed object of `len` bytes from `inner`.
pub struct OpenReader<R: Read> {
    inner: R,
    aead: Aes256Gcm,
    aad: Vec<u8>,
    remaining: u64,
    index: u64,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
    pub flags: u8,
}

impl<R: Read> OpenReader<R> {
    pub fn new(keys: &Keys, name: &str, mut inner: R, len: u64) -> io::Result<OpenReader<R>> {
        let mut header = [0u8; HEADER_LEN];
        if len < (HEADER_LEN + TAG) as u64 {
            return Err(invalid("backup object is truncated"));
        }
        inner.read_exact(&mut header)?;
        if &header[..8] != MAGIC {
            return Err(invalid("not a berth backup object (bad magic)"));
        }
        let mut aad = header.to_vec();
        aad.extend_from_slice(name.as_bytes());
        Ok(OpenReader {
            inner,
            aead: keys.cipher(&header[16..32]),
            aad,
            remaining: len - HEADER_LEN as u64,
            index: 0,
            plain: Vec::new(),
            pos: 0,
            done: false,
            flags: header[8],
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let take = self.remaining.min((CHUNK + TAG) as u64) as usize;
        let last = self.remaining == take as u64;
        if take < TAG {
            return Err(invalid("backup object is truncated"));
        }
        let mut sealed = vec![0u8; take];
        self.inner.read_exact(&mut sealed)?;
        self.remaining -= take as u64;
        self.plain = self
            .aead
            .decrypt(Nonce::from_slice(&nonce(self.index, last)), Payload { msg: &sealed, aad: &self.aad })
            .map_err(|_| invalid("backup object failed authentication (modified, truncated, swapped or wrong key)"))?;
        self.pos = 0;
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A writer that compresses (zstd) or not before sealing.
pub enum ObjectWriter<W: Write> {
    Plain(SealWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, SealWriter<W>>),
}

impl<W: Write> ObjectWriter<W> {
    pub fn new(keys: &Keys, name: &str, compress: bool, inner: W) -> io::Result<ObjectWriter<W>> {
        let flags = if compress { FLAG_ZSTD } else { 0 };
        let seal = SealWriter::new(keys, name, flags, inner)?;
        Ok(if compress { ObjectWriter::Zstd(zstd::stream::write::Encoder::new(seal, 3)?) } else { ObjectWriter::Plain(seal) })
    }

    /// Returns the inner writer and the sealed size.
    pub fn finish(self) -> io::Result<(W, u64)> {
        let seal = match self {
            ObjectWriter::Plain(s) => s,
            ObjectWriter::Zstd(z) => z.finish()?,
        };
        seal.finish()
    }
}

impl<W: Write> Write for ObjectWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            ObjectWriter::Plain(s) => s.write(data),
            ObjectWriter::Zstd(z) => z.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens an object for reading its plaintext (decompressing when flagged).
pub fn open_object<R: Read + 'static>(keys: &Keys, name: &str, inner: R, len: u64) -> io::Result<Box<dyn Read>> {
    let r = OpenReader::new(keys, name, inner, len)?;
    Ok(if r.flags & FLAG_ZSTD != 0 { Box::new(zstd::stream::read::Decoder::new(r)?) } else { Box::new(r) })
}

/// Whether data starting with `head` is already compressed (gzip, zstd, xz, bzip2).
pub fn looks_compressed(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || head.starts_with(b"BZh")
}

/// SHA-256 of a byte slice, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(keys: &Keys, name: &str, data: &[u8], compress: bool) -> Vec<u8> {
        let mut w = ObjectWriter::new(keys, name, compress, Vec::new()).unwrap();
        w.write_all(data).unwrap();
        let (out, n) = w.finish().unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn open(keys: &Keys, name: &str, sealed: Vec<u8>) -> io::Result<Vec<u8>> {
        let len = sealed.len() as u64;
        let mut r = open_object(keys, name, io::Cursor::new(sealed), len)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_sizes_and_tampering() {
        let keys = Keys::from_master([5; 32]);
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            for compress in [false, true] {
                let sealed = seal(&keys, "n1", &data, compress);
                assert_eq!(open(&keys, "n1", sealed.clone()).unwrap(), data, "{size} {compress}");
                // Another name (a swapped object) fails.
                assert!(open(&keys, "n2", sealed.clone()).is_err());
                // Another key fails.
                assert!(open(&Keys::from_master([6; 32]), "n1", sealed.clone()).is_err());
                // A flipped byte anywhere fails.
                for at in [0, 8, 20, HEADER_LEN, sealed.len() - 1] {
                    let mut bad = sealed.clone();
                    bad[at] ^= 0x40;
                    assert!(open(&keys, "n1", bad).is_err(), "flip at {at} size {size}");
                }
                // Truncation at a chunk boundary fails.
                if size > CHUNK && !compress {
                    let cut = sealed[..HEADER_LEN + CHUNK + TAG].to_vec();
                    assert!(open(&keys, "n1", cut).is_err());
                }
            }
        }
    }

    #[test]
    fn password_and_key_file() {
        std::env::set_var("BERTH_BACKUP_ARGON2_MEMORY_KIB", "1024");
        std::env::set_var("BERTH_BACKUP_ARGON2_PASSES", "1");
        let (config, keys) = new_key_config(&Secret::Password("hunter2".into())).unwrap();
        let again = unlock(&config, &Secret::Password("hunter2".into())).unwrap();
        assert_eq!(keys.object_name("x"), again.object_name("x"));
        let err = unlock(&config, &Secret::Password("wrong".into())).err().unwrap().to_string();
        assert!(err.contains("wrong password"), "{err}");
        let mut damaged = config.clone();
        let mut w = hex::decode(&damaged.wrapped_key).unwrap();
        w[20] ^= 1;
        damaged.wrapped_key = hex::encode(w);
        let err = unlock(&damaged, &Secret::Password("hunter2".into())).err().unwrap().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert!(unlock(&config, &Secret::KeyFile(b"k".to_vec())).is_err());

        let (config, keys) = new_key_config(&Secret::KeyFile(b"secret-key\n".to_vec())).unwrap();
        let again = unlock(&config, &Secret::KeyFile(b"secret-key".to_vec())).unwrap();
        assert_eq!(keys.object_name("x"), again.object_name("x"));
        assert!(unlock(&config, &Secret::KeyFile(b"other".to_vec())).err().unwrap().to_string().contains("wrong key file"));
    }

    #[test]
    fn detects_compressed_data() {
        assert!(looks_compressed(&[0x1f, 0x8b, 8, 0]));
        assert!(looks_compressed(&[0x28, 0xb5, 0x2f, 0xfd, 1]));
        assert!(!looks_compressed(b"{\"schemaVersion\":2}"));
    }
}
