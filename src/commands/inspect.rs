use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_core::SignedManifest;
use otamesh_core::directive::{Order, SignedDirective};
use otamesh_core::enrolment::SignedEnrolment;
use otamesh_core::metadata::Metadata;
use otamesh_core::root::SignedRoot;
use otamesh_core::trust::SignatureCount;
use otamesh_node::keys;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest, directive, enrolment or root file.
    file: PathBuf,
    /// Also say which signatures count for this trust file, .pub or root, and whether
    /// its threshold is met.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.file.display();
    let trust = match &args.trust {
        Some(t) => Some(keys::read_trust(t).context("inspect --trust")?),
        None => None,
    };
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {path}"))?;
    let metadata = Metadata::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let mut value = match &metadata {
        Metadata::Manifest(m) => manifest_json(m),
        Metadata::Directive(d) => directive_json(d),
        Metadata::Enrolment(e) => enrolment_json(e),
        Metadata::Root(r) => root_json(r),
    };
    if let Metadata::Root(r) = &metadata
        && let Ok(own) = r.root.trust()
    {
        value["own_keys"] = count_json(&metadata.count(&own));
    }
    if let Some(trust) = &trust {
        value["trust"] = count_json(&metadata.count(trust));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_text(&value, 0);
    }
    Ok(ExitCode::SUCCESS)
}

fn manifest_json(s: &SignedManifest) -> serde_json::Value {
    let m = &s.manifest;
    json!({
        "type": "manifest",
        "release_id": m.release_id().to_hex(),
        "format": m.format,
        "vendor": m.vendor,
        "product": m.product,
        "class": m.class,
        "sequence": m.sequence,
        "version": m.version,
        "kind": m.kind.as_str(),
        "payload": {
            "size": m.payload.size,
            "digest": hex::encode(m.payload.digest),
            "chunks": m.payload.chunks.len(),
        },
        "precursor": m.precursor,
        "created_at": m.created_at,
        "expires_at": m.expires_at,
        "rollout": serde_json::to_value(&m.rollout).unwrap_or_default(),
        "signatures": s.signatures.iter().map(|sig| sig.key.to_string()).collect::<Vec<_>>(),
    })
}

fn directive_json(s: &SignedDirective) -> serde_json::Value {
    let d = &s.directive;
    let (order, to) = match d.order {
        Order::Halt => ("halt", None),
        Order::Resume => ("resume", None),
        Order::Revoke { to } => ("revoke", Some(to.to_hex())),
    };
    json!({
        "type": "directive",
        "release_id": d.release.to_hex(),
        "order": order,
        "to": to,
        "sequence": d.sequence,
        "issued_at": d.issued_at,
        "expires_at": d.expires_at,
        "signatures": s.signatures.iter().map(|sig| sig.key.to_string()).collect::<Vec<_>>(),
    })
}

fn enrolment_json(s: &SignedEnrolment) -> serde_json::Value {
    let e = &s.enrolment;
    json!({
        "type": "enrolment",
        "device_id": e.device().to_hex(),
        "device_key": hex::encode(e.device_key),
        "site": e.site,
        "class": e.class,
        "issued_at": e.issued_at,
        "signatures": s.signatures.iter().map(|sig| sig.key.to_string()).collect::<Vec<_>>(),
    })
}

fn root_json(s: &SignedRoot) -> serde_json::Value {
    let r = &s.root;
    json!({
        "type": "root",
        "format": r.format,
        "version": r.version,
        "threshold": r.threshold,
        "keys": r.keys.iter().map(|k| format!("{} {}", otamesh_core::KeyId::of(k), hex::encode(k))).collect::<Vec<_>>(),
        "expires_at": r.expires_at,
        "signatures": s.signatures.iter().map(|sig| sig.key.to_string()).collect::<Vec<_>>(),
    })
}

/// Which keys of a trust root signed validly, and whether its threshold is met.
fn count_json(count: &SignatureCount) -> serde_json::Value {
    json!({
        "valid": count.valid.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "threshold": count.threshold,
        "met": count.met(),
        "unknown_keys": count.untrusted,
        "invalid": count.invalid,
    })
}

fn print_text(value: &serde_json::Value, depth: usize) {
    let Some(map) = value.as_object() else { return };
    for (k, v) in map {
        let pad = "  ".repeat(depth);
        match v {
            serde_json::Value::Object(_) => {
                println!("{pad}{k}:");
                print_text(v, depth + 1);
            }
            serde_json::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect();
                println!("{pad}{k}: [{}]", items.join(", "));
            }
            _ => println!("{pad}{k}: {}", scalar(v)),
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}
