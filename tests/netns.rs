//! Nodes as separate hosts: each in its own network namespace, all on one bridge (the
//! site LAN), the origin behind the bridge's own address. No `--peer`: they find each
//! other by mDNS alone. Needs root (CI runs as root); elsewhere it says so and passes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A bridge in the test's namespace and one namespace per host, each with a veth into
/// the bridge; all of it is deleted on drop.
struct Lan {
    bridge: String,
    netns: Vec<String>,
    /// `a.b.c` of the /24.
    prefix: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

impl Lan {
    /// `None` when this process may not make namespaces (not root, no iproute2).
    fn new(hosts: usize) -> Option<Self> {
        let id = std::process::id() % 10_000;
        let prefix = format!("10.{}.{}", 100 + id % 100, id / 100);
        let mut lan = Lan { bridge: format!("otm{id}br"), netns: Vec::new(), prefix };
        // Both kinds of thing this needs, tried before anything else is made.
        let probe = format!("otm{id}probe");
        if !ip(&["netns", "add", &probe]) {
            return None;
        }
        ip(&["netns", "del", &probe]);
        if !ip(&["link", "add", &lan.bridge, "type", "bridge", "mcast_snooping", "0"]) {
            return None;
        }
        let gateway = format!("{}.1/24", lan.prefix);
        assert!(ip(&["addr", "add", &gateway, "dev", &lan.bridge]));
        assert!(ip(&["link", "set", &lan.bridge, "up"]));
        for i in 0..hosts {
            let ns = format!("otm{id}h{i}");
            let (outer, inner) = (format!("otm{id}v{i}"), format!("otm{id}p{i}"));
            assert!(ip(&["netns", "add", &ns]));
            lan.netns.push(ns.clone());
            assert!(ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]));
            assert!(ip(&["link", "set", &inner, "netns", &ns]));
            assert!(ip(&["link", "set", &outer, "master", &lan.bridge, "up"]));
            let addr = format!("{}/24", lan.host(i));
            assert!(ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner]));
            assert!(ip(&["-n", &ns, "link", "set", &inner, "up"]));
            assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
        }
        Some(lan)
    }

    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.netns {
            // Deleting a namespace deletes its end of the veth, and with it the pair.
            ip(&["netns", "del", ns]);
        }
        ip(&["link", "del", &self.bridge]);
    }
}

/// Three hosts of one site with no peer addresses given: they find each other by mDNS,
/// form the site's mesh, and fetch a release with about one copy from the origin.
#[test]
fn hosts_on_one_lan_find_each_other_by_mdns_and_share_a_release() {
    let Some(lan) = Lan::new(3) else {
        eprintln!("skipped: making network namespaces needs root and iproute2 (CI has both)");
        return;
    };
    let World { dir, key, trust, store, origin } = World::with_origin(&format!("{}:0", lan.gateway()), None);
    let extra = vec!["--origin".to_string(), origin.url.clone()];
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_in_netns(
                &lan.netns[i],
                &lan.host(i),
                dir.path(),
                &format!("h{i}"),
                "s",
                &trust,
                &extra,
            )
        })
        .collect();
    wait_for(Duration::from_secs(60), "every host found the other two by mDNS", || {
        nodes
            .iter()
            .all(|n| n.status().is_some_and(|s| s["site_members"].as_array().is_some_and(|m| m.len() == 2)))
    });
    for n in &nodes {
        assert!(!n.process.args.contains(&"--peer".to_string()), "{} was given a peer", n.name);
    }

    let size = 4 << 20;
    let data = noise(17, size);
    let (release, _) = publish(&store, &key, &data, "gw", 1);
    wait_for(Duration::from_secs(90), "every host runs the release", || {
        nodes.iter().all(|n| {
            n.status().is_some_and(|s| s["active"]["release_id"].as_str() == Some(&release.to_string()))
        })
    });
    for n in &nodes {
        assert_eq!(std::fs::read(n.data.join("slots/active/payload")).unwrap(), data, "{}", n.name);
    }
    let served = origin.bytes_served() as f64 / size as f64;
    eprintln!("origin served {served:.2} copies for 3 hosts");
    assert!(served < 1.5, "the origin served {served:.2} copies: the hosts did not share over the LAN");
    let lan_bytes: f64 = nodes.iter().map(|n| n.metric("otamesh_chunk_bytes_total{source=\"lan\"}")).sum();
    assert!(lan_bytes >= size as f64, "only {lan_bytes} bytes came from LAN peers");
}
