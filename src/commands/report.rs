//! `otamesh report`: one release's rollout as a node heard it through signed reports:
//! devices per outcome and per wave, failure reasons, when each wave opened and when
//! its first and last outcomes came in.

use std::process::ExitCode;

use anyhow::bail;
use otamesh_core::report::OutcomeKind;
use otamesh_node::client::{Client, ReportView, StatusView};
use otamesh_node::config::DEFAULT_API;

use super::text::{block_on, offset_s, or_dash, short, table, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API address of any node of the fleet (its `otamesh node --api`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_API)]
    api: String,
    /// The release: its id, or a prefix of it that one release known to the node starts with.
    #[arg(long, value_name = "ID")]
    release: String,
    /// Print the node's report JSON as it sent it.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.api)?;
    let wanted = args.release.trim().to_ascii_lowercase();
    if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) || wanted.len() > 64 {
        bail!("--release {:?}: expected a release id (hex), or a prefix of one", args.release);
    }
    block_on(async {
        let status = client.status().await?;
        let release = resolve(&wanted, &status)?;
        if args.json {
            let v = client.raw_json(&format!("/report?release={release}")).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        let report = client.report(&release).await?;
        print!("{}", render(&release, &report, &status));
        Ok(ExitCode::SUCCESS)
    })?
}

/// The full id of the one release `wanted` names (a whole id passes through).
fn resolve(wanted: &str, status: &StatusView) -> anyhow::Result<String> {
    if wanted.len() == 64 {
        return Ok(wanted.to_owned());
    }
    let matches: Vec<&str> =
        status.releases.iter().map(|r| r.release_id.as_str()).filter(|id| id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => bail!("no release known to the node starts with {wanted}: `otamesh status` lists them"),
        _ => bail!("{} releases start with {wanted}: give more digits", matches.len()),
    }
}

fn render(release: &str, r: &ReportView, status: &StatusView) -> String {
    let known = status.releases.iter().find(|k| k.release_id == release);
    let mut out = format!(
        "release {} {} (sequence {}), as heard by {}\n",
        short(release),
        or_dash(known.and_then(|k| k.version.as_deref())),
        or_dash(known.and_then(|k| k.sequence)),
        status.device_id.as_deref().map_or("the node", short)
    );
    let count = |k: OutcomeKind| r.outcomes.get(k.name()).copied().unwrap_or(0);
    let total: u64 = r.outcomes.values().sum();
    out.push_str(&format!(
        "devices: {} committed, {} failed, {} rolled back, {} revoked ({total} reported)\n",
        count(OutcomeKind::Committed),
        count(OutcomeKind::Failed),
        count(OutcomeKind::RolledBack),
        count(OutcomeKind::Revoked)
    ));
    if let Some(base) = r.waves.iter().filter_map(|w| w.opens_at).min() {
        out.push_str(&format!("waves (times from the first wave's opening, {}):\n", utc(base)));
        let mut rows = vec![
            [
                "WAVE",
                "SHARE",
                "OPENS",
                "COMMITTED",
                "FAILED",
                "ROLLED BACK",
                "REVOKED",
                "FIRST OUTCOME",
                "LAST OUTCOME",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for w in &r.waves {
            rows.push(vec![
                (w.wave + 1).to_string(),
                w.percent.map_or_else(|| "-".to_owned(), |p| format!("{p}%")),
                offset_s(w.opens_at, base),
                w.committed.to_string(),
                w.failed.to_string(),
                w.rolled_back.to_string(),
                w.revoked.to_string(),
                offset_s(w.first_report_at, base),
                offset_s(w.last_report_at, base),
            ]);
        }
        out.push_str(&table("  ", &rows));
    }
    if r.failure_reasons.is_empty() {
        out.push_str("failure reasons: none\n");
    } else {
        out.push_str("failure reasons:\n");
        let mut reasons: Vec<(&String, &u64)> = r.failure_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons {
            out.push_str(&format!("  {n:>3} x {reason}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> StatusView {
        serde_json::from_str(
            r#"{"device_id":"dddddddddddddddd","releases":[
              {"release_id":"ab00000000000000000000000000000000000000000000000000000000000000","sequence":1,"version":"1.0"},
              {"release_id":"ab11000000000000000000000000000000000000000000000000000000000000","sequence":2,"version":"1.1"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn prefixes_resolve_to_one_release() {
        let s = status();
        assert!(resolve("ab11", &s).unwrap().starts_with("ab11"));
        assert!(resolve("ab", &s).unwrap_err().to_string().contains("2 releases start with ab"));
        assert!(resolve("ff", &s).unwrap_err().to_string().contains("no release known"));
    }

    #[test]
    fn renders_waves_relative_to_the_first() {
        let r: ReportView = serde_json::from_str(
            r#"{"release":"ab11","outcomes":{"committed":2,"rolled_back":1,"revoked":1},
                "waves":[{"wave":0,"percent":25.0,"opens_at":1000,"committed":2,"failed":0,"rolled_back":1,
                          "revoked":1,"first_report_at":3000,"last_report_at":4500},
                         {"wave":1,"percent":100.0,"opens_at":11000,"committed":0,"failed":0,"rolled_back":0,
                          "first_report_at":null,"last_report_at":null}],
                "failure_reasons":{"health check exited with 1":1}}"#,
        )
        .unwrap();
        let text = render("ab11000000000000000000000000000000000000000000000000000000000000", &r, &status());
        assert!(text.contains("release ab1100000000 1.1 (sequence 2), as heard by dddddddddddd"), "{text}");
        assert!(text.contains("2 committed, 0 failed, 1 rolled back, 1 revoked (4 reported)"), "{text}");
        assert!(
            text.contains(
                "1     25%    +0.0 s   2          0       1            1        +2.0 s         +3.5 s"
            ),
            "{text}"
        );
        assert!(text.contains("2     100%   +10.0 s  0"), "{text}");
        assert!(text.contains("  1 x health check exited with 1"), "{text}");
    }
}
