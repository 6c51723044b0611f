//! Sites behind NAT: three sites, each a LAN behind its own masquerading router
//! (nftables), one public bootstrap/relay node (`otamesh relay`) and the origin on the
//! "internet" between them. Devices get no `--peer` and no `--bootstrap`: they find
//! their site by mDNS and the relay in the origin's index, reserve a slot on it, find
//! each other through the fleet DHT, connect through the relay and punch holes (DCUtR).
//! Every device's report of the first release reaches every other device (reports lost
//! while the mesh forms are re-announced). Then, with the relay killed, a release failing
//! on every device of site 1 is halted on sites 2 and 3 by their gates, site 1's reports
//! of it reach every other site over the direct links alone, a revoke pushed into site 3
//! only reaches site 1 within 10 s, and what crossed the relay is under 1% of a release.
//!
//! Needs root, iproute2 and nftables (CI has all three); elsewhere it says so and passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use otamesh_core::directive::{DEFAULT_LIFETIME, Directive, Order, SignedDirective};
use otamesh_core::gate::HealthGate;
use otamesh_core::rollout::{RolloutPolicy, Wave};
use otamesh_core::{DeviceId, ReleaseId, SecretKey, TrustRoot};
use otamesh_fleet::process::NodeProcess;
use otamesh_node::store::Store;
use serde_json::Value;

const SITES: usize = 3;
/// The two tests run one after the other: each starts a fleet, and a loaded CI machine
/// should not run two at once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const HOSTS_PER_SITE: usize = 2;

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip(args: &[&str]) -> bool {
    run("ip", args)
}

fn must(ok: bool, what: &str) {
    assert!(ok, "network setup failed: {what}");
}

/// Runs `nft -f -` with `rules` inside namespace `ns`.
fn nft(ns: &str, rules: &str) -> bool {
    let Ok(mut child) = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let written = child.stdin.take().is_some_and(|mut i| i.write_all(rules.as_bytes()).is_ok());
    written && child.wait().is_ok_and(|s| s.success())
}

/// The internet (a bridge in the test's namespace, with the origin on its address),
/// a relay host on it, and per site a router namespace (masquerading NAT and a stateful
/// firewall) with a LAN bridge and hosts behind it. Everything is deleted on drop.
/// How a site router maps a host's UDP port to its public one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NatKind {
    /// Linux masquerade: the host's port is kept for every destination when free (one
    /// port per host here), as endpoint-independent mapping does: holes can be punched.
    KeepsPorts,
    /// `masquerade fully-random`: a new random port per destination (symmetric NAT): the
    /// port a peer learns from the relay is never the one used towards it.
    Symmetric,
}

struct Internet {
    /// Prefix of every name: the process id and the NAT kind.
    id: String,
    bridge: String,
    netns: Vec<String>,
    /// `100.B` of the addresses (100.64.0.0/10, shared address space: not routed on hosts).
    base: String,
}

impl Internet {
    /// `None` when this process may not make namespaces or has no nftables.
    fn new(kind: NatKind) -> Option<Self> {
        let pid = std::process::id() % 10_000;
        let id = format!("{pid}{}", if kind == NatKind::Symmetric { "y" } else { "e" });
        let probe = format!("om{id}probe");
        if !ip(&["netns", "add", &probe]) {
            return None;
        }
        let has_nft = run("ip", &["netns", "exec", &probe, "nft", "list", "ruleset"]);
        ip(&["netns", "del", &probe]);
        if !has_nft {
            return None;
        }
        let base = format!("100.{}", 64 + pid % 30 + if kind == NatKind::Symmetric { 30 } else { 0 });
        let masquerade = if kind == NatKind::Symmetric { "masquerade fully-random" } else { "masquerade" };
        let bridge = format!("om{id}br");
        let mut net = Internet { id, bridge, netns: Vec::new(), base };
        must(ip(&["link", "add", &net.bridge, "type", "bridge"]), "bridge");
        must(ip(&["addr", "add", &format!("{}/24", net.wan(1)), "dev", &net.bridge]), "bridge address");
        must(ip(&["link", "set", &net.bridge, "up"]), "bridge up");
        // The relay: a public host.
        let relay = net.add_ns("r");
        net.plug(&relay, "eth0", &format!("{}/24", net.wan(2)), "rv", None);
        for s in 1..=SITES {
            let router = net.add_ns(&format!("s{s}"));
            net.plug(&router, "wan", &format!("{}/24", net.wan(10 + s as u8)), &format!("w{s}"), None);
            must(
                ip(&["-n", &router, "link", "add", "lan", "type", "bridge", "mcast_snooping", "0"]),
                "lan bridge",
            );
            must(
                ip(&["-n", &router, "addr", "add", &format!("{}/24", net.lan(s, 1)), "dev", "lan"]),
                "lan addr",
            );
            must(ip(&["-n", &router, "link", "set", "lan", "up"]), "lan up");
            must(
                run("ip", &["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]),
                "forwarding",
            );
            // Masquerade out of the WAN port; from the WAN only replies (and the test's
            // own API reads) get in: an ordinary home or plant router. Its own input is
            // closed too: a hole-punching packet that arrives before this side's own
            // has left is dropped before conntrack confirms it, so it cannot take the
            // port mapping this side is about to make.
            let rules = format!(
                "table ip nat {{\n  chain site_out {{\n    type nat hook postrouting priority 100; policy accept;\n    \
                 oifname \"wan\" {masquerade}\n  }}\n}}\n\
                 table ip filter {{\n  chain site_in {{\n    type filter hook forward priority 0; policy accept;\n    \
                 ct state established,related accept\n    \
                 iifname \"wan\" ip saddr {} tcp dport 4780 accept\n    \
                 iifname \"wan\" drop\n  }}\n  \
                 chain router_in {{\n    type filter hook input priority 0; policy accept;\n    \
                 ct state established,related accept\n    \
                 iifname \"wan\" drop\n  }}\n}}\n",
                net.wan(1)
            );
            must(nft(&router, &rules), "nftables rules");
            // The test reads the hosts' APIs through the router.
            must(
                ip(&["route", "add", &format!("{}.0/24", net.lan_prefix(s)), "via", &net.wan(10 + s as u8)]),
                "route to a site",
            );
            for h in 0..HOSTS_PER_SITE {
                let host = net.add_ns(&format!("s{s}h{h}"));
                net.plug(
                    &host,
                    "eth0",
                    &format!("{}/24", net.lan(s, 10 + h as u8)),
                    &format!("l{s}{h}"),
                    Some(&router),
                );
                must(ip(&["-n", &host, "route", "add", "default", "via", &net.lan(s, 1)]), "default route");
            }
        }
        Some(net)
    }

    fn add_ns(&mut self, tag: &str) -> String {
        let ns = format!("om{}{tag}", self.id);
        must(ip(&["netns", "add", &ns]), "netns");
        must(ip(&["-n", &ns, "link", "set", "lo", "up"]), "lo up");
        self.netns.push(ns.clone());
        ns
    }

    /// A veth with `name` and `addr` in `ns`. Its other end (`om<id><tag>`) goes on the
    /// internet bridge, or into `router`'s LAN bridge.
    fn plug(&self, ns: &str, name: &str, addr: &str, tag: &str, router: Option<&str>) {
        let (outer, inner) = (format!("om{}{tag}", self.id), format!("om{}{tag}x", self.id));
        must(ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]), "veth");
        must(ip(&["link", "set", &inner, "netns", ns]), "veth into ns");
        must(ip(&["-n", ns, "link", "set", &inner, "name", name]), "veth name");
        must(ip(&["-n", ns, "addr", "add", addr, "dev", name]), "veth address");
        must(ip(&["-n", ns, "link", "set", name, "up"]), "veth up");
        match router {
            None => must(ip(&["link", "set", &outer, "master", &self.bridge, "up"]), "veth on the bridge"),
            Some(r) => {
                must(ip(&["link", "set", &outer, "netns", r]), "veth into the router");
                must(ip(&["-n", r, "link", "set", &outer, "master", "lan", "up"]), "lan port");
            }
        }
    }

    fn wan(&self, host: u8) -> String {
        format!("{}.100.{host}", self.base)
    }

    fn lan_prefix(&self, site: usize) -> String {
        format!("{}.{}", self.base, site)
    }

    fn lan(&self, site: usize, host: u8) -> String {
        format!("{}.{host}", self.lan_prefix(site))
    }

    fn host_ns(&self, site: usize, host: usize) -> String {
        format!("om{}s{site}h{host}", self.id)
    }

    fn relay_ns(&self) -> String {
        format!("om{}r", self.id)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            ip(&["netns", "del", ns]);
        }
        // Deleting the bridge takes its address and the routes through it.
        ip(&["link", "del", &self.bridge]);
    }
}

struct Device {
    node: Node,
    site: usize,
    id: DeviceId,
    peer: String,
}

fn status_of(n: &Node) -> Value {
    n.status().unwrap_or(Value::Null)
}

fn active_seq(n: &Node) -> Option<u64> {
    n.status()?["active"]["sequence"].as_u64()
}

fn audit_has(n: &Node, event: &str, release: ReleaseId, detail_prefix: &str) -> bool {
    audit_rows(&n.data).iter().any(|r| {
        r["event"] == event
            && r["release"].as_str() == Some(release.to_string().as_str())
            && r["detail"].as_str().is_some_and(|d| d.starts_with(detail_prefix))
    })
}

/// Direct (not relayed) connections from `d` to devices of other sites, by peer id.
fn direct_remote(d: &Device, site_of: &BTreeMap<String, usize>) -> BTreeSet<String> {
    let s = status_of(&d.node);
    s["fleet_mesh"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["relayed"] == false)
        .filter_map(|c| c["peer"].as_str())
        .filter(|p| site_of.get(*p).is_some_and(|s| *s != d.site))
        .map(str::to_owned)
        .collect()
}

/// Bytes that went through relay circuits at `n` (both directions).
fn relayed_bytes(n: &Node) -> f64 {
    let Some(m) = n.metrics() else { return 0.0 };
    m.0.lines()
        .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{") && l.contains("p2p-circuit"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn directive(store: &Path, key: &SecretKey, release: ReleaseId, order: Order, sequence: u64) {
    let now = otamesh_node::clock::now_ms();
    let d = Directive { release, order, sequence, issued_at: now, expires_at: now + DEFAULT_LIFETIME };
    let v = TrustRoot::single(key.public()).verify_directive(SignedDirective::sign(d, key), now).unwrap();
    Store::create(store).unwrap().put_directive(&v).unwrap();
}

/// Site 3's own origin, on the internet: its store and server.
fn site3_origin(net: &Internet, dir: &Path) -> (PathBuf, otamesh_fleet::Origin) {
    let store = dir.join("origin3");
    Store::create(&store).unwrap();
    let origin =
        otamesh_fleet::Origin::start(&store, format!("{}:0", net.wan(1)).parse().unwrap(), None).unwrap();
    (store, origin)
}

/// Waits until AutoNAT found every device private and each holds a relay reservation.
fn wait_private_with_a_reservation(devices: &[Device]) {
    wait_for(Duration::from_secs(60), "every device private with a relay reservation", || {
        devices.iter().all(|d| {
            let s = status_of(&d.node);
            s["fleet_mesh"]["reachability"] == "private"
                && s["fleet_mesh"]["relay_reservations"].as_array().is_some_and(|r| r.len() == 1)
        })
    });
}

/// Starts the relay on the internet, lists it in the origins' index (`stores`: the
/// main origin, then site 3's), and the devices of every site (site 3 polls its own
/// origin; site 1's health check fails on sequence 2). Returns the relay, its API and
/// the devices once each has an identity.
fn start_fleet(
    net: &Internet,
    dir: &Path,
    trust: &Path,
    stores: [(&Path, &String); 2],
) -> (NodeProcess, String, Vec<Device>) {
    // ---- the relay, on the internet; its address goes into both origins' index ----
    let relay_api = format!("{}:4781", net.wan(2));
    let relay_args: Vec<String> = [
        "relay",
        "--data",
        &dir.join("relay").display().to_string(),
        "--listen",
        &format!("/ip4/{}/tcp/4001", net.wan(2)),
        "--listen",
        &format!("/ip4/{}/udp/4001/quic-v1", net.wan(2)),
        "--api",
        &relay_api,
        "--max-circuit-bytes",
        "65536",
    ]
    .map(String::from)
    .to_vec();
    let mut relay = NodeProcess::new("relay", Path::new(BIN), relay_args, dir.join("relay.log"));
    relay.wrapper = ["ip", "netns", "exec", &net.relay_ns()].map(String::from).to_vec();
    relay.rust_log = "info,libp2p_relay=debug".into();
    relay.spawn().unwrap();
    let mut bootstrap = Vec::new();
    wait_for(Duration::from_secs(30), "the relay's API and addresses", || {
        bootstrap = api_json(&relay_api, "/status")
            .and_then(|s| s["bootstrap"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        bootstrap.len() == 2
    });
    eprintln!("relay: {bootstrap:?}");
    for (store, _) in stores {
        Store::create(store).unwrap().set_bootstrap(&bootstrap).unwrap();
    }

    // ---- devices: no --peer, no --bootstrap, no public address ----
    let mut devices: Vec<Device> = Vec::new();
    for s in 1..=SITES {
        for h in 0..HOSTS_PER_SITE {
            let host = net.lan(s, 10 + h as u8);
            let url = if s == 3 { stores[1].1.clone() } else { stores[0].1.clone() };
            let check = if s == 1 { "test \"$OTAMESH_SEQUENCE\" != 2" } else { "true" };
            let extra: Vec<String> = vec![
                "--origin".into(),
                url,
                "--listen".into(),
                // One UDP port per host of a site: masquerade then keeps each host's
                // port for every destination (as endpoint-independent mapping does).
                format!("/ip4/{host}/udp/{}/quic-v1", 4701 + h),
                "--health-check".into(),
                check.into(),
                "--hook-timeout".into(),
                "10".into(),
            ];
            let name = format!("s{s}h{h}");
            let node =
                Node::start_in_netns(&net.host_ns(s, h), &host, dir, &name, &format!("s{s}"), trust, &extra);
            let mut who = None;
            wait_for(Duration::from_secs(30), "the device's identity in /status", || {
                let st = status_of(&node);
                who = match (st["device_id"].as_str().and_then(|i| i.parse().ok()), st["peer_id"].as_str()) {
                    (Some(id), Some(p)) if !p.is_empty() => Some((id, p.to_owned())),
                    _ => None,
                };
                who.is_some()
            });
            let (id, peer) = who.unwrap();
            devices.push(Device { node, site: s, id, peer });
        }
    }
    (relay, relay_api, devices)
}

/// What `watcher`'s `/fleet` lacks of the `reporters`' newest reports, as lines naming
/// both: a reporter missing, or listed with another release or state than wanted.
fn fleet_gaps(watchers: &[&Device], reporters: &[&Device], release: ReleaseId, state: &str) -> Vec<String> {
    let mut gaps = Vec::new();
    for w in watchers {
        let f = api_json(&w.node.api, "/fleet").unwrap_or(Value::Null);
        let listed = f["devices"].as_array().cloned().unwrap_or_default();
        for r in reporters {
            let entry = listed.iter().find(|x| x["device_id"] == r.id.to_string());
            let fits = entry.is_some_and(|x| x["release"] == release.to_string() && x["state"] == state);
            if !fits {
                let seen = entry.map_or("nothing".to_owned(), |x| format!("{} {}", x["release"], x["state"]));
                gaps.push(format!("{} lacks {} (has {seen})", w.node.name, r.node.name));
            }
        }
    }
    gaps
}

/// What `d` knew when it went wrong, for the failure message: the v2 reports in its
/// `/fleet`, its gossip refusals and graylisting, and its connections (by device name).
fn explain(devices: &[Device], d: &Device, release: ReleaseId) -> String {
    let name_of = |peer: &str| {
        devices.iter().find(|x| x.peer == peer).map_or_else(|| peer.to_owned(), |x| x.node.name.clone())
    };
    let fleet = api_json(&d.node.api, "/fleet").unwrap_or(Value::Null);
    let reports: Vec<String> = fleet["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["release"] == release.to_string())
        .map(|x| {
            let who = devices.iter().find(|y| x["device_id"] == y.id.to_string());
            format!("{} {}", who.map_or("?", |y| y.node.name.as_str()), x["state"])
        })
        .collect();
    let metrics = d.node.metrics().map(|m| m.0).unwrap_or_default();
    let refusals: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains("refused") || l.contains("graylisted")))
        .collect();
    let status = status_of(&d.node);
    let connections: Vec<String> = status["fleet_mesh"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}{}",
                name_of(c["peer"].as_str().unwrap_or("?")),
                if c["relayed"] == true { " (relayed)" } else { "" }
            )
        })
        .collect();
    format!("its v2 reports: {reports:?}; refusals: {refusals:?}; connections: {connections:?}")
}

/// Waits up to `limit` until [`fleet_gaps`] finds none; panics naming the gaps left.
fn wait_for_fleet(limit: Duration, what: &str, gaps: impl Fn() -> Vec<String>) {
    let start = Instant::now();
    loop {
        let left = gaps();
        if left.is_empty() {
            eprintln!("{what}: after {:?}", start.elapsed());
            return;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}: {left:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn nated_sites_share_reports_and_directives_over_a_hole_punched_mesh() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = Internet::new(NatKind::KeepsPorts) else {
        eprintln!("skipped: needs root, iproute2 and nftables (CI has all three)");
        return;
    };
    let World { dir, key, trust, store, origin } = World::with_origin(&format!("{}:0", net.wan(1)), None);
    // Site 3's own origin: what is pushed into it reaches the other sites only by gossip.
    let (store3, origin3) = site3_origin(&net, dir.path());

    let (mut relay, relay_api, devices) =
        start_fleet(&net, dir.path(), &trust, [(&store, &origin.url), (&store3, &origin3.url)]);
    let site_of: BTreeMap<String, usize> = devices.iter().map(|d| (d.peer.clone(), d.site)).collect();

    // ---- the mesh: reachability, reservations, then direct links between sites ----
    wait_private_with_a_reservation(&devices);
    let mut linked: BTreeSet<(usize, usize)> = BTreeSet::new();
    wait_for(Duration::from_secs(120), "direct links joining the three sites", || {
        for d in &devices {
            for p in direct_remote(d, &site_of) {
                let other = site_of[&p];
                linked.insert((d.site.min(other), d.site.max(other)));
            }
        }
        linked.len() >= 2
    });
    eprintln!("direct links between sites: {linked:?}");
    // The upgrade shows in /status once the event reached the node (a heartbeat later).
    wait_for(Duration::from_secs(30), "a NATed pair upgraded from relayed to direct (DCUtR)", || {
        devices.iter().any(|d| {
            let s = status_of(&d.node);
            let direct = direct_remote(d, &site_of);
            s["fleet_mesh"]["hole_punched"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_str().is_some_and(|p| direct.contains(p)))
        })
    });
    let punched: Vec<(String, Vec<Value>)> = devices
        .iter()
        .map(|d| {
            let s = status_of(&d.node);
            (d.node.name.clone(), s["fleet_mesh"]["hole_punched"].as_array().cloned().unwrap_or_default())
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    eprintln!("hole punched (DCUtR), by device: {punched:?}");

    // ---- v1 everywhere; every device's report reaches every other site ----
    let ids: Vec<DeviceId> = devices.iter().map(|d| d.id).collect();
    let size = 8 << 20;
    let d1 = noise(41, size);
    let m1 = manifest_for(&d1, "gw", 1);
    let v1 = publish_manifest(&store, &key, &d1, m1.clone());
    assert_eq!(publish_manifest(&store3, &key, &d1, m1), v1);
    wait_for(Duration::from_secs(120), "every device runs v1", || {
        devices.iter().all(|d| active_seq(&d.node) == Some(1))
    });
    let everyone: Vec<&Device> = devices.iter().collect();
    // A report lost while links still form is re-announced 15 s after it was sent and
    // again when a new link comes up, but two rounds of a node are 30 s apart: seen here
    // taking up to 37 s on a loaded machine.
    wait_for_fleet(Duration::from_secs(120), "every device's /fleet lists all six committed v1", || {
        fleet_gaps(&everyone, &everyone, v1, "committed")
    });

    // ---- the relay goes; only the direct links remain ----
    let relay_total = otamesh_node::client::Client::new(&relay_api)
        .ok()
        .and_then(|c| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(c.metrics()).ok()
        })
        .map_or(0.0, |m| m.sum("libp2p_bandwidth_bytes_total", &[]));
    relay.kill();
    eprintln!("relay killed; it carried {relay_total} bytes in all (every protocol, both legs)");

    // ---- gate: v2 fails on every device of site 1 (all in the first wave) ----
    let later = 25;
    let policy = RolloutPolicy {
        waves: vec![
            Wave { percent: 50.0, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: later, require_success: None, require_reports: 0 },
        ],
        gate: Some(HealthGate { max_failure_ratio: 0.2, min_reports: 2 }),
        ..RolloutPolicy::default()
    };
    let site_of_index: Vec<usize> = devices.iter().map(|d| d.site).collect();
    let d2 = noise(42, 1 << 20);
    let (m2, waves) = pick_manifest(&d2, 2, policy, &ids, |w| {
        let all_site1_first = (0..w.len()).filter(|&i| site_of_index[i] == 1).all(|i| w[i] == 0);
        let later_in = |s: usize| (0..w.len()).any(|i| site_of_index[i] == s && w[i] == 1);
        all_site1_first && later_in(2) && later_in(3)
    });
    let start = m2.created_at;
    let v2 = publish_manifest(&store, &key, &d2, m2.clone());
    assert_eq!(publish_manifest(&store3, &key, &d2, m2), v2);
    eprintln!("v2 waves: {waves:?}");
    // Site 1's devices fetch v2 at once but finish a moment apart: the one that installs
    // first fails and reports, and once another site's success report also arrived, the
    // gate of a site-1 device still waiting halts v2 there too, before it installs it
    // (the gate at work, on site 1 itself). So: every site-1 device that started
    // installing v2 rolls it back, and at least one does.
    let site1_all: Vec<&Device> = devices.iter().filter(|d| d.site == 1).collect();
    let rolled_back = |d: &&Device| audit_has(&d.node, "transition", v2, "rolled_back");
    wait_for(Duration::from_secs(60), "site 1 rolls v2 back on every device that installs it", || {
        site1_all.iter().any(rolled_back)
            && site1_all.iter().all(|d| rolled_back(d) || !audit_has(&d.node, "transition", v2, "installing"))
    });
    let second_wave: Vec<&Device> =
        devices.iter().enumerate().filter(|(i, _)| waves[*i] == 1).map(|(_, d)| d).collect();
    let until = start + (later + 10) * 1000;
    while otamesh_node::clock::now_ms() < until {
        for d in second_wave.iter().filter(|d| d.site != 1) {
            if active_seq(&d.node) != Some(1) {
                let known: Vec<String> = devices
                    .iter()
                    .map(|x| format!("{}: {}", x.node.name, explain(&devices, x, v2)))
                    .collect();
                panic!(
                    "{} installed v2 despite site 1's failures; what each device knew: {known:#?}",
                    d.node.name
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for d in second_wave.iter().filter(|d| d.site != 1) {
        assert!(!audit_has(&d.node, "transition", v2, "installing"), "{} started installing v2", d.node.name);
    }
    // Site 1's reports of v2 crossed with the relay dead: over the direct links alone.
    let site1: Vec<&Device> = site1_all.iter().copied().filter(rolled_back).collect();
    eprintln!(
        "site 1 devices that rolled v2 back: {:?}",
        site1.iter().map(|d| &d.node.name).collect::<Vec<_>>()
    );
    let elsewhere: Vec<&Device> = devices.iter().filter(|d| d.site != 1).collect();
    wait_for_fleet(Duration::from_secs(30), "site 1's v2 reports at every other site, relay dead", || {
        fleet_gaps(&elsewhere, &site1, v2, "rolled_back")
    });

    // ---- a revoke pushed into site 3 only reaches site 1 ----
    let pushed = Instant::now();
    directive(&store3, &key, v2, Order::Revoke { to: v1 }, 1);
    wait_for(Duration::from_secs(10), "site 1 applies the revoke pushed into site 3", || {
        devices.iter().filter(|d| d.site == 1).all(|d| audit_has(&d.node, "directive", v2, "Revoke"))
    });
    eprintln!("revoke reached site 1 in {:?}", pushed.elapsed());

    // ---- what crossed the relay: a sliver of one release ----
    let relayed: f64 = devices.iter().map(|d| relayed_bytes(&d.node)).sum::<f64>() / 2.0;
    let ratio = relayed / size as f64;
    eprintln!("relayed bytes: {relayed} ({:.3}% of the {size}-byte release)", ratio * 100.0);
    assert!(ratio < 0.01, "{relayed} bytes went through the relay: chunks crossed it?");
}

/// The same fleet behind symmetric NATs: every device still reserves a slot and reaches
/// other sites through the relay, but no hole can be punched (each side learns a port
/// the other's NAT never uses towards it), so no connection between sites is direct.
/// This is why the NAT test above uses routers that keep ports, and why sites behind
/// such NATs depend on the relay (docs/node.md).
#[test]
fn symmetric_nats_defeat_hole_punching_and_leave_sites_relayed() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = Internet::new(NatKind::Symmetric) else {
        eprintln!("skipped: needs root, iproute2 and nftables (CI has all three)");
        return;
    };
    let World { dir, trust, store, origin, .. } = World::with_origin(&format!("{}:0", net.wan(1)), None);
    let (store3, origin3) = site3_origin(&net, dir.path());
    let (_relay, _api, devices) =
        start_fleet(&net, dir.path(), &trust, [(&store, &origin.url), (&store3, &origin3.url)]);
    let site_of: BTreeMap<String, usize> = devices.iter().map(|d| (d.peer.clone(), d.site)).collect();
    wait_private_with_a_reservation(&devices);
    let relayed_remote = |d: &Device| {
        status_of(&d.node)["fleet_mesh"]["connections"].as_array().into_iter().flatten().any(|c| {
            c["relayed"] == true
                && c["peer"].as_str().and_then(|p| site_of.get(p)).is_some_and(|s| *s != d.site)
        })
    };
    wait_for(Duration::from_secs(120), "relayed links between sites and failed hole punches", || {
        devices.iter().any(relayed_remote)
            && devices
                .iter()
                .map(|d| d.node.metric("otamesh_hole_punches_total{result=\"failed\"}"))
                .sum::<f64>()
                >= 2.0
    });
    for d in &devices {
        let s = status_of(&d.node);
        assert_eq!(
            s["fleet_mesh"]["hole_punched"],
            serde_json::json!([]),
            "{}: {}",
            d.node.name,
            s["fleet_mesh"]
        );
        assert!(direct_remote(d, &site_of).is_empty(), "{} has a direct link to another site", d.node.name);
    }
}
