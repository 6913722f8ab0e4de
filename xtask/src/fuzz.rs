//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the cargo-fuzz targets in `fuzz/` one after another and
//! reports, per target, how many inputs it executed and whether anything crashed.
//!
//! It brings what it needs: the nightly toolchain (`rustup toolchain install nightly --profile minimal`) and
//! cargo-fuzz (`cargo install --locked`) when they are missing. Each target starts from its committed seed
//! corpus, `fuzz/corpus/<target>/` (the golden bytes of the protocol documents, see its README); what the
//! fuzzer finds goes to `target/fuzz-corpus/<target>/`, outside the repository, so the committed corpus stays
//! a small seed set. A crash leaves its input in `target/fuzz-artifacts/<target>/`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The cargo-fuzz release installed when none is on the PATH; pinned so that a run is reproducible.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// libFuzzer limits from the test catalog (docs/security.md, P1): one 64 KiB frame plus headers fits in an
/// input, and a decoder that allocates past 512 MiB counts as a crash.
const LIBFUZZER_LIMITS: &[&str] = &["-rss_limit_mb=512", "-max_len=70000", "-timeout=10"];

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [--sanitizer S] [--list] [TARGET…]

  --seconds N    run each target for N seconds (default 60)
  --sanitizer S  address (default, cargo-fuzz's) or none: the targets link only safe Rust of ours, and without
                 the sanitizer the handshake-bound targets run several times faster (long runs)
  --list         print the targets and exit
  TARGET         run only these targets (default: every target in fuzz/fuzz_targets)

Installs the nightly toolchain and cargo-fuzz when missing. Seeds: fuzz/corpus/<target>/; new inputs:
target/fuzz-corpus/<target>/; crashes: target/fuzz-artifacts/<target>/.";

/// What one target's run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    target: String,
    seconds: u64,
    executions: Option<u64>,
    peak_rss_mb: Option<u64>,
    corpus_entries: usize,
    crash: Option<String>,
}

/// Runs the fuzz command with its arguments (everything after `fuzz`).
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut wanted = Vec::new();
    let mut list = false;
    let mut sanitizer = "address".to_owned();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value.parse().ok().filter(|s| *s > 0).with_context(|| {
                    format!("--seconds takes a positive whole number, not `{value}`")
                })?;
            }
            "--list" => list = true,
            "--sanitizer" => {
                let value = args.next().context("--sanitizer needs a name")?;
                if !matches!(value.as_str(), "address" | "none") {
                    bail!("--sanitizer is address or none, not `{value}`");
                }
                sanitizer.clone_from(value);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with('-') => bail!("fuzz does not take `{flag}`\n\n{USAGE}"),
            target => wanted.push(target.to_owned()),
        }
    }
    let all = targets(root)?;
    if list {
        println!("{}", all.join("\n"));
        return Ok(());
    }
    let chosen = choose(&all, &wanted)?;
    ensure_nightly()?;
    ensure_cargo_fuzz()?;

    let started = Instant::now();
    // One build of every target first, so that the per-target seconds are spent fuzzing.
    let mut build = fuzz_command();
    build.args(["build", "-O", "--sanitizer", &sanitizer]);
    build.args(target_dir(root, &sanitizer));
    crate::contour::run_shown(&mut build)?;
    let build_time = started.elapsed();

    let mut outcomes = Vec::new();
    for target in &chosen {
        outcomes.push(run_target(root, target, seconds, &sanitizer)?);
    }
    println!("\n{}", summary(&outcomes));
    println!(
        "build {:.0} s, {} targets x {seconds} s, total {:.0} s",
        build_time.as_secs_f64(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        let lines: Vec<String> = crashed
            .iter()
            .map(|o| format!("  {}: {}", o.target, o.crash.as_deref().unwrap_or_default()))
            .collect();
        bail!(
            "{} fuzz target(s) crashed; reproduce with `cargo +nightly fuzz run -O TARGET INPUT`:\n{}",
            crashed.len(),
            lines.join("\n")
        );
    }
    Ok(())
}

/// Seconds per target in `cargo xtask ci` unless `CMDOP_CI_FUZZ_SECONDS` says otherwise.
const CI_SECONDS: u64 = 10;

/// The `fuzz` step of `cargo xtask ci`: every target for [`CI_SECONDS`] (about 7 minutes on a fresh 2-core
/// machine, most of it installing cargo-fuzz and the sanitizer build; see docs/reliability.md).
/// `CMDOP_CI_FUZZ_SECONDS=N` changes the time per target, `0` skips the step.
pub(crate) fn ci_smoke(root: &Path) -> Result<()> {
    let seconds = match std::env::var("CMDOP_CI_FUZZ_SECONDS") {
        Ok(text) => text.trim().parse::<u64>().with_context(|| {
            format!("CMDOP_CI_FUZZ_SECONDS must be a whole number of seconds, not `{text}`")
        })?,
        Err(_) => CI_SECONDS,
    };
    if seconds == 0 {
        println!("xtask ci: fuzz skipped (CMDOP_CI_FUZZ_SECONDS=0)");
        return Ok(());
    }
    run(root, &["--seconds".to_owned(), seconds.to_string()])
}

/// The fuzz targets: one file per target in `fuzz/fuzz_targets/`, sorted.
fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz").join("fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The targets to run: all of them, or the ones asked for, each of which must exist.
fn choose(all: &[String], wanted: &[String]) -> Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    let unknown: Vec<&String> = wanted.iter().filter(|w| !all.contains(w)).collect();
    if !unknown.is_empty() {
        bail!(
            "no fuzz target named {}; the targets are: {}",
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            all.join(", ")
        );
    }
    Ok(wanted.to_vec())
}

/// `cargo +nightly fuzz` from the workspace root (cargo-fuzz finds `fuzz/` there). Sanitizer builds need
/// nightly; the variables of the outer cargo are stripped as for every nested cargo.
fn fuzz_command() -> Command {
    let mut command = crate::cargo_command();
    command.args(["+nightly", "fuzz"]);
    command
}

fn ensure_nightly() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("cannot run rustup; fuzzing needs rustup to provide the nightly toolchain")?;
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.starts_with("nightly"))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: no nightly toolchain; installing a minimal one (cargo-fuzz needs it for sanitizers)"
    );
    crate::contour::run_shown(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: cargo-fuzz not found; installing cargo-fuzz {CARGO_FUZZ_VERSION} (about two minutes)"
    );
    crate::cargo(&[
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ])
}

/// Runs one target for `seconds` and reads libFuzzer's final statistics from its output.
fn run_target(root: &Path, target: &str, seconds: u64, sanitizer: &str) -> Result<Outcome> {
    let found = root.join("target").join("fuzz-corpus").join(target);
    let seeds = root.join("fuzz").join("corpus").join(target);
    let artifacts = root.join("target").join("fuzz-artifacts").join(target);
    for dir in [&found, &seeds, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut command = fuzz_command();
    command
        .args(["run", "-O", "--sanitizer", sanitizer])
        .args(target_dir(root, sanitizer))
        .arg(target)
        // libFuzzer writes what it finds into the first corpus directory and only reads the others.
        .arg(&found)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .args(LIBFUZZER_LIMITS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("{}", crate::contour::shell_line(&command));
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run the fuzz target {target}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log_path = root
        .join("target")
        .join("fuzz-artifacts")
        .join(format!("{target}.log"));
    fs::write(&log_path, &log).with_context(|| format!("cannot write {}", log_path.display()))?;
    let crash = if output.status.success() {
        None
    } else {
        Some(describe_crash(&log, &output.status.to_string(), &log_path))
    };
    let outcome = Outcome {
        target: target.to_owned(),
        seconds: started.elapsed().as_secs().max(1),
        executions: final_stat(&log, "stat::number_of_executed_units"),
        peak_rss_mb: final_stat(&log, "stat::peak_rss_mb"),
        corpus_entries: count_files(&found) + count_files(&seeds),
        crash,
    };
    println!(
        "  {target}: {} executions, {}",
        outcome
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string()),
        outcome.crash.as_deref().unwrap_or("no crash")
    );
    Ok(outcome)
}

/// A build directory per sanitizer: the flags differ, so sharing one would rebuild everything (about ten
/// minutes here) each time the sanitizer changes. The default stays cargo-fuzz's own `fuzz/target`.
fn target_dir(root: &Path, sanitizer: &str) -> Vec<String> {
    if sanitizer == "address" {
        Vec::new()
    } else {
        let dir = root
            .join("fuzz")
            .join("target")
            .join(format!("sanitizer-{sanitizer}"));
        vec![
            "--target-dir".to_owned(),
            dir.to_string_lossy().into_owned(),
        ]
    }
}

/// One line about a failed run: libFuzzer's own summary and the saved input, else the exit status.
fn describe_crash(log: &str, status: &str, log_path: &Path) -> String {
    let summary = log
        .lines()
        .find(|l| l.starts_with("SUMMARY:") || l.contains("panicked at"))
        .unwrap_or(status)
        .trim();
    let input = log
        .lines()
        .find_map(|l| l.split("Test unit written to ").nth(1))
        .map_or_else(String::new, |path| format!("; input {}", path.trim()));
    format!("{summary}{input}; log {}", log_path.display())
}

/// The value of a `stat::NAME: VALUE` line of `-print_final_stats=1`.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|line| {
            line.trim()
                .strip_prefix(name)?
                .trim_start()
                .strip_prefix(':')
        })
        .and_then(|value| value.trim().parse().ok())
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file() && e.file_name() != "README.md")
            .count()
    })
}

/// The table printed at the end (and pasted into docs/reliability.md).
fn summary(outcomes: &[Outcome]) -> String {
    let mut table = String::from(
        "| target | seconds | executions | executions/s | corpus | peak RSS MiB | result |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        let rate = o
            .executions
            .map_or_else(|| "?".to_owned(), |n| (n / o.seconds.max(1)).to_string());
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.target,
            o.seconds,
            o.executions
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            rate,
            o.corpus_entries,
            o.peak_rss_mb
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            if o.crash.is_some() {
                "CRASH"
            } else {
                "no crash"
            }
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAIL: &str = "Done 123456 runs in 11 second(s)\n\
        stat::number_of_executed_units: 123456\n\
        stat::average_exec_per_sec:     11223\n\
        stat::new_units_added:          87\n\
        stat::slowest_unit_time_sec:    0\n\
        stat::peak_rss_mb:              61\n";

    #[test]
    fn reads_libfuzzer_final_stats() {
        assert_eq!(
            final_stat(TAIL, "stat::number_of_executed_units"),
            Some(123_456)
        );
        assert_eq!(final_stat(TAIL, "stat::peak_rss_mb"), Some(61));
        assert_eq!(final_stat(TAIL, "stat::missing"), None);
        assert_eq!(
            final_stat("stat::peak_rss_mb: lots", "stat::peak_rss_mb"),
            None
        );
    }

    #[test]
    fn describes_a_crash_by_summary_and_input() {
        let log = "==1== ERROR: libFuzzer: deadly signal\n\
            SUMMARY: libFuzzer: deadly signal\n\
            artifact_prefix='x/'; Test unit written to x/crash-abc\n";
        assert_eq!(
            describe_crash(log, "exit status: 77", Path::new("t.log")),
            "SUMMARY: libFuzzer: deadly signal; input x/crash-abc; log t.log"
        );
        assert_eq!(
            describe_crash("", "exit status: 1", Path::new("t.log")),
            "exit status: 1; log t.log"
        );
    }

    #[test]
    fn unknown_targets_are_named_with_the_known_ones() {
        let all = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(choose(&all, &[]).unwrap(), all);
        assert_eq!(choose(&all, &["b".to_owned()]).unwrap(), vec!["b"]);
        let error = choose(&all, &["c".to_owned()]).unwrap_err().to_string();
        assert_eq!(error, "no fuzz target named `c`; the targets are: a, b");
    }

    #[test]
    fn every_target_has_a_committed_seed_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for target in targets(root).unwrap() {
            let seeds = root.join("fuzz").join("corpus").join(&target);
            assert!(
                count_files(&seeds) > 0,
                "fuzz/corpus/{target}/ has no seed inputs"
            );
        }
    }
}
