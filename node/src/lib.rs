//! The otamesh device node: everything that touches disks, clocks and networks.
//!
//! - [`store`]: the content-addressed release store (also the origin's layout).
//! - [`keys`]: key files and trust files.
//! - [`roots`]: the root-of-trust chain a node walks at start and follows on the origin.
//! - [`clock`]: the wall clock, read in one place.
//! - [`datadir`]: the node's data directory (lock, identity, accepted manifests).
//! - [`config`]: flags and `--config` TOML for `otamesh node`.
//! - [`wire`]: gossip payloads and the chunk exchange protocol.
//! - [`origin`]: the HTTP(S) origin client (rate limit, retries, byte counters).
//! - [`metrics`], [`api`]: Prometheus metrics and the `/status` + `/metrics` API.
//! - [`node`]: the daemon's event loop, driving the core's fetch planner.
//! - [`announce`]: pushing a manifest (`otamesh announce`) or a directive into the mesh.
//! - [`cli`]: the entry points the `otamesh` binary calls.
//! - [`db`]: SQLite state: lifecycle per release, slots, the hash-chained audit log.
//! - [`device`]: the core device machine run inside the event loop.
//! - [`disk`]: the device's side effects (state, slots, hooks) on a worker thread.
//! - [`slots`]: A/B slot directories and the atomic switch.
//! - [`hooks`]: the install hook and the health check.
//! - [`feedback`]: why reports and directives from the mesh are refused; flood budget.
//! - [`intake`]: reports and directives from the fleet, verified and handed to the device;
//!   the fleet view behind `/fleet` and `/report`.
//! - [`site`]: the site's enrolled members and install-slot claims, as site gossip tells them.
//! - `hostile` (feature `testkit`): a lying site peer for the tests.
//! - [`guard`]: per-topic size limits and the admission of site messages.
//! - [`serve`]: a static HTTP origin over a store (`otamesh serve`, the demo).
//! - [`client`]: a client of the node API (`otamesh status`, `fleet`, `report`).
//! - [`fleetmesh`]: sites behind NAT: Kademlia, AutoNAT, relay client, DCUtR.
//! - [`relay`]: `otamesh relay`, a public bootstrap and relay node.

pub mod announce;
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod db;
pub mod device;
pub mod disk;
pub mod feedback;
pub mod fleetmesh;
pub mod guard;
pub mod hooks;
#[cfg(feature = "testkit")]
pub mod hostile;
pub mod ingest;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod relay;
pub mod roots;
pub mod serve;
pub mod site;
pub mod slots;
pub mod store;
pub mod wire;

#[cfg(test)]
pub(crate) mod testkit;
