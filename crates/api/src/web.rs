//! Search and the web interface: Docker's v1 search (`docker search`), the
//! JSON search and repository APIs, and server-rendered HTML pages with
//! their embedded stylesheet and script. Each route asks the registry one
//! question and renders the answer; which repositories a caller may see is
//! decided by `berth-auth` (pull access), as for the registry API.

use crate::error::{classify, ApiError};
use crate::ApiState;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use berth_auth::{Action, Principal};
use berth_meta::{RepoFilter, SearchPage};
use berth_oci::{Reference, RepoName};
use berth_registry::search::ManifestView;
use berth_registry::RegistryError;
use serde_json::json;
use std::fmt::Write;
use std::sync::Arc;

const CSS: &str = include_str!("../ui/app.css");
const JS: &str = include_str!("../ui/app.js");
const UI_PAGE: usize = 25;

/// A route of the search API or web interface.
#[derive(Debug, PartialEq)]
enum Web<'a> {
    Ping,
    DockerSearch,
    Search,
    Repository(&'a str),
    ManifestJson(&'a str, &'a str),
    Home,
    Asset(&'static str, &'static str),
    RepoPage(&'a str),
    ManifestPage(&'a str, &'a str),
}

fn parse(path: &str) -> Option<Web<'_>> {
    Some(match path {
        "/v1/_ping" | "/v1/_ping/" => Web::Ping,
        "/v1/search" => Web::DockerSearch,
        "/api/v1/search" => Web::Search,
        "/" => Web::Home,
        "/ui/app.css" => Web::Asset(CSS, "text/css; charset=utf-8"),
        "/ui/app.js" => Web::Asset(JS, "text/javascript; charset=utf-8"),
        _ => {
            if let Some(rest) = path.strip_prefix("/api/v1/repositories/") {
                return Some(match rest.rsplit_once("/manifests/") {
                    Some((name, reference)) => Web::ManifestJson(name, reference),
                    None => Web::Repository(rest),
                });
            }
            let rest = path.strip_prefix("/r/")?;
            match rest.rsplit_once("/manifests/") {
                Some((name, reference)) => Web::ManifestPage(name, reference),
                None => Web::RepoPage(rest.trim_end_matches('/')),
            }
        }
    })
}

/// What a web request carries, read before any await.
pub(crate) struct Incoming {
    path: String,
    method: Method,
    who: Principal,
    query: Vec<(String, String)>,
    host: String,
}

impl Incoming {
    pub(crate) fn of(req: &Request<Body>) -> Option<Incoming> {
        parse(req.uri().path())?;
        Some(Incoming {
            path: req.uri().path().to_string(),
            method: req.method().clone(),
            who: req.extensions().get::<Principal>().cloned().unwrap_or(Principal::Anonymous),
            query: req.uri().query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default(),
            host: host(req),
        })
    }
}

/// Answers a search or web-interface request.
pub(crate) async fn handle(state: &ApiState, req: Incoming) -> Response<Body> {
    let Some(route) = parse(&req.path) else { return ApiError::NotFound.into_response() };
    if req.method != Method::GET && req.method != Method::HEAD {
        return ApiError::MethodNotAllowed.into_response();
    }
    let who = req.who.clone();
    let query = &req.query;
    let get = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let html = matches!(route, Web::Home | Web::RepoPage(_) | Web::ManifestPage(..));
    let out = match route {
        Web::Ping => Ok(json_response(json!({"standalone": true}).to_string())),
        Web::Asset(body, kind) => {
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            Ok(resp)
        }
        Web::DockerSearch | Web::Search | Web::Home => {
            if let Some(denied) = login_needed(state, &who, None) {
                return denied;
            }
            let q = get("q").unwrap_or("");
            let n = get("n").and_then(|n| n.parse().ok()).unwrap_or(UI_PAGE);
            let page = get("page").and_then(|p| p.parse().ok()).unwrap_or(1usize).max(1);
            match state.registry.search(q, page, n, visible(state, &who)).await {
                Err(e) => Err(e.into()),
                Ok(found) => Ok(match route {
                    Web::DockerSearch => json_response(docker_search(q, page, n, &found).to_string()),
                    Web::Search => json_response(api_search(q, page, n, &found).to_string()),
                    _ => html_response(StatusCode::OK, &home_page(q, &found)),
                }),
            }
        }
        Web::Repository(name) | Web::RepoPage(name) => match repo_access(state, &who, name) {
            Err(resp) => return resp,
            Ok(repo) => match state.registry.repository(&repo).await {
                Err(e) => Err(e.into()),
                Ok(info) if html => {
                    let may_delete = state.registry.config().delete_enabled && state.auth.allowed(&who, repo.as_str(), Action::Delete);
                    Ok(html_response(StatusCode::OK, &repo_page(&info, &req.host, may_delete)))
                }
                Ok(info) => {
                    let mut body = repo_json(&info);
                    let digests: Vec<_> = info.tags.iter().map(|t| t.digest.clone()).collect();
                    if let Ok(reports) = state.registry.signature_reports(&repo, &digests).await {
                        for (tag, t) in body["tags"].as_array_mut().into_iter().flatten().zip(&info.tags) {
                            if let Some(r) = reports.get(&t.digest) {
                                let v = serde_json::to_value(r).unwrap_or_default();
                                tag["signatures"] = json!({
                                    "policy": v["policy"], "status": v["status"], "signer": v["signer"],
                                    "format": v["format"], "verified_at": v["verified_at"],
                                });
                            }
                        }
                    }
                    Ok(json_response(body.to_string()))
                }
            },
        },
        Web::ManifestJson(name, reference) | Web::ManifestPage(name, reference) => match repo_access(state, &who, name) {
            Err(resp) => return resp,
            Ok(repo) => match Reference::parse(reference).ok() {
                None => Err(ApiError::Registry(RegistryError::ManifestUnknown)),
                Some(reference) => match state.registry.manifest_view(&repo, &reference).await {
                    Err(e) => Err(e.into()),
                    Ok(view) if html => Ok(html_response(StatusCode::OK, &manifest_page(&view))),
                    Ok(view) => Ok(json_response(serde_json::to_string(&view).unwrap_or_default())),
                },
            },
        },
    };
    match out {
        Ok(resp) => resp,
        Err(e) if html => {
            let (status, _, message) = classify(&e);
            let message = if status.is_server_error() { "internal error; see the registry log".into() } else { message };
            html_response(status, &layout("Error", &format!("<h1>{}</h1><p class=\"muted\">{}</p>", status, esc(&message)), ""))
        }
        Err(e) => e.into_response(),
    }
}

/// Repositories the caller may pull.
fn visible(state: &ApiState, who: &Principal) -> RepoFilter {
    let (auth, who) = (state.auth.clone(), who.clone());
    Arc::new(move |name: &str| auth.may_list(&who, name))
}

/// With authentication on, an anonymous caller without any anonymous
/// access (or without pull access to `repo`) is asked to log in with Basic
/// credentials, which browsers prompt for.
fn login_needed(state: &ApiState, who: &Principal, repo: Option<&str>) -> Option<Response<Body>> {
    if !state.auth.enabled() {
        return None;
    }
    let allowed = match repo {
        None => !who.is_anonymous() || state.auth.anonymous_has_access(),
        Some(r) => state.auth.allowed(who, r, Action::Pull),
    };
    if allowed {
        return None;
    }
    if who.is_anonymous() {
        let mut resp = ApiError::Registry(RegistryError::Denied("authentication required".into())).into_response();
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        // Basic even in token mode: browsers can only answer Basic.
        let challenge = format!("{}, charset=\"UTF-8\"", state.auth.basic_challenge());
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        Some(resp)
    } else {
        Some(ApiError::Registry(RegistryError::Denied("requested access to the resource is denied".into())).into_response())
    }
}

fn repo_access(state: &ApiState, who: &Principal, name: &str) -> Result<RepoName, Response<Body>> {
    let repo = RepoName::parse(name).ok_or_else(|| ApiError::NameInvalid(name.to_string()).into_response())?;
    match login_needed(state, who, Some(repo.as_str())) {
        Some(resp) => Err(resp),
        None => Ok(repo),
    }
}

fn host(req: &Request<Body>) -> String {
    crate::request_host(req).unwrap_or("localhost").to_string()
}

fn json_response(body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn html_response(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"),
    );
    resp
}

fn pages(total: usize, n: usize) -> usize {
    total.div_ceil(n.clamp(1, berth_registry::search::MAX_SEARCH_PAGE))
}

/// Docker Hub's v1 search format.
fn docker_search(q: &str, page: usize, n: usize, found: &SearchPage) -> serde_json::Value {
    json!({
        "num_results": found.total,
        "num_pages": pages(found.total, n),
        "page": page,
        "page_size": n.clamp(1, berth_registry::search::MAX_SEARCH_PAGE),
        "query": q,
        "results": found.hits.iter().map(|h| json!({
            "name": h.name,
            "description": h.description.clone().unwrap_or_default(),
            "star_count": 0,
            "is_official": false,
            "is_automated": false,
        })).collect::<Vec<_>>(),
    })
}

fn api_search(q: &str, page: usize, n: usize, found: &SearchPage) -> serde_json::Value {
    json!({
        "query": q,
        "page": page,
        "page_size": n.clamp(1, berth_registry::search::MAX_SEARCH_PAGE),
        "num_pages": pages(found.total, n),
        "num_results": found.total,
        // False for broad searches: more than `num_results` repositories match.
        "num_results_exact": !found.more,
        "results": found.hits.iter().map(|h| json!({
            "name": h.name,
            "description": h.description,
            "tags": h.tags,
            "platforms": h.platforms,
            "rank": h.rank,
            "updated_at": h.updated_at,
        })).collect::<Vec<_>>(),
    })
}

fn repo_json(info: &berth_meta::RepositoryInfo) -> serde_json::Value {
    json!({
        "name": info.name,
        "description": info.description,
        "created_at": info.created_at,
        "tags": info.tags.iter().map(|t| json!({
            "name": t.name,
            "digest": t.digest.to_string(),
            "media_type": t.media_type,
            "size": t.size,
            "platforms": t.platforms,
            "pushed_at": t.pushed_at,
            "created": t.created,
            "pull_count": t.pulls,
            "last_pull": t.last_pull,
        })).collect::<Vec<_>>(),
    })
}

// ---- HTML -----------------------------------------------------------------

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str, search: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · Berth</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\
<body><header><a href=\"/\">Berth</a><span class=\"sub\">{}</span></header>\
<main>{body}</main><script src=\"/ui/app.js\"></script></body></html>",
        esc(title),
        esc(search)
    )
}

/// `1.2 MB` style sizes.
fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from a day count (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn chips<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items.into_iter().map(|p| format!("<span class=\"chip\">{}</span>", esc(p))).collect()
}

fn home_page(q: &str, found: &SearchPage) -> String {
    let mut body = format!(
        "<input id=\"q\" class=\"search\" type=\"search\" autocomplete=\"off\" autofocus placeholder=\"Search repositories, tags, labels…\" value=\"{}\">\
<div class=\"hint\">Filters: <code>label:key=value</code>, <code>platform:linux/arm64</code></div><div id=\"results\">\
<div class=\"muted\" id=\"count\">{}{} {}</div>",
        esc(q),
        found.total,
        if found.more { "+" } else { "" },
        if found.total == 1 && !found.more { "repository" } else { "repositories" }
    );
    for h in &found.hits {
        let _ = write!(
            body,
            "<div class=\"card result\"><a class=\"name\" href=\"/r/{0}\">{0}</a>{1}<div>{2}{3}</div></div>",
            esc(&h.name),
            h.description.as_deref().map(|d| format!("<div class=\"muted\">{}</div>", esc(d))).unwrap_or_default(),
            chips(&h.tags),
            chips(&h.platforms)
        );
    }
    body.push_str("</div>");
    layout("Search", &body, "")
}

fn repo_page(info: &berth_meta::RepositoryInfo, host: &str, may_delete: bool) -> String {
    let name = esc(&info.name);
    let first = info.tags.first().map(|t| t.name.as_str()).unwrap_or("latest");
    let pull = esc(&format!("docker pull {host}/{}:{first}", info.name));
    let mut body = format!(
        "<h1>{name}</h1>{}<div class=\"pull\"><code>{pull}</code><button data-copy=\"{pull}\">Copy</button></div>\
<h2>Tags ({})</h2><table class=\"tags\"><thead><tr><th>Tag</th><th>Digest</th><th>Platforms</th><th>Size</th>\
<th>Created</th><th>Pushed</th><th>Pulls</th>{}</tr></thead><tbody>",
        info.description.as_deref().map(|d| format!("<p>{}</p>", esc(d))).unwrap_or_default(),
        info.tags.len(),
        if may_delete { "<th></th>" } else { "" }
    );
    for t in &info.tags {
        let digest = t.digest.to_string();
        let _ = write!(
            body,
            "<tr><td data-k=\"Tag\"><a href=\"/r/{name}/manifests/{tag}\">{tag}</a></td>\
<td class=\"mono\" data-k=\"Digest\"><a href=\"/r/{name}/manifests/{digest}\" title=\"{digest}\">{short}</a></td>\
<td data-k=\"Platforms\">{platforms}</td><td data-k=\"Size\">{size}</td><td data-k=\"Created\">{created}</td>\
<td data-k=\"Pushed\">{pushed}</td><td data-k=\"Pulls\">{pulls}{last}</td>{delete}</tr>",
            tag = esc(&t.name),
            short = short(&digest),
            platforms = chips(&t.platforms),
            size = size(t.size),
            created = esc(t.created.as_deref().map(|c| c.get(..16).unwrap_or(c)).unwrap_or("")).replace('T', " "),
            pushed = time(t.pushed_at),
            pulls = t.pulls,
            last = t.last_pull.map(|l| format!("<div class=\"muted\">last {}</div>", time(l))).unwrap_or_default(),
            delete = if may_delete {
                format!("<td><button class=\"danger\" data-repo=\"{name}\" data-delete-tag=\"{}\">Delete</button></td>", esc(&t.name))
            } else {
                String::new()
            },
        );
    }
    body.push_str("</tbody></table>");
    layout(&info.name, &body, "")
}

fn kv_table<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut out = String::from("<dl class=\"kv card\">");
    for (k, v) in pairs {
        let _ = write!(out, "<dt class=\"mono\">{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    out.push_str("</dl>");
    out
}

fn manifest_page(v: &ManifestView) -> String {
    let repo = esc(&v.repository);
    let mut body = format!(
        "<div class=\"muted\"><a href=\"/r/{repo}\">{repo}</a></div><h1 class=\"mono\">{}</h1>\
<dl class=\"kv card\"><dt>Media type</dt><dd class=\"mono\">{}</dd><dt>Tags</dt><dd>{}</dd><dt>Size</dt><dd>{}</dd>{}{}{}{}<dt>Pulls</dt><dd>{}</dd></dl>",
        esc(&v.digest),
        esc(&v.media_type),
        chips(&v.tags),
        size(v.size as u64),
        v.platform.as_deref().map(|p| format!("<dt>Platform</dt><dd>{}</dd>", esc(p))).unwrap_or_default(),
        v.created.as_deref().map(|p| format!("<dt>Created</dt><dd>{}</dd>", esc(p))).unwrap_or_default(),
        v.artifact_type.as_deref().map(|p| format!("<dt>Artifact type</dt><dd class=\"mono\">{}</dd>", esc(p))).unwrap_or_default(),
        v.subject.as_deref().map(|s| format!("<dt>Subject</dt><dd class=\"mono\"><a href=\"/r/{repo}/manifests/{0}\">{0}</a></dd>", esc(s))).unwrap_or_default(),
        v.pulls,
    );
    if !v.manifests.is_empty() {
        body.push_str("<h2>Platforms</h2><table><thead><tr><th>Platform</th><th>Digest</th><th>Size</th></tr></thead><tbody>");
        for m in &v.manifests {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\"><a href=\"/r/{repo}/manifests/{d}\">{d}</a></td><td>{}</td></tr>",
                esc(m.platform.as_deref().unwrap_or("")),
                size(m.size.max(0) as u64),
                d = esc(&m.digest)
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(c) = &v.config {
        let _ = write!(body, "<h2>Config</h2><div class=\"card mono\">{} · {} · {}</div>", esc(&c.media_type), esc(&c.digest), size(c.size.max(0) as u64));
    }
    if !v.layers.is_empty() {
        let total: i64 = v.layers.iter().map(|l| l.size.max(0)).sum();
        let _ = write!(body, "<h2>Layers ({}, {})</h2><table><thead><tr><th>#</th><th>Digest</th><th>Media type</th><th>Size</th></tr></thead><tbody>", v.layers.len(), size(total as u64));
        for (i, l) in v.layers.iter().enumerate() {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                i + 1,
                esc(&l.digest),
                esc(&l.media_type),
                size(l.size.max(0) as u64)
            );
        }
        body.push_str("</tbody></table>");
    }
    if !v.labels.is_empty() {
        body.push_str("<h2>Labels</h2>");
        body.push_str(&kv_table(&v.labels));
    }
    if !v.annotations.is_empty() {
        body.push_str("<h2>Annotations</h2>");
        body.push_str(&kv_table(&v.annotations));
    }
    if !v.history.is_empty() {
        body.push_str("<h2>History</h2><table><thead><tr><th>Created</th><th>Command</th></tr></thead><tbody>");
        for h in &v.history {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\">{}</td></tr>",
                esc(h.created.as_deref().unwrap_or("")),
                esc(h.created_by.as_deref().or(h.comment.as_deref()).unwrap_or(""))
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(sig) = &v.signatures {
        let status = serde_json::to_value(sig).unwrap_or_default();
        let signer = status["signer"].as_str().map(|s| format!(" by {}", esc(s))).unwrap_or_default();
        let _ = write!(
            body,
            "<h2>Signatures</h2><p>{}{signer} <span class=\"muted\">(policy: {}, {} signature(s) checked)</span></p>",
            esc(status["status"].as_str().unwrap_or("")),
            sig.policy.as_str(),
            sig.status.signatures.len()
        );
    }
    body.push_str("<h2>Referrers</h2>");
    if v.referrers.is_empty() {
        body.push_str("<p class=\"muted\">No signatures, SBOMs or other artifacts refer to this manifest.</p>");
    } else {
        body.push_str("<table><thead><tr><th>Artifact type</th><th>Digest</th><th>Size</th></tr></thead><tbody>");
        for r in &v.referrers {
            let _ = write!(
                body,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\"><a href=\"/r/{repo}/manifests/{d}\">{d}</a></td><td>{}</td></tr>",
                esc(r.artifact_type.as_deref().unwrap_or(&r.media_type)),
                size(r.size),
                d = esc(&r.digest)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(body, "<h2>Manifest</h2><pre>{}</pre>", esc(&v.body));
    layout(&v.digest, &body, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_helpers() {
        assert_eq!(parse("/r/a/b"), Some(Web::RepoPage("a/b")));
        assert_eq!(parse("/r/a/manifests/b/manifests/v1"), Some(Web::ManifestPage("a/manifests/b", "v1")));
        assert_eq!(parse("/api/v1/repositories/x/y"), Some(Web::Repository("x/y")));
        assert_eq!(parse("/v2/x"), None);
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(time(1_709_251_200), "2024-03-01 00:00 UTC");
        assert_eq!(size(1_234_567), "1.2 MB");
        assert_eq!(esc("<a href='x'>"), "&lt;a href=&#39;x&#39;&gt;");
    }
}
