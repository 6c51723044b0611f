//! How `status`, `fleet`, `report` and `demo` write ids, sizes, times and tables for
//! people, and how they call a node's async API from a plain command.

use std::fmt::Display;
use std::future::Future;

/// Runs `fut` to completion on a small runtime of its own.
pub fn block_on<F: Future>(fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    Ok(rt.block_on(fut))
}

/// Prints the JSON a node's API serves at `path`, as it sent it (`--json`).
pub fn print_raw(
    client: &otamesh_node::client::Client,
    path: &str,
) -> anyhow::Result<std::process::ExitCode> {
    let v = block_on(client.raw_json(path))??;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The first 12 hex digits of an id: enough to tell releases and devices apart.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `value`, or `-` when absent.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Bytes in B, KiB, MiB or GiB.
#[cfg_attr(not(feature = "full"), allow(dead_code, reason = "only the demo shows byte counts"))]
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n:.0} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A duration in seconds, e.g. `+12.3 s`, relative to some start.
pub fn offset_s(ms: Option<u64>, base_ms: u64) -> String {
    match ms {
        Some(t) => format!("{:+.1} s", (t as f64 - base_ms as f64) / 1000.0),
        None => "-".to_owned(),
    }
}

/// How long ago `then_ms` was, from `now_ms`.
pub fn ago(then_ms: Option<u64>, now_ms: u64) -> String {
    let Some(then) = then_ms else { return "-".to_owned() };
    let s = now_ms.saturating_sub(then) / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Rows as left-aligned columns two spaces apart, each line indented by `indent`.
pub fn table(indent: &str, rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29, a leap day of a year divisible by 400.
        assert_eq!(utc(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03 UTC");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(8.0 * 1024.0 * 1024.0), "8.0 MiB");
        assert_eq!(offset_s(Some(12_345), 2_000), "+10.3 s");
        assert_eq!(offset_s(None, 0), "-");
        assert_eq!(ago(Some(1_000), 6_000), "5 s ago");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("ab"), "ab");
    }

    #[test]
    fn tables_align() {
        let t = table("  ", &[vec!["A".into(), "BB".into()], vec!["CCC".into(), "D".into()]]);
        assert_eq!(t, "  A    BB\n  CCC  D\n");
    }
}
