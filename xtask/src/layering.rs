//! The layering invariants of ARCHITECTURE.md, checked against `cargo metadata` rather than trusted to review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Which workspace crates each workspace crate may depend on (normal and build dependencies).
const ALLOWED_INTERNAL: &[(&str, &[&str])] = &[
    ("cmdop-identity", &[]),
    ("cmdop-fleet", &["cmdop-identity"]),
    ("cmdop-relay", &["cmdop-fleet", "cmdop-identity"]),
    (
        "cmdop-agent",
        &["cmdop-relay", "cmdop-fleet", "cmdop-identity"],
    ),
    (
        "cmdop-cli",
        &["cmdop-relay", "cmdop-fleet", "cmdop-identity"],
    ),
    (
        "cmdop-tests",
        &[
            "cmdop-agent",
            "cmdop-relay",
            "cmdop-fleet",
            "cmdop-identity",
        ],
    ),
    ("xtask", &[]),
];

/// External crates that exactly one workspace crate may name as a dependency of any kind.
const SOLE_OWNERS: &[(&str, &str)] = &[
    ("ed25519-dalek", "cmdop-identity"),
    ("curve25519-dalek", "cmdop-identity"),
    ("quinn", "cmdop-relay"),
    ("quinn-proto", "cmdop-relay"),
    ("rusqlite", "cmdop-relay"),
];

/// Crates that must not appear anywhere in the normal dependency graph of the pure crates.
const PURE_CRATES: &[&str] = &["cmdop-identity", "cmdop-fleet"];
const FORBIDDEN_IN_PURE: &[&str] = &["tokio", "quinn", "rusqlite", "mio"];

/// Runs every layering check and reports all violations at once.
pub(crate) fn check(root: &Path) -> Result<()> {
    let graph = Graph::load(root)?;
    let violations = graph.violations();
    if violations.is_empty() {
        return Ok(());
    }
    bail!("layering violated:\n  {}", violations.join("\n  "))
}

struct Graph {
    members: BTreeSet<String>,
    /// package name -> (dependency name, is a normal or build dependency)
    edges: BTreeMap<String, Vec<(String, bool)>>,
}

impl Graph {
    fn load(root: &Path) -> Result<Self> {
        let output = Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(root)
            .output()
            .context("cannot run cargo metadata")?;
        if !output.status.success() {
            bail!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let meta: Value = serde_json::from_slice(&output.stdout)
            .context("cargo metadata printed invalid JSON")?;
        Self::from_metadata(&meta)
    }

    fn from_metadata(meta: &Value) -> Result<Self> {
        let mut names = BTreeMap::new();
        for package in array(meta, "packages")? {
            names.insert(string(package, "id")?, string(package, "name")?);
        }
        let mut members = BTreeSet::new();
        for id in array(meta, "workspace_members")? {
            let id = id.as_str().context("workspace member id is not a string")?;
            members.insert(names.get(id).cloned().context("unknown workspace member")?);
        }
        let resolve = meta
            .get("resolve")
            .context("cargo metadata has no resolve graph")?;
        let mut edges: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for node in array(resolve, "nodes")? {
            let from = names
                .get(&string(node, "id")?)
                .cloned()
                .context("unknown node")?;
            let entry = edges.entry(from).or_default();
            for dep in array(node, "deps")? {
                let to = names
                    .get(&string(dep, "pkg")?)
                    .cloned()
                    .context("unknown dependency")?;
                let runtime = array(dep, "dep_kinds")?
                    .iter()
                    .any(|kind| kind.get("kind").is_none_or(|k| k.is_null() || k == "build"));
                entry.push((to, runtime));
            }
        }
        Ok(Self { members, edges })
    }

    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let allowed: BTreeMap<&str, &[&str]> = ALLOWED_INTERNAL.iter().copied().collect();
        for member in &self.members {
            let Some(allowed) = allowed.get(member.as_str()) else {
                out.push(format!(
                    "{member} is not in the layering table of xtask/src/layering.rs"
                ));
                continue;
            };
            for (dep, runtime) in self.edges.get(member).into_iter().flatten() {
                if *runtime && self.members.contains(dep) && !allowed.contains(&dep.as_str()) {
                    out.push(format!("{member} depends on {dep}; allowed: {allowed:?}"));
                }
            }
        }
        for (krate, owner) in SOLE_OWNERS {
            for member in &self.members {
                let direct = self
                    .edges
                    .get(member)
                    .into_iter()
                    .flatten()
                    .any(|(dep, _)| dep == krate);
                if direct && member != owner {
                    out.push(format!("{member} depends on {krate}; only {owner} may"));
                }
            }
        }
        for pure in PURE_CRATES {
            let closure = self.runtime_closure(pure);
            for forbidden in FORBIDDEN_IN_PURE {
                if closure.contains(*forbidden) {
                    out.push(format!("{pure} must stay free of IO runtimes, but {forbidden} is in its dependency graph"));
                }
            }
        }
        out
    }

    fn runtime_closure(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(next) = stack.pop() {
            for (dep, runtime) in self.edges.get(&next).into_iter().flatten() {
                if *runtime && seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }
}

fn array<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    value
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("cargo metadata: `{key}` is not an array"))
}

fn string(value: &Value, key: &str) -> Result<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("cargo metadata: `{key}` is not a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_layering_holds() {
        let root = crate::workspace_root();
        check(&root).unwrap();
    }

    #[test]
    fn a_forbidden_edge_is_reported() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "f", "name": "cmdop-fleet"},
                {"id": "r", "name": "cmdop-relay"},
                {"id": "q", "name": "quinn"},
                {"id": "t", "name": "tokio"},
            ],
            "workspace_members": ["f", "r"],
            "resolve": {"nodes": [
                {"id": "f", "deps": [
                    {"pkg": "r", "dep_kinds": [{"kind": null}]},
                    {"pkg": "q", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "r", "deps": [{"pkg": "t", "dep_kinds": [{"kind": null}]}]},
                {"id": "q", "deps": []},
                {"id": "t", "deps": []},
            ]},
        });
        let violations = Graph::from_metadata(&meta).unwrap().violations();
        assert!(
            violations
                .iter()
                .any(|v| v.contains("cmdop-fleet depends on cmdop-relay")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("only cmdop-relay may")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("tokio is in its dependency graph")),
            "{violations:?}"
        );
    }
}
