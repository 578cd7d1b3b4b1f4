//! Signature verification and the "only signed images may be pulled"
//! policy. Formats and cryptography live in `berth-sign`; here the
//! registry finds a manifest's signatures (the cosign `sha256-<hex>.sig`
//! tag and signature referrers), reads their layers with a size bound,
//! caches verdicts and decides whether a manifest may be served.
//!
//! The cache key holds the digests of the signature manifests found, so
//! adding or deleting a signature changes the key: a cached verdict never
//! outlives the signatures it was computed from.

use crate::{now_secs, policy::glob_matches, Registry, RegistryError, Result};
use berth_meta::StoredManifest;
use berth_oci::manifest::{ManifestKind, ParsedManifest};
use berth_oci::{Digest, Reference, RepoName, Tag};
use berth_sign::{Check, Format, Outcome, Subject, Trust, Verdict};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What a repository policy does with unsigned content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    #[default]
    Off,
    /// Serve, and log a warning.
    Warn,
    /// Refuse manifest GET/HEAD with 403 DENIED.
    Enforce,
}

impl VerifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Off => "off",
            VerifyMode::Warn => "warn",
            VerifyMode::Enforce => "enforce",
        }
    }
}

/// Verification rules for the repositories some globs match.
#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    pub repositories: Vec<String>,
    pub mode: VerifyMode,
    pub trust: Arc<Trust>,
    /// Refuse to point a tag at content without a valid signature.
    pub require_signed_tags: bool,
}

/// All signature settings; the first policy matching a repository applies.
#[derive(Debug, Clone)]
pub struct SignatureSettings {
    pub policies: Vec<SignaturePolicy>,
    /// Everything configured, for reporting signatures where no policy applies.
    pub all: Arc<Trust>,
    /// Most cached verdicts.
    pub cache_entries: usize,
}

impl Default for SignatureSettings {
    fn default() -> Self {
        SignatureSettings { policies: Vec::new(), all: Arc::new(Trust::default()), cache_entries: 10_000 }
    }
}

impl SignatureSettings {
    pub fn policy_for(&self, repo: &str) -> Option<&SignaturePolicy> {
        self.policies.iter().find(|p| p.repositories.iter().any(|g| glob_matches(g, repo)))
    }
}

/// The signatures of one manifest and what they add up to.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureStatus {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub signatures: Vec<Check>,
    /// When the signatures were verified (seconds since the epoch).
    pub verified_at: i64,
}

/// Signature state as the repository API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// The verification mode of the repository.
    pub policy: VerifyMode,
    #[serde(flatten)]
    pub status: SignatureStatus,
}

/// Verdicts by (repository, digest, trusted set, signature manifests).
#[derive(Default)]
pub(crate) struct VerdictCache {
    map: HashMap<String, SignatureStatus>,
    order: VecDeque<String>,
}

/// Verdicts involving certificates are re-checked after this long (expiry).
const CACHE_TTL_SECS: i64 = 3600;
/// Signature referrers of one manifest that are examined at most.
const MAX_REFERRERS: usize = 16;
/// Manifests whose signatures a repository listing reports at most.
const MAX_SUMMARIES: usize = 200;
/// Parent indexes consulted for a platform manifest at most.
const MAX_PARENTS: usize = 16;

impl VerdictCache {
    fn get(&self, key: &str, now: i64) -> Option<SignatureStatus> {
        self.map.get(key).filter(|s| now - s.verified_at < CACHE_TTL_SECS).cloned()
    }

    fn put(&mut self, key: String, status: SignatureStatus, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.map.insert(key.clone(), status).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

pub(crate) type SharedCache = Mutex<VerdictCache>;

fn is_signature_referrer(artifact_type: Option<&str>) -> bool {
    matches!(artifact_type, Some(t) if t == berth_sign::NOTATION_SIGNATURE
        || t.starts_with("application/vnd.dev.sigstore.bundle")
        || t == "application/vnd.oci.empty.v1+json")
}

impl Registry {
    /// Sets the signature policies and trusted keys.
    pub fn with_signatures(mut self, settings: SignatureSettings) -> Registry {
        self.signatures = settings;
        self
    }

    pub fn signature_settings(&self) -> &SignatureSettings {
        &self.signatures
    }

    /// The signature manifests of `digest` in `repo`: the cosign tag's
    /// manifest and signature referrers.
    async fn signature_artifacts(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<StoredManifest>> {
        let mut found = Vec::new();
        if let Some(tag) = berth_sign::cosign::signature_tag(&digest.to_string()).and_then(|t| Tag::parse(&t)) {
            if let Some(m) = self.meta.get_manifest(repo, &Reference::Tag(tag)).await? {
                found.push(m);
            }
        }
        let referrers = self.meta.referrers(repo, digest).await?;
        for r in referrers.into_iter().filter(|r| is_signature_referrer(r.artifact_type.as_deref())).take(MAX_REFERRERS) {
            if let Some(m) = self.meta.get_manifest(repo, &Reference::Digest(r.digest)).await? {
                if berth_sign::parse_manifest(&m.body).is_some() {
                    found.push(m);
                }
            }
        }
        Ok(found)
    }

    /// Whether a manifest is a signature artifact that enforcement lets
    /// through: signature-only layer types (see
    /// [`berth_sign::is_signature_artifact`]), each present, small and
    /// holding what its type says (never a filesystem layer).
    async fn is_exempt_signature(&self, repo: &RepoName, body: &[u8]) -> bool {
        let Some(layers) = berth_sign::signature_payloads(body) else { return false };
        for (media_type, digest) in layers {
            match self.read_signature_layer(repo, &digest).await {
                Some(bytes) if berth_sign::is_payload_content(&media_type, &bytes) => {}
                _ => return false,
            }
        }
        true
    }

    /// Reads a signature layer, at most [`berth_sign::MAX_LAYER_BYTES`].
    async fn read_signature_layer(&self, repo: &RepoName, digest: &str) -> Option<Vec<u8>> {
        let digest: Digest = digest.parse().ok()?;
        self.meta.repo_blob(repo, &digest).await.ok()??;
        let mut stream = self.blobs.read(&digest, None).await.ok()?;
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.ok()?);
            if buf.len() as u64 > berth_sign::MAX_LAYER_BYTES {
                return None;
            }
        }
        Some(buf)
    }

    /// Verifies the signatures of the manifest `digest` (whose bytes are
    /// `body`) in `repo` against `trust`. Cached.
    pub async fn signature_status(&self, repo: &RepoName, digest: &Digest, body: &[u8], trust: &Trust) -> Result<SignatureStatus> {
        let artifacts = self.signature_artifacts(repo, digest).await?;
        let mut key = format!("{repo}\n{digest}\n{}", trust.fingerprint());
        for a in &artifacts {
            key.push('\n');
            key.push_str(&a.digest.to_string());
        }
        let now = now_secs();
        if let Some(hit) = self.sig_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key, now) {
            metrics::counter!("berth_signature_cache_hits_total").increment(1);
            return Ok(hit);
        }
        let digest_text = digest.to_string();
        let subject = Subject { digest: &digest_text, size: body.len() as u64, body };
        let mut checks = Vec::new();
        for a in &artifacts {
            let artifact = a.digest.to_string();
            let Some(parsed) = berth_sign::parse_manifest(&a.body) else {
                checks.push(Check {
                    format: Format::Cosign,
                    artifact,
                    outcome: Outcome::Invalid { detail: "the manifest under the signature tag is not a cosign signature".into() },
                });
                continue;
            };
            if parsed.layers.is_empty() {
                checks.push(Check {
                    format: parsed.format,
                    artifact: artifact.clone(),
                    outcome: Outcome::Invalid { detail: "the signature manifest has no usable signature layer".into() },
                });
            }
            for layer in &parsed.layers {
                let outcome = match self.read_signature_layer(repo, &layer.digest).await {
                    Some(bytes) => berth_sign::verify_layer(parsed.format, layer, &bytes, subject, trust, now),
                    None => Outcome::Invalid { detail: format!("signature layer {} is missing or too large", layer.digest) },
                };
                checks.push(Check { format: parsed.format, artifact: artifact.clone(), outcome });
            }
        }
        let verdict = Verdict::of(&checks);
        metrics::counter!("berth_signature_verifications_total", "result" => verdict.label()).increment(1);
        let status = SignatureStatus { verdict, signatures: checks, verified_at: now };
        let cap = self.signatures.cache_entries;
        self.sig_cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, status.clone(), cap);
        Ok(status)
    }

    /// `Ok(())` when `manifest` may be served under `trust`, else why not:
    /// it is signed; or it is a platform manifest of a signed index; or it
    /// is an index whose every platform manifest is signed.
    async fn acceptable(&self, repo: &RepoName, digest: &Digest, body: &[u8], trust: &Trust) -> Result<Result<(), String>> {
        let own = self.signature_status(repo, digest, body, trust).await?;
        if own.verdict.is_signed() {
            return Ok(Ok(()));
        }
        for parent in self.meta.parents(repo, digest).await?.into_iter().take(MAX_PARENTS) {
            if let Some(p) = self.meta.get_manifest(repo, &Reference::Digest(parent.clone())).await? {
                if self.signature_status(repo, &parent, &p.body, trust).await?.verdict.is_signed() {
                    return Ok(Ok(()));
                }
            }
        }
        if let Ok(parsed) = ParsedManifest::parse(body, None) {
            let children: Vec<_> = parsed
                .manifests
                .iter()
                .filter(|d| {
                    // Build attestations ride along with images; they are not served as images.
                    d.annotations.as_ref().and_then(|a| a.get("vnd.docker.reference.type")).map(String::as_str)
                        != Some("attestation-manifest")
                })
                .collect();
            if parsed.kind == ManifestKind::Index && !children.is_empty() {
                let mut all = true;
                for child in children {
                    let signed = match self.meta.get_manifest(repo, &Reference::Digest(child.digest.clone())).await? {
                        Some(c) => self.signature_status(repo, &c.digest, &c.body, trust).await?.verdict.is_signed(),
                        None => false,
                    };
                    if !signed {
                        all = false;
                        break;
                    }
                }
                if all {
                    return Ok(Ok(()));
                }
            }
        }
        Ok(Err(own.verdict.reason(&digest.to_string())))
    }

    /// A manifest for a client pull (GET/HEAD): as [`Registry::get_manifest`],
    /// then the repository's signature policy. Signature artifacts are
    /// always served, so clients can fetch and check them.
    pub async fn pull_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let m = self.get_manifest(repo, reference).await?;
        let Some(policy) = self.signatures.policy_for(repo.as_str()) else { return Ok(m) };
        if policy.mode == VerifyMode::Off || self.is_exempt_signature(repo, &m.body).await {
            return Ok(m);
        }
        match self.acceptable(repo, &m.digest, &m.body, &policy.trust).await? {
            Ok(()) => Ok(m),
            Err(reason) if policy.mode == VerifyMode::Warn => {
                metrics::counter!("berth_signature_policy_total", "mode" => "warn", "result" => "served_unverified").increment(1);
                tracing::warn!(target: "berth::signatures", repository = %repo, digest = %m.digest, reason = %reason, "serving a manifest without a valid signature (verify = warn)");
                Ok(m)
            }
            Err(reason) => {
                metrics::counter!("berth_signature_policy_total", "mode" => "enforce", "result" => "denied").increment(1);
                tracing::info!(target: "berth::signatures", repository = %repo, digest = %m.digest, reason = %reason, "refused a manifest without a valid signature");
                Err(RegistryError::SignatureRequired(reason))
            }
        }
    }

    /// With `require_signed_tags`, refuses to tag content that has no valid
    /// signature yet (push by digest, sign, then tag).
    pub(crate) async fn check_signed_tag(&self, repo: &RepoName, digest: &Digest, body: &[u8]) -> Result<()> {
        let Some(policy) = self.signatures.policy_for(repo.as_str()) else { return Ok(()) };
        if !policy.require_signed_tags || policy.mode == VerifyMode::Off || self.is_exempt_signature(repo, body).await {
            return Ok(());
        }
        match self.acceptable(repo, digest, body, &policy.trust).await? {
            Ok(()) => Ok(()),
            Err(reason) => Err(RegistryError::SignatureRequired(format!(
                "tags in {repo} may only point at signed content (push by digest, sign, then tag): {reason}"
            ))),
        }
    }

    /// Deletes the cosign signatures of `subject` (the manifest its
    /// `sha256-<hex>.sig` tag points at, when that is a signature), as
    /// referrers are deleted with their subject. Returns what was deleted.
    pub(crate) async fn delete_cosign_signatures(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        let Some(tag) = berth_sign::cosign::signature_tag(&subject.to_string()).and_then(|t| Tag::parse(&t)) else {
            return Ok(Vec::new());
        };
        let Some(m) = self.meta.get_manifest(repo, &Reference::Tag(tag.clone())).await? else { return Ok(Vec::new()) };
        // Deleting the signature drops every tag on it: none may be immutable.
        if !berth_sign::is_signature_artifact(&m.body) || self.refuse_immutable(repo, &m.digest).await.is_err() {
            return Ok(Vec::new());
        }
        match self.meta.delete_manifest(repo, &m.digest).await {
            Ok(true) => Ok(vec![m.digest]),
            Ok(false) | Err(berth_meta::MetaError::InUse { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Signature state of several manifests (the tags of a repository
    /// page), at most [`MAX_SUMMARIES`]; signature artifacts are skipped.
    pub async fn signature_reports(&self, repo: &RepoName, digests: &[Digest]) -> Result<HashMap<Digest, SignatureReport>> {
        let mut out = HashMap::new();
        for d in digests {
            if out.len() >= MAX_SUMMARIES || out.contains_key(d) {
                continue;
            }
            let Some(m) = self.meta.get_manifest(repo, &Reference::Digest(d.clone())).await? else { continue };
            if berth_sign::is_signature_artifact(&m.body) {
                continue;
            }
            out.insert(d.clone(), self.signature_report(repo, d, &m.body).await?);
        }
        Ok(out)
    }

    /// Signature state of a manifest for the repository API.
    pub async fn signature_report(&self, repo: &RepoName, digest: &Digest, body: &[u8]) -> Result<SignatureReport> {
        let policy = self.signatures.policy_for(repo.as_str());
        let trust = policy.map(|p| p.trust.clone()).unwrap_or_else(|| self.signatures.all.clone());
        let status = self.signature_status(repo, digest, body, &trust).await?;
        Ok(SignatureReport { policy: policy.map(|p| p.mode).unwrap_or_default(), status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded() {
        let mut c = VerdictCache::default();
        let s = SignatureStatus { verdict: Verdict::Unsigned, signatures: vec![], verified_at: 100 };
        for i in 0..10 {
            c.put(format!("k{i}"), s.clone(), 3);
        }
        assert_eq!(c.map.len(), 3);
        assert!(c.get("k9", 100).is_some());
        assert!(c.get("k0", 100).is_none());
        assert!(c.get("k9", 100 + CACHE_TTL_SECS).is_none());
    }
}
