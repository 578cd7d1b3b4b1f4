//! Manifest parsing, for validation and indexing only: Berth always stores
//! and serves the exact bytes a client pushed.

use crate::digest::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Layers that live elsewhere (Windows base layers); never required locally.
const FOREIGN_LAYER_TYPES: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
];

/// Largest manifest accepted, as the spec suggests (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema2), including OCI artifacts.
    Image,
    /// An index (OCI image index or Docker manifest list).
    Index,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// A layer stored outside the registry: its media type says it is
    /// foreign (Docker) or non-distributable (OCI). `urls` alone does not
    /// make a layer foreign: clients fetch an ordinary layer from the
    /// registry whatever `urls` says, so it must be there.
    pub fn is_foreign(&self) -> bool {
        let t = self.media_type.as_str();
        FOREIGN_LAYER_TYPES.contains(&t) || t.starts_with("application/vnd.oci.image.layer.nondistributable.")
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Schema1 markers.
    fs_layers: Option<serde_json::Value>,
}

/// What Berth needs to know about a pushed manifest.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    /// `artifactType`, or for an image manifest without one, the config's
    /// media type (what the referrers API reports).
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("Docker schema1 manifests are not supported; push with a current client (schema2 or OCI)")]
    Schema1,
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {media_type:?}")]
    MediaTypeMismatch { content_type: String, media_type: String },
    #[error("{0}")]
    Shape(&'static str),
    #[error("key {0:?} differs from another key or a manifest field only in case; clients would read it differently")]
    AmbiguousKey(String),
    #[error("{0:?} is not a manifest media type: use {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST} or {DOCKER_MANIFEST_LIST}")]
    UnknownMediaType(String),
}

/// Field names of manifests and descriptors. Go's JSON decoder, which most
/// clients use, matches object keys to fields without regard to case (and
/// the last match wins), while Berth matches them exactly: `"Layers"` next
/// to `"layers"` would make a client pull layers Berth never checked.
const FIELDS: &[&str] = &[
    "schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests", "subject", "annotations",
    "digest", "size", "urls", "data", "platform", "architecture", "os", "os.version", "os.features", "variant",
    "features", "fsLayers", "blobSum", "history",
];

/// Refuses an object holding two keys that differ only in case, or a key
/// that differs from a manifest field name only in case: the manifest
/// would mean one thing to Berth and another to Go clients.
fn refuse_ambiguous_keys(v: &serde_json::Value) -> Result<(), ManifestError> {
    match v {
        serde_json::Value::Object(map) => {
            let mut seen = std::collections::HashSet::new();
            for (key, value) in map {
                let ambiguous = !seen.insert(key.to_ascii_lowercase())
                    || FIELDS.iter().any(|f| f.eq_ignore_ascii_case(key) && f != key);
                if ambiguous {
                    return Err(ManifestError::AmbiguousKey(key.clone()));
                }
                refuse_ambiguous_keys(value)?;
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(refuse_ambiguous_keys),
        _ => Ok(()),
    }
}

impl ParsedManifest {
    /// Parses and checks a manifest body. `content_type` is the request's
    /// Content-Type header, if any (parameters stripped by the caller).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
        // Media types are case-insensitive (RFC 6838); the registered ones
        // are lower case.
        let content_type = content_type.filter(|c| !c.is_empty()).map(str::to_ascii_lowercase);
        let content_type = content_type.as_deref();
        if matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
            return Err(ManifestError::Schema1);
        }
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let tree: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        refuse_ambiguous_keys(&tree)?;
        if raw.fs_layers.is_some() || raw.schema_version == Some(1) {
            return Err(ManifestError::Schema1);
        }
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        if let (Some(ct), Some(mt)) = (content_type, raw.media_type.as_deref()) {
            if !ct.eq_ignore_ascii_case(mt) {
                return Err(ManifestError::MediaTypeMismatch {
                    content_type: ct.to_string(),
                    media_type: mt.to_string(),
                });
            }
        }
        let media_type = raw
            .media_type
            .clone()
            .or_else(|| content_type.map(str::to_string))
            .unwrap_or_else(|| {
                if raw.manifests.is_some() { OCI_INDEX } else { OCI_MANIFEST }.to_string()
            });
        if matches!(media_type.as_str(), DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) {
            return Err(ManifestError::Schema1);
        }
        // Only the four manifest formats: the stored media type is served
        // back as Content-Type, so anything else (text/html…) would let a
        // pusher serve pages from the registry's origin.
        let kind = match media_type.as_str() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
            OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
            _ => return Err(ManifestError::UnknownMediaType(media_type)),
        };
        match kind {
            ManifestKind::Image => {
                if raw.config.is_none() {
                    return Err(ManifestError::Shape("an image manifest needs a config descriptor"));
                }
                if raw.manifests.is_some() {
                    return Err(ManifestError::Shape("an image manifest cannot list manifests"));
                }
            }
            ManifestKind::Index => {
                if raw.manifests.is_none() {
                    return Err(ManifestError::Shape("an index needs a manifests array"));
                }
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(ManifestError::Shape("an index cannot have config or layers"));
                }
            }
        }
        let all = raw.config.iter().chain(raw.layers.iter().flatten()).chain(raw.manifests.iter().flatten());
        if all.clone().chain(raw.subject.iter()).any(|d| d.size < 0) {
            return Err(ManifestError::Shape("descriptor size must not be negative"));
        }
        let artifact_type = raw.artifact_type.clone().or_else(|| match kind {
            ManifestKind::Image => raw.config.as_ref().map(|c| c.media_type.clone()),
            ManifestKind::Index => None,
        });
        Ok(ParsedManifest {
            kind,
            media_type,
            artifact_type,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations.unwrap_or_default(),
        })
    }

    /// Blobs this manifest needs in the same repository (config and local layers).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|l| !l.is_foreign()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]{extra}}}"#
        )
    }

    #[test]
    fn parses_image() {
        let m = ParsedManifest::parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}"#);
        let m = ParsedManifest::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().digest.to_string(), D);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
    }

    #[test]
    fn content_type_mismatch() {
        let err = ParsedManifest::parse(image("").as_bytes(), Some(DOCKER_MANIFEST)).unwrap_err();
        assert!(matches!(err, ManifestError::MediaTypeMismatch { .. }));
    }

    #[test]
    fn keys_that_differ_only_in_case_are_refused() {
        let twice = image("").replacen('{', r#"{"Layers":[],"#, 1);
        assert!(matches!(ParsedManifest::parse(twice.as_bytes(), None), Err(ManifestError::AmbiguousKey(k)) if k == "Layers"));
        let in_descriptor = image("").replace(r#""size":"#, r#""Digest":"sha256:00","size":"#);
        assert!(matches!(ParsedManifest::parse(in_descriptor.as_bytes(), None), Err(ManifestError::AmbiguousKey(_))));
        // Annotation keys are free-form, but case twins are still ambiguous.
        let notes = image(r#","annotations":{"org.example.Note":"a","org.example.note":"b"}"#);
        assert!(ParsedManifest::parse(notes.as_bytes(), None).is_err());
        let fine = image(r#","annotations":{"org.example.Note":"a"}"#);
        ParsedManifest::parse(fine.as_bytes(), None).unwrap();
    }

    #[test]
    fn media_types_compare_without_case() {
        let m = ParsedManifest::parse(image("").as_bytes(), Some("Application/VND.OCI.Image.Manifest.v1+JSON")).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
    }

    #[test]
    fn refuses_schema1_and_garbage() {
        assert_eq!(
            ParsedManifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err(),
            ManifestError::Schema1
        );
        assert!(matches!(ParsedManifest::parse(b"nope", None), Err(ManifestError::Json(_))));
        let bad_digest = image("").replace(&D[10..20], "ZZZZZZZZZZ");
        assert!(matches!(ParsedManifest::parse(bad_digest.as_bytes(), None), Err(ManifestError::Json(_))));
    }

    #[test]
    fn index() {
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#);
        let m = ParsedManifest::parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
    }
}
