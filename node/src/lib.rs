//! The otamesh device node: everything that touches disks, clocks and networks.
//!
//! - [`store`]: the content-addressed release store (also the origin's layout).
//! - [`keys`]: key files and trust files.
//! - [`clock`]: the wall clock, read in one place.
//! - [`db`]: SQLite state: lifecycle per release, slots, the hash-chained audit log.
//! - [`slots`]: A/B slot directories and the atomic switch.
//! - [`hooks`]: the install hook and the health check.

pub mod clock;
pub mod db;
pub mod device;
pub mod hooks;
pub mod keys;
pub mod slots;
pub mod store;

#[cfg(test)]
pub(crate) mod testkit;
