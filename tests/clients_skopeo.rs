//! skopeo against a real `berth` server: OCI layouts pushed and pulled back
//! byte for byte, multi-arch indexes with `--all`, inspect, list-tags and
//! delete.

mod clients_support;
mod common;

use clients_support::{make_oci_layout, output, run, unique};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // No user policy file may exist here; accept anything for these tests.
    c.arg("--insecure-policy");
    c
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} and {} differ ({} vs {} bytes)", a.display(), b.display(), x.len(), y.len());
}

/// Every blob of every image must exist in the registry with the right size
/// and hash to its digest.
fn assert_blobs_in_registry(url: &str, repo: &str, layout: &Path, blobs: &[Value]) {
    let c = common::client();
    for d in blobs {
        let d = d.as_str().unwrap();
        let r = c.get(format!("{url}/v2/{repo}/blobs/{d}")).send().unwrap();
        assert_eq!(r.status(), 200, "blob {d} in {repo}");
        let body = r.bytes().unwrap();
        assert_eq!(common::sha256(&body), d);
        assert_eq!(body.len() as u64, std::fs::metadata(blob_path(layout, d)).unwrap().len());
    }
}

#[test]
fn skopeo_copy_round_trip_inspect_tags_delete() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let s = common::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let made = make_oci_layout(
        &src,
        &json!({"images": [
            {"tag": "v1", "arch": "amd64", "layers": [3_000_000, 1_500_000, 20_000]},
            {"tag": "v2", "arch": "amd64", "layers": [2_000_000, 10]},
        ]}),
    );
    let repo = format!("skopeo/app-{}", unique());
    for tag in ["v1", "v2"] {
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", src.display()))
            .arg(format!("docker://{}/{repo}:{tag}", s.addr)));
        let info = &made[tag];
        assert_blobs_in_registry(&s.url, &repo, &src, info["blobs"].as_array().unwrap());
        // skopeo pushes OCI manifests unchanged: the registry must hold the
        // exact bytes under the same digest.
        let r = common::client()
            .get(format!("{}/v2/{repo}/manifests/{tag}", s.url))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), info["digest"].as_str().unwrap());
        let body = r.bytes().unwrap();
        assert_eq!(body.as_ref(), std::fs::read(blob_path(&src, info["digest"].as_str().unwrap())).unwrap());
    }
    // The same image pushed again: every blob already exists.
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{}/{repo}:v1-again", s.addr)));

    // Copy back out to a fresh OCI layout and to a dir: directory.
    let back = tmp.path().join("back");
    let dir = tmp.path().join("dir");
    for tag in ["v1", "v2"] {
        run(skopeo()
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/{repo}:{tag}", s.addr))
            .arg(format!("oci:{}:{tag}", back.display())));
    }
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", s.addr))
        .arg(format!("dir:{}", dir.display())));
    for tag in ["v1", "v2"] {
        let info = &made[tag];
        let manifest = info["digest"].as_str().unwrap();
        assert_same_file(&blob_path(&src, manifest), &blob_path(&back, manifest));
        for d in info["blobs"].as_array().unwrap() {
            let d = d.as_str().unwrap();
            assert_same_file(&blob_path(&src, d), &blob_path(&back, d));
        }
    }
    assert_same_file(&blob_path(&src, made["v1"]["digest"].as_str().unwrap()), &dir.join("manifest.json"));
    for d in made["v1"]["blobs"].as_array().unwrap() {
        let d = d.as_str().unwrap();
        assert_same_file(&blob_path(&src, d), &dir.join(d.trim_start_matches("sha256:")));
    }

    // inspect: parsed config and the raw manifest.
    let info: Value = serde_json::from_str(&run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", s.addr))))
    .unwrap();
    assert_eq!(info["Digest"], made["v1"]["digest"]);
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    let mut tags: Vec<String> = info["RepoTags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1-again", "v2"]);
    let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{repo}:v2", s.addr)));
    assert_eq!(raw.as_bytes(), std::fs::read(blob_path(&src, made["v2"]["digest"].as_str().unwrap())).unwrap());
    let by_digest = format!("docker://{}/{repo}@{}", s.addr, made["v2"]["digest"].as_str().unwrap());
    let info: Value = serde_json::from_str(&run(skopeo().args(["inspect", "--tls-verify=false"]).arg(&by_digest))).unwrap();
    assert_eq!(info["Digest"], made["v2"]["digest"]);

    // list-tags
    let listed: Value = serde_json::from_str(&run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}", s.addr))))
    .unwrap();
    let mut tags: Vec<&str> = listed["Tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1-again", "v2"]);

    // delete: skopeo resolves the tag and deletes the manifest by digest,
    // which removes every tag pointing at it.
    run(skopeo().args(["delete", "--tls-verify=false"]).arg(format!("docker://{}/{repo}:v2", s.addr)));
    let gone = output(skopeo().args(["inspect", "--tls-verify=false"]).arg(format!("docker://{}/{repo}:v2", s.addr)));
    assert!(!gone.status.success(), "v2 still inspectable after delete");
    let gone = output(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(&by_digest));
    assert!(!gone.status.success(), "v2 digest still present after delete");
    let listed: Value = serde_json::from_str(&run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}", s.addr))))
    .unwrap();
    let mut tags: Vec<&str> = listed["Tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1-again"]);
    // The other image is untouched.
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1-again", s.addr))
        .arg(format!("oci:{}:again", tmp.path().join("again").display())));
}

#[test]
fn skopeo_multi_arch_index_all() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let s = common::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let made = make_oci_layout(
        &src,
        &json!({"indexes": [{"tag": "multi", "archs": ["amd64", "arm64"], "layers": [2_000_000, 300_000]}]}),
    );
    let info = &made["multi"];
    let repo = format!("skopeo/multi-{}", unique());
    run(skopeo()
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", src.display()))
        .arg(format!("docker://{}/{repo}:multi", s.addr)));
    assert_blobs_in_registry(&s.url, &repo, &src, info["blobs"].as_array().unwrap());
    let c = common::client();
    let r = c
        .get(format!("{}/v2/{repo}/manifests/multi", s.url))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), info["digest"].as_str().unwrap());
    for child in info["manifests"].as_array().unwrap() {
        let r = c.head(format!("{}/v2/{repo}/manifests/{}", s.url, child.as_str().unwrap())).send().unwrap();
        assert_eq!(r.status(), 200, "child manifest {child}");
    }

    // Out again with --all: the index, both manifests and all blobs identical.
    let back = tmp.path().join("back");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:multi", s.addr))
        .arg(format!("oci:{}:multi", back.display())));
    let mut all: Vec<Value> = info["blobs"].as_array().unwrap().clone();
    all.extend(info["manifests"].as_array().unwrap().iter().cloned());
    all.push(info["digest"].clone());
    for d in &all {
        let d = d.as_str().unwrap();
        assert_same_file(&blob_path(&src, d), &blob_path(&back, d));
    }
    let index: Value = serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], info["digest"]);

    // Without --all, skopeo picks one platform; ask for arm64 explicitly.
    let arm = tmp.path().join("arm");
    run(skopeo()
        .args(["--override-arch", "arm64", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:multi", s.addr))
        .arg(format!("dir:{}", arm.display())));
    let inspected: Value = serde_json::from_str(&run(skopeo()
        .args(["--override-arch", "arm64", "inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:multi", s.addr))))
    .unwrap();
    assert_eq!(inspected["Architecture"], "arm64");
    let arm_digest = common::sha256(&std::fs::read(arm.join("manifest.json")).unwrap());
    assert_eq!(Some(&Value::String(arm_digest)), info["manifests"].as_array().unwrap().get(1));

    let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{repo}:multi", s.addr)));
    assert_eq!(common::sha256(raw.as_bytes()), info["digest"].as_str().unwrap());

    // Registry to registry within the server: blobs are mounted across
    // repositories, and the copy is identical.
    let mirror = format!("{repo}-mirror/copy");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:multi", s.addr))
        .arg(format!("docker://{}/{mirror}:multi", s.addr)));
    assert_blobs_in_registry(&s.url, &mirror, &src, info["blobs"].as_array().unwrap());
    let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/{mirror}:multi", s.addr)));
    assert_eq!(common::sha256(raw.as_bytes()), info["digest"].as_str().unwrap());
}
