//! The Docker engine against a real `berth` server: images built FROM
//! scratch are pushed, removed locally, pulled back (by tag and by digest)
//! and must come back with the same image IDs. Skipped when no engine runs.

mod clients_support;
mod common;

use clients_support::{output, run, unique};
use std::process::Command;

fn docker() -> Command {
    let mut c = Command::new("docker");
    // The legacy builder needs no buildx plugin and no base image.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

fn engine_available() -> bool {
    common::have("docker") && output(docker().args(["info", "--format", "{{.ServerVersion}}"])).status.success()
}

/// Removes every image reference it was given, whatever the test outcome.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = output(docker().args(["rmi", "-f", r]));
        }
    }
}

fn image_id(reference: &str) -> String {
    run(docker().args(["image", "inspect", "--format", "{{.Id}}", reference])).trim().to_string()
}

fn build(dir: &std::path::Path, tag: &str, dockerfile: &str) {
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    run(docker().args(["build", "-q", "-t", tag]).arg(dir));
}

#[test]
fn docker_push_rmi_pull() {
    if !engine_available() {
        eprintln!("docker tests: skipped (no engine)");
        return;
    }
    let s = common::Server::start();
    let id = unique();
    let repo = format!("{}/docker-{id}/app", s.addr);
    let other = format!("{}/docker-{id}/other", s.addr);
    let base = format!("{repo}:base-{id}");
    let top = format!("{repo}:top-{id}");
    let copy = format!("{other}:top-{id}");
    let mut cleanup = Cleanup(vec![base.clone(), top.clone(), copy.clone()]);

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("big.bin"), common::random_bytes(3_000_000)).unwrap();
    std::fs::write(ctx.path().join("small.txt"), format!("hello {id}\n")).unwrap();
    std::fs::write(ctx.path().join("more.bin"), common::random_bytes(500_000)).unwrap();
    build(ctx.path(), &base, "FROM scratch\nCOPY big.bin /big.bin\nCOPY small.txt /etc/small.txt\n");
    build(ctx.path(), &top, &format!("FROM {base}\nCOPY more.bin /more.bin\n"));
    run(docker().args(["tag", &top, &copy]));

    let ids: Vec<String> = [&base, &top].iter().map(|r| image_id(r)).collect();
    for r in [&base, &top, &copy] {
        run(docker().args(["push", r]));
    }
    // The engine records the registry's manifest digest; it must match what
    // the registry serves.
    let repo_digest = run(docker().args(["image", "inspect", "--format", "{{index .RepoDigests 0}}", &top]));
    let digest = repo_digest.trim().rsplit_once('@').unwrap().1.to_string();
    let c = common::client();
    let path = repo.trim_start_matches(&format!("{}/", s.addr)).to_string();
    let r = c
        .get(format!("{}/v2/{path}/manifests/top-{id}", s.url))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let blob = c.get(format!("{}/v2/{path}/blobs/{d}", s.url)).send().unwrap().bytes().unwrap();
        assert_eq!(common::sha256(&blob), d);
        assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
    }

    // Remove locally, pull back, compare IDs.
    for r in [&base, &top, &copy] {
        run(docker().args(["rmi", r]));
    }
    assert!(!output(docker().args(["image", "inspect", &top])).status.success());
    run(docker().args(["pull", &base]));
    run(docker().args(["pull", &top]));
    assert_eq!(image_id(&base), ids[0]);
    assert_eq!(image_id(&top), ids[1]);
    run(docker().args(["rmi", &base, &top]));
    let by_digest = format!("{other}@{digest}");
    cleanup.0.push(by_digest.clone());
    run(docker().args(["pull", &by_digest]));
    assert_eq!(image_id(&by_digest), ids[1]);

    // A missing tag is a clean failure.
    let missing = output(docker().args(["pull", &format!("{repo}:missing-{id}")]));
    assert!(!missing.status.success());
    drop(cleanup);
    eprintln!("docker tests: ran");
}
