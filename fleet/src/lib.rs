//! A local otamesh fleet on loopback, as one library: the demo, the integration tests
//! and the benchmarks all run fleets through it.
//!
//! **Goals**: one origin server ([`origin::Origin`], the node's own
//! [`OriginServer`](otamesh_node::serve::OriginServer) on a thread of its own), one
//! process manager ([`process::NodeProcess`]), releases and directives signed and
//! stored through the library ([`release`]), nodes enrolled through the library,
//! a fleet's topology and `/status` sampling into a timeline ([`fleet`]), and one
//! plotting module for fleets ([`plot`]).
//!
//! **Non-goals**: anything a device needs (this is vendor- and test-side tooling),
//! networks other than loopback or network namespaces, and deciding anything about a
//! rollout: the nodes decide, the harness only watches.

pub mod fleet;
pub mod origin;
pub mod plot;
pub mod process;
pub mod release;

pub use fleet::{Fleet, Member, Sample, Timeline};
pub use origin::Origin;
pub use process::NodeProcess;
