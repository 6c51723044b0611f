//! What the signing commands (`publish`, `directive`, `enroll`, `root new`, `sign`)
//! share: reading several `--key` files, and `--expires-in` durations.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use otamesh_core::{Millis, SecretKey, TrustRoot};
use otamesh_node::keys;

/// A lifetime given as `90s`, `45m`, `12h` or `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub Millis);

impl FromStr for Lifetime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a duration: use a number and s, m, h or d (90s, 12h, 30d)");
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let unit_ms: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(format!("{s:?} would be expired at once: give a duration above zero"));
        }
        n.checked_mul(unit_ms).map(Lifetime).ok_or_else(bad)
    }
}

/// Reads every `--key` file, refusing the same key twice (it would count once).
pub fn read_keys(flag: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    let mut keys: Vec<SecretKey> = Vec::with_capacity(paths.len());
    for path in paths {
        let key = keys::read_secret_key(path).with_context(|| format!("{flag} --key"))?;
        if keys.iter().any(|k| k.public() == key.public()) {
            anyhow::bail!(
                "{flag} --key {}: the same key is given twice; each --key must be a different key holder's",
                path.display()
            );
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The trust root of exactly these keys, all required: what a command checks its own
/// signatures against before writing anything.
pub fn all_of(keys: &[SecretKey]) -> TrustRoot {
    // Invariant: read_keys returns at least one key (clap requires --key) and no
    // duplicates, so a threshold of keys.len() is always reachable.
    TrustRoot::new(keys.iter().map(SecretKey::public), keys.len()).expect("distinct keys, at least one")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!("90s".parse(), Ok(Lifetime(90_000)));
        assert_eq!("12h".parse(), Ok(Lifetime(43_200_000)));
        assert_eq!("30d".parse(), Ok(Lifetime(2_592_000_000)));
        assert_eq!("5m".parse(), Ok(Lifetime(300_000)));
        for bad in ["", "12", "h", "1.5h", "3w", "-1d", "99999999999999999999d"] {
            assert!(bad.parse::<Lifetime>().is_err(), "{bad}");
        }
        assert!("0s".parse::<Lifetime>().unwrap_err().contains("above zero"));
    }
}
