//! ORAS (the oras Python client) against a real `berth` server: artifacts
//! made of files, with a config media type, annotations, monolithic and
//! chunked blob uploads, and referrers carrying an explicit artifactType.

mod clients_support;
mod common;

use clients_support::{run, unique};
use serde_json::Value;
use std::process::Command;

const PUSH_PULL_PY: &str = r#"
import hashlib, json, os, sys
import requests
import oras.client, oras.oci

addr, repo, work, out = sys.argv[1:5]
os.chdir(work)
client = oras.client.OrasClient(hostname=addr, insecure=True)
target = f"{addr}/{repo}"
result = {}

def manifest_of(ref):
    r = requests.get(f"http://{addr}/v2/{repo}/manifests/{ref}",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return r.content

# 1. Files with per-file media types, a config with its own media type
#    (the artifact type of pre-1.1 artifacts) and manifest annotations.
r = client.push(target=f"{target}:v1",
                files=["data.bin:application/vnd.berth.test.data", "notes.txt", "tree"],
                manifest_config="config.json:application/vnd.berth.test.config+json",
                manifest_annotations={"org.berth.test.run": "yes"}, quiet=True)
result["push_status"] = r.status_code
v1 = manifest_of("v1")
result["v1"] = {"digest": "sha256:" + hashlib.sha256(v1).hexdigest(), "size": len(v1)}

# 2. The same data uploaded in chunks (POST, PATCH..., PUT) under another repo.
r = client.push(target=f"{addr}/{repo}-chunked:v1", files=["data.bin", "notes.txt"],
                do_chunked=True, chunk_size=300000, quiet=True)
result["chunked_status"] = r.status_code

# 3. A referrer with an explicit artifactType and a subject.
sub = oras.oci.Subject(mediaType="application/vnd.oci.image.manifest.v1+json",
                       digest=result["v1"]["digest"], size=result["v1"]["size"])
container = client.get_container(f"{target}:sbom")
layer = oras.oci.NewLayer("sbom.json", media_type="application/spdx+json")
layer["annotations"] = {"org.opencontainers.image.title": "sbom.json"}
client.upload_blob("sbom.json", container, layer)
empty = "sha256:" + hashlib.sha256(b"{}").hexdigest()
with open("empty.json", "w") as f:
    f.write("{}")
conf = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}
client.upload_blob("empty.json", container, conf)
manifest = oras.oci.NewManifest()
manifest["artifactType"] = "application/vnd.berth.test.sbom"
manifest["config"] = conf
manifest["layers"] = [layer]
manifest["subject"] = {"mediaType": sub.mediaType, "digest": sub.digest, "size": sub.size}
r = client.upload_manifest(manifest, container)
result["sbom_status"] = r.status_code
result["sbom_digest"] = r.headers.get("Docker-Content-Digest")
result["oci_subject"] = r.headers.get("OCI-Subject")

# 4. Pull everything back.
result["pulled"] = sorted(os.path.relpath(p, out) for p in
                          client.pull(target=f"{target}:v1", outdir=os.path.join(out, "v1")))
client.pull(target=f"{addr}/{repo}-chunked:v1", outdir=os.path.join(out, "chunked"))
client.pull(target=f"{target}:sbom", outdir=os.path.join(out, "sbom"))
result["tags"] = sorted(client.get_tags(target))
print(json.dumps(result))
"#;

fn same(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

#[test]
fn oras_push_pull_artifacts() {
    if !common::require("python3") {
        return;
    }
    let has_oras = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        has_oras || std::env::var("BERTH_TEST_ALLOW_MISSING").is_ok(),
        "the oras Python package is not installed; run the README's test command, which installs it"
    );
    if !has_oras {
        eprintln!("SKIPPED: oras is not installed");
        return;
    }
    let s = common::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(work.join("data.bin"), common::random_bytes(1_500_000)).unwrap();
    std::fs::write(work.join("notes.txt"), "artifact notes\n").unwrap();
    std::fs::write(work.join("config.json"), r#"{"kind":"test artifact"}"#).unwrap();
    std::fs::write(work.join("sbom.json"), r#"{"spdxVersion":"SPDX-2.3","packages":[]}"#).unwrap();
    std::fs::write(work.join("tree/a.txt"), "a\n").unwrap();
    std::fs::write(work.join("tree/sub/b.bin"), common::random_bytes(10_000)).unwrap();
    let repo = format!("oras/art-{}", unique());

    // oras keeps temporary archives; keep them inside the test's directory.
    let pytmp = tmp.path().join("pytmp");
    std::fs::create_dir_all(&pytmp).unwrap();
    let stdout = run(Command::new("python3")
        .env("TMPDIR", &pytmp)
        .arg("-c")
        .arg(PUSH_PULL_PY)
        .arg(&s.addr)
        .arg(&repo)
        .arg(&work)
        .arg(&out));
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("oras script output {stdout:?}: {e}"));
    assert_eq!(result["push_status"], 201);
    assert_eq!(result["chunked_status"], 201);
    assert_eq!(result["sbom_status"], 201);
    assert_eq!(result["oci_subject"], result["v1"]["digest"]);
    assert_eq!(result["tags"], serde_json::json!(["sbom", "v1"]));

    // Pulled files are byte-identical; the directory came back as a tree.
    same(&work.join("data.bin"), &out.join("v1/data.bin"));
    same(&work.join("notes.txt"), &out.join("v1/notes.txt"));
    same(&work.join("tree/a.txt"), &out.join("v1/tree/a.txt"));
    same(&work.join("tree/sub/b.bin"), &out.join("v1/tree/sub/b.bin"));
    same(&work.join("data.bin"), &out.join("chunked/data.bin"));
    same(&work.join("notes.txt"), &out.join("chunked/notes.txt"));
    same(&work.join("sbom.json"), &out.join("sbom/sbom.json"));

    // What the registry stored.
    let c = common::client();
    let v1_digest = result["v1"]["digest"].as_str().unwrap();
    let m: Value = c
        .get(format!("{}/v2/{repo}/manifests/{v1_digest}", s.url))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["config"]["mediaType"], "application/vnd.berth.test.config+json");
    assert_eq!(m["annotations"]["org.berth.test.run"], "yes");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.berth.test.data");
    let config = c
        .get(format!("{}/v2/{repo}/blobs/{}", s.url, m["config"]["digest"].as_str().unwrap()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(config.as_ref(), std::fs::read(work.join("config.json")).unwrap());

    // The referrers API lists the artifact under its artifactType.
    let r = c.get(format!("{}/v2/{repo}/referrers/{v1_digest}", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    let index: Value = r.json().unwrap();
    let refs = index["manifests"].as_array().unwrap();
    assert_eq!(refs.len(), 1, "{index}");
    assert_eq!(refs[0]["digest"], result["sbom_digest"]);
    assert_eq!(refs[0]["artifactType"], "application/vnd.berth.test.sbom");
    let filtered: Value = c
        .get(format!("{}/v2/{repo}/referrers/{v1_digest}?artifactType=application/vnd.berth.test.other", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(filtered["manifests"].as_array().unwrap().len(), 0);
}
