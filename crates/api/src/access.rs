//! Authentication and authorization of each request, the token endpoint,
//! and the audit trail. Decisions come from `berth-auth`; this module only
//! says which access each endpoint needs and renders challenges.

use crate::route::{self, Route};
use crate::ApiState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::middleware::Next;
use berth_auth::{Action, AuthFailure, Mode, Principal, TokenRequest};
use berth_oci::ErrorCode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The peer address, inserted by the server for each connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Whether the connection is TLS, inserted by the server.
#[derive(Debug, Clone, Copy)]
pub struct Tls(pub bool);

/// What an endpoint needs.
enum Needs<'a> {
    /// No identity: credentials are not even looked at (the token endpoint
    /// reads its own).
    Nothing,
    /// Anyone, but credentials that are presented must be valid: search and
    /// the web pages answer according to who asks.
    Anyone,
    /// Any identified caller (the `/v2/` login probe).
    Identity,
    /// Authentication if the caller has no anonymous access; results are filtered.
    Listing,
    Repo(&'a str, Action),
}

fn needs<'a>(route: &Route<'a>, method: &Method) -> Needs<'a> {
    match route {
        Route::Base => Needs::Identity,
        Route::Catalog => Needs::Listing,
        Route::Tags { name } | Route::Referrers { name, .. } => Needs::Repo(name, Action::Pull),
        Route::Manifest { name, .. } | Route::Blob { name, .. } => match *method {
            Method::PUT => Needs::Repo(name, Action::Push),
            Method::DELETE => Needs::Repo(name, Action::Delete),
            _ => Needs::Repo(name, Action::Pull),
        },
        Route::Upload { name, .. } => Needs::Repo(name, Action::Push),
        // Registry-wide administration: the admin action on every repository.
        Route::AdminGc | Route::AdminUsage => Needs::Repo("**", Action::Admin),
        Route::Token | Route::Health | Route::Metrics => Needs::Nothing,
        Route::NotFound => Needs::Anyone,
    }
}

fn client_ip(req: &Request<Body>) -> IpAddr {
    req.extensions().get::<ClientAddr>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// `scheme://host` as the client addressed us, for the token realm.
fn base_url(req: &Request<Body>) -> String {
    let tls = req.extensions().get::<Tls>().is_some_and(|t| t.0);
    let host = crate::request_host(req).unwrap_or("localhost");
    format!("{}://{host}", if tls { "https" } else { "http" })
}

fn scope_for(repo: &str, action: Action) -> String {
    match action {
        // Docker asks for pull and push together when pushing.
        Action::Push => format!("repository:{repo}:pull,push"),
        Action::Delete => format!("repository:{repo}:delete"),
        Action::Pull => format!("repository:{repo}:pull"),
        Action::Admin => format!("repository:{repo}:*"),
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code.as_str(), "message": message, "detail": null}]});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn unauthorized(state: &ApiState, req: &Request<Body>, scope: Option<&str>, why: &str, invalid_token: bool) -> Response<Body> {
    let mut resp = error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, why);
    let challenge = state.auth.challenge(scope, &base_url(req), invalid_token.then_some("invalid_token"));
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Middleware: identify the caller, enforce the endpoint's access, audit.
pub(crate) async fn enforce(State(state): State<ApiState>, mut req: Request<Body>, next: Next) -> Response<Body> {
    if !state.auth.enabled() {
        req.extensions_mut().insert(Principal::Anonymous);
        return next.run(req).await;
    }
    // Which of several would count is anybody's guess: refuse them all.
    if req.headers().get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "more than one Authorization header");
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let route = route::parse(&path);
    let needs = needs(&route, &method);
    // An invalid name is refused before it is matched against rules or
    // written into a challenge (names are bounded by the grammar).
    if let Needs::Repo(repo, _) = &needs {
        if *repo != "**" && berth_oci::RepoName::parse(repo).is_none() {
            return error(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, "invalid repository name");
        }
    }
    let ip = client_ip(&req);
    let scope = match &needs {
        Needs::Repo(repo, action) => Some(scope_for(repo, *action)),
        Needs::Listing => Some("registry:catalog:*".to_string()),
        _ => None,
    };
    let header = match &needs {
        Needs::Nothing => None,
        _ => req.headers().get(header::AUTHORIZATION).map(|h| h.to_str().map_err(|_| ())),
    };
    let principal = match header {
        Some(Err(())) => Err(AuthFailure::Malformed("header is not visible ASCII")),
        Some(Ok(h)) => state.auth.authenticate(Some(h), ip).await,
        None => Ok(Principal::Anonymous),
    };
    // Credentials that fail are never taken for no credentials.
    let principal = match principal {
        Ok(p) => p,
        Err(AuthFailure::RateLimited) => {
            return error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, "too many failed logins; try again later");
        }
        Err(e) => {
            let invalid_token = matches!(e, AuthFailure::InvalidToken(_));
            let mut resp = unauthorized(&state, &req, scope.as_deref(), &e.to_string(), invalid_token);
            if matches!(needs, Needs::Anyone) && state.auth.mode() == Mode::Token {
                // Web pages: browsers cannot get tokens, but can ask for a password again.
                if let Ok(v) = HeaderValue::from_str(&state.auth.basic_challenge()) {
                    resp.headers_mut().append(header::WWW_AUTHENTICATE, v);
                }
            }
            return resp;
        }
    };
    let anonymous = principal == Principal::Anonymous;
    let verdict = match &needs {
        Needs::Nothing | Needs::Anyone => Ok(()),
        Needs::Identity | Needs::Listing if anonymous && !(matches!(needs, Needs::Listing) && state.auth.anonymous_has_access()) => {
            Err(None)
        }
        Needs::Identity | Needs::Listing => Ok(()),
        Needs::Repo(repo, action) => {
            if state.auth.allowed(&principal, repo, *action) {
                Ok(())
            } else {
                Err(Some((*repo, *action)))
            }
        }
    };
    if let Err(what) = verdict {
        // An anonymous request that only needs an identity is the first
        // step of every login (clients ping /v2/ without credentials and
        // read the challenge): a debug line, not an audit warning.
        if what.is_none() && anonymous {
            tracing::debug!(target: "berth::audit", client = %ip, method = %method, path = %path, "challenge sent");
        } else {
            tracing::warn!(
                target: "berth::audit",
                user = principal.name(), client = %ip, method = %method, path = %path,
                action = what.map(|(_, a)| a.as_str()).unwrap_or("login"), result = "denied",
                "access denied"
            );
        }
        // A caller with no identity (including an anonymous token) is asked
        // to log in; an identified one is denied.
        return if principal.is_anonymous() {
            unauthorized(&state, &req, scope.as_deref(), "authentication required", false)
        } else {
            error(StatusCode::FORBIDDEN, ErrorCode::Denied, "requested access to the resource is denied")
        };
    }
    let user = principal.name().to_string();
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    let auditable = matches!(
        (&route, &method),
        (Route::Manifest { .. }, &Method::PUT) | (Route::Manifest { .. } | Route::Blob { .. }, &Method::DELETE) | (Route::Upload { .. }, &Method::PUT) | (Route::AdminGc, &Method::POST)
    );
    if auditable {
        tracing::info!(
            target: "berth::audit",
            user = %user, client = %ip, method = %method, path = %path, status = resp.status().as_u16(),
            result = if resp.status().is_success() { "ok" } else { "failed" },
            "change"
        );
    }
    resp
}

/// Largest token request form accepted.
const MAX_FORM: usize = 64 * 1024;

/// `GET /token` (Basic credentials, `scope=` repeated) and `POST /token`
/// (OAuth2 form: `grant_type=password|refresh_token`).
pub(crate) async fn token_endpoint(state: &ApiState, req: Request<Body>) -> Response<Body> {
    let ip = client_ip(&req);
    let mut token_req = TokenRequest::default();
    let pairs: Vec<(String, String)> = if req.method() == Method::GET {
        if let Some(h) = req.headers().get(header::AUTHORIZATION) {
            let Ok(h) = h.to_str() else {
                return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "malformed Authorization header");
            };
            match h.split_once(' ') {
                Some((scheme, cred)) if scheme.eq_ignore_ascii_case("basic") => match berth_auth::decode_basic(cred.trim()) {
                    Ok((u, p)) => {
                        token_req.username = Some(u);
                        token_req.password = Some(p);
                    }
                    Err(e) => return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, &e.to_string()),
                },
                _ => return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "use Basic credentials at the token endpoint"),
            }
        }
        req.uri().query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
    } else if req.method() == Method::POST {
        let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), MAX_FORM));
        let body = match tokio::time::timeout(state.body_idle_timeout, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "token request form too large or unreadable"),
            Err(_) => return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "token request form did not arrive in time"),
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        match get("grant_type").as_deref() {
            Some("password") => {
                token_req.username = get("username");
                token_req.password = get("password");
                if token_req.username.is_none() || token_req.password.is_none() {
                    return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "username and password are required");
                }
            }
            Some("refresh_token") => {
                token_req.refresh_token = get("refresh_token");
                if token_req.refresh_token.is_none() {
                    return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "refresh_token is required");
                }
            }
            _ => return error(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "grant_type must be password or refresh_token"),
        }
        if get("access_type").as_deref() == Some("offline") {
            token_req.offline = true;
        }
        // OAuth2 sends scopes space-separated in one field.
        pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(|s| ("scope".to_string(), s.to_string())).collect::<Vec<_>>())
            .collect()
    } else {
        return error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported, "use GET or POST");
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "scope" => token_req.scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
            "offline_token" if v == "true" => token_req.offline = true,
            _ => {}
        }
    }
    token_req.scopes.truncate(32);
    match state.auth.issue_token(token_req, ip).await {
        Ok(t) => {
            let mut resp = Response::new(Body::from(serde_json::to_string(&t).unwrap_or_default()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(AuthFailure::RateLimited) => error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, "too many failed logins; try again later"),
        Err(e) => error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, &e.to_string()),
    }
}
