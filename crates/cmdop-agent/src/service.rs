//! `cmdop-agent service install|uninstall|status`: run the agent as a systemd service, system-wide or as a
//! `systemd --user` unit.
//!
//! The units are the ones in `dist/systemd/` (compiled in), with `ExecStart` pointing at this binary and this
//! config directory, so what the service runs is exactly what `cmdop-agent … run` runs by hand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

/// The unit's file name, for both variants.
pub(crate) const UNIT_NAME: &str = "cmdop-agent.service";

/// The system unit as shipped in `dist/systemd/`.
pub(crate) const SYSTEM_UNIT: &str = include_str!("../../../dist/systemd/cmdop-agent.service");

/// The `--user` unit as shipped in `dist/systemd/user/`.
pub(crate) const USER_UNIT: &str = include_str!("../../../dist/systemd/user/cmdop-agent.service");

/// What to do with the service.
#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Write the unit, then `systemctl daemon-reload` and `systemctl enable --now` it.
    #[command(
        after_help = "Examples:\n  sudo cmdop-agent --config-dir /etc/cmdop/agent service install\n  cmdop-agent service install --user\n  cmdop-agent service install --user --dry-run"
    )]
    Install(ServiceArgs),
    /// `systemctl disable --now` the unit and remove it.
    #[command(after_help = "Example:\n  cmdop-agent service uninstall --user")]
    Uninstall(ServiceArgs),
    /// Say whether the unit is installed, enabled and running.
    #[command(after_help = "Example:\n  cmdop-agent service status --user")]
    Status(ServiceArgs),
}

/// Flags every `service` subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// A `systemd --user` unit (runs as you) instead of a system one (runs as root).
    #[arg(long)]
    user: bool,
    /// Directory for the unit file [default: /etc/systemd/system, or ~/.config/systemd/user with --user].
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
    /// Print the unit and the commands instead of writing or running anything.
    #[arg(long)]
    dry_run: bool,
    /// Write or remove the unit file only; do not run systemctl.
    #[arg(long)]
    no_systemctl: bool,
}

/// What the unit's `ExecStart` runs.
#[derive(Debug)]
pub(crate) struct AgentInvocation<'a> {
    /// The agent binary.
    pub(crate) exe: &'a Path,
    /// `--config-dir`.
    pub(crate) config_dir: &'a Path,
    /// `--config`, if one was given.
    pub(crate) config_file: Option<&'a Path>,
}

/// Runs one `service` subcommand.
pub(crate) fn run(command: ServiceCommand, invocation: &AgentInvocation<'_>) -> Result<()> {
    match command {
        ServiceCommand::Install(args) => install(&args, invocation),
        ServiceCommand::Uninstall(args) => uninstall(&args),
        ServiceCommand::Status(args) => status(&args),
    }
}

/// The unit text for this variant, with `ExecStart` running `invocation`.
pub(crate) fn render(user: bool, invocation: &AgentInvocation<'_>) -> String {
    let template = if user { USER_UNIT } else { SYSTEM_UNIT };
    let mut exec = format!(
        "ExecStart={} --config-dir {}",
        systemd_quote(&invocation.exe.to_string_lossy()),
        systemd_quote(&invocation.config_dir.to_string_lossy())
    );
    if let Some(file) = invocation.config_file {
        let _ = write!(exec, " --config {}", systemd_quote(&file.to_string_lossy()));
    }
    // A system service has no keyring session to keep a new identity's key in.
    if !user {
        exec.push_str(" --kek-backend file");
    }
    exec.push_str(" run");
    let mut text = String::with_capacity(template.len() + exec.len());
    for line in template.lines() {
        if line.starts_with("ExecStart=") {
            text.push_str(&exec);
        } else {
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

fn install(args: &ServiceArgs, invocation: &AgentInvocation<'_>) -> Result<()> {
    let unit = render(args.user, invocation);
    let path = unit_path(args)?;
    let systemctl = systemctl_steps(args, &[&["daemon-reload"], &["enable", "--now", UNIT_NAME]]);
    if args.dry_run {
        println!("# would write {}:", path.display());
        print!("{unit}");
        for step in &systemctl {
            println!("# would run: {}", shown(step));
        }
        return Ok(());
    }
    ensure_may_write(args)?;
    if !enrolled(invocation.config_dir) && invocation.config_file.is_none() {
        eprintln!(
            "warning: {} has no saved relay settings; the service will fail until you run `cmdop-agent --config-dir {} enroll …`",
            invocation.config_dir.display(),
            invocation.config_dir.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, unit).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    for step in &systemctl {
        run_systemctl(step)?;
    }
    if args.no_systemctl {
        println!(
            "enable it with: systemctl{} daemon-reload && systemctl{} enable --now {UNIT_NAME}",
            user_flag(args),
            user_flag(args)
        );
    } else {
        println!(
            "enabled and started; follow it with: journalctl{} -u {UNIT_NAME} -f",
            user_flag(args)
        );
    }
    Ok(())
}

fn uninstall(args: &ServiceArgs) -> Result<()> {
    let path = unit_path(args)?;
    let disable = systemctl_steps(args, &[&["disable", "--now", UNIT_NAME]]);
    let reload = systemctl_steps(args, &[&["daemon-reload"]]);
    if args.dry_run {
        for step in &disable {
            println!("# would run: {}", shown(step));
        }
        println!("# would remove {}", path.display());
        for step in &reload {
            println!("# would run: {}", shown(step));
        }
        return Ok(());
    }
    ensure_may_write(args)?;
    if !path.exists() {
        println!(
            "{} is not installed ({} does not exist)",
            UNIT_NAME,
            path.display()
        );
        return Ok(());
    }
    for step in &disable {
        run_systemctl(step)?;
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    println!("removed {}", path.display());
    for step in &reload {
        run_systemctl(step)?;
    }
    Ok(())
}

fn status(args: &ServiceArgs) -> Result<()> {
    let path = unit_path(args)?;
    if path.exists() {
        println!("unit:    {} (installed)", path.display());
    } else {
        println!("unit:    {} (not installed)", path.display());
    }
    if args.no_systemctl || !systemctl_available() {
        println!("systemd: not asked (no systemctl on this machine, or --no-systemctl)");
        return Ok(());
    }
    for (label, verb) in [("enabled:", "is-enabled"), ("active: ", "is-active")] {
        let mut command = Command::new("systemctl");
        if args.user {
            command.arg("--user");
        }
        let output = command
            .args([verb, UNIT_NAME])
            .output()
            .context("cannot run systemctl")?;
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!(
            "{label} {}",
            if answer.is_empty() {
                "unknown"
            } else {
                &answer
            }
        );
    }
    Ok(())
}

/// Where the unit file goes.
fn unit_path(args: &ServiceArgs) -> Result<PathBuf> {
    let dir = match &args.unit_dir {
        Some(dir) => dir.clone(),
        None if args.user => user_unit_dir()?,
        None => PathBuf::from("/etc/systemd/system"),
    };
    Ok(dir.join(UNIT_NAME))
}

fn user_unit_dir() -> Result<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .map(|base| base.join("systemd").join("user"))
        .context("cannot find your systemd user directory (neither XDG_CONFIG_HOME nor HOME is set); pass --unit-dir")
}

/// A system unit in the default place needs root; say so before anything half-happens.
fn ensure_may_write(args: &ServiceArgs) -> Result<()> {
    if !args.user && args.unit_dir.is_none() && !nix::unistd::geteuid().is_root() {
        bail!(
            "installing the system service needs root: run it with sudo, or use --user for a service that runs as you"
        );
    }
    Ok(())
}

fn enrolled(config_dir: &Path) -> bool {
    cmdop_agent::settings::Settings::load(config_dir).is_ok_and(|s| s.relay.is_some())
        || config_dir.join(crate::agent_config::CONFIG_FILE).is_file()
}

fn systemctl_steps(args: &ServiceArgs, steps: &[&[&str]]) -> Vec<Vec<String>> {
    if args.no_systemctl {
        return Vec::new();
    }
    steps
        .iter()
        .map(|step| {
            let mut words = vec!["systemctl".to_owned()];
            if args.user {
                words.push("--user".to_owned());
            }
            words.extend(step.iter().map(|w| (*w).to_owned()));
            words
        })
        .collect()
}

fn run_systemctl(words: &[String]) -> Result<()> {
    println!("$ {}", shown(words));
    let (program, rest) = words.split_first().context("empty command")?;
    let status = Command::new(program).args(rest).status().with_context(|| {
        format!(
            "cannot run {program}; is this a systemd machine? (--no-systemctl writes the unit only)"
        )
    })?;
    if !status.success() {
        bail!("`{}` exited with {status}", shown(words));
    }
    Ok(())
}

fn systemctl_available() -> bool {
    Command::new("systemctl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn user_flag(args: &ServiceArgs) -> &'static str {
    if args.user { " --user" } else { "" }
}

fn shown(words: &[String]) -> String {
    words.join(" ")
}

/// Quotes a word for a unit file's command line when it needs it (systemd splits on whitespace).
fn systemd_quote(word: &str) -> String {
    if word
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_the_shipped_paths_gives_back_the_shipped_units() {
        let system = render(
            false,
            &AgentInvocation {
                exe: Path::new("/usr/local/bin/cmdop-agent"),
                config_dir: Path::new("/etc/cmdop/agent"),
                config_file: None,
            },
        );
        assert_eq!(system, SYSTEM_UNIT);
        let user = render(
            true,
            &AgentInvocation {
                exe: Path::new("/usr/local/bin/cmdop-agent"),
                config_dir: Path::new("%h/.config/cmdop"),
                config_file: None,
            },
        );
        assert_eq!(user, USER_UNIT);
    }

    #[test]
    fn paths_with_spaces_are_quoted_and_the_config_file_is_passed() {
        let unit = render(
            true,
            &AgentInvocation {
                exe: Path::new("/opt/my tools/cmdop-agent"),
                config_dir: Path::new("/home/a/.config/cmdop"),
                config_file: Some(Path::new("/home/a/agent.toml")),
            },
        );
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/cmdop-agent\" --config-dir /home/a/.config/cmdop --config /home/a/agent.toml run\n"),
            "{unit}"
        );
    }
}
