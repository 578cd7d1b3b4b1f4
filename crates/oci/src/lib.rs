//! The OCI vocabulary Berth speaks: digests, repository names, tags,
//! manifests and the spec's error codes.
//!
//! This crate does no I/O and knows nothing of HTTP or storage; every other
//! crate builds on it.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::ErrorCode;
pub use manifest::{Descriptor, ManifestKind, ParsedManifest};
pub use name::{RepoName, Tag, Reference};
