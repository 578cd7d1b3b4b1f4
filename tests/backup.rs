//! Backups end to end with the real binary: skopeo images backed up from a
//! running server, restored into a new data directory and pulled back byte
//! for byte, or pushed selectively into a running registry; wrong
//! passwords; tampering found by verify; retention; a backup killed midway
//! and resumed; backups while pushes, deletes and garbage collection go on;
//! scheduled backups with their metrics. Each test is independent, so
//! nextest runs them side by side.

mod clients_support;
mod common;

use clients_support::{make_oci_layout, run, unique};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "correct horse battery staple";

fn berth(args: &[&str], password: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.args(args)
        .env("BERTH_BACKUP_PASSWORD", password)
        .env("BERTH_BACKUP_ARGON2_MEMORY_KIB", "8192")
        .env("BERTH_BACKUP_ARGON2_PASSES", "1")
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = berth(args, PASSWORD, env);
    assert!(out.status.success(), "berth {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let list = ok(&["backup", "list", "--repo", p(repo)]);
    list.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect()
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

#[test]
fn skopeo_images_round_trip_through_a_backup() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let src = tmp.path().join("src");
    make_oci_layout(
        &src,
        &json!({"images": [
            {"tag": "v1", "arch": "amd64", "layers": [2_000_000, 300_000]},
            {"tag": "v2", "arch": "amd64", "layers": [1_000_000]},
        ], "indexes": [{"tag": "multi", "archs": ["amd64", "arm64"], "layers": [500_000]}]}),
    );
    let repos = [format!("team/app-{}", unique()), format!("other-{}", unique())];
    for repo in &repos {
        for tag in ["v1", "v2"] {
            run(skopeo()
                .args(["copy", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", src.display()))
                .arg(format!("docker://{}/{repo}:{tag}", s.addr)));
        }
    }
    run(skopeo()
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", src.display()))
        .arg(format!("docker://{}/{}:multi", s.addr, repos[0])));

    let backup = tmp.path().join("backup");
    // Wrong password: a clear error, not "corrupt".
    ok(&["backup", "init", "--repo", p(&backup)]);
    let out = berth(&["backup", "list", "--repo", p(&backup)], "not the password", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"), "{}", String::from_utf8_lossy(&out.stderr));

    // Online backup of the running server, then an incremental one that copies nothing.
    let first = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    assert!(first.contains("snapshot"), "{first}");
    let second = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    assert!(second.contains("added 0 objects"), "{second}");
    assert_eq!(snapshot_ids(&backup).len(), 2);
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // Restore into a new directory, serve it, and pull every image back.
    let restored = tmp.path().join("restored");
    ok(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)]);
    let r = common::Server::start_in(&restored, &[], &[]);
    for repo in &repos {
        for tag in ["v1", "v2"] {
            let a = tmp.path().join(format!("a-{}-{tag}", repo.replace('/', "_")));
            let b = tmp.path().join(format!("b-{}-{tag}", repo.replace('/', "_")));
            run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/{repo}:{tag}", s.addr)).arg(format!("dir:{}", a.display())));
            run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/{repo}:{tag}", r.addr)).arg(format!("dir:{}", b.display())));
            assert_same_dir(&a, &b);
        }
    }
    let raw_a = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{}:multi", s.addr, repos[0])));
    let raw_b = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{}:multi", r.addr, repos[0])));
    assert_eq!(raw_a, raw_b);
    let c = common::client();
    let cat_a = c.get(format!("{}/v2/_catalog", s.url)).send().unwrap().text().unwrap();
    let cat_b = c.get(format!("{}/v2/_catalog", r.url)).send().unwrap().text().unwrap();
    assert_eq!(cat_a, cat_b);

    // A non-empty target is refused.
    let out = berth(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)], PASSWORD, &[]);
    assert!(!out.status.success());
}

fn assert_same_dir(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(names.len() >= 2);
    for n in names {
        let (x, y) = (std::fs::read(a.join(&n)).unwrap(), std::fs::read(b.join(&n)).unwrap());
        assert!(x == y, "{:?} differs", n);
    }
}

#[test]
fn tampering_is_reported_and_retention_keeps_what_the_policy_says() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &s.url, "app", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    // Six snapshots: three in one hour of day 1, one the next day, two a week later.
    let day = 86_400i64;
    let base = 1_767_571_200i64; // Monday 2026-01-05 00:00 UTC
    let times = [base + 60, base + 120, base + 180, base + day + 60, base + 8 * day, base + 8 * day + 3600];
    for t in times {
        common::push_image(&c, &s.url, "app", &format!("t{t}"));
        ok_env(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)], &[("BERTH_BACKUP_TIME", &t.to_string())]);
    }
    let all = snapshot_ids(&backup); // listed oldest first
    assert_eq!(all.len(), 6);
    ok(&["backup", "forget", "--repo", p(&backup), "--keep-last", "1", "--keep-daily", "3", "--prune"]);
    // keep-last 1: the newest; keep-daily 3: newest of day 8, of day 1 and of day 0.
    let kept = snapshot_ids(&backup);
    assert_eq!(kept, vec![all[2].clone(), all[3].clone(), all[5].clone()]);
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // Flip one byte in one data object: verify --read-all-data reports it.
    let mut objects = Vec::new();
    for d in std::fs::read_dir(backup.join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            objects.push(f.unwrap().path());
        }
    }
    objects.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = objects.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(victim, bytes).unwrap();
    let out = berth(&["backup", "verify", "--repo", p(&backup), "--read-all-data"], PASSWORD, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed authentication"), "{err}");
    // A flipped byte in a snapshot record is found even without reading data.
    let snap = backup.join("snapshots").join(&kept[0]);
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[40] ^= 0x80;
    std::fs::write(&snap, bytes).unwrap();
    let out = berth(&["backup", "verify", "--repo", p(&backup)], PASSWORD, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&kept[0]));
}

fn signal(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

fn spawn_create(backup: &Path, data: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["backup", "create", "--repo", p(backup), "--data-dir", p(data)])
        .env("BERTH_BACKUP_PASSWORD", PASSWORD)
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded, so a hung child fails the test instead of hanging it)
/// until the backup repository holds `n` data objects.
fn wait_for_objects(backup: &Path, n: usize, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while walk_count(&backup.join("data")) < n {
        assert!(child.try_wait().unwrap().is_none(), "the backup finished before the test could interrupt it");
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "the backup wrote nothing");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// "… reused N blobs …" from `backup create`'s summary.
fn reused(summary: &str) -> usize {
    let at = summary.find("reused ").expect(summary) + "reused ".len();
    summary[at..].split_whitespace().next().unwrap().parse().unwrap()
}

fn gc(c: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let r = c.post(format!("{url}/admin/gc")).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Every tagged manifest of every repository (following index children) has
/// all its blobs, and each blob hashes to its digest.
fn assert_consistent(c: &reqwest::blocking::Client, url: &str) -> Vec<String> {
    const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                          application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
    let catalog: serde_json::Value = c.get(format!("{url}/v2/_catalog")).send().unwrap().json().unwrap();
    let repos: Vec<String> = catalog["repositories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    for repo in &repos {
        let tags: serde_json::Value = c.get(format!("{url}/v2/{repo}/tags/list")).send().unwrap().json().unwrap();
        let mut pending: Vec<String> = tags["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        while let Some(reference) = pending.pop() {
            let r = c.get(format!("{url}/v2/{repo}/manifests/{reference}")).header("Accept", ACCEPT).send().unwrap();
            assert_eq!(r.status(), 200, "{repo}:{reference}");
            let m: serde_json::Value = r.json().unwrap();
            if let Some(children) = m["manifests"].as_array() {
                pending.extend(children.iter().map(|c| c["digest"].as_str().unwrap().to_string()));
                continue;
            }
            let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
            digests.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
            for d in digests {
                let body = c.get(format!("{url}/v2/{repo}/blobs/{d}")).send().unwrap();
                assert_eq!(body.status(), 200, "{repo} {d}");
                assert_eq!(common::sha256(&body.bytes().unwrap()), d);
            }
        }
    }
    repos
}

#[test]
fn killed_backup_leaves_earlier_snapshots_valid_and_the_next_run_reuses_its_work() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &s.url, "base", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    let first_blobs = 2;
    // Incompressible blobs, so the run has real work left when it is killed.
    for i in 0..32 {
        common::push_blob(&c, &s.url, "big", &common::random_bytes(2 << 20));
        if i == 0 {
            common::push_image(&c, &s.url, "big", "v1");
        }
    }
    let before = walk_count(&backup.join("data"));
    let mut child = spawn_create(&backup, &s.data_dir);
    wait_for_objects(&backup, before + 2, &mut child);
    signal(&child, "STOP"); // hold it still, then kill it mid-way
    let copied = walk_count(&backup.join("data")) - before;
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    assert_eq!(snapshot_ids(&backup).len(), 1, "the killed run must not leave a snapshot");
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // The next run copies only what the killed one did not.
    let out = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    assert!(reused(&out) >= first_blobs + copied, "{copied} objects were copied before the kill: {out}");
    assert_eq!(snapshot_ids(&backup).len(), 2);
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);
    let restored = tmp.path().join("restored");
    ok(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)]);
    let r = common::Server::start_in(&restored, &[], &[]);
    let repos = assert_consistent(&c, &r.url);
    assert_eq!(repos, vec!["base", "big"]);
}

#[test]
fn backup_during_pushes_deletes_and_collection_restores_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[("BERTH_GC_GRACE_SECS", "0"), ("BERTH_GC_INTERVAL_SECS", "0")]);
    let c = common::client();
    common::push_image(&c, &s.url, "base", "v1");
    for i in 0..8 {
        common::push_image(&c, &s.url, "busy", &format!("seed{i}"));
    }
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, flag) = (s.url.clone(), stop.clone());
    // Pushes and deletes; with a zero grace period a collection may unlink a
    // blob between its upload and the manifest, which then fails with
    // MANIFEST_BLOB_UNKNOWN: that is the documented outcome, so it is skipped.
    let writer = std::thread::spawn(move || {
        let c = common::client();
        let mut n = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{n}}}"#).into_bytes();
            let layer = common::random_bytes(64 << 10);
            let (cd, ld) = (common::push_blob(&c, &url, "busy", &config), common::push_blob(&c, &url, "busy", &layer));
            let manifest = json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
            })
            .to_string();
            let r = c
                .put(format!("{url}/v2/busy/manifests/t{n}"))
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .body(manifest.clone())
                .send()
                .unwrap();
            if r.status() == 201 && n % 2 == 1 {
                let r = c.delete(format!("{url}/v2/busy/manifests/{}", common::sha256(manifest.as_bytes()))).send().unwrap();
                assert_eq!(r.status(), 202);
            }
            // Some seeds go too.
            if n < 8 {
                let _ = c.delete(format!("{url}/v2/busy/manifests/seed{n}")).send().unwrap();
            }
            n += 1;
        }
        n
    });
    let (url, flag) = (s.url.clone(), stop.clone());
    let collector = std::thread::spawn(move || {
        let c = common::client();
        let mut runs = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            gc(&c, &url);
            runs += 1;
        }
        runs
    });
    let first = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    let second = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert!(collector.join().unwrap() > 0);
    assert!(first.contains("snapshot") && reused(&second) > 0, "{first}\n{second}");
    assert_eq!(snapshot_ids(&backup).len(), 2);
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    for which in snapshot_ids(&backup) {
        let restored = tmp.path().join(format!("restored-{which}"));
        ok(&["backup", "restore", &which, "--repo", p(&backup), "--to", p(&restored)]);
        let r = common::Server::start_in(&restored, &[], &[]);
        let repos = assert_consistent(&c, &r.url);
        assert!(repos.contains(&"base".to_string()), "{repos:?}");
    }
}

#[test]
fn garbage_collection_during_a_backup_keeps_the_blobs_it_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[("BERTH_GC_GRACE_SECS", "0"), ("BERTH_GC_INTERVAL_SECS", "0")]);
    let c = common::client();
    let mut big = Vec::new();
    for _ in 0..24 {
        big.push(common::push_blob(&c, &s.url, "big", &common::random_bytes(2 << 20)));
    }
    let (_, manifest) = common::push_image(&c, &s.url, "big", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);

    // Stop the backup once it copies blobs (its metadata copy is taken and
    // its blobs pinned), then delete everything and collect garbage.
    let mut child = spawn_create(&backup, &s.data_dir);
    wait_for_objects(&backup, 1, &mut child);
    signal(&child, "STOP");
    let r = c.delete(format!("{}/v2/big/manifests/{manifest}", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    let report = gc(&c, &s.url);
    let unlinked = report["links_removed"].to_string();
    let deleted = report["blobs_deleted"].to_string();
    for d in &big {
        assert!(unlinked.contains(d.as_str()), "the collection did not unlink {d}: {report}");
        assert!(!deleted.contains(d.as_str()), "a blob pinned by the running backup was deleted: {report}");
    }
    signal(&child, "CONT");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Once the backup is done its pins are gone and the blobs are collected.
    let report = gc(&c, &s.url);
    for d in &big {
        assert!(report["blobs_deleted"].to_string().contains(d.as_str()), "{report}");
    }
    // The snapshot is the point in time of its metadata copy: everything is there.
    let restored = tmp.path().join("restored");
    ok(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)]);
    let r = common::Server::start_in(&restored, &[], &[]);
    assert_eq!(assert_consistent(&c, &r.url), vec!["big"]);
    for d in &big {
        let body = c.get(format!("{}/v2/big/blobs/{d}", r.url)).send().unwrap();
        assert_eq!(body.status(), 200);
        assert_eq!(&common::sha256(&body.bytes().unwrap()), d);
    }
}

fn metric(c: &reqwest::blocking::Client, url: &str, name: &str) -> Option<f64> {
    let text = c.get(format!("{url}/metrics")).send().unwrap().text().unwrap();
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Waits (bounded) until `name` reaches `at_least`.
fn wait_metric(c: &reqwest::blocking::Client, s: &common::Server, name: &str, at_least: f64) -> f64 {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = metric(c, &s.url, name) {
            if v >= at_least {
                return v;
            }
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "{name} never reached {at_least}:\n{}", s.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs a backup command that shares the repository with scheduled runs:
/// retried while a run holds the repository.
fn ok_when_free(args: &[&str]) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = berth(args, PASSWORD, &[]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in use") && start.elapsed() < std::time::Duration::from_secs(120), "berth {args:?}: {err}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn scheduled_backups_run_apply_retention_and_export_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    let pw = tmp.path().join("backup-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let toml = format!(
        "[backup]\nschedule = \"* * * * * *\"\nrepo = \"{}\"\npassword_file = \"{}\"\nkeep_last = 2\nprune = true\n",
        p(&backup),
        p(&pw)
    );
    let s = common::Server::start_config(tmp.path(), &toml);
    let c = common::client();
    common::push_image(&c, &s.url, "app", "v1");

    // Runs happen, are logged with counts and bytes, and show in /metrics.
    let runs = r#"berth_backup_runs_total{result="success"}"#;
    wait_metric(&c, &s, runs, 3.0);
    let last = metric(&c, &s.url, "berth_backup_last_success_timestamp_seconds").unwrap();
    assert!(last > 1.7e9, "{last}");
    assert!(metric(&c, &s.url, "berth_backup_last_duration_seconds").is_some());
    assert!(metric(&c, &s.url, "berth_backup_bytes_added_total").unwrap() > 1000.0);
    let log = s.stderr();
    let line = log.lines().find(|l| l.contains("scheduled backup finished")).expect(&log);
    for field in ["blobs=", "bytes_added=", "manifests=", "duration_secs="] {
        assert!(line.contains(field), "{line}");
    }
    // Retention: exactly the newest two are kept, and they verify.
    let list = ok_when_free(&["backup", "list", "--repo", p(&backup)]);
    assert_eq!(list.lines().count() - 1, 2, "{list}");
    ok_when_free(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // A run that fails (its scratch directory is unusable) writes nothing and
    // harms no earlier snapshot.
    let scratch = backup.join("tmp");
    let _quiet = ok_when_free(&["backup", "list", "--repo", p(&backup)]);
    std::fs::remove_dir_all(&scratch).unwrap();
    std::fs::write(&scratch, b"not a directory").unwrap();
    let failures = r#"berth_backup_runs_total{result="failure"}"#;
    let f = wait_metric(&c, &s, failures, 1.0);
    let ids = snapshot_ids_when_free(&backup);
    wait_metric(&c, &s, failures, f + 2.0);
    assert_eq!(snapshot_ids_when_free(&backup), ids);
    ok_when_free(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);
    assert!(s.stderr().contains("scheduled backup failed"));
    // Repaired, the schedule goes on.
    std::fs::remove_file(&scratch).unwrap();
    std::fs::create_dir(&scratch).unwrap();
    let done = metric(&c, &s.url, runs).unwrap();
    wait_metric(&c, &s, runs, done + 1.0);
}

fn snapshot_ids_when_free(repo: &Path) -> Vec<String> {
    let list = ok_when_free(&["backup", "list", "--repo", p(repo)]);
    list.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect()
}

#[test]
fn selected_repositories_restore_into_a_running_registry() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let src = tmp.path().join("src");
    make_oci_layout(
        &src,
        &json!({"images": [{"tag": "v1", "arch": "amd64", "layers": [300_000, 20_000]}],
                "indexes": [{"tag": "multi", "archs": ["amd64", "arm64"], "layers": [100_000]}]}),
    );
    let team = format!("team/app-{}", unique());
    let other = format!("other-{}", unique());
    for (repo, tag, all) in [(&team, "v1", false), (&team, "multi", true), (&other, "v1", false)] {
        let mut cmd = skopeo();
        cmd.arg("copy").arg("--dest-tls-verify=false");
        if all {
            cmd.arg("--all");
        }
        run(cmd.arg(format!("oci:{}:{tag}", src.display())).arg(format!("docker://{}/{repo}:{tag}", s.addr)));
    }
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);

    // A running registry that already holds something of its own.
    let t = common::Server::start_in(&tmp.path().join("target"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &t.url, "keep/me", "v1");
    let out = ok(&["backup", "restore", "latest", "--repo", p(&backup), "--url", &t.url, "--repository", "team/**"]);
    assert!(out.contains("pushed"), "{out}");
    let catalog: serde_json::Value = c.get(format!("{}/v2/_catalog", t.url)).send().unwrap().json().unwrap();
    assert_eq!(catalog["repositories"], json!(["keep/me", team]));
    for tag in ["v1", "multi"] {
        let a = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{team}:{tag}", s.addr)));
        let b = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{team}:{tag}", t.addr)));
        assert_eq!(a, b);
    }
    let (a, b) = (tmp.path().join("pull-a"), tmp.path().join("pull-b"));
    run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/{team}:v1", s.addr)).arg(format!("dir:{}", a.display())));
    run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/{team}:v1", t.addr)).arg(format!("dir:{}", b.display())));
    assert_same_dir(&a, &b);
    let mut tags = assert_consistent(&c, &t.url);
    tags.sort();
    // Again: nothing to push, nothing changes.
    let again = ok(&["backup", "restore", "latest", "--repo", p(&backup), "--url", &t.url, "--repository", "team/**"]);
    assert!(again.contains("pushed 0 blobs"), "{again}");
    // A pattern matching nothing is an error, not a silent no-op.
    let out = berth(&["backup", "restore", "latest", "--repo", p(&backup), "--url", &t.url, "--repository", "nope/**"], PASSWORD, &[]);
    assert!(!out.status.success());
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| std::fs::read_dir(e.path()).map(|x| x.count()).unwrap_or(0)).sum()).unwrap_or(0)
}

fn new_key() -> String {
    ok(&["encryption", "new-key"]).trim().to_string()
}

/// Object files of the backup repository, largest first.
fn objects_by_size(backup: &Path) -> Vec<std::path::PathBuf> {
    let mut objects: Vec<_> =
        std::fs::read_dir(backup.join("data")).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap()).map(|f| f.unwrap().path()).collect();
    objects.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    objects
}

fn flip_byte(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut bytes = original.clone();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
    original
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn an_encrypted_registry_restores_only_with_its_key_and_starts_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let k1 = new_key();
    let s = common::Server::start_in(&data, &[], &[("BERTH_ENCRYPTION_KEY", &k1)]);
    let c = common::client();
    let (manifest, digest) = common::push_image(&c, &s.url, "secret/app", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    let out = berth(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&data)], PASSWORD, &[]);
    assert!(!out.status.success(), "backing up an encrypted registry without its key");
    ok_env(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&data)], &[("BERTH_ENCRYPTION_KEY", &k1)]);
    let key_id = std::fs::read_to_string(data.join("encryption-key-id")).unwrap();

    // Without the key, or with another one: refused, and nothing written.
    let restored = tmp.path().join("restored");
    let restore = ["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)];
    let out = berth(&restore, PASSWORD, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("encrypted at rest") && err.contains(&key_id), "{err}");
    assert!(!restored.exists(), "a refused restore created {}", restored.display());
    let out = berth(&restore, PASSWORD, &[("BERTH_ENCRYPTION_KEY", &new_key())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("encrypted with key id {key_id}")), "{err}");
    assert!(!restored.exists());

    // With it: the restored directory is sealed with that key, refuses to
    // start without it, and serves the manifest byte for byte.
    ok_env(&restore, &[("BERTH_ENCRYPTION_KEY", &k1)]);
    assert_eq!(std::fs::read_to_string(restored.join("encryption-key-id")).unwrap(), key_id);
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", p(&restored)])
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no key"));
    {
        let r = common::Server::start_in(&restored, &[], &[("BERTH_ENCRYPTION_KEY", &k1)]);
        let got = c.get(format!("{}/v2/secret/app/manifests/v1", r.url)).send().unwrap();
        assert_eq!(got.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(got.bytes().unwrap(), manifest);
        assert_consistent(&c, &r.url);
    }

    // Under a new key, with the snapshot's as a previous one: the marker
    // names the old key, so the server re-encrypts at start-up.
    let (k2, old) = (new_key(), tmp.path().join("old.key"));
    std::fs::write(&old, &k1).unwrap();
    let config = tmp.path().join("rotate.toml");
    std::fs::write(&config, format!("[encryption]\nprevious_key_files = [{:?}]\n", p(&old))).unwrap();
    let rotated = tmp.path().join("rotated");
    let out = ok_env(
        &["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&rotated), "--config", p(&config)],
        &[("BERTH_ENCRYPTION_KEY", &k2)],
    );
    assert!(out.contains("restored"), "{out}");
    assert_eq!(std::fs::read_to_string(rotated.join("encryption-key-id")).unwrap(), key_id);
    let r = common::Server::start_in(&rotated, &["--config", p(&config)], &[("BERTH_ENCRYPTION_KEY", &k2)]);
    assert_eq!(c.get(format!("{}/v2/secret/app/manifests/v1", r.url)).send().unwrap().bytes().unwrap(), manifest);
    assert_consistent(&c, &r.url);
    let start = std::time::Instant::now();
    while std::fs::read_to_string(rotated.join("encryption-key-id")).unwrap() == key_id {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no re-encryption:\n{}", r.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn damaged_records_are_listed_apart_and_a_failed_restore_leaves_the_target_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &s.url, "app", "v1");
    common::push_blob(&c, &s.url, "app", &common::random_bytes(300_000)); // the largest object
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    for t in ["1767571200", "1767574800"] {
        ok_env(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)], &[("BERTH_BACKUP_TIME", t)]);
    }
    let ids = snapshot_ids(&backup);
    assert_eq!(ids.len(), 2);

    // One damaged record: the intact one is still listed, the damaged one reported.
    flip_byte(&backup.join("snapshots").join(&ids[1]), 40);
    let out = berth(&["backup", "list", "--repo", p(&backup)], PASSWORD, &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(stdout.contains(&ids[0]) && !stdout.contains(&ids[1]), "{stdout}");
    assert!(stderr.contains(&ids[1]) && stderr.contains("1 damaged snapshot record"), "{stderr}");
    // `latest` cannot be told; the intact snapshot restores by id.
    let target = tmp.path().join("target");
    let out = berth(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&target)], PASSWORD, &[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("berth backup list"));

    // A damaged blob fails the restore midway: an existing empty target is
    // left empty, a new one is not left behind.
    let victim = objects_by_size(&backup).remove(0);
    let original = flip_byte(&victim, 150_000);
    std::fs::create_dir(&target).unwrap();
    let fresh = tmp.path().join("fresh");
    for dir in [&target, &fresh] {
        let out = berth(&["backup", "restore", &ids[0], "--repo", p(&backup), "--to", p(dir)], PASSWORD, &[]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("failed authentication"), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(entries(&target), Vec::<String>::new());
    assert!(!fresh.exists());

    // A key for a registry that did not encrypt is refused too.
    std::fs::write(&victim, original).unwrap();
    let out = berth(&["backup", "restore", &ids[0], "--repo", p(&backup), "--to", p(&target)], PASSWORD, &[("BERTH_ENCRYPTION_KEY", &new_key())]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("without encryption at rest"));
    assert_eq!(entries(&target), Vec::<String>::new());

    // Repaired, the retry goes through into the same target.
    ok(&["backup", "restore", &ids[0], "--repo", p(&backup), "--to", p(&target)]);
    let mut names = entries(&target);
    names.sort();
    assert!(names.contains(&"metadata.db".to_string()) && !names.iter().any(|n| n.contains("restore")), "{names:?}");
    let r = common::Server::start_in(&target, &[], &[]);
    assert_eq!(assert_consistent(&c, &r.url), vec!["app"]);
}

#[test]
fn selected_repositories_restore_into_a_tls_only_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &s.url, "team/app", "v1");
    common::push_image(&c, &s.url, "other", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);

    let certs = tmp.path().join("certs");
    ok(&["tls", "self-signed", "--host", "127.0.0.1", "--out", p(&certs)]);
    let toml = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", p(&certs.join("server.crt")), p(&certs.join("server.key")));
    let t = common::Server::start_config(tmp.path(), &toml);
    assert!(t.url.starts_with("https://"), "{}", t.url);
    let ca = certs.join("ca.crt");
    let restore = |url: &str, ca: Option<&Path>| {
        let mut args = vec!["backup", "restore", "latest", "--repo", p(&backup), "--url", url, "--repository", "team/**"];
        if let Some(ca) = ca {
            args.extend(["--ca-cert", p(ca)]);
        }
        berth(&args, PASSWORD, &[])
    };
    let usage = || -> serde_json::Value { serde_json::from_str(&ok(&["usage", "--url", &t.url, "--ca-cert", p(&ca)])).unwrap() };

    // Refused up front: a URL that is not http(s)://HOST:PORT, an untrusted certificate.
    let out = restore(&t.addr, Some(&ca));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected http://HOST[:PORT] or https://HOST[:PORT]"));
    let out = restore(&t.url, None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("GET /v2/"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(usage()["total_bytes"], 0, "nothing was pushed");

    let out = restore(&t.url, Some(&ca));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pushed 2 blobs"), "{}", String::from_utf8_lossy(&out.stdout));
    let u = usage();
    assert_eq!(u["repositories"].as_array().unwrap().len(), 1, "{u}");
    assert_eq!(u["repositories"][0]["name"], "team/app", "{u}");
    let again = restore(&t.url, Some(&ca));
    assert!(String::from_utf8_lossy(&again.stdout).contains("pushed 0 blobs"), "{}", String::from_utf8_lossy(&again.stderr));
}
