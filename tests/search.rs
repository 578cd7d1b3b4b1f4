//! Search and the web interface against the real binary: ranking, filters,
//! pagination, authorization filtering, consistency after deletes and after
//! `kill -9` mid-push, `docker search` through the engine, and the UI in
//! headless Chromium (screenshots in `target/ui-screenshots`).

mod common;

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

/// Pushes a one-layer image whose config carries `labels` and a platform;
/// returns the manifest digest.
fn push_labeled(c: &Client, url: &str, repo: &str, tag: &str, arch: &str, labels: &[(&str, &str)]) -> String {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let config = json!({
        "architecture": arch, "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": {"Labels": labels},
        "history": [{"created": "2026-01-02T03:04:05Z", "created_by": "COPY hello.txt / # buildkit"}],
        "rootfs": {"type": "layers", "diff_ids": []},
        "n": rand::random::<u64>(),
    })
    .to_string()
    .into_bytes();
    let layer = common::random_bytes(2000);
    let cd = common::push_blob(c, url, repo, &config);
    let ld = common::push_blob(c, url, repo, &layer);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
        "annotations": {"org.opencontainers.image.source": format!("https://example.com/{repo}")}
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
    common::sha256(&manifest)
}

fn search(c: &Client, url: &str, q: &str, extra: &str) -> Value {
    let r = c.get(format!("{url}/api/v1/search")).query(&[("q", q)]).send().unwrap();
    let _ = extra;
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

fn seed(c: &Client, url: &str) -> String {
    push_labeled(c, url, "web/nginx-proxy", "1.0", "amd64", &[]);
    push_labeled(c, url, "nginx", "latest", "arm64", &[]);
    push_labeled(c, url, "tools/mynginx", "v2", "amd64", &[]);
    push_labeled(
        c,
        url,
        "tools/web",
        "nginx-compat",
        "amd64",
        &[("org.opencontainers.image.description", "A small static web server"), ("org.opencontainers.image.vendor", "Acme")],
    )
}

#[test]
fn ranking_filters_pagination_and_deletes() {
    let s = common::Server::start();
    let c = common::client();
    let web_digest = seed(&c, &s.url);

    let found = search(&c, &s.url, "nginx", "");
    assert_eq!(found["num_results"], 4);
    // Exact name, then name prefix (of a path component), then substring, then tag.
    assert_eq!(names(&found), ["nginx", "web/nginx-proxy", "tools/mynginx", "tools/web"]);
    assert_eq!(found["results"][3]["description"], "A small static web server");

    // Descriptions, labels and annotations are searchable; filters narrow.
    assert_eq!(names(&search(&c, &s.url, "static", "")), ["tools/web"]);
    assert_eq!(names(&search(&c, &s.url, "example.com/tools", "")), ["tools/mynginx", "tools/web"]);
    assert_eq!(names(&search(&c, &s.url, "label:org.opencontainers.image.vendor=Acme", "")), ["tools/web"]);
    assert_eq!(names(&search(&c, &s.url, "nginx platform:linux/arm64", "")), ["nginx"]);
    assert!(names(&search(&c, &s.url, "nginx label:org.opencontainers.image.vendor=Other", "")).is_empty());

    // Pagination, in both formats.
    let page2: Value = c.get(format!("{}/api/v1/search?q=nginx&n=3&page=2", s.url)).send().unwrap().json().unwrap();
    assert_eq!((page2["num_results"].clone(), page2["num_pages"].clone(), names(&page2)), (json!(4), json!(2), vec!["tools/web".to_string()]));
    let v1: Value = c.get(format!("{}/v1/search?q=nginx&n=2&page=1", s.url)).send().unwrap().json().unwrap();
    assert_eq!(v1["num_results"], 4);
    assert_eq!(v1["num_pages"], 2);
    assert_eq!(v1["page_size"], 2);
    assert_eq!(v1["query"], "nginx");
    assert_eq!(v1["results"][0], json!({"name": "nginx", "description": "", "star_count": 0, "is_official": false, "is_automated": false}));

    // Repository API with pull counts (GETs only, HEAD does not count).
    for _ in 0..3 {
        assert_eq!(c.get(format!("{}/v2/tools/web/manifests/nginx-compat", s.url)).send().unwrap().status(), 200);
    }
    c.head(format!("{}/v2/tools/web/manifests/nginx-compat", s.url)).send().unwrap();
    let repo: Value = c.get(format!("{}/api/v1/repositories/tools/web", s.url)).send().unwrap().json().unwrap();
    let tag = &repo["tags"][0];
    assert_eq!(tag["name"], "nginx-compat");
    assert_eq!(tag["digest"], web_digest.as_str());
    assert_eq!(tag["platforms"], json!(["linux/amd64"]));
    assert_eq!(tag["pull_count"], 3);
    assert!(tag["size"].as_u64().unwrap() > 2000);
    assert!(tag["last_pull"].as_i64().is_some());
    let m: Value = c.get(format!("{}/api/v1/repositories/tools/web/manifests/{web_digest}", s.url)).send().unwrap().json().unwrap();
    assert_eq!(m["labels"]["org.opencontainers.image.vendor"], "Acme");
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["history"][0]["created_by"], "COPY hello.txt / # buildkit");
    assert_eq!(c.get(format!("{}/api/v1/repositories/nope", s.url)).send().unwrap().status(), 404);

    // Deleting the tag removes what only it carried, at once.
    let r = c.delete(format!("{}/v2/tools/web/manifests/nginx-compat", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    assert!(names(&search(&c, &s.url, "static", "")).is_empty());
    assert_eq!(names(&search(&c, &s.url, "nginx", "")), ["nginx", "web/nginx-proxy", "tools/mynginx"]);
    // Deleting the last manifest removes the repository.
    let r = c.delete(format!("{}/v2/tools/web/manifests/{web_digest}", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    assert!(!names(&search(&c, &s.url, "", "")).contains(&"tools/web".to_string()));
    assert_eq!(c.get(format!("{}/r/tools/web", s.url)).send().unwrap().status(), 404);

    // The pages render.
    let home = c.get(format!("{}/?q=nginx", s.url)).send().unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().unwrap().contains("/r/web/nginx-proxy"));
    let page = c.get(format!("{}/r/nginx", s.url)).send().unwrap().text().unwrap();
    assert!(page.contains("docker pull 127.0.0.1:") && page.contains("/nginx:latest"));
    assert!(c.get(format!("{}/ui/app.js", s.url)).send().unwrap().text().unwrap().contains("fetch("));
}

#[test]
fn results_follow_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    common::write_htpasswd(&htpasswd, &[("admin", "adminpw"), ("reader", "readerpw")]);
    let toml = format!(
        r#"
[auth]
mode = "token"
htpasswd = "{}"

[[auth.rules]]
repositories = ["team/**"]
actions = ["pull"]
users = ["reader"]

[[auth.rules]]
repositories = ["**"]
actions = ["admin"]
users = ["admin"]
"#,
        htpasswd.display()
    );
    let s = common::Server::start_config(dir.path(), &toml);
    let c = common::client();
    let admin = |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("admin", Some("adminpw"));
    // Push as admin (Basic credentials work in token mode too).
    for repo in ["team/api", "team/apidocs", "secret/api"] {
        let data = common::random_bytes(100);
        let d = common::sha256(&data);
        let r = admin(c.post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", s.url))).body(data).send().unwrap();
        assert_eq!(r.status(), 201);
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d, "size": 100}, "layers": []})
        .to_string();
        let r = admin(c.put(format!("{}/v2/{repo}/manifests/v1", s.url)))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Anonymous: asked to log in with Basic (browsers prompt), everywhere.
    for path in ["/", "/api/v1/search?q=api", "/v1/search?q=api", "/r/team/api", "/api/v1/repositories/team/api"] {
        let r = c.get(format!("{}{path}", s.url)).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic realm="), "{path}");
    }
    assert_eq!(c.get(format!("{}/ui/app.css", s.url)).send().unwrap().status(), 200);
    // The reader sees only team/*; counts and pages agree.
    let found: Value = c.get(format!("{}/api/v1/search?q=api&n=1", s.url)).basic_auth("reader", Some("readerpw")).send().unwrap().json().unwrap();
    assert_eq!(found["num_results"], 2);
    assert_eq!(names(&found), ["team/api"]);
    let found: Value = admin(c.get(format!("{}/api/v1/search?q=api", s.url))).send().unwrap().json().unwrap();
    assert_eq!(found["num_results"], 3);
    assert_eq!(c.get(format!("{}/r/secret/api", s.url)).basic_auth("reader", Some("readerpw")).send().unwrap().status(), 403);
    let page = c.get(format!("{}/r/team/api", s.url)).basic_auth("reader", Some("readerpw")).send().unwrap().text().unwrap();
    assert!(page.contains("team/api") && !page.contains("data-delete-tag"), "a reader gets no delete button");
    let page = admin(c.get(format!("{}/r/team/api", s.url))).send().unwrap().text().unwrap();
    assert!(page.contains("data-delete-tag=\"v1\""));
    // Wrong password: asked again.
    assert_eq!(c.get(format!("{}/api/v1/search?q=api", s.url)).basic_auth("reader", Some("bad")).send().unwrap().status(), 401);
}

#[test]
fn index_consistent_after_kill9_mid_push() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = common::Server::start_in(&data, &[], &[]);
    let url = s.url.clone();
    let pushers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = common::client();
                for i in 0.. {
                    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        push_labeled(&c, &url, &format!("crash/w{w}-{i}"), "v1", "amd64", &[("org.opencontainers.image.description", "crash test image")]);
                    }));
                    if ok.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500 + rand::random::<u64>() % 1000));
    s.kill9();
    for p in pushers {
        let _ = p.join();
    }
    let s = common::Server::start_in(&data, &[], &[]);
    let c = common::client();
    let catalog: Value = c.get(format!("{}/v2/_catalog?n=10000", s.url)).send().unwrap().json().unwrap();
    let catalog: BTreeSet<String> = catalog["repositories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(!catalog.is_empty(), "some pushes completed before the kill");
    let found: Value = c.get(format!("{}/api/v1/search?q=crash+test&n=100", s.url)).send().unwrap().json().unwrap();
    assert_eq!(found["num_results"].as_u64().unwrap() as usize, catalog.len());
    let mut all = BTreeSet::new();
    for page in 1.. {
        let found: Value = c.get(format!("{}/api/v1/search?q=&n=100&page={page}", s.url)).send().unwrap().json().unwrap();
        let n = names(&found);
        if n.is_empty() {
            break;
        }
        all.extend(n);
    }
    assert_eq!(all, catalog, "search and catalog agree after the crash");
    for repo in &catalog {
        let r: Value = c.get(format!("{}/api/v1/repositories/{repo}", s.url)).send().unwrap().json().unwrap();
        assert_eq!(r["tags"][0]["name"], "v1");
        assert_eq!(r["description"], "crash test image");
    }
}

#[test]
fn docker_search_through_the_engine() {
    let docker_ok = Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false);
    if !docker_ok {
        eprintln!("SKIPPED: no Docker engine");
        return;
    }
    let s = common::Server::start();
    let c = common::client();
    seed(&c, &s.url);
    let out = Command::new("docker").args(["search", "--no-trunc", &format!("{}/nginx", s.addr)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", text, String::from_utf8_lossy(&out.stderr));
    let listed: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(listed, ["nginx", "web/nginx-proxy", "tools/mynginx", "tools/web"]);
    assert!(text.contains("A small static web server"));
    let out = Command::new("docker").args(["search", "--limit", "2", &format!("{}/nginx", s.addr)]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn web_interface_in_chromium() {
    if !(common::require("chromium") && common::require("chromedriver")) {
        return;
    }
    let selenium = Command::new("python3").args(["-c", "import selenium"]).status().map(|s| s.success()).unwrap_or(false);
    if !selenium {
        if std::env::var("BERTH_TEST_ALLOW_MISSING").is_ok() {
            eprintln!("SKIPPED: selenium is not installed");
            return;
        }
        panic!("selenium is not installed; run the README's test command, which installs it");
    }
    let s = common::Server::start();
    let c = common::client();
    seed(&c, &s.url);
    push_labeled(&c, &s.url, "nginx", "1.27", "amd64", &[("org.opencontainers.image.description", "The nginx web server")]);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.py");
    let out = Command::new("python3").arg(script).arg(&s.url).arg(&shots).output().unwrap();
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The deletion in the browser went through the registry API.
    let tags: Value = c.get(format!("{}/v2/nginx/tags/list", s.url)).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], json!(["latest"]));
}
