//! The Docker token protocol: short-lived ES256 JWTs whose `access` claim
//! lists what was granted, refresh tokens for `docker login`, and
//! verification of tokens from Berth itself or from trusted external issuers.

use crate::policy::Action;
use crate::AuthFailure;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens and the `service` of challenges.
    pub service: String,
    /// Lifetime of access tokens.
    pub ttl_secs: u64,
    /// Lifetime of refresh tokens (what `docker login` stores).
    pub refresh_ttl_secs: u64,
    /// PEM (PKCS#8) P-256 private key; generated under the data directory when empty.
    pub signing_key: String,
    /// Token endpoint URL announced in challenges; derived from the request when empty.
    pub realm: String,
    /// External token servers whose tokens are accepted.
    pub trusted_issuers: Vec<TrustedIssuer>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "berth".into(),
            service: "berth".into(),
            ttl_secs: 300,
            refresh_ttl_secs: 7 * 24 * 3600,
            signing_key: String::new(),
            realm: String::new(),
            trusted_issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// PEM public key (EC P-256/P-384, RSA or Ed25519).
    pub public_key: String,
}

/// One grant: `{"type":"repository","name":"foo","actions":["pull"]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses `type:name:action,action`.
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Access {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
        })
    }

    pub fn grants(&self, repo: &str, action: Action) -> bool {
        self.kind == "repository"
            && self.name == repo
            && self.actions.iter().any(|a| a == "*" || a == action.as_str())
    }
}

/// The claims of a token. Only `iss`, `aud` and `exp` are required: the
/// others are optional in JWT, and external issuers may leave them out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    /// Checked by the validation, where it may also be an array; not read back.
    #[serde(default, skip_deserializing)]
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default)]
    pub access: Vec<Access>,
    /// `"refresh"` marks a refresh token, never accepted as an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// In refresh tokens: a keyed hash of the user's password hash when the
    /// token was issued, so a password change or removal revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd: Option<String>,
}

#[derive(Clone, Default)]
pub struct TokenRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    pub refresh_token: Option<String>,
    pub scopes: Vec<String>,
    /// Whether a refresh token is wanted (`offline_token=true`, `access_type=offline`).
    pub offline: bool,
}

/// Secrets never reach a `{:?}`.
impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("TokenRequest")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("refresh_token", &hidden(&self.refresh_token))
            .field("scopes", &self.scopes)
            .field("offline", &self.offline)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// Most verified tokens remembered.
const VERIFIED_MAX: usize = 10_000;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: a token is accepted
/// until this long after it expires (the library default is 60).
pub const LEEWAY_SECS: u64 = 10;

pub struct TokenService {
    config: TokenConfig,
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    trusted: Vec<(String, DecodingKey, Algorithm)>,
    /// Key of the password fingerprints in refresh tokens, derived from the
    /// signing key so it is as secret and as lasting.
    binding_key: [u8; 32],
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl TokenService {
    pub fn new(config: &TokenConfig, state_dir: &Path) -> Result<TokenService, String> {
        let key_pem = if config.signing_key.is_empty() {
            let path = state_dir.join("token-signing-key.pem");
            match std::fs::read_to_string(&path) {
                Ok(pem) => pem,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Generated once and kept, so tokens survive restarts and
                    // replicas sharing the data directory agree.
                    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
                    let pem = kp.serialize_pem();
                    std::fs::create_dir_all(state_dir).map_err(|e| e.to_string())?;
                    crate::htpasswd::write_private(&path, pem.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
                    pem
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        } else {
            std::fs::read_to_string(&config.signing_key).map_err(|e| format!("signing_key {}: {e}", config.signing_key))?
        };
        let kp = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| format!("signing key: {e}"))?;
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(|e| format!("signing key: {e}"))?;
        let public_pem = kp.public_key_pem();
        let decoding = DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| format!("signing key: {e}"))?;
        let kid = hex::encode(&sha2::Sha256::digest(kp.public_key_raw())[..16]);
        let mut trusted = Vec::new();
        for t in &config.trusted_issuers {
            let pem = std::fs::read_to_string(&t.public_key).map_err(|e| format!("trusted issuer {}: {}: {e}", t.issuer, t.public_key))?;
            trusted.push((t.issuer.clone(), load_public_key(&pem).map_err(|e| format!("trusted issuer {}: {e}", t.issuer))?));
        }
        let trusted = trusted.into_iter().map(|(i, (k, a))| (i, k, a)).collect();
        let binding_key = sha2::Sha256::new().chain_update(b"berth refresh-token binding\0").chain_update(key_pem.as_bytes()).finalize().into();
        Ok(TokenService { config: config.clone(), verified: Default::default(), encoding, decoding, kid, trusted, binding_key })
    }

    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// `iss` of the tokens this registry issues.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The token endpoint URL announced in challenges.
    pub fn realm(&self, base_url: &str) -> String {
        if self.config.realm.is_empty() {
            format!("{}/token", base_url.trim_end_matches('/'))
        } else {
            self.config.realm.clone()
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with a loaded key")
    }

    /// A keyed hash of `user`'s password hash: changes when the password does,
    /// reveals nothing of it.
    fn password_fingerprint(&self, user: &str, password_hash: &str) -> String {
        let mac = hmac_sha256(&self.binding_key, &[user.as_bytes(), b"\0", password_hash.as_bytes()]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    }

    /// Issues an access token, and a refresh token bound to `refresh_for`
    /// (the subject's current password hash) when given.
    pub fn issue(&self, subject: &str, access: Vec<Access>, refresh_for: Option<&str>) -> TokenResponse {
        let t = now();
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: subject.to_string(),
            aud: self.config.service.clone(),
            exp: t + self.config.ttl_secs,
            nbf: t.saturating_sub(10),
            iat: t,
            jti: Some(format!("{:032x}", rand::random::<u128>())),
            access,
            typ: None,
            pwd: None,
        };
        let token = self.sign(&claims);
        let refresh_token = refresh_for.map(|password_hash| {
            self.sign(&Claims {
                exp: t + self.config.refresh_ttl_secs,
                access: vec![],
                typ: Some("refresh".into()),
                jti: Some(format!("{:032x}", rand::random::<u128>())),
                pwd: Some(self.password_fingerprint(subject, password_hash)),
                ..claims.clone()
            })
        });
        TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.config.ttl_secs,
            issued_at: rfc3339(t),
            refresh_token,
        }
    }

    fn validation(&self, alg: Algorithm, issuer: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[&self.config.service]);
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v
    }

    /// Verifies an access token from Berth or a trusted issuer. Verified
    /// tokens are remembered until they expire, so a client reusing its
    /// token pays for the signature check once.
    pub fn verify_access(&self, token: &str) -> Result<Claims, AuthFailure> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.lock().unwrap().get(&key) {
            if now() <= claims.exp.saturating_add(LEEWAY_SECS) {
                return Ok(claims.clone());
            }
        }
        let claims = self.verify_access_uncached(token)?;
        let mut cache = self.verified.lock().unwrap();
        if cache.len() >= VERIFIED_MAX {
            let t = now();
            cache.retain(|_, c| c.exp >= t);
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(key, claims.clone());
        Ok(claims)
    }

    fn verify_access_uncached(&self, token: &str) -> Result<Claims, AuthFailure> {
        let issuer = peek_issuer(token).ok_or_else(|| AuthFailure::InvalidToken("not a JWT".into()))?;
        let claims = if issuer == self.config.issuer {
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation(Algorithm::ES256, &issuer))
        } else {
            let (_, key, alg) = self
                .trusted
                .iter()
                .find(|(i, _, _)| *i == issuer)
                .ok_or_else(|| AuthFailure::InvalidToken("issuer is not trusted".into()))?;
            jsonwebtoken::decode::<Claims>(token, key, &self.validation(*alg, &issuer))
        }
        .map_err(|e| AuthFailure::InvalidToken(e.to_string()))?
        .claims;
        if claims.typ.as_deref() == Some("refresh") {
            return Err(AuthFailure::InvalidToken("a refresh token is not an access token".into()));
        }
        Ok(claims)
    }

    /// Verifies a refresh token issued by Berth and that its subject's
    /// password (`password_hash` looks up the current hash) has not changed
    /// since; returns the subject.
    pub fn verify_refresh(&self, token: &str, password_hash: impl FnOnce(&str) -> Option<String>) -> Result<String, AuthFailure> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation(Algorithm::ES256, &self.config.issuer))
            .map_err(|e| AuthFailure::InvalidToken(e.to_string()))?
            .claims;
        if claims.typ.as_deref() != Some("refresh") || claims.sub.is_empty() {
            return Err(AuthFailure::InvalidToken("not a refresh token".into()));
        }
        let current = password_hash(&claims.sub).ok_or_else(|| AuthFailure::InvalidToken("user no longer exists".into()))?;
        let expected = self.password_fingerprint(&claims.sub, &current);
        let bound = claims.pwd.is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(p.as_bytes(), expected.as_bytes())));
        if !bound {
            return Err(AuthFailure::InvalidToken("the password changed since this refresh token was issued; log in again".into()));
        }
        Ok(claims.sub)
    }
}

/// HMAC-SHA256 of the concatenated `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Reads `iss` without verifying, only to pick the key to verify with.
fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

fn load_public_key(pem: &str) -> Result<(DecodingKey, Algorithm), String> {
    if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        // P-384 keys are longer; the curve decides the algorithm.
        let alg = if pem.len() > 200 { Algorithm::ES384 } else { Algorithm::ES256 };
        return Ok((k, alg));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
        return Ok((k, Algorithm::EdDSA));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((k, Algorithm::RS256));
    }
    Err("not a PEM public key (EC, Ed25519 or RSA)".into())
}

/// Formats a Unix time as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let a = Access::parse_scope("repository:a/b:pull,push").unwrap();
        assert_eq!((a.kind.as_str(), a.name.as_str()), ("repository", "a/b"));
        assert_eq!(a.actions, vec!["pull", "push"]);
        assert!(a.grants("a/b", Action::Push));
        assert!(!a.grants("a/b", Action::Delete));
        assert!(Access::parse_scope("nonsense").is_none());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn issue_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let svc = TokenService::new(&TokenConfig::default(), dir.path()).unwrap();
        let access = vec![Access { kind: "repository".into(), name: "x".into(), actions: vec!["pull".into()] }];
        let resp = svc.issue("alice", access.clone(), Some("$2b$hash"));
        let claims = svc.verify_access(&resp.token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.access, access);
        let refresh = resp.refresh_token.unwrap();
        assert_eq!(svc.verify_refresh(&refresh, |_| Some("$2b$hash".into())).unwrap(), "alice");
        assert!(svc.verify_access(&refresh).is_err());
        assert!(svc.verify_refresh(&resp.token, |_| Some("$2b$hash".into())).is_err());
        // Tampered payload: signature no longer matches.
        let mut parts: Vec<String> = resp.token.split('.').map(str::to_string).collect();
        let forged = serde_json::json!({"iss":"berth","sub":"alice","aud":"berth","exp":now()+100,"nbf":0,"iat":0,"jti":"x",
            "access":[{"type":"repository","name":"x","actions":["push"]}]});
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(svc.verify_access(&parts.join(".")).is_err());
        // A token from another key (another data directory) is refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = TokenService::new(&TokenConfig::default(), other_dir.path()).unwrap();
        assert!(svc.verify_access(&other.issue("alice", vec![], None).token).is_err());
        // The key persists across restarts.
        let again = TokenService::new(&TokenConfig::default(), dir.path()).unwrap();
        assert!(again.verify_access(&resp.token).is_ok());
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2: key "Jefe" (zero-padded, as HMAC does).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn refresh_tokens_are_bound_to_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let svc = TokenService::new(&TokenConfig::default(), dir.path()).unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let refresh = svc.issue("alice", vec![], Some(&hash)).refresh_token.unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(refresh.split('.').nth(1).unwrap()).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains(&hash) && !text.contains(&hash[7..]), "the hash itself is not in the token: {text}");
        assert_eq!(svc.verify_refresh(&refresh, |u| (u == "alice").then(|| hash.clone())).unwrap(), "alice");
        let changed = bcrypt::hash("pw", 4).unwrap();
        let err = svc.verify_refresh(&refresh, |_| Some(changed)).unwrap_err();
        assert!(err.to_string().contains("password changed"), "{err}");
        let err = svc.verify_refresh(&refresh, |_| None).unwrap_err();
        assert!(err.to_string().contains("no longer exists"), "{err}");
        // Another data directory (another key) computes other fingerprints.
        let other = TokenService::new(&TokenConfig::default(), tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(svc.password_fingerprint("alice", &hash), other.password_fingerprint("alice", &hash));
    }

    /// A token signed by a trusted external issuer with these claims.
    fn external(claims: serde_json::Value) -> Result<Claims, AuthFailure> {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.path().join("ext.pem");
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        let config = TokenConfig {
            trusted_issuers: vec![TrustedIssuer { issuer: "ext".into(), public_key: public.display().to_string() }],
            ..TokenConfig::default()
        };
        let svc = TokenService::new(&config, dir.path()).unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        svc.verify_access(&jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap())
    }

    #[test]
    fn external_tokens_need_only_iss_aud_and_exp() {
        let access = serde_json::json!([{"type": "repository", "name": "x", "actions": ["pull"]}]);
        let c = external(serde_json::json!({"iss": "ext", "aud": "berth", "exp": now() + 60, "access": access})).unwrap();
        assert_eq!((c.sub.as_str(), c.jti.as_deref(), c.access.len()), ("", None, 1));
        // An audience list naming this service; other claims JWT allows.
        let c = external(serde_json::json!({"iss": "ext", "sub": "ci", "aud": ["other", "berth"], "exp": now() + 60, "typ": "Bearer"}));
        assert_eq!(c.unwrap().sub, "ci");
        assert!(external(serde_json::json!({"iss": "ext", "aud": "other", "exp": now() + 60})).is_err());
        assert!(external(serde_json::json!({"iss": "ext", "aud": "berth"})).is_err(), "exp is required");
    }

    #[test]
    fn expiry_leeway_is_small_and_explicit() {
        let exp = |secs_ago: u64| external(serde_json::json!({"iss": "ext", "aud": "berth", "exp": now() - secs_ago}));
        assert!(exp(1).is_ok(), "within {LEEWAY_SECS} s of expiry");
        assert!(exp(LEEWAY_SECS + 5).is_err());
        assert!(exp(30).is_err());
    }
}
