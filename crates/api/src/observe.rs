//! One structured log line and a few metrics per request.

use crate::route;
use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderName, HeaderValue, Request, Response};
use axum::middleware::Next;
use std::time::Instant;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// Pages come only from the binary: no inline code, nothing from elsewhere,
/// never framed. On API responses it costs nothing and stops a pushed body
/// from ever running as a page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The log and metrics label of a path: the registry API's routes, or the
/// search API and web interface served beside it.
fn route_label(path: &str) -> &'static str {
    match route::parse(path) {
        route::Route::NotFound if path == "/v1/search" || path == "/v1/_ping" => "docker_search",
        route::Route::NotFound if path.starts_with("/api/v1/") => "search_api",
        route::Route::NotFound if path == "/" || path.starts_with("/r/") || path.starts_with("/ui/") => "ui",
        r => r.label(),
    }
}

pub(crate) async fn observe(req: Request<Body>, next: Next) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_label(&path);
    let request_id = format!("{:016x}", rand::random::<u64>());
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);

    let mut resp = next.run(req).await;

    let status = resp.status().as_u16();
    let bytes_out = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| resp.body().size_hint().exact())
        .unwrap_or(0);
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let headers = resp.headers_mut();
    headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));

    let status_label = status.to_string();
    metrics::counter!("berth_http_requests_total", "route" => route, "method" => method.to_string(), "status" => status_label).increment(1);
    metrics::histogram!("berth_http_request_duration_seconds", "route" => route).record(elapsed.as_secs_f64());
    metrics::counter!("berth_http_request_bytes_total").increment(bytes_in);
    metrics::counter!("berth_http_response_bytes_total").increment(bytes_out);
    tracing::info!(
        target: "berth::access",
        request_id = %request_id,
        method = %method,
        path = %path,
        route,
        status,
        bytes_in,
        bytes_out,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}
