//! Image signatures: the formats people push (cosign's `sha256-<hex>.sig`
//! tag scheme with simple-signing payloads, sigstore bundles as OCI
//! referrers, Notary Project JWS envelopes as OCI referrers), trusted keys
//! and certificate stores, and verification of one signature against one
//! manifest. Pure: the registry reads manifests and blobs and hands the
//! bytes in; nothing here does I/O.

mod bundle;
pub mod cosign;
pub mod keys;
mod notation;

pub use keys::{KeyKind, PublicKey, SigningKey};
pub use notation::TrustStore;

use serde::Serialize;
use std::collections::BTreeMap;

/// Layer of a cosign signature manifest: the simple-signing payload.
pub const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding the base64 signature over a cosign layer's bytes.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Artifact and layer type of a sigstore bundle attached as a referrer.
pub const SIGSTORE_BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Artifact type of a Notary Project signature.
pub const NOTATION_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
/// Notary Project JWS envelope layer.
pub const JOSE_JSON: &str = "application/jose+json";
/// Notary Project COSE envelope layer (recognized, not verified).
pub const COSE: &str = "application/cose";
/// DSSE envelopes (cosign attestations): not runnable content.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";

/// Most bytes of one signature layer that are read.
pub const MAX_LAYER_BYTES: u64 = 256 * 1024;
/// Most layers of one signature manifest that are checked.
pub const MAX_LAYERS: usize = 32;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SignError {
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Certificate(String),
}

/// The format of a signature artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// cosign's simple signing, under the `sha256-<hex>.sig` tag.
    Cosign,
    /// A sigstore bundle attached as a referrer.
    SigstoreBundle,
    /// A Notary Project signature attached as a referrer.
    Notation,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cosign => "cosign",
            Format::SigstoreBundle => "sigstore-bundle",
            Format::Notation => "notation",
        }
    }
}

/// One layer of a signature manifest.
#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// A manifest recognized as a signature artifact, with the layers to read.
#[derive(Debug, Clone)]
pub struct SignatureManifest {
    pub format: Format,
    /// The signature layers (at most [`MAX_LAYERS`]).
    pub layers: Vec<Layer>,
    /// Layers beyond the limit, or of unexpected types or sizes, skipped.
    pub skipped: usize,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    /// Present in indexes (which are never signature artifacts).
    manifests: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn is_bundle_type(t: &str) -> bool {
    t == SIGSTORE_BUNDLE_V03 || t.starts_with("application/vnd.dev.sigstore.bundle")
}

/// Recognizes a signature manifest; `None` for anything else (images,
/// SBOMs, malformed JSON).
pub fn parse_manifest(body: &[u8]) -> Option<SignatureManifest> {
    let raw: RawManifest = serde_json::from_slice(body).ok()?;
    let artifact = raw.artifact_type.as_deref().or(raw.config.as_ref().map(|c| c.media_type.as_str())).unwrap_or("");
    let format = if artifact == NOTATION_SIGNATURE {
        Format::Notation
    } else if is_bundle_type(artifact) || raw.layers.iter().any(|l| is_bundle_type(&l.media_type)) {
        Format::SigstoreBundle
    } else if raw.layers.iter().any(|l| l.media_type == COSIGN_SIMPLESIGNING) {
        Format::Cosign
    } else {
        return None;
    };
    let wanted = |t: &str| match format {
        Format::Cosign => t == COSIGN_SIMPLESIGNING,
        Format::SigstoreBundle => is_bundle_type(t),
        Format::Notation => t == JOSE_JSON || t == COSE,
    };
    let mut layers = Vec::new();
    let mut skipped = 0;
    for l in raw.layers {
        if !wanted(&l.media_type) || l.size < 0 || l.size as u64 > MAX_LAYER_BYTES || layers.len() >= MAX_LAYERS {
            skipped += 1;
            continue;
        }
        layers.push(Layer { media_type: l.media_type, digest: l.digest, size: l.size as u64, annotations: l.annotations });
    }
    Some(SignatureManifest { format, layers, skipped })
}

/// Whether a manifest is a signature or attestation artifact, which stays
/// readable in enforced repositories: at least one layer, and every layer a
/// signature or attestation payload (cosign simple signing, sigstore
/// bundles, JWS/COSE envelopes, DSSE envelopes). The artifact type alone
/// proves nothing: a runnable image can claim any `artifactType`, so one
/// filesystem layer (or a list of child manifests) disqualifies it.
pub fn is_signature_artifact(body: &[u8]) -> bool {
    signature_layers(body).is_some()
}

/// The layers of a signature artifact (see [`is_signature_artifact`]), from
/// one parse of the body; `None` for anything else.
fn signature_layers(body: &[u8]) -> Option<Vec<RawDescriptor>> {
    let raw = serde_json::from_slice::<RawManifest>(body).ok()?;
    let payload = |t: &str| t == COSIGN_SIMPLESIGNING || is_bundle_type(t) || t == JOSE_JSON || t == COSE || t == DSSE_ENVELOPE;
    (raw.manifests.is_none() && !raw.layers.is_empty() && raw.layers.iter().all(|l| payload(&l.media_type)))
        .then_some(raw.layers)
}

/// The layers of a signature artifact (see [`is_signature_artifact`]):
/// media type and digest of each, for the caller to read and check with
/// [`is_payload_content`]; `None` for anything else.
pub fn signature_payloads(body: &[u8]) -> Option<Vec<(String, String)>> {
    let layers = signature_layers(body)?;
    // Real signature artifacts have a layer or a few: a manifest listing
    // more would have every pull read them all.
    if layers.len() > MAX_LAYERS {
        return None;
    }
    let mut layers: Vec<(String, String)> = layers.into_iter().map(|l| (l.media_type, l.digest)).collect();
    layers.sort();
    layers.dedup();
    Some(layers)
}

/// Whether a layer's bytes are what its signature media type says: JSON
/// for simple signing, bundles, JWS and DSSE; a CBOR array or tag for COSE.
/// A tar or gzip stream is neither, so a runnable layer cannot pass for a
/// signature by its media type alone.
pub fn is_payload_content(media_type: &str, bytes: &[u8]) -> bool {
    if media_type == COSE {
        return matches!(bytes.first(), Some(0x80..=0x9f | 0xc0..=0xdb));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// What is trusted for one repository: public keys (cosign, sigstore
/// bundles) and certificate stores (notation).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    pub stores: Vec<TrustStore>,
}

impl Trust {
    /// Identifies the trusted set (for cache keys).
    pub fn fingerprint(&self) -> String {
        let mut ids: Vec<String> = self.keys.iter().map(|k| k.id.clone()).collect();
        ids.extend(self.stores.iter().map(|s| s.id.clone()));
        ids.sort();
        hex::encode(keys::sha2_256(ids.join(",").as_bytes()))
    }
}

/// The manifest a signature must name.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// `sha256:<hex>`
    pub digest: &'a str,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// The manifest bytes (sigstore message signatures are over them).
    pub body: &'a [u8],
}

/// The result of checking one signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Verified by a trusted key or certificate chain.
    Valid { signer: String },
    /// Well-formed, but made by no trusted key (or chain).
    Untrusted { detail: String },
    /// Verified, but the signed payload names another manifest.
    WrongSubject { named: String },
    /// Malformed or unsupported.
    Invalid { detail: String },
}

/// Checks one signature layer's bytes against `subject` and `trust`.
/// `now` is seconds since the epoch (certificate validity).
pub fn verify_layer(format: Format, layer: &Layer, bytes: &[u8], subject: Subject<'_>, trust: &Trust, now: i64) -> Outcome {
    if bytes.len() as u64 > MAX_LAYER_BYTES {
        return Outcome::Invalid { detail: format!("signature layer larger than {MAX_LAYER_BYTES} bytes") };
    }
    match format {
        Format::Cosign => cosign::verify(layer, bytes, subject, trust),
        Format::SigstoreBundle => bundle::verify(bytes, subject, trust),
        Format::Notation => notation::verify(layer, bytes, subject, trust, now),
    }
}

/// One checked signature: which artifact, its format, the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub format: Format,
    /// Digest of the signature manifest.
    pub artifact: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What the signatures of one manifest add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    Signed { signer: String, format: Format },
    Unsigned,
    Untrusted { detail: String },
    WrongSubject { named: String },
    Invalid { detail: String },
}

impl Verdict {
    /// One valid signature suffices; otherwise the most telling failure.
    pub fn of(checks: &[Check]) -> Verdict {
        if let Some((c, signer)) = checks.iter().find_map(|c| match &c.outcome {
            Outcome::Valid { signer } => Some((c, signer)),
            _ => None,
        }) {
            return Verdict::Signed { signer: signer.clone(), format: c.format };
        }
        if let Some(named) = checks.iter().find_map(|c| match &c.outcome {
            Outcome::WrongSubject { named } => Some(named),
            _ => None,
        }) {
            return Verdict::WrongSubject { named: named.clone() };
        }
        if let Some(detail) = checks.iter().find_map(|c| match &c.outcome {
            Outcome::Untrusted { detail } => Some(detail),
            _ => None,
        }) {
            return Verdict::Untrusted { detail: detail.clone() };
        }
        match checks.first() {
            Some(Check { outcome: Outcome::Invalid { detail }, .. }) => Verdict::Invalid { detail: detail.clone() },
            _ => Verdict::Unsigned,
        }
    }

    pub fn is_signed(&self) -> bool {
        matches!(self, Verdict::Signed { .. })
    }

    /// Why `digest` is not acceptable, in words (empty when signed).
    pub fn reason(&self, digest: &str) -> String {
        match self {
            Verdict::Signed { .. } => String::new(),
            Verdict::Unsigned => format!("{digest} is not signed: no signature is stored for it (none was pushed, or it was deleted)"),
            Verdict::Untrusted { detail } => format!("{digest} has no signature from a trusted key: {detail}"),
            Verdict::WrongSubject { named } => {
                format!("the signature payload of {digest} names another digest ({named}), not this manifest")
            }
            Verdict::Invalid { detail } => format!("{digest} has no valid signature: {detail}"),
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Signed { .. } => "signed",
            Verdict::Unsigned => "unsigned",
            Verdict::Untrusted { .. } => "untrusted",
            Verdict::WrongSubject { .. } => "wrong_subject",
            Verdict::Invalid { .. } => "invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_formats() {
        let cosign = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:11","size":200,"annotations":{"dev.cosignproject.cosign/signature":"AA=="}},{"mediaType":"x","digest":"sha256:22","size":1}]}"#;
        let m = parse_manifest(cosign).unwrap();
        assert_eq!(m.format, Format::Cosign);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.skipped, 1);
        let notation = br#"{"schemaVersion":2,"artifactType":"application/vnd.cncf.notary.signature","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:00","size":2},"layers":[{"mediaType":"application/jose+json","digest":"sha256:11","size":999999999}]}"#;
        let m = parse_manifest(notation).unwrap();
        assert_eq!(m.format, Format::Notation);
        assert!(m.layers.is_empty(), "oversized layers are skipped");
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:11","size":2}]}"#;
        assert!(parse_manifest(image).is_none());
        assert!(!is_signature_artifact(image));
        assert!(parse_manifest(b"not json").is_none());
    }

    #[test]
    fn only_payload_layers_make_a_signature_artifact() {
        let with = |artifact_type: &str, layers: &[&str]| {
            let layers: Vec<String> = layers
                .iter()
                .map(|t| format!(r#"{{"mediaType":"{t}","digest":"sha256:11","size":2}}"#))
                .collect();
            format!(
                r#"{{"schemaVersion":2,"artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:00","size":2}},"layers":[{}]}}"#,
                layers.join(",")
            )
        };
        assert!(is_signature_artifact(with("", &[COSIGN_SIMPLESIGNING]).as_bytes()));
        assert!(is_signature_artifact(with(NOTATION_SIGNATURE, &[JOSE_JSON]).as_bytes()));
        assert!(is_signature_artifact(with(SIGSTORE_BUNDLE_V03, &[SIGSTORE_BUNDLE_V03]).as_bytes()));
        assert!(is_signature_artifact(with("", &[DSSE_ENVELOPE, DSSE_ENVELOPE]).as_bytes()));
        // A runnable image that claims a signature artifact type is an image.
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(!is_signature_artifact(with(SIGSTORE_BUNDLE_V03, &[tar]).as_bytes()));
        assert!(!is_signature_artifact(with(NOTATION_SIGNATURE, &[JOSE_JSON, tar]).as_bytes()));
        assert!(!is_signature_artifact(with("", &[COSIGN_SIMPLESIGNING, "x"]).as_bytes()));
        assert!(!is_signature_artifact(with(NOTATION_SIGNATURE, &[]).as_bytes()));
        let index = format!(r#"{{"schemaVersion":2,"artifactType":"{NOTATION_SIGNATURE}","manifests":[],"layers":[{{"mediaType":"{JOSE_JSON}","digest":"sha256:11","size":2}}]}}"#);
        assert!(!is_signature_artifact(index.as_bytes()));
    }

    #[test]
    fn verdicts_prefer_valid_then_specific_failures() {
        let c = |o: Outcome| Check { format: Format::Cosign, artifact: "sha256:1".into(), outcome: o };
        assert_eq!(Verdict::of(&[]), Verdict::Unsigned);
        let untrusted = c(Outcome::Untrusted { detail: "k".into() });
        let wrong = c(Outcome::WrongSubject { named: "sha256:2".into() });
        let valid = c(Outcome::Valid { signer: "release".into() });
        assert_eq!(Verdict::of(&[untrusted.clone(), wrong.clone()]), Verdict::WrongSubject { named: "sha256:2".into() });
        assert!(Verdict::of(&[untrusted.clone(), wrong, valid]).is_signed());
        assert!(Verdict::of(&[untrusted]).reason("sha256:x").contains("trusted key"));
    }
}
