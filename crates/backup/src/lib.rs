//! Online, incremental, encrypted backups of a Berth registry.
//!
//! A snapshot is a consistent copy of the metadata (SQLite `VACUUM INTO`)
//! plus every blob that copy references. Blobs are immutable and named by
//! digest, so a blob already in the backup repository is never copied again.
//! See [`repo`] for the on-disk layout and crash-safety rules, and
//! [`crypto`] for keys and the object format.

pub mod crypto;
pub mod ops;
pub mod policy;
pub mod repo;
pub mod schedule;

pub use crypto::Secret;
pub use repo::{Access, Repository, Snapshot};
