//! Operations: health, metrics, request logs, upload expiry.
mod common;

use common::{client, push_image, Server};
use std::time::Duration;

#[test]
fn health_metrics_and_request_log() {
    let s = Server::start();
    let c = client();
    let r = c.get(format!("{}/healthz", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    push_image(&c, &s.url, "ops/app", "v1");
    let r = c.get(format!("{}/v2/ops/app/manifests/v1", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // An upload left open counts as in flight.
    let r = c.post(format!("{}/v2/ops/app/blobs/uploads/", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);

    let text = c.get(format!("{}/metrics", s.url)).send().unwrap().text().unwrap();
    for needle in [
        "berth_http_requests_total{",
        "route=\"manifest\"",
        "status=\"201\"",
        "berth_http_request_duration_seconds_bucket{",
        "berth_http_request_bytes_total",
        "berth_http_response_bytes_total",
        "berth_uploads_in_flight 1",
        "berth_stored_bytes",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    let stored: f64 = text
        .lines()
        .find(|l| l.starts_with("berth_stored_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(stored > 1000.0, "stored bytes {stored}");

    // One log line per request, carrying the request id, route, status and duration.
    let log = s.stderr();
    let line = log.lines().find(|l| l.contains(&request_id)).expect("request logged");
    for field in ["method=GET", "path=/v2/ops/app/manifests/v1", "status=200", "duration_ms=", "bytes_out="] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = Server::start_with(&[], &[("BERTH_LOG_FORMAT", "json")]);
    let c = client();
    c.get(format!("{}/v2/", s.url)).send().unwrap();
    c.get(format!("{}/v2/nope/manifests/x", s.url)).send().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let log = s.stderr();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "berth::access")
        .collect();
    assert!(access.len() >= 2, "{log}");
    assert!(access.iter().any(|v| v["status"] == 404 && v["route"] == "manifest"));
}

#[test]
fn idle_uploads_expire_and_their_data_is_removed() {
    let s = Server::start_with(&[], &[("BERTH_REGISTRY_UPLOAD_TTL_SECS", "1")]);
    let c = client();
    let r = c.post(format!("{}/v2/exp/app/blobs/uploads/", s.url)).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c.patch(format!("{}{loc}", s.url)).body(vec![7u8; 4096]).send().unwrap();
    assert_eq!(r.status(), 202);
    let uploads = s.data_dir.join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);
    // Poll (bounded): the session disappears, with its file.
    let mut gone = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let r = c.get(format!("{}{loc}", s.url)).send().unwrap();
        if r.status() == 404 {
            let body: serde_json::Value = r.json().unwrap();
            assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
            gone = true;
            break;
        }
    }
    assert!(gone, "upload never expired");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0, "upload data left behind");
}

#[test]
fn one_process_owns_a_data_directory() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s.url, "locked/app", "v1");
    let berth = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env_remove("BERTH_CONFIG")
            .output()
            .unwrap()
    };
    let dir = s.data_dir.to_str().unwrap();
    let second = berth(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");
    let gc = berth(&["gc", "--data-dir", dir]);
    assert!(!gc.status.success());
    let err = String::from_utf8_lossy(&gc.stderr);
    assert!(err.contains("--url"), "{err}");
    // The running server was not disturbed.
    assert_eq!(c.get(format!("{}/v2/locked/app/manifests/v1", s.url)).send().unwrap().status(), 200);
}

#[test]
fn responses_carry_browser_safety_headers() {
    let s = Server::start();
    let c = client();
    for path in ["/v2/", "/", "/v2/nothing/manifests/x"] {
        let r = c.get(format!("{}{path}", s.url)).send().unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{path}: {csp}");
    }
}

#[test]
fn cross_site_form_posts_are_refused() {
    let s = Server::start();
    let c = client();
    let r = c
        .post(format!("{}/admin/gc", s.url))
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let r = c.post(format!("{}/admin/gc?dry_run=true", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_loopback_registry_answers_only_requests_naming_a_loopback_host() {
    let s = Server::start();
    let c = client();
    // What a page on a rebound name (DNS rebinding) would send.
    let r = c.get(format!("{}/v2/_catalog", s.url)).header("Host", "evil.example:5000").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = c.get(format!("{}/v2/_catalog", s.url)).header("Host", format!("localhost:{}", s.addr.rsplit(':').next().unwrap())).send().unwrap();
    assert_eq!(r.status(), 200);
}
