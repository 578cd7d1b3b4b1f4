//! Conformance with the OCI Distribution Specification v1.1, checked over
//! raw HTTP against the real `berth` binary. Grouped by the spec's four
//! workflows (pull, push, content discovery, content management), then the
//! error format, configuration and shutdown.
//!
//! Every test starts its own server with its own data directory.

mod common;

use common::{client, push_blob, push_image, random_bytes, sha256, Server};
use reqwest::blocking::{Body, Client, Response};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---- helpers -------------------------------------------------------------

fn sha512(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

fn hdr(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().expect("header is ASCII").to_string())
}

fn must_hdr(r: &Response, name: &str) -> String {
    hdr(r, name).unwrap_or_else(|| panic!("response {} lacks the {name} header: {:?}", r.status(), r.headers()))
}

/// Asserts the spec's error format: the status, `Content-Type:
/// application/json` and `{"errors":[{"code","message","detail"}]}` with the
/// first code one of `codes`. Returns the parsed body.
#[track_caller]
fn assert_error(r: Response, status: u16, codes: &[&str]) -> Value {
    let got = r.status().as_u16();
    let ct = hdr(&r, "content-type").unwrap_or_default();
    let text = r.text().unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert!(ct.starts_with("application/json"), "error Content-Type is {ct:?}; body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("no errors array: {text}"));
    assert!(!errors.is_empty(), "empty errors array");
    for e in errors {
        assert!(e["code"].is_string(), "error without code: {e}");
        assert!(e["message"].is_string(), "error without message: {e}");
        assert!(e.as_object().unwrap().contains_key("detail"), "error without detail: {e}");
    }
    let code = errors[0]["code"].as_str().unwrap();
    assert!(codes.contains(&code), "error code {code}, expected one of {codes:?}: {text}");
    v
}

/// HEAD responses carry no body: only the status can be checked.
#[track_caller]
fn assert_head_status(r: Response, status: u16) {
    assert_eq!(r.status().as_u16(), status);
    assert!(r.bytes().unwrap().is_empty(), "HEAD response has a body");
}

/// Absolute URL for a Location header value (absolute or path-only).
fn resolve(s: &Server, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        assert!(location.starts_with('/'), "Location {location:?} is neither absolute nor a path");
        format!("{}{location}", s.url)
    }
}

/// Adds a query parameter to a URL that may already have a query.
fn with_query(url: &str, kv: &str) -> String {
    if url.contains('?') {
        format!("{url}&{kv}")
    } else {
        format!("{url}?{kv}")
    }
}

/// A streaming body: sent with chunked transfer encoding, no Content-Length.
fn streaming(data: &[u8]) -> Body {
    Body::new(std::io::Cursor::new(data.to_vec()))
}

/// POST to open an upload session; returns its absolute Location.
fn start_upload(s: &Server, c: &Client, repo: &str) -> String {
    let r = c.post(format!("{}/v2/{repo}/blobs/uploads/", s.url)).header("Content-Length", "0").send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    assert!(hdr(&r, "docker-upload-uuid").is_some_and(|u| !u.is_empty()), "no Docker-Upload-UUID");
    resolve(s, &must_hdr(&r, "location"))
}

fn put_manifest(s: &Server, c: &Client, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
    c.put(format!("{}/v2/{repo}/manifests/{reference}", s.url))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap()
}

#[track_caller]
fn put_manifest_ok(s: &Server, c: &Client, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
    let r = put_manifest(s, c, repo, reference, media_type, body);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let digest = sha256(body);
    assert_eq!(must_hdr(&r, "docker-content-digest"), digest);
    assert!(must_hdr(&r, "location").contains(&format!("/v2/{repo}/manifests/")));
    digest
}

fn get(s: &Server, c: &Client, path: &str) -> Response {
    c.get(format!("{}{path}", s.url)).send().unwrap()
}

fn head(s: &Server, c: &Client, path: &str) -> Response {
    c.head(format!("{}{path}", s.url)).send().unwrap()
}

fn delete(s: &Server, c: &Client, path: &str) -> Response {
    c.delete(format!("{}{path}", s.url)).send().unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// Pushes a config and a layer and returns an OCI image manifest naming them.
fn image_manifest(s: &Server, c: &Client, repo: &str) -> Vec<u8> {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","id":{}}}"#, rand::random::<u64>()).into_bytes();
    let layer = random_bytes(512);
    push_blob(c, &s.url, repo, &config);
    push_blob(c, &s.url, repo, &layer);
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor(OCI_LAYER, &layer)],
    }))
    .unwrap()
}

/// Pushes the empty `{}` blob and returns an artifact manifest of
/// `artifact_type` referring to `subject` (a descriptor), with annotations.
fn artifact_manifest(s: &Server, c: &Client, repo: &str, artifact_type: Option<&str>, subject: &Value, note: &str) -> Vec<u8> {
    push_blob(c, &s.url, repo, b"{}");
    let layer = format!("payload {note} {}", rand::random::<u64>()).into_bytes();
    push_blob(c, &s.url, repo, &layer);
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor("application/vnd.example.payload", &layer)],
        "subject": subject,
        "annotations": {"org.example.note": note},
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = t.into();
    }
    serde_json::to_vec(&m).unwrap()
}

fn json_body(r: Response) -> Value {
    let text = r.text().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Follows `Link: <...>; rel="next"` from `first` to the end; returns every
/// page's items under `key`, checking each page holds at most `n`.
fn follow_pages(s: &Server, c: &Client, first: &str, key: &str, n: usize) -> (Vec<String>, usize) {
    let mut url = format!("{}{first}", s.url);
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.get(&url).send().unwrap();
        assert_eq!(r.status(), 200);
        let link = hdr(&r, "link");
        let body = json_body(r);
        let items: Vec<String> =
            body[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert!(items.len() <= n, "page of {} items with n={n}", items.len());
        all.extend(items);
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        match link {
            None => break,
            Some(link) => {
                let (target, rel) = link.split_once(';').expect("Link has a rel parameter");
                assert_eq!(rel.trim(), r#"rel="next""#, "Link: {link}");
                let target = target.trim().strip_prefix('<').and_then(|t| t.strip_suffix('>')).expect("Link <url>");
                url = resolve(s, target);
            }
        }
    }
    (all, pages)
}

// ---- base ----------------------------------------------------------------

#[test]
fn base_endpoint_reports_api_version() {
    let s = Server::start();
    let c = client();
    let r = get(&s, &c, "/v2/");
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "docker-distribution-api-version"), "registry/2.0");
    let r = head(&s, &c, "/v2/");
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "docker-distribution-api-version"), "registry/2.0");
}

#[test]
fn unknown_endpoint_and_wrong_method_are_errors() {
    let s = Server::start();
    let c = client();
    assert_error(get(&s, &c, "/v2/repo/nothing-here"), 404, &["UNSUPPORTED", "NAME_UNKNOWN"]);
    let r = c.post(format!("{}/v2/repo/manifests/latest", s.url)).send().unwrap();
    assert_error(r, 405, &["UNSUPPORTED"]);
    let r = c.put(format!("{}/v2/repo/tags/list", s.url)).send().unwrap();
    assert_eq!(hdr(&r, "allow").as_deref(), Some("GET"));
    assert_error(r, 405, &["UNSUPPORTED"]);
    let r = c.post(format!("{}/v2/", s.url)).send().unwrap();
    assert_eq!(hdr(&r, "allow").as_deref(), Some("GET, HEAD"));
    assert_error(r, 405, &["UNSUPPORTED"]);
}

// ---- pull: blobs ---------------------------------------------------------

#[test]
fn blob_head_and_get() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(3000);
    let d = push_blob(&c, &s.url, "pull/blob", &data);

    let r = head(&s, &c, &format!("/v2/pull/blob/blobs/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "content-length"), "3000");
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert!(r.bytes().unwrap().is_empty(), "HEAD returned a body");

    let r = get(&s, &c, &format!("/v2/pull/blob/blobs/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert_eq!(must_hdr(&r, "content-length"), "3000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
}

#[test]
fn empty_blob_round_trips() {
    let s = Server::start();
    let c = client();
    let d = push_blob(&c, &s.url, "empty", b"");
    assert_eq!(d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    let r = head(&s, &c, &format!("/v2/empty/blobs/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "content-length"), "0");
    let r = get(&s, &c, &format!("/v2/empty/blobs/{d}"));
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().is_empty());
    // No byte of an empty blob can be served.
    let r = c.get(format!("{}/v2/empty/blobs/{d}", s.url)).header("Range", "bytes=0-").send().unwrap();
    assert_error(r, 416, &["BLOB_UNKNOWN", "RANGE_INVALID", "SIZE_INVALID", "UNSUPPORTED"]);
}

#[test]
fn blob_range_requests() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(1000);
    let d = push_blob(&c, &s.url, "ranges", &data);
    let url = format!("{}/v2/ranges/blobs/{d}", s.url);
    let range = |spec: &str| c.get(&url).header("Range", spec).send().unwrap();

    let r = range("bytes=10-19");
    assert_eq!(r.status(), 206);
    assert_eq!(must_hdr(&r, "content-range"), "bytes 10-19/1000");
    assert_eq!(must_hdr(&r, "content-length"), "10");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[10..20]);

    // Open-ended.
    let r = range("bytes=990-");
    assert_eq!(r.status(), 206);
    assert_eq!(must_hdr(&r, "content-range"), "bytes 990-999/1000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[990..]);

    // Suffix: the last 5 bytes.
    let r = range("bytes=-5");
    assert_eq!(r.status(), 206);
    assert_eq!(must_hdr(&r, "content-range"), "bytes 995-999/1000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[995..]);

    // A suffix longer than the blob is the whole blob.
    let r = range("bytes=-5000");
    assert_eq!(r.status(), 206);
    assert_eq!(must_hdr(&r, "content-range"), "bytes 0-999/1000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);

    // An end past the blob is clamped.
    let r = range("bytes=900-5000");
    assert_eq!(r.status(), 206);
    assert_eq!(must_hdr(&r, "content-range"), "bytes 900-999/1000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[900..]);

    // Ranges that do not parse are ignored: the whole blob.
    for spec in ["bytes=abc", "bytes=-", "bytes=5-2", "bytes=1-2,5-6", "items=0-1"] {
        let r = range(spec);
        assert_eq!(r.status(), 200, "{spec}");
        assert_eq!(r.bytes().unwrap().as_ref(), &data[..], "{spec}");
    }

    // Unsatisfiable: starts at or past the end.
    for spec in ["bytes=1000-", "bytes=2000-3000"] {
        let r = range(spec);
        assert_eq!(hdr(&r, "content-range").as_deref(), Some("bytes */1000"), "{spec}");
        assert_error(r, 416, &["BLOB_UNKNOWN", "RANGE_INVALID", "SIZE_INVALID", "UNSUPPORTED"]);
    }
}

#[test]
fn unknown_blob_is_404_blob_unknown() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s.url, "known", "v1");
    let d = sha256(b"never pushed");
    assert_error(get(&s, &c, &format!("/v2/known/blobs/{d}")), 404, &["BLOB_UNKNOWN"]);
    assert_head_status(head(&s, &c, &format!("/v2/known/blobs/{d}")), 404);
    // In a repository that does not exist either.
    assert_error(get(&s, &c, &format!("/v2/nowhere/blobs/{d}")), 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
}

#[test]
fn blobs_are_scoped_to_their_repository_until_mounted() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(200);
    let d = push_blob(&c, &s.url, "source", &data);
    assert_head_status(head(&s, &c, &format!("/v2/target/blobs/{d}")), 404);
    assert_error(get(&s, &c, &format!("/v2/target/blobs/{d}")), 404, &["BLOB_UNKNOWN"]);

    let r = c.post(format!("{}/v2/target/blobs/uploads/?mount={d}&from=source", s.url)).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.get(&loc).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
    let r = get(&s, &c, &format!("/v2/target/blobs/{d}"));
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
}

#[test]
fn blob_delete() {
    let s = Server::start();
    let c = client();
    let d = push_blob(&c, &s.url, "del/blob", &random_bytes(100));
    let other = push_blob(&c, &s.url, "del/other", &random_bytes(100));
    let r = delete(&s, &c, &format!("/v2/del/blob/blobs/{d}"));
    assert_eq!(r.status(), 202);
    assert_head_status(head(&s, &c, &format!("/v2/del/blob/blobs/{d}")), 404);
    assert_error(get(&s, &c, &format!("/v2/del/blob/blobs/{d}")), 404, &["BLOB_UNKNOWN"]);
    assert_error(delete(&s, &c, &format!("/v2/del/blob/blobs/{d}")), 404, &["BLOB_UNKNOWN"]);
    // Deleting in one repository leaves another's blob alone.
    assert_error(delete(&s, &c, &format!("/v2/del/blob/blobs/{other}")), 404, &["BLOB_UNKNOWN"]);
    assert_eq!(head(&s, &c, &format!("/v2/del/other/blobs/{other}")).status(), 200);
}

#[test]
fn blobs_a_manifest_uses_cannot_be_deleted_under_it() {
    let s = Server::start();
    let c = client();
    let repo = "del/inuse";
    let (manifest, d) = push_image(&c, &s.url, repo, "v1");
    let v: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_string();
    let config = v["config"]["digest"].as_str().unwrap().to_string();
    for blob in [&layer, &config] {
        let r = delete(&s, &c, &format!("/v2/{repo}/blobs/{blob}"));
        assert!(hdr(&r, "allow").is_some(), "405 without Allow");
        let e = assert_error(r, 405, &["UNSUPPORTED"]);
        assert!(e["errors"][0]["message"].as_str().unwrap().contains(&d), "{e}");
        assert_eq!(head(&s, &c, &format!("/v2/{repo}/blobs/{blob}")).status(), 200);
    }
    // The image still pulls whole; once the manifest is gone, so can its blobs.
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/v1")).status(), 200);
    assert_eq!(delete(&s, &c, &format!("/v2/{repo}/manifests/{d}")).status(), 202);
    for blob in [&layer, &config] {
        assert_eq!(delete(&s, &c, &format!("/v2/{repo}/blobs/{blob}")).status(), 202);
        assert_head_status(head(&s, &c, &format!("/v2/{repo}/blobs/{blob}")), 404);
    }
}

#[test]
fn manifests_an_index_lists_cannot_be_deleted_under_it() {
    let s = Server::start();
    let c = client();
    let repo = "del/child";
    let child = image_manifest(&s, &c, repo);
    let child_digest = put_manifest_ok(&s, &c, repo, &sha256(&child), OCI_MANIFEST, &child);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &child)],
    }))
    .unwrap();
    let index_digest = put_manifest_ok(&s, &c, repo, "multi", OCI_INDEX, &index);
    assert_error(delete(&s, &c, &format!("/v2/{repo}/manifests/{child_digest}")), 405, &["UNSUPPORTED"]);
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/{child_digest}")).status(), 200);
    assert_eq!(delete(&s, &c, &format!("/v2/{repo}/manifests/{index_digest}")).status(), 202);
    assert_eq!(delete(&s, &c, &format!("/v2/{repo}/manifests/{child_digest}")).status(), 202);
}

// ---- push: blob uploads ----------------------------------------------------

#[test]
fn monolithic_post_with_digest() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(5000);
    let d = sha256(&data);
    let r = c.post(format!("{}/v2/push/mono/blobs/uploads/?digest={d}", s.url)).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    assert!(loc.ends_with(&format!("/v2/push/mono/blobs/{d}")), "{loc}");
    assert_eq!(c.get(&loc).send().unwrap().bytes().unwrap().as_ref(), &data[..]);
    // Pushing the same blob again is fine.
    assert_eq!(push_blob(&c, &s.url, "push/mono", &data), d);
}

#[test]
fn post_then_put_with_body() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(4096);
    let d = sha256(&data);
    let loc = start_upload(&s, &c, "push/single");
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let blob = resolve(&s, &must_hdr(&r, "location"));
    assert_eq!(c.get(&blob).send().unwrap().bytes().unwrap().as_ref(), &data[..]);
    // The session is finished.
    assert_error(c.get(&loc).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
}

#[test]
fn chunked_upload_with_status() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(3 * 1024 * 1024 + 17);
    let d = sha256(&data);
    let mut loc = start_upload(&s, &c, "push/chunked");
    let uuid = loc.trim_end_matches('/').rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let chunks: Vec<&[u8]> = data.chunks(1024 * 1024).collect();
    let mut offset = 0usize;
    for chunk in &chunks {
        let end = offset + chunk.len() - 1;
        let r = c
            .patch(&loc)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{offset}-{end}"))
            .header("Content-Length", chunk.len().to_string())
            .body(chunk.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
        assert_eq!(must_hdr(&r, "range"), format!("0-{end}"));
        assert!(hdr(&r, "docker-upload-uuid").is_some());
        loc = resolve(&s, &must_hdr(&r, "location"));
        offset = end + 1;

        let st = c.get(&loc).send().unwrap();
        assert_eq!(st.status(), 204);
        assert_eq!(must_hdr(&st, "range"), format!("0-{end}"));
        assert_eq!(must_hdr(&st, "docker-upload-uuid"), uuid);
        assert!(must_hdr(&st, "location").contains(&uuid));
        assert!(st.bytes().unwrap().is_empty());
    }
    // Nothing is visible before the upload completes.
    assert_head_status(head(&s, &c, &format!("/v2/push/chunked/blobs/{d}")), 404);
    let r = c.put(with_query(&loc, &format!("digest={d}"))).header("Content-Length", "0").send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let got = get(&s, &c, &format!("/v2/push/chunked/blobs/{d}")).bytes().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got.as_ref() == &data[..]);
}

#[test]
fn patch_with_chunked_transfer_encoding() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(300_000);
    let d = sha256(&data);
    let loc = start_upload(&s, &c, "push/streamed");
    let r = c.patch(&loc).header("Content-Type", "application/octet-stream").body(streaming(&data[..100_000])).send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "range"), "0-99999");
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.patch(&loc).body(streaming(&data[100_000..200_000])).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(must_hdr(&r, "range"), "0-199999");
    let loc = resolve(&s, &must_hdr(&r, "location"));
    // The final chunk streamed with the closing PUT.
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(streaming(&data[200_000..])).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(get(&s, &c, &format!("/v2/push/streamed/blobs/{d}")).bytes().unwrap().as_ref(), &data[..]);
}

#[test]
fn streamed_monolithic_post() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(70_000);
    let d = sha256(&data);
    let r = c.post(format!("{}/v2/push/mono-stream/blobs/uploads/?digest={d}", s.url)).body(streaming(&data)).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(get(&s, &c, &format!("/v2/push/mono-stream/blobs/{d}")).bytes().unwrap().as_ref(), &data[..]);
}

#[test]
fn out_of_order_chunk_is_416_with_range() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(300);
    let loc = start_upload(&s, &c, "push/ooo");
    let r = c.patch(&loc).header("Content-Range", "0-99").header("Content-Length", "100").body(data[..100].to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    // Skips bytes 100-199.
    let r = c.patch(&loc).header("Content-Range", "200-299").header("Content-Length", "100").body(data[200..].to_vec()).send().unwrap();
    assert_eq!(must_hdr(&r, "range"), "0-99");
    assert!(hdr(&r, "location").is_some());
    assert_error(r, 416, &["BLOB_UPLOAD_INVALID", "RANGE_INVALID"]);
    // Resending an already received chunk is also out of order.
    let r = c.patch(&loc).header("Content-Range", "0-99").header("Content-Length", "100").body(data[..100].to_vec()).send().unwrap();
    assert_error(r, 416, &["BLOB_UPLOAD_INVALID", "RANGE_INVALID"]);
    // The upload is intact and resumes where the server says.
    let st = c.get(&loc).send().unwrap();
    assert_eq!(must_hdr(&st, "range"), "0-99");
    let r = c.patch(&loc).header("Content-Range", "100-199").header("Content-Length", "100").body(data[100..200].to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let d = sha256(&data);
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(data[200..].to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(get(&s, &c, &format!("/v2/push/ooo/blobs/{d}")).bytes().unwrap().as_ref(), &data[..]);
}

#[test]
fn cancel_upload() {
    let s = Server::start();
    let c = client();
    let loc = start_upload(&s, &c, "push/cancel");
    let r = c.patch(&loc).body(b"some bytes".to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.delete(&loc).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_error(c.get(&loc).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(c.patch(&loc).body(b"more".to_vec()).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    let d = sha256(b"some bytes");
    assert_error(c.put(with_query(&loc, &format!("digest={d}"))).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(c.delete(&loc).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_head_status(head(&s, &c, &format!("/v2/push/cancel/blobs/{d}")), 404);
}

#[test]
fn unknown_upload_ids_are_404() {
    let s = Server::start();
    let c = client();
    let d = sha256(b"x");
    for id in ["not-a-real-upload", "00000000-0000-0000-0000-000000000000", "a..b", "%2e%2e%2fetc"] {
        let url = format!("{}/v2/push/unknown/blobs/uploads/{id}", s.url);
        assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
        assert_error(c.patch(&url).body(b"x".to_vec()).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
        assert_error(c.put(with_query(&url, &format!("digest={d}"))).body(b"x".to_vec()).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    }
}

#[test]
fn upload_id_is_bound_to_its_repository() {
    let s = Server::start();
    let c = client();
    let loc = start_upload(&s, &c, "push/owner");
    let id = loc.split('?').next().unwrap().trim_end_matches('/').rsplit('/').next().unwrap().to_string();
    let foreign = format!("{}/v2/push/thief/blobs/uploads/{id}", s.url);
    let data = b"owned bytes".to_vec();
    let d = sha256(&data);
    assert_error(c.get(&foreign).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(c.patch(&foreign).body(data.clone()).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(c.put(with_query(&foreign, &format!("digest={d}"))).body(data.clone()).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(c.delete(&foreign).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_head_status(head(&s, &c, &format!("/v2/push/thief/blobs/{d}")), 404);
    // The owner's session was not touched.
    let st = c.get(&loc).send().unwrap();
    assert_eq!(st.status(), 204);
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(head(&s, &c, &format!("/v2/push/owner/blobs/{d}")).status(), 200);
}

#[test]
fn digest_mismatch_stores_nothing() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(1000);
    let real = sha256(&data);
    let claimed = sha256(b"something else");

    let r = c.post(format!("{}/v2/push/mismatch/blobs/uploads/?digest={claimed}", s.url)).body(data.clone()).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    assert_head_status(head(&s, &c, &format!("/v2/push/mismatch/blobs/{claimed}")), 404);
    assert_head_status(head(&s, &c, &format!("/v2/push/mismatch/blobs/{real}")), 404);

    let loc = start_upload(&s, &c, "push/mismatch");
    let r = c.patch(&loc).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.put(with_query(&loc, &format!("digest={claimed}"))).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    assert_head_status(head(&s, &c, &format!("/v2/push/mismatch/blobs/{claimed}")), 404);
    assert_head_status(head(&s, &c, &format!("/v2/push/mismatch/blobs/{real}")), 404);
    // Nothing was published to the catalog either.
    let cat = json_body(get(&s, &c, "/v2/_catalog"));
    assert_eq!(cat["repositories"], json!([]));
}

#[test]
fn malformed_and_missing_digests() {
    let s = Server::start();
    let c = client();
    for bad in ["sha256:xyz", "sha256:", "nodigest", "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789", "md5:d41d8cd98f00b204e9800998ecf8427e"] {
        let r = c.post(format!("{}/v2/push/bad/blobs/uploads/?digest={bad}", s.url)).body(b"x".to_vec()).send().unwrap();
        assert_error(r, 400, &["DIGEST_INVALID", "UNSUPPORTED"]);
        let loc = start_upload(&s, &c, "push/bad");
        let r = c.put(with_query(&loc, &format!("digest={bad}"))).body(b"x".to_vec()).send().unwrap();
        assert_error(r, 400, &["DIGEST_INVALID", "UNSUPPORTED"]);
        assert_error(get(&s, &c, &format!("/v2/push/bad/blobs/{bad}")), 400, &["DIGEST_INVALID", "UNSUPPORTED"]);
    }
    // PUT without a digest cannot finish an upload.
    let loc = start_upload(&s, &c, "push/bad");
    let r = c.put(&loc).body(b"x".to_vec()).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    let r = c.post(format!("{}/v2/push/bad/blobs/uploads/?digest-algorithm=md5", s.url)).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID", "UNSUPPORTED"]);
}

#[test]
fn sha512_blobs() {
    let s = Server::start();
    let c = client();
    // Session announced as sha512, then chunks and a closing PUT.
    let data = random_bytes(2000);
    let d = sha512(&data);
    let r = c.post(format!("{}/v2/push/sha512/blobs/uploads/?digest-algorithm=sha512", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.patch(&loc).header("Content-Range", "0-999").header("Content-Length", "1000").body(data[..1000].to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(data[1000..].to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let r = get(&s, &c, &format!("/v2/push/sha512/blobs/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);

    // Without announcing the algorithm: the server must still verify sha512.
    let data2 = random_bytes(1500);
    let d2 = sha512(&data2);
    let loc = start_upload(&s, &c, "push/sha512");
    let r = c.patch(&loc).body(data2.clone()).send().unwrap();
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let r = c.put(with_query(&loc, &format!("digest={d2}"))).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(head(&s, &c, &format!("/v2/push/sha512/blobs/{d2}")).status(), 200);

    // Monolithic.
    let data3 = random_bytes(700);
    let d3 = sha512(&data3);
    let r = c.post(format!("{}/v2/push/sha512/blobs/uploads/?digest={d3}", s.url)).body(data3.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let r = head(&s, &c, &format!("/v2/push/sha512/blobs/{d3}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "content-length"), "700");
    // A wrong sha512 is refused.
    let r = c.post(format!("{}/v2/push/sha512/blobs/uploads/?digest={}", s.url, sha512(b"no"))).body(data3).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

#[test]
fn cross_repo_mount_falls_back_to_upload() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(400);
    let d = sha256(&data);
    // The source repository does not hold the blob (it does not even exist).
    let r = c.post(format!("{}/v2/mnt/dst/blobs/uploads/?mount={d}&from=mnt/src", s.url)).send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    let loc = resolve(&s, &must_hdr(&r, "location"));
    assert!(hdr(&r, "docker-upload-uuid").is_some());
    assert_head_status(head(&s, &c, &format!("/v2/mnt/dst/blobs/{d}")), 404);
    // The session works like any other.
    let r = c.put(with_query(&loc, &format!("digest={d}"))).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get(&s, &c, &format!("/v2/mnt/dst/blobs/{d}")).bytes().unwrap().as_ref(), &data[..]);

    // A source that exists but lacks the blob also falls back.
    push_blob(&c, &s.url, "mnt/other", b"unrelated");
    let d2 = sha256(b"not there");
    let r = c.post(format!("{}/v2/mnt/dst/blobs/uploads/?mount={d2}&from=mnt/other", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    // Mounting without `from` either mounts or opens an upload; never an error.
    let r = c.post(format!("{}/v2/mnt/third/blobs/uploads/?mount={d}", s.url)).send().unwrap();
    assert!(r.status() == 201 || r.status() == 202, "{}", r.status());
    // A mount of an invalid digest is a digest error.
    let r = c.post(format!("{}/v2/mnt/dst/blobs/uploads/?mount=sha256:zz&from=mnt/src", s.url)).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

// ---- push + pull: manifests ----------------------------------------------

#[test]
fn manifest_put_and_get_by_tag_and_digest() {
    let s = Server::start();
    let c = client();
    // Pretty-printed with a trailing newline: bytes must come back exactly.
    let mut body = image_manifest(&s, &c, "img/app");
    body.extend_from_slice(b"\n");
    let d = sha256(&body);
    let r = put_manifest(&s, &c, "img/app", "v1.0", OCI_MANIFEST, &body);
    assert_eq!(r.status(), 201);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let loc = resolve(&s, &must_hdr(&r, "location"));
    assert_eq!(c.get(&loc).send().unwrap().bytes().unwrap().as_ref(), &body[..]);

    for reference in ["v1.0", d.as_str()] {
        let r = get(&s, &c, &format!("/v2/img/app/manifests/{reference}"));
        assert_eq!(r.status(), 200);
        assert_eq!(must_hdr(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(must_hdr(&r, "docker-content-digest"), d);
        assert_eq!(r.bytes().unwrap().as_ref(), &body[..], "{reference}");

        let r = c.head(format!("{}/v2/img/app/manifests/{reference}", s.url)).header("Accept", OCI_MANIFEST).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(must_hdr(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(must_hdr(&r, "docker-content-digest"), d);
        assert_eq!(must_hdr(&r, "content-length"), body.len().to_string());
        assert!(r.bytes().unwrap().is_empty());
    }

    // PUT by digest.
    let body2 = image_manifest(&s, &c, "img/app");
    let d2 = sha256(&body2);
    let r = put_manifest(&s, &c, "img/app", &d2, OCI_MANIFEST, &body2);
    assert_eq!(r.status(), 201);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d2);
    assert!(must_hdr(&r, "location").ends_with(&format!("/v2/img/app/manifests/{d2}")));
    assert_eq!(get(&s, &c, &format!("/v2/img/app/manifests/{d2}")).bytes().unwrap().as_ref(), &body2[..]);

    // Re-tagging moves the tag; pushing the same bytes again is idempotent.
    put_manifest_ok(&s, &c, "img/app", "v1.0", OCI_MANIFEST, &body2);
    put_manifest_ok(&s, &c, "img/app", "v1.0", OCI_MANIFEST, &body2);
    let r = get(&s, &c, "/v2/img/app/manifests/v1.0");
    assert_eq!(must_hdr(&r, "docker-content-digest"), d2);
    // The first manifest is still there by digest.
    assert_eq!(get(&s, &c, &format!("/v2/img/app/manifests/{d}")).status(), 200);
}

#[test]
fn manifests_are_scoped_to_their_repository() {
    let s = Server::start();
    let c = client();
    let (_, d) = push_image(&c, &s.url, "scope/a", "latest");
    push_image(&c, &s.url, "scope/b", "other");
    assert_error(get(&s, &c, &format!("/v2/scope/b/manifests/{d}")), 404, &["MANIFEST_UNKNOWN"]);
    assert_error(get(&s, &c, "/v2/scope/b/manifests/latest"), 404, &["MANIFEST_UNKNOWN"]);
}

#[test]
fn docker_schema2_manifest_and_manifest_list() {
    let s = Server::start();
    let c = client();
    let repo = "docker/img";
    let config = br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = random_bytes(800);
    push_blob(&c, &s.url, repo, &config);
    push_blob(&c, &s.url, repo, &layer);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let md = put_manifest_ok(&s, &c, repo, "arm64", DOCKER_MANIFEST, &m);
    let r = get(&s, &c, &format!("/v2/{repo}/manifests/arm64"));
    assert_eq!(must_hdr(&r, "content-type"), DOCKER_MANIFEST);
    assert_eq!(r.bytes().unwrap().as_ref(), &m[..]);

    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST, "digest": md, "size": m.len(),
            "platform": {"architecture": "arm64", "os": "linux"}
        }],
    }))
    .unwrap();
    let ld = put_manifest_ok(&s, &c, repo, "multi", DOCKER_LIST, &list);
    for reference in ["multi", ld.as_str()] {
        let r = get(&s, &c, &format!("/v2/{repo}/manifests/{reference}"));
        assert_eq!(must_hdr(&r, "content-type"), DOCKER_LIST);
        assert_eq!(must_hdr(&r, "docker-content-digest"), ld);
        assert_eq!(r.bytes().unwrap().as_ref(), &list[..]);
    }
}

#[test]
fn oci_index() {
    let s = Server::start();
    let c = client();
    let repo = "oci/multi";
    let a = image_manifest(&s, &c, repo);
    let b = image_manifest(&s, &c, repo);
    let ad = put_manifest_ok(&s, &c, repo, &sha256(&a), OCI_MANIFEST, &a);
    let bd = put_manifest_ok(&s, &c, repo, &sha256(&b), OCI_MANIFEST, &b);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": ad, "size": a.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": bd, "size": b.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }))
    .unwrap();
    let id = put_manifest_ok(&s, &c, repo, "latest", OCI_INDEX, &index);
    let r = get(&s, &c, &format!("/v2/{repo}/manifests/latest"));
    assert_eq!(must_hdr(&r, "content-type"), OCI_INDEX);
    assert_eq!(must_hdr(&r, "docker-content-digest"), id);
    assert_eq!(r.bytes().unwrap().as_ref(), &index[..]);
    // An index with no manifests is valid.
    let empty = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})).unwrap();
    put_manifest_ok(&s, &c, repo, "empty", OCI_INDEX, &empty);
}

#[test]
fn oci_artifact_with_custom_config_media_type() {
    let s = Server::start();
    let c = client();
    let repo = "artifacts/helm";
    let config = br#"{"name":"chart","version":"1.2.3"}"#.to_vec();
    let layer = random_bytes(256);
    push_blob(&c, &s.url, repo, &config);
    push_blob(&c, &s.url, repo, &layer);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.chart.v1",
        "config": descriptor("application/vnd.cncf.helm.config.v1+json", &config),
        "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", &layer)],
    }))
    .unwrap();
    let d = put_manifest_ok(&s, &c, repo, "1.2.3", OCI_MANIFEST, &m);
    let r = get(&s, &c, &format!("/v2/{repo}/manifests/{d}"));
    assert_eq!(must_hdr(&r, "content-type"), OCI_MANIFEST);
    assert_eq!(r.bytes().unwrap().as_ref(), &m[..]);
    // The config is an ordinary blob.
    let r = get(&s, &c, &format!("/v2/{repo}/blobs/{}", sha256(&config)));
    assert_eq!(r.bytes().unwrap().as_ref(), &config[..]);

    // Empty-config artifact with layers naming foreign (non-distributable)
    // content is fine too; foreign layers need not be pushed.
    push_blob(&c, &s.url, repo, b"{}");
    let m2 = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor(OCI_EMPTY, b"{}")],
    }))
    .unwrap();
    put_manifest_ok(&s, &c, repo, "sbom", OCI_MANIFEST, &m2);
}

#[test]
fn manifest_with_missing_blob_is_refused() {
    let s = Server::start();
    let c = client();
    let repo = "missing/blob";
    let config = b"{}".to_vec();
    push_blob(&c, &s.url, repo, &config);
    let absent = random_bytes(100);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor(OCI_LAYER, &absent)],
    }))
    .unwrap();
    let v = assert_error(put_manifest(&s, &c, repo, "v1", OCI_MANIFEST, &m), 400, &["MANIFEST_BLOB_UNKNOWN"]);
    assert!(v.to_string().contains(&sha256(&absent)), "error does not name the missing blob: {v}");
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/v1")), 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);

    // A blob present in another repository does not count.
    push_blob(&c, &s.url, "missing/elsewhere", &absent);
    assert_error(put_manifest(&s, &c, repo, "v1", OCI_MANIFEST, &m), 400, &["MANIFEST_BLOB_UNKNOWN"]);
    // Missing config.
    let m2 = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, b"not pushed"),
        "layers": [],
    }))
    .unwrap();
    assert_error(put_manifest(&s, &c, repo, "v2", OCI_MANIFEST, &m2), 400, &["MANIFEST_BLOB_UNKNOWN"]);
    // Once the blob is there, the push succeeds.
    push_blob(&c, &s.url, repo, &absent);
    put_manifest_ok(&s, &c, repo, "v1", OCI_MANIFEST, &m);
}

#[test]
fn descriptor_sizes_must_match_their_content() {
    let s = Server::start();
    let c = client();
    let repo = "size/check";
    let m = image_manifest(&s, &c, repo);
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    let real = v["layers"][0]["size"].as_u64().unwrap();
    v["layers"][0]["size"] = json!(real + 1);
    let e = assert_error(put_manifest(&s, &c, repo, "bad", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()), 400, &["MANIFEST_INVALID"]);
    assert!(e["errors"][0]["message"].as_str().unwrap().contains(&format!("but it has {real}")), "{e}");
    let child = put_manifest_ok(&s, &c, repo, "good", OCI_MANIFEST, &m);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": m.len() + 5}]})).unwrap();
    assert_error(put_manifest(&s, &c, repo, "idx", OCI_INDEX, &index), 400, &["MANIFEST_INVALID"]);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/bad")), 404, &["MANIFEST_UNKNOWN"]);
}

#[test]
fn keys_differing_only_in_case_are_refused() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "case/keys");
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v["Layers"] = v["layers"].clone();
    let e = assert_error(put_manifest(&s, &c, "case/keys", "v1", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()), 400, &["MANIFEST_INVALID"]);
    assert!(e["errors"][0]["message"].as_str().unwrap().contains("Layers"), "{e}");
}

#[test]
fn layers_with_urls_must_still_be_in_the_repository() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "urls/app");
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v["layers"][0]["urls"] = json!(["https://example.invalid/layer"]);
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_string();
    put_manifest_ok(&s, &c, "urls/app", "v1", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap());
    assert_error(delete(&s, &c, &format!("/v2/urls/app/blobs/{layer}")), 405, &["UNSUPPORTED"]);
    // Never uploaded: refused, whatever `urls` says.
    v["layers"][0]["digest"] = json!(sha256(b"never pushed"));
    assert_error(put_manifest(&s, &c, "urls/app", "v2", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()), 400, &["MANIFEST_BLOB_UNKNOWN"]);
}

#[test]
fn index_with_missing_child_is_refused() {
    let s = Server::start();
    let c = client();
    let child = image_manifest(&s, &c, "idx/missing");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &child)],
    }))
    .unwrap();
    assert_error(put_manifest(&s, &c, "idx/missing", "latest", OCI_INDEX, &index), 400, &["MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"]);
    put_manifest_ok(&s, &c, "idx/missing", &sha256(&child), OCI_MANIFEST, &child);
    put_manifest_ok(&s, &c, "idx/missing", "latest", OCI_INDEX, &index);
}

#[test]
fn invalid_manifests_are_refused() {
    let s = Server::start();
    let c = client();
    let repo = "bad/manifests";
    let good = image_manifest(&s, &c, repo);

    // Content-Type disagrees with mediaType.
    assert_error(put_manifest(&s, &c, repo, "t", DOCKER_MANIFEST, &good), 400, &["MANIFEST_INVALID"]);
    assert_error(put_manifest(&s, &c, repo, "t", OCI_INDEX, &good), 400, &["MANIFEST_INVALID"]);
    // Not JSON.
    assert_error(put_manifest(&s, &c, repo, "t", OCI_MANIFEST, b"{not json"), 400, &["MANIFEST_INVALID"]);
    assert_error(put_manifest(&s, &c, repo, "t", OCI_MANIFEST, b""), 400, &["MANIFEST_INVALID"]);
    // Wrong schemaVersion.
    let v1 = serde_json::to_vec(&json!({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, b"{}"), "layers": []})).unwrap();
    assert_error(put_manifest(&s, &c, repo, "t", OCI_MANIFEST, &v1), 400, &["MANIFEST_INVALID"]);
    // An image manifest without config; an index without manifests.
    let noconf = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})).unwrap();
    assert_error(put_manifest(&s, &c, repo, "t", OCI_MANIFEST, &noconf), 400, &["MANIFEST_INVALID"]);
    let nolist = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX})).unwrap();
    assert_error(put_manifest(&s, &c, repo, "t", OCI_INDEX, &nolist), 400, &["MANIFEST_INVALID"]);
    // A descriptor with a malformed digest.
    let baddesc = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:nothex", "size": 2}, "layers": []
    }))
    .unwrap();
    assert_error(put_manifest(&s, &c, repo, "t", OCI_MANIFEST, &baddesc), 400, &["MANIFEST_INVALID", "DIGEST_INVALID"]);
    // Nothing got tagged along the way.
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/t")), 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
}

#[test]
fn schema1_is_refused_with_a_clear_message() {
    let s = Server::start();
    let c = client();
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 1, "name": "old/image", "tag": "latest", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(b"x")}], "history": [{"v1Compatibility": "{}"}],
    }))
    .unwrap();
    for ct in [
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
    ] {
        let v = assert_error(put_manifest(&s, &c, "old/image", "latest", ct, &m), 400, &["MANIFEST_INVALID", "UNSUPPORTED"]);
        let msg = v["errors"][0]["message"].as_str().unwrap().to_lowercase();
        assert!(msg.contains("schema1") || msg.contains("schema 1"), "unclear message: {msg}");
    }
}

#[test]
fn manifest_size_limit() {
    let s = Server::start();
    let c = client();
    let repo = "big/manifest";
    let base = image_manifest(&s, &c, repo);
    let with_pad = |pad: usize| {
        let mut v: Value = serde_json::from_slice(&base).unwrap();
        v["annotations"] = json!({"pad": "a".repeat(pad)});
        serde_json::to_vec(&v).unwrap()
    };
    let overhead = with_pad(0).len();
    const LIMIT: usize = 4 * 1024 * 1024;
    // Exactly 4 MiB is accepted (the spec's lower bound for the limit).
    let at_limit = with_pad(LIMIT - overhead);
    assert_eq!(at_limit.len(), LIMIT);
    put_manifest_ok(&s, &c, repo, "at-limit", OCI_MANIFEST, &at_limit);
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/at-limit")).bytes().unwrap().len(), LIMIT);

    let over = with_pad(LIMIT - overhead + 1);
    assert_error(put_manifest(&s, &c, repo, "over", OCI_MANIFEST, &over), 413, &["SIZE_INVALID", "MANIFEST_INVALID"]);
    // Without a Content-Length the limit still applies.
    let r = c.put(format!("{}/v2/{repo}/manifests/over", s.url)).header("Content-Type", OCI_MANIFEST).body(streaming(&over)).send().unwrap();
    assert_error(r, 413, &["SIZE_INVALID", "MANIFEST_INVALID"]);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/over")), 404, &["MANIFEST_UNKNOWN"]);
}

#[test]
fn put_by_digest_must_match_body() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "dg/check");
    let wrong = sha256(b"another body");
    assert_error(put_manifest(&s, &c, "dg/check", &wrong, OCI_MANIFEST, &m), 400, &["DIGEST_INVALID"]);
    assert_error(get(&s, &c, &format!("/v2/dg/check/manifests/{wrong}")), 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    assert_error(get(&s, &c, &format!("/v2/dg/check/manifests/{}", sha256(&m))), 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    // Malformed digest reference.
    assert_error(put_manifest(&s, &c, "dg/check", "sha256:short", OCI_MANIFEST, &m), 400, &["DIGEST_INVALID"]);
}

#[test]
fn manifest_by_sha512_digest() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "dg/sha512");
    let d = sha512(&m);
    let r = put_manifest(&s, &c, "dg/sha512", &d, OCI_MANIFEST, &m);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let r = get(&s, &c, &format!("/v2/dg/sha512/manifests/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert_eq!(r.bytes().unwrap().as_ref(), &m[..]);
}

#[test]
fn manifest_etag_and_if_none_match() {
    let s = Server::start();
    let c = client();
    let (body, d) = push_image(&c, &s.url, "etag/app", "v1");
    let r = get(&s, &c, "/v2/etag/app/manifests/v1");
    let etag = must_hdr(&r, "etag");
    assert_eq!(etag, format!("\"{d}\""));
    assert_eq!(r.bytes().unwrap().as_ref(), &body[..]);
    let r = c.get(format!("{}/v2/etag/app/manifests/v1", s.url)).header("If-None-Match", &etag).send().unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert!(r.bytes().unwrap().is_empty());
    let r = c.get(format!("{}/v2/etag/app/manifests/v1", s.url)).header("If-None-Match", "\"sha256:other\"").send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn only_manifest_media_types_are_stored() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "mt/page");
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    v["annotations"] = json!({"x": "<script>alert(1)</script>"});
    let body = serde_json::to_vec(&v).unwrap();
    for ct in ["text/html", "application/json", "image/svg+xml"] {
        let e = assert_error(put_manifest(&s, &c, "mt/page", "page", ct, &body), 400, &["MANIFEST_INVALID"]);
        assert!(e["errors"][0]["message"].as_str().unwrap().contains("not a manifest media type"), "{e}");
    }
    assert_error(get(&s, &c, "/v2/mt/page/manifests/page"), 404, &["MANIFEST_UNKNOWN"]);
    // Without a mediaType in the body, a manifest Content-Type is what is served.
    put_manifest_ok(&s, &c, "mt/page", "page", OCI_MANIFEST, &body);
    assert_eq!(must_hdr(&get(&s, &c, "/v2/mt/page/manifests/page"), "content-type"), OCI_MANIFEST);
}

#[test]
fn content_type_is_compared_without_case() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "case/ct");
    put_manifest_ok(&s, &c, "case/ct", "v1", "Application/VND.OCI.image.manifest.v1+json", &m);
    assert_eq!(must_hdr(&get(&s, &c, "/v2/case/ct/manifests/v1"), "content-type"), OCI_MANIFEST);
}

#[test]
fn unknown_manifest_is_404() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s.url, "known/repo", "v1");
    assert_error(get(&s, &c, "/v2/known/repo/manifests/v2"), 404, &["MANIFEST_UNKNOWN"]);
    let d = sha256(b"no manifest");
    assert_error(get(&s, &c, &format!("/v2/known/repo/manifests/{d}")), 404, &["MANIFEST_UNKNOWN"]);
    assert_head_status(head(&s, &c, &format!("/v2/known/repo/manifests/{d}")), 404);
    assert_head_status(head(&s, &c, "/v2/known/repo/manifests/v2"), 404);
    assert_error(get(&s, &c, "/v2/unknown/repo/manifests/v1"), 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
}

#[test]
fn invalid_tags_are_refused() {
    let s = Server::start();
    let c = client();
    let m = image_manifest(&s, &c, "tags/bad");
    let long = "a".repeat(129);
    for tag in ["-leading-dash", ".dot", long.as_str(), "with%20space", "t%2Fslash"] {
        assert_error(put_manifest(&s, &c, "tags/bad", tag, OCI_MANIFEST, &m), 400, &["TAG_INVALID"]);
    }
    // The longest valid tag and the full character set work.
    let max = "b".repeat(128);
    for tag in [max.as_str(), "_under", "V1.2.3-rc_1", "0"] {
        put_manifest_ok(&s, &c, "tags/bad", tag, OCI_MANIFEST, &m);
        assert_eq!(get(&s, &c, &format!("/v2/tags/bad/manifests/{tag}")).status(), 200, "{tag}");
    }
}

#[test]
fn invalid_names_are_refused() {
    let s = Server::start();
    let c = client();
    let d = sha256(b"x");
    let long = "a".repeat(256);
    for name in ["Upper", "a..b", "a/..b", "a_.b", "-a", "a-", "a//b", long.as_str(), "a%20b"] {
        let m = b"{}".to_vec();
        assert_error(put_manifest(&s, &c, name, "latest", OCI_MANIFEST, &m), 400, &["NAME_INVALID"]);
        assert_error(get(&s, &c, &format!("/v2/{name}/manifests/latest")), 400, &["NAME_INVALID"]);
        assert_error(get(&s, &c, &format!("/v2/{name}/tags/list")), 400, &["NAME_INVALID"]);
        assert_error(get(&s, &c, &format!("/v2/{name}/blobs/{d}")), 400, &["NAME_INVALID"]);
        let r = c.post(format!("{}/v2/{name}/blobs/uploads/", s.url)).send().unwrap();
        assert_error(r, 400, &["NAME_INVALID"]);
        assert_error(get(&s, &c, &format!("/v2/{name}/referrers/{d}")), 400, &["NAME_INVALID"]);
    }
    // 255 characters (with slashes) is accepted.
    let ok = format!("{}/{}", "b".repeat(127), "c".repeat(127));
    assert_eq!(ok.len(), 255);
    push_image(&c, &s.url, &ok, "latest");
    assert_eq!(get(&s, &c, &format!("/v2/{ok}/manifests/latest")).status(), 200);
}

#[test]
fn nested_names() {
    let s = Server::start();
    let c = client();
    // Path components that are also endpoint words must not confuse routing.
    for repo in ["a/b/c/d", "org/blobs/x", "team/manifests/app", "x/tags/y", "u/uploads/z", "r/referrers/s"] {
        let (body, d) = push_image(&c, &s.url, repo, "latest");
        let r = get(&s, &c, &format!("/v2/{repo}/manifests/latest"));
        assert_eq!(r.status(), 200, "{repo}");
        assert_eq!(r.bytes().unwrap().as_ref(), &body[..]);
        assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/{d}")).status(), 200, "{repo}");
        let tags = json_body(get(&s, &c, &format!("/v2/{repo}/tags/list")));
        assert_eq!(tags, json!({"name": repo, "tags": ["latest"]}));
    }
    let cat = json_body(get(&s, &c, "/v2/_catalog"));
    let mut expected = vec!["a/b/c/d", "org/blobs/x", "r/referrers/s", "team/manifests/app", "u/uploads/z", "x/tags/y"];
    expected.sort();
    assert_eq!(cat["repositories"], json!(expected));
}

#[test]
fn tags_that_look_like_digests() {
    let s = Server::start();
    let c = client();
    let (_, d) = push_image(&c, &s.url, "sig/app", "v1");
    // Cosign-style tags: the algorithm and hex joined by a dash.
    let sig_tag = format!("{}.sig", d.replace(':', "-"));
    let m = image_manifest(&s, &c, "sig/app");
    let md = put_manifest_ok(&s, &c, "sig/app", &sig_tag, OCI_MANIFEST, &m);
    let hex_tag = d.trim_start_matches("sha256:").to_string();
    put_manifest_ok(&s, &c, "sig/app", &hex_tag, OCI_MANIFEST, &m);
    put_manifest_ok(&s, &c, "sig/app", "sha256", OCI_MANIFEST, &m);
    for tag in [&sig_tag, &hex_tag, &"sha256".to_string()] {
        let r = get(&s, &c, &format!("/v2/sig/app/manifests/{tag}"));
        assert_eq!(r.status(), 200, "{tag}");
        assert_eq!(must_hdr(&r, "docker-content-digest"), md);
    }
    let tags = json_body(get(&s, &c, "/v2/sig/app/tags/list"));
    let mut expected = vec![sig_tag, hex_tag, "sha256".to_string(), "v1".to_string()];
    expected.sort();
    assert_eq!(tags["tags"], json!(expected));
}

// ---- content discovery: referrers ----------------------------------------

#[test]
fn referrers_list() {
    let s = Server::start();
    let c = client();
    let repo = "ref/app";
    let (subject_body, subject) = push_image(&c, &s.url, repo, "latest");
    let subject_desc = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()});

    let sig = artifact_manifest(&s, &c, repo, Some("application/vnd.example.signature"), &subject_desc, "sig");
    let r = put_manifest(&s, &c, repo, &sha256(&sig), OCI_MANIFEST, &sig);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "oci-subject"), subject);
    let sig_d = sha256(&sig);

    let sbom = artifact_manifest(&s, &c, repo, Some("application/vnd.example.sbom"), &subject_desc, "sbom");
    let sbom_d = put_manifest_ok(&s, &c, repo, &sha256(&sbom), OCI_MANIFEST, &sbom);

    // No artifactType: it is taken from the config media type.
    let mut untyped: Value = serde_json::from_slice(&artifact_manifest(&s, &c, repo, None, &subject_desc, "untyped")).unwrap();
    let cfg = br#"{"kind":"attestation"}"#.to_vec();
    push_blob(&c, &s.url, repo, &cfg);
    untyped["config"] = descriptor("application/vnd.example.attestation.config", &cfg);
    let untyped = serde_json::to_vec(&untyped).unwrap();
    let untyped_d = put_manifest_ok(&s, &c, repo, "untyped", OCI_MANIFEST, &untyped);

    // An index can refer to a subject too.
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [descriptor(OCI_MANIFEST, &sbom)],
        "subject": subject_desc,
        "annotations": {"org.example.note": "bundle"},
    }))
    .unwrap();
    let r = put_manifest(&s, &c, repo, &sha256(&idx), OCI_INDEX, &idx);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "oci-subject"), subject);
    let idx_d = sha256(&idx);

    // A manifest without a subject has no OCI-Subject header.
    let plain = image_manifest(&s, &c, repo);
    let r = put_manifest(&s, &c, repo, "plain", OCI_MANIFEST, &plain);
    assert_eq!(r.status(), 201);
    assert!(hdr(&r, "oci-subject").is_none());

    let r = get(&s, &c, &format!("/v2/{repo}/referrers/{subject}"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "content-type"), OCI_INDEX);
    assert!(hdr(&r, "oci-filters-applied").is_none());
    let body = json_body(r);
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let list = body["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{body}");
    let find = |d: &str| list.iter().find(|m| m["digest"] == d).unwrap_or_else(|| panic!("{d} missing from {body}")).clone();
    let e = find(&sig_d);
    assert_eq!(e["mediaType"], OCI_MANIFEST);
    assert_eq!(e["size"], sig.len());
    assert_eq!(e["artifactType"], "application/vnd.example.signature");
    assert_eq!(e["annotations"], json!({"org.example.note": "sig"}));
    let e = find(&sbom_d);
    assert_eq!(e["artifactType"], "application/vnd.example.sbom");
    assert_eq!(e["annotations"]["org.example.note"], "sbom");
    let e = find(&untyped_d);
    assert_eq!(e["artifactType"], "application/vnd.example.attestation.config");
    let e = find(&idx_d);
    assert_eq!(e["mediaType"], OCI_INDEX);
    assert_eq!(e["size"], idx.len());
    assert_eq!(e["artifactType"], "application/vnd.example.bundle");

    // Filtering by artifactType.
    let r = get(&s, &c, &format!("/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sbom"));
    assert_eq!(r.status(), 200);
    assert_eq!(must_hdr(&r, "oci-filters-applied"), "artifactType");
    assert_eq!(must_hdr(&r, "content-type"), OCI_INDEX);
    let body = json_body(r);
    let list = body["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["digest"], sbom_d);
    let r = get(&s, &c, &format!("/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.none"));
    assert_eq!(must_hdr(&r, "oci-filters-applied"), "artifactType");
    assert_eq!(json_body(r)["manifests"], json!([]));

    // Referrers are per repository.
    push_image(&c, &s.url, "ref/other", "latest");
    let body = json_body(get(&s, &c, &format!("/v2/ref/other/referrers/{subject}")));
    assert_eq!(body["manifests"], json!([]));

    // Deleting a referrer removes it from the list.
    assert_eq!(delete(&s, &c, &format!("/v2/{repo}/manifests/{sig_d}")).status(), 202);
    let body = json_body(get(&s, &c, &format!("/v2/{repo}/referrers/{subject}")));
    let list = body["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|m| m["digest"] != sig_d.as_str()));
}

#[test]
fn referrers_of_unknown_subject_is_empty_index() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s.url, "ref/empty", "latest");
    for repo in ["ref/empty", "ref/never-pushed"] {
        let r = get(&s, &c, &format!("/v2/{repo}/referrers/{}", sha256(b"nothing refers to me")));
        assert_eq!(r.status(), 200);
        assert_eq!(must_hdr(&r, "content-type"), OCI_INDEX);
        let body = json_body(r);
        assert_eq!(body["schemaVersion"], 2);
        assert_eq!(body["mediaType"], OCI_INDEX);
        assert_eq!(body["manifests"], json!([]));
    }
    assert_error(get(&s, &c, "/v2/ref/empty/referrers/sha256:bad"), 400, &["DIGEST_INVALID"]);
}

#[test]
fn referrer_pushed_before_its_subject() {
    let s = Server::start();
    let c = client();
    let repo = "ref/early";
    // The subject manifest is prepared but not pushed yet.
    let subject_body = image_manifest(&s, &c, repo);
    let subject = sha256(&subject_body);
    let desc = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()});
    let sig = artifact_manifest(&s, &c, repo, Some("application/vnd.example.signature"), &desc, "early");
    let r = put_manifest(&s, &c, repo, &sha256(&sig), OCI_MANIFEST, &sig);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&r, "oci-subject"), subject);
    let body = json_body(get(&s, &c, &format!("/v2/{repo}/referrers/{subject}")));
    assert_eq!(body["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(body["manifests"][0]["digest"], sha256(&sig));

    put_manifest_ok(&s, &c, repo, "latest", OCI_MANIFEST, &subject_body);
    let body = json_body(get(&s, &c, &format!("/v2/{repo}/referrers/{subject}")));
    assert_eq!(body["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(body["manifests"][0]["artifactType"], "application/vnd.example.signature");
}

// ---- content discovery: tags and catalog ---------------------------------

#[test]
fn tags_list_order_and_pagination() {
    let s = Server::start();
    let c = client();
    let repo = "disc/tags";
    let m = image_manifest(&s, &c, repo);
    let tags = ["v2", "latest", "v10", "1.0", "Alpha", "_x", "v1", "beta", "v1.1", "zeta", "a-b"];
    for t in tags {
        put_manifest_ok(&s, &c, repo, t, OCI_MANIFEST, &m);
    }
    let mut sorted: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    sorted.sort();

    let r = get(&s, &c, &format!("/v2/{repo}/tags/list"));
    assert_eq!(r.status(), 200);
    assert!(must_hdr(&r, "content-type").starts_with("application/json"));
    assert!(hdr(&r, "link").is_none());
    let body = json_body(r);
    assert_eq!(body["name"], repo);
    assert_eq!(body["tags"], json!(sorted));

    for n in [1, 2, 3, 5, 11, 50] {
        let (all, pages) = follow_pages(&s, &c, &format!("/v2/{repo}/tags/list?n={n}"), "tags", n);
        assert_eq!(all, sorted, "n={n}");
        assert_eq!(pages, sorted.len().div_ceil(n).max(1), "n={n}");
    }

    // `last` alone, and with n.
    let body = json_body(get(&s, &c, &format!("/v2/{repo}/tags/list?last=v1")));
    let after: Vec<&String> = sorted.iter().filter(|t| t.as_str() > "v1").collect();
    assert_eq!(body["tags"], json!(after));
    let body = json_body(get(&s, &c, &format!("/v2/{repo}/tags/list?n=2&last=beta")));
    let after: Vec<&String> = sorted.iter().filter(|t| t.as_str() > "beta").take(2).collect();
    assert_eq!(body["tags"], json!(after));
    // `last` past the end.
    let r = get(&s, &c, &format!("/v2/{repo}/tags/list?last=zzz"));
    assert!(hdr(&r, "link").is_none());
    assert_eq!(json_body(r)["tags"], json!([]));

    // n=0: an empty page, no next link.
    let r = get(&s, &c, &format!("/v2/{repo}/tags/list?n=0"));
    assert_eq!(r.status(), 200);
    assert!(hdr(&r, "link").is_none());
    assert_eq!(json_body(r)["tags"], json!([]));

    // Malformed n.
    assert_error(get(&s, &c, &format!("/v2/{repo}/tags/list?n=-1")), 400, &["UNSUPPORTED", "PAGINATION_NUMBER_INVALID"]);
}

#[test]
fn tags_of_unknown_repository() {
    let s = Server::start();
    let c = client();
    assert_error(get(&s, &c, "/v2/no/such/repo/tags/list"), 404, &["NAME_UNKNOWN"]);
    assert_error(get(&s, &c, "/v2/no/such/repo/tags/list?n=0"), 404, &["NAME_UNKNOWN"]);
    // Blobs alone do not make a repository.
    push_blob(&c, &s.url, "only/blobs", b"data");
    assert_error(get(&s, &c, "/v2/only/blobs/tags/list"), 404, &["NAME_UNKNOWN"]);
    // A repository with only untagged manifests exists but has no tags.
    let m = image_manifest(&s, &c, "untagged");
    put_manifest_ok(&s, &c, "untagged", &sha256(&m), OCI_MANIFEST, &m);
    let r = get(&s, &c, "/v2/untagged/tags/list");
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r), json!({"name": "untagged", "tags": []}));
}

#[test]
fn catalog_order_and_pagination() {
    let s = Server::start();
    let c = client();
    let repos = ["zeta", "alpha/one", "alpha", "beta/x/y", "a-b", "a.b", "a_b", "m0", "alpha/two"];
    for r in repos {
        push_image(&c, &s.url, r, "latest");
    }
    let mut sorted: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
    sorted.sort();
    let r = get(&s, &c, "/v2/_catalog");
    assert_eq!(r.status(), 200);
    assert!(hdr(&r, "link").is_none());
    assert_eq!(json_body(r)["repositories"], json!(sorted));
    for n in [1, 2, 4, 9, 100] {
        let (all, pages) = follow_pages(&s, &c, &format!("/v2/_catalog?n={n}"), "repositories", n);
        assert_eq!(all, sorted, "n={n}");
        assert_eq!(pages, sorted.len().div_ceil(n).max(1), "n={n}");
    }
    let r = get(&s, &c, "/v2/_catalog?n=0");
    assert_eq!(r.status(), 200);
    assert!(hdr(&r, "link").is_none());
    assert_eq!(json_body(r)["repositories"], json!([]));
    let body = json_body(get(&s, &c, "/v2/_catalog?last=alpha/one"));
    let after: Vec<&String> = sorted.iter().filter(|t| t.as_str() > "alpha/one").collect();
    assert_eq!(body["repositories"], json!(after));
}

#[test]
fn no_phantom_repositories_in_catalog() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s.url, "real", "latest");
    // Blobs and unfinished uploads without a manifest.
    push_blob(&c, &s.url, "ghost/blobs", b"orphan");
    start_upload(&s, &c, "ghost/upload");
    let r = c.post(format!("{}/v2/ghost/mount/blobs/uploads/?mount={}&from=real", s.url, sha256(b"x"))).send().unwrap();
    assert_eq!(r.status(), 202);
    // A failed manifest push.
    let bad = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, b"absent"), "layers": []})).unwrap();
    assert_error(put_manifest(&s, &c, "ghost/failed", "latest", OCI_MANIFEST, &bad), 400, &["MANIFEST_BLOB_UNKNOWN"]);
    assert_eq!(json_body(get(&s, &c, "/v2/_catalog"))["repositories"], json!(["real"]));

    // Deleting the last manifest removes the repository from the catalog.
    let (_, d) = push_image(&c, &s.url, "gone", "latest");
    assert_eq!(json_body(get(&s, &c, "/v2/_catalog"))["repositories"], json!(["gone", "real"]));
    assert_eq!(delete(&s, &c, &format!("/v2/gone/manifests/{d}")).status(), 202);
    assert_eq!(json_body(get(&s, &c, "/v2/_catalog"))["repositories"], json!(["real"]));
    assert_error(get(&s, &c, "/v2/gone/tags/list"), 404, &["NAME_UNKNOWN"]);
}

// ---- content management ----------------------------------------------------

#[test]
fn delete_manifest_by_digest_removes_its_tags() {
    let s = Server::start();
    let c = client();
    let repo = "mgmt/del";
    let (_, keep) = push_image(&c, &s.url, repo, "keep");
    let m = image_manifest(&s, &c, repo);
    let d = put_manifest_ok(&s, &c, repo, "one", OCI_MANIFEST, &m);
    put_manifest_ok(&s, &c, repo, "two", OCI_MANIFEST, &m);

    let r = delete(&s, &c, &format!("/v2/{repo}/manifests/{d}"));
    assert_eq!(r.status(), 202);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/{d}")), 404, &["MANIFEST_UNKNOWN"]);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/one")), 404, &["MANIFEST_UNKNOWN"]);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/two")), 404, &["MANIFEST_UNKNOWN"]);
    assert_eq!(json_body(get(&s, &c, &format!("/v2/{repo}/tags/list")))["tags"], json!(["keep"]));
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/{keep}")).status(), 200);
    // Again: unknown.
    assert_error(delete(&s, &c, &format!("/v2/{repo}/manifests/{d}")), 404, &["MANIFEST_UNKNOWN"]);
    // It can be pushed again.
    put_manifest_ok(&s, &c, repo, "one", OCI_MANIFEST, &m);
}

#[test]
fn delete_tag_keeps_manifest() {
    let s = Server::start();
    let c = client();
    let repo = "mgmt/tag";
    let (body, d) = push_image(&c, &s.url, repo, "v1");
    put_manifest_ok(&s, &c, repo, "v2", OCI_MANIFEST, &body);
    let r = delete(&s, &c, &format!("/v2/{repo}/manifests/v1"));
    assert_eq!(r.status(), 202);
    assert_error(get(&s, &c, &format!("/v2/{repo}/manifests/v1")), 404, &["MANIFEST_UNKNOWN"]);
    let r = get(&s, &c, &format!("/v2/{repo}/manifests/{d}"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &body[..]);
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/v2")).status(), 200);
    assert_eq!(json_body(get(&s, &c, &format!("/v2/{repo}/tags/list")))["tags"], json!(["v2"]));
    assert_error(delete(&s, &c, &format!("/v2/{repo}/manifests/v1")), 404, &["MANIFEST_UNKNOWN"]);
    assert_error(delete(&s, &c, &format!("/v2/{repo}/manifests/-bad")), 400, &["TAG_INVALID"]);
}

#[test]
fn deletes_disabled_are_405_unsupported() {
    let s = Server::start_with(&[], &[("BERTH_REGISTRY_DELETE_ENABLED", "false")]);
    let c = client();
    let repo = "mgmt/nodelete";
    let (body, d) = push_image(&c, &s.url, repo, "v1");
    let blob = push_blob(&c, &s.url, repo, b"blob");
    for path in [format!("/v2/{repo}/manifests/{d}"), format!("/v2/{repo}/manifests/v1"), format!("/v2/{repo}/blobs/{blob}")] {
        assert_error(delete(&s, &c, &path), 405, &["UNSUPPORTED"]);
    }
    assert_eq!(get(&s, &c, &format!("/v2/{repo}/manifests/v1")).bytes().unwrap().as_ref(), &body[..]);
    assert_eq!(head(&s, &c, &format!("/v2/{repo}/blobs/{blob}")).status(), 200);
    // Cancelling an upload is not a content delete and still works.
    let loc = start_upload(&s, &c, repo);
    assert_eq!(c.delete(&loc).send().unwrap().status(), 204);
}

// ---- configuration and process ---------------------------------------------

fn berth(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn config_defaults_pass_check() {
    let out = berth(&["config", "defaults"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[registry]") && text.contains("delete_enabled"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, &text).unwrap();
    let out = berth(&["config", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn config_errors_name_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:5000\"\n\n[registry]\ndelete_enabled = \"maybe\"\n", "line 5", "delete_enabled"),
        ("[server]\nlisten = \"127.0.0.1:5000\"\nlisen = \"typo\"\n", "line 3", "lisen"),
        ("[log]\nlevel = \"info\"\n[storage]\ndata_dir = 7\n", "line 4", "data_dir"),
        // Semantic errors, found after parsing, name the line too.
        ("[server]\nlisten = \"x\"\n\n\n[registry]\nmax_page_size = 1\n", "line 2", "server.listen"),
        ("[server]\nlisten = \"127.0.0.1:1\"\n\n\n[registry]\nmax_page_size = 0\n", "line 6", "registry.max_page_size"),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = berth(&["config", "check", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(line), "no {line:?} in {err:?}");
        assert!(err.contains(key), "no {key:?} in {err:?}");
    }
    // Semantic errors name the setting.
    let file = dir.path().join("semantic.toml");
    std::fs::write(&file, "[server]\nlisten = \"not an address\"\n").unwrap();
    let out = berth(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
    // The users file is checked as start-up checks it.
    let users = dir.path().join("htpasswd");
    std::fs::write(&users, "bob:$apr1$xyz$abc\n").unwrap();
    let file = dir.path().join("auth.toml");
    std::fs::write(&file, format!("[auth]\nmode = \"basic\"\nhtpasswd = {:?}\n", users.to_str().unwrap())).unwrap();
    let out = berth(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("bcrypt"), "{err}");
    // A BERTH_ variable that names no setting is refused like an unknown key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().join("d").to_str().unwrap()])
        .env("BERTH_REGISTRY_MAX_PAGE_SIZ", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such setting"));
}

#[test]
fn sigterm_exits_cleanly() {
    let mut s = Server::start();
    let c = client();
    push_image(&c, &s.url, "shutdown/app", "latest");
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", s.stderr());
}

// ---- further edge cases ------------------------------------------------------

#[test]
fn chunk_length_must_match_its_content_range() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(150);
    let loc = start_upload(&s, &c, "push/short");
    // Content-Range announces 100 bytes; only 50 arrive.
    let r = c.patch(&loc).header("Content-Range", "0-99").body(data[..50].to_vec()).send().unwrap();
    assert_error(r, 400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]);
    // The refused chunk left nothing behind.
    let st = c.get(&loc).send().unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(must_hdr(&st, "range"), "0-0");
    // Streamed (no Content-Length) with more bytes than declared.
    let r = c.patch(&loc).header("Content-Range", "0-9").body(streaming(&data)).send().unwrap();
    assert_error(r, 400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]);
    assert_eq!(must_hdr(&c.get(&loc).send().unwrap(), "range"), "0-0");
    // A malformed Content-Range is a bad request, not a server error.
    let r = c.patch(&loc).header("Content-Range", "garbage").body(data.clone()).send().unwrap();
    assert_error(r, 400, &["BLOB_UPLOAD_INVALID"]);
    let r = c.patch(&loc).header("Content-Range", format!("0-{}", u64::MAX)).body(data.clone()).send().unwrap();
    assert_error(r, 400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]);
    // A correct chunk still works.
    let r = c.patch(&loc).header("Content-Range", "0-149").body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    let d = sha256(&data);
    let r = c.put(with_query(&resolve(&s, &must_hdr(&r, "location")), &format!("digest={d}"))).send().unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn final_put_chunk_out_of_order_is_416() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(200);
    let loc = start_upload(&s, &c, "push/putooo");
    let r = c.patch(&loc).header("Content-Range", "0-99").body(data[..100].to_vec()).send().unwrap();
    let loc = resolve(&s, &must_hdr(&r, "location"));
    let d = sha256(&data);
    let r = c.put(with_query(&loc, &format!("digest={d}"))).header("Content-Range", "150-199").body(data[150..].to_vec()).send().unwrap();
    assert_error(r, 416, &["BLOB_UPLOAD_INVALID", "RANGE_INVALID"]);
    let r = c.put(with_query(&loc, &format!("digest={d}"))).header("Content-Range", "100-199").body(data[100..].to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
}

#[test]
fn page_size_is_capped_with_a_next_link() {
    let s = Server::start_with(&[], &[("BERTH_REGISTRY_MAX_PAGE_SIZE", "2")]);
    let c = client();
    let m = image_manifest(&s, &c, "capped");
    let tags = ["e", "d", "c", "b", "a"];
    for t in tags {
        put_manifest_ok(&s, &c, "capped", t, OCI_MANIFEST, &m);
    }
    // No n, and an n above the cap: pages of 2, linked to the end.
    for first in ["/v2/capped/tags/list", "/v2/capped/tags/list?n=100"] {
        let (all, pages) = follow_pages(&s, &c, first, "tags", 2);
        assert_eq!(all, ["a", "b", "c", "d", "e"], "{first}");
        assert_eq!(pages, 3);
    }
}

#[test]
fn manifest_media_type_from_header_or_body() {
    let s = Server::start();
    let c = client();
    let repo = "mt/app";
    // No mediaType field: the Content-Type is what GET returns.
    let mut v: Value = serde_json::from_slice(&image_manifest(&s, &c, repo)).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let body = serde_json::to_vec(&v).unwrap();
    put_manifest_ok(&s, &c, repo, "nofield", OCI_MANIFEST, &body);
    assert_eq!(must_hdr(&get(&s, &c, &format!("/v2/{repo}/manifests/nofield")), "content-type"), OCI_MANIFEST);
    // Content-Type parameters are tolerated.
    let body = image_manifest(&s, &c, repo);
    put_manifest_ok(&s, &c, repo, "params", &format!("{OCI_MANIFEST}; charset=utf-8"), &body);
    assert_eq!(must_hdr(&get(&s, &c, &format!("/v2/{repo}/manifests/params")), "content-type"), OCI_MANIFEST);
    // Docker manifest list pushed with its header is served with it.
    let (child, d) = push_image(&c, &s.url, repo, "child");
    let list = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": child.len()}]})).unwrap();
    let r = c.put(format!("{}/v2/{repo}/manifests/list", s.url)).body(list.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&get(&s, &c, &format!("/v2/{repo}/manifests/list")), "content-type"), DOCKER_LIST);
}

#[test]
fn deleted_blob_is_not_mountable_and_not_referencable() {
    let s = Server::start();
    let c = client();
    let data = random_bytes(300);
    let d = push_blob(&c, &s.url, "life/a", &data);
    push_blob(&c, &s.url, "life/b", &data);
    assert_eq!(delete(&s, &c, &format!("/v2/life/a/blobs/{d}")).status(), 202);
    // The same content in another repository is unaffected.
    assert_eq!(get(&s, &c, &format!("/v2/life/b/blobs/{d}")).bytes().unwrap().as_ref(), &data[..]);
    // A mount from the repository that deleted it opens an upload instead.
    let r = c.post(format!("{}/v2/life/c/blobs/uploads/?mount={d}&from=life/a", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    // A manifest in the deleting repository cannot reference it.
    push_blob(&c, &s.url, "life/a", b"{}");
    let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, b"{}"), "layers": [descriptor(OCI_LAYER, &data)]})).unwrap();
    assert_error(put_manifest(&s, &c, "life/a", "v1", OCI_MANIFEST, &m), 400, &["MANIFEST_BLOB_UNKNOWN"]);
    // Re-uploading brings it back.
    push_blob(&c, &s.url, "life/a", &data);
    put_manifest_ok(&s, &c, "life/a", "v1", OCI_MANIFEST, &m);
}

#[test]
fn referrers_filter_with_encoded_media_type() {
    let s = Server::start();
    let c = client();
    let repo = "ref/enc";
    let (body, subject) = push_image(&c, &s.url, repo, "latest");
    let desc = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": body.len()});
    let a = artifact_manifest(&s, &c, repo, Some("application/vnd.example.sig+json"), &desc, "a");
    put_manifest_ok(&s, &c, repo, &sha256(&a), OCI_MANIFEST, &a);
    let r = get(&s, &c, &format!("/v2/{repo}/referrers/{subject}?artifactType=application%2Fvnd.example.sig%2Bjson"));
    assert_eq!(must_hdr(&r, "oci-filters-applied"), "artifactType");
    assert_eq!(json_body(r)["manifests"].as_array().unwrap().len(), 1);
    // An empty filter filters nothing.
    let r = get(&s, &c, &format!("/v2/{repo}/referrers/{subject}?artifactType="));
    assert!(hdr(&r, "oci-filters-applied").is_none());
    assert_eq!(json_body(r)["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn upload_without_body_then_streamed_put() {
    let s = Server::start();
    let c = client();
    // POST with a body but no digest: the body is not part of the upload
    // or, if the registry takes it, the status says so.
    let loc = start_upload(&s, &c, "push/zero");
    let st = c.get(&loc).send().unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(must_hdr(&st, "range"), "0-0");
    let empty_digest = sha256(b"");
    let r = c.put(with_query(&loc, &format!("digest={empty_digest}"))).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(must_hdr(&head(&s, &c, &format!("/v2/push/zero/blobs/{empty_digest}")), "content-length"), "0");
}
