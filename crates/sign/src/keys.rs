//! Public keys (PEM SubjectPublicKeyInfo) and signing keys (cosign's
//! encrypted private key format, or plain PKCS#8).

use crate::SignError;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, KeyPair, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use der::Decode;
use spki::ObjectIdentifier;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The kind of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ecdsa-p256",
            KeyKind::EcdsaP384 => "ecdsa-p384",
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        }
    }
}

/// A public key that signatures are checked against.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// A name for reports: the configured name, or the key id.
    pub name: String,
    pub kind: KeyKind,
    /// `sha256:` of the DER SubjectPublicKeyInfo: stable across encodings.
    pub id: String,
    /// The key bits inside the SubjectPublicKeyInfo (SEC1 point, RSAPublicKey, raw Ed25519).
    raw: Vec<u8>,
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` block.
    pub fn from_pem(name: &str, text: &[u8]) -> Result<PublicKey, SignError> {
        let block = pem::parse(text).map_err(|e| SignError::Key(format!("not a PEM public key: {e}")))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(SignError::Key(format!("expected a PEM \"PUBLIC KEY\" block, found {:?}", block.tag())));
        }
        Self::from_spki_der(name, block.contents())
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(name: &str, der: &[u8]) -> Result<PublicKey, SignError> {
        let info = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| SignError::Key(format!("malformed SubjectPublicKeyInfo: {e}")))?;
        let raw = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| SignError::Key("public key bits are not whole bytes".into()))?
            .to_vec();
        let kind = match info.algorithm.oid {
            EC_PUBLIC_KEY => {
                let curve = info
                    .algorithm
                    .parameters
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .ok_or_else(|| SignError::Key("EC key without a named curve".into()))?;
                match curve {
                    P256 => KeyKind::EcdsaP256,
                    P384 => KeyKind::EcdsaP384,
                    other => return Err(SignError::Key(format!("unsupported EC curve {other} (P-256 and P-384 are)"))),
                }
            }
            ED25519 => KeyKind::Ed25519,
            RSA => KeyKind::Rsa,
            other => return Err(SignError::Key(format!("unsupported key algorithm {other}"))),
        };
        let id = format!("sha256:{}", hex::encode(sha2_256(der)));
        let name = if name.is_empty() { id[..19].to_string() } else { name.to_string() };
        Ok(PublicKey { name, kind, id, raw })
    }

    /// Checks a signature made the way cosign does for this kind of key:
    /// ECDSA (ASN.1 DER) with SHA-256 or SHA-384, Ed25519, RSA PKCS#1 v1.5
    /// or PSS with SHA-256.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let algs: &[&'static dyn VerificationAlgorithm] = match self.kind {
            KeyKind::EcdsaP256 => &[&sig::ECDSA_P256_SHA256_ASN1],
            KeyKind::EcdsaP384 => &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA256_ASN1],
            KeyKind::Ed25519 => &[&sig::ED25519],
            KeyKind::Rsa => &[&sig::RSA_PKCS1_2048_8192_SHA256, &sig::RSA_PSS_2048_8192_SHA256],
        };
        algs.iter().any(|alg| UnparsedPublicKey::new(*alg, &self.raw).verify(message, signature).is_ok())
    }

    /// Checks a JWS signature (`alg` from the protected header: fixed-size
    /// ECDSA, RSA PSS or PKCS#1).
    pub fn verify_jws(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        let alg: &'static dyn VerificationAlgorithm = match (alg, self.kind) {
            ("ES256", KeyKind::EcdsaP256) => &sig::ECDSA_P256_SHA256_FIXED,
            ("ES384", KeyKind::EcdsaP384) => &sig::ECDSA_P384_SHA384_FIXED,
            ("PS256", KeyKind::Rsa) => &sig::RSA_PSS_2048_8192_SHA256,
            ("PS384", KeyKind::Rsa) => &sig::RSA_PSS_2048_8192_SHA384,
            ("PS512", KeyKind::Rsa) => &sig::RSA_PSS_2048_8192_SHA512,
            ("RS256", KeyKind::Rsa) => &sig::RSA_PKCS1_2048_8192_SHA256,
            ("EdDSA", KeyKind::Ed25519) => &sig::ED25519,
            _ => return false,
        };
        UnparsedPublicKey::new(alg, &self.raw).verify(message, signature).is_ok()
    }

    /// Checks an X.509 signature given its algorithm OID.
    pub(crate) fn verify_x509(&self, alg: &ObjectIdentifier, message: &[u8], signature: &[u8]) -> bool {
        let alg: &'static dyn VerificationAlgorithm = match (alg.to_string().as_str(), self.kind) {
            ("1.2.840.10045.4.3.2", KeyKind::EcdsaP256) => &sig::ECDSA_P256_SHA256_ASN1,
            ("1.2.840.10045.4.3.3", KeyKind::EcdsaP256) => &sig::ECDSA_P256_SHA384_ASN1,
            ("1.2.840.10045.4.3.2", KeyKind::EcdsaP384) => &sig::ECDSA_P384_SHA256_ASN1,
            ("1.2.840.10045.4.3.3", KeyKind::EcdsaP384) => &sig::ECDSA_P384_SHA384_ASN1,
            ("1.2.840.113549.1.1.11", KeyKind::Rsa) => &sig::RSA_PKCS1_2048_8192_SHA256,
            ("1.2.840.113549.1.1.12", KeyKind::Rsa) => &sig::RSA_PKCS1_2048_8192_SHA384,
            ("1.2.840.113549.1.1.13", KeyKind::Rsa) => &sig::RSA_PKCS1_2048_8192_SHA512,
            ("1.3.101.112", KeyKind::Ed25519) => &sig::ED25519,
            ("1.2.840.113549.1.1.10", KeyKind::Rsa) => {
                // RSASSA-PSS: the hash is in the parameters; try the usual ones.
                return [&sig::RSA_PSS_2048_8192_SHA256, &sig::RSA_PSS_2048_8192_SHA384, &sig::RSA_PSS_2048_8192_SHA512]
                    .iter()
                    .any(|a| UnparsedPublicKey::new(*a, &self.raw).verify(message, signature).is_ok());
            }
            _ => return false,
        };
        UnparsedPublicKey::new(alg, &self.raw).verify(message, signature).is_ok()
    }
}

pub(crate) fn sha2_256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

// ---- signing keys ------------------------------------------------------------

/// PEM label of cosign's encrypted private keys (older cosign wrote the second).
pub const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const ENCRYPTED_KEY_LABEL_OLD: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt cost cosign uses when it writes keys (2^16, r = 8, p = 1).
const SCRYPT_LOG_N: u8 = 16;

/// A private key that makes cosign-compatible signatures.
pub enum SigningKey {
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A new ECDSA P-256 key (what cosign generates).
    pub fn generate() -> Result<SigningKey, SignError> {
        let pair = sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| SignError::Key("key generation failed".into()))?;
        Ok(SigningKey::Ecdsa(pair))
    }

    /// From PKCS#8 DER: ECDSA P-256, P-384 or Ed25519.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, SignError> {
        for alg in [&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &sig::ECDSA_P384_SHA384_ASN1_SIGNING] {
            if let Ok(k) = sig::EcdsaKeyPair::from_pkcs8(alg, der) {
                return Ok(SigningKey::Ecdsa(k));
            }
        }
        sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey::Ed25519)
            .map_err(|_| SignError::Key("unsupported private key (ECDSA P-256/P-384 or Ed25519 PKCS#8 expected)".into()))
    }

    fn pkcs8(&self) -> Result<Vec<u8>, SignError> {
        let doc = match self {
            SigningKey::Ecdsa(k) => k.to_pkcs8v1(),
            SigningKey::Ed25519(k) => k.to_pkcs8v1(),
        };
        doc.map(|d| d.as_ref().to_vec()).map_err(|_| SignError::Key("cannot encode the private key".into()))
    }

    /// The public half as a DER SubjectPublicKeyInfo.
    pub fn public_spki_der(&self) -> Result<Vec<u8>, SignError> {
        let der = match self {
            SigningKey::Ecdsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            SigningKey::Ed25519(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        };
        der.map_err(|_| SignError::Key("cannot encode the public key".into()))
    }

    /// The public half as a PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> Result<String, SignError> {
        Ok(pem::encode(&pem::Pem::new("PUBLIC KEY", self.public_spki_der()?)))
    }

    pub fn public_key(&self) -> Result<PublicKey, SignError> {
        PublicKey::from_spki_der("", &self.public_spki_der()?)
    }

    /// Signs `message` (ECDSA: ASN.1 DER signature over SHA-256/384).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            SigningKey::Ecdsa(k) => k
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Key("signing failed".into())),
            SigningKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }

    /// Encrypts the key in cosign's format: PKCS#8 sealed with NaCl
    /// secretbox under a key derived by scrypt from `password`, as JSON in
    /// an `ENCRYPTED SIGSTORE PRIVATE KEY` PEM block.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, SignError> {
        use crypto_secretbox::aead::{Aead, KeyInit};
        let salt: [u8; 32] = rand::random();
        let nonce: [u8; 24] = rand::random();
        let key = derive(password, &salt, SCRYPT_LOG_N)?;
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&key));
        let plain = self.pkcs8()?;
        let sealed = cipher
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| SignError::Key("encryption failed".into()))?;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let doc = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 1u32 << SCRYPT_LOG_N, "r": 8, "p": 1}, "salt": b64(&salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
            "ciphertext": b64(&sealed),
        });
        Ok(pem::encode(&pem::Pem::new(ENCRYPTED_KEY_LABEL, doc.to_string().into_bytes())))
    }

    /// Reads a private key: cosign's encrypted format (needs `password`)
    /// or an unencrypted PKCS#8 `PRIVATE KEY`.
    pub fn from_pem(text: &[u8], password: Option<&[u8]>) -> Result<SigningKey, SignError> {
        let block = pem::parse(text).map_err(|e| SignError::Key(format!("not a PEM private key: {e}")))?;
        match block.tag() {
            "PRIVATE KEY" => SigningKey::from_pkcs8(block.contents()),
            ENCRYPTED_KEY_LABEL | ENCRYPTED_KEY_LABEL_OLD => {
                let password = password.ok_or_else(|| SignError::Key("the key is encrypted: a password is needed".into()))?;
                SigningKey::from_pkcs8(&decrypt(block.contents(), password)?)
            }
            other => Err(SignError::Key(format!("unsupported PEM block {other:?} for a private key"))),
        }
    }
}

fn derive(password: &[u8], salt: &[u8], log_n: u8) -> Result<[u8; 32], SignError> {
    let params = scrypt::Params::new(log_n, 8, 1).map_err(|_| SignError::Key("bad scrypt parameters".into()))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).map_err(|_| SignError::Key("scrypt failed".into()))?;
    Ok(key)
}

fn decrypt(json: &[u8], password: &[u8]) -> Result<Vec<u8>, SignError> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let bad = |what: &str| SignError::Key(format!("encrypted key: {what}"));
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(|_| bad("not JSON"))?;
    let b64 = |v: &serde_json::Value| {
        v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    };
    if doc["kdf"]["name"] != "scrypt" || doc["cipher"]["name"] != "nacl/secretbox" {
        return Err(bad("unsupported kdf or cipher (scrypt and nacl/secretbox are)"));
    }
    let n = doc["kdf"]["params"]["N"].as_u64().ok_or_else(|| bad("no scrypt N"))?;
    if !matches!(n, 32768 | 65536) || doc["kdf"]["params"]["r"] != 8 || doc["kdf"]["params"]["p"] != 1 {
        return Err(bad("unexpected scrypt parameters"));
    }
    let salt = b64(&doc["kdf"]["salt"]).ok_or_else(|| bad("no salt"))?;
    let nonce = b64(&doc["cipher"]["nonce"]).filter(|n| n.len() == 24).ok_or_else(|| bad("bad nonce"))?;
    let sealed = b64(&doc["ciphertext"]).ok_or_else(|| bad("no ciphertext"))?;
    let key = derive(password, &salt, n.trailing_zeros() as u8)?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(&key));
    cipher
        .decrypt(crypto_secretbox::Nonce::from_slice(&nonce), sealed.as_slice())
        .map_err(|_| SignError::Key("wrong password for this key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_encrypt_decrypt_sign_verify() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(b"secret").unwrap();
        assert!(pem.contains(ENCRYPTED_KEY_LABEL));
        assert!(matches!(SigningKey::from_pem(pem.as_bytes(), Some(b"wrong")), Err(SignError::Key(m)) if m.contains("wrong password")));
        let back = SigningKey::from_pem(pem.as_bytes(), Some(b"secret")).unwrap();
        let public = PublicKey::from_pem("k", key.public_pem().unwrap().as_bytes()).unwrap();
        assert_eq!(public.kind, KeyKind::EcdsaP256);
        let s = back.sign(b"hello").unwrap();
        assert!(public.verify(b"hello", &s));
        assert!(!public.verify(b"hellO", &s));
    }

    #[test]
    fn rejects_garbage_keys() {
        assert!(PublicKey::from_pem("", b"nope").is_err());
        let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        assert!(PublicKey::from_pem("", pem.as_bytes()).is_err());
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(PublicKey::from_pem("", pem.as_bytes()).is_err());
    }

    #[test]
    fn ed25519_keys() {
        let pair = sig::Ed25519KeyPair::generate().unwrap();
        let key = SigningKey::Ed25519(pair);
        let public = key.public_key().unwrap();
        assert_eq!(public.kind, KeyKind::Ed25519);
        assert!(public.verify(b"m", &key.sign(b"m").unwrap()));
    }
}
