//! One module per command. Each has an `Args` (clap) and a `run` that returns the exit
//! code; errors carry context naming the file and the fix, printed on one line.
//! [`text`] is shared by the commands that show a node's API to people.

pub mod audit;
#[cfg(feature = "full")]
pub mod bench;
#[cfg(feature = "full")]
pub mod demo;
pub mod directive;
pub mod enroll;
pub mod fleet;
pub mod inspect;
pub mod keygen;
pub mod publish;
pub mod report;
pub mod root;
pub mod serve;
pub mod sign;
pub mod signing;
pub mod status;
pub mod text;
pub mod verify;
