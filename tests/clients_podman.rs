//! podman against a real `berth` server: scratch images pushed in OCI and
//! Docker v2 schema 2 formats, a two-platform manifest list pushed with
//! `--all`, and everything pulled back into an empty store.

mod clients_support;
mod common;

use clients_support::{output, run, unique};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// podman with a private, throw-away store (root works with vfs).
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        // An empty registries.conf: only fully qualified names are used.
        std::fs::write(dir.path().join("registries.conf"), "").unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", self.dir.path().join("registries.conf"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    fn image_id(&self, reference: &str) -> String {
        run(self.cmd().args(["image", "inspect", "--format", "{{.Id}}", reference])).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs layers can hold read-only files; let podman remove its store.
        let _ = output(self.cmd().args(["rmi", "-a", "-f"]));
        let _ = output(self.cmd().args(["system", "reset", "-f"]));
    }
}

fn context(files: &[(&str, Vec<u8>)], dockerfile: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    std::fs::write(dir.path().join("Containerfile"), dockerfile).unwrap();
    let p = dir.path().to_path_buf();
    (dir, p)
}

fn get_manifest(url: &str, path: &str, reference: &str) -> (String, String, Value) {
    let r = common::client()
        .get(format!("{url}/v2/{path}/manifests/{reference}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "manifest {path}:{reference}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let body = r.bytes().unwrap();
    assert_eq!(common::sha256(&body), digest);
    (ct, digest, serde_json::from_slice(&body).unwrap())
}

fn build(p: &Podman, dir: &Path, tag: &str, arch: &str) {
    run(p.cmd().args(["build", "-q", "--arch", arch, "--format", "oci", "-t", tag]).arg(dir));
}

#[test]
fn podman_push_formats_manifest_list_and_pull() {
    if !common::require("podman") {
        return;
    }
    let s = common::Server::start();
    let id = unique();
    let path = format!("podman-{id}/app");
    let repo = format!("{}/{path}", s.addr);
    let pusher = Podman::new();

    let (_a, amd_ctx) = context(
        &[("big.bin", common::random_bytes(2_500_000)), ("note.txt", format!("amd64 {id}\n").into_bytes())],
        "FROM scratch\nCOPY big.bin /big.bin\nCOPY note.txt /note.txt\n",
    );
    let (_b, arm_ctx) = context(
        &[("big.bin", common::random_bytes(1_000_000)), ("note.txt", format!("arm64 {id}\n").into_bytes())],
        "FROM scratch\nCOPY big.bin /big.bin\nCOPY note.txt /note.txt\n",
    );
    let amd = "localhost/berth-test/amd:latest";
    let arm = "localhost/berth-test/arm:latest";
    build(&pusher, &amd_ctx, amd, "amd64");
    build(&pusher, &arm_ctx, arm, "arm64");
    let amd_id = pusher.image_id(amd);

    // Single images in both manifest formats.
    run(pusher.cmd().args(["push", "--tls-verify=false", "--format", "oci", amd, &format!("docker://{repo}:oci")]));
    run(pusher.cmd().args(["push", "--tls-verify=false", "--format", "v2s2", amd, &format!("docker://{repo}:v2s2")]));
    run(pusher.cmd().args(["push", "--tls-verify=false", "--format", "oci", arm, &format!("docker://{repo}:arm")]));
    let (ct, _, m) = get_manifest(&s.url, &path, "oci");
    assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    let (ct, _, m) = get_manifest(&s.url, &path, "v2s2");
    assert_eq!(ct, "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);

    // A manifest list of both platforms, pushed with --all.
    let list = "localhost/berth-test/list:latest";
    run(pusher.cmd().args(["manifest", "create", list]));
    run(pusher.cmd().args(["manifest", "add", "--tls-verify=false", list, &format!("docker://{repo}:oci")]));
    run(pusher.cmd().args(["manifest", "add", "--tls-verify=false", list, &format!("docker://{repo}:arm")]));
    run(pusher.cmd().args(["manifest", "push", "--all", "--tls-verify=false", list, &format!("docker://{repo}:list")]));
    let (ct, _, index) = get_manifest(&s.url, &path, "list");
    assert!(
        ct == "application/vnd.oci.image.index.v1+json" || ct == "application/vnd.docker.distribution.manifest.list.v2+json",
        "{ct}"
    );
    let mut archs: Vec<&str> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"]);
    for child in index["manifests"].as_array().unwrap() {
        let (_, d, m) = get_manifest(&s.url, &path, child["digest"].as_str().unwrap());
        assert_eq!(d, child["digest"].as_str().unwrap());
        for layer in m["layers"].as_array().unwrap() {
            let r = common::client()
                .head(format!("{}/v2/{path}/blobs/{}", s.url, layer["digest"].as_str().unwrap()))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-length"].to_str().unwrap(), layer["size"].to_string());
        }
    }

    // Everything pulled into an empty store.
    let puller = Podman::new();
    run(puller.cmd().args(["pull", "--tls-verify=false", &format!("{repo}:oci")]));
    assert_eq!(puller.image_id(&format!("{repo}:oci")), amd_id);
    run(puller.cmd().args(["pull", "--tls-verify=false", &format!("{repo}:v2s2")]));
    let inspected: Value =
        serde_json::from_str(&run(puller.cmd().args(["image", "inspect", &format!("{repo}:v2s2")]))).unwrap();
    assert_eq!(inspected[0]["Architecture"], "amd64");
    for arch in ["amd64", "arm64"] {
        let local = format!("{repo}:list-{arch}");
        run(puller.cmd().args(["pull", "--tls-verify=false", "--arch", arch, &format!("{repo}:list")]));
        run(puller.cmd().args(["tag", &format!("{repo}:list"), &local]));
        let inspected: Value = serde_json::from_str(&run(puller.cmd().args(["image", "inspect", &local]))).unwrap();
        assert_eq!(inspected[0]["Architecture"], arch);
    }
    // The whole list, as a list, into a fresh manifest list in the store.
    let third = Podman::new();
    run(third.cmd().args(["manifest", "create", "localhost/berth-test/copy:latest"]));
    run(third.cmd().args([
        "manifest",
        "add",
        "--all",
        "--tls-verify=false",
        "localhost/berth-test/copy:latest",
        &format!("docker://{repo}:list"),
    ]));
    let inspected: Value =
        serde_json::from_str(&run(third.cmd().args(["manifest", "inspect", "localhost/berth-test/copy:latest"])))
            .unwrap();
    assert_eq!(inspected["manifests"].as_array().unwrap().len(), 2);
}
