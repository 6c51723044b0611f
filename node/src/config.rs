//! Node configuration: command-line flags, an optional TOML file with the same keys,
//! and the resolved [`NodeConfig`] the daemon runs with (flags win over the file).
//!
//! ```toml
//! data = "/var/lib/otamesh"
//! site = "plant-7"
//! class = "gw-arm64"
//! listen = ["/ip4/0.0.0.0/tcp/4700"]
//! origin = "https://updates.example.com/store"
//! trust = "/etc/otamesh/trust.toml"
//! peer = ["/ip4/10.0.0.2/tcp/4700"]
//! bootstrap = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."]   # fleet mesh across NATs
//! api = "127.0.0.1:4780"
//! wan_rate = 2000000        # bytes per second from the origin, optional
//! poll_interval = 60        # seconds between polls of the origin's index
//! mdns = true
//! install_hook = "/usr/lib/otamesh/install"   # run with the new slot as $1
//! health_check = "/usr/lib/otamesh/healthy"   # exit 0 commits, else roll back
//! hook_timeout = 300        # seconds
//! utc_offset_min = 60       # local time for maintenance windows
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

/// The default listen address: every interface, TCP port 4700.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/4700";
/// The default QUIC listen address, beside [`DEFAULT_LISTEN`]: every interface, UDP 4700.
pub const DEFAULT_LISTEN_QUIC: &str = "/ip4/0.0.0.0/udp/4700/quic-v1";
/// The default API address: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:4780";
/// The default origin poll interval.
pub const DEFAULT_POLL_INTERVAL_S: f64 = 60.0;
/// The default time a hook may run.
pub const DEFAULT_HOOK_TIMEOUT_S: f64 = 300.0;

/// `otamesh node` flags. Every flag may also be given in `--config FILE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML file with the same keys as these flags (`data`, `site`, `class`, `listen`,
    /// `origin`, `trust`, `peer`, `api`, `wan_rate`, `poll_interval`, `mdns`); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: identity, chunk store, accepted manifests (locked while running).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The site (LAN) this device is on; peers of the same site share chunks.
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,
    /// The device class; only releases made for it are fetched.
    #[arg(long, value_name = "NAME")]
    pub class: Option<String>,
    /// libp2p listen address, repeatable; `/udp/PORT/quic-v1` for QUIC
    /// [default: /ip4/0.0.0.0/tcp/4700 and /ip4/0.0.0.0/udp/4700/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Base URL of the origin store (http or https), polled for new releases.
    #[arg(long, value_name = "URL")]
    pub origin: Option<String>,
    /// Trust file (TOML publisher keys and threshold), a single publisher `.pub` file, or
    /// a signed root file; the node walks from it to the newest root it adopted
    /// [default: DATA/trust.toml, DATA/trust.pub or DATA/trust.root].
    #[arg(long, value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// A peer to connect to, with or without a trailing /p2p/<peer id>; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<String>,
    /// A bootstrap (and relay) node of the fleet mesh, `.../p2p/<peer id>`, repeatable:
    /// the node joins the fleet's DHT to reach peers at other sites, across NATs. The
    /// origin's index.json may list them too.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Address of the HTTP API (/status, /metrics) [default: 127.0.0.1:4780].
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Limit on origin (WAN) download bandwidth, in bytes per second.
    #[arg(long, value_name = "BYTES_PER_S")]
    pub wan_rate: Option<u64>,
    /// Seconds between polls of the origin's index [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<f64>,
    /// Do not discover peers with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Command run (by `sh -c`) after a release is written to the inactive slot; `$1` is the slot.
    #[arg(long, value_name = "CMD")]
    pub install_hook: Option<String>,
    /// Command run after the switch; exit 0 commits, anything else rolls back.
    #[arg(long, value_name = "CMD")]
    pub health_check: Option<String>,
    /// Seconds a hook may run before it is killed and counted as failed [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub hook_timeout: Option<f64>,
    /// This device's local time offset from UTC in minutes, for maintenance windows [default: 0].
    #[arg(long, value_name = "MINUTES", allow_hyphen_values = true)]
    pub utc_offset_min: Option<i16>,
    /// TEST ONLY: flip a byte in every chunk this node serves, to exercise bans.
    #[arg(long, hide = true)]
    pub test_corrupt_served_chunks: bool,
}

/// The keys of a `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    site: Option<String>,
    class: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    origin: Option<String>,
    trust: Option<PathBuf>,
    #[serde(default)]
    peer: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    api: Option<String>,
    wan_rate: Option<u64>,
    poll_interval: Option<f64>,
    mdns: Option<bool>,
    install_hook: Option<String>,
    health_check: Option<String>,
    hook_timeout: Option<f64>,
    utc_offset_min: Option<i16>,
}

/// What a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Data directory.
    pub data: PathBuf,
    /// Site name.
    pub site: String,
    /// Device class.
    pub class: String,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Origin base URL.
    pub origin: Option<String>,
    /// Trust file.
    pub trust: PathBuf,
    /// Static peers.
    pub peers: Vec<Multiaddr>,
    /// Bootstrap nodes of the fleet mesh, by peer id.
    pub bootstrap: Vec<(libp2p::PeerId, Multiaddr)>,
    /// API address.
    pub api: SocketAddr,
    /// WAN rate limit, bytes per second.
    pub wan_rate: Option<u64>,
    /// Origin poll interval.
    pub poll_interval: Duration,
    /// mDNS discovery on.
    pub mdns: bool,
    /// Test only: corrupt served chunks.
    pub corrupt_served_chunks: bool,
    /// Install hook and health check.
    pub device: crate::device::DeviceConfig,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML with the known keys.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required setting is missing.
    #[error("--{key} is required (or `{key} = ...` in --config)")]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A setting has a bad value.
    #[error("--{key} {value:?}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No trust file given and none in the data directory.
    #[error(
        "no trust file: pass --trust FILE (a trust TOML, the publisher's .pub or a root file), or put trust.toml, trust.pub or trust.root in {data}"
    )]
    NoTrust {
        /// The data directory searched.
        data: PathBuf,
    },
}

impl NodeArgs {
    /// Merges the flags over the `--config` file and checks every value.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data = self.data.clone().or(file.data).ok_or(ConfigError::Missing { key: "data" })?;
        let site = self.site.clone().or(file.site).ok_or(ConfigError::Missing { key: "site" })?;
        check_name("site", &site)?;
        let class = self.class.clone().or(file.class).ok_or(ConfigError::Missing { key: "class" })?;
        check_name("class", &class)?;
        let listen = if !self.listen.is_empty() {
            self.listen.clone()
        } else if !file.listen.is_empty() {
            file.listen
        } else {
            vec![DEFAULT_LISTEN.to_owned(), DEFAULT_LISTEN_QUIC.to_owned()]
        };
        let listen = listen.iter().map(|a| multiaddr("listen", a)).collect::<Result<Vec<_>, _>>()?;
        let peers = if self.peer.is_empty() { file.peer } else { self.peer.clone() };
        let peers = peers.iter().map(|a| multiaddr("peer", a)).collect::<Result<Vec<_>, _>>()?;
        let bootstrap = if self.bootstrap.is_empty() { file.bootstrap } else { self.bootstrap.clone() };
        let bootstrap = bootstrap
            .iter()
            .map(|a| {
                crate::fleetmesh::parse_bootstrap(a).map_err(|reason| ConfigError::Invalid {
                    key: "bootstrap",
                    value: a.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let origin = self.origin.clone().or(file.origin);
        if let Some(o) = &origin
            && !(o.starts_with("http://") || o.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "origin",
                value: o.clone(),
                reason: "the origin is an http:// or https:// URL of a store directory".into(),
            });
        }
        let api_text = self.api.clone().or(file.api).unwrap_or_else(|| DEFAULT_API.to_owned());
        let api = api_text.parse().map_err(|_| ConfigError::Invalid {
            key: "api",
            value: api_text.clone(),
            reason: "expected IP:PORT, e.g. 127.0.0.1:4780".into(),
        })?;
        let poll = self.poll_interval.or(file.poll_interval).unwrap_or(DEFAULT_POLL_INTERVAL_S);
        if !(poll.is_finite() && poll >= 0.05) {
            return Err(ConfigError::Invalid {
                key: "poll-interval",
                value: poll.to_string(),
                reason: "expected seconds, at least 0.05".into(),
            });
        }
        let wan_rate = self.wan_rate.or(file.wan_rate);
        if wan_rate == Some(0) {
            return Err(ConfigError::Invalid {
                key: "wan-rate",
                value: "0".into(),
                reason: "a rate of 0 would never fetch anything; leave it out for no limit".into(),
            });
        }
        let hook_timeout = self.hook_timeout.or(file.hook_timeout).unwrap_or(DEFAULT_HOOK_TIMEOUT_S);
        if !(hook_timeout.is_finite() && hook_timeout > 0.0) {
            return Err(ConfigError::Invalid {
                key: "hook-timeout",
                value: hook_timeout.to_string(),
                reason: "expected seconds above 0".into(),
            });
        }
        let hook =
            |command: String| crate::hooks::Hook { command, timeout: Duration::from_secs_f64(hook_timeout) };
        let utc_offset_min = self.utc_offset_min.or(file.utc_offset_min).unwrap_or(0);
        if !(-14 * 60..=14 * 60).contains(&utc_offset_min) {
            return Err(ConfigError::Invalid {
                key: "utc-offset-min",
                value: utc_offset_min.to_string(),
                reason: "expected minutes between -840 and 840".into(),
            });
        }
        let device = crate::device::DeviceConfig {
            class: class.clone(),
            site: site.clone(),
            utc_offset_min,
            install_hook: self.install_hook.clone().or(file.install_hook).map(hook),
            health_check: self.health_check.clone().or(file.health_check).map(hook),
            // Read from the data directory when the node starts.
            enrolment: None,
        };
        let trust = match self.trust.clone().or(file.trust) {
            Some(t) => t,
            None => ["trust.toml", "trust.pub", "trust.root"]
                .iter()
                .map(|n| data.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| ConfigError::NoTrust { data: data.clone() })?,
        };
        Ok(NodeConfig {
            data,
            site,
            class,
            listen,
            origin,
            trust,
            peers,
            bootstrap,
            api,
            wan_rate,
            poll_interval: Duration::from_secs_f64(poll),
            mdns: !self.no_mdns && file.mdns.unwrap_or(true),
            corrupt_served_chunks: self.test_corrupt_served_chunks,
            device,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), reason: e.to_string() })
}

/// Checks a site or class name (it becomes part of a gossip topic and file names).
pub fn check_name(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "use 1 to 64 of A-Z a-z 0-9 - _ .".into(),
    })
}

/// Parses a multiaddr flag value.
pub fn multiaddr(key: &'static str, value: &str) -> Result<Multiaddr, ConfigError> {
    value.parse().map_err(|e| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: format!("not a multiaddr ({e}); expected e.g. /ip4/192.168.1.5/tcp/4700[/p2p/<peer id>]"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "data = \"/d\"\nsite = \"s1\"\nclass = \"gw\"\ntrust = \"/t.pub\"\npeer = [\"/ip4/10.0.0.1/tcp/1\"]\nwan_rate = 5\n",
        )
        .unwrap();
        let args = NodeArgs { config: Some(file), site: Some("s2".into()), ..NodeArgs::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.site, "s2");
        assert_eq!(c.class, "gw");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.wan_rate, Some(5));
        assert_eq!(c.api, DEFAULT_API.parse().unwrap());
        assert_eq!(
            c.listen,
            vec![DEFAULT_LISTEN.parse::<Multiaddr>().unwrap(), DEFAULT_LISTEN_QUIC.parse().unwrap()]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let base = NodeArgs {
            data: Some("/d".into()),
            site: Some("s".into()),
            class: Some("c".into()),
            trust: Some("/t".into()),
            ..NodeArgs::default()
        };
        let e = NodeArgs { peer: vec!["nope".into()], ..base.clone() }.resolve().unwrap_err();
        assert!(e.to_string().contains("--peer"), "{e}");
        let e =
            NodeArgs { bootstrap: vec!["/ip4/1.2.3.4/tcp/5".into()], ..base.clone() }.resolve().unwrap_err();
        assert!(e.to_string().contains("--bootstrap") && e.to_string().contains("/p2p/"), "{e}");
        let e = NodeArgs { site: Some("a b".into()), ..base.clone() }.resolve().unwrap_err();
        assert!(e.to_string().contains("--site"), "{e}");
        let e = NodeArgs { site: None, ..base.clone() }.resolve().unwrap_err();
        assert!(matches!(e, ConfigError::Missing { key: "site" }));
        let ok = NodeArgs {
            peer: vec!["/ip4/1.2.3.4/tcp/5/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()],
            ..base
        }
        .resolve()
        .unwrap();
        assert_eq!(ok.peers.len(), 1);
    }
}
