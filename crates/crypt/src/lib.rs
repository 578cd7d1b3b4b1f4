//! Encryption at rest for stored files and manifest bodies.
//!
//! Every file gets a random salt; its key is HMAC-SHA256(master key, salt),
//! so nonces (derived from chunk numbers) never repeat under one key.
//! Content is sealed with AES-256-GCM in pieces so that a range can be read
//! by decrypting only the pieces it touches.
//!
//! Header (32 bytes): `BRTHENC1` | key id (8) | salt (16).
//! - Blobs: fixed chunks of [`CHUNK`] plaintext bytes, each followed by its
//!   tag; the final chunk (possibly empty) is marked in its nonce, so a
//!   truncated file fails to decrypt instead of reading short.
//! - Uploads (appended piecewise): records `len u32 LE | sealed piece`,
//!   numbered in order; re-chunked into the blob format at commit.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io;

pub const MAGIC: &[u8; 8] = b"BRTHENC1";
pub const HEADER_LEN: u64 = 32;
/// Plaintext bytes per sealed blob chunk.
pub const CHUNK: u64 = 64 * 1024;
pub const TAG: u64 = 16;
/// Largest upload record (plaintext).
pub const MAX_RECORD: usize = 1 << 20;

/// A 256-bit master key and its public identifier.
#[derive(Clone)]
pub struct MasterKey {
    id: [u8; 8],
    key: [u8; 32],
}

impl MasterKey {
    pub fn new(key: [u8; 32]) -> MasterKey {
        // The id is a hash of the key: it names the key without revealing it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        mac.update(b"berth key id");
        let tag = mac.finalize().into_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag[..8]);
        MasterKey { id, key }
    }

    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        hex_string(&self.id)
    }

    fn file_cipher(&self, salt: &[u8; 16]) -> LessSafeKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"berth file key");
        mac.update(salt);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &mac.finalize().into_bytes()).expect("32-byte key"))
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The keys Berth can decrypt with; the first one encrypts.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Keyring {
        let mut keys = vec![current];
        keys.extend(previous);
        Keyring { keys }
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn find(&self, id: &[u8]) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id[..] == *id)
    }

    /// A fresh header and the cipher for a new file.
    pub fn new_file(&self) -> ([u8; HEADER_LEN as usize], FileCipher) {
        let salt: [u8; 16] = rand::random();
        let key = self.current();
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&key.id);
        header[16..].copy_from_slice(&salt);
        (header, FileCipher { aead: key.file_cipher(&salt), key_id: key.id })
    }

    /// The cipher for an existing file, from its header.
    pub fn open_file(&self, header: &[u8]) -> io::Result<FileCipher> {
        if header.len() < HEADER_LEN as usize || &header[..8] != MAGIC {
            return Err(invalid("stored file is not encrypted by berth (wrong format)"));
        }
        let key = self
            .find(&header[8..16])
            .ok_or_else(|| invalid(&format!("stored file was encrypted with unknown key {}", hex_string(&header[8..16]))))?;
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&header[16..32]);
        Ok(FileCipher { aead: key.file_cipher(&salt), key_id: key.id })
    }
}

pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// AES-256-GCM under one file's key. Nonces are unique per file because they
/// are derived from chunk or record numbers, never reused for other content.
pub struct FileCipher {
    aead: LessSafeKey,
    pub key_id: [u8; 8],
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[8] = last as u8;
    n
}

impl FileCipher {
    /// Returns ciphertext followed by its 16-byte tag.
    pub fn seal(&self, index: u64, last: bool, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG as usize);
        out.extend_from_slice(plaintext);
        self.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce(index, last)), Aad::from(MAGIC), &mut out)
            .expect("sealing an in-memory buffer cannot fail");
        out
    }

    pub fn open(&self, index: u64, last: bool, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let len = self
            .aead
            .open_in_place(Nonce::assume_unique_for_key(nonce(index, last)), Aad::from(MAGIC), &mut buf)
            .map_err(|_| invalid("stored data failed authentication (corrupt, truncated or wrong key)"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Plaintext size of a sealed blob file of `file_len` bytes.
pub fn blob_plain_len(file_len: u64) -> io::Result<u64> {
    let body = file_len.checked_sub(HEADER_LEN).ok_or_else(|| invalid("encrypted blob shorter than its header"))?;
    if body < TAG {
        return Err(invalid("encrypted blob has no final chunk"));
    }
    let chunks = body.div_ceil(CHUNK + TAG);
    Ok(body - chunks * TAG)
}

/// Seals a small value (a manifest body) in one piece with its own header.
pub fn seal_value(ring: &Keyring, plaintext: &[u8]) -> Vec<u8> {
    let (header, cipher) = ring.new_file();
    let mut out = header.to_vec();
    out.extend_from_slice(&cipher.seal(0, true, plaintext));
    out
}

/// Opens a value sealed by [`seal_value`].
pub fn open_value(ring: &Keyring, sealed: &[u8]) -> io::Result<Vec<u8>> {
    let cipher = ring.open_file(sealed)?;
    cipher.open(0, true, &sealed[HEADER_LEN as usize..])
}

/// Number of chunks a blob of `plain` bytes is sealed into (at least one).
pub fn chunk_count(plain: u64) -> u64 {
    (plain / CHUNK) + 1 - u64::from(plain % CHUNK == 0 && plain > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let ring = Keyring::new(MasterKey::new([7; 32]), vec![]);
        let (header, c) = ring.new_file();
        let sealed = c.seal(3, false, b"hello");
        let c2 = ring.open_file(&header).unwrap();
        assert_eq!(c2.open(3, false, &sealed).unwrap(), b"hello");
        assert!(c2.open(4, false, &sealed).is_err());
        assert!(c2.open(3, true, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(c2.open(3, false, &bad).is_err());
        let other = Keyring::new(MasterKey::new([8; 32]), vec![]);
        assert!(other.open_file(&header).is_err());
        let rotated = Keyring::new(MasterKey::new([8; 32]), vec![MasterKey::new([7; 32])]);
        assert!(rotated.open_file(&header).is_ok());
    }

    #[test]
    fn values() {
        let ring = Keyring::new(MasterKey::new([7; 32]), vec![]);
        let sealed = seal_value(&ring, b"{}");
        assert_eq!(open_value(&ring, &sealed).unwrap(), b"{}");
        assert!(open_value(&Keyring::new(MasterKey::new([9; 32]), vec![]), &sealed).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK), 1);
        assert_eq!(chunk_count(CHUNK + 1), 2);
        for plain in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7] {
            let file = HEADER_LEN + plain + chunk_count(plain) * TAG;
            assert_eq!(blob_plain_len(file).unwrap(), plain, "{plain}");
        }
    }
}
