//! Crash consistency: pushes (monolithic, single-PUT and chunked uploads,
//! then manifests) run in parallel while the server is killed with SIGKILL
//! at a random moment. After a restart on the same data directory:
//! - every tag of every repository in the catalog resolves to a manifest
//!   whose blobs all exist and hash to their digests;
//! - everything acknowledged before the kill (201 for blobs and manifests)
//!   is still there;
//! - no partial blob is visible: a blob is either absent or complete;
//! - upload sessions interrupted mid-flight can be resumed from the offset
//!   the server reports and completed.
//!
//! And a graceful shutdown (SIGTERM) during a large chunked upload lets the
//! upload finish or fail cleanly and exits successfully.

mod common;

use rand::Rng;
use reqwest::blocking::Client;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What the pushers saw before the kill.
#[derive(Default)]
struct Ledger {
    /// (repo, digest, size) of every blob whose upload was started.
    attempted: Vec<(String, String, usize)>,
    /// (repo, digest) of blobs acknowledged with 201.
    blobs: Vec<(String, String)>,
    /// (repo, tag, manifest digest) acknowledged with 201.
    manifests: Vec<(String, String, String)>,
    /// Chunked uploads left open: (repo, location, data, bytes acknowledged).
    open_uploads: Vec<(String, String, Vec<u8>, usize)>,
    /// Responses no client should ever get from a healthy server.
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// `Err(())` means the server went away (transport error): stop quietly.
type Step<T> = Result<T, ()>;

fn send(rb: reqwest::blocking::RequestBuilder) -> Step<reqwest::blocking::Response> {
    rb.send().map_err(|_| ())
}

fn location(url: &str, r: &reqwest::blocking::Response) -> String {
    let loc = r.headers()["location"].to_str().unwrap();
    if loc.starts_with("http") { loc.to_string() } else { format!("{url}{loc}") }
}

fn with_query(loc: &str, q: &str) -> String {
    format!("{loc}{}{q}", if loc.contains('?') { '&' } else { '?' })
}

fn expect(ledger: &Shared, what: &str, r: reqwest::blocking::Response, status: u16) -> Step<reqwest::blocking::Response> {
    if r.status().as_u16() == status {
        return Ok(r);
    }
    let s = r.status();
    // Reading the body fails if the server died while answering.
    let body = r.text().map_err(|_| ())?;
    ledger.lock().unwrap().errors.push(format!("{what}: expected {status}, got {s}: {body}"));
    Err(())
}

/// Uploads one blob in one of three styles.
fn upload_blob(c: &Client, url: &str, repo: &str, data: &[u8], style: u32, ledger: &Shared) -> Step<String> {
    let digest = common::sha256(data);
    ledger.lock().unwrap().attempted.push((repo.to_string(), digest.clone(), data.len()));
    match style % 3 {
        0 => {
            let r = send(c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}")).body(data.to_vec()))?;
            expect(ledger, "monolithic upload", r, 201)?;
        }
        1 => {
            let r = send(c.post(format!("{url}/v2/{repo}/blobs/uploads/")))?;
            let r = expect(ledger, "start upload", r, 202)?;
            let loc = location(url, &r);
            let r = send(c.put(with_query(&loc, &format!("digest={digest}"))).body(data.to_vec()))?;
            expect(ledger, "single-PUT upload", r, 201)?;
        }
        _ => {
            let r = send(c.post(format!("{url}/v2/{repo}/blobs/uploads/")))?;
            let mut loc = location(url, &expect(ledger, "start upload", r, 202)?);
            let chunk = 64 * 1024 + rand::rng().random_range(0..64 * 1024);
            let mut off = 0;
            while off < data.len() {
                let end = (off + chunk).min(data.len());
                let r = send(
                    c.patch(&loc)
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Range", format!("{off}-{}", end - 1))
                        .body(data[off..end].to_vec()),
                )?;
                loc = location(url, &expect(ledger, "patch chunk", r, 202)?);
                off = end;
            }
            let r = send(c.put(with_query(&loc, &format!("digest={digest}"))))?;
            expect(ledger, "finish chunked upload", r, 201)?;
        }
    }
    ledger.lock().unwrap().blobs.push((repo.to_string(), digest.clone()));
    Ok(digest)
}

fn push_image(c: &Client, url: &str, repo: &str, tag: &str, n: u32, ledger: &Shared) -> Step<()> {
    let mut rng = rand::rng();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","nonce":"{}"}}"#, rng.random::<u64>()).into_bytes();
    let cd = upload_blob(c, url, repo, &config, n, ledger)?;
    let mut layers = Vec::new();
    for i in 0..2 {
        let data = common::random_bytes(rng.random_range(1000..600_000));
        let d = upload_blob(c, url, repo, &data, n + i + 1, ledger)?;
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": data.len()
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layers,
    })
    .to_string();
    let r = send(
        c.put(format!("{url}/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone()),
    )?;
    let r = expect(ledger, "put manifest", r, 201)?;
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    if digest != common::sha256(manifest.as_bytes()) {
        ledger.lock().unwrap().errors.push(format!("manifest digest header {digest} does not match the body"));
    }
    ledger.lock().unwrap().manifests.push((repo.to_string(), tag.to_string(), digest));
    Ok(())
}

/// Keeps a large chunked upload going chunk by chunk, recording progress.
fn slow_upload(c: &Client, url: &str, repo: &str, ledger: &Shared, stop: &AtomicBool) -> Step<()> {
    while !stop.load(Ordering::Relaxed) {
        // Unique but cheap to make: a random block repeated, with a nonce.
        let block = common::random_bytes(64 * 1024);
        let mut data: Vec<u8> = block.iter().cycle().take(6 << 20).copied().collect();
        data[..8].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        let r = send(c.post(format!("{url}/v2/{repo}/blobs/uploads/")))?;
        let loc = location(url, &expect(ledger, "start upload", r, 202)?);
        ledger.lock().unwrap().open_uploads.push((repo.to_string(), loc.clone(), data.clone(), 0));
        // Other threads add and remove entries too: find ours by location.
        let update = |f: &dyn Fn(&mut Ledger, usize)| {
            let mut l = ledger.lock().unwrap();
            let i = l.open_uploads.iter().position(|u| u.1 == loc).unwrap();
            f(&mut l, i);
        };
        let mut off = 0;
        while off < data.len() {
            let end = (off + 300_000).min(data.len());
            let r = send(c.patch(&loc).header("Content-Range", format!("{off}-{}", end - 1)).body(data[off..end].to_vec()))?;
            expect(ledger, "patch chunk", r, 202)?;
            off = end;
            update(&|l, i| l.open_uploads[i].3 = off);
        }
        // Finished sending: completing it is the resume check's job when it
        // survives; otherwise start another.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let digest = common::sha256(&data);
        update(&|l, i| {
            l.open_uploads.remove(i);
            l.attempted.push((repo.to_string(), digest.clone(), data.len()));
        });
        let r = send(c.put(with_query(&loc, &format!("digest={digest}"))))?;
        expect(ledger, "finish slow upload", r, 201)?;
        ledger.lock().unwrap().blobs.push((repo.to_string(), digest));
    }
    Ok(())
}

fn get_json(c: &Client, url: &str) -> Value {
    let r = c.get(url).send().unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().unwrap()
}

/// Checks a blob is complete and hashes to its digest.
fn check_blob(c: &Client, url: &str, repo: &str, digest: &str, size: Option<u64>) {
    let r = c.get(format!("{url}/v2/{repo}/blobs/{digest}")).send().unwrap();
    assert_eq!(r.status(), 200, "blob {digest} of {repo}");
    let body = r.bytes().unwrap();
    assert_eq!(common::sha256(&body), digest, "blob {digest} of {repo} is corrupt");
    if let Some(size) = size {
        assert_eq!(body.len() as u64, size, "blob {digest} of {repo} has the wrong size");
    }
}

/// Every tag of every repository resolves to a complete manifest.
fn verify_catalog(c: &Client, url: &str) -> usize {
    let catalog = get_json(c, &format!("{url}/v2/_catalog?n=1000"));
    let mut checked = BTreeSet::new();
    let mut tags_seen = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags = get_json(c, &format!("{url}/v2/{repo}/tags/list?n=1000"));
        for tag in tags["tags"].as_array().unwrap() {
            tags_seen += 1;
            verify_manifest(c, url, repo, tag.as_str().unwrap(), &mut checked);
        }
    }
    tags_seen
}

fn verify_manifest(c: &Client, url: &str, repo: &str, reference: &str, checked: &mut BTreeSet<String>) {
    let r = c
        .get(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "manifest {repo}:{reference}");
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let body = r.bytes().unwrap();
    assert_eq!(common::sha256(&body), digest, "manifest {repo}:{reference}");
    let m: Value = serde_json::from_slice(&body).unwrap();
    let mut descs: Vec<&Value> = m["layers"].as_array().map(|l| l.iter().collect()).unwrap_or_default();
    if m["config"].is_object() {
        descs.push(&m["config"]);
    }
    for d in descs {
        let digest = d["digest"].as_str().unwrap();
        if checked.insert(format!("{repo}@{digest}")) {
            check_blob(c, url, repo, digest, d["size"].as_u64());
        }
    }
    for child in m["manifests"].as_array().into_iter().flatten() {
        verify_manifest(c, url, repo, child["digest"].as_str().unwrap(), checked);
    }
}

/// Everything a kill round must leave true.
fn verify_after_restart(url: &str, ledger: &Ledger) {
    let c = client();
    verify_catalog(&c, url);
    for (repo, tag, digest) in &ledger.manifests {
        let r = c.head(format!("{url}/v2/{repo}/manifests/{tag}")).send().unwrap();
        assert_eq!(r.status(), 200, "acknowledged manifest {repo}:{tag} is gone");
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), digest, "{repo}:{tag} changed");
    }
    for (repo, digest) in &ledger.blobs {
        check_blob(&c, url, repo, digest, None);
    }
    // Blobs whose upload never got an answer are absent or complete.
    for (repo, digest, size) in &ledger.attempted {
        let r = c.get(format!("{url}/v2/{repo}/blobs/{digest}")).send().unwrap();
        match r.status().as_u16() {
            404 => {}
            200 => {
                let body = r.bytes().unwrap();
                assert_eq!(body.len(), *size, "partial blob {digest} visible in {repo}");
                assert_eq!(common::sha256(&body), *digest, "corrupt blob {digest} visible in {repo}");
            }
            s => panic!("blob {digest} in {repo}: unexpected status {s}"),
        }
    }
}

/// Bytes an upload session holds, from its `Range: 0-<last>` header ("0-0"
/// is also what an empty session reports).
fn held(r: &reqwest::blocking::Response) -> usize {
    let range = r.headers()["range"].to_str().unwrap();
    let last: usize = range.rsplit('-').next().unwrap().parse().unwrap();
    if last == 0 { 0 } else { last + 1 }
}

/// Sends the rest of `data` from the offset the server holds and completes
/// the upload; a 416 tells the real offset (the "0-0" ambiguity) once.
fn finish_from_server_offset(c: &Client, url: &str, repo: &str, loc: &str, data: &[u8], acked: usize) {
    // Stored locations name the server before the restart: keep the path.
    let loc = format!("{url}{}", &loc[loc.find("/v2/").unwrap()..]);
    let r = c.get(&loc).send().unwrap();
    assert_eq!(r.status(), 204, "open upload {loc} was lost");
    let mut off = held(&r);
    assert!(off >= acked || (acked == 1 && off == 0), "upload {loc} holds {off} < {acked} acknowledged bytes");
    assert!(off <= data.len(), "upload {loc} holds more than was sent");
    let mut loc = loc;
    for attempt in 0..2 {
        if off == data.len() {
            break;
        }
        let r = c
            .patch(&loc)
            .header("Content-Range", format!("{off}-{}", data.len() - 1))
            .body(data[off..].to_vec())
            .send()
            .unwrap();
        if r.status() == 416 && attempt == 0 {
            off = held(&r).max(1);
            continue;
        }
        assert_eq!(r.status(), 202, "resume {loc} from {off}: {}", r.text().unwrap_or_default());
        loc = location(url, &r);
        break;
    }
    let digest = common::sha256(data);
    let r = c.put(with_query(&loc, &format!("digest={digest}"))).send().unwrap();
    assert_eq!(r.status(), 201, "complete resumed upload: {}", r.text().unwrap_or_default());
    check_blob(c, url, repo, &digest, Some(data.len() as u64));
}

/// Resumes the chunked uploads that were open at the kill, from the offset
/// the server reports, and completes them.
fn resume_open_uploads(url: &str, ledger: &Ledger) -> usize {
    let c = client();
    for (repo, loc, data, acked) in &ledger.open_uploads {
        finish_from_server_offset(&c, url, repo, loc, data, *acked);
    }
    ledger.open_uploads.len()
}

#[test]
fn sigkill_during_parallel_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut all = Ledger::default();
    let mut rng = rand::rng();
    for round in 0..4 {
        let mut server = common::Server::start_in(&data_dir, &[], &[]);
        let url = server.url.clone();
        // Everything from earlier rounds must have survived this restart too.
        verify_after_restart(&url, &all);
        let ledger: Shared = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for t in 0..6u32 {
            let (url, ledger, stop) = (url.clone(), ledger.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                let c = client();
                let repo = format!("crash/r{t}");
                if t >= 4 {
                    let _ = slow_upload(&c, &url, &format!("crash/slow{round}-{t}"), &ledger, &stop);
                    return;
                }
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if push_image(&c, &url, &repo, &format!("round{round}-{n}"), t + n, &ledger).is_err() {
                        return;
                    }
                    n += 1;
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
        assert!(ledger.errors.is_empty(), "unexpected responses before the kill: {:#?}", ledger.errors);
        eprintln!(
            "round {round}: {} manifests, {} blobs acknowledged, {} attempted, {} uploads open at the kill",
            ledger.manifests.len(),
            ledger.blobs.len(),
            ledger.attempted.len(),
            ledger.open_uploads.len()
        );

        let server = common::Server::start_in(&data_dir, &[], &[]);
        let mut round_ledger = ledger;
        round_ledger.manifests.extend(all.manifests.drain(..));
        round_ledger.blobs.extend(all.blobs.drain(..));
        round_ledger.attempted.extend(all.attempted.drain(..));
        verify_after_restart(&server.url, &round_ledger);
        let resumed = resume_open_uploads(&server.url, &round_ledger);
        eprintln!("round {round}: resumed {resumed} uploads after restart");
        round_ledger.open_uploads.clear();
        all = round_ledger;
        drop(server);
    }
    let server = common::Server::start_in(&data_dir, &[], &[]);
    let tags = verify_catalog(&client(), &server.url);
    assert!(tags >= all.manifests.len());
}

/// A request body that produces `total` random-ish bytes slowly, so the
/// upload is still in flight when the signal arrives.
struct SlowBody {
    data: Arc<Vec<u8>>,
    pos: usize,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(5));
        let n = buf.len().min(64 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn sigterm_during_large_chunked_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = common::Server::start_in(&data_dir, &[], &[]);
    let url = server.url.clone();
    let c = client();
    let repo = "graceful/big";
    // Something committed before, which must survive.
    let (_, before) = common::push_image(&c, &url, repo, "before");

    let data = Arc::new(common::random_bytes(24 << 20));
    let first = 1 << 20;
    let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&url, &r);
    let r = c.patch(&loc).header("Content-Range", format!("0-{}", first - 1)).body(data[..first].to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);

    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upload = {
        let (loc, data, sent) = (loc.clone(), data.clone(), sent.clone());
        std::thread::spawn(move || {
            let rest = data.len() - first;
            let body = reqwest::blocking::Body::sized(SlowBody { data: data.clone(), pos: first, sent }, rest as u64);
            client()
                .patch(&loc)
                .header("Content-Range", format!("{first}-{}", data.len() - 1))
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    while sent.load(Ordering::Relaxed) < 2 << 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.terminate();
    let outcome = upload.join().unwrap();
    assert!(status.success(), "server exit status after SIGTERM: {status:?}\n{}", server.stderr());
    // The in-flight chunk either completed or failed; never anything else.
    match &outcome {
        Ok(202) => {}
        Ok(s) => panic!("in-flight chunk answered {s}"),
        Err(_) => {}
    }
    eprintln!("in-flight chunk outcome: {outcome:?}");

    let server = common::Server::start_in(&data_dir, &[], &[]);
    let url = server.url.clone();
    verify_catalog(&c, &url);
    let r = c.head(format!("{url}/v2/{repo}/manifests/before")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), before);

    // The session survived with a consistent size: all of the chunk if it
    // was acknowledged, otherwise some prefix; resume from there.
    let loc = format!("{url}{}", &loc[loc.find("/v2/").unwrap()..]);
    let r = c.get(&loc).send().unwrap();
    assert_eq!(r.status(), 204);
    let held = held(&r);
    if matches!(outcome, Ok(202)) {
        assert_eq!(held, data.len());
    } else {
        assert!(held >= first && held <= data.len(), "upload holds {held} bytes");
    }
    finish_from_server_offset(&c, &url, repo, &loc, &data, first);
}
