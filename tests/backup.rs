//! Backups end to end with the real binary: skopeo images backed up from a
//! running server, restored into a new data directory and pulled back byte
//! for byte; wrong passwords; tampering found by verify; retention; a
//! backup killed midway; backups while pushes and deletes go on.

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

#[test]
fn killed_backup_leaves_earlier_snapshots_valid_and_concurrent_changes_restore_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::Server::start_in(&tmp.path().join("data"), &[], &[]);
    let c = common::client();
    common::push_image(&c, &s.url, "base", "v1");
    let backup = tmp.path().join("backup");
    ok(&["backup", "init", "--repo", p(&backup)]);
    ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    // Many blobs (incompressible, 4 MiB each) make the window for a kill real.
    for i in 0..24 {
        common::push_blob(&c, &s.url, "big", &common::random_bytes(4 << 20));
        if i == 0 {
            common::push_image(&c, &s.url, "big", "v1");
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)])
        .env("BERTH_BACKUP_PASSWORD", PASSWORD)
        .env("BERTH_BACKUP_ARGON2_MEMORY_KIB", "8192")
        .env("BERTH_BACKUP_ARGON2_PASSES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has written some objects, then SIGKILL.
    let count = || walk_count(&backup.join("data"));
    let before = count();
    let start = std::time::Instant::now();
    while count() < before + 3 && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(snapshot_ids(&backup).len(), 1, "the killed run must not leave a snapshot");
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // Back up again while pushes and deletes run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, flag) = (s.url.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let c = common::client();
        let mut n = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let (_, d) = common::push_image(&c, &url, "busy", &format!("t{n}"));
            if n % 2 == 1 {
                let r = c.delete(format!("{url}/v2/busy/manifests/{d}")).send().unwrap();
                assert_eq!(r.status(), 202);
            }
            n += 1;
        }
        n
    });
    let out = ok(&["backup", "create", "--repo", p(&backup), "--data-dir", p(&s.data_dir)]);
    assert!(out.contains("reused"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(snapshot_ids(&backup).len(), 2);
    ok(&["backup", "verify", "--repo", p(&backup), "--read-all-data"]);

    // The restored registry is consistent: every manifest's blobs are there and verify.
    let restored = tmp.path().join("restored");
    ok(&["backup", "restore", "latest", "--repo", p(&backup), "--to", p(&restored)]);
    let r = common::Server::start_in(&restored, &[], &[]);
    let catalog: serde_json::Value = c.get(format!("{}/v2/_catalog", r.url)).send().unwrap().json().unwrap();
    let repos: Vec<String> = catalog["repositories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(repos.contains(&"base".to_string()) && repos.contains(&"big".to_string()), "{repos:?}");
    for repo in repos {
        let tags: serde_json::Value = c.get(format!("{}/v2/{repo}/tags/list", r.url)).send().unwrap().json().unwrap();
        for tag in tags["tags"].as_array().unwrap() {
            let m: serde_json::Value = c
                .get(format!("{}/v2/{repo}/manifests/{}", r.url, tag.as_str().unwrap()))
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .unwrap()
                .json()
                .unwrap();
            let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
            digests.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
            for d in digests {
                let body = c.get(format!("{}/v2/{repo}/blobs/{d}", r.url)).send().unwrap();
                assert_eq!(body.status(), 200, "{repo} {d}");
                assert_eq!(common::sha256(&body.bytes().unwrap()), d);
            }
        }
    }
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| std::fs::read_dir(e.path()).map(|x| x.count()).unwrap_or(0)).sum()).unwrap_or(0)
}
