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
    if let Some(incoming) = web::Incoming::of(&req) {
        return web::handle(&state, incoming).await;
    }
    handlers::handle(state, req).await
}
