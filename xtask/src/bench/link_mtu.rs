//! `cargo xtask bench … --link-mtu BYTES`: any benchmark, run again inside a network namespace of its own whose
//! loopback interface has that MTU, so loopback stands in for an Ethernet path (1500) instead of its own 65,536.
//!
//! Why it matters: quinn's path MTU discovery probes up to `Limits::mtu_upper_bound` (8,972 bytes) with packets
//! padded by PADDING frames, and every connection keeps a send buffer of its current path MTU. On loopback the
//! probes succeed, so each connection pays for 9 KB packets: their buffers, and the receiver's parsing of
//! ~35 KB of padding per connection. Behind an Ethernet route discovery stops at what the route carries
//! (1,472 bytes), which is what a relay on a real network sees.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::contour;
use crate::lab::net::{ip, kill_all_in};

/// Set inside the namespace, to the link MTU, so the reports can say where they ran.
const ENV: &str = "CMDOP_BENCH_LINK_MTU";
/// The namespace's name; one at a time (benchmarks are not run concurrently).
const NETNS: &str = "cmdop-bench-mtu";

/// The loopback MTU this benchmark runs under, when it runs in a `--link-mtu` namespace.
pub(crate) fn current() -> Option<u32> {
    std::env::var(ENV).ok()?.parse().ok()
}

/// Takes `--link-mtu BYTES` out of `args`: `Ok(None)` if it is absent (or this process already runs inside
/// the namespace), else the MTU and the remaining arguments.
pub(crate) fn take(args: &[String]) -> Result<Option<(u32, Vec<String>)>> {
    let Some(at) = args.iter().position(|a| a == "--link-mtu") else {
        return Ok(None);
    };
    let value = args
        .get(at + 1)
        .context("--link-mtu takes a number of bytes, e.g. --link-mtu 1500")?;
    let mtu = match value.parse::<u32>() {
        Ok(mtu) if (1280..=65_536).contains(&mtu) => mtu,
        _ => bail!("--link-mtu takes an MTU from 1280 to 65536 bytes, got `{value}`"),
    };
    let mut rest = args.to_vec();
    rest.drain(at..=at + 1);
    Ok(Some((mtu, rest)))
}

/// Runs `cargo xtask bench ARGS` again, as this same xtask binary, inside a fresh namespace whose loopback has
/// `mtu`; removes the namespace afterwards, with anything still running in it.
pub(crate) fn rerun_inside(root: &Path, mtu: u32, args: &[String]) -> Result<()> {
    if current().is_some() {
        bail!("--link-mtu given twice");
    }
    let xtask = std::env::current_exe().context("cannot find the xtask binary to run it again")?;
    remove_namespace();
    ip(&["netns", "add", NETNS]).context(
        "cannot create a network namespace for --link-mtu (it needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)",
    )?;
    let result = (|| {
        let mtu_text = mtu.to_string();
        ip(&[
            "netns", "exec", NETNS, "ip", "link", "set", "lo", "mtu", &mtu_text, "up",
        ])?;
        contour::header(&format!(
            "inside network namespace {NETNS}, loopback MTU {mtu}"
        ));
        let status = Command::new("ip")
            .args(["netns", "exec", NETNS])
            .arg(&xtask)
            .arg("bench")
            .args(args)
            .env(ENV, &mtu_text)
            .current_dir(root)
            .status()
            .context("cannot run the benchmark inside the namespace")?;
        if !status.success() {
            bail!("the benchmark inside namespace {NETNS} failed ({status})");
        }
        Ok(())
    })();
    remove_namespace();
    result
}

/// The heading and the section of a report, marked with the link MTU when the benchmark ran under one, so
/// that a `--link-mtu` run gets a section of its own in `docs/benchmarks.md` beside the loopback one.
pub(crate) fn mark(heading: &str, section: &str) -> (String, String) {
    match current() {
        None => (heading.to_owned(), section.to_owned()),
        Some(mtu) => {
            let marked = format!("{heading} (link MTU {mtu})");
            (marked.clone(), section.replacen(heading, &marked, 1))
        }
    }
}

/// What the reports add to the machine line under `--link-mtu`.
pub(crate) fn machine_note() -> String {
    current().map_or_else(String::new, |mtu| {
        format!(
            "; run inside a network namespace of its own whose loopback MTU is {mtu} \
             (`--link-mtu {mtu}`), standing in for an Ethernet path"
        )
    })
}

fn remove_namespace() {
    // Processes left inside would keep it alive; the benchmarks stop their own, this is for a crash.
    kill_all_in(NETNS);
    let _ = ip(&["netns", "del", NETNS]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn takes_the_flag_out_and_leaves_the_rest() {
        let args = strings(&[
            "scale",
            "--agents",
            "10",
            "--link-mtu",
            "1500",
            "--no-build",
        ]);
        let (mtu, rest) = take(&args).unwrap().unwrap();
        assert_eq!(mtu, 1500);
        assert_eq!(rest, strings(&["scale", "--agents", "10", "--no-build"]));
        assert!(take(&strings(&["exec"])).unwrap().is_none());
    }

    #[test]
    fn refuses_an_mtu_ip_cannot_carry() {
        for bad in ["1279", "70000", "big"] {
            let err = take(&strings(&["exec", "--link-mtu", bad])).unwrap_err();
            assert!(err.to_string().contains("1280 to 65536"), "{err}");
        }
        assert!(take(&strings(&["exec", "--link-mtu"])).is_err());
    }
}
