//! The wall clock. The core never reads time; drivers call [`now_ms`] and pass it in.

use std::time::{SystemTime, UNIX_EPOCH};

use otamesh_core::Millis;

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}
