//! `otamesh status`: one node's `/status`, for people.

use std::process::ExitCode;

use otamesh_node::client::{ActiveView, Client, StatusView};
use otamesh_node::config::DEFAULT_API;

use super::text::{block_on, or_dash, print_raw, short, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's API address (its `otamesh node --api`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_API)]
    api: String,
    /// Print the node's JSON as it sent it.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.api)?;
    if args.json {
        return print_raw(&client, "/status");
    }
    let s = block_on(client.status())??;
    print!("{}", render(&s));
    Ok(ExitCode::SUCCESS)
}

fn render(s: &StatusView) -> String {
    let mut out = String::new();
    let device = s.device_id.as_deref().map(short);
    out.push_str(&format!(
        "device    {} (site {}, class {})\n",
        or_dash(device),
        or_dash(s.site.as_deref()),
        or_dash(s.class.as_deref())
    ));
    if s.enrolled == Some(false) {
        out.push_str("          not enrolled: its reports are not sent; run otamesh enroll\n");
    }
    out.push_str(&format!(
        "peers     {} connected, {} site members heard\n",
        or_dash(s.peers),
        or_dash(s.site_members.as_ref().map(Vec::len))
    ));
    out.push_str(&format!("state     {}\n", or_dash(s.state)));
    out.push_str(&format!("active    {}\n", release_line(s.active.as_ref())));
    out.push_str(&format!("previous  {}\n", release_line(s.previous.as_ref())));
    if s.releases.is_empty() {
        out.push_str("releases  none known yet\n");
        return out;
    }
    out.push_str(&format!("releases  {} known\n", s.releases.len()));
    let mut rows = vec![["SEQUENCE", "VERSION", "RELEASE", "CHUNKS", "STATE"].map(String::from).to_vec()];
    let mut releases: Vec<_> = s.releases.iter().collect();
    releases.sort_by_key(|r| r.sequence);
    for r in releases {
        let chunks = match (r.chunks_have, r.chunks_total) {
            (Some(h), Some(t)) => format!("{h}/{t}"),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            or_dash(r.sequence),
            or_dash(r.version.as_deref()),
            short(&r.release_id).to_owned(),
            chunks,
            or_dash(r.state),
        ]);
    }
    out.push_str(&table("  ", &rows));
    out
}

fn release_line(r: Option<&ActiveView>) -> String {
    let Some(r) = r else { return "-".to_owned() };
    format!(
        "{} (sequence {}, release {})",
        or_dash(r.version.as_deref()),
        or_dash(r.sequence),
        or_dash(r.release_id.as_deref().map(short))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_is_there_and_dashes_the_rest() {
        let s: StatusView = serde_json::from_str(
            r#"{"device_id":"00112233445566778899","site":"a","class":"gw","peers":3,
                "active":{"release_id":"aabbccddeeff00112233","sequence":1,"version":"1.0.0"},
                "releases":[{"release_id":"aabbccddeeff00112233","sequence":1,"version":"1.0.0",
                             "chunks_have":4,"chunks_total":4,"state":"staged"}]}"#,
        )
        .unwrap();
        let text = render(&s);
        assert!(text.contains("device    001122334455 (site a, class gw)"), "{text}");
        assert!(text.contains("state     -"), "{text}");
        assert!(text.contains("active    1.0.0 (sequence 1, release aabbccddeeff)"), "{text}");
        assert!(text.contains("previous  -"), "{text}");
        assert!(text.contains("1         1.0.0    aabbccddeeff  4/4     staged"), "{text}");
    }
}
