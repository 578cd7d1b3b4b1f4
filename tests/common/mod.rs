//! Shared test support: start the real `berth` binary on an ephemeral port
//! with its own data directory, and small HTTP helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

impl Server {
    /// Starts a server with a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(&[], &[])
    }

    /// Starts a server with extra CLI args and environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Self::start_in(&data, args, env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data directory (restarts, crash tests).
    pub fn start_in(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr_log = data_dir.with_extension(format!("stderr-{}.log", rand::random::<u32>()));
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log = std::fs::File::create(&stderr_log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("BERTH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start berth");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("berth listening on ")
            .unwrap_or_else(|| {
                let mut err = String::new();
                let _ = std::fs::File::open(&stderr_log).and_then(|mut f| f.read_to_string(&mut err));
                panic!("berth did not start: {line:?}\n{err}")
            })
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        let addr = url.trim_start_matches("http://").trim_start_matches("https://").to_string();
        Server { child, url, addr, data_dir: data_dir.to_path_buf(), _tmp: None, stderr_log }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    v
}

/// Whether an external command is available.
pub fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Tools the README's test command installs must be present; set
/// BERTH_TEST_ALLOW_MISSING=1 to skip instead (e.g. a quick local run).
pub fn require(cmd: &str) -> bool {
    if have(cmd) {
        return true;
    }
    if std::env::var("BERTH_TEST_ALLOW_MISSING").is_ok() {
        eprintln!("SKIPPED: {cmd} is not installed");
        return false;
    }
    panic!("{cmd} is not installed; run the README's test command, which installs it");
}

/// Pushes a blob monolithically; returns its digest.
pub fn push_blob(c: &reqwest::blocking::Client, url: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}")).body(data.to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    digest
}

/// Pushes a one-layer OCI image manifest; returns (manifest bytes, digest).
pub fn push_image(c: &reqwest::blocking::Client, url: &str, repo: &str, tag: &str) -> (Vec<u8>, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{}}}"#, rand::random::<u64>()).into_bytes();
    let layer = random_bytes(1000);
    let cd = push_blob(c, url, repo, &config);
    let ld = push_blob(c, url, repo, &layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let d = sha256(&manifest);
    (manifest, d)
}

impl Server {
    /// Starts a server configured by `toml` (written to `dir/berth.toml`),
    /// with a fresh data directory under `dir`.
    pub fn start_config(dir: &Path, toml: &str) -> Server {
        let file = dir.join(format!("berth-{:08x}.toml", rand::random::<u32>()));
        std::fs::write(&file, toml).unwrap();
        let data = dir.join(format!("data-{:08x}", rand::random::<u32>()));
        Self::start_in(&data, &["--config", file.to_str().unwrap()], &[])
    }
}

/// Writes an htpasswd file (bcrypt, via `berth user add`) with these users.
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    for (name, password) in users {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["user", "add", name, "--file"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "berth user add {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
