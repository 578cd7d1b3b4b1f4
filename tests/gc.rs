//! Garbage collection, retention, immutable tags and quotas against the real
//! binary: a stress run with concurrent pushers while collections loop,
//! dry runs compared with real runs, and policy checks with real pushes.

mod clients_support;
mod common;

use common::{client, push_blob, random_bytes, sha256, Server};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Client = reqwest::blocking::Client;

fn manifest_for(config: &str, config_len: usize, layers: &[(String, usize)]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": layers.iter().map(|(d, n)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

fn put_manifest(c: &Client, url: &str, repo: &str, reference: &str, body: &[u8], media_type: &str) -> (u16, String) {
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn gc(c: &Client, url: &str, dry_run: bool) -> Value {
    let r = c.post(format!("{url}/admin/gc{}", if dry_run { "?dry_run=true" } else { "" })).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Sum of blob file sizes and the set of digests on disk.
fn blobs_on_disk(data: &Path) -> (u64, BTreeSet<String>) {
    let mut total = 0;
    let mut set = BTreeSet::new();
    let root = data.join("blobs/sha256");
    for fan in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let f = f.unwrap();
            total += f.metadata().unwrap().len();
            set.insert(format!("sha256:{}", f.file_name().to_string_lossy()));
        }
    }
    (total, set)
}

fn list(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// The parts of a report a dry run must predict exactly.
fn plan_of(v: &Value) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>, u64) {
    (
        list(v, "tags_deleted"),
        list(v, "manifests_deleted"),
        list(v, "links_removed"),
        list(v, "blobs_deleted"),
        v["bytes_freed"].as_u64().unwrap(),
    )
}

#[derive(Clone)]
struct Acked {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<String>,
}

fn is_blob_unknown(status: u16, body: &str) -> bool {
    status == 400 && body.contains("MANIFEST_BLOB_UNKNOWN")
}

/// Every repository's tags and every manifest they reach pull, with every
/// blob they reference (the registry as a whole, not only what one client
/// remembers): no manifest points at nothing.
fn check_whole_registry(c: &Client, url: &str) -> usize {
    let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json");
    let catalog: Value = c.get(format!("{url}/v2/_catalog?n=1000")).send().unwrap().json().unwrap();
    let mut checked = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: Value = c.get(format!("{url}/v2/{repo}/tags/list")).send().unwrap().json().unwrap();
        let mut queue: Vec<String> = tags["tags"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap().to_string()).collect();
        while let Some(reference) = queue.pop() {
            let r = c.get(format!("{url}/v2/{repo}/manifests/{reference}")).header("Accept", &accept).send().unwrap();
            assert_eq!(r.status(), 200, "{repo}:{reference}");
            let m: Value = r.json().unwrap();
            for d in m["layers"].as_array().into_iter().flatten().chain(std::iter::once(&m["config"])) {
                let Some(d) = d["digest"].as_str() else { continue };
                let r = c.get(format!("{url}/v2/{repo}/blobs/{d}")).send().unwrap();
                assert_eq!(r.status(), 200, "{repo}:{reference} needs {d}");
                assert_eq!(sha256(&r.bytes().unwrap()), d);
            }
            for child in m["manifests"].as_array().into_iter().flatten() {
                queue.push(child["digest"].as_str().unwrap().to_string());
            }
            checked += 1;
        }
    }
    checked
}

/// Blob upload data left on disk (should be none once uploads finished).
fn upload_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("uploads")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn stress_pushes_while_collecting() {
    // A grace period of two seconds: blobs no manifest uses are collected
    // two seconds after their last push or HEAD, so the collections that run
    // back to back really remove links and files while pushes go on.
    const GRACE: u64 = 2;
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_with(&[], &[("BERTH_GC_GRACE_SECS", "2"), ("BERTH_GC_INTERVAL_SECS", "0")]);
    let url = s.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    let shared_layer = random_bytes(5000);

    // Collections in a loop until the pushers are done; they report what
    // they removed.
    let collector = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = client();
            let (mut runs, mut links, mut blobs) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) || runs < 3 {
                let report = gc(&c, &url, false);
                links += list(&report, "links_removed").len();
                blobs += list(&report, "blobs_deleted").len();
                runs += 1;
            }
            (runs, links, blobs)
        })
    };

    let mut pushers = Vec::new();
    // Raw HTTP pushers: images with a layer shared by all, a blob no manifest
    // uses (garbage once the grace period passes), and deletes of earlier
    // images (their blobs become garbage). A refused manifest is pushed
    // again with its blobs, a bounded number of times.
    for p in 0..3 {
        let (url, acked, shared) = (url.clone(), acked.clone(), shared_layer.clone());
        pushers.push(std::thread::spawn(move || {
            let c = client();
            let repo = format!("stress/raw{p}");
            let mut refused = 0;
            for i in 0..8 {
                let tag = format!("t{i}");
                for attempt in 0.. {
                    assert!(attempt < 5, "{repo}:{tag} refused {attempt} times");
                    let config = format!(r#"{{"p":{p},"i":{i},"r":{}}}"#, rand::random::<u64>()).into_bytes();
                    let layer = random_bytes(2000 + i * 100);
                    let cd = push_blob(&c, &url, &repo, &config);
                    let ld = push_blob(&c, &url, &repo, &layer);
                    let sd = push_blob(&c, &url, &repo, &shared);
                    push_blob(&c, &url, &repo, &random_bytes(3000));
                    let m = manifest_for(&cd, config.len(), &[(ld.clone(), layer.len()), (sd.clone(), shared.len())]);
                    let (status, body) = put_manifest(&c, &url, &repo, &tag, &m, OCI_MANIFEST);
                    if status == 201 {
                        acked.lock().unwrap().push(Acked { repo: repo.clone(), tag: tag.clone(), manifest: m, blobs: vec![cd, ld, sd] });
                        break;
                    }
                    assert!(is_blob_unknown(status, &body), "unexpected answer {status}: {body}");
                    refused += 1;
                }
                if i % 3 == 2 {
                    let victim = format!("t{}", i - 1);
                    let d = {
                        let mut all = acked.lock().unwrap();
                        let pos = all.iter().position(|a| a.repo == repo && a.tag == victim).unwrap();
                        sha256(&all.remove(pos).manifest)
                    };
                    let r = c.delete(format!("{url}/v2/{repo}/manifests/{d}")).send().unwrap();
                    assert_eq!(r.status(), 202);
                }
            }
            refused
        }));
    }
    // Clients that HEAD their blobs, pause (shorter and longer than the
    // grace period), then PUT a manifest needing them: the answer is 201
    // with the blobs really there, or MANIFEST_BLOB_UNKNOWN.
    for p in 0..2 {
        let (url, acked) = (url.clone(), acked.clone());
        pushers.push(std::thread::spawn(move || {
            let c = client();
            let repo = format!("stress/pause{p}");
            let mut refused = 0;
            for (i, pause_ms) in [0u64, 400, 1200, 2500, GRACE * 1000 + 1300].into_iter().enumerate() {
                let config = format!(r#"{{"pause":{p},"i":{i}}}"#).into_bytes();
                let layer = random_bytes(4000);
                let cd = push_blob(&c, &url, &repo, &config);
                let ld = push_blob(&c, &url, &repo, &layer);
                for d in [&cd, &ld] {
                    let r = c.head(format!("{url}/v2/{repo}/blobs/{d}")).send().unwrap();
                    assert!(r.status() == 200 || r.status() == 404);
                }
                std::thread::sleep(Duration::from_millis(pause_ms));
                let m = manifest_for(&cd, config.len(), &[(ld.clone(), layer.len())]);
                let tag = format!("t{i}");
                let (status, body) = put_manifest(&c, &url, &repo, &tag, &m, OCI_MANIFEST);
                if status == 201 {
                    acked.lock().unwrap().push(Acked { repo: repo.clone(), tag, manifest: m, blobs: vec![cd, ld] });
                } else {
                    assert!(is_blob_unknown(status, &body), "unexpected answer {status}: {body}");
                    refused += 1;
                }
            }
            refused
        }));
    }
    // skopeo pushers: real client uploads (HEAD for existing blobs, chunked
    // or monolithic uploads, then the manifest) racing the collections. A
    // copy refused for a collected blob is retried, a bounded number of times.
    let have_skopeo = common::require("skopeo") && common::require("python3");
    if have_skopeo {
        for p in 0..2 {
            let layout = tmp.path().join(format!("layout{p}"));
            let spec = json!({"images": (0..3).map(|i| json!({"tag": format!("s{i}"), "arch": "amd64", "layers": [3000 + i * 500, 2000]})).collect::<Vec<_>>()});
            let desc = clients_support::make_oci_layout(&layout, &spec);
            let (addr, acked) = (s.addr.clone(), acked.clone());
            pushers.push(std::thread::spawn(move || {
                let repo = format!("stress/skopeo{p}");
                let mut refused = 0;
                for i in 0..3 {
                    let tag = format!("s{i}");
                    for attempt in 0.. {
                        assert!(attempt < 5, "skopeo push of {repo}:{tag} refused {attempt} times");
                        let out = skopeo_push(&layout, &tag, &format!("{addr}/{repo}:{tag}"));
                        if out.status.success() {
                            break;
                        }
                        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
                        assert!(err.contains("blob unknown"), "skopeo failed otherwise: {err}");
                        refused += 1;
                    }
                    let manifest = std::fs::read(layout.join("blobs/sha256").join(desc[&tag]["digest"].as_str().unwrap().trim_start_matches("sha256:"))).unwrap();
                    let blobs = desc[&tag]["blobs"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect();
                    acked.lock().unwrap().push(Acked { repo: repo.clone(), tag, manifest, blobs });
                }
                refused
            }));
        }
    }
    let mut refused = 0;
    for p in pushers {
        refused += p.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, links, blobs) = collector.join().unwrap();
    eprintln!("{runs} collections removed {links} links and {blobs} blobs; {refused} manifest pushes were refused with MANIFEST_BLOB_UNKNOWN");
    // The collections really removed things while the pushes went on.
    assert!(runs >= 3 && links > 0 && blobs > 0, "{runs} runs, {links} links, {blobs} blobs");

    // Every acknowledged manifest is pullable and every blob verifies.
    let c = client();
    let acked = acked.lock().unwrap().clone();
    // Retried pushes all landed: 8 images per raw pusher, 2 of them deleted;
    // 3 per skopeo pusher.
    let count = |prefix: &str| acked.iter().filter(|a| a.repo.starts_with(prefix)).count();
    assert_eq!(count("stress/raw"), 3 * 6);
    assert_eq!(count("stress/skopeo"), if have_skopeo { 6 } else { 0 });
    let check = |acked: &[Acked]| {
        for a in acked {
            let r = c.get(format!("{url}/v2/{}/manifests/{}", a.repo, a.tag)).header("Accept", OCI_MANIFEST).send().unwrap();
            assert_eq!(r.status(), 200, "{}:{}", a.repo, a.tag);
            assert_eq!(r.bytes().unwrap().as_ref(), &a.manifest[..]);
            for d in &a.blobs {
                let r = c.get(format!("{url}/v2/{}/blobs/{d}", a.repo)).send().unwrap();
                assert_eq!(r.status(), 200, "{} {d}", a.repo);
                assert_eq!(&sha256(&r.bytes().unwrap()), d);
            }
        }
    };
    check(&acked);
    assert_eq!(check_whole_registry(&c, &url), acked.len());

    // Past the grace period, one more collection: the bytes it reports are
    // the bytes gone from disk, and what remains is exactly what the
    // acknowledged manifests use (and the manifests are rows, not files).
    std::thread::sleep(Duration::from_secs(GRACE + 1));
    let (before, files_before) = blobs_on_disk(&s.data_dir);
    let report = gc(&c, &url, false);
    let (after, remaining) = blobs_on_disk(&s.data_dir);
    assert_eq!(before - after, report["bytes_freed"].as_u64().unwrap());
    assert_eq!(files_before.len() - remaining.len(), list(&report, "blobs_deleted").len() + list(&report, "orphan_files_deleted").len());
    for d in list(&report, "blobs_deleted") {
        assert!(!remaining.contains(&d), "{d} deleted but still on disk");
    }
    let used: BTreeSet<String> = acked.iter().flat_map(|a| a.blobs.iter().cloned()).collect();
    assert_eq!(remaining, used);
    assert_eq!(upload_files(&s.data_dir), 0, "upload data left behind");
    check(&acked);
    assert_eq!(check_whole_registry(&c, &url), acked.len());
    // Nothing left to collect.
    let again = gc(&c, &url, false);
    assert_eq!(again["bytes_freed"], 0);
}

fn berth(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).env_remove("BERTH_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "berth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn dry_run_predicts_the_real_run_on_a_stopped_directory_and_through_the_server() {
    let env = [("BERTH_GC_GRACE_SECS", "0"), ("BERTH_GC_INTERVAL_SECS", "0")];
    let mut s = Server::start_with(&[], &env);
    let c = client();
    let mut keep = Vec::new();
    for i in 0..3 {
        let (m, _) = common::push_image(&c, &s.url, &format!("dry/a{i}"), "v1");
        keep.push((format!("dry/a{i}"), m));
        let (_, d) = common::push_image(&c, &s.url, &format!("dry/a{i}"), "old");
        assert_eq!(c.delete(format!("{}/v2/dry/a{i}/manifests/{d}", s.url)).send().unwrap().status(), 202);
        push_blob(&c, &s.url, &format!("dry/a{i}"), &random_bytes(777));
    }
    // Through the running server's admin API, with the CLI.
    let dry = berth(&["gc", "--dry-run", "--url", &s.url], &[]);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(list(&dry, "blobs_deleted").len(), 9);
    let again: Value = serde_json::from_str(&berth(&["gc", "--dry-run", "--url", &s.url], &[])).unwrap();
    assert_eq!(plan_of(&dry), plan_of(&again), "a dry run changes nothing");

    // On the stopped data directory.
    s.terminate();
    let dir = s.data_dir.to_str().unwrap().to_string();
    let dry_cli: Value = serde_json::from_str(&berth(&["gc", "--dry-run", "--data-dir", &dir], &env)).unwrap();
    assert_eq!(plan_of(&dry), plan_of(&dry_cli));
    let (before, _) = blobs_on_disk(&s.data_dir);
    let real: Value = serde_json::from_str(&berth(&["gc", "--data-dir", &dir], &env)).unwrap();
    let (after, _) = blobs_on_disk(&s.data_dir);
    assert_eq!(plan_of(&dry), plan_of(&real));
    assert_eq!(before - after, real["bytes_freed"].as_u64().unwrap());
    let usage: Value = serde_json::from_str(&berth(&["usage", "--data-dir", &dir], &env)).unwrap();
    assert_eq!(usage["repositories"].as_array().unwrap().len(), 3);

    // What was kept still pulls.
    let s = Server::start_in(&s.data_dir, &[], &env);
    for (repo, m) in keep {
        let r = c.get(format!("{}/v2/{repo}/manifests/v1", s.url)).header("Accept", OCI_MANIFEST).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().as_ref(), &m[..]);
    }
}

#[test]
fn untagged_manifests_go_but_index_children_and_referrers_of_kept_subjects_stay() {
    let s = Server::start_with(&[], &[("BERTH_GC_GRACE_SECS", "0"), ("BERTH_GC_INTERVAL_SECS", "0"), ("BERTH_GC_UNTAGGED_AFTER_SECS", "1")]);
    let c = client();
    let repo = "untagged/app";
    let url = &s.url;
    let image = |extra: &str, subject: Option<&str>| -> (String, String) {
        let config = format!(r#"{{"x":"{extra}"}}"#).into_bytes();
        let layer = random_bytes(1500);
        let cd = push_blob(&c, url, repo, &config);
        let ld = push_blob(&c, url, repo, &layer);
        let mut m: Value = serde_json::from_slice(&manifest_for(&cd, config.len(), &[(ld.clone(), layer.len())])).unwrap();
        if let Some(s) = subject {
            m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": s, "size": 1});
        }
        let body = m.to_string().into_bytes();
        let d = sha256(&body);
        assert_eq!(put_manifest(&c, url, repo, &d, &body, OCI_MANIFEST).0, 201);
        (d, ld)
    };
    let (amd, amd_layer) = image("amd64", None);
    let (arm, _) = image("arm64", None);
    let size = |d: &str| c.get(format!("{url}/v2/{repo}/manifests/{d}")).send().unwrap().bytes().unwrap().len();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd, "size": size(&amd)}, {"mediaType": OCI_MANIFEST, "digest": arm, "size": size(&arm)}]})
    .to_string()
    .into_bytes();
    assert_eq!(put_manifest(&c, url, repo, "multi", &index, OCI_INDEX).0, 201);
    let (sig_kept, _) = image("sig of index", Some(&sha256(&index)));
    let (loose, loose_layer) = image("untagged", None);
    let (sig_gone, _) = image("sig of untagged", Some(&loose));
    std::thread::sleep(Duration::from_millis(2100));
    let report = gc(&c, url, false);
    let mut expected = vec![format!("{repo}@{loose}"), format!("{repo}@{sig_gone}")];
    expected.sort();
    assert_eq!(list(&report, "manifests_deleted"), expected);
    for d in [&amd, &arm, &sig_kept] {
        assert_eq!(c.get(format!("{url}/v2/{repo}/manifests/{d}")).send().unwrap().status(), 200);
    }
    for d in [&loose, &sig_gone] {
        assert_eq!(c.get(format!("{url}/v2/{repo}/manifests/{d}")).send().unwrap().status(), 404);
    }
    assert_eq!(c.get(format!("{url}/v2/{repo}/blobs/{amd_layer}")).send().unwrap().status(), 200);
    assert_eq!(c.get(format!("{url}/v2/{repo}/blobs/{loose_layer}")).send().unwrap().status(), 404);
    assert!(list(&report, "blobs_deleted").contains(&loose_layer));

    // Deleting a subject through the API takes its referrers along.
    let (subject, _) = image("subject", None);
    let (referrer, _) = image("its sbom", Some(&subject));
    assert_eq!(c.delete(format!("{url}/v2/{repo}/manifests/{subject}")).send().unwrap().status(), 202);
    assert_eq!(c.get(format!("{url}/v2/{repo}/manifests/{referrer}")).send().unwrap().status(), 404);
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str) -> std::process::Output {
    clients_support::output(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}")),
    )
}

#[test]
fn retention_keeps_newest_and_matching_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        r#"
[gc]
interval_secs = 0
grace_secs = 0

[[registry.retention]]
repositories = ["ci/**"]
keep_last = 2
keep_tags = ["release-.*"]
"#,
    );
    let c = client();
    let url = &s.url;
    let mut digests = Vec::new();
    for tag in ["v1", "release-1", "v2", "v3", "v4"] {
        let (_, d) = common::push_image(&c, url, "ci/app", tag);
        digests.push((tag, d));
        // Push times are in seconds: one per second orders them.
        std::thread::sleep(Duration::from_millis(1100));
    }
    common::push_image(&c, url, "other/app", "v1");
    if common::have("skopeo") && common::have("python3") {
        let layout = tmp.path().join("layout");
        clients_support::make_oci_layout(&layout, &json!({"images": [{"tag": "v5", "arch": "amd64", "layers": [20000]}]}));
        let out = skopeo_push(&layout, "v5", &format!("{}/ci/app:v5", s.addr));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        common::require("skopeo");
        common::push_image(&c, url, "ci/app", "v5");
    }
    let dry = gc(&c, url, true);
    assert_eq!(list(&dry, "tags_deleted"), vec!["ci/app:v1", "ci/app:v2", "ci/app:v3"]);
    let real = gc(&c, url, false);
    assert_eq!(plan_of(&dry), plan_of(&real));
    assert_eq!(list(&real, "manifests_deleted").len(), 3);
    assert!(real["bytes_freed"].as_u64().unwrap() > 0);
    let tags: Value = c.get(format!("{url}/v2/ci/app/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], json!(["release-1", "v4", "v5"]));
    let tags: Value = c.get(format!("{url}/v2/other/app/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
    for (tag, d) in digests {
        let status = c.get(format!("{url}/v2/ci/app/manifests/{d}")).send().unwrap().status();
        assert_eq!(status, if ["v1", "v2", "v3"].contains(&tag) { 404 } else { 200 }, "{tag}");
    }
}

/// Pushes a cosign-style signature of `subject` under `sha256-<hex>.sig`.
fn push_cosign_signature(c: &Client, url: &str, repo: &str, subject: &str) {
    let payload = format!(r#"{{"critical":{{"image":{{"docker-manifest-digest":"{subject}"}}}}}}"#).into_bytes();
    let layer = common::push_blob(c, url, repo, &payload);
    let config = common::push_blob(c, url, repo, b"{}");
    let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": layer,
            "size": payload.len(), "annotations": {"dev.cosignproject.cosign/signature": "AAAA"}}]});
    let tag = format!("{}.sig", subject.replace(':', "-"));
    let (status, body) = put_manifest(c, url, repo, &tag, m.to_string().as_bytes(), "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(status, 201, "{body}");
}

#[test]
fn retention_ignores_signature_tags_and_takes_them_with_their_image() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        "[gc]\ninterval_secs = 0\ngrace_secs = 0\n[[registry.retention]]\nrepositories = [\"ci/**\"]\nkeep_last = 2\n",
    );
    let c = client();
    let url = &s.url;
    let mut digests = Vec::new();
    for tag in ["t1", "t2", "t3"] {
        digests.push(common::push_image(&c, url, "ci/signed", tag).1);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Signed after the images: the newest tags are signature tags.
    for d in &digests {
        push_cosign_signature(&c, url, "ci/signed", d);
    }
    let sig = |d: &String| format!("{}.sig", d.replace(':', "-"));
    let dry = gc(&c, url, true);
    let mut expected = vec!["ci/signed:t1".to_string(), format!("ci/signed:{}", sig(&digests[0]))];
    expected.sort();
    let mut got = list(&dry, "tags_deleted");
    got.sort();
    assert_eq!(got, expected);
    let real = gc(&c, url, false);
    assert_eq!(plan_of(&dry), plan_of(&real));
    assert_eq!(list(&real, "manifests_deleted").len(), 2, "{real}");
    let tags: Value = c.get(format!("{url}/v2/ci/signed/tags/list")).send().unwrap().json().unwrap();
    let mut want = vec![sig(&digests[1]), sig(&digests[2]), "t2".into(), "t3".into()];
    want.sort();
    assert_eq!(tags["tags"], json!(want));
}

#[test]
fn tags_shaped_like_signatures_without_a_subject_are_ordinary_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        "[gc]\ninterval_secs = 0\ngrace_secs = 0\n[[registry.retention]]\nrepositories = [\"ci/**\"]\nkeep_last = 1\n",
    );
    let c = client();
    let url = &s.url;
    let fake_lower = format!("sha256-{}.sig", "cd".repeat(32));
    let fake_upper = format!("sha256-{}.sig", "AB".repeat(32));
    for tag in [fake_lower.as_str(), fake_upper.as_str(), "v1"] {
        common::push_image(&c, url, "ci/fake", tag);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let real = gc(&c, url, false);
    let mut got = list(&real, "tags_deleted");
    got.sort();
    let mut want = vec![format!("ci/fake:{fake_lower}"), format!("ci/fake:{fake_upper}")];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn deleting_an_image_keeps_an_immutable_tag_on_its_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        "[gc]\ninterval_secs = 0\n[[registry.immutable_tags]]\nrepositories = [\"prod/**\"]\ntags = [\"v\\\\d+\"]\n",
    );
    let c = client();
    let url = &s.url;
    let (_, subject) = common::push_image(&c, url, "prod/rel", "latest");
    push_cosign_signature(&c, url, "prod/rel", &subject);
    // The same signature manifest is also the immutable tag v1.
    let sig_tag = format!("{}.sig", subject.replace(':', "-"));
    let sig = c.get(format!("{url}/v2/prod/rel/manifests/{sig_tag}")).send().unwrap().bytes().unwrap();
    let (status, body) = put_manifest(&c, url, "prod/rel", "v1", &sig, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(status, 201, "{body}");
    let r = c.delete(format!("{url}/v2/prod/rel/manifests/{subject}")).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(c.get(format!("{url}/v2/prod/rel/manifests/v1")).send().unwrap().status(), 200);
}

#[test]
fn immutable_tags_cannot_move_or_be_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        r#"
[[registry.immutable_tags]]
repositories = ["prod/**"]
tags = ["v\\d+(\\.\\d+)*"]
"#,
    );
    let c = client();
    let url = &s.url;
    let (m1, d1) = common::push_image(&c, url, "prod/app", "v1.0");
    // The same manifest again is fine; another one is refused.
    assert_eq!(put_manifest(&c, url, "prod/app", "v1.0", &m1, OCI_MANIFEST).0, 201);
    let (m2, d2) = common::push_image(&c, url, "prod/app", "latest");
    let (status, body) = put_manifest(&c, url, "prod/app", "v1.0", &m2, OCI_MANIFEST);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DENIED") && body.contains("immutable"), "{body}");
    // Mutable tags still move.
    let (m3, _) = common::push_image(&c, url, "prod/app", "latest");
    assert_ne!(m2, m3);
    // Deleting the tag, or the manifest it points at, is refused with a
    // message naming the tag.
    for reference in ["v1.0".to_string(), d1.clone()] {
        let r = c.delete(format!("{url}/v2/prod/app/manifests/{reference}")).send().unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("v1.0") && message.contains("immutable"), "{message}");
    }
    // Collection never removes it either, even untagged-manifest collection
    // of the image it replaced.
    let report = gc(&c, url, false);
    assert!(list(&report, "manifests_deleted").iter().all(|m| !m.ends_with(&d1)));
    let r = c.get(format!("{url}/v2/prod/app/manifests/v1.0")).header("Accept", OCI_MANIFEST).send().unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), &m1[..]);
    // Outside the pattern, no rule applies.
    common::push_image(&c, url, "dev/app", "v1.0");
    common::push_image(&c, url, "dev/app", "v1.0");
    let _ = d2;

    if common::require("skopeo") && common::require("python3") {
        let layout = tmp.path().join("layout");
        clients_support::make_oci_layout(&layout, &json!({"images": [{"tag": "v2", "arch": "amd64", "layers": [1000]}, {"tag": "other", "arch": "arm64", "layers": [1000]}]}));
        let out = skopeo_push(&layout, "v2", &format!("{}/prod/app:v2", s.addr));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = skopeo_push(&layout, "other", &format!("{}/prod/app:v2", s.addr));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
    }
}

#[test]
fn quotas_refuse_pushes_before_data_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        r#"
[[registry.quotas]]
repositories = "team/**"
max_bytes = 10000

[[registry.quotas]]
repositories = "sk/**"
max_bytes = 60000
"#,
    );
    let c = client();
    let url = &s.url;
    let first = random_bytes(6000);
    let d1 = push_blob(&c, url, "team/a", &first);
    // Monolithic upload over the limit.
    let second = random_bytes(6000);
    let d2 = sha256(&second);
    let r = c.post(format!("{url}/v2/team/b/blobs/uploads/?digest={d2}")).body(second.clone()).send().unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().unwrap();
    assert!(body.contains("DENIED") && body.contains("6000") && body.contains("10000"), "{body}");
    // Chunked upload over the limit: refused at commit.
    let r = c.post(format!("{url}/v2/team/b/blobs/uploads/")).send().unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = c.patch(format!("{url}{location}")).body(second.clone()).send().unwrap();
    assert_eq!(r.status(), 202);
    let r = c.put(format!("{url}{location}?digest={d2}")).send().unwrap();
    assert_eq!(r.status(), 403);
    // Nothing of it was kept.
    let (_, on_disk) = blobs_on_disk(&s.data_dir);
    assert!(!on_disk.contains(&d2));
    assert!(std::fs::read_dir(s.data_dir.join("uploads")).unwrap().next().is_none());
    assert_eq!(c.head(format!("{url}/v2/team/b/blobs/{d2}")).send().unwrap().status(), 404);
    // A blob already counted costs nothing more, by mount or upload.
    let r = c.post(format!("{url}/v2/team/b/blobs/uploads/?mount={d1}&from=team/a")).send().unwrap();
    assert_eq!(r.status(), 201);
    push_blob(&c, url, "team/c", &first);
    // Outside the pattern, no limit.
    push_blob(&c, url, "solo/x", &second);
    // Usage, over the API and the CLI.
    let usage: Value = c.get(format!("{url}/admin/usage")).send().unwrap().json().unwrap();
    assert_eq!(usage["quotas"][0]["used_bytes"], 6000);
    assert_eq!(usage["quotas"][0]["max_bytes"], 10000);
    let cli: Value = serde_json::from_str(&berth(&["usage", "--url", url], &[])).unwrap();
    assert_eq!(cli, usage);
    let names: HashSet<&str> = usage["repositories"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains("team/a") && names.contains("solo/x"));

    // skopeo: the first image fits, the second would go over and is refused
    // with the quota's message; none of its new blobs is kept.
    if common::require("skopeo") && common::require("python3") {
        let layout = tmp.path().join("layout");
        let desc = clients_support::make_oci_layout(
            &layout,
            &json!({"images": [{"tag": "small", "arch": "amd64", "layers": [30000]}, {"tag": "big", "arch": "arm64", "layers": [40000]}]}),
        );
        let out = skopeo_push(&layout, "small", &format!("{}/sk/app:small", s.addr));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = skopeo_push(&layout, "big", &format!("{}/sk/app:big", s.addr));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("quota exceeded for sk/**"), "{err}");
        let (_, on_disk) = blobs_on_disk(&s.data_dir);
        let small: Vec<String> = list(&desc["small"], "blobs");
        let layer_of_big = &list(&desc["big"], "blobs")[1];
        assert!(small.iter().all(|d| on_disk.contains(d)));
        assert!(!on_disk.contains(layer_of_big));
        assert_eq!(c.get(format!("{url}/v2/sk/app/manifests/big")).send().unwrap().status(), 404);
        let usage: Value = c.get(format!("{url}/admin/usage")).send().unwrap().json().unwrap();
        let sk = usage["quotas"].as_array().unwrap().iter().find(|q| q["repositories"] == "sk/**").unwrap().clone();
        let small_bytes: u64 = small.iter().map(|d| c.head(format!("{url}/v2/sk/app/blobs/{d}")).send().unwrap().headers()["content-length"].to_str().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(sk["used_bytes"], small_bytes);
        assert_eq!(sk["max_bytes"], 60000);
        let repo = usage["repositories"].as_array().unwrap().iter().find(|r| r["name"] == "sk/app").unwrap().clone();
        assert_eq!(repo["bytes"], small_bytes);
    }
}

#[test]
fn retention_by_age_and_the_first_matching_policy() {
    // Days are whole: `0` makes every tag old enough, `1` none of the tags
    // pushed just now. Both sides of the age test, without a clock.
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        r#"
[gc]
interval_secs = 0
grace_secs = 0

[[registry.retention]]
repositories = ["ci/old/**"]
delete_older_than_days = 0
keep_tags = ["stable", "release-.*"]

[[registry.retention]]
repositories = ["ci/**"]
delete_older_than_days = 1
"#,
    );
    let c = client();
    let url = &s.url;
    let mut old = Vec::new();
    for tag in ["a", "b", "stable", "release-2"] {
        old.push((tag, common::push_image(&c, url, "ci/old/app", tag).1));
    }
    for tag in ["a", "b"] {
        common::push_image(&c, url, "ci/new/app", tag);
    }
    let dry = gc(&c, url, true);
    assert_eq!(list(&dry, "tags_deleted"), vec!["ci/old/app:a", "ci/old/app:b"]);
    let real = gc(&c, url, false);
    assert_eq!(plan_of(&dry), plan_of(&real));
    let mut gone: Vec<String> = old[..2].iter().map(|(_, d)| format!("ci/old/app@{d}")).collect();
    gone.sort();
    assert_eq!(list(&real, "manifests_deleted"), gone);
    // Each removed image had a config and a layer of its own.
    assert_eq!(list(&real, "blobs_deleted").len(), 4);
    let tags: Value = c.get(format!("{url}/v2/ci/old/app/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], json!(["release-2", "stable"]));
    // ci/new/app matched the second policy only: nothing is a day old.
    let tags: Value = c.get(format!("{url}/v2/ci/new/app/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], json!(["a", "b"]));
    for (tag, d) in old {
        let status = c.get(format!("{url}/v2/ci/old/app/manifests/{d}")).send().unwrap().status();
        assert_eq!(status, if ["a", "b"].contains(&tag) { 404 } else { 200 }, "{tag}");
    }
}

#[test]
fn referrers_stay_with_their_subject_when_configured_not_to_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        tmp.path(),
        r#"
[gc]
interval_secs = 0
grace_secs = 0
untagged_after_secs = 1
delete_referrers_with_subject = false
"#,
    );
    let c = client();
    let url = &s.url;
    let repo = "nofollow/app";
    let image = |extra: &str, subject: Option<&str>| -> String {
        let config = format!(r#"{{"x":"{extra}"}}"#).into_bytes();
        let layer = random_bytes(1200);
        let cd = push_blob(&c, url, repo, &config);
        let ld = push_blob(&c, url, repo, &layer);
        let mut m: Value = serde_json::from_slice(&manifest_for(&cd, config.len(), &[(ld, layer.len())])).unwrap();
        if let Some(s) = subject {
            m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": s, "size": 1});
        }
        let body = m.to_string().into_bytes();
        let d = sha256(&body);
        assert_eq!(put_manifest(&c, url, repo, &d, &body, OCI_MANIFEST).0, 201);
        d
    };
    // An untagged image with a signature: the signature is kept (referrers
    // do not follow), and it keeps its subject.
    let subject = image("subject", None);
    let sig = image("signature", Some(&subject));
    let loose = image("loose", None);
    // Deleting a subject through the API leaves its referrer.
    let deleted = image("deleted subject", None);
    let sbom = image("sbom", Some(&deleted));
    assert_eq!(c.delete(format!("{url}/v2/{repo}/manifests/{deleted}")).send().unwrap().status(), 202);
    std::thread::sleep(Duration::from_millis(2100));
    let report = gc(&c, url, false);
    assert_eq!(list(&report, "manifests_deleted"), vec![format!("{repo}@{loose}")]);
    for d in [&subject, &sig, &sbom] {
        assert_eq!(c.get(format!("{url}/v2/{repo}/manifests/{d}")).send().unwrap().status(), 200, "{d}");
    }
    let referrers: Value = c.get(format!("{url}/v2/{repo}/referrers/{subject}")).send().unwrap().json().unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], json!(sig));
}

#[test]
fn expired_upload_sessions_are_removed_by_gc_on_a_stopped_directory() {
    let mut s = Server::start_with(&[], &[("BERTH_GC_INTERVAL_SECS", "0")]);
    let c = client();
    let url = &s.url;
    // An upload with data that is never finished.
    let r = c.post(format!("{url}/v2/up/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = c.patch(format!("{url}{location}")).body(random_bytes(50_000)).send().unwrap();
    assert_eq!(r.status(), 202);
    common::push_image(&c, url, "up/app", "v1");
    assert_eq!(upload_files(&s.data_dir), 1);
    s.terminate();
    // Older than a one-second TTL once two seconds have passed (times are
    // whole seconds).
    std::thread::sleep(Duration::from_millis(2100));
    let dir = s.data_dir.to_str().unwrap().to_string();
    let env = [("BERTH_REGISTRY_UPLOAD_TTL_SECS", "1"), ("BERTH_GC_GRACE_SECS", "0")];
    let dry: Value = serde_json::from_str(&berth(&["gc", "--dry-run", "--data-dir", &dir], &env)).unwrap();
    assert_eq!(dry["uploads_expired"], 1);
    assert_eq!(upload_files(&s.data_dir), 1, "a dry run removes nothing");
    let real: Value = serde_json::from_str(&berth(&["gc", "--data-dir", &dir], &env)).unwrap();
    assert_eq!(real["uploads_expired"], 1);
    assert_eq!(upload_files(&s.data_dir), 0);
    // The image is untouched and the session is gone.
    let s = Server::start_in(&s.data_dir, &[], &[("BERTH_GC_INTERVAL_SECS", "0")]);
    let r = c.get(format!("{}/v2/up/app/manifests/v1", s.url)).header("Accept", OCI_MANIFEST).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}{location}", s.url)).send().unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("BLOB_UPLOAD_UNKNOWN"));
}

#[test]
fn gc_and_usage_through_the_admin_api_need_the_admin_action() {
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    common::write_htpasswd(&htpasswd, &[("root", "root-pw"), ("dev", "dev-pw")]);
    let s = Server::start_config(
        tmp.path(),
        &format!(
            r#"
[gc]
interval_secs = 0
grace_secs = 0

[auth]
mode = "basic"
htpasswd = "{}"

[[auth.rules]]
repositories = ["**"]
actions = ["admin"]
users = ["root"]

[[auth.rules]]
repositories = ["**"]
actions = ["pull", "push", "delete"]
users = ["dev"]
"#,
            htpasswd.display()
        ),
    );
    let c = client();
    let url = &s.url;
    let push = |repo: &str| {
        let data = random_bytes(4321);
        let d = sha256(&data);
        let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}")).basic_auth("dev", Some("dev-pw")).body(data).send().unwrap();
        assert_eq!(r.status(), 201);
        d
    };
    let garbage = push("auth/app");
    // Anonymous: a challenge; a user without admin: 403 DENIED. Both with
    // an OCI error body, and nothing collected.
    let r = c.post(format!("{url}/admin/gc")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert!(r.text().unwrap().contains("UNAUTHORIZED"));
    let r = c.post(format!("{url}/admin/gc")).basic_auth("dev", Some("dev-pw")).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("DENIED"));
    let r = c.get(format!("{url}/admin/usage")).basic_auth("dev", Some("dev-pw")).send().unwrap();
    assert_eq!(r.status(), 403);
    // The CLI with the admin's credentials; without them it fails.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    let out = cmd.args(["gc", "--url", url]).env_remove("BERTH_CONFIG").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let admin = [("BERTH_PASSWORD", "root-pw")];
    let dry: Value = serde_json::from_str(&berth(&["gc", "--dry-run", "--url", url, "--user", "root"], &admin)).unwrap();
    assert_eq!(list(&dry, "blobs_deleted"), vec![garbage.clone()]);
    let r = c.head(format!("{url}/v2/auth/app/blobs/{garbage}")).basic_auth("dev", Some("dev-pw")).send().unwrap();
    assert_eq!(r.status(), 200, "a dry run removes nothing");
    // The HEAD refreshed the blob; the grace period is zero, so a run in a
    // later second collects it.
    std::thread::sleep(Duration::from_millis(1100));
    let real: Value = serde_json::from_str(&berth(&["gc", "--url", url, "--user", "root"], &admin)).unwrap();
    assert_eq!(list(&real, "blobs_deleted"), vec![garbage.clone()]);
    assert_eq!(real["bytes_freed"], 4321);
    let usage: Value = serde_json::from_str(&berth(&["usage", "--url", url, "--user", "root"], &admin)).unwrap();
    assert_eq!(usage["total_bytes"], 0);
}

#[test]
fn platform_manifests_of_a_tagged_index_pushed_by_skopeo_stay() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_with(&[], &[("BERTH_GC_GRACE_SECS", "0"), ("BERTH_GC_INTERVAL_SECS", "0"), ("BERTH_GC_UNTAGGED_AFTER_SECS", "1")]);
    let c = client();
    let url = &s.url;
    let layout = tmp.path().join("layout");
    let desc = clients_support::make_oci_layout(
        &layout,
        &json!({"indexes": [{"tag": "multi", "archs": ["amd64", "arm64", "s390x"], "layers": [3000]}],
                "images": [{"tag": "loose", "arch": "amd64", "layers": [2000]}]}),
    );
    let push = |tag: &str, dest: &str| {
        clients_support::run(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--all", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{dest}", s.addr)),
        );
    };
    push("multi", "multi/app:multi");
    // An image pushed by digest only: untagged from the start.
    let loose = desc["loose"]["digest"].as_str().unwrap().to_string();
    push("loose", &format!("multi/app@{loose}"));
    std::thread::sleep(Duration::from_millis(2100));
    let report = gc(&c, url, false);
    assert_eq!(list(&report, "manifests_deleted"), vec![format!("multi/app@{loose}")]);
    let children = list(&desc["multi"], "manifests");
    assert_eq!(children.len(), 3);
    for d in &children {
        assert_eq!(c.get(format!("{url}/v2/multi/app/manifests/{d}")).send().unwrap().status(), 200, "{d}");
    }
    for d in list(&desc["multi"], "blobs") {
        assert_eq!(c.get(format!("{url}/v2/multi/app/blobs/{d}")).send().unwrap().status(), 200, "{d}");
    }
    for d in list(&desc["loose"], "blobs") {
        assert!(list(&report, "blobs_deleted").contains(&d));
    }
    // skopeo pulls every platform back.
    let out = tmp.path().join("pulled");
    clients_support::run(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{}/multi/app:multi", s.addr))
            .arg(format!("oci:{}:multi", out.display())),
    );
    // Once the index's tag is deleted, the index and its platforms go.
    let index = desc["multi"]["digest"].as_str().unwrap();
    assert_eq!(c.delete(format!("{url}/v2/multi/app/manifests/multi")).send().unwrap().status(), 202);
    std::thread::sleep(Duration::from_millis(2100));
    let report = gc(&c, url, false);
    let mut gone: Vec<String> = children.iter().chain(std::iter::once(&index.to_string())).map(|d| format!("multi/app@{d}")).collect();
    gone.sort();
    assert_eq!(list(&report, "manifests_deleted"), gone);
    let (_, on_disk) = blobs_on_disk(&s.data_dir);
    assert!(on_disk.is_empty(), "{on_disk:?}");
}

/// `berth gc` and `berth usage` against a TLS-only server: `--url https://…`
/// with `--ca-cert` (certificates from `berth tls self-signed`); an
/// untrusted certificate, a CA file with plain HTTP and a URL without a
/// scheme are refused before anything is collected.
#[test]
fn gc_and_usage_through_a_tls_only_server() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    berth(&["tls", "self-signed", "--host", "127.0.0.1", "--host", "localhost", "--out", certs.to_str().unwrap()], &[]);
    let data = tmp.path().join("data");
    let garbage = {
        let s = Server::start_in(&data, &[], &[]);
        let c = client();
        common::push_image(&c, &s.url, "app", "v1");
        push_blob(&c, &s.url, "app", &random_bytes(5000))
    };
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[gc]\ninterval_secs = 0\ngrace_secs = 0\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display()
        ),
    )
    .unwrap();
    let s = Server::start_in(&data, &["--config", config.to_str().unwrap()], &[]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let fails = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(args).env_remove("BERTH_CONFIG").output().unwrap();
        assert!(!out.status.success(), "berth {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails(&["gc", "--url", &s.url]);
    assert!(err.to_lowercase().contains("certificate"), "an untrusted certificate: {err}");
    let err = fails(&["gc", "--url", &format!("http://{}", s.addr), "--ca-cert", ca]);
    assert!(err.contains("--ca-cert is for https://"), "{err}");
    let err = fails(&["usage", "--url", &s.addr]);
    assert!(err.contains("expected http://HOST[:PORT] or https://HOST[:PORT]"), "{err}");

    std::thread::sleep(Duration::from_millis(1100)); // past the zero grace period
    let dry: Value = serde_json::from_str(&berth(&["gc", "--dry-run", "--url", &s.url, "--ca-cert", ca], &[])).unwrap();
    assert_eq!(list(&dry, "blobs_deleted"), vec![garbage.clone()]);
    let real: Value = serde_json::from_str(&berth(&["gc", "--url", &s.url, "--ca-cert", ca], &[])).unwrap();
    assert_eq!(list(&real, "blobs_deleted"), vec![garbage]);
    let usage: Value = serde_json::from_str(&berth(&["usage", "--url", &format!("{}/", s.url), "--ca-cert", ca], &[])).unwrap();
    assert_eq!(usage["repositories"][0]["name"], "app", "{usage}");
    assert!(usage["total_bytes"].as_u64().unwrap() > 1000, "{usage}");
}
