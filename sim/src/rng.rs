//! Counter-based randomness: one stream per (seed, device, purpose).
//!
//! Every random draw is a pure function of the master seed, a key (a device or site
//! index), a [`Purpose`] and a draw counter, mixed with splitmix64. Nothing depends on
//! the order in which the simulator asks, so a device draws the same install time and
//! the same health-check verdict under every rollout strategy, and comparisons between
//! strategies are not noise.

/// What a draw is for; each purpose is an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Which hardware class a device has.
    Class = 1,
    /// How large a site is.
    SiteSize,
    /// A site's time zone.
    SiteZone,
    /// Install duration.
    Install,
    /// Reboot duration.
    Reboot,
    /// Whether the install fails.
    InstallFail,
    /// Whether the device dies mid-install, and when.
    Death,
    /// Whether the bad release fails this device's health check.
    HealthFail,
    /// Online/offline periods.
    Churn,
    /// When the announcement reaches the device.
    Announce,
    /// Which pieces a delta already has.
    Delta,
    /// Which piece a device asks for first.
    PieceOrder,
    /// Device identities.
    Identity,
    /// Which WAN a site has (`network.site_wan_mix`).
    SiteWan,
    /// When a device arrives (`[arrivals]`, an open system).
    Arrival,
    /// The size of the release a device fetches (`release.size`).
    Size,
}

/// The splitmix64 finalizer: a bijective, well-mixed map of u64.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `n`th 64-bit draw of the stream (seed, key, purpose).
pub fn draw(seed: u64, key: u64, purpose: Purpose, n: u64) -> u64 {
    mix(mix(mix(seed ^ mix(purpose as u64)) ^ key) ^ n)
}

/// The `n`th draw of the stream as a float in [0, 1).
pub fn unit(seed: u64, key: u64, purpose: Purpose, n: u64) -> f64 {
    (draw(seed, key, purpose, n) >> 11) as f64 / (1u64 << 53) as f64
}

/// An exponentially distributed draw with the given mean.
pub fn exponential(seed: u64, key: u64, purpose: Purpose, n: u64, mean: f64) -> f64 {
    -mean * (1.0 - unit(seed, key, purpose, n)).ln()
}

/// A Pareto draw with the given mean and shape `alpha` (> 1): scale
/// `mean (alpha - 1) / alpha`, tail `P(X > x) = (scale / x)^alpha`.
pub fn pareto(seed: u64, key: u64, purpose: Purpose, n: u64, mean: f64, alpha: f64) -> f64 {
    let scale = mean * (alpha - 1.0) / alpha;
    scale / (1.0 - unit(seed, key, purpose, n)).powf(1.0 / alpha)
}

/// A draw uniform in `[lo, hi]`.
pub fn uniform(seed: u64, key: u64, purpose: Purpose, n: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit(seed, key, purpose, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_and_independent() {
        assert_eq!(draw(7, 3, Purpose::Install, 0), draw(7, 3, Purpose::Install, 0));
        assert_ne!(draw(7, 3, Purpose::Install, 0), draw(7, 3, Purpose::Reboot, 0));
        assert_ne!(draw(7, 3, Purpose::Install, 0), draw(7, 4, Purpose::Install, 0));
        assert_ne!(draw(7, 3, Purpose::Install, 0), draw(8, 3, Purpose::Install, 0));
        assert_ne!(draw(7, 3, Purpose::Install, 0), draw(7, 3, Purpose::Install, 1));
    }

    #[test]
    fn unit_draws_are_uniform_enough() {
        let n = 100_000;
        let mean = (0..n).map(|i| unit(1, i, Purpose::Churn, 0)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let exp = (0..n).map(|i| exponential(1, i, Purpose::Churn, 0, 10.0)).sum::<f64>() / n as f64;
        assert!((exp - 10.0).abs() < 0.2, "exponential mean {exp}");
    }
}
