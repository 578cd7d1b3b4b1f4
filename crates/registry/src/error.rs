use berth_oci::Digest;

/// Everything a registry operation can refuse or fail with. The API layer
/// maps each variant to an HTTP status and OCI error code in one place.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repository name")]
    NameInvalid,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("invalid tag")]
    TagInvalid,
    #[error("{0}")]
    DigestInvalid(String),
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("{0}")]
    BlobUploadInvalid(String),
    /// A chunk does not start where the upload ends.
    #[error("chunk out of order: the upload holds {current_size} bytes")]
    ChunkOutOfOrder { current_size: u64 },
    /// A blob range that cannot be served.
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge { limit: usize },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    /// A delete refused because a manifest still refers to the target.
    #[error("{0}")]
    InUse(String),
    /// Refused by policy: an immutable tag, a quota.
    #[error("{0}")]
    Denied(String),
    /// The repository's signature policy refuses this content: the message
    /// says why (unsigned, untrusted key, payload names another digest).
    #[error("signature policy: {0}")]
    SignatureRequired(String),
    #[error("storage failure: {0}")]
    Storage(#[from] std::io::Error),
    #[error("metadata failure: {0}")]
    Metadata(String),
}

impl From<berth_meta::MetaError> for RegistryError {
    fn from(e: berth_meta::MetaError) -> Self {
        match e {
            berth_meta::MetaError::MissingBlob(d) | berth_meta::MetaError::MissingManifest(d) => {
                RegistryError::ManifestBlobUnknown(d)
            }
            e @ berth_meta::MetaError::InUse { .. } => RegistryError::InUse(e.to_string()),
            berth_meta::MetaError::Backend(s) => RegistryError::Metadata(s),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
