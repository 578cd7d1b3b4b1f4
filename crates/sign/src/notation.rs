//! Notary Project signatures: a JWS (JSON serialization) envelope whose
//! payload's `targetArtifact` descriptor names the signed manifest, with
//! the signing certificate chain in the unprotected `x5c` header. The chain
//! must lead to a certificate of a configured trust store.

use crate::{Layer, Outcome, PublicKey, SignError, Subject, Trust, COSE};
use base64::Engine;
use der::{Decode, Encode};
use serde_json::Value;
use x509_cert::Certificate;

/// Longest certificate chain followed.
const MAX_CHAIN: usize = 10;
/// Content type of a Notary Project payload.
pub const PAYLOAD_CONTENT_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";

/// A named set of CA certificates (a PEM bundle).
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub name: String,
    /// `sha256:` over the certificates' DER.
    pub id: String,
    certs: Vec<Certificate>,
    ders: Vec<Vec<u8>>,
}

impl TrustStore {
    pub fn from_pem(name: &str, text: &[u8]) -> Result<TrustStore, SignError> {
        let blocks = pem::parse_many(text).map_err(|e| SignError::Certificate(format!("not PEM: {e}")))?;
        let mut certs = Vec::new();
        let mut ders = Vec::new();
        for b in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
            let c = Certificate::from_der(b.contents())
                .map_err(|e| SignError::Certificate(format!("malformed certificate: {e}")))?;
            certs.push(c);
            ders.push(b.contents().to_vec());
        }
        if certs.is_empty() {
            return Err(SignError::Certificate("no CERTIFICATE blocks".into()));
        }
        let id = format!("sha256:{}", hex::encode(crate::keys::sha2_256(&ders.concat())));
        Ok(TrustStore { name: name.to_string(), id, certs, ders })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn key_of(cert: &Certificate) -> Option<PublicKey> {
    let der = cert.tbs_certificate().subject_public_key_info().to_der().ok()?;
    PublicKey::from_spki_der(&cert.tbs_certificate().subject().to_string(), &der).ok()
}

/// Whether `issuer` signed `cert`.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return false;
    }
    let (Some(key), Ok(tbs)) = (key_of(issuer), cert.tbs_certificate().to_der()) else { return false };
    key.verify_x509(&cert.signature_algorithm().oid, &tbs, cert.signature().raw_bytes())
}

fn valid_at(cert: &Certificate, now: i64) -> bool {
    let v = cert.tbs_certificate().validity();
    let (from, to) = (v.not_before.to_unix_duration().as_secs() as i64, v.not_after.to_unix_duration().as_secs() as i64);
    from <= now && now <= to
}

/// Whether `cert`'s extension `T` satisfies `ok` when the certificate has
/// one: absent is fine, malformed never is.
fn if_present<'a, T>(cert: &'a Certificate, ok: impl FnOnce(&T) -> bool) -> bool
where
    T: der::Decode<'a> + der::oid::AssociatedOid,
{
    match cert.tbs_certificate().get_extension::<T>() {
        Ok(Some((_, ext))) => ok(&ext),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Whether the certificate says it is a CA (basic constraints).
fn is_ca(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    matches!(cert.tbs_certificate().get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca)
}

/// Whether a certificate may issue others: a CA (basic constraints) whose
/// key usage, when stated, includes certificate signing. Without this an
/// ordinary end-entity certificate (a TLS server's) could vouch for a key.
fn may_issue(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::KeyUsage;
    is_ca(cert) && if_present(cert, |ku: &KeyUsage| ku.key_cert_sign())
}

/// Whether a certificate may sign artifacts, as the Notary Project
/// requires of a signing certificate: key usage (when stated) includes
/// digital signatures, extended key usage (when stated) includes code
/// signing, and it is not a CA.
fn may_sign_code(cert: &Certificate) -> bool {
    use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage};
    const CODE_SIGNING: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
    !is_ca(cert)
        && if_present(cert, |ku: &KeyUsage| ku.digital_signature())
        && if_present(cert, |eku: &ExtendedKeyUsage| eku.0.contains(&CODE_SIGNING))
}

/// Follows the chain from the leaf to a trust-store certificate; returns
/// the name of the store, or why not. Every certificate above the leaf
/// that the chain itself supplies must be allowed to issue certificates.
fn chain_to_store(chain: &[Certificate], chain_der: &[Vec<u8>], trust: &Trust, now: i64) -> Result<String, String> {
    if !may_sign_code(&chain[0]) {
        return Err("the signing certificate is not a code-signing certificate (key usage, extended key usage or CA flag)".into());
    }
    let mut current = 0usize;
    for _ in 0..MAX_CHAIN {
        let cert = &chain[current];
        if !valid_at(cert, now) {
            return Err(format!("certificate {} is expired or not yet valid", cert.tbs_certificate().subject()));
        }
        for store in &trust.stores {
            if store.ders.iter().any(|d| d == &chain_der[current]) {
                return Ok(store.name.clone());
            }
            if store.certs.iter().any(|anchor| valid_at(anchor, now) && signed_by(cert, anchor)) {
                return Ok(store.name.clone());
            }
        }
        match (0..chain.len()).find(|&i| i != current && may_issue(&chain[i]) && signed_by(cert, &chain[i])) {
            Some(next) => current = next,
            None => break,
        }
    }
    Err("the certificate chain does not lead to a trusted certificate authority".into())
}

pub(crate) fn verify(layer: &Layer, bytes: &[u8], subject: Subject<'_>, trust: &Trust, now: i64) -> Outcome {
    let invalid = |d: &str| Outcome::Invalid { detail: format!("notation signature: {d}") };
    if layer.media_type == COSE {
        return invalid("COSE envelopes are not supported (JWS is)");
    }
    let Ok(jws) = serde_json::from_slice::<Value>(bytes) else { return invalid("the envelope is not JSON") };
    let (Some(protected), Some(payload_b64), Some(signature)) =
        (jws["protected"].as_str(), jws["payload"].as_str(), jws["signature"].as_str().and_then(b64url))
    else {
        return invalid("the envelope lacks protected, payload or signature");
    };
    let Some(header) = b64url(protected).and_then(|h| serde_json::from_slice::<Value>(&h).ok()) else {
        return invalid("the protected header is not base64url JSON");
    };
    let alg = header["alg"].as_str().unwrap_or("");
    if header["cty"].as_str().is_some_and(|c| c != PAYLOAD_CONTENT_TYPE) {
        return invalid("unexpected payload content type");
    }
    let certs: Vec<Vec<u8>> = jws["header"]["x5c"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()))
        .take(MAX_CHAIN)
        .collect();
    if certs.is_empty() {
        return invalid("no x5c certificate chain");
    }
    let chain: Vec<Certificate> = match certs.iter().map(|d| Certificate::from_der(d)).collect::<Result<_, _>>() {
        Ok(c) => c,
        Err(_) => return invalid("a certificate of the chain is malformed"),
    };
    let Some(leaf_key) = key_of(&chain[0]) else { return invalid("unsupported key in the signing certificate") };
    let signing_input = format!("{protected}.{payload_b64}");
    if !leaf_key.verify_jws(alg, signing_input.as_bytes(), &signature) {
        return invalid(&format!("the signature does not verify with the signing certificate (alg {alg:?})"));
    }
    let store = match chain_to_store(&chain, &certs, trust, now) {
        Ok(s) => s,
        Err(why) => return Outcome::Untrusted { detail: why },
    };
    let Some(payload) = b64url(payload_b64).and_then(|p| serde_json::from_slice::<Value>(&p).ok()) else {
        return invalid("the payload is not base64url JSON");
    };
    let target = &payload["targetArtifact"];
    let named = target["digest"].as_str().unwrap_or("").to_string();
    if named != subject.digest {
        return Outcome::WrongSubject { named };
    }
    if target["size"].as_u64() != Some(subject.size) {
        return Outcome::WrongSubject { named: format!("{named} of {} bytes", target["size"]) };
    }
    Outcome::Valid { signer: format!("{} (trust store {store})", chain[0].tbs_certificate().subject()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, Layer, JOSE_JSON};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SigningKey as _};
    use serde_json::json;

    fn ca_params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    }

    /// ECDSA DER signature to JWS r||s.
    fn fixed(der: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 2;
        for _ in 0..2 {
            let len = der[i + 1] as usize;
            let int = &der[i + 2..i + 2 + len];
            let int = &int[int.len().saturating_sub(32)..];
            out.extend(std::iter::repeat_n(0, 32 - int.len()));
            out.extend_from_slice(int);
            i += 2 + len;
        }
        out
    }

    fn envelope(key: &KeyPair, chain: &[&[u8]], digest: &str, size: u64) -> Vec<u8> {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let p = url.encode(json!({"alg": "ES256", "cty": PAYLOAD_CONTENT_TYPE}).to_string());
        let b = url.encode(json!({"targetArtifact": {"digest": digest, "size": size}}).to_string());
        let sig = fixed(&key.sign(format!("{p}.{b}").as_bytes()).unwrap());
        let x5c: Vec<String> = chain.iter().map(|c| base64::engine::general_purpose::STANDARD.encode(c)).collect();
        json!({"protected": p, "payload": b, "signature": url.encode(sig), "header": {"x5c": x5c}}).to_string().into_bytes()
    }

    #[test]
    fn chains_through_intermediates_and_checks_validity() {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate().unwrap();
        let mid = ca_params("Intermediate").signed_by(&mid_key, &Issuer::new(root_params.clone(), &root_key)).unwrap();
        let mid_issuer = Issuer::new(ca_params("Intermediate"), &mid_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "signer");
        let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
        let mut old_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        old_params.distinguished_name.push(DnType::CommonName, "old signer");
        old_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        old_params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let old = old_params.signed_by(&leaf_key, &mid_issuer).unwrap();

        let store = TrustStore::from_pem("corp", root.pem().as_bytes()).unwrap();
        let trust = Trust { keys: vec![], stores: vec![store] };
        let digest = format!("sha256:{}", "ab".repeat(32));
        let subject = Subject { digest: &digest, size: 42, body: b"" };
        let layer = Layer { media_type: JOSE_JSON.into(), digest: String::new(), size: 0, annotations: Default::default() };
        let now = 1_800_000_000;
        let check = |env: &[u8]| crate::verify_layer(Format::Notation, &layer, env, subject, &trust, now);

        let good = envelope(&leaf_key, &[leaf.der(), mid.der()], &digest, 42);
        assert!(matches!(check(&good), Outcome::Valid { signer } if signer.contains("signer") && signer.contains("corp")));
        // Without the intermediate the chain is broken.
        let broken = envelope(&leaf_key, &[leaf.der()], &digest, 42);
        assert!(matches!(check(&broken), Outcome::Untrusted { .. }));
        // An expired leaf.
        let expired = envelope(&leaf_key, &[old.der(), mid.der()], &digest, 42);
        assert!(matches!(check(&expired), Outcome::Untrusted { detail } if detail.contains("expired")));
        // Size or digest of another manifest.
        assert!(matches!(check(&envelope(&leaf_key, &[leaf.der(), mid.der()], &digest, 43)), Outcome::WrongSubject { .. }));
        // Garbage certificates.
        assert!(matches!(check(&envelope(&leaf_key, &[b"junk"], &digest, 42)), Outcome::Invalid { .. }));
        assert!(TrustStore::from_pem("x", b"no pem here").is_err());
    }
}
