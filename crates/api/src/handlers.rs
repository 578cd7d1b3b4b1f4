//! One function per endpoint: parse, call the registry, build the response.

use crate::error::ApiError;
use crate::route::{self, Route};
use crate::ApiState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use berth_oci::manifest::OCI_INDEX;
use berth_oci::{Algorithm, Digest, ErrorCode, Reference, RepoName};
use berth_auth::{Action, Principal};
use berth_registry::{Mount, Page, UploadStatus};
use berth_storage::{ByteStream, UploadId};
use futures::StreamExt;
use http_body_util::BodyExt;
use std::time::Duration;

type Result<T, E = ApiError> = std::result::Result<T, E>;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub(crate) async fn handle(state: ApiState, req: Request<Body>) -> Response<Body> {
    // Cheap to keep (shared bytes): only a 405 needs the route again.
    let uri = req.uri().clone();
    match dispatch(&state, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110: a 405 names the methods the resource supports.
                let allow = allowed_methods(&route::parse(uri.path()), state.registry.config().delete_enabled);
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            resp
        }
    }
}

/// The methods each endpoint answers (for `Allow` on a 405).
fn allowed_methods(route: &Route<'_>, delete_enabled: bool) -> &'static str {
    match route {
        Route::Base | Route::Health | Route::Metrics => "GET, HEAD",
        Route::Catalog | Route::Tags { .. } | Route::Referrers { .. } | Route::AdminUsage => "GET",
        Route::Manifest { .. } if delete_enabled => "GET, HEAD, PUT, DELETE",
        Route::Manifest { .. } => "GET, HEAD, PUT",
        Route::Blob { .. } if delete_enabled => "GET, HEAD, DELETE",
        Route::Blob { .. } => "GET, HEAD",
        Route::Upload { id: "", .. } => "POST",
        Route::Upload { .. } => "GET, PATCH, PUT, DELETE",
        Route::Token => "GET, POST",
        Route::AdminGc => "POST",
        Route::NotFound => "GET, HEAD",
    }
}

async fn dispatch(state: &ApiState, req: Request<Body>) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let head = method == Method::HEAD;
    match route::parse(&path) {
        Route::Base => match method {
            Method::GET | Method::HEAD => Ok(json(StatusCode::OK, "{}".into(), head)),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Token => Ok(crate::access::token_endpoint(state, req).await),
        Route::Health => match method {
            Method::GET | Method::HEAD => Ok(Response::new(Body::from("ok\n"))),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Metrics => match (&method, &state.metrics) {
            (&Method::GET, Some(render)) => {
                if let Ok(bytes) = state.registry.stored_bytes().await {
                    metrics::gauge!("berth_stored_bytes").set(bytes as f64);
                }
                let mut resp = Response::new(Body::from(render()));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                Ok(resp)
            }
            (&Method::GET, None) => Err(ApiError::NotFound),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Catalog => match method {
            Method::GET => catalog(state, &query, &principal(&req)).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Tags { name } => {
            let repo = repo_name(name)?;
            match method {
                Method::GET => tags(state, &repo, &query).await,
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        Route::Manifest { name, reference } => {
            let repo = repo_name(name)?;
            let reference = parse_reference(reference)?;
            match method {
                Method::GET | Method::HEAD => get_manifest(state, &repo, &reference, req.headers(), head).await,
                Method::PUT => put_manifest(state, &repo, &reference, req).await,
                Method::DELETE => {
                    state.registry.delete_manifest(&repo, &reference).await?;
                    Ok(empty(StatusCode::ACCEPTED))
                }
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        Route::Blob { name, digest } => {
            let repo = repo_name(name)?;
            let digest = parse_digest(digest)?;
            match method {
                Method::GET | Method::HEAD => get_blob(state, &repo, &digest, req.headers(), head).await,
                Method::DELETE => {
                    state.registry.delete_blob(&repo, &digest).await?;
                    Ok(empty(StatusCode::ACCEPTED))
                }
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        Route::Upload { name, id } => {
            let repo = repo_name(name)?;
            if id.is_empty() {
                return match method {
                    Method::POST => {
                        let who = principal(&req);
                        start_upload(state, &repo, &query, &who, req).await
                    }
                    _ => Err(ApiError::MethodNotAllowed),
                };
            }
            let id = UploadId::parse(id).ok_or(ApiError::Registry(berth_registry::RegistryError::BlobUploadUnknown))?;
            match method {
                Method::GET => {
                    let status = state.registry.upload_status(&repo, &id).await?;
                    Ok(upload_response(StatusCode::NO_CONTENT, &repo, &status))
                }
                Method::PATCH => patch_upload(state, &repo, &id, req).await,
                Method::PUT => finish_upload(state, &repo, &id, &query, req).await,
                Method::DELETE => {
                    state.registry.cancel_upload(&repo, &id).await?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        Route::Referrers { name, digest } => {
            let repo = repo_name(name)?;
            let digest = parse_digest(digest)?;
            match method {
                Method::GET => referrers(state, &repo, &digest, &query).await,
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        Route::AdminGc => match method {
            Method::POST => {
                let dry_run = matches!(query.get("dry_run"), Some("true" | "1" | "yes"));
                let report = state.registry.collect_garbage(dry_run).await?;
                Ok(json(StatusCode::OK, serde_json::to_string(&report).unwrap_or_default(), false))
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::AdminUsage => match method {
            Method::GET => {
                let usage = state.registry.usage().await?;
                Ok(json(StatusCode::OK, serde_json::to_string(&usage).unwrap_or_default(), false))
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::NotFound => Err(ApiError::NotFound),
    }
}

// ---- parsing helpers -----------------------------------------------------

/// The caller, as identified by the access middleware.
fn principal(req: &Request<Body>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or(Principal::Anonymous)
}

/// Query parameters, in order, repeated keys kept.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(q.and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn page_size(&self) -> Result<Option<usize>> {
        match self.get("n") {
            None => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| ApiError::BadRequest {
                code: ErrorCode::Unsupported,
                message: format!("query parameter n={n:?} is not a non-negative integer"),
            }),
        }
    }
}

fn repo_name(name: &str) -> Result<RepoName> {
    RepoName::parse(name).ok_or_else(|| ApiError::NameInvalid(name.chars().take(300).collect()))
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|e| ApiError::DigestInvalid(format!("invalid digest {:?}: {e}", truncate(s))))
}

fn parse_reference(s: &str) -> Result<Reference> {
    use berth_oci::name::ReferenceError;
    Reference::parse(s).map_err(|e| match e {
        ReferenceError::InvalidTag => ApiError::Registry(berth_registry::RegistryError::TagInvalid),
        ReferenceError::InvalidDigest(e) => ApiError::DigestInvalid(format!("invalid digest {:?}: {e}", truncate(s))),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Range: bytes=a-b` for blob reads. A header that does not parse, and
/// multiple ranges, are ignored: the whole blob is served, as HTTP allows.
/// A well-formed range outside the blob is the registry's 416.
fn parse_range(headers: &HeaderMap) -> Result<Option<(Option<u64>, Option<u64>)>> {
    let Some(v) = header_str(headers, header::RANGE) else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let num = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() { Some(None) } else { s.parse().ok().map(Some) }
    };
    Ok(match (num(a), num(b)) {
        (Some(Some(first)), Some(Some(last))) if last < first => None,
        (Some(None), Some(None)) => None,
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    })
}

/// `Content-Range: <start>-<end>` on upload chunks (a `bytes ` prefix is
/// tolerated), as the chunk's start and length (the end is inclusive).
fn chunk_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = header_str(headers, header::CONTENT_RANGE) else { return Ok(None) };
    let v = v.trim().trim_start_matches("bytes").trim().trim_start_matches('=');
    let v = v.split('/').next().unwrap_or("");
    let invalid = || ApiError::BadRequest {
        code: ErrorCode::BlobUploadInvalid,
        message: format!("malformed Content-Range {:?}", truncate(v)),
    };
    let (start, end) = v.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(ApiError::Registry(berth_registry::RegistryError::ChunkOutOfOrder { current_size: start }));
    }
    Ok(Some((start, (end - start).saturating_add(1))))
}

/// Fails the body unless it carries exactly the `len` bytes its
/// Content-Range declares; the store then keeps none of it.
fn declared_length(body: ByteStream, len: u64) -> ByteStream {
    use std::io::{Error, ErrorKind};
    let mismatch = move |seen: u64| {
        let what = if seen > len { "more" } else { "fewer" };
        Error::new(ErrorKind::InvalidData, format!("chunk has {what} bytes than the {len} its Content-Range declares"))
    };
    futures::stream::unfold(Some((body, 0u64)), move |state| async move {
        let (mut body, seen) = state?;
        match body.next().await {
            Some(Ok(bytes)) => {
                let seen = seen + bytes.len() as u64;
                if seen > len {
                    Some((Err(mismatch(seen)), None))
                } else {
                    Some((Ok(bytes), Some((body, seen))))
                }
            }
            Some(Err(e)) => Some((Err(e), None)),
            None if seen != len => Some((Err(mismatch(seen)), None)),
            None => None,
        }
    })
    .boxed()
}

/// The body of an upload chunk, held to its Content-Range when it has one.
fn chunk_body(range: Option<(u64, u64)>, body: ByteStream) -> ByteStream {
    match range {
        Some((_, len)) => declared_length(body, len),
        None => body,
    }
}

/// The request body as a byte stream that fails if the client stalls.
fn body_stream(body: Body, idle: Duration) -> ByteStream {
    body.into_data_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .timeout_each(idle)
        .boxed()
}

trait TimeoutEach: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Sized + Send + 'static {
    /// Ends the stream with an error when no item arrives within `idle`.
    fn timeout_each(self, idle: Duration) -> ByteStream {
        let s = Box::pin(self);
        futures::stream::unfold(Some(s), move |state| async move {
            let mut s = state?;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(item)) => Some((item, Some(s))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request body stalled")),
                    None,
                )),
            }
        })
        .boxed()
    }
}

impl<S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Sized + Send + 'static> TimeoutEach for S {}

// ---- response helpers ----------------------------------------------------

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

fn json(status: StatusCode, body: String, head: bool) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(body) });
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn set(resp: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

fn upload_response(status: StatusCode, repo: &RepoName, upload: &UploadStatus) -> Response<Body> {
    let mut resp = empty(status);
    set(&mut resp, header::LOCATION, &format!("/v2/{repo}/blobs/uploads/{}", upload.id));
    // Range is inclusive; an empty upload is reported as 0-0 as clients expect.
    set(&mut resp, header::RANGE, &format!("0-{}", upload.size.saturating_sub(1)));
    set(&mut resp, DOCKER_UPLOAD_UUID, upload.id.as_str());
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response<Body> {
    let mut resp = empty(StatusCode::CREATED);
    set(&mut resp, header::LOCATION, &format!("/v2/{repo}/blobs/{digest}"));
    set(&mut resp, DOCKER_CONTENT_DIGEST, &digest.to_string());
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// `Link: </v2/...?n=N&last=X>; rel="next"` when a page is not the last.
fn paginated(path: &str, page: &Page, body: String) -> Response<Body> {
    let cursor = if page.more { page.items.last().map(String::as_str) } else { None };
    paginated_after(path, cursor, page.items.len(), body)
}

/// A page whose `Link` continues after `cursor` (the last name looked at,
/// which a filtered page need not show) with pages of `n`.
fn paginated_after(path: &str, cursor: Option<&str>, n: usize, body: String) -> Response<Body> {
    let mut resp = json(StatusCode::OK, body, false);
    if let Some(last) = cursor {
        let query = serde_urlencoded::to_string([("n", n.max(1).to_string()), ("last", last.to_string())]).unwrap_or_default();
        set(&mut resp, header::LINK, &format!("<{path}?{query}>; rel=\"next\""));
    }
    resp
}

// ---- endpoints -----------------------------------------------------------

/// Pages scanned at most to fill one filtered catalog page.
const MAX_CATALOG_SCANS: usize = 64;

async fn catalog(state: &ApiState, query: &Query, who: &Principal) -> Result<Response<Body>> {
    let n = query.page_size()?;
    let mut page = state.registry.catalog(n, query.get("last")).await?;
    if state.auth.enabled() {
        // Only repositories the caller may pull; keep scanning to fill the page.
        let want = page.items.len();
        let mut kept: Vec<String> = Vec::new();
        let mut scans = 0;
        let mut last_seen = None;
        loop {
            last_seen = page.items.last().cloned().or(last_seen);
            kept.extend(page.items.drain(..).filter(|r| state.auth.may_list(who, r)));
            scans += 1;
            if kept.len() >= want || !page.more || scans >= MAX_CATALOG_SCANS {
                break;
            }
            page = state.registry.catalog(n, last_seen.as_deref()).await?;
        }
        // Continue after the last name shown when the page is full, else
        // after the last name scanned: a page the caller may see nothing of
        // still links on, so clients reach the repositories beyond it.
        let cursor = if kept.len() > want {
            kept.truncate(want);
            kept.last().cloned()
        } else if page.more {
            last_seen
        } else {
            None
        };
        let body = serde_json::json!({ "repositories": kept }).to_string();
        return Ok(paginated_after("/v2/_catalog", cursor.as_deref(), want, body));
    }
    let body = serde_json::json!({ "repositories": page.items }).to_string();
    Ok(paginated("/v2/_catalog", &page, body))
}

async fn tags(state: &ApiState, repo: &RepoName, query: &Query) -> Result<Response<Body>> {
    let n = query.page_size()?;
    let page = state.registry.list_tags(repo, n, query.get("last")).await?;
    let body = serde_json::json!({ "name": repo.as_str(), "tags": page.items }).to_string();
    Ok(paginated(&format!("/v2/{repo}/tags/list"), &page, body))
}

async fn get_manifest(state: &ApiState, repo: &RepoName, reference: &Reference, headers: &HeaderMap, head: bool) -> Result<Response<Body>> {
    let m = state.registry.pull_manifest(repo, reference).await?;
    let etag = format!("\"{}\"", m.digest);
    // A client that holds this exact manifest (its ETag) gets 304, no body.
    let unchanged = header_str(headers, header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if !head && !unchanged {
        state.registry.record_pull(repo, &m.digest);
    }
    let len = m.body.len();
    if unchanged {
        let mut resp = empty(StatusCode::NOT_MODIFIED);
        set(&mut resp, DOCKER_CONTENT_DIGEST, &m.digest.to_string());
        set(&mut resp, header::ETAG, &etag);
        return Ok(resp);
    }
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(m.body) });
    set(&mut resp, header::CONTENT_TYPE, &m.media_type);
    set(&mut resp, DOCKER_CONTENT_DIGEST, &m.digest.to_string());
    set(&mut resp, header::ETAG, &etag);
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

/// How much of an oversized manifest is read and discarded before the 413
/// is sent: a client still writing its body would otherwise get a broken
/// pipe instead of the error.
const MANIFEST_DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes into memory. A larger one
/// is drained (up to [`MANIFEST_DRAIN_BYTES`] more, never kept) and gives
/// `None`.
async fn read_bounded(mut body: Body, limit: usize, idle: Duration) -> Result<Option<bytes::Bytes>> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    loop {
        // A client that stops sending mid-body is not waited for forever.
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(ApiError::Registry(berth_registry::RegistryError::ManifestInvalid(format!(
                "the body stalled for {} s",
                idle.as_secs()
            ))));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ApiError::Registry(berth_registry::RegistryError::ManifestInvalid(format!("could not read body: {e}"))))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > limit + MANIFEST_DRAIN_BYTES {
            return Ok(None);
        } else {
            buf = bytes::BytesMut::new();
        }
    }
    Ok((seen <= limit).then(|| buf.freeze()))
}

async fn put_manifest(state: &ApiState, repo: &RepoName, reference: &Reference, req: Request<Body>) -> Result<Response<Body>> {
    let limit = state.registry.config().max_manifest_bytes;
    let content_type = header_str(req.headers(), header::CONTENT_TYPE)
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let too_large = || ApiError::Registry(berth_registry::RegistryError::ManifestTooLarge { limit });
    let declared = header_str(req.headers(), header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    if declared.is_some_and(|len| len > (limit + MANIFEST_DRAIN_BYTES) as u64) {
        // Far too large to be worth reading: refuse at once (the client may
        // see the connection close before it reads the answer).
        return Err(too_large());
    }
    let body = read_bounded(req.into_body(), limit, state.body_idle_timeout).await?.ok_or_else(too_large)?;
    let pushed = state.registry.put_manifest(repo, reference, content_type.as_deref(), body).await?;
    let mut resp = empty(StatusCode::CREATED);
    set(&mut resp, header::LOCATION, &format!("/v2/{repo}/manifests/{}", pushed.digest));
    set(&mut resp, DOCKER_CONTENT_DIGEST, &pushed.digest.to_string());
    if let Some(subject) = pushed.subject {
        set(&mut resp, OCI_SUBJECT, &subject.to_string());
    }
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}

async fn get_blob(state: &ApiState, repo: &RepoName, digest: &Digest, headers: &HeaderMap, head: bool) -> Result<Response<Body>> {
    if head {
        let size = state.registry.blob_size(repo, digest).await?;
        let mut resp = empty(StatusCode::OK);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        set(&mut resp, DOCKER_CONTENT_DIGEST, &digest.to_string());
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        return Ok(resp);
    }
    let range = parse_range(headers)?;
    let blob = state.registry.read_blob(repo, digest, range).await?;
    let sent = blob.stream.inspect(|chunk| {
        if let Ok(c) = chunk {
            metrics::counter!("berth_blob_bytes_sent_total").increment(c.len() as u64);
        }
    });
    let mut resp = Response::new(Body::from_stream(sent));
    let len = match blob.range {
        Some(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(&mut resp, header::CONTENT_RANGE, &format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size));
            r.end - r.start
        }
        None => blob.size,
    };
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    set(&mut resp, DOCKER_CONTENT_DIGEST, &digest.to_string());
    set(&mut resp, header::ETAG, &format!("\"{digest}\""));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(resp)
}

async fn start_upload(state: &ApiState, repo: &RepoName, query: &Query, who: &Principal, req: Request<Body>) -> Result<Response<Body>> {
    let registry = &state.registry;
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(mount)?;
        // A source that is invalid, or that the caller may not pull from,
        // cannot lend the blob: fall back to an ordinary upload.
        let from = query
            .get("from")
            .and_then(RepoName::parse)
            .filter(|from| state.auth.allowed(who, from.as_str(), Action::Pull));
        return Ok(match registry.mount_blob(repo, &digest, from.as_ref()).await? {
            Mount::Mounted => blob_created(repo, &digest),
            Mount::Upload(status) => upload_response(StatusCode::ACCEPTED, repo, &status),
        });
    }
    if let Some(digest) = query.get("digest") {
        let digest = parse_digest(digest)?;
        let body = body_stream(req.into_body(), state.body_idle_timeout);
        registry.upload_monolithic(repo, &digest, body).await?;
        return Ok(blob_created(repo, &digest));
    }
    let algorithm = match query.get("digest-algorithm") {
        None => None,
        Some(a) => Some(Algorithm::parse(a).ok_or_else(|| {
            ApiError::DigestInvalid(format!("unsupported digest algorithm {:?} (supported: sha256, sha512)", truncate(a)))
        })?),
    };
    let status = registry.start_upload(repo, algorithm).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &status))
}

async fn patch_upload(state: &ApiState, repo: &RepoName, id: &UploadId, req: Request<Body>) -> Result<Response<Body>> {
    let range = chunk_range(req.headers())?;
    let body = chunk_body(range, body_stream(req.into_body(), state.body_idle_timeout));
    match state.registry.append_chunk(repo, id, range.map(|(start, _)| start), body).await {
        Ok(status) => Ok(upload_response(StatusCode::ACCEPTED, repo, &status)),
        Err(berth_registry::RegistryError::ChunkOutOfOrder { current_size }) => {
            // 416 with where the upload stands, so the client can resume.
            let status = UploadStatus { id: id.clone(), size: current_size };
            let mut resp = ApiError::Registry(berth_registry::RegistryError::ChunkOutOfOrder { current_size }).into_response();
            let ok = upload_response(StatusCode::RANGE_NOT_SATISFIABLE, repo, &status);
            for name in [header::LOCATION, header::RANGE, DOCKER_UPLOAD_UUID] {
                if let Some(v) = ok.headers().get(&name) {
                    resp.headers_mut().insert(name, v.clone());
                }
            }
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

async fn finish_upload(state: &ApiState, repo: &RepoName, id: &UploadId, query: &Query, req: Request<Body>) -> Result<Response<Body>> {
    let digest = query
        .get("digest")
        .ok_or_else(|| ApiError::DigestInvalid("the digest query parameter is required to finish an upload".into()))?;
    let digest = parse_digest(digest)?;
    let range = chunk_range(req.headers())?;
    let body = chunk_body(range, body_stream(req.into_body(), state.body_idle_timeout));
    state.registry.complete_upload(repo, id, &digest, range.map(|(start, _)| start), Some(body)).await?;
    Ok(blob_created(repo, &digest))
}

async fn referrers(state: &ApiState, repo: &RepoName, digest: &Digest, query: &Query) -> Result<Response<Body>> {
    // An empty `artifactType=` filters nothing.
    let filter = query.get("artifactType").filter(|t| !t.is_empty());
    let found = state.registry.referrers(repo, digest, filter).await?;
    let manifests: Vec<serde_json::Value> = found
        .into_iter()
        .map(|r| {
            let mut d = serde_json::json!({
                "mediaType": r.media_type,
                "digest": r.digest.to_string(),
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = t.into();
            }
            if let Some(a) = r.annotations_json.and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok()) {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }).to_string();
    let mut resp = json(StatusCode::OK, body, false);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
