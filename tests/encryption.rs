//! Encryption at rest with the real binary: no plaintext on disk, pulls
//! byte-identical (whole and ranges), wrong or missing key refused at
//! start-up, rotation re-encrypts while serving.
mod common;

use common::{client, push_blob, sha256, Server};
use std::path::Path;
use std::process::Command;

fn key() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["encryption", "new-key"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Whether any file under `dir` contains `needle`.
fn found_on_disk(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
    }
    false
}

fn start_fails(data: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "server started but should not have");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_plaintext_on_disk_and_reads_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let k1 = key();
    let c = client();
    // A layer with a recognizable marker, big enough to span many chunks.
    let marker = b"BERTH-PLAINTEXT-MARKER-7f3a9c";
    let mut layer = common::random_bytes(300_000);
    for at in [0usize, 70_000, 299_000 - marker.len()] {
        layer[at..at + marker.len()].copy_from_slice(marker);
    }
    let manifest_marker = "BERTH-MANIFEST-MARKER-b41e";
    let (digest, manifest_digest);
    {
        let s = Server::start_in(&data, &[], &[("BERTH_ENCRYPTION_KEY", &k1)]);
        digest = push_blob(&c, &s.url, "secret/app", &layer);
        let config = b"{}".to_vec();
        let cd = push_blob(&c, &s.url, "secret/app", &config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": layer.len()}],
            "annotations": {"note": manifest_marker}
        })
        .to_string();
        let r = c
            .put(format!("{}/v2/secret/app/manifests/v1", s.url))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        manifest_digest = sha256(manifest.as_bytes());
        // A chunked upload left unfinished is sealed too.
        let r = c.post(format!("{}/v2/secret/app/blobs/uploads/", s.url)).send().unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let r = c.patch(format!("{}{loc}", s.url)).body(layer[..100_000].to_vec()).send().unwrap();
        assert_eq!(r.status(), 202);

        let got = c.get(format!("{}/v2/secret/app/blobs/{digest}", s.url)).send().unwrap().bytes().unwrap();
        assert!(got[..] == layer[..], "pulled layer differs");
        for (a, b) in [(0u64, 9u64), (65_530, 65_545), (131_072, 200_000), (299_990, 299_999)] {
            let r = c
                .get(format!("{}/v2/secret/app/blobs/{digest}", s.url))
                .header("Range", format!("bytes={a}-{b}"))
                .send()
                .unwrap();
            assert_eq!(r.status(), 206);
            assert_eq!(&r.bytes().unwrap()[..], &layer[a as usize..=b as usize], "range {a}-{b}");
        }
        let r = c.get(format!("{}/v2/secret/app/manifests/v1", s.url)).send().unwrap();
        assert_eq!(r.headers()["docker-content-digest"], manifest_digest.as_str());
        assert_eq!(r.text().unwrap(), manifest);
    }
    assert!(!found_on_disk(&data, marker), "layer plaintext found in the data directory");
    assert!(!found_on_disk(&data, manifest_marker.as_bytes()), "manifest plaintext found in the data directory");

    // Missing and wrong keys stop start-up with a clear message.
    let err = start_fails(&data, &[]);
    assert!(err.contains("encrypted") && err.contains("no key"), "{err}");
    let err = start_fails(&data, &[("BERTH_ENCRYPTION_KEY", &key())]);
    assert!(err.contains("wrong encryption key"), "{err}");

    // Rotation: new key, old key listed as previous; data re-encrypted while serving.
    let k2 = key();
    let old_key_file = tmp.path().join("old.key");
    std::fs::write(&old_key_file, &k1).unwrap();
    let config = tmp.path().join("berth.toml");
    std::fs::write(&config, format!("[encryption]\nprevious_key_files = [{:?}]\n", old_key_file.to_str().unwrap())).unwrap();
    {
        // Read before the server starts: re-encryption of a few blobs can
        // finish before the first request does.
        let marker_file = data.join("encryption-key-id");
        let before = std::fs::read_to_string(&marker_file).unwrap();
        let s = Server::start_in(&data, &["--config", config.to_str().unwrap()], &[("BERTH_ENCRYPTION_KEY", &k2)]);
        let got = c.get(format!("{}/v2/secret/app/blobs/{digest}", s.url)).send().unwrap().bytes().unwrap();
        assert!(got[..] == layer[..]);
        // Wait (bounded) for the background re-encryption to record completion.
        let mut done = false;
        for _ in 0..200 {
            if std::fs::read_to_string(&marker_file).unwrap() != before {
                done = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(done, "re-encryption did not finish:\n{}", s.stderr());
    }
    // Now the new key alone suffices, and the old one is refused.
    {
        let s = Server::start_in(&data, &[], &[("BERTH_ENCRYPTION_KEY", &k2)]);
        let got = c.get(format!("{}/v2/secret/app/blobs/{digest}", s.url)).send().unwrap().bytes().unwrap();
        assert!(got[..] == layer[..]);
        let r = c.get(format!("{}/v2/secret/app/manifests/{manifest_digest}", s.url)).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    let err = start_fails(&data, &[("BERTH_ENCRYPTION_KEY", &k1)]);
    assert!(err.contains("wrong encryption key"), "{err}");
}

#[test]
fn refuses_to_encrypt_existing_plaintext_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let s = Server::start_in(&data, &[], &[]);
        push_blob(&client(), &s.url, "plain/app", b"hello");
    }
    let err = start_fails(&data, &[("BERTH_ENCRYPTION_KEY", &key())]);
    assert!(err.contains("unencrypted"), "{err}");
}

#[test]
fn skopeo_round_trip_encrypted() {
    if !common::require("skopeo") {
        return;
    }
    let s = Server::start_with(&[], &[("BERTH_ENCRYPTION_KEY", &key())]);
    let c = client();
    let (manifest, _) = common::push_image(&c, &s.url, "enc/img", "v1");
    let out = tempfile::tempdir().unwrap();
    let st = Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/enc/img:v1", s.addr))
        .arg(format!("dir:{}", out.path().join("image").display()))
        .status()
        .unwrap();
    assert!(st.success());
    // `dir:` keeps the manifest exactly as served.
    assert_eq!(std::fs::read(out.path().join("image/manifest.json")).unwrap(), manifest);
}
