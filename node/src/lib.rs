//! The otamesh device node: everything that touches disks, clocks and networks.
//!
//! - [`store`]: the content-addressed release store (also the origin's layout).
//! - [`keys`]: key files and trust files.
//! - [`clock`]: the wall clock, read in one place.

pub mod clock;
pub mod keys;
pub mod store;
