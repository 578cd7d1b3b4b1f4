//! cosign's signature format: a simple-signing payload per layer, the
//! signature in the layer's annotation, the manifest tagged
//! `sha256-<hex>.sig` next to the image it signs.

use crate::{Layer, Outcome, SigningKey, Subject, Trust, COSIGN_SIGNATURE_ANNOTATION, COSIGN_SIMPLESIGNING};
use base64::Engine;
use serde_json::{json, Value};

/// `type` of a cosign simple-signing payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The tag cosign stores the signatures of `digest` under
/// (`sha256:abc…` → `sha256-abc….sig`).
pub fn signature_tag(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    (!alg.is_empty() && !hex.is_empty()).then(|| format!("{alg}-{hex}.sig"))
}

/// The digest a cosign tag refers to: `sha256-<hex>` followed by `.sig`
/// (signatures), `.att` (attestations) or `.sbom`, lowercase hex only.
pub fn tag_subject(tag: &str) -> Option<String> {
    let stem = [".sig", ".att", ".sbom"].iter().find_map(|s| tag.strip_suffix(s))?;
    let (alg, hex) = stem.split_once('-')?;
    (alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| format!("{alg}:{hex}"))
}

/// The simple-signing payload for `digest` of the image at `reference`
/// (`host/repository`), as cosign writes it.
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    })
    .to_string()
    .into_bytes()
}

/// A payload and its signature, ready to be a layer.
pub struct SignedPayload {
    pub payload: Vec<u8>,
    /// base64 of the signature over `payload`.
    pub signature: String,
}

pub fn sign(key: &SigningKey, reference: &str, digest: &str) -> Result<SignedPayload, crate::SignError> {
    let payload = payload(reference, digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload)?);
    Ok(SignedPayload { payload, signature })
}

/// The layer descriptor of a signed payload.
pub fn layer_descriptor(signed: &SignedPayload) -> Value {
    json!({
        "mediaType": COSIGN_SIMPLESIGNING,
        "digest": sha256_digest(&signed.payload),
        "size": signed.payload.len(),
        "annotations": {COSIGN_SIGNATURE_ANNOTATION: signed.signature},
    })
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(crate::keys::sha2_256(data)))
}

/// A signature manifest holding `layers` (descriptors, as JSON) and the
/// image config naming them, as cosign builds it. Returns (config bytes,
/// manifest bytes).
pub fn manifest(layers: &[Value]) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": sha256_digest(&config),
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    (config, manifest)
}

/// The digest a simple-signing payload names, if it is one.
pub fn payload_digest(payload: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| "the payload is not JSON".to_string())?;
    let critical = &v["critical"];
    if critical["type"].as_str().is_some_and(|t| !t.eq_ignore_ascii_case(PAYLOAD_TYPE)) {
        return Err(format!("unexpected payload type {:?}", critical["type"]));
    }
    critical["image"]["docker-manifest-digest"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the payload names no critical.image.docker-manifest-digest".to_string())
}

pub(crate) fn verify(layer: &Layer, bytes: &[u8], subject: Subject<'_>, trust: &Trust) -> Outcome {
    let Some(sig) = layer.annotations.get(COSIGN_SIGNATURE_ANNOTATION) else {
        return Outcome::Invalid { detail: "a cosign layer has no signature annotation".into() };
    };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
        return Outcome::Invalid { detail: "a cosign signature is not base64".into() };
    };
    let Some(key) = trust.keys.iter().find(|k| k.verify(bytes, &sig)) else {
        return Outcome::Untrusted { detail: "no trusted key verifies the cosign signature".into() };
    };
    match payload_digest(bytes) {
        Err(e) => Outcome::Invalid { detail: e },
        Ok(named) if named != subject.digest => Outcome::WrongSubject { named },
        Ok(_) => Outcome::Valid { signer: key.name.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, PublicKey};

    #[test]
    fn tags() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let t = signature_tag(&d).unwrap();
        assert_eq!(t, format!("sha256-{}.sig", "ab".repeat(32)));
        assert_eq!(tag_subject(&t).unwrap(), d);
        assert!(tag_subject("latest").is_none());
        assert!(tag_subject("sha256-abc.sig").is_none());
        for suffix in ["att", "sbom"] {
            assert_eq!(tag_subject(&format!("sha256-{}.{suffix}", "ab".repeat(32))).unwrap(), d);
        }
        assert!(tag_subject(&format!("sha256-{}.sig", "AB".repeat(32))).is_none());
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::generate().unwrap();
        let public = PublicKey::from_pem("release", key.public_pem().unwrap().as_bytes()).unwrap();
        let trust = Trust { keys: vec![public], stores: vec![] };
        let digest = format!("sha256:{}", "cd".repeat(32));
        let signed = sign(&key, "example.com/app", &digest).unwrap();
        let (_, m) = manifest(&[layer_descriptor(&signed)]);
        let parsed = crate::parse_manifest(&m).unwrap();
        assert_eq!(parsed.format, Format::Cosign);
        let subject = Subject { digest: &digest, size: 10, body: b"" };
        let layer = &parsed.layers[0];
        assert_eq!(verify(layer, &signed.payload, subject, &trust), Outcome::Valid { signer: "release".into() });
        let other = format!("sha256:{}", "ee".repeat(32));
        let subject2 = Subject { digest: &other, size: 10, body: b"" };
        assert_eq!(verify(layer, &signed.payload, subject2, &trust), Outcome::WrongSubject { named: digest.clone() });
        let stranger = SigningKey::generate().unwrap().public_key().unwrap();
        let trust2 = Trust { keys: vec![stranger], stores: vec![] };
        assert!(matches!(verify(layer, &signed.payload, subject, &trust2), Outcome::Untrusted { .. }));
        let mut tampered = signed.payload.clone();
        tampered[5] ^= 1;
        assert!(matches!(verify(layer, &tampered, subject, &trust), Outcome::Untrusted { .. }));
    }
}
