//! Sigstore bundles (v0.3) attached as referrers: a DSSE envelope holding
//! an in-toto statement whose subject is the image, or a message signature
//! over the manifest bytes. Verified with trusted public keys; bundles that
//! rely on a certificate (keyless signing) need a Fulcio trust root that
//! Berth does not hold, and count as untrusted.

use crate::{Outcome, Subject, Trust};
use base64::Engine;
use serde_json::Value;

/// DSSE pre-authentication encoding of a payload.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

fn b64(v: &Value) -> Option<Vec<u8>> {
    let s = v.as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
}

pub(crate) fn verify(bytes: &[u8], subject: Subject<'_>, trust: &Trust) -> Outcome {
    let invalid = |d: &str| Outcome::Invalid { detail: format!("sigstore bundle: {d}") };
    let Ok(bundle) = serde_json::from_slice::<Value>(bytes) else { return invalid("not JSON") };
    let want_hex = subject.digest.strip_prefix("sha256:").unwrap_or("");
    if let Some(env) = bundle.get("dsseEnvelope") {
        let Some(payload) = b64(&env["payload"]) else { return invalid("DSSE payload missing") };
        let Some(payload_type) = env["payloadType"].as_str() else { return invalid("DSSE payloadType missing") };
        let message = pae(payload_type, &payload);
        let sigs: Vec<Vec<u8>> = env["signatures"].as_array().into_iter().flatten().filter_map(|s| b64(&s["sig"])).collect();
        if sigs.is_empty() {
            return invalid("DSSE envelope without signatures");
        }
        let Some(key) = trust.keys.iter().find(|k| sigs.iter().any(|s| k.verify(&message, s))) else {
            return Outcome::Untrusted { detail: "no trusted key verifies the sigstore bundle".into() };
        };
        let Ok(statement) = serde_json::from_slice::<Value>(&payload) else { return invalid("statement is not JSON") };
        let named: Vec<String> = statement["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["digest"]["sha256"].as_str().map(|h| format!("sha256:{h}")))
            .collect();
        if named.iter().any(|n| n.strip_prefix("sha256:") == Some(want_hex)) {
            return Outcome::Valid { signer: key.name.clone() };
        }
        return match named.into_iter().next() {
            Some(named) => Outcome::WrongSubject { named },
            None => invalid("the statement names no sha256 subject"),
        };
    }
    if let Some(ms) = bundle.get("messageSignature") {
        let Some(sig) = b64(&ms["signature"]) else { return invalid("message signature missing") };
        let Some(key) = trust.keys.iter().find(|k| k.verify(subject.body, &sig)) else {
            return Outcome::Untrusted { detail: "no trusted key verifies the sigstore bundle over this manifest".into() };
        };
        if let Some(d) = b64(&ms["messageDigest"]["digest"]) {
            if hex::encode(&d) != want_hex {
                return Outcome::WrongSubject { named: format!("sha256:{}", hex::encode(d)) };
            }
        }
        return Outcome::Valid { signer: key.name.clone() };
    }
    invalid("neither a DSSE envelope nor a message signature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use serde_json::json;

    #[test]
    fn dsse_bundle() {
        let key = SigningKey::generate().unwrap();
        let trust = Trust { keys: vec![key.public_key().unwrap()], stores: vec![] };
        let hex = "ab".repeat(32);
        let digest = format!("sha256:{hex}");
        let statement = json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha256": hex}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}).to_string();
        let t = "application/vnd.in-toto+json";
        let sig = key.sign(&pae(t, statement.as_bytes())).unwrap();
        let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let bundle = json!({"mediaType": crate::SIGSTORE_BUNDLE_V03, "verificationMaterial": {"publicKey": {"hint": "k"}},
            "dsseEnvelope": {"payload": e(statement.as_bytes()), "payloadType": t, "signatures": [{"sig": e(&sig)}]}}).to_string();
        let s = Subject { digest: &digest, size: 1, body: b"" };
        assert!(matches!(verify(bundle.as_bytes(), s, &trust), Outcome::Valid { .. }));
        let other = format!("sha256:{}", "cd".repeat(32));
        let s2 = Subject { digest: &other, size: 1, body: b"" };
        assert!(matches!(verify(bundle.as_bytes(), s2, &trust), Outcome::WrongSubject { .. }));
        assert!(matches!(verify(b"{}", s, &trust), Outcome::Invalid { .. }));
    }
}
