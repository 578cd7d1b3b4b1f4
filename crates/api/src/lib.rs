//! The HTTP layer. It parses requests of the distribution spec into calls
//! on [`Registry`] and turns results and errors into responses. It holds no
//! registry logic of its own.
//!
//! - [`route`] maps a URL path to an endpoint (names contain slashes, so
//!   the spec's paths are parsed by hand rather than by a router);
//! - [`handlers`] run one endpoint each;
//! - [`error`] is the single place where errors become status codes and
//!   OCI error bodies;
//! - [`access`] authenticates, authorizes and audits each request;
//! - [`observe`] logs one line per request and records metrics;
//! - `web` serves search (`/v1/search`, `/api/v1/…`) and the web interface.

pub mod access;
pub mod error;
mod handlers;
mod observe;
pub mod route;
mod web;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response};
use berth_registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Renders the Prometheus exposition text.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub auth: Arc<berth_auth::Auth>,
    pub metrics: Option<MetricsRender>,
    /// Longest wait for the next piece of a request body before giving up.
    pub body_idle_timeout: Duration,
    /// Listening on a loopback address: requests must name a loopback host.
    pub loopback_only: bool,
}

/// The complete HTTP application.
pub fn app(state: ApiState) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::enforce))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

async fn dispatch(State(state): State<ApiState>, req: Request<Body>) -> Response<Body> {
    if state.loopback_only && !names_loopback(&req) {
        // DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends
        // `Host: evil.example`. Local clients say 127.0.0.1 or localhost.
        return error::ApiError::Registry(berth_registry::RegistryError::Denied(
            "this registry listens on loopback only: address it as 127.0.0.1, [::1] or localhost".into(),
        ))
        .into_response();
    }
    if is_cross_site_write(&req) {
        return error::ApiError::Registry(berth_registry::RegistryError::Denied(
            "cross-site request refused: changes come from registry clients or pages of this registry".into(),
        ))
        .into_response();
    }
    if let Some(incoming) = web::Incoming::of(&req) {
        return web::handle(&state, incoming).await;
    }
    handlers::handle(state, req).await
}

/// A request that changes something, sent by a browser on behalf of a page
/// from another site: a plain form can POST without a preflight, and the
/// browser would attach the credentials it holds for the registry. Registry
/// clients send neither header, so only browsers are affected.
fn is_cross_site_write(req: &Request<Body>) -> bool {
    use axum::http::{header, Method};
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    request_host(req) != Some(origin_host)
}

/// Whether the request addresses a loopback host (or names none).
fn names_loopback(req: &Request<Body>) -> bool {
    let Some(host) = request_host(req) else { return true };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host (and port) the client addressed: the `Host` header, or in
/// HTTP/2 the request's `:authority`. Only plain host characters pass, as
/// it is written back into challenges and pages.
pub(crate) fn request_host(req: &Request<Body>) -> Option<&str> {
    req.headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty() && h.len() < 256 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(method).uri("/admin/gc");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1:5000", "127.0.0.1", "localhost:5000", "LOCALHOST", "[::1]:5000", "127.8.9.10:1", "reg.localhost:5000"] {
            assert!(names_loopback(&req("GET", &[("host", host)])), "{host}");
        }
        for host in ["evil.example:5000", "10.0.0.1:5000", "localhost.evil.example", "[2001:db8::1]:5000"] {
            assert!(!names_loopback(&req("GET", &[("host", host)])), "{host}");
        }
    }

    #[test]
    fn cross_site_writes_are_recognized() {
        assert!(!is_cross_site_write(&req("POST", &[("host", "reg:5000")])));
        assert!(!is_cross_site_write(&req("POST", &[("host", "reg:5000"), ("origin", "https://reg:5000")])));
        assert!(is_cross_site_write(&req("POST", &[("host", "reg:5000"), ("origin", "https://evil.example")])));
        assert!(is_cross_site_write(&req("DELETE", &[("host", "reg:5000"), ("sec-fetch-site", "cross-site")])));
        assert!(!is_cross_site_write(&req("DELETE", &[("host", "reg:5000"), ("sec-fetch-site", "same-origin")])));
        assert!(!is_cross_site_write(&req("GET", &[("host", "reg:5000"), ("origin", "https://evil.example")])));
    }
}
