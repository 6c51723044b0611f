//! A client of a node's HTTP API: what `otamesh status`, `fleet`, `report` and `demo` read.
//!
//! The views are deliberately lenient: every field is optional or defaults, so a
//! client talks to older and newer nodes alike and shows what is missing as absent
//! rather than failing. Unknown fields are ignored, and ids are read as hex text or
//! as the array of digest bytes that serde makes of a raw id.

use std::collections::BTreeMap;
use std::time::Duration;

use otamesh_core::lifecycle::Phase;
use otamesh_core::report::OutcomeKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// How long one API request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API address is not `HOST:PORT` or `http://HOST:PORT`.
    #[error("--api {addr:?}: expected HOST:PORT or http://HOST:PORT, e.g. 127.0.0.1:4780")]
    Address {
        /// What was given.
        addr: String,
    },
    /// Nothing answered; the node is not running there, or listens elsewhere
    /// (`otamesh node --api ADDR`).
    #[error("cannot reach the node API at {base}: {reason}; is `otamesh node --api {host}` running?")]
    Unreachable {
        /// The API base URL.
        base: String,
        /// Its `HOST:PORT`.
        host: String,
        /// The innermost transport error.
        reason: String,
    },
    /// The node answered with an error status (404: it does not serve this endpoint,
    /// or does not know the release asked for).
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What a 404 probably means, or empty.
        hint: &'static str,
    },
    /// The answer is not the JSON this client understands.
    #[error("{url}: not the expected JSON ({reason})")]
    Malformed {
        /// The URL.
        url: String,
        /// The parse error.
        reason: String,
    },
}

/// A client of one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    host: String,
    http: reqwest::Client,
}

/// `GET /status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusView {
    /// Device id, hex.
    #[serde(deserialize_with = "opt_id")]
    pub device_id: Option<String>,
    /// libp2p peer id.
    pub peer_id: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Class.
    pub class: Option<String>,
    /// Whether it carries a valid enrolment.
    pub enrolled: Option<bool>,
    /// Connected peers.
    pub peers: Option<u64>,
    /// Site members heard recently.
    pub site_members: Option<Vec<String>>,
    /// Lifecycle state of the release in progress (`None`: absent or not a state this
    /// client knows).
    #[serde(deserialize_with = "lenient")]
    pub state: Option<Phase>,
    /// The release the device runs.
    pub active: Option<ActiveView>,
    /// The release it ran before (what a rollback returns to).
    pub previous: Option<ActiveView>,
    /// Every release the node knows.
    pub releases: Vec<ReleaseView>,
}

/// A release a device runs or ran.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ActiveView {
    /// Release id, hex.
    #[serde(deserialize_with = "opt_id")]
    pub release_id: Option<String>,
    /// Sequence.
    pub sequence: Option<u64>,
    /// Human version.
    pub version: Option<String>,
}

/// One release in [`StatusView`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReleaseView {
    /// Release id, hex.
    #[serde(deserialize_with = "id")]
    pub release_id: String,
    /// Sequence.
    pub sequence: Option<u64>,
    /// Human version.
    pub version: Option<String>,
    /// Chunks held.
    pub chunks_have: Option<u64>,
    /// Chunks in the manifest.
    pub chunks_total: Option<u64>,
    /// Its state on this device.
    #[serde(deserialize_with = "lenient")]
    pub state: Option<Phase>,
}

/// `GET /fleet`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FleetView {
    /// Every device the node heard a report from.
    pub devices: Vec<FleetDevice>,
}

/// One device in [`FleetView`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FleetDevice {
    /// Device id, hex.
    #[serde(deserialize_with = "id")]
    pub device_id: String,
    /// Site.
    pub site: Option<String>,
    /// Class.
    pub class: Option<String>,
    /// The release it runs.
    #[serde(deserialize_with = "opt_id")]
    pub active: Option<String>,
    /// The release its newest report is about.
    #[serde(deserialize_with = "opt_id")]
    pub release: Option<String>,
    /// That report's outcome.
    #[serde(deserialize_with = "lenient")]
    pub state: Option<OutcomeKind>,
    /// When it sent that report, Unix milliseconds.
    pub last_seen: Option<u64>,
}

/// `GET /report?release=ID`: one release's rollout as reports tell it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReportView {
    /// Release id, hex.
    #[serde(deserialize_with = "opt_id")]
    pub release: Option<String>,
    /// Devices per outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Per wave.
    pub waves: Vec<WaveView>,
    /// Failure reasons and how many devices gave each.
    pub failure_reasons: BTreeMap<String, u64>,
}

/// One wave of a [`ReportView`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WaveView {
    /// Wave index, from 0.
    pub wave: usize,
    /// Cumulative percent of the fleet.
    pub percent: Option<f64>,
    /// When the wave was allowed to start, Unix milliseconds.
    pub opens_at: Option<u64>,
    /// Devices that committed.
    pub committed: u64,
    /// Devices whose install failed.
    pub failed: u64,
    /// Devices that rolled back on their own (health check, crash).
    pub rolled_back: u64,
    /// Devices that rolled back because the release was revoked (0 from older nodes).
    pub revoked: u64,
    /// The first outcome report, Unix milliseconds.
    pub first_report_at: Option<u64>,
    /// The last outcome report, Unix milliseconds.
    pub last_report_at: Option<u64>,
}

impl Client {
    /// A client of the API at `addr` (`HOST:PORT` or `http://HOST:PORT`).
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        let host = addr.strip_prefix("http://").unwrap_or(addr).trim_end_matches('/');
        let valid = host.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            && !host.contains(['/', ' ']);
        if !valid {
            return Err(ClientError::Address { addr: addr.to_owned() });
        }
        let http =
            reqwest::Client::builder().connect_timeout(TIMEOUT).timeout(TIMEOUT).no_proxy().build().map_err(
                |e| ClientError::Unreachable {
                    base: format!("http://{host}"),
                    host: host.to_owned(),
                    reason: innermost(&e),
                },
            )?;
        Ok(Self { base: format!("http://{host}"), host: host.to_owned(), http })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json("/status").await
    }

    /// `GET /fleet`.
    pub async fn fleet(&self) -> Result<FleetView, ClientError> {
        self.json("/fleet").await
    }

    /// `GET /report?release=ID`.
    pub async fn report(&self, release: &str) -> Result<ReportView, ClientError> {
        self.json(&format!("/report?release={release}")).await
    }

    /// `GET` of any JSON endpoint, as the node wrote it.
    pub async fn raw_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(path).await
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<Metrics, ClientError> {
        let text = self.text("/metrics").await?;
        Ok(Metrics(text))
    }

    async fn json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let text = self.text(path).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Malformed { url, reason: e.to_string() })
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            base: self.base.clone(),
            host: self.host.clone(),
            reason: innermost(&e),
        };
        let response = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        if status != 200 {
            let hint = match status {
                404 if path.starts_with("/report") => {
                    ": the node does not know this release (or is older than `/report`)"
                }
                404 => ": the node does not serve this endpoint (an older otamesh node?)",
                _ => "",
            };
            return Err(ClientError::Status { url, status, hint });
        }
        response.text().await.map_err(unreachable)
    }
}

/// A node's metrics in Prometheus text.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` whose labels include `labels` (each
    /// `key="value"`); `0.0` when there is none.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let (label_text, value) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once('}')?,
                    None if rest.starts_with(' ') => ("", rest),
                    None => return None,
                };
                let have: Vec<&str> = label_text.split(',').map(str::trim).collect();
                labels.iter().all(|want| have.contains(want)).then_some(value)
            })
            .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .sum()
    }
}

/// An id as hex text or as the array of its bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Text(String),
    Bytes(Vec<u8>),
}

impl IdRepr {
    fn into_hex(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Bytes(b) => hex::encode(b),
        }
    }
}

fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    IdRepr::deserialize(d).map(IdRepr::into_hex)
}

/// A typed value written as text; text this client does not know reads as absent, so a
/// newer node's new state does not make the whole answer unreadable.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    Ok(text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok()))
}

fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<IdRepr>::deserialize(d)?.map(IdRepr::into_hex))
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than
/// "error sending request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Client::new("127.0.0.1:4780").unwrap().base(), "http://127.0.0.1:4780");
        assert_eq!(Client::new("http://localhost:1/").unwrap().base(), "http://localhost:1");
        assert_eq!(Client::new("[::1]:4780").unwrap().base(), "http://[::1]:4780");
        for bad in ["", "4780", "host", "host:port", "http://a:1/x", ":80", "a:99999"] {
            assert!(matches!(Client::new(bad), Err(ClientError::Address { .. })), "{bad}");
        }
    }

    #[test]
    fn metric_sums_filter_by_label() {
        let m = Metrics(
            "# HELP x\notamesh_chunk_bytes_total{source=\"lan\"} 10\notamesh_chunk_bytes_total{source=\"wan\"} 5\n\
             otamesh_chunk_bytes_total_other 99\notamesh_peers 3\n"
                .into(),
        );
        assert_eq!(m.sum("otamesh_chunk_bytes_total", &["source=\"wan\""]), 5.0);
        assert_eq!(m.sum("otamesh_chunk_bytes_total", &[]), 15.0);
        assert_eq!(m.sum("otamesh_peers", &[]), 3.0);
        assert_eq!(m.sum("otamesh_missing", &[]), 0.0);
    }

    #[test]
    fn views_tolerate_missing_and_unknown_fields() {
        let s: StatusView =
            serde_json::from_str(r#"{"device_id":"ab","releases":[{"release_id":"cd"}],"new":1}"#).unwrap();
        assert_eq!(s.device_id.as_deref(), Some("ab"));
        assert!(s.state.is_none() && s.active.is_none());
        assert_eq!(s.releases[0].release_id, "cd");
        let s: StatusView = serde_json::from_str(r#"{"active":null,"state":null}"#).unwrap();
        assert!(s.active.is_none());
        let s: StatusView =
            serde_json::from_str(r#"{"active":{"release_id":[1,2,255],"sequence":1,"version":"1"}}"#)
                .unwrap();
        assert_eq!(s.active.unwrap().release_id.as_deref(), Some("0102ff"));
        let r: ReportView = serde_json::from_str(r#"{"release":[171],"outcomes":{"committed":1}}"#).unwrap();
        assert_eq!(r.release.as_deref(), Some("ab"));
    }
}
