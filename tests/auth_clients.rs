//! Real clients against a `berth` server with authentication, in basic and
//! token modes: skopeo with `--creds`/`--dest-creds`, the Docker engine
//! (login, push, pull, logout, a pull-only user denied) and podman (login
//! and push with an authfile). Client credentials live in temporary
//! directories only.

mod clients_support;
mod common;

use clients_support::{make_oci_layout, output, run, unique};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// alice may do anything under `shared/**` and her own `users/alice/**`;
/// reader may only pull `shared/**`.
const USERS: &[(&str, &str)] = &[("alice", "alice-Pw-1"), ("reader", "reader-Pw-2")];

fn htpasswd_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        common::write_htpasswd(&path, USERS);
        std::fs::read_to_string(path).unwrap()
    })
}

fn start(mode: &str, dir: &Path) -> common::Server {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_text()).unwrap();
    let toml = format!(
        r#"
[auth]
mode = "{mode}"
htpasswd = "{}"

[[auth.rules]]
repositories = ["users/{{user}}/**"]
actions = ["admin"]
users = ["*"]

[[auth.rules]]
repositories = ["shared/**"]
actions = ["admin"]
users = ["alice"]

[[auth.rules]]
repositories = ["shared/**"]
actions = ["pull"]
users = ["reader"]
"#,
        htpasswd.display()
    );
    common::Server::start_config(dir, &toml)
}

fn creds(user: &str) -> String {
    let pw = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    format!("{user}:{pw}")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_fails_with(out: &Output, words: &[&str], what: &str) {
    let t = text(out);
    assert!(!out.status.success(), "{what} should fail:\n{t}");
    let lower = t.to_lowercase();
    assert!(words.iter().any(|w| lower.contains(w)), "{what}: expected one of {words:?} in:\n{t}");
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

#[test]
fn skopeo_with_credentials_in_basic_and_token_modes() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let made = make_oci_layout(&src, &json!({"images": [{"tag": "v1", "arch": "amd64", "layers": [300_000, 1000]}]}));
    let digest = made["v1"]["digest"].as_str().unwrap().to_string();
    for mode in ["basic", "token"] {
        let dir = tempfile::tempdir().unwrap();
        let s = start(mode, dir.path());
        let image = format!("docker://{}/shared/skopeo-{}:v1", s.addr, unique());
        let source = format!("oci:{}:v1", src.display());

        // No credentials, wrong credentials, pull-only credentials: refused.
        let out = output(skopeo().args(["copy", "--dest-tls-verify=false", &source, &image]));
        assert_fails_with(&out, &["unauthorized", "authentication required", "denied"], &format!("{mode}: anonymous push"));
        let out = output(skopeo().args(["copy", "--dest-tls-verify=false", "--dest-creds", "alice:wrong", &source, &image]));
        assert_fails_with(&out, &["unauthorized", "invalid username or password", "authentication"], &format!("{mode}: wrong password"));
        let out = output(skopeo().args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds("reader"), &source, &image]));
        assert_fails_with(&out, &["denied"], &format!("{mode}: pull-only user pushing"));

        // alice pushes; reader inspects, lists and copies it back out.
        run(skopeo().args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds("alice"), &source, &image]));
        let inspected: serde_json::Value = serde_json::from_str(&run(skopeo().args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--creds",
            &creds("reader"),
            &image,
        ])))
        .unwrap();
        assert_eq!(inspected["schemaVersion"], 2);
        let digest_out = run(skopeo().args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}", "--creds", &creds("reader"), &image]));
        assert_eq!(digest_out.trim(), digest, "{mode}");
        let repo = image.rsplit_once(':').unwrap().0;
        let tags = run(skopeo().args(["list-tags", "--tls-verify=false", "--creds", &creds("reader"), repo]));
        assert!(tags.contains("\"v1\""), "{mode}: {tags}");
        let dst = tmp.path().join(format!("dst-{mode}"));
        run(skopeo()
            .args(["copy", "--src-tls-verify=false", "--src-creds", &creds("reader")])
            .arg(&image)
            .arg(format!("oci:{}:v1", dst.display())));
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"].as_str().unwrap(), digest, "{mode}");

        // Anonymous reads are refused; alice's own namespace works with --creds.
        let out = output(skopeo().args(["inspect", "--tls-verify=false", "--raw", &image]));
        assert_fails_with(&out, &["unauthorized", "authentication required"], &format!("{mode}: anonymous inspect"));
        let own = format!("docker://{}/users/alice/copy:v1", s.addr);
        run(skopeo().args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", &creds("alice"), "--dest-creds", &creds("alice"), &image, &own]));
        let out = output(skopeo().args(["inspect", "--tls-verify=false", "--raw", "--creds", &creds("reader"), &own]));
        assert_fails_with(&out, &["denied", "unauthorized"], &format!("{mode}: reader outside shared/"));
        // Deleting needs the delete right.
        let out = output(skopeo().args(["delete", "--tls-verify=false", "--creds", &creds("reader"), &image]));
        assert_fails_with(&out, &["denied", "unauthorized"], &format!("{mode}: reader deleting"));
        run(skopeo().args(["delete", "--tls-verify=false", "--creds", &creds("alice"), &own]));
    }
}

// ---- Docker engine ----

fn engine_available() -> bool {
    common::have("docker") && output(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])).status.success()
}

/// The docker CLI with a private configuration directory, so the machine's
/// own credentials are never read or written.
struct Docker {
    config: tempfile::TempDir,
    images: Vec<String>,
}

impl Docker {
    fn new() -> Docker {
        Docker { config: tempfile::tempdir().unwrap(), images: Vec::new() }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_BUILDKIT", "0").arg("--config").arg(self.config.path());
        c
    }

    fn login(&self, addr: &str, user: &str) -> Output {
        let pw = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let mut child = self
            .cmd()
            .args(["login", addr, "-u", user, "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
        child.wait_with_output().unwrap()
    }

    fn stored_auths(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.config.path().join("config.json")).unwrap_or_else(|_| "{}".into());
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["auths"].clone()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for image in &self.images {
            let _ = output(self.cmd().args(["rmi", "-f", image]));
        }
    }
}

#[test]
fn docker_login_push_pull_logout_and_denied() {
    if !engine_available() {
        eprintln!("docker auth tests: skipped (no engine)");
        return;
    }
    for mode in ["basic", "token"] {
        let dir = tempfile::tempdir().unwrap();
        let s = start(mode, dir.path());
        let id = unique();
        let image = format!("{}/shared/docker-{mode}-{id}:v1", s.addr);
        let denied_image = format!("{}/shared/docker-{mode}-{id}:reader", s.addr);
        let mut d = Docker::new();
        d.images = vec![image.clone(), denied_image.clone()];

        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("data.bin"), common::random_bytes(200_000)).unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY data.bin /data.bin\n").unwrap();
        run(d.cmd().args(["build", "-q", "-t", &image]).arg(ctx.path()));
        let id_before = run(d.cmd().args(["image", "inspect", "--format", "{{.Id}}", &image])).trim().to_string();

        // Not logged in: push is refused.
        let out = output(d.cmd().args(["push", &image]));
        assert_fails_with(&out, &["no basic auth credentials", "unauthorized", "authentication required"], &format!("{mode}: anonymous push"));
        // A wrong password fails to log in.
        let mut bad = d.cmd();
        bad.args(["login", &s.addr, "-u", "alice", "-p", "wrong"]);
        assert_fails_with(&output(&mut bad), &["unauthorized", "invalid", "incorrect"], &format!("{mode}: bad login"));

        let out = d.login(&s.addr, "alice");
        assert!(out.status.success(), "{mode}: login: {}", text(&out));
        assert!(d.stored_auths().get(&s.addr).is_some(), "{mode}: credentials stored in the private config");
        run(d.cmd().args(["push", &image]));
        run(d.cmd().args(["rmi", &image]));
        run(d.cmd().args(["pull", &image]));
        let id_after = run(d.cmd().args(["image", "inspect", "--format", "{{.Id}}", &image])).trim().to_string();
        assert_eq!(id_before, id_after, "{mode}: same image back");
        run(d.cmd().args(["logout", &s.addr]));
        assert!(d.stored_auths().get(&s.addr).is_none(), "{mode}: logout removes the credentials");
        run(d.cmd().args(["rmi", &image]));
        let out = output(d.cmd().args(["pull", &image]));
        assert_fails_with(&out, &["unauthorized", "authentication required", "no basic auth"], &format!("{mode}: pull after logout"));

        // A pull-only user can pull but gets `denied` on push.
        let out = d.login(&s.addr, "reader");
        assert!(out.status.success(), "{mode}: reader login: {}", text(&out));
        run(d.cmd().args(["pull", &image]));
        run(d.cmd().args(["tag", &image, &denied_image]));
        let out = output(d.cmd().args(["push", &denied_image]));
        assert_fails_with(&out, &["denied"], &format!("{mode}: reader push"));
        run(d.cmd().args(["logout", &s.addr]));
        drop(d);
    }
    eprintln!("docker auth tests: ran");
}

// ---- podman ----

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registries.conf"), "").unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", self.dir.path().join("registries.conf"))
            // Never fall back to the machine's credentials.
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("default-auth.json"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    fn authfile(&self, user: &str) -> String {
        self.dir.path().join(format!("auth-{user}.json")).display().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = output(self.cmd().args(["rmi", "-a", "-f"]));
        let _ = output(self.cmd().args(["system", "reset", "-f"]));
    }
}

#[test]
fn podman_login_and_push_with_authfile() {
    if !common::require("podman") {
        return;
    }
    for mode in ["basic", "token"] {
        let dir = tempfile::tempdir().unwrap();
        let s = start(mode, dir.path());
        let p = Podman::new();
        let image = format!("{}/shared/podman-{mode}-{}:v1", s.addr, unique());
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("data.bin"), common::random_bytes(100_000)).unwrap();
        std::fs::write(ctx.path().join("Containerfile"), "FROM scratch\nCOPY data.bin /data.bin\n").unwrap();
        run(p.cmd().args(["build", "-q", "--format", "oci", "-t", &image, "-f"]).arg(ctx.path().join("Containerfile")).arg(ctx.path()));

        let out = output(p.cmd().args(["push", "--tls-verify=false", "--authfile", &p.authfile("none"), &image]));
        assert!(!out.status.success(), "{mode}: anonymous push should fail:\n{}", text(&out));

        for user in ["alice", "reader"] {
            let pw = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
            run(p.cmd().args(["login", "--tls-verify=false", "--authfile", &p.authfile(user), "-u", user, "-p", pw, &s.addr]));
            let stored = std::fs::read_to_string(p.authfile(user)).unwrap();
            assert!(stored.contains(&s.addr), "{mode}: {stored}");
        }
        let out = output(p.cmd().args(["login", "--tls-verify=false", "--authfile", &p.authfile("bad"), "-u", "alice", "-p", "wrong", &s.addr]));
        assert!(!out.status.success(), "{mode}: bad password login should fail");

        run(p.cmd().args(["push", "--tls-verify=false", "--authfile", &p.authfile("alice"), &image]));
        let out = output(p.cmd().args(["push", "--tls-verify=false", "--authfile", &p.authfile("reader"), &image]));
        assert_fails_with(&out, &["denied"], &format!("{mode}: reader push"));
        // The reader pulls it into an empty store.
        let q = Podman::new();
        run(q.cmd().args(["pull", "--tls-verify=false", "--authfile", &p.authfile("reader"), &image]));
        run(p.cmd().args(["logout", "--authfile", &p.authfile("alice"), &s.addr]));
        let out = output(p.cmd().args(["push", "--tls-verify=false", "--authfile", &p.authfile("alice"), &image]));
        assert!(!out.status.success(), "{mode}: push after logout should fail:\n{}", text(&out));
    }
}
