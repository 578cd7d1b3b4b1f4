//! Signatures against a real `berth` server: keys and signatures made with
//! Berth's CLI checked by an independent implementation of cosign's format
//! (the `sigstore` crate) and the other way round; enforced, warning and
//! tag-gated repositories; skopeo and the Docker engine pulling signed and
//! unsigned images; sigstore bundles and Notary Project signatures as
//! referrers; malformed and oversized signatures.

mod clients_support;
mod common;

use base64::Engine;
use common::{client, push_blob, push_image, sha256, Server};
use serde_json::{json, Value};
use sigstore::crypto::{CosignVerificationKey, SigStoreSigner, Signature, SigningScheme};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Runs the berth CLI with `stdin` as its standard input.
fn berth(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("BERTH_PASSWORD")
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `berth keys generate`; returns (private key path, public key path).
fn generate_key(dir: &Path, name: &str, password: &str) -> (String, String) {
    let prefix = dir.join(name);
    let out = berth(&["keys", "generate", "--out", prefix.to_str().unwrap()], &format!("{password}\n"));
    assert!(out.status.success(), "{}", text(&out));
    (format!("{}.key", prefix.display()), format!("{}.pub", prefix.display()))
}

/// A key pair made by the sigstore crate; the public key is written to `dir/name.pub`.
fn sigstore_key(dir: &Path, name: &str) -> (SigStoreSigner, String) {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1.create_signer().unwrap();
    let pem = signer.to_sigstore_keypair().unwrap().public_key_to_pem().unwrap();
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, &pem).unwrap();
    (signer, path.to_str().unwrap().to_string())
}

fn cosign_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// Stores a cosign signature of `subject` in `repo` whose payload names
/// `named`, signed by `sign` (a base64 signature over the payload).
fn push_cosign(url: &str, repo: &str, subject: &str, named: &str, sign: impl Fn(&[u8]) -> String) -> String {
    let c = client();
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": format!("example/{repo}")},
            "image": {"docker-manifest-digest": named},
            "type": "cosign container image signature"
        },
        "optional": {"by": "test"}
    })
    .to_string()
    .into_bytes();
    let layer = push_blob(&c, url, repo, &payload);
    let config = json!({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": [layer]}, "config": {}}).to_string();
    let config_digest = push_blob(&c, url, repo, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": SIMPLESIGNING, "digest": layer, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": sign(&payload)}}]
    })
    .to_string();
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{}", cosign_tag(subject)))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    sha256(manifest.as_bytes())
}

fn sigstore_signs(signer: &SigStoreSigner) -> impl Fn(&[u8]) -> String + '_ {
    move |payload| B64.encode(signer.sign(payload).unwrap())
}

/// Status and body of a manifest GET.
fn pull(url: &str, repo: &str, reference: &str) -> (u16, String) {
    let r = client()
        .get(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn assert_denied(url: &str, repo: &str, reference: &str, why: &str) {
    let (status, body) = pull(url, repo, reference);
    assert_eq!(status, 403, "{repo}:{reference}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED", "{body}");
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{repo}:{reference}: expected {why:?} in {message:?}");
    let head = client().head(format!("{url}/v2/{repo}/manifests/{reference}")).header("Accept", OCI_MANIFEST).send().unwrap();
    assert_eq!(head.status(), 403, "HEAD {repo}:{reference}");
}

fn sign_with_berth(s: &Server, image: &str, key: &str, password: &str) -> Output {
    berth(&["sign", &format!("{}/{image}", s.addr), "--key", key], &format!("{password}\n"))
}

fn config(dir: &Path, keys: &[(&str, &str)]) -> String {
    let mut toml = String::from("[signatures.keys]\n");
    for (name, path) in keys {
        toml.push_str(&format!("{name} = {path:?}\n"));
    }
    toml.push_str(
        "[[signatures.policies]]\nrepositories = [\"prod/**\"]\nverify = \"enforce\"\n\
         [[signatures.policies]]\nrepositories = [\"soft/**\"]\nverify = \"warn\"\n\
         [[signatures.policies]]\nrepositories = [\"gated/**\"]\nverify = \"enforce\"\nkeys = [\"release\"]\nrequire_signed_tags = true\n",
    );
    let _ = dir;
    toml
}

#[test]
fn cosign_signatures_enforced_with_interop_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let (release_key, release_pub) = generate_key(tmp.path(), "release", "s3cret pass");
    let (partner, partner_pub) = sigstore_key(tmp.path(), "partner");
    let (stranger, _) = sigstore_key(tmp.path(), "stranger");
    let s = Server::start_config(tmp.path(), &config(tmp.path(), &[("release", &release_pub), ("partner", &partner_pub)]));
    let url = &s.url;
    let c = client();

    // Berth's CLI signs; the registry serves the signed image.
    let (_, signed) = push_image(&c, url, "prod/signed", "v1");
    assert_denied(url, "prod/signed", "v1", "not signed");
    let out = sign_with_berth(&s, "prod/signed:v1", &release_key, "s3cret pass");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&signed));
    let (status, _) = pull(url, "prod/signed", "v1");
    assert_eq!(status, 200);
    let (status, _) = pull(url, "prod/signed", &signed);
    assert_eq!(status, 200);

    // The signature artifact stays readable, and the sigstore crate
    // verifies what Berth signed.
    let (status, body) = pull(url, "prod/signed", &cosign_tag(&signed));
    assert_eq!(status, 200, "{body}");
    let sig_manifest: Value = serde_json::from_str(&body).unwrap();
    let layer = &sig_manifest["layers"][0];
    assert_eq!(layer["mediaType"], SIMPLESIGNING);
    let payload = c.get(format!("{url}/v2/prod/signed/blobs/{}", layer["digest"].as_str().unwrap())).send().unwrap().bytes().unwrap();
    let verifier = CosignVerificationKey::try_from_pem(std::fs::read(&release_pub).unwrap().as_slice()).unwrap();
    let sig = layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap();
    verifier.verify_signature(Signature::Base64Encoded(sig.as_bytes()), &payload).unwrap();
    let p: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(p["critical"]["image"]["docker-manifest-digest"], signed);
    assert_eq!(p["critical"]["identity"]["docker-reference"], format!("{}/prod/signed", s.addr));

    // berth verify: exit 0 with the right key, 1 otherwise.
    let image = format!("{}/prod/signed:v1", s.addr);
    let ok = berth(&["verify", &image, "--key", &release_pub], "");
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("verified with key release"), "{}", text(&ok));
    let wrong = berth(&["verify", &image, "--key", &partner_pub], "");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("NOT verified"));

    // A signature made by the sigstore crate with a trusted key is accepted.
    let (_, by_partner) = push_image(&c, url, "prod/partner", "v1");
    push_cosign(url, "prod/partner", &by_partner, &by_partner, sigstore_signs(&partner));
    assert_eq!(pull(url, "prod/partner", "v1").0, 200);

    // Unsigned, untrusted key, payload naming another digest.
    push_image(&c, url, "prod/unsigned", "v1");
    assert_denied(url, "prod/unsigned", "v1", "not signed");
    let (_, by_stranger) = push_image(&c, url, "prod/stranger", "v1");
    push_cosign(url, "prod/stranger", &by_stranger, &by_stranger, sigstore_signs(&stranger));
    assert_denied(url, "prod/stranger", "v1", "no signature from a trusted key");
    let (_, other) = push_image(&c, url, "prod/moved", "v1");
    push_cosign(url, "prod/moved", &other, &signed, sigstore_signs(&partner));
    assert_denied(url, "prod/moved", "v1", "names another digest");

    // A deleted signature no longer counts (the cached verdict is keyed by
    // the signatures present).
    let (_, deleted) = push_image(&c, url, "prod/deleted", "v1");
    let sig = push_cosign(url, "prod/deleted", &deleted, &deleted, sigstore_signs(&partner));
    assert_eq!(pull(url, "prod/deleted", "v1").0, 200);
    let r = c.delete(format!("{url}/v2/prod/deleted/manifests/{sig}")).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_denied(url, "prod/deleted", "v1", "not signed");
    // Signing again appends to what the tag holds and works.
    assert!(sign_with_berth(&s, "prod/deleted:v1", &release_key, "s3cret pass").status.success());
    assert_eq!(pull(url, "prod/deleted", "v1").0, 200);

    // A wrong key password fails cleanly.
    let bad = sign_with_berth(&s, "prod/unsigned:v1", &release_key, "nope");
    assert!(!bad.status.success());
    assert!(text(&bad).contains("wrong password"), "{}", text(&bad));

    // warn: served, and a warning is logged.
    push_image(&c, url, "soft/app", "v1");
    assert_eq!(pull(url, "soft/app", "v1").0, 200);
    assert!(s.stderr().contains("verify = warn"), "{}", s.stderr());

    // require_signed_tags: tags only for signed content.
    let (m2, d2) = image_bytes(&c, url, "gated/app");
    let r = c.put(format!("{url}/v2/gated/app/manifests/v2")).header("Content-Type", OCI_MANIFEST).body(m2.clone()).send().unwrap();
    assert_eq!(r.status(), 403, "tagging unsigned content");
    assert!(r.text().unwrap().contains("only point at signed content"));
    let r = c.put(format!("{url}/v2/gated/app/manifests/{d2}")).header("Content-Type", OCI_MANIFEST).body(m2.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    let out = sign_with_berth(&s, &format!("gated/app@{d2}"), &release_key, "s3cret pass");
    assert!(out.status.success(), "{}", text(&out));
    let r = c.put(format!("{url}/v2/gated/app/manifests/v2")).header("Content-Type", OCI_MANIFEST).body(m2).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(pull(url, "gated/app", "v2").0, 200);

    // Signature state in the repository API and in metrics.
    let view: Value = c.get(format!("{url}/api/v1/repositories/prod/signed/manifests/v1")).send().unwrap().json().unwrap();
    assert_eq!(view["signatures"]["status"], "signed", "{view}");
    assert_eq!(view["signatures"]["signer"], "release");
    assert_eq!(view["signatures"]["policy"], "enforce");
    assert!(view["signatures"]["verified_at"].as_i64().unwrap() > 0);
    assert_eq!(view["signatures"]["signatures"][0]["format"], "cosign");
    let repo: Value = c.get(format!("{url}/api/v1/repositories/prod/signed")).send().unwrap().json().unwrap();
    let v1 = repo["tags"].as_array().unwrap().iter().find(|t| t["name"] == "v1").unwrap();
    assert_eq!(v1["signatures"]["status"], "signed", "{repo}");
    assert_eq!(v1["signatures"]["signer"], "release");
    let sig_tag = repo["tags"].as_array().unwrap().iter().find(|t| t["name"] != "v1").unwrap();
    assert!(sig_tag["signatures"].is_null(), "signature artifacts carry no status: {repo}");
    let view: Value = c.get(format!("{url}/api/v1/repositories/prod/moved/manifests/v1")).send().unwrap().json().unwrap();
    assert_eq!(view["signatures"]["status"], "wrong_subject", "{view}");
    let metrics = c.get(format!("{url}/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("berth_signature_verifications_total{result=\"signed\"}"), "{metrics}");
    assert!(metrics.contains("berth_signature_verifications_total{result=\"unsigned\"}"));
    assert!(metrics.contains("berth_signature_policy_total{mode=\"enforce\",result=\"denied\"}"));
}

/// A fresh one-layer image's manifest, with its blobs pushed but not the manifest.
fn image_bytes(c: &reqwest::blocking::Client, url: &str, repo: &str) -> (Vec<u8>, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{}}}"#, rand::random::<u64>()).into_bytes();
    let layer = common::random_bytes(500);
    let cd = push_blob(c, url, repo, &config);
    let ld = push_blob(c, url, repo, &layer);
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    let d = sha256(&m);
    (m, d)
}

// ---- Notary Project --------------------------------------------------------

/// ECDSA signature, DER (as rcgen makes it) to JWS's fixed r||s.
fn der_to_fixed(der: &[u8], n: usize) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > n && int[0] == 0 {
            int = &int[1..];
        }
        out.extend(std::iter::repeat(0).take(n - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { params, key, cert }
}

/// A leaf certificate issued by `ca`, and its key.
fn leaf(ca: &Ca, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca.params.clone(), &ca.key);
    (params.signed_by(&key, &issuer).unwrap(), key)
}

/// A JWS envelope signed by `key`, naming `digest`/`size`, with chain `x5c`.
fn jws(key: &rcgen::KeyPair, x5c: &[&rcgen::Certificate], digest: &str, size: usize) -> Vec<u8> {
    use rcgen::SigningKey;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let protected = json!({
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": "2026-01-01T00:00:00Z"
    });
    let payload = json!({"targetArtifact": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}});
    let p = url.encode(protected.to_string());
    let b = url.encode(payload.to_string());
    let sig = der_to_fixed(&key.sign(format!("{p}.{b}").as_bytes()).unwrap(), 32);
    json!({
        "payload": b,
        "protected": p,
        "header": {
            "x5c": x5c.iter().map(|c| B64.encode(c.der())).collect::<Vec<_>>(),
            "io.cncf.notary.signingAgent": "test"
        },
        "signature": url.encode(sig)
    })
    .to_string()
    .into_bytes()
}

/// Pushes a referrer of `subject` (its manifest bytes) carrying `envelope`
/// as a layer of `layer_type`, with `artifact_type`; returns the status.
fn push_referrer(url: &str, repo: &str, subject: &[u8], artifact_type: &str, layer_type: &str, envelope: &[u8]) -> u16 {
    let c = client();
    let layer = push_blob(&c, url, repo, envelope);
    let empty = push_blob(&c, url, repo, b"{}");
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": layer_type, "digest": layer, "size": envelope.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(subject), "size": subject.len()}
    })
    .to_string();
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{}", sha256(m.as_bytes())))
        .header("Content-Type", OCI_MANIFEST)
        .body(m)
        .send()
        .unwrap();
    r.status().as_u16()
}

const NOTATION: &str = "application/vnd.cncf.notary.signature";
const JOSE: &str = "application/jose+json";

#[test]
fn notation_signatures_need_a_trusted_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = ca("Acme Signing CA");
    let rogue = ca("Rogue CA");
    std::fs::write(tmp.path().join("acme.pem"), acme.cert.pem()).unwrap();
    let toml = format!(
        "[signatures.trust_stores]\nacme = {:?}\n[[signatures.policies]]\nrepositories = [\"notary/**\"]\nverify = \"enforce\"\ntrust_stores = [\"acme\"]\n",
        tmp.path().join("acme.pem")
    );
    let s = Server::start_config(tmp.path(), &toml);
    let url = &s.url;
    let c = client();
    let (good_leaf, good_key) = leaf(&acme, "builder.acme");
    let (bad_leaf, bad_key) = leaf(&rogue, "builder.rogue");

    let (m, d) = push_image(&c, url, "notary/good", "v1");
    assert_denied(url, "notary/good", "v1", "not signed");
    let env = jws(&good_key, &[&good_leaf, &acme.cert], &d, m.len());
    assert_eq!(push_referrer(url, "notary/good", &m, NOTATION, JOSE, &env), 201);
    assert_eq!(pull(url, "notary/good", "v1").0, 200);
    // The leaf alone (the store holds the root) is enough too.
    let (m, d) = push_image(&c, url, "notary/leafonly", "v1");
    assert_eq!(push_referrer(url, "notary/leafonly", &m, NOTATION, JOSE, &jws(&good_key, &[&good_leaf], &d, m.len())), 201);
    assert_eq!(pull(url, "notary/leafonly", "v1").0, 200);

    // A chain to another CA is refused.
    let (m, d) = push_image(&c, url, "notary/rogue", "v1");
    assert_eq!(push_referrer(url, "notary/rogue", &m, NOTATION, JOSE, &jws(&bad_key, &[&bad_leaf, &rogue.cert], &d, m.len())), 201);
    assert_denied(url, "notary/rogue", "v1", "trusted certificate authority");
    // A trusted chain, but the signed descriptor names another size or digest.
    let (m, d) = push_image(&c, url, "notary/size", "v1");
    assert_eq!(push_referrer(url, "notary/size", &m, NOTATION, JOSE, &jws(&good_key, &[&good_leaf], &d, m.len() + 1)), 201);
    assert_denied(url, "notary/size", "v1", "names another digest");
    let (m, _) = push_image(&c, url, "notary/other", "v1");
    let other = format!("sha256:{}", "0".repeat(64));
    assert_eq!(push_referrer(url, "notary/other", &m, NOTATION, JOSE, &jws(&good_key, &[&good_leaf], &other, m.len())), 201);
    assert_denied(url, "notary/other", "v1", "names another digest");
    // An ordinary end-entity certificate of the trusted CA (a TLS server's)
    // cannot act as an intermediate, nor sign.
    let tls_leaf = {
        let mut params = rcgen::CertificateParams::new(vec!["www.acme".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().signed_by(&key, &rcgen::Issuer::new(acme.params.clone(), &acme.key)).unwrap();
        Ca { params, key, cert }
    };
    let (evil, evil_key) = leaf(&tls_leaf, "attacker");
    let (m, d) = push_image(&c, url, "notary/via-tls-leaf", "v1");
    let env = jws(&evil_key, &[&evil, &tls_leaf.cert], &d, m.len());
    assert_eq!(push_referrer(url, "notary/via-tls-leaf", &m, NOTATION, JOSE, &env), 201);
    assert_denied(url, "notary/via-tls-leaf", "v1", "trusted certificate authority");
    let (m, d) = push_image(&c, url, "notary/tls-signer", "v1");
    let env = jws(&tls_leaf.key, &[&tls_leaf.cert], &d, m.len());
    assert_eq!(push_referrer(url, "notary/tls-signer", &m, NOTATION, JOSE, &env), 201);
    assert_denied(url, "notary/tls-signer", "v1", "code-signing");
    // Signed by a key other than the certificate's.
    let (m, d) = push_image(&c, url, "notary/forged", "v1");
    assert_eq!(push_referrer(url, "notary/forged", &m, NOTATION, JOSE, &jws(&bad_key, &[&good_leaf], &d, m.len())), 201);
    assert_denied(url, "notary/forged", "v1", "does not verify");

    // The signatures stay discoverable through the referrers API.
    let (_, d) = ("", sha256(&pull(url, "notary/good", "v1").1.into_bytes()));
    let r: Value = c.get(format!("{url}/v2/notary/good/referrers/{d}")).send().unwrap().json().unwrap();
    assert_eq!(r["manifests"][0]["artifactType"], NOTATION);
    let sig = r["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(pull(url, "notary/good", sig).0, 200, "signature artifacts are served");
    let view: Value = c.get(format!("{url}/api/v1/repositories/notary/good/manifests/v1")).send().unwrap().json().unwrap();
    assert_eq!(view["signatures"]["format"], "notation", "{view}");
    assert!(view["signatures"]["signer"].as_str().unwrap().contains("builder.acme"), "{view}");
}

// ---- sigstore bundles, malformed input ---------------------------------------

fn dsse_bundle(signer: &SigStoreSigner, digest: &str) -> Vec<u8> {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "image", "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {}
    })
    .to_string();
    let t = "application/vnd.in-toto+json";
    let mut pae = format!("DSSEv1 {} {t} {} ", t.len(), statement.len()).into_bytes();
    pae.extend_from_slice(statement.as_bytes());
    let sig = signer.sign(&pae).unwrap();
    json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "partner"}},
        "dsseEnvelope": {"payload": B64.encode(statement), "payloadType": t, "signatures": [{"sig": B64.encode(sig), "keyid": ""}]}
    })
    .to_string()
    .into_bytes()
}

const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

#[test]
fn bundles_and_malformed_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (partner, partner_pub) = sigstore_key(tmp.path(), "partner");
    let (stranger, _) = sigstore_key(tmp.path(), "stranger");
    let toml = format!("[signatures.keys]\npartner = {partner_pub:?}\n[[signatures.policies]]\nrepositories = [\"prod/**\"]\nverify = \"enforce\"\n");
    let s = Server::start_config(tmp.path(), &toml);
    let url = &s.url;
    let c = client();

    // A sigstore bundle (DSSE, in-toto statement) as a referrer.
    let (m, d) = push_image(&c, url, "prod/bundled", "v1");
    assert_eq!(push_referrer(url, "prod/bundled", &m, BUNDLE, BUNDLE, &dsse_bundle(&partner, &d)), 201);
    assert_eq!(pull(url, "prod/bundled", "v1").0, 200);
    let (m, d) = push_image(&c, url, "prod/bundled-stranger", "v1");
    assert_eq!(push_referrer(url, "prod/bundled-stranger", &m, BUNDLE, BUNDLE, &dsse_bundle(&stranger, &d)), 201);
    assert_denied(url, "prod/bundled-stranger", "v1", "trusted key");

    // A plain image under the signature tag: not a signature.
    let (_, d) = push_image(&c, url, "prod/bad1", "v1");
    push_image(&c, url, "prod/bad1", &cosign_tag(&d));
    assert_denied(url, "prod/bad1", "v1", "not a cosign signature");
    // A cosign layer whose annotation is not base64.
    let (_, d) = push_image(&c, url, "prod/bad2", "v1");
    push_cosign(url, "prod/bad2", &d, &d, |_| "%%% not base64 %%%".into());
    assert_denied(url, "prod/bad2", "v1", "not base64");
    // A payload that is not JSON, signed by a trusted key.
    let (_, d) = push_image(&c, url, "prod/bad3", "v1");
    let junk = common::random_bytes(300);
    let layer = push_blob(&c, url, "prod/bad3", &junk);
    let sig_manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push_blob(&c, url, "prod/bad3", b"{}"), "size": 2},
        "layers": [{"mediaType": SIMPLESIGNING, "digest": layer, "size": junk.len(),
            "annotations": {"dev.cosignproject.cosign/signature": B64.encode(partner.sign(&junk).unwrap())}}]}).to_string();
    let r = c.put(format!("{url}/v2/prod/bad3/manifests/{}", cosign_tag(&d))).header("Content-Type", OCI_MANIFEST).body(sig_manifest).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_denied(url, "prod/bad3", "v1", "not JSON");
    // A huge payload: never read past the bound.
    let (_, d) = push_image(&c, url, "prod/huge", "v1");
    let huge = vec![b'{'; 3 * 1024 * 1024];
    let layer = push_blob(&c, url, "prod/huge", &huge);
    let sig_manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push_blob(&c, url, "prod/huge", b"{}"), "size": 2},
        "layers": [{"mediaType": SIMPLESIGNING, "digest": layer, "size": huge.len(),
            "annotations": {"dev.cosignproject.cosign/signature": "AAAA"}}]}).to_string();
    let r = c.put(format!("{url}/v2/prod/huge/manifests/{}", cosign_tag(&d))).header("Content-Type", OCI_MANIFEST).body(sig_manifest).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_denied(url, "prod/huge", "v1", "no usable signature layer");
    // Wrong media types: a notation signature with a COSE or garbage envelope.
    let (m, _) = push_image(&c, url, "prod/cose", "v1");
    assert_eq!(push_referrer(url, "prod/cose", &m, NOTATION, "application/cose", b"\xd2\x84"), 201);
    assert_denied(url, "prod/cose", "v1", "COSE");
    let (m, _) = push_image(&c, url, "prod/garbage", "v1");
    assert_eq!(push_referrer(url, "prod/garbage", &m, NOTATION, JOSE, b"{not json"), 201);
    assert_denied(url, "prod/garbage", "v1", "not JSON");
    // A signature whose subject does not exist: accepted as a referrer,
    // the subject is simply unknown.
    let ghost = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","ghost":1}"#;
    assert_eq!(push_referrer(url, "prod/bundled", ghost, BUNDLE, BUNDLE, &dsse_bundle(&partner, &sha256(ghost))), 201);
    assert_eq!(pull(url, "prod/bundled", &sha256(ghost)).0, 404);
    let r = c.get(format!("{url}/v2/prod/bundled/referrers/{}", sha256(ghost))).send().unwrap();
    assert_eq!(r.status(), 200);

    // A runnable image that calls itself a signature (artifactType of a
    // bundle or a notation signature, with or without a subject) is an
    // unsigned image, refused by the pull and by require_signed_tags.
    for (i, artifact_type) in [BUNDLE, NOTATION].into_iter().enumerate() {
        let (m, _) = push_image(&c, url, "prod/disguised", &format!("plain{i}"));
        let mut v: Value = serde_json::from_slice(&m).unwrap();
        v["artifactType"] = artifact_type.into();
        let body = v.to_string();
        let r = c.put(format!("{url}/v2/prod/disguised/manifests/v{i}")).header("Content-Type", OCI_MANIFEST).body(body).send().unwrap();
        assert_eq!(r.status(), 201);
        assert_denied(url, "prod/disguised", &format!("v{i}"), "no signature");
    }

    // A filesystem layer labelled as a signature payload is not a signature:
    // its bytes are not what the type says.
    let tarball = common::random_bytes(2048);
    let layer = push_blob(&c, url, "prod/disguised", &tarball);
    let config = push_blob(&c, url, "prod/disguised", br#"{"architecture":"amd64","os":"linux"}"#);
    for (i, layer_type) in [SIMPLESIGNING, BUNDLE, "application/vnd.dsse.envelope.v1+json"].into_iter().enumerate() {
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": layer_type, "digest": layer, "size": tarball.len()}]}).to_string();
        let r = c.put(format!("{url}/v2/prod/disguised/manifests/labelled{i}")).header("Content-Type", OCI_MANIFEST).body(m).send().unwrap();
        assert_eq!(r.status(), 201);
        assert_denied(url, "prod/disguised", &format!("labelled{i}"), "no signature");
    }

    // Nothing above made the server fail.
    assert!(!s.stderr().contains("request failed"), "{}", s.stderr());
}

#[test]
fn configuration_errors_are_precise() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let f = tmp.path().join(format!("c{}.toml", rand::random::<u32>()));
        std::fs::write(&f, toml).unwrap();
        berth(&["config", "check", f.to_str().unwrap()], "")
    };
    let out = check("[[signatures.policies]]\nrepositories = [\"a/**\"]\nverify = \"enforce\"\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("no key or trust store"), "{}", text(&out));
    let out = check("[signatures.keys]\nk = \"/nonexistent.pub\"\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("signatures.keys.k"), "{}", text(&out));
    std::fs::write(tmp.path().join("bad.pub"), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let out = check(&format!("[signatures.keys]\nk = {:?}\n", tmp.path().join("bad.pub")));
    assert!(!out.status.success());
    assert!(text(&out).contains("SubjectPublicKeyInfo"), "{}", text(&out));
    let out = check("[[signatures.policies]]\nrepositories = [\"a/**\"]\nverify = \"sometimes\"\n");
    assert!(text(&out).contains("\"enforce\", \"warn\" or \"off\""), "{}", text(&out));
    let (_, public) = generate_key(tmp.path(), "k", "pw");
    let out = check(&format!("[signatures.keys]\nk = {public:?}\n[[signatures.policies]]\nrepositories = [\"a/**\"]\nverify = \"warn\"\nkeys = [\"nope\"]\n"));
    assert!(text(&out).contains("\"nope\" is not a key"), "{}", text(&out));
    let out = check(&format!("[signatures.keys]\nk = {public:?}\n[[signatures.policies]]\nrepositories = [\"a/**\"]\nverify = \"enforce\"\n"));
    assert!(out.status.success(), "{}", text(&out));
}

// ---- real clients -------------------------------------------------------------

#[test]
fn skopeo_and_docker_pull_only_signed_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = generate_key(tmp.path(), "release", "pw");
    let toml = format!("[signatures.keys]\nrelease = {public:?}\n[[signatures.policies]]\nrepositories = [\"prod/**\"]\nverify = \"enforce\"\n");
    let s = Server::start_config(tmp.path(), &toml);
    let c = client();

    if common::require("skopeo") {
        push_image(&c, &s.url, "prod/sk-signed", "v1");
        push_image(&c, &s.url, "prod/sk-unsigned", "v1");
        assert!(sign_with_berth(&s, "prod/sk-signed:v1", &key, "pw").status.success());
        let copy = |repo: &str| {
            clients_support::output(
                Command::new("skopeo")
                    .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
                    .arg(format!("docker://{}/{repo}:v1", s.addr))
                    .arg(format!("dir:{}", tmp.path().join(repo.replace('/', "_")).display())),
            )
        };
        let ok = copy("prod/sk-signed");
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let refused = copy("prod/sk-unsigned");
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("denied"), "{}", String::from_utf8_lossy(&refused.stderr));
    }

    let docker = |args: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_BUILDKIT", "0").args(args);
        clients_support::output(&mut cmd)
    };
    if !(common::have("docker") && docker(&["info", "--format", "{{.ServerVersion}}"]).status.success()) {
        eprintln!("docker part skipped (no engine)");
        return;
    }
    let id = clients_support::unique();
    let signed = format!("{}/prod/dk-{id}:signed", s.addr);
    let unsigned = format!("{}/prod/dk-{id}:unsigned", s.addr);
    let ctx = tempfile::tempdir().unwrap();
    for (tag, content) in [(&signed, "signed"), (&unsigned, "unsigned")] {
        std::fs::write(ctx.path().join("f.txt"), format!("{content} {id}\n")).unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f.txt /f.txt\n").unwrap();
        let b = docker(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
        assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
        let p = docker(&["push", tag]);
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    }
    let out = berth(&["sign", &signed, "--key", &key], "pw\n");
    assert!(out.status.success(), "{}", text(&out));
    for tag in [&signed, &unsigned] {
        let _ = docker(&["rmi", "-f", tag]);
    }
    let ok = docker(&["pull", &signed]);
    let refused = docker(&["pull", &unsigned]);
    let _ = docker(&["rmi", "-f", &signed]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("denied"), "{}", String::from_utf8_lossy(&refused.stderr));
    eprintln!("docker part: ran");
}

// ---- indexes, deletion with the subject ------------------------------------------

fn push_index(c: &reqwest::blocking::Client, url: &str, repo: &str, tag: &str, children: &[(Vec<u8>, String)]) -> String {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children.iter().enumerate().map(|(i, (m, d))| json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": m.len(),
            "platform": {"os": "linux", "architecture": (["amd64", "arm64"][i % 2])}
        })).collect::<Vec<_>>()
    })
    .to_string();
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    sha256(index.as_bytes())
}

fn children(c: &reqwest::blocking::Client, url: &str, repo: &str) -> Vec<(Vec<u8>, String)> {
    (0..2)
        .map(|_| {
            let (m, d) = image_bytes(c, url, repo);
            let r = c.put(format!("{url}/v2/{repo}/manifests/{d}")).header("Content-Type", OCI_MANIFEST).body(m.clone()).send().unwrap();
            assert_eq!(r.status(), 201);
            (m, d)
        })
        .collect()
}

#[test]
fn indexes_and_deletion_with_the_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = generate_key(tmp.path(), "release", "pw");
    let (partner, partner_pub) = sigstore_key(tmp.path(), "partner");
    let toml = format!(
        "[signatures.keys]\nrelease = {public:?}\npartner = {partner_pub:?}\n[[signatures.policies]]\nrepositories = [\"prod/**\"]\nverify = \"enforce\"\n"
    );
    let s = Server::start_config(tmp.path(), &toml);
    let (url, c) = (&s.url, client());
    let accept_all = |repo: &str, reference: &str| {
        c.get(format!("{url}/v2/{repo}/manifests/{reference}"))
            .header("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .status()
            .as_u16()
    };

    // A signed index: it and the platform manifests it lists are served.
    let kids = children(&c, url, "prod/multi");
    let index = push_index(&c, url, "prod/multi", "v1", &kids);
    assert_eq!(accept_all("prod/multi", "v1"), 403);
    assert_eq!(accept_all("prod/multi", &kids[0].1), 403);
    assert!(sign_with_berth(&s, "prod/multi:v1", &key, "pw").status.success());
    assert_eq!(accept_all("prod/multi", "v1"), 200);
    assert_eq!(accept_all("prod/multi", &index), 200);
    for (_, d) in &kids {
        assert_eq!(accept_all("prod/multi", d), 200, "platform manifest of a signed index");
    }

    // An unsigned index whose every platform manifest is signed is served;
    // with one unsigned platform it is not.
    let kids = children(&c, url, "prod/each");
    push_index(&c, url, "prod/each", "v1", &kids);
    assert!(sign_with_berth(&s, &format!("prod/each@{}", kids[0].1), &key, "pw").status.success());
    assert_eq!(accept_all("prod/each", "v1"), 403);
    assert!(sign_with_berth(&s, &format!("prod/each@{}", kids[1].1), &key, "pw").status.success());
    assert_eq!(accept_all("prod/each", "v1"), 200);

    // Deleting an image deletes its signatures: the cosign tag and referrers.
    let (m, d) = push_image(&c, url, "prod/gone", "v1");
    assert!(sign_with_berth(&s, "prod/gone:v1", &key, "pw").status.success());
    assert_eq!(push_referrer(url, "prod/gone", &m, BUNDLE, BUNDLE, &dsse_bundle(&partner, &d)), 201);
    let refs: Value = c.get(format!("{url}/v2/prod/gone/referrers/{d}")).send().unwrap().json().unwrap();
    let bundle = refs["manifests"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(pull(url, "prod/gone", &cosign_tag(&d)).0, 200);
    let r = c.delete(format!("{url}/v2/prod/gone/manifests/{d}")).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(pull(url, "prod/gone", &cosign_tag(&d)).0, 404);
    assert_eq!(pull(url, "prod/gone", &bundle).0, 404);
}

// ---- the CLI over TLS with credentials ------------------------------------------------

#[test]
fn sign_and_verify_over_tls_with_credentials() {
    if !common::require("skopeo") || !common::require("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let o = berth(&["tls", "self-signed", "--host", "127.0.0.1", "--out", certs.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", text(&o));
    let ca = certs.join("ca.crt");
    let htpasswd = dir.path().join("htpasswd");
    common::write_htpasswd(&htpasswd, &[("signer", "Sign-Pw-1")]);
    let (key, public) = generate_key(dir.path(), "release", "key-pw");
    let toml = format!(
        "[auth]\nmode = \"token\"\nhtpasswd = {htpasswd:?}\n[[auth.rules]]\nrepositories = [\"**\"]\nactions = [\"admin\"]\nusers = [\"signer\"]\n\
         [tls]\ncert = {:?}\nkey = {:?}\n\
         [signatures.keys]\nrelease = {public:?}\n[[signatures.policies]]\nrepositories = [\"prod/**\"]\nverify = \"enforce\"\n",
        certs.join("server.crt"),
        certs.join("server.key"),
    );
    let s = Server::start_config(dir.path(), &toml);
    assert!(s.url.starts_with("https://"));
    let src = dir.path().join("src");
    clients_support::make_oci_layout(&src, &json!({"images": [{"tag": "v1", "arch": "amd64", "layers": [1000]}]}));
    let cert_dir = dir.path().join("cert-dir");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&ca, cert_dir.join("ca.crt")).unwrap();
    let image = format!("{}/prod/tls-app:v1", s.addr);
    clients_support::run(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-creds", "signer:Sign-Pw-1", "--dest-cert-dir"])
            .arg(&cert_dir)
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{image}")),
    );
    let pull_ok = || {
        clients_support::output(
            Command::new("skopeo")
                .args(["--insecure-policy", "inspect", "--raw", "--creds", "signer:Sign-Pw-1", "--cert-dir"])
                .arg(&cert_dir)
                .arg(format!("docker://{image}")),
        )
        .status
        .success()
    };
    assert!(!pull_ok(), "unsigned content is refused");

    let ca_s = ca.to_str().unwrap();
    // Token authentication: the key's password, then the registry's, on stdin.
    let out = berth(&["sign", &image, "--key", &key, "--ca-cert", ca_s, "--username", "signer", "--password-stdin"], "key-pw\nSign-Pw-1\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(pull_ok(), "signed content is served");
    let out = berth(&["verify", &image, "--key", &public, "--ca-cert", ca_s, "--username", "signer", "--password-stdin"], "Sign-Pw-1\n");
    assert!(out.status.success(), "{}", text(&out));
    // Wrong registry password: a clean failure.
    let out = berth(&["verify", &image, "--key", &public, "--ca-cert", ca_s, "--username", "signer", "--password-stdin"], "nope\n");
    assert!(!out.status.success());
    // Plain HTTP to a TLS-only server fails cleanly.
    let out = berth(&["verify", &image.replace("127.0.0.1", "localhost"), "--key", &public, "--insecure"], "");
    assert!(!out.status.success());
}
