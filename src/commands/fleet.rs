//! `otamesh fleet`: the fleet as one node hears it through signed reports, by site:
//! which devices run the newest release, which are behind, which failed.

use std::collections::BTreeMap;
use std::process::ExitCode;

use otamesh_core::report::OutcomeKind;
use otamesh_node::client::{Client, FleetDevice, FleetView, StatusView};
use otamesh_node::clock;
use otamesh_node::config::DEFAULT_API;

use super::text::{ago, block_on, or_dash, print_raw, short, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API address of any node of the fleet (its `otamesh node --api`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_API)]
    api: String,
    /// Print the node's `/fleet` JSON as it sent it.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.api)?;
    if args.json {
        return print_raw(&client, "/fleet");
    }
    let (fleet, status) = block_on(async { (client.fleet().await, client.status().await) })?;
    // The fleet is what matters; without /status only versions are missing.
    let fleet = fleet?;
    let status = status.unwrap_or_default();
    print!("{}", render(&fleet, &status, clock::now_ms()));
    Ok(ExitCode::SUCCESS)
}

/// Release id -> (sequence, version), from what the node knows.
type Known = BTreeMap<String, (Option<u64>, Option<String>)>;

fn render(fleet: &FleetView, status: &StatusView, now: u64) -> String {
    let mut known: Known = BTreeMap::new();
    for r in &status.releases {
        known.insert(r.release_id.clone(), (r.sequence, r.version.clone()));
    }
    for a in [&status.active, &status.previous].into_iter().flatten() {
        if let Some(id) = &a.release_id {
            known.entry(id.clone()).or_insert((a.sequence, a.version.clone()));
        }
    }
    let name = |id: &str| match known.get(id) {
        Some((_, Some(v))) => v.clone(),
        _ => short(id).to_owned(),
    };
    let mut out = String::new();
    if fleet.devices.is_empty() {
        out.push_str("no device reports heard yet: devices report after each install outcome\n");
        return out;
    }
    // The leading edge: the highest sequence any device runs.
    let newest = fleet
        .devices
        .iter()
        .filter_map(|d| d.active.as_deref())
        .filter_map(|id| Some((known.get(id)?.0?, id)))
        .max()
        .map(|(_, id)| id.to_owned());
    // Only devices of the node's own class can be measured against its releases.
    let behind = |d: &FleetDevice| newest.is_some() && d.class == status.class && d.active != newest;
    let failed = |d: &FleetDevice| d.state.is_some_and(OutcomeKind::is_failure);
    let mut sites: BTreeMap<&str, Vec<&FleetDevice>> = BTreeMap::new();
    for d in &fleet.devices {
        sites.entry(d.site.as_deref().unwrap_or("-")).or_default().push(d);
    }
    let heard_by = status.device_id.as_deref().map_or_else(|| "the node".to_owned(), |d| short(d).to_owned());
    out.push_str(&format!(
        "{} devices in {} sites, as heard by {heard_by}; newest release running: {}\n",
        fleet.devices.len(),
        sites.len(),
        newest.as_deref().map_or_else(
            || "-".to_owned(),
            |id| {
                let seq = known.get(id).and_then(|k| k.0);
                format!("{} (sequence {})", name(id), or_dash(seq))
            }
        )
    ));
    for (site, devices) in &mut sites {
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let n_behind = devices.iter().filter(|d| behind(d)).count();
        let n_failed = devices.iter().filter(|d| failed(d)).count();
        out.push_str(&format!(
            "\n{site}: {} devices, {} up to date, {n_behind} behind, {n_failed} failed\n",
            devices.len(),
            devices.len() - n_behind
        ));
        let mut rows = vec![["DEVICE", "ACTIVE", "LAST OUTCOME", "", "LAST SEEN"].map(String::from).to_vec()];
        for d in devices.iter() {
            let outcome = match (&d.state, &d.release) {
                (Some(s), Some(r)) => format!("{s} {}", name(r)),
                (Some(s), None) => s.to_string(),
                _ => "-".to_owned(),
            };
            let flag = match (behind(d), failed(d)) {
                (_, true) => "FAILED",
                (true, false) => "behind",
                _ => "",
            };
            rows.push(vec![
                short(&d.device_id).to_owned(),
                d.active.as_deref().map_or_else(|| "-".to_owned(), name),
                outcome,
                flag.to_owned(),
                ago(d.last_seen, now),
            ]);
        }
        out.push_str(&table("  ", &rows));
    }
    let total_behind = fleet.devices.iter().filter(|d| behind(d)).count();
    let total_failed = fleet.devices.iter().filter(|d| failed(d)).count();
    out.push_str(&format!(
        "\nbehind the newest release: {total_behind}; failed or rolled back on their last release: {total_failed}\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_site_and_flags_behind_and_failed() {
        let fleet: FleetView = serde_json::from_str(
            r#"{"devices":[
              {"device_id":"aaaaaaaaaaaaaaaa","site":"s1","active":"r2r2r2r2r2r2r2","release":"r2r2r2r2r2r2r2","state":"committed","last_seen":1000},
              {"device_id":"bbbbbbbbbbbbbbbb","site":"s1","active":"r1r1r1r1r1r1r1","release":"r2r2r2r2r2r2r2","state":"rolled_back","last_seen":1000},
              {"device_id":"cccccccccccccccc","site":"s2","active":null,"release":"r1r1r1r1r1r1r1","state":"failed"}]}"#,
        )
        .unwrap();
        let status: StatusView = serde_json::from_str(
            r#"{"device_id":"aaaaaaaaaaaaaaaa","releases":[
              {"release_id":"r1r1r1r1r1r1r1","sequence":1,"version":"1.0"},
              {"release_id":"r2r2r2r2r2r2r2","sequence":2,"version":"2.0"}]}"#,
        )
        .unwrap();
        let text = render(&fleet, &status, 11_000);
        assert!(text.contains("3 devices in 2 sites"), "{text}");
        assert!(text.contains("newest release running: 2.0 (sequence 2)"), "{text}");
        assert!(text.contains("s1: 2 devices, 1 up to date, 1 behind, 1 failed"), "{text}");
        assert!(text.contains("bbbbbbbbbbbb  1.0     rolled_back 2.0  FAILED  10 s ago"), "{text}");
        assert!(text.contains("cccccccccccc  -       failed 1.0    FAILED  -"), "{text}");
        assert!(
            text.contains("behind the newest release: 2; failed or rolled back on their last release: 2")
        );
    }

    #[test]
    fn devices_of_another_class_are_listed_but_never_behind() {
        let fleet: FleetView = serde_json::from_str(
            r#"{"devices":[
              {"device_id":"aaaaaaaaaaaaaaaa","site":"s1","class":"gw","active":"r2r2r2r2r2r2r2","state":"committed"},
              {"device_id":"bbbbbbbbbbbbbbbb","site":"s1","class":"gw","active":"r1r1r1r1r1r1r1","state":"committed"},
              {"device_id":"cccccccccccccccc","site":"s1","class":"cam","active":"c9c9c9c9c9c9c9","state":"committed"}]}"#,
        )
        .unwrap();
        let status: StatusView = serde_json::from_str(
            r#"{"device_id":"aaaaaaaaaaaaaaaa","class":"gw","releases":[
              {"release_id":"r1r1r1r1r1r1r1","sequence":1,"version":"1.0"},
              {"release_id":"r2r2r2r2r2r2r2","sequence":2,"version":"2.0"}]}"#,
        )
        .unwrap();
        let text = render(&fleet, &status, 0);
        assert!(text.contains("s1: 3 devices, 2 up to date, 1 behind, 0 failed"), "{text}");
        assert!(text.contains("behind the newest release: 1;"), "{text}");
    }

    #[test]
    fn an_empty_fleet_says_why() {
        let text = render(&FleetView::default(), &StatusView::default(), 0);
        assert!(text.contains("no device reports heard yet"), "{text}");
    }
}
