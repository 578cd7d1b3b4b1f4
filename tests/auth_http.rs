//! Authentication and authorization over raw HTTP against a real `berth`
//! server: challenges on every route in basic and token modes, 401 versus
//! 403, access rules, catalog filtering, cross-repository mounts, malformed
//! Authorization headers, login rate limiting and the token endpoint.

mod common;

use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::OnceLock;

const USERS: &[(&str, &str)] = &[("admin", "admin-pw"), ("reader", "reader-pw"), ("alice", "alice-pw"), ("bob", "bob-pw")];
const SERVICE: &str = "berth-test-registry";
const REALM: &str = "berth-test";

/// The htpasswd text for [`USERS`], made once (bcrypt is slow).
fn htpasswd_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        common::write_htpasswd(&path, USERS);
        std::fs::read_to_string(path).unwrap()
    })
}

struct Setup {
    server: common::Server,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }
}

/// Starts a server in `mode` with the standard rules:
/// - `public/**`: pull for everyone, anonymous included (when `anonymous`);
/// - `users/{user}/**`: everything for each user in their own namespace;
/// - `team/**`: pull for `reader`;
/// - `**`: everything for `admin`.
fn start(mode: &str, anonymous: bool, max_failures: u32, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_text()).unwrap();
    let public_rule = if anonymous {
        "[[auth.rules]]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\nanonymous = true\nusers = [\"*\"]\n"
    } else {
        "[[auth.rules]]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\nusers = [\"*\"]\n"
    };
    let toml = format!(
        r#"
[auth]
mode = "{mode}"
htpasswd = "{htpasswd}"
realm = "{REALM}"
max_failures_per_minute = {max_failures}

{public_rule}
[[auth.rules]]
repositories = ["users/{{user}}/**"]
actions = ["admin"]
users = ["*"]

[[auth.rules]]
repositories = ["team/**"]
actions = ["pull"]
users = ["reader"]

[[auth.rules]]
repositories = ["**"]
actions = ["admin"]
users = ["admin"]

[auth.token]
service = "{SERVICE}"
{extra}
"#,
        htpasswd = htpasswd.display(),
    );
    let server = common::Server::start_config(dir.path(), &toml);
    Setup { server, _dir: dir }
}

#[derive(Clone)]
enum Cred {
    Anonymous,
    Basic(&'static str, &'static str),
    Bearer(String),
}

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

fn user(name: &'static str) -> Cred {
    Cred::Basic(name, password(name))
}

fn request(c: &Client, method: Method, url: &str, cred: &Cred) -> RequestBuilder {
    let rb = c.request(method, url);
    match cred {
        Cred::Anonymous => rb,
        Cred::Basic(u, p) => rb.basic_auth(u, Some(p)),
        Cred::Bearer(t) => rb.bearer_auth(t),
    }
}

fn error_code(r: Response) -> String {
    let body: Value = r.json().unwrap_or(Value::Null);
    body["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

/// Pushes a blob monolithically as `cred`; returns its digest.
fn push_blob(s: &Setup, repo: &str, data: &[u8], cred: &Cred) -> String {
    let digest = common::sha256(data);
    let r = request(&common::client(), Method::POST, &s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")), cred)
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "blob push to {repo}: {}", r.text().unwrap_or_default());
    digest
}

/// Pushes a one-layer image as `cred`; returns (manifest digest, layer digest).
fn push_image(s: &Setup, repo: &str, tag: &str, cred: &Cred) -> (String, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{}}}"#, rand::random::<u64>()).into_bytes();
    let layer = common::random_bytes(2000);
    let cd = push_blob(s, repo, &config, cred);
    let ld = push_blob(s, repo, &layer, cred);
    let manifest = manifest(&cd, config.len(), &ld, layer.len());
    let r = request(&common::client(), Method::PUT, &s.url(&format!("/v2/{repo}/manifests/{tag}")), cred)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "manifest push to {repo}: {}", r.text().unwrap_or_default());
    (common::sha256(&manifest), ld)
}

fn manifest(cd: &str, csize: usize, ld: &str, lsize: usize) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": lsize}]
    })
    .to_string()
    .into_bytes()
}

const ZERO_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Every repository endpoint for `repo`, with the action its challenge names.
fn repo_routes(repo: &str) -> Vec<(Method, String, &'static str)> {
    let d = ZERO_DIGEST;
    vec![
        (Method::GET, format!("/v2/{repo}/tags/list"), "pull"),
        (Method::GET, format!("/v2/{repo}/manifests/latest"), "pull"),
        (Method::HEAD, format!("/v2/{repo}/manifests/latest"), "pull"),
        (Method::GET, format!("/v2/{repo}/manifests/{d}"), "pull"),
        (Method::PUT, format!("/v2/{repo}/manifests/latest"), "pull,push"),
        (Method::DELETE, format!("/v2/{repo}/manifests/{d}"), "delete"),
        (Method::GET, format!("/v2/{repo}/blobs/{d}"), "pull"),
        (Method::HEAD, format!("/v2/{repo}/blobs/{d}"), "pull"),
        (Method::DELETE, format!("/v2/{repo}/blobs/{d}"), "delete"),
        (Method::POST, format!("/v2/{repo}/blobs/uploads/"), "pull,push"),
        (Method::POST, format!("/v2/{repo}/blobs/uploads/?mount={d}&from=public/x"), "pull,push"),
        (Method::GET, format!("/v2/{repo}/blobs/uploads/0123456789abcdef"), "pull,push"),
        (Method::PATCH, format!("/v2/{repo}/blobs/uploads/0123456789abcdef"), "pull,push"),
        (Method::PUT, format!("/v2/{repo}/blobs/uploads/0123456789abcdef?digest={d}"), "pull,push"),
        (Method::DELETE, format!("/v2/{repo}/blobs/uploads/0123456789abcdef"), "pull,push"),
        (Method::GET, format!("/v2/{repo}/referrers/{d}"), "pull"),
    ]
}

/// Anonymous callers get 401 with the exact challenge; an authenticated
/// user without access gets 403 DENIED; the admin gets neither.
fn check_routes(s: &Setup, challenge: impl Fn(&str) -> String, stranger: &Cred) {
    let c = common::client();
    let repo = "priv/app";
    for (method, path, actions) in repo_routes(repo) {
        let what = format!("{method} {path}");
        let r = request(&c, method.clone(), &s.url(&path), &Cred::Anonymous).send().unwrap();
        assert_eq!(r.status(), 401, "anonymous {what}");
        let www = r.headers().get("www-authenticate").unwrap_or_else(|| panic!("no challenge on {what}"));
        assert_eq!(www.to_str().unwrap(), challenge(&format!("repository:{repo}:{actions}")), "{what}");
        if method != Method::HEAD {
            assert_eq!(error_code(r), "UNAUTHORIZED", "{what}");
        }

        let r = request(&c, method.clone(), &s.url(&path), stranger).send().unwrap();
        assert_eq!(r.status(), 403, "stranger {what}");
        assert!(r.headers().get("www-authenticate").is_none(), "403 carries no challenge: {what}");
        if method != Method::HEAD {
            assert_eq!(error_code(r), "DENIED", "{what}");
        }

        let r = request(&c, method.clone(), &s.url(&path), &user("admin")).send().unwrap();
        assert!(![401, 403, 500].contains(&r.status().as_u16()), "admin {what}: {}", r.status());
    }
    // Endpoints that never need credentials.
    for path in ["/healthz", "/metrics"] {
        assert_eq!(c.get(s.url(path)).send().unwrap().status(), 200, "{path}");
    }
    // The login probe: 401 anonymously, 200 for any valid user.
    let r = c.get(s.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with(challenge("").split(",scope=").next().unwrap()));
    for (name, _) in USERS {
        assert_eq!(request(&c, Method::GET, &s.url("/v2/"), &user(name)).send().unwrap().status(), 200, "{name}");
    }
}

#[test]
fn basic_mode_challenges_and_denials_on_every_route() {
    let s = start("basic", true, 100, "");
    check_routes(&s, |_| format!("Basic realm=\"{REALM}\""), &user("bob"));
    // A wrong password is a 401 with the challenge, never a 403.
    let r = request(&common::client(), Method::GET, &s.url("/v2/priv/app/tags/list"), &Cred::Basic("admin", "wrong")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], format!("Basic realm=\"{REALM}\"").as_str());
    // Unknown users too.
    let r = request(&common::client(), Method::GET, &s.url("/v2/"), &Cred::Basic("nobody", "x")).send().unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn token_mode_challenges_and_denials_on_every_route() {
    let s = start("token", false, 100, "");
    let realm = s.url("/token");
    let challenge = |scope: &str| {
        if scope.is_empty() {
            format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"")
        } else {
            format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"{scope}\"")
        }
    };
    // Basic credentials are accepted in token mode too.
    check_routes(&s, challenge, &user("bob"));
    // A token granting nothing on the repository is denied the same way.
    let t = get_token(&s, &user("bob"), &["repository:priv/app:pull,push,delete"]);
    assert_eq!(access_of(&t), json!([{"type": "repository", "name": "priv/app", "actions": []}]));
    check_routes(&s, challenge, &Cred::Bearer(t));

    // The exact challenge on the base endpoint and on the catalog (no
    // anonymous rules here, so listing needs a login).
    let c = common::client();
    let r = c.get(s.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], challenge("").as_str());
    let r = c.get(s.url("/v2/_catalog")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], challenge("registry:catalog:*").as_str());
    // An invalid token says so in the challenge.
    let r = c.get(s.url("/v2/priv/app/tags/list")).bearer_auth("not-a-token").send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:priv/app:pull\",error=\"invalid_token\"").as_str()
    );
}

#[test]
fn rules_pull_only_namespaces_anonymous_and_catalog() {
    let s = start("basic", true, 100, "");
    let c = common::client();
    let admin = user("admin");
    let (priv_digest, priv_layer) = push_image(&s, "priv/app", "v1", &admin);
    let (team_digest, team_layer) = push_image(&s, "team/app", "v1", &admin);
    push_image(&s, "public/app", "v1", &admin);
    push_image(&s, "users/bob/app", "v1", &admin);

    // reader: pull-only on team/**.
    let reader = user("reader");
    let get = |path: &str, cred: &Cred| request(&c, Method::GET, &s.url(path), cred).send().unwrap().status().as_u16();
    assert_eq!(get("/v2/team/app/manifests/v1", &reader), 200);
    assert_eq!(get(&format!("/v2/team/app/blobs/{team_layer}"), &reader), 200);
    assert_eq!(get("/v2/team/app/tags/list", &reader), 200);
    let r = request(&c, Method::POST, &s.url("/v2/team/app/blobs/uploads/"), &reader).send().unwrap();
    assert_eq!((r.status().as_u16(), error_code(r)), (403, "DENIED".to_string()), "reader cannot start an upload");
    let r = request(&c, Method::PUT, &s.url("/v2/team/app/manifests/v2"), &reader)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(b"{}".to_vec())
        .send()
        .unwrap();
    assert_eq!((r.status().as_u16(), error_code(r)), (403, "DENIED".to_string()), "reader cannot push a manifest");
    let r = request(&c, Method::DELETE, &s.url(&format!("/v2/team/app/manifests/{team_digest}")), &reader).send().unwrap();
    assert_eq!((r.status().as_u16(), error_code(r)), (403, "DENIED".to_string()), "reader cannot delete a manifest");
    let r = request(&c, Method::DELETE, &s.url(&format!("/v2/team/app/blobs/{team_layer}")), &reader).send().unwrap();
    assert_eq!((r.status().as_u16(), error_code(r)), (403, "DENIED".to_string()), "reader cannot delete a blob");
    assert_eq!(get("/v2/team/app/manifests/v1", &admin), 200, "nothing was deleted");
    assert_eq!(get("/v2/priv/app/manifests/v1", &reader), 403);

    // alice: everything under users/alice/, nothing under users/bob/.
    let alice = user("alice");
    let (alice_digest, _) = push_image(&s, "users/alice/app", "v1", &alice);
    push_image(&s, "users/alice/deep/nested/app", "v1", &alice);
    assert_eq!(get("/v2/users/alice/app/manifests/v1", &alice), 200);
    let r = request(&c, Method::DELETE, &s.url(&format!("/v2/users/alice/app/manifests/{alice_digest}")), &alice).send().unwrap();
    assert_eq!(r.status(), 202, "alice deletes in her namespace");
    assert_eq!(get("/v2/users/alice/app/manifests/v1", &alice), 404);
    push_image(&s, "users/alice/app", "v2", &alice);
    assert_eq!(get("/v2/users/bob/app/manifests/v1", &alice), 403);
    let r = request(&c, Method::POST, &s.url("/v2/users/bob/app/blobs/uploads/"), &alice).send().unwrap();
    assert_eq!(r.status(), 403, "alice cannot push into bob's namespace");
    // `users/alice` is not a prefix match for `users/alicex`.
    let r = request(&c, Method::POST, &s.url("/v2/users/alicex/app/blobs/uploads/"), &alice).send().unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(get("/v2/users/bob/app/manifests/v1", &user("bob")), 200, "bob reads his own");

    // Anonymous: pull public/**, nothing else.
    assert_eq!(get("/v2/public/app/manifests/v1", &Cred::Anonymous), 200);
    assert_eq!(get("/v2/public/app/tags/list", &Cred::Anonymous), 200);
    let r = c.post(s.url("/v2/public/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 401, "anonymous push to public needs a login");
    assert_eq!(get("/v2/priv/app/manifests/v1", &Cred::Anonymous), 401);
    assert_eq!(get(&format!("/v2/priv/app/manifests/{priv_digest}"), &Cred::Anonymous), 401);
    // Any user may pull public/**, but not push there.
    assert_eq!(get("/v2/public/app/manifests/v1", &user("bob")), 200);
    assert_eq!(request(&c, Method::POST, &s.url("/v2/public/app/blobs/uploads/"), &user("bob")).send().unwrap().status(), 403);

    // The catalog lists only what the caller may pull.
    let catalog = |cred: &Cred| -> BTreeSet<String> {
        let r = request(&c, Method::GET, &s.url("/v2/_catalog"), cred).send().unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        v["repositories"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(catalog(&Cred::Anonymous), set(&["public/app"]));
    assert_eq!(catalog(&reader), set(&["public/app", "team/app"]));
    assert_eq!(catalog(&alice), set(&["public/app", "users/alice/app", "users/alice/deep/nested/app"]));
    assert_eq!(catalog(&user("bob")), set(&["public/app", "users/bob/app"]));
    assert_eq!(
        catalog(&admin),
        set(&["priv/app", "public/app", "team/app", "users/alice/app", "users/alice/deep/nested/app", "users/bob/app"])
    );
    // Pagination does not leak names either.
    let r = request(&c, Method::GET, &s.url("/v2/_catalog?n=1"), &reader).send().unwrap();
    let v: Value = r.json().unwrap();
    for name in v["repositories"].as_array().unwrap() {
        assert!(["public/app", "team/app"].contains(&name.as_str().unwrap()), "{name}");
    }

    // Cross-repository mount: without pull on the source, a plain upload
    // session (202) instead of a mount (201).
    let r = request(&c, Method::POST, &s.url(&format!("/v2/users/alice/m/blobs/uploads/?mount={priv_layer}&from=priv/app")), &alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "mount from a repository alice cannot pull");
    assert!(r.headers().get("location").is_some());
    assert_eq!(get(&format!("/v2/users/alice/m/blobs/{priv_layer}"), &alice), 404, "the blob was not mounted");
    // With pull on the source (reader on team/**... but no push anywhere; use
    // alice with public/**), the mount happens.
    let (_, public_layer) = push_image(&s, "public/lib", "v1", &admin);
    let r = request(&c, Method::POST, &s.url(&format!("/v2/users/alice/m/blobs/uploads/?mount={public_layer}&from=public/lib")), &alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "mount from public/lib");
    assert_eq!(get(&format!("/v2/users/alice/m/blobs/{public_layer}"), &alice), 200);
    // The admin may mount from anywhere.
    let r = request(&c, Method::POST, &s.url(&format!("/v2/priv/copy/blobs/uploads/?mount={priv_layer}&from=priv/app")), &admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn malformed_authorization_headers_are_400_or_401() {
    for mode in ["basic", "token"] {
        let s = start(mode, true, 1000, "");
        let c = common::client();
        let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
        let mut headers: Vec<Vec<u8>> = vec![
            b"Basic !!!not-base64!!!".to_vec(),
            format!("Basic {}", b64(b"no-colon-here")).into_bytes(),
            format!("Basic {}", b64(b":empty-user")).into_bytes(),
            format!("Basic {}", b64(&[0xff, 0xfe, b':', 0xfd])).into_bytes(),
            b"Basic".to_vec(),
            b"Basic ".to_vec(),
            b"Bearer".to_vec(),
            b"Bearer ".to_vec(),
            b"Bearer not.a.jwt".to_vec(),
            b"Bearer a.b.c.d.e".to_vec(),
            format!("Bearer {}.{}.{}", b64(b"{}"), b64(b"{\"iss\":1}"), b64(b"sig")).into_bytes(),
            b"Digest username=\"admin\"".to_vec(),
            b"Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXe".to_vec(),
            b"garbage".to_vec(),
            b"Basic \xc3\xa9\xc3\xa0:\xff".to_vec(),
            "Basic YWRtaW46YWRtaW4tcHc=\u{e9}".as_bytes().to_vec(),
        ];
        // A 10 KB header, well-formed base64.
        headers.push(format!("Basic {}", b64(format!("admin:{}", "x".repeat(7600)).as_bytes())).into_bytes());
        headers.push(format!("Basic {}", "A".repeat(10 * 1024)).into_bytes());
        headers.push(format!("Bearer {}", "A".repeat(10 * 1024)).into_bytes());
        let paths = ["/v2/", "/v2/_catalog", "/v2/priv/app/manifests/latest", "/v2/public/app/tags/list", "/token?scope=repository:x:pull"];
        for h in &headers {
            let value = reqwest::header::HeaderValue::from_bytes(h).unwrap();
            for path in paths {
                for method in [Method::GET, Method::POST] {
                    let r = c.request(method.clone(), s.url(path)).header("Authorization", value.clone()).send().unwrap();
                    let status = r.status().as_u16();
                    let shown = String::from_utf8_lossy(&h[..h.len().min(60)]).into_owned();
                    if method == Method::POST && !path.starts_with("/token") {
                        // POST is only meaningful on /token; elsewhere any 4xx.
                        assert!((400..500).contains(&status), "{mode} {method} {path} with {shown:?}: {status}");
                    } else {
                        assert!(status == 400 || status == 401, "{mode} {method} {path} with {shown:?}: {status}");
                    }
                }
            }
        }
        // The server is still healthy and a proper login still works.
        assert_eq!(request(&c, Method::GET, &s.url("/v2/"), &user("admin")).send().unwrap().status(), 200);
    }
}

#[test]
fn failed_logins_are_rate_limited() {
    let max = 3;
    for mode in ["basic", "token"] {
        let s = start(mode, true, max, "");
        let c = common::client();
        // A successful login first: a remembered good password must not
        // bypass the limit later.
        assert_eq!(request(&c, Method::GET, &s.url("/v2/"), &user("alice")).send().unwrap().status(), 200);
        for i in 0..max {
            let r = request(&c, Method::GET, &s.url("/v2/"), &Cred::Basic("alice", "wrong")).send().unwrap();
            assert_eq!(r.status(), 401, "{mode}: bad password {i}");
        }
        let r = request(&c, Method::GET, &s.url("/v2/"), &Cred::Basic("alice", "wrong")).send().unwrap();
        assert_eq!(r.status(), 429, "{mode}: one more bad password");
        assert_eq!(error_code(r), "TOOMANYREQUESTS");
        let r = request(&c, Method::GET, &s.url("/v2/"), &user("alice")).send().unwrap();
        assert_eq!(r.status(), 429, "{mode}: the right password while blocked");
        assert_eq!(error_code(r), "TOOMANYREQUESTS");
        let r = request(&c, Method::GET, &s.url("/v2/public/app/tags/list"), &user("alice")).send().unwrap();
        assert_eq!(r.status(), 429, "{mode}: on a repository route too");
        if mode == "token" {
            let r = request(&c, Method::GET, &s.url("/token?scope=repository:users/alice/x:pull"), &user("alice")).send().unwrap();
            assert_eq!(r.status(), 429, "the token endpoint is limited too");
            let r = c
                .post(s.url("/token"))
                .form(&[("grant_type", "password"), ("username", "alice"), ("password", "alice-pw"), ("service", SERVICE)])
                .send()
                .unwrap();
            assert_eq!(r.status(), 429);
        }
        // Anonymous access is unaffected.
        assert_eq!(c.get(s.url("/healthz")).send().unwrap().status(), 200);
    }
}

// ---- token endpoint ----

fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

fn claims_of(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {token}");
    serde_json::from_slice(&b64url_decode(parts[1])).unwrap()
}

fn access_of(token: &str) -> Value {
    claims_of(token)["access"].clone()
}

fn get_token(s: &Setup, cred: &Cred, scopes: &[&str]) -> String {
    let mut query: Vec<(&str, &str)> = vec![("service", SERVICE)];
    query.extend(scopes.iter().map(|sc| ("scope", *sc)));
    let r = request(&common::client(), Method::GET, &s.url("/token"), cred).query(&query).send().unwrap();
    assert_eq!(r.status(), 200, "token for {scopes:?}");
    let v: Value = r.json().unwrap();
    let t = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["access_token"].as_str(), Some(t.as_str()));
    t
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn sign(pem: &str, alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    let key = match alg {
        jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap()
}

fn claims(iss: &str, sub: &str, exp: u64, access: Value) -> Value {
    json!({"iss": iss, "sub": sub, "aud": SERVICE, "exp": exp, "nbf": now() - 60, "iat": now() - 60,
           "jti": format!("{:032x}", rand::random::<u128>()), "access": access})
}

fn push_access(repo: &str) -> Value {
    json!([{"type": "repository", "name": repo, "actions": ["pull", "push"]}])
}

/// Status of an upload start with `token`: 202 when pushing is allowed.
fn try_push(s: &Setup, repo: &str, token: &str) -> reqwest::blocking::Response {
    common::client().post(s.url(&format!("/v2/{repo}/blobs/uploads/"))).bearer_auth(token).send().unwrap()
}

#[test]
fn token_endpoint_grants_the_allowed_subset() {
    let s = start("token", true, 100, "");
    let c = common::client();
    push_image(&s, "team/app", "v1", &user("admin"));

    // GET with Basic credentials and several scopes: only what the policy allows.
    let scopes = [
        "repository:team/app:pull,push",
        "repository:users/reader/x:pull,push,delete",
        "repository:priv/app:pull",
        "repository:public/app:pull,push",
    ];
    let t = get_token(&s, &user("reader"), &scopes);
    let cl = claims_of(&t);
    assert_eq!(cl["sub"], "reader");
    assert_eq!(cl["aud"], SERVICE);
    assert_eq!(cl["iss"], "berth");
    assert!(cl["exp"].as_u64().unwrap() > now());
    assert_eq!(
        cl["access"],
        json!([
            {"type": "repository", "name": "team/app", "actions": ["pull"]},
            {"type": "repository", "name": "users/reader/x", "actions": ["pull", "push", "delete"]},
            {"type": "repository", "name": "priv/app", "actions": []},
            {"type": "repository", "name": "public/app", "actions": ["pull"]},
        ])
    );
    // The pull token pulls but cannot push.
    let r = c.get(s.url("/v2/team/app/manifests/v1")).bearer_auth(&t).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = try_push(&s, "team/app", &t);
    assert!(r.status() == 403 || r.status() == 401, "a pull token is refused for push: {}", r.status());
    // Grants are per repository: nothing for a repository not in the token.
    let r = c.get(s.url("/v2/team/other/tags/list")).bearer_auth(&t).send().unwrap();
    assert!(r.status() == 403 || r.status() == 401);
    assert_eq!(try_push(&s, "users/reader/x", &t).status(), 202);

    // Space-separated scopes in one parameter work as well.
    let t2 = get_token(&s, &user("reader"), &["repository:team/app:pull repository:users/reader/y:push"]);
    assert_eq!(
        access_of(&t2),
        json!([
            {"type": "repository", "name": "team/app", "actions": ["pull"]},
            {"type": "repository", "name": "users/reader/y", "actions": ["push"]},
        ])
    );

    // Anonymous token requests get the anonymous rules' grants.
    let t = get_token(&s, &Cred::Anonymous, &["repository:public/app:pull,push", "repository:team/app:pull"]);
    assert_eq!(
        access_of(&t),
        json!([
            {"type": "repository", "name": "public/app", "actions": ["pull"]},
            {"type": "repository", "name": "team/app", "actions": []},
        ])
    );
    assert_eq!(claims_of(&t)["sub"], "");
    assert_eq!(c.get(s.url("/v2/public/app/tags/list")).bearer_auth(&t).send().unwrap().status(), 404);
    // An anonymous token lacking a grant is asked to log in (401), not denied.
    let r = try_push(&s, "public/app", &t);
    assert_eq!(r.status(), 401, "anonymous token pushing");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer realm="));
    // Wrong password: 401.
    let r = c.get(s.url("/token")).basic_auth("reader", Some("wrong")).query(&[("scope", "repository:team/app:pull")]).send().unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn token_endpoint_oauth2_password_and_refresh_grants() {
    let s = start("token", true, 100, "");
    let c = common::client();
    let scope = "repository:users/alice/app:pull,push repository:priv/app:pull";
    let r = c
        .post(s.url("/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
            ("service", SERVICE),
            ("client_id", "berth-tests"),
            ("access_type", "offline"),
            ("scope", scope),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().expect("access_type=offline yields a refresh token").to_string();
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(
        access_of(&access),
        json!([
            {"type": "repository", "name": "users/alice/app", "actions": ["pull", "push"]},
            {"type": "repository", "name": "priv/app", "actions": []},
        ])
    );
    assert_eq!(try_push(&s, "users/alice/app", &access).status(), 202);

    // Without access_type=offline: no refresh token.
    let r = c
        .post(s.url("/token"))
        .form(&[("grant_type", "password"), ("username", "alice"), ("password", "alice-pw"), ("service", SERVICE), ("scope", scope)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert!(v.get("refresh_token").is_none_or(Value::is_null));

    // The refresh grant issues new access tokens for the same user.
    let r = c
        .post(s.url("/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("service", SERVICE), ("scope", "repository:users/alice/other:push")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(claims_of(t)["sub"], "alice");
    assert_eq!(access_of(t), json!([{"type": "repository", "name": "users/alice/other", "actions": ["push"]}]));
    assert_eq!(try_push(&s, "users/alice/other", t).status(), 202);

    // A refresh token is not an access token, and an access token is not a
    // refresh token.
    let r = c.get(s.url("/v2/users/alice/app/tags/list")).bearer_auth(&refresh).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(s.url("/token")).form(&[("grant_type", "refresh_token"), ("refresh_token", access.as_str())]).send().unwrap();
    assert_eq!(r.status(), 401);
    // Bad grants.
    let r = c.post(s.url("/token")).form(&[("grant_type", "password"), ("username", "alice"), ("password", "nope")]).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(s.url("/token")).form(&[("grant_type", "password"), ("username", "alice")]).send().unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(s.url("/token")).form(&[("grant_type", "client_credentials")]).send().unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(s.url("/token")).form(&[("grant_type", "refresh_token"), ("refresh_token", "garbage")]).send().unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn expired_tampered_and_foreign_tokens_are_refused() {
    let s = start("token", true, 100, "");
    let c = common::client();
    let key = std::fs::read_to_string(s.server.data_dir.join("auth/token-signing-key.pem")).expect("the generated signing key");
    let es256 = jsonwebtoken::Algorithm::ES256;
    let repo = "priv/forged";

    // Signed with the server's own key, valid: accepted (the crafting works).
    let good = sign(&key, es256, &claims("berth", "admin", now() + 600, push_access(repo)));
    assert_eq!(try_push(&s, repo, &good).status(), 202);

    // Expired 20 s ago: beyond the 10 s leeway.
    let r = try_push(&s, repo, &sign(&key, es256, &claims("berth", "admin", now() - 20, push_access(repo))));
    assert_eq!(r.status(), 401, "token expired 20 s ago");

    // Expired an hour ago, well beyond any leeway.
    let expired = sign(&key, es256, &claims("berth", "admin", now() - 3600, push_access(repo)));
    let r = try_push(&s, repo, &expired);
    assert_eq!(r.status(), 401, "expired token");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));

    // Not yet valid.
    let mut future = claims("berth", "admin", now() + 7200, push_access(repo));
    future["nbf"] = json!(now() + 3600);
    assert_eq!(try_push(&s, repo, &sign(&key, es256, &future)).status(), 401, "token not yet valid");

    // Another audience.
    let mut other_aud = claims("berth", "admin", now() + 600, push_access(repo));
    other_aud["aud"] = json!("another-registry");
    assert_eq!(try_push(&s, repo, &sign(&key, es256, &other_aud)).status(), 401, "token for another service");

    // Tampered: a real pull-only token with its payload widened to push.
    let issued = get_token(&s, &user("reader"), &["repository:team/app:pull,push"]);
    let parts: Vec<&str> = issued.split('.').collect();
    let mut payload = claims_of(&issued);
    payload["access"] = push_access("team/app");
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(try_push(&s, "team/app", &tampered).status(), 401, "tampered token");
    // A flipped signature byte.
    let mut sig = b64url_decode(parts[2]);
    sig[5] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(c.get(s.url("/v2/team/app/tags/list")).bearer_auth(&bad_sig).send().unwrap().status(), 401);
    // Unsigned (`alg: none`).
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{forged_payload}.");
    assert_eq!(try_push(&s, "team/app", &unsigned).status(), 401, "unsigned token");

    // Signed by another key claiming to be this issuer.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    let foreign = sign(&other, es256, &claims("berth", "admin", now() + 600, push_access(repo)));
    assert_eq!(try_push(&s, repo, &foreign).status(), 401, "token signed by another key");
    // From an issuer nobody trusts.
    let stranger = sign(&other, es256, &claims("someone-else", "admin", now() + 600, push_access(repo)));
    assert_eq!(try_push(&s, repo, &stranger).status(), 401, "untrusted issuer");
}

#[test]
fn trusted_external_issuers_are_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let write = |name: &str, kp: &rcgen::KeyPair| {
        let p = keys.path().join(name);
        std::fs::write(&p, kp.public_key_pem()).unwrap();
        p.display().to_string()
    };
    let extra = format!(
        "trusted_issuers = [{{ issuer = \"ext-p256\", public_key = \"{}\" }}, {{ issuer = \"ext-p384\", public_key = \"{}\" }}, {{ issuer = \"ext-ed\", public_key = \"{}\" }}]",
        write("p256.pem", &p256),
        write("p384.pem", &p384),
        write("ed.pem", &ed),
    );
    let s = start("token", false, 100, &extra);
    let c = common::client();
    let cases = [
        ("ext-p256", &p256, jsonwebtoken::Algorithm::ES256),
        ("ext-p384", &p384, jsonwebtoken::Algorithm::ES384),
        ("ext-ed", &ed, jsonwebtoken::Algorithm::EdDSA),
    ];
    for (issuer, kp, alg) in cases {
        let repo = format!("ext/{issuer}");
        let t = sign(&kp.serialize_pem(), alg, &claims(issuer, "ci-bot", now() + 600, push_access(&repo)));
        let r = try_push(&s, &repo, &t);
        assert_eq!(r.status(), 202, "{issuer}: {}", r.text().unwrap_or_default());
        // Its grants are the only thing that counts: no pull elsewhere.
        let r = c.get(s.url("/v2/priv/app/tags/list")).bearer_auth(&t).send().unwrap();
        assert_eq!(r.status(), 403, "{issuer}");
        // The issuer's name with another key is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let forged = sign(&other, jsonwebtoken::Algorithm::ES256, &claims(issuer, "ci-bot", now() + 600, push_access(&repo)));
        assert_eq!(try_push(&s, &repo, &forged).status(), 401, "{issuer} with a foreign key");
        // `jti` (like `sub`, `nbf` and `iat`) is optional in JWT.
        let mut minimal = claims(issuer, "ci-bot", now() + 600, push_access(&repo));
        for claim in ["jti", "nbf", "iat"] {
            minimal.as_object_mut().unwrap().remove(claim);
        }
        let r = try_push(&s, &repo, &sign(&kp.serialize_pem(), alg, &minimal));
        assert_eq!(r.status(), 202, "{issuer} without jti: {}", r.text().unwrap_or_default());
        // Expired tokens from a trusted issuer are refused too.
        let old = sign(&kp.serialize_pem(), alg, &claims(issuer, "ci-bot", now() - 3600, push_access(&repo)));
        assert_eq!(try_push(&s, &repo, &old).status(), 401, "{issuer} expired");
    }
}


// ---- user names, reloads, unions, audit, web routes, headers ----

/// Runs `berth user <command> <name> --file <path>`, with `password` on stdin.
fn berth_user(command: &str, name: &str, path: &std::path::Path, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["user", command, name, "--file"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The command may refuse before reading it.
    let _ = writeln!(child.stdin.take().unwrap(), "{password}");
    child.wait_with_output().unwrap()
}

#[test]
fn user_names_that_could_act_as_globs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    for bad in ["*", "**", "bob/x", "a:b", "{user}", "a b", ""] {
        let out = berth_user("add", bad, &path, "pw");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(err.contains("invalid user name") && err.contains("letters, digits"), "{bad:?}: {err}");
    }
    assert!(!path.exists(), "nothing was written");
    assert!(berth_user("add", "ci-bot.1@example.com", &path, "pw").status.success());

    // A file with such a name stops start-up, naming the line.
    let good = std::fs::read_to_string(&path).unwrap();
    let hash = good.split_once(':').unwrap().1.trim();
    std::fs::write(&path, format!("{good}**:{hash}\n")).unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, format!("[auth]\nmode = \"basic\"\nhtpasswd = \"{}\"\n", path.display())).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("BERTH_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("berth started with a user named `**`");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 2") && err.contains("invalid user name \"**\""), "{err}");
}

/// Retries `check` for a while: the htpasswd file is looked at every 2 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn password_changes_and_removals_need_no_restart() {
    let s = start("token", true, 100, "");
    let c = common::client();
    let htpasswd = s._dir.path().join("htpasswd");
    let probe = |u: &'static str, p: &'static str| request(&c, Method::GET, &s.url("/v2/"), &Cred::Basic(u, p)).send().unwrap().status().as_u16();
    let refresh_token = |u: &str, p: &str| -> String {
        let r = c
            .post(s.url("/token"))
            .form(&[("grant_type", "password"), ("username", u), ("password", p), ("service", SERVICE), ("access_type", "offline")])
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["refresh_token"].as_str().unwrap().to_string()
    };
    let refresh = |t: &str| {
        let form = [("grant_type", "refresh_token"), ("refresh_token", t), ("service", SERVICE), ("scope", "repository:users/alice/x:pull")];
        c.post(s.url("/token")).form(&form).send().unwrap()
    };
    assert_eq!(probe("alice", "alice-pw"), 200, "remembered from now on");
    let alice_refresh = refresh_token("alice", "alice-pw");
    let bob_refresh = refresh_token("bob", "bob-pw");
    assert_eq!(refresh(&alice_refresh).status(), 200);

    assert!(berth_user("passwd", "alice", &htpasswd, "alice-new").status.success());
    eventually("the old password stops working", || probe("alice", "alice-pw") == 401);
    assert_eq!(probe("alice", "alice-new"), 200);
    let r = refresh(&alice_refresh);
    assert_eq!(r.status(), 401, "a refresh token from before the change");
    assert!(r.text().unwrap().contains("password changed"));
    assert_eq!(refresh(&refresh_token("alice", "alice-new")).status(), 200, "a new one works");
    assert_eq!(refresh(&bob_refresh).status(), 200, "other users' tokens are unaffected");

    assert!(berth_user("remove", "bob", &htpasswd, "").status.success());
    eventually("a removed user is refused", || probe("bob", "bob-pw") == 401);
    assert_eq!(refresh(&bob_refresh).status(), 401, "a removed user's refresh token");

    // A broken file keeps the users last loaded, and says so in the log.
    std::fs::write(&htpasswd, "not an htpasswd file\n").unwrap();
    // (The file is looked at when a password is checked.)
    eventually("the broken file is reported", || probe("alice", "alice-new") == 200 && s.server.stderr().contains("htpasswd not reloaded"));
    assert_eq!(probe("bob", "bob-pw"), 401);
    assert!(!s.server.stderr().contains("alice-new"), "no secret is logged");
}

#[test]
fn authenticated_callers_keep_anonymous_access() {
    // `open/**` is for anonymous callers only; no rule names bob there.
    let extra = "\n[[auth.rules]]\nrepositories = [\"open/**\"]\nactions = [\"pull\"]\nanonymous = true\n";
    for mode in ["basic", "token"] {
        let s = start(mode, false, 100, extra);
        let c = common::client();
        push_image(&s, "open/app", "v1", &user("admin"));
        push_image(&s, "users/bob/app", "v1", &user("admin"));
        let get = |path: &str, cred: &Cred| request(&c, Method::GET, &s.url(path), cred).send().unwrap();
        assert_eq!(get("/v2/open/app/manifests/v1", &Cred::Anonymous).status(), 200, "{mode}");
        assert_eq!(get("/v2/open/app/manifests/v1", &user("bob")).status(), 200, "{mode}: Basic");
        let names = |v: Value, key: &str, field: &str| -> BTreeSet<String> {
            v[key].as_array().unwrap().iter().map(|x| if field.is_empty() { x } else { &x[field] }.as_str().unwrap().to_string()).collect()
        };
        let set = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let bob_sees = set(&["open/app", "users/bob/app"]);
        assert_eq!(names(get("/v2/_catalog", &user("bob")).json().unwrap(), "repositories", ""), bob_sees, "{mode}: catalog");
        assert_eq!(names(get("/api/v1/search?q=app", &user("bob")).json().unwrap(), "results", "name"), bob_sees, "{mode}: search");
        assert_eq!(names(get("/api/v1/search?q=app", &Cred::Anonymous).json().unwrap(), "results", "name"), set(&["open/app"]));
        assert_eq!(get("/api/v1/repositories/open/app", &user("bob")).status(), 200, "{mode}");
        if mode == "token" {
            let t = get_token(&s, &user("bob"), &["repository:open/app:pull,push"]);
            assert_eq!(access_of(&t), json!([{"type": "repository", "name": "open/app", "actions": ["pull"]}]));
            assert_eq!(get("/v2/open/app/manifests/v1", &Cred::Bearer(t)).status(), 200);
            // A token for something else still pulls what anyone may.
            let t = get_token(&s, &user("bob"), &["repository:users/bob/app:pull", "registry:catalog:*"]);
            assert_eq!(get("/v2/open/app/manifests/v1", &Cred::Bearer(t.clone())).status(), 200);
            assert!(names(get("/v2/_catalog", &Cred::Bearer(t)).json().unwrap(), "repositories", "").contains("open/app"));
        }
    }
}

#[test]
fn token_grants_are_audited_as_granted() {
    let s = start("token", true, 100, "");
    get_token(&s, &Cred::Anonymous, &["repository:public/app:pull,push", "repository:priv/app:pull"]);
    get_token(&s, &user("reader"), &["repository:team/app:pull,push,delete"]);
    let log = s.server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("token issued")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("user=anonymous") && lines[0].contains(r#"granted=["repository:public/app:pull"]"#), "{}", lines[0]);
    assert!(lines[1].contains("user=reader") && lines[1].contains(r#"granted=["repository:team/app:pull"]"#), "{}", lines[1]);
    assert!(!lines.iter().any(|l| l.contains("pull,push")), "requested scopes are not logged as grants: {log}");
}

#[test]
fn star_scopes_grant_what_the_caller_has() {
    let s = start("token", true, 100, "");
    let t = get_token(&s, &user("reader"), &["repository:team/app:*", "repository:priv/app:*"]);
    assert_eq!(
        access_of(&t),
        json!([
            {"type": "repository", "name": "team/app", "actions": ["pull"]},
            {"type": "repository", "name": "priv/app", "actions": []},
        ])
    );
    let t = get_token(&s, &user("alice"), &["repository:users/alice/app:*"]);
    assert_eq!(access_of(&t), json!([{"type": "repository", "name": "users/alice/app", "actions": ["pull", "push", "delete", "*"]}]));
    assert_eq!(try_push(&s, "users/alice/app", &t).status(), 202);
}

#[test]
fn wrong_credentials_on_search_and_ui_routes_are_401() {
    for mode in ["basic", "token"] {
        let s = start(mode, true, 100, "");
        let c = common::client();
        push_image(&s, "public/app", "v1", &user("admin"));
        let base = c.get(s.url("/v2/")).send().unwrap().headers()["www-authenticate"].clone();
        for path in ["/api/v1/search?q=app", "/v1/search?q=app", "/", "/r/public/app", "/api/v1/repositories/public/app"] {
            let r = c.get(s.url(path)).basic_auth("alice", Some("wrongpw")).send().unwrap();
            assert_eq!(r.status(), 401, "{mode} {path}");
            let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
            assert_eq!(challenges[0], base, "{mode} {path}: the challenge of /v2/ first");
            // Browsers cannot get tokens: in token mode, a password prompt too.
            assert_eq!(challenges[1..], if mode == "token" { vec![format!("Basic realm=\"{REALM}\"")] } else { vec![] }, "{mode} {path}");
            let r = c.get(s.url(path)).bearer_auth("not-a-token").send().unwrap();
            assert_eq!(r.status(), 401, "{mode} {path} with a bad token");
            assert_eq!(c.get(s.url(path)).send().unwrap().status(), 200, "{mode} {path} anonymously");
            assert_eq!(request(&c, Method::GET, &s.url(path), &user("alice")).send().unwrap().status(), 200, "{mode} {path} as alice");
        }
    }
}

#[test]
fn duplicate_authorization_headers_are_refused() {
    for mode in ["basic", "token"] {
        let s = start(mode, true, 100, "");
        let c = common::client();
        let admin = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:admin-pw"));
        let bob = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bob:bob-pw"));
        for path in ["/v2/", "/v2/priv/app/tags/list", "/v2/_catalog", "/token?scope=repository:priv/app:pull", "/api/v1/search"] {
            let r = c.get(s.url(path)).header("Authorization", &bob).header("Authorization", &admin).send().unwrap();
            assert_eq!(r.status(), 400, "{mode} {path}");
        }
        assert_eq!(c.get(s.url("/v2/priv/app/tags/list")).header("Authorization", &admin).send().unwrap().status(), 404);
    }
}

#[test]
fn http2_clients_get_challenges_naming_the_host_they_addressed() {
    common::require("curl");
    let s = start("token", true, 10, "");
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", &s.url("/v2/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/2 401"), "{text}");
    let realm = format!("realm=\"{}/token\"", s.server.url);
    assert!(text.contains(&realm), "no {realm} in {text}");
}

#[test]
fn catalog_and_search_with_a_token_list_what_its_user_may_pull() {
    let s = start("token", true, 100, "");
    let c = common::client();
    let admin_token = get_token(&s, &user("admin"), &["repository:users/bob/app:pull,push", "repository:priv/app:pull,push"]);
    push_image(&s, "users/bob/app", "v1", &Cred::Bearer(admin_token.clone()));
    push_image(&s, "priv/app", "v1", &Cred::Bearer(admin_token));
    let bob = Cred::Bearer(get_token(&s, &user("bob"), &["registry:catalog:*"]));
    let r = request(&c, Method::GET, &s.url("/v2/_catalog"), &bob).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["repositories"], json!(["users/bob/app"]));
    let r = request(&c, Method::GET, &s.url("/api/v1/search?q=app"), &bob).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let names: Vec<&str> = v["results"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["users/bob/app"]);
}

#[test]
fn filtered_catalog_pages_link_on_past_what_the_caller_cannot_see() {
    let s = start("basic", true, 100, "");
    let admin = user("admin");
    for i in 0..5 {
        push_image(&s, &format!("aaa/hidden{i}"), "v1", &admin);
    }
    push_image(&s, "public/zzz", "v1", &admin);
    let c = common::client();
    // n=1: every scanned page is hidden from an anonymous caller until the
    // end; following Link must still reach public/zzz.
    let mut url = s.url("/v2/_catalog?n=1");
    let mut seen = Vec::new();
    for _ in 0..20 {
        let r = c.get(&url).send().unwrap();
        assert_eq!(r.status(), 200);
        let link = r.headers().get("link").map(|l| l.to_str().unwrap().to_string());
        let v: Value = r.json().unwrap();
        seen.extend(v["repositories"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()));
        match link {
            Some(l) => url = s.url(l.split(';').next().unwrap().trim().trim_start_matches('<').trim_end_matches('>')),
            None => break,
        }
    }
    assert_eq!(seen, vec!["public/zzz".to_string()]);
    // Invalid names are refused before any rule is matched.
    let r = c.get(s.url(&format!("/v2/{}/tags/list", "A".repeat(300)))).send().unwrap();
    assert_eq!(r.status(), 400);
}
