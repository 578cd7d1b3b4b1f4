//! Support for the real-client tests: running external commands and
//! building OCI image layouts on disk.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "command failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output whatever the status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// A short random suffix so repositories and tags are unique per run.
pub fn unique() -> String {
    format!("{:08x}", rand::random::<u32>())
}

pub fn sha256_file(path: &Path) -> String {
    crate::common::sha256(&std::fs::read(path).unwrap())
}

/// Builds an OCI image layout in `dir` (created if needed) from a JSON spec:
///
/// ```json
/// {"images": [{"tag": "v1", "arch": "amd64", "layers": [3000000, 200000]}],
///  "indexes": [{"tag": "multi", "archs": ["amd64", "arm64"], "layers": [1000000]}]}
/// ```
///
/// Each layer is a gzip-compressed tar holding one file of that many random
/// bytes. Returns the JSON description the script prints: for each tag, the
/// digest of the top-level manifest (or index) and every blob digest written.
pub fn make_oci_layout(dir: &Path, spec: &serde_json::Value) -> serde_json::Value {
    let out = run(Command::new("python3").arg("-c").arg(LAYOUT_PY).arg(dir).arg(spec.to_string()));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("layout script output {out:?}: {e}"))
}

const LAYOUT_PY: &str = r#"
import gzip, hashlib, io, json, os, sys, tarfile, time

root, spec = sys.argv[1], json.loads(sys.argv[2])
blobdir = os.path.join(root, "blobs", "sha256")
os.makedirs(blobdir, exist_ok=True)
with open(os.path.join(root, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobdir, d), "wb") as f:
        f.write(data)
    return "sha256:" + d

def layer(size, n):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = os.urandom(size)
        info = tarfile.TarInfo("data/file%d.bin" % n)
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    diff = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    gz = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    return put(gz), len(gz), diff

def image(arch, sizes):
    layers, diffs = [], []
    for n, size in enumerate(sizes):
        d, sz, diff = layer(size, n)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": sz})
        diffs.append(diff)
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/"], "Labels": {"nonce": os.urandom(8).hex()}},
        "rootfs": {"type": "layers", "diff_ids": diffs},
    }).encode()
    cd = put(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": layers,
    }).encode()
    md = put(manifest)
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"}}, [cd] + [l["digest"] for l in layers]

index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
result = {}
for img in spec.get("images", []):
    desc, blobs = image(img.get("arch", "amd64"), img["layers"])
    del desc["platform"]
    desc["annotations"] = {"org.opencontainers.image.ref.name": img["tag"]}
    index["manifests"].append(desc)
    result[img["tag"]] = {"digest": desc["digest"], "blobs": blobs, "manifests": [desc["digest"]]}
for idx in spec.get("indexes", []):
    children, blobs = [], []
    for arch in idx["archs"]:
        desc, b = image(arch, idx["layers"])
        children.append(desc)
        blobs += b
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": children}).encode()
    d = put(body)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d,
                               "size": len(body),
                               "annotations": {"org.opencontainers.image.ref.name": idx["tag"]}})
    result[idx["tag"]] = {"digest": d, "blobs": blobs, "manifests": [c["digest"] for c in children]}
with open(os.path.join(root, "index.json"), "w") as f:
    json.dump(index, f)
print(json.dumps(result))
"#;
