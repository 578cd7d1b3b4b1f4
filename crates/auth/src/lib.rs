//! Authentication and authorization.
//!
//! - [`htpasswd`]: users from an `htpasswd -B` file (bcrypt only);
//! - [`policy`]: who may do what to which repositories;
//! - [`token`]: the Docker token protocol (issuing and verifying JWTs);
//! - [`limiter`]: failed-login rate limiting.
//!
//! [`Auth`] ties them together. It knows nothing of HTTP beyond the text of
//! the `Authorization` and `WWW-Authenticate` headers.

pub mod htpasswd;
pub mod limiter;
pub mod policy;
pub mod token;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use policy::{Action, Rule};
pub use token::{Access, TokenRequest, TokenResponse};

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No authentication: everyone may do everything.
    #[default]
    None,
    /// HTTP Basic with htpasswd users.
    Basic,
    /// The Docker token protocol (Bearer JWTs from `/token`); Basic is also accepted.
    Token,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: Mode,
    /// The htpasswd file (bcrypt hashes).
    pub htpasswd: String,
    /// Realm named in Basic challenges.
    pub realm: String,
    /// Failed logins allowed per user and per client address per minute.
    pub max_failures_per_minute: u32,
    /// Group name → member user names.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Access rules; anything no rule allows is denied.
    pub rules: Vec<Rule>,
    pub token: token::TokenConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: Mode::None,
            htpasswd: String::new(),
            realm: "berth".into(),
            max_failures_per_minute: 10,
            groups: Default::default(),
            rules: Vec::new(),
            token: token::TokenConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("auth.htpasswd: {0}")]
    Htpasswd(String),
    #[error("auth.rules: {0}")]
    Policy(String),
    #[error("auth.token: {0}")]
    Token(String),
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Anonymous,
    /// Authenticated with a password.
    User(String),
    /// Authenticated with a Bearer token: only its grants count for
    /// access. `local` when this registry issued it (its subject is then
    /// one of our users, whose policy decides what listings show).
    Token { subject: String, access: Vec<Access>, local: bool },
}

impl Principal {
    /// Whether no identity stands behind the request: no credentials, or a
    /// token issued to an anonymous caller.
    pub fn is_anonymous(&self) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::User(_) => false,
            Principal::Token { subject, .. } => subject.is_empty(),
        }
    }

    /// The name to log: the user, or `anonymous`.
    pub fn name(&self) -> &str {
        match self {
            Principal::User(n) => n,
            Principal::Token { subject, .. } if !subject.is_empty() => subject,
            Principal::Anonymous | Principal::Token { .. } => "anonymous",
        }
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthFailure {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("too many failed logins; try again later")]
    RateLimited,
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// How long a successful password check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 10_000;
/// Largest Authorization header considered (longer ones are malformed).
const MAX_AUTH_HEADER: usize = 8192;

pub struct Auth {
    config: AuthConfig,
    users: htpasswd::Htpasswd,
    policy: policy::Policy,
    tokens: Option<token::TokenService>,
    limiter: limiter::Limiter,
    /// Keyed by a salted hash of user and password, never the password.
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    cache_salt: [u8; 32],
    /// Password checks in progress, by the same key as `cache`.
    inflight: Mutex<HashMap<[u8; 32], std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// bcrypt is deliberately slow: bound how many run at once.
    bcrypt_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Auth {
    /// Builds the authenticator; `state_dir` keeps the token signing key.
    pub fn new(config: AuthConfig, state_dir: &Path) -> Result<Auth, SetupError> {
        let users = if config.mode == Mode::None {
            htpasswd::Htpasswd::default()
        } else if config.htpasswd.is_empty() {
            return Err(SetupError::Htpasswd("a file is required when auth.mode is basic or token".into()));
        } else {
            htpasswd::Htpasswd::load(Path::new(&config.htpasswd)).map_err(SetupError::Htpasswd)?
        };
        let policy = policy::Policy::new(&config.rules, &config.groups).map_err(SetupError::Policy)?;
        let tokens = match config.mode {
            Mode::Token => Some(token::TokenService::new(&config.token, state_dir).map_err(SetupError::Token)?),
            _ => None,
        };
        let slots = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(Auth {
            limiter: limiter::Limiter::new(config.max_failures_per_minute, Duration::from_secs(60)),
            config,
            users,
            policy,
            tokens,
            cache: Mutex::new(HashMap::new()),
            cache_salt: rand::random(),
            inflight: Mutex::new(HashMap::new()),
            bcrypt_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots)),
        })
    }

    /// An authenticator that lets everyone do everything.
    pub fn disabled() -> Auth {
        Auth::new(AuthConfig::default(), Path::new(".")).expect("default auth config is valid")
    }

    pub fn enabled(&self) -> bool {
        self.config.mode != Mode::None
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    pub fn users_path(&self) -> PathBuf {
        PathBuf::from(&self.config.htpasswd)
    }

    /// Identifies the caller from an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>, client: IpAddr) -> Result<Principal, AuthFailure> {
        if !self.enabled() {
            return Ok(Principal::Anonymous);
        }
        let Some(header) = header else { return Ok(Principal::Anonymous) };
        if header.len() > MAX_AUTH_HEADER {
            return Err(AuthFailure::Malformed("header too long"));
        }
        let (scheme, rest) = header.split_once(' ').ok_or(AuthFailure::Malformed("expected `<scheme> <credentials>`"))?;
        if scheme.eq_ignore_ascii_case("basic") {
            // `Basic Og==` (":"): the Docker engine's v1 search sends empty
            // credentials when it has none. That is no login at all.
            if rest.trim() == "Og==" {
                return Ok(Principal::Anonymous);
            }
            let (user, password) = decode_basic(rest.trim())?;
            self.check_password(&user, &password, client).await.map(Principal::User)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let tokens = self.tokens.as_ref().ok_or(AuthFailure::InvalidToken("token authentication is not enabled".into()))?;
            let claims = tokens.verify_access(rest.trim())?;
            let local = claims.iss == tokens.issuer();
            Ok(Principal::Token { subject: claims.sub, access: claims.access, local })
        } else {
            Err(AuthFailure::Malformed("unsupported scheme (use Basic or Bearer)"))
        }
    }

    /// Verifies a password, with caching and rate limiting.
    pub async fn check_password(&self, user: &str, password: &str, client: IpAddr) -> Result<String, AuthFailure> {
        // The limit comes first: a remembered password must not let a
        // guesser through while the user or address is blocked.
        let user_key = format!("user:{user}");
        let ip_key = format!("ip:{client}");
        if self.limiter.blocked(&user_key) || self.limiter.blocked(&ip_key) {
            tracing::warn!(target: "berth::audit", user, client = %client, "login rate limited");
            return Err(AuthFailure::RateLimited);
        }
        self.reload_users();
        let key = self.cache_key(user, password);
        if let Some(name) = self.cached(&key, user) {
            return Ok(name);
        }
        // One verification per credential at a time: concurrent requests
        // with the same credentials wait for the first and reuse its result
        // instead of each paying for bcrypt.
        let gate = {
            let mut inflight = self.inflight.lock().unwrap();
            inflight.entry(key).or_insert_with(|| std::sync::Arc::new(tokio::sync::Mutex::new(()))).clone()
        };
        let _turn = gate.lock().await;
        // Whatever happens next, including the client hanging up (which
        // drops this future), the gate entry goes.
        let _entry = OnDrop(|| {
            self.inflight.lock().unwrap().remove(&key);
        });
        if let Some(name) = self.cached(&key, user) {
            return Ok(name);
        }
        // A failed check counts against the user and the address, and so
        // does one abandoned half way: otherwise a guesser who hangs up
        // before the answer is never rate limited.
        let succeeded = std::sync::atomic::AtomicBool::new(false);
        let _failure = OnDrop(|| {
            if !succeeded.load(std::sync::atomic::Ordering::Relaxed) {
                self.limiter.fail(&user_key);
                self.limiter.fail(&ip_key);
            }
        });
        // The permit moves into the blocking bcrypt job and is released when
        // that job ends, not when this future is dropped.
        let slot = self.bcrypt_slots.clone().acquire_owned().await.map_err(|_| AuthFailure::BadCredentials)?;
        let ok = self.users.verify_holding(user, password, slot).await;
        if ok {
            let mut cache = self.cache.lock().unwrap();
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (user.to_string(), Instant::now()));
            drop(cache);
            succeeded.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(user.to_string())
        } else {
            tracing::warn!(target: "berth::audit", user, client = %client, "login failed");
            Err(AuthFailure::BadCredentials)
        }
    }

    /// Picks up changes to the htpasswd file; remembered passwords are
    /// forgotten when it changed, so old passwords stop working at once.
    fn reload_users(&self) {
        if self.users.reload_if_changed(htpasswd::RELOAD_CHECK_INTERVAL) {
            self.cache.lock().unwrap().clear();
        }
    }

    fn cached(&self, key: &[u8; 32], user: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap();
        let (name, at) = cache.get(key)?;
        (at.elapsed() < CACHE_TTL && name == user).then(|| name.clone())
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.cache_salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `principal` may perform `action` on repository `repo`.
    /// Whoever presents credentials may do at least what anonymous callers may.
    pub fn allowed(&self, principal: &Principal, repo: &str, action: Action) -> bool {
        if !self.enabled() {
            return true;
        }
        match principal {
            Principal::Anonymous => self.policy.allows(None, repo, action),
            Principal::User(name) => self.policy.allows(Some(name), repo, action),
            Principal::Token { access, .. } => {
                access.iter().any(|a| a.grants(repo, action)) || self.policy.allows(None, repo, action)
            }
        }
    }

    /// Whether a listing (`_catalog`, search) shows `repo` to `principal`:
    /// what they may pull. A token grants access to the repositories it
    /// names, but a catalog token names none: for tokens this registry
    /// issued, the policy of the token's user decides.
    pub fn may_list(&self, principal: &Principal, repo: &str) -> bool {
        match principal {
            Principal::Token { subject, local: true, .. } if !subject.is_empty() => {
                self.allowed(principal, repo, Action::Pull) || self.policy.allows(Some(subject), repo, Action::Pull)
            }
            _ => self.allowed(principal, repo, Action::Pull),
        }
    }

    /// Whether anonymous callers have any access at all.
    pub fn anonymous_has_access(&self) -> bool {
        !self.enabled() || self.policy.anonymous_rules()
    }

    /// The `WWW-Authenticate` value for a 401. `scope` is e.g.
    /// `repository:foo:pull,push`; `base_url` is how the client reached us.
    pub fn challenge(&self, scope: Option<&str>, base_url: &str, error: Option<&str>) -> String {
        match (&self.tokens, self.config.mode) {
            (Some(tokens), Mode::Token) => {
                let realm = tokens.realm(base_url);
                let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", tokens.service());
                if let Some(scope) = scope {
                    v.push_str(&format!(",scope=\"{scope}\""));
                }
                if let Some(e) = error {
                    v.push_str(&format!(",error=\"{e}\""));
                }
                v
            }
            _ => self.basic_challenge(),
        }
    }

    /// A Basic challenge, which browsers answer with a password prompt.
    pub fn basic_challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.config.realm.replace('"', ""))
    }

    /// Serves the token endpoint: authenticates (password, refresh token or
    /// anonymous) and grants the subset of the requested scopes the policy allows.
    pub async fn issue_token(&self, req: TokenRequest, client: IpAddr) -> Result<TokenResponse, AuthFailure> {
        let tokens = self.tokens.as_ref().ok_or(AuthFailure::InvalidToken("token authentication is not enabled".into()))?;
        let subject: Option<String> = match (&req.username, &req.password, &req.refresh_token) {
            (_, _, Some(refresh)) => {
                self.reload_users();
                Some(tokens.verify_refresh(refresh, |user| self.users.hash(user))?)
            }
            (Some(u), Some(p), None) => Some(self.check_password(u, p, client).await?),
            (None, None, None) => None,
            _ => return Err(AuthFailure::BadCredentials),
        };
        let granted: Vec<Access> = req.scopes.iter().filter_map(|s| Access::parse_scope(s)).map(|r| self.grant(subject.as_deref(), r)).collect();
        let summary: Vec<String> = granted
            .iter()
            .filter(|a| !a.actions.is_empty())
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect();
        let user = subject.as_deref().unwrap_or("anonymous");
        tracing::info!(target: "berth::audit", user = %user, client = %client, granted = ?summary, "token issued");
        let refresh_for = match &subject {
            Some(s) if req.offline => self.users.hash(s),
            _ => None,
        };
        Ok(tokens.issue(subject.as_deref().unwrap_or_default(), granted, refresh_for.as_deref()))
    }

    /// The part of one requested scope that `subject` (None: anonymous) is
    /// allowed. `*` stands for every action the caller has there, and for
    /// registry-wide administration when the policy gives `admin`.
    fn grant(&self, subject: Option<&str>, requested: Access) -> Access {
        // Catalog listing is filtered per repository at request time.
        if requested.kind == "registry" && requested.name == "catalog" {
            return requested;
        }
        let mut actions: Vec<String> = Vec::new();
        if requested.kind == "repository" {
            for a in &requested.actions {
                let wanted: &[Action] = match a.as_str() {
                    "*" => &[Action::Pull, Action::Push, Action::Delete, Action::Admin],
                    "pull" => &[Action::Pull],
                    "push" => &[Action::Push],
                    "delete" => &[Action::Delete],
                    _ => &[],
                };
                for w in wanted {
                    if !actions.iter().any(|x| x == w.as_str()) && self.policy.allows(subject, &requested.name, *w) {
                        actions.push(w.as_str().to_string());
                    }
                }
            }
        }
        Access { actions, ..requested }
    }
}

/// Decodes `base64(user:password)`.
pub fn decode_basic(b64: &str) -> Result<(String, String), AuthFailure> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| AuthFailure::Malformed("Basic credentials are not valid base64"))?;
    let text = String::from_utf8(raw).map_err(|_| AuthFailure::Malformed("Basic credentials are not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or(AuthFailure::Malformed("Basic credentials lack a ':'"))?;
    if user.is_empty() {
        return Err(AuthFailure::Malformed("empty user name"));
    }
    Ok((user.to_string(), password.to_string()))
}

/// Runs a closure when dropped: clean-up that must happen also when an
/// async caller is cancelled mid-way.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_decoding() {
        assert_eq!(decode_basic("YTpi").unwrap(), ("a".into(), "b".into()));
        assert!(matches!(decode_basic("!!!"), Err(AuthFailure::Malformed(_))));
        assert!(matches!(decode_basic("YWI="), Err(AuthFailure::Malformed(_)))); // "ab"
    }

    fn token_auth(dir: &Path) -> Auth {
        let htpasswd = dir.join("htpasswd");
        htpasswd::update_file(&htpasswd, "alice", Some("pw"), Some(false)).unwrap();
        htpasswd::update_file(&htpasswd, "root", Some("pw"), Some(false)).unwrap();
        let rules: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"repositories": ["public/**"], "actions": ["pull"], "anonymous": true},
            {"repositories": ["users/{user}/**"], "actions": ["pull", "push"], "users": ["*"]},
            {"repositories": ["**"], "actions": ["admin"], "users": ["root"]},
        ]))
        .unwrap();
        let config = AuthConfig { mode: Mode::Token, htpasswd: htpasswd.display().to_string(), rules, ..AuthConfig::default() };
        Auth::new(config, dir).unwrap()
    }

    fn actions_granted(auth: &Auth, user: Option<&str>, scope: &str) -> Vec<String> {
        auth.grant(user, Access::parse_scope(scope).unwrap()).actions
    }

    #[test]
    fn star_scopes_grant_every_action_the_caller_has() {
        let dir = tempfile::tempdir().unwrap();
        let auth = token_auth(dir.path());
        assert_eq!(actions_granted(&auth, Some("alice"), "repository:users/alice/x:*"), ["pull", "push"]);
        assert_eq!(actions_granted(&auth, Some("alice"), "repository:users/alice/x:pull,*,push"), ["pull", "push"]);
        assert_eq!(actions_granted(&auth, Some("root"), "repository:x:*"), ["pull", "push", "delete", "*"]);
        assert_eq!(actions_granted(&auth, None, "repository:public/x:*"), ["pull"]);
        assert!(actions_granted(&auth, Some("alice"), "repository:priv:*").is_empty());
        assert!(actions_granted(&auth, Some("alice"), "repository:users/alice/x:admin").is_empty());
        let root = Principal::Token { subject: "root".into(), access: vec![auth.grant(Some("root"), Access::parse_scope("repository:**:*").unwrap())], local: true };
        assert!(auth.allowed(&root, "**", Action::Admin), "the admin endpoints' scope");
    }

    #[test]
    fn credentials_never_lose_anonymous_access() {
        let dir = tempfile::tempdir().unwrap();
        let auth = token_auth(dir.path());
        assert_eq!(actions_granted(&auth, Some("alice"), "repository:public/x:pull,push"), ["pull"]);
        let token = Principal::Token { subject: "ci".into(), access: vec![], local: true };
        assert!(auth.allowed(&token, "public/x", Action::Pull));
        assert!(!auth.allowed(&token, "public/x", Action::Push));
        assert!(auth.allowed(&Principal::User("alice".into()), "public/x", Action::Pull));
        assert_eq!(Principal::Token { subject: String::new(), access: vec![], local: true }.name(), "anonymous");
    }
}
