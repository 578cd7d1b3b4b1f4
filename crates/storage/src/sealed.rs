//! File operations for encrypted storage (format in [`berth_crypt`]).
//! Blocking functions, run on tokio's blocking pool by the driver.

use berth_crypt::{self as crypt, invalid, FileCipher, Keyring, CHUNK, HEADER_LEN, MAX_RECORD, TAG};
use crate::{ByteRange, ByteStream};
use bytes::Bytes;
use futures::StreamExt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

fn read_header(file: &mut File, ring: &Keyring) -> io::Result<FileCipher> {
    let mut header = [0u8; HEADER_LEN as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut header).map_err(|_| invalid("encrypted file shorter than its header"))?;
    ring.open_file(&header)
}

/// Walks upload records: (plaintext size, record count, byte length of the valid prefix).
pub fn upload_scan(path: &Path, ring: &Keyring) -> io::Result<(u64, u64, u64)> {
    let mut file = File::open(path)?;
    read_header(&mut file, ring)?;
    let len = file.metadata()?.len();
    let (mut pos, mut plain, mut count) = (HEADER_LEN, 0u64, 0u64);
    while pos + 4 <= len {
        let mut l = [0u8; 4];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut l)?;
        let rec = u32::from_le_bytes(l) as u64;
        if rec as usize > MAX_RECORD || pos + 4 + rec + TAG > len {
            break; // A torn final record (crash mid-append) is not part of the upload.
        }
        pos += 4 + rec + TAG;
        plain += rec;
        count += 1;
    }
    Ok((plain, count, pos))
}

pub fn create(path: &Path, ring: &Keyring) -> io::Result<()> {
    let (header, _) = ring.new_file();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(&header)
}

/// Appends sealed records for `data`; returns the new plaintext size.
pub fn append_records(path: &Path, ring: &Keyring, data: &[Bytes]) -> io::Result<u64> {
    let (plain, mut index, valid_len) = upload_scan(path, ring)?;
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let cipher = read_header(&mut file, ring)?;
    file.set_len(valid_len)?;
    file.seek(SeekFrom::Start(valid_len))?;
    let mut out = Vec::with_capacity(MAX_RECORD + 64);
    let mut added = 0u64;
    for piece in data.iter().flat_map(|b| b.chunks(MAX_RECORD)) {
        let sealed = cipher.seal(index, false, piece);
        out.clear();
        out.extend_from_slice(&(piece.len() as u32).to_le_bytes());
        out.extend_from_slice(&sealed);
        file.write_all(&out)?;
        index += 1;
        added += piece.len() as u64;
    }
    Ok(plain + added)
}

/// Truncates an upload back to a previous record boundary.
pub fn truncate_to(path: &Path, len: u64) -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(len)
}

/// Calls `sink` with each decrypted upload record, in order.
pub fn for_each_record(path: &Path, ring: &Keyring, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let (_, count, _) = upload_scan(path, ring)?;
    let mut file = File::open(path)?;
    let cipher = read_header(&mut file, ring)?;
    file.seek(SeekFrom::Start(HEADER_LEN))?;
    let mut buf = Vec::new();
    for index in 0..count {
        let mut l = [0u8; 4];
        file.read_exact(&mut l)?;
        let rec = u32::from_le_bytes(l) as usize;
        buf.resize(rec + TAG as usize, 0);
        file.read_exact(&mut buf)?;
        sink(&cipher.open(index, false, &buf)?)?;
    }
    Ok(())
}

/// Re-seals an upload as a blob file at `dst` (fsynced).
pub fn seal_blob(upload: &Path, dst: &Path, ring: &Keyring) -> io::Result<()> {
    let (header, cipher) = ring.new_file();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(dst)?);
    out.write_all(&header)?;
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK as usize * 2);
    let mut index = 0u64;
    for_each_record(upload, ring, |plain| {
        pending.extend_from_slice(plain);
        // Keep at least one byte back so the final chunk is sealed as final.
        while pending.len() as u64 > CHUNK {
            out.write_all(&cipher.seal(index, false, &pending[..CHUNK as usize]))?;
            pending.drain(..CHUNK as usize);
            index += 1;
        }
        Ok(())
    })?;
    out.write_all(&cipher.seal(index, true, &pending))?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Rewrites a blob sealed with an older key under the current one.
/// Returns whether it was rewritten.
pub fn reseal_if_old(path: &Path, ring: &Keyring) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let cipher = read_header(&mut file, ring)?;
    if cipher.key_id == ring.current().id() {
        return Ok(false);
    }
    let size = crypt::blob_plain_len(file.metadata()?.len())?;
    let chunks = crypt::chunk_count(size);
    let tmp = path.with_extension("reseal.tmp");
    let (header, new) = ring.new_file();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    out.write_all(&header)?;
    let mut buf = vec![0u8; (CHUNK + TAG) as usize];
    for i in 0..chunks {
        let last = i + 1 == chunks;
        let want = if last { (size - i * CHUNK + TAG) as usize } else { buf.len() };
        file.read_exact(&mut buf[..want])?;
        let plain = cipher.open(i, last, &buf[..want])?;
        out.write_all(&new.seal(i, last, &plain))?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(true)
}

pub fn blob_len(path: &Path) -> io::Result<u64> {
    crypt::blob_plain_len(std::fs::metadata(path)?.len())
}

/// Streams the plaintext of `range` of a sealed blob, decrypting only the
/// chunks it touches.
pub fn read_blob(path: &Path, ring: Keyring, range: Option<ByteRange>) -> io::Result<ByteStream> {
    let mut file = File::open(path)?;
    let cipher = read_header(&mut file, &ring)?;
    let size = crypt::blob_plain_len(file.metadata()?.len())?;
    let last_chunk = crypt::chunk_count(size) - 1;
    let ByteRange { start, end } = range.unwrap_or(ByteRange { start: 0, end: size });
    let end = end.min(size);
    struct State {
        file: File,
        cipher: FileCipher,
        next: u64,
        pos: u64,
        end: u64,
        last_chunk: u64,
    }
    let state = State { file, cipher, next: start / CHUNK, pos: start, end, last_chunk };
    // An empty blob still has its (empty, final) chunk verified.
    let verify_empty = size == 0;
    let stream = futures::stream::unfold(Some((state, verify_empty)), |st| async move {
        let (mut s, verify_empty) = st?;
        if s.pos >= s.end && !verify_empty {
            return None;
        }
        let result = tokio::task::spawn_blocking(move || -> io::Result<(Bytes, State)> {
            let mut out = Vec::with_capacity((16 * CHUNK) as usize);
            let mut buf = vec![0u8; (CHUNK + TAG) as usize];
            for _ in 0..16 {
                if s.next > s.last_chunk || (s.pos >= s.end && !out.is_empty()) {
                    break;
                }
                let is_last = s.next == s.last_chunk;
                s.file.seek(SeekFrom::Start(HEADER_LEN + s.next * (CHUNK + TAG)))?;
                let n = s.file.read(&mut buf)?;
                let mut got = n;
                while got < buf.len() {
                    let more = s.file.read(&mut buf[got..])?;
                    if more == 0 {
                        break;
                    }
                    got += more;
                }
                let plain = s.cipher.open(s.next, is_last, &buf[..got])?;
                let chunk_start = s.next * CHUNK;
                let from = (s.pos - chunk_start.min(s.pos)) as usize;
                let to = ((s.end - chunk_start) as usize).min(plain.len());
                if from < to {
                    out.extend_from_slice(&plain[from..to]);
                }
                s.pos = (chunk_start + to as u64).max(s.pos);
                s.next += 1;
                if s.pos >= s.end {
                    break;
                }
            }
            Ok((Bytes::from(out), s))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match result {
            Ok((bytes, s)) => Some((Ok(bytes), Some((s, false)))),
            Err(e) => {
                // The client only sees the stream end early: say why here.
                tracing::error!(error = %e, "reading a sealed blob failed (altered or truncated on disk?); the response was cut short");
                Some((Err(e), None))
            }
        }
    })
    .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.is_empty())));
    Ok(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_crypt::MasterKey;

    async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let parts: Vec<_> = s.collect().await;
        for p in parts {
            out.extend_from_slice(&p?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn round_trip_ranges_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(MasterKey::new([1; 32]), vec![]);
        for size in [0usize, 1, CHUNK as usize, CHUNK as usize + 1, 3 * CHUNK as usize + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let up = dir.path().join(format!("up{size}"));
            create(&up, &ring).unwrap();
            let half = size / 2;
            append_records(&up, &ring, &[Bytes::copy_from_slice(&data[..half])]).unwrap();
            let n = append_records(&up, &ring, &[Bytes::copy_from_slice(&data[half..])]).unwrap();
            assert_eq!(n as usize, size);
            let blob = dir.path().join(format!("blob{size}"));
            seal_blob(&up, &blob, &ring).unwrap();
            assert_eq!(blob_len(&blob).unwrap() as usize, size);
            assert_eq!(collect(read_blob(&blob, ring.clone(), None).unwrap()).await.unwrap(), data);
            if size > 10 {
                let r = ByteRange { start: 5, end: size as u64 - 3 };
                let got = collect(read_blob(&blob, ring.clone(), Some(r)).unwrap()).await.unwrap();
                assert_eq!(got, &data[5..size - 3]);
            }
            // Truncation is detected.
            let len = std::fs::metadata(&blob).unwrap().len();
            if size as u64 > CHUNK {
                std::fs::OpenOptions::new().write(true).open(&blob).unwrap().set_len(len - TAG - 1).unwrap();
                assert!(collect(read_blob(&blob, ring.clone(), None).unwrap()).await.is_err());
            }
        }
        let other = Keyring::new(MasterKey::new([2; 32]), vec![]);
        assert!(read_blob(&dir.path().join("blob1"), other, None).is_err());
    }
}
