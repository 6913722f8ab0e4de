//! The layering invariants of ARCHITECTURE.md, checked against `cargo metadata` rather than trusted to review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Which workspace crates each workspace crate may depend on (normal and build dependencies).
const ALLOWED_INTERNAL: &[(&str, &[&str])] = &[
    ("cmdop-identity", &[]),
    // The seed store with the OS keyring: only the binaries that keep identities link it.
    ("cmdop-keystore", &["cmdop-identity"]),
    ("cmdop-fleet", &["cmdop-identity"]),
    ("cmdop-proto", &["cmdop-fleet", "cmdop-identity"]),
    ("cmdop-config", &[]),
    (
        "cmdop-client",
        &["cmdop-proto", "cmdop-fleet", "cmdop-identity"],
    ),
    (
        "cmdop-relay",
        &[
            "cmdop-client",
            "cmdop-config",
            "cmdop-proto",
            "cmdop-fleet",
            "cmdop-identity",
        ],
    ),
    (
        "cmdop-agent",
        &[
            "cmdop-client",
            "cmdop-config",
            "cmdop-proto",
            "cmdop-fleet",
            "cmdop-identity",
            "cmdop-keystore",
        ],
    ),
    (
        "cmdop-cli",
        &[
            "cmdop-client",
            // Completion scripts and man pages, generated the same way for all three binaries.
            "cmdop-config",
            "cmdop-proto",
            "cmdop-fleet",
            "cmdop-identity",
            "cmdop-keystore",
        ],
    ),
    (
        "cmdop-tests",
        &[
            "cmdop-agent",
            "cmdop-relay",
            "cmdop-client",
            "cmdop-proto",
            "cmdop-fleet",
            "cmdop-identity",
        ],
    ),
    ("xtask", &[]),
];

/// External crates that only the listed workspace crates may name as a dependency of any kind.
const OWNERS: &[(&str, &[&str])] = &[
    ("ed25519-dalek", &["cmdop-identity"]),
    ("curve25519-dalek", &["cmdop-identity"]),
    ("quinn", &["cmdop-client", "cmdop-relay"]),
    // The tests crate drives raw QUIC at the relay (the lab's handshake flood, tests/src/bin/cmdop-lab-flood.rs).
    ("quinn-proto", &["cmdop-relay", "cmdop-tests"]),
    ("rusqlite", &["cmdop-relay"]),
    ("prometheus-client", &["cmdop-relay"]),
    ("rcgen", &["cmdop-relay"]),
    // The OS keyring and its D-Bus stack, wrapped by the seed store only.
    ("keyring", &["cmdop-keystore"]),
];

/// Crates that must not appear anywhere in the normal dependency graph of a workspace crate.
const FORBIDDEN_IN_GRAPH: &[(&str, &[&str])] = &[
    // Pure: no IO runtime, no storage, no OS keyring (which brings D-Bus and an async runtime).
    (
        "cmdop-identity",
        &[
            "tokio", "quinn", "rusqlite", "mio", "keyring", "zbus", "async-io",
        ],
    ),
    (
        "cmdop-fleet",
        &[
            "tokio", "quinn", "rusqlite", "mio", "keyring", "zbus", "async-io",
        ],
    ),
    // The sans-IO core: no runtime, no sockets, nothing of the server.
    (
        "cmdop-proto",
        &[
            "tokio",
            "quinn",
            "mio",
            "rusqlite",
            "prometheus-client",
            "rcgen",
            "keyring",
            "zbus",
            "async-io",
        ],
    ),
    // The client side and what is built on it: nothing of the server.
    (
        "cmdop-client",
        &[
            "cmdop-relay",
            "rusqlite",
            "libsqlite3-sys",
            "prometheus-client",
        ],
    ),
    (
        "cmdop-agent",
        &[
            "cmdop-relay",
            "rusqlite",
            "libsqlite3-sys",
            "prometheus-client",
        ],
    ),
    (
        "cmdop-cli",
        &[
            "cmdop-relay",
            "rusqlite",
            "libsqlite3-sys",
            "prometheus-client",
        ],
    ),
];

/// The only workspace crates the fuzz targets (`fuzz/`, its own workspace) may link.
const FUZZ_MAY_LINK: &[&str] = &["cmdop-proto", "cmdop-fleet", "cmdop-identity"];

/// Runs every layering check and reports all violations at once.
pub(crate) fn check(root: &Path) -> Result<()> {
    let graph = Graph::load(root)?;
    let mut violations = graph.violations();
    violations.extend(fuzz_violations(&fuzz_path_dependencies(root)?));
    if violations.is_empty() {
        return Ok(());
    }
    bail!("layering violated:\n  {}", violations.join("\n  "))
}

/// The workspace crates `fuzz/Cargo.toml` depends on by path (its own workspace, so not in the main graph).
fn fuzz_path_dependencies(root: &Path) -> Result<Vec<String>> {
    let output = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .arg("--manifest-path")
        .arg(root.join("fuzz/Cargo.toml"))
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata on fuzz/Cargo.toml")?;
    if !output.status.success() {
        bail!(
            "cargo metadata on fuzz/Cargo.toml failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let mut linked = Vec::new();
    for package in array(&meta, "packages")? {
        for dep in array(package, "dependencies")? {
            if dep.get("path").is_some_and(|p| !p.is_null()) {
                linked.push(string(dep, "name")?);
            }
        }
    }
    Ok(linked)
}

fn fuzz_violations(linked: &[String]) -> Vec<String> {
    linked
        .iter()
        .filter(|name| !FUZZ_MAY_LINK.contains(&name.as_str()))
        .map(|name| {
            format!(
                "the fuzz targets link {name}; they may link only {}",
                FUZZ_MAY_LINK.join(", ")
            )
        })
        .collect()
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
        for (krate, owners) in OWNERS {
            for member in &self.members {
                let direct = self
                    .edges
                    .get(member)
                    .into_iter()
                    .flatten()
                    .any(|(dep, _)| dep == krate);
                if direct && !owners.contains(&member.as_str()) {
                    out.push(format!(
                        "{member} depends on {krate}; only {} may",
                        owners.join(", ")
                    ));
                }
            }
        }
        for (krate, forbidden) in FORBIDDEN_IN_GRAPH {
            let closure = self.runtime_closure(krate);
            for name in *forbidden {
                if closure.contains(*name) {
                    out.push(format!(
                        "{name} is in the dependency graph of {krate}, which must not contain {}",
                        forbidden.join(", ")
                    ));
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
                .any(|v| v
                    .contains("cmdop-fleet depends on quinn; only cmdop-client, cmdop-relay may")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("tokio is in the dependency graph of cmdop-fleet")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_server_crate_in_the_client_graph_is_reported() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "c", "name": "cmdop-cli"},
                {"id": "r", "name": "cmdop-relay"},
                {"id": "s", "name": "rusqlite"},
            ],
            "workspace_members": ["c", "r"],
            "resolve": {"nodes": [
                {"id": "c", "deps": [{"pkg": "r", "dep_kinds": [{"kind": null}]}]},
                {"id": "r", "deps": [{"pkg": "s", "dep_kinds": [{"kind": null}]}]},
                {"id": "s", "deps": []},
            ]},
        });
        let violations = Graph::from_metadata(&meta).unwrap().violations();
        assert!(
            violations
                .iter()
                .any(|v| v.contains("rusqlite is in the dependency graph of cmdop-cli")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("cmdop-relay is in the dependency graph of cmdop-cli")),
            "{violations:?}"
        );
    }

    #[test]
    fn the_keyring_outside_the_keystore_is_reported() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "i", "name": "cmdop-identity"},
                {"id": "f", "name": "cmdop-fleet"},
                {"id": "p", "name": "cmdop-proto"},
                {"id": "k", "name": "cmdop-keystore"},
                {"id": "a", "name": "cmdop-agent"},
                {"id": "kr", "name": "keyring"},
                {"id": "z", "name": "zbus"},
                {"id": "aio", "name": "async-io"},
            ],
            "workspace_members": ["i", "f", "p", "k", "a"],
            "resolve": {"nodes": [
                // identity links the keyring itself; proto reaches for the keystore.
                {"id": "i", "deps": [{"pkg": "kr", "dep_kinds": [{"kind": null}]}]},
                {"id": "f", "deps": [{"pkg": "i", "dep_kinds": [{"kind": null}]}]},
                {"id": "p", "deps": [
                    {"pkg": "f", "dep_kinds": [{"kind": null}]},
                    {"pkg": "k", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "k", "deps": [
                    {"pkg": "i", "dep_kinds": [{"kind": null}]},
                    {"pkg": "kr", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "a", "deps": [{"pkg": "k", "dep_kinds": [{"kind": null}]}]},
                {"id": "kr", "deps": [{"pkg": "z", "dep_kinds": [{"kind": null}]}]},
                {"id": "z", "deps": [{"pkg": "aio", "dep_kinds": [{"kind": null}]}]},
                {"id": "aio", "deps": []},
            ]},
        });
        let violations = Graph::from_metadata(&meta).unwrap().violations();
        let reported = |needle: &str| violations.iter().any(|v| v.contains(needle));
        assert!(
            reported("cmdop-identity depends on keyring; only cmdop-keystore may"),
            "{violations:?}"
        );
        assert!(
            reported("cmdop-proto depends on cmdop-keystore"),
            "{violations:?}"
        );
        for krate in ["cmdop-identity", "cmdop-fleet", "cmdop-proto"] {
            for dep in ["keyring", "zbus", "async-io"] {
                assert!(
                    reported(&format!("{dep} is in the dependency graph of {krate},")),
                    "{dep} under {krate}: {violations:?}"
                );
            }
        }
        // The keystore owning the keyring, and the agent using the keystore, are the allowed shape.
        assert!(
            !violations
                .iter()
                .any(|v| v.starts_with("cmdop-keystore") || v.starts_with("cmdop-agent")),
            "{violations:?}"
        );
    }

    #[test]
    fn fuzz_targets_linking_the_client_are_reported() {
        let linked = vec!["cmdop-proto".to_owned(), "cmdop-client".to_owned()];
        assert_eq!(
            fuzz_violations(&linked),
            vec![
                "the fuzz targets link cmdop-client; they may link only cmdop-proto, cmdop-fleet, cmdop-identity"
            ]
        );
    }
}
