//! The sans-IO core of otamesh.
//!
//! Everything a device or the simulator decides lives here as plain, deterministic
//! Rust: no sockets, no files, no async, no clock, no global randomness. Time comes
//! in as an argument (`now`, milliseconds since the Unix epoch), randomness as a seed,
//! the world as input events; decisions come out as values. The node (`otamesh-node`)
//! and the simulator (`otamesh-sim`) are two drivers of this same code, so what the
//! simulator says about a rollout policy is said about the code devices run.
//!
//! Modules, bottom up:
//! - [`ids`]: BLAKE3-based identifiers ([`ChunkId`], [`ReleaseId`], [`DeviceId`]).
//! - [`codec`]: the one place that turns types into bytes and back.
//! - [`chunking`]: content-defined chunking of payloads (FastCDC).
//! - [`manifest`]: what a release is (RFC 9124 information model).
//! - [`trust`]: keys, trust roots, signatures, [`VerifiedManifest`].
//! - [`directive`]: signed halt / resume / revoke orders.
//! - [`enrolment`]: the publisher vouching for a device's key, site and class.
//! - [`root`]: the versioned root of trust and the rule for replacing it.
//! - [`metadata`]: any signed file, for co-signing and counting signatures.
//! - [`report`]: signed device status reports.
//! - [`rollout`]: the rollout policy and the pure [`rollout::decide`].
//! - [`gate`]: the per-release tally of reports and the health gate.
//! - [`lifecycle`]: the per-release state machine of one device.
//! - [`device`]: everything one device decides, with a [`lifecycle::Lifecycle`] inside;
//!   the node and the simulator both execute it.
//! - [`fetch`]: rendezvous hashing and the chunk fetch planner.
//! - [`site`]: who may speak on a site topic (enrolled members) and install-slot leases.
//! - [`fleet`]: the fleet inventory and rollout reports built from signed reports.
//! - [`reannounce`]: when a node publishes its own reports and the directives it applied
//!   again, so that what gossip lost still reaches every site.

pub mod chunking;
pub mod codec;
pub mod device;
pub mod directive;
pub mod enrolment;
pub mod fetch;
pub mod fleet;
pub mod gate;
pub mod ids;
pub mod lifecycle;
pub mod manifest;
pub mod metadata;
pub mod reannounce;
pub mod report;
pub mod rollout;
pub mod root;
pub mod site;
pub mod trust;

pub use ids::{ChunkId, DeviceId, ReleaseId};
pub use manifest::{Manifest, SignedManifest, UpdateKind};
pub use trust::{KeyId, PublicKey, SecretKey, TrustRoot, VerifiedManifest};

/// Milliseconds since the Unix epoch. The core never reads a clock; drivers pass this in.
pub type Millis = u64;
