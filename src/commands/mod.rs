//! One module per command. Each has an `Args` (clap) and a `run` that returns the exit
//! code; errors carry context naming the file and the fix, printed on one line.

pub mod audit;
pub mod directive;
pub mod inspect;
pub mod keygen;
pub mod publish;
pub mod verify;
