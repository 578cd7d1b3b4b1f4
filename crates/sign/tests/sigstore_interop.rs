//! Interoperability with an independent implementation of cosign's formats
//! (the `sigstore` crate): keys and signatures made here are read and
//! verified there, and the other way round.

use base64::Engine;
use berth_sign::{cosign, Format, Outcome, PublicKey, SigningKey, Subject, Trust};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

fn digest() -> String {
    format!("sha256:{}", "5e".repeat(32))
}

#[test]
fn berth_keys_and_signatures_work_in_sigstore() {
    let key = SigningKey::generate().unwrap();
    let encrypted = key.to_encrypted_pem(b"correct horse").unwrap();
    // The encrypted private key is cosign's format: sigstore decrypts it.
    let pair = SigStoreKeyPair::from_encrypted_pem(encrypted.as_bytes(), b"correct horse").unwrap();
    assert_eq!(pair.public_key_to_pem().unwrap().trim(), key.public_pem().unwrap().trim());
    assert!(SigStoreKeyPair::from_encrypted_pem(encrypted.as_bytes(), b"wrong").is_err());

    // A signature made here verifies there, over the exact payload bytes.
    let signed = cosign::sign(&key, "registry.example/app", &digest()).unwrap();
    let verifier = CosignVerificationKey::try_from_pem(key.public_pem().unwrap().as_bytes()).unwrap();
    verifier.verify_signature(Signature::Base64Encoded(signed.signature.as_bytes()), &signed.payload).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&signed.payload).unwrap();
    assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], digest());
    assert_eq!(payload["critical"]["type"], "cosign container image signature");
    assert_eq!(payload["critical"]["identity"]["docker-reference"], "registry.example/app");
}

#[test]
fn sigstore_keys_and_signatures_work_here() {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1.create_signer().unwrap();
    let pair = signer.to_sigstore_keypair().unwrap();
    // sigstore's encrypted private key loads here and signs.
    let encrypted = pair.private_key_to_encrypted_pem(b"pw").unwrap();
    let loaded = SigningKey::from_pem(encrypted.as_bytes(), Some(b"pw")).unwrap();
    let public_pem = pair.public_key_to_pem().unwrap();
    let public = PublicKey::from_pem("partner", public_pem.as_bytes()).unwrap();
    assert!(public.verify(b"m", &loaded.sign(b"m").unwrap()));

    // A cosign layer signed by sigstore verifies here.
    let payload = cosign::payload("registry.example/app", &digest());
    let sig = signer.sign(&payload).unwrap();
    let signed = cosign::SignedPayload { payload: payload.clone(), signature: base64::engine::general_purpose::STANDARD.encode(sig) };
    let (_, manifest) = cosign::manifest(&[cosign::layer_descriptor(&signed)]);
    let parsed = berth_sign::parse_manifest(&manifest).unwrap();
    let trust = Trust { keys: vec![public], stores: vec![] };
    let d = digest();
    let subject = Subject { digest: &d, size: 1, body: b"" };
    let outcome = berth_sign::verify_layer(Format::Cosign, &parsed.layers[0], &payload, subject, &trust, 0);
    assert_eq!(outcome, Outcome::Valid { signer: "partner".into() });
}
