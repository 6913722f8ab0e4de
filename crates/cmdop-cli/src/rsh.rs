//! `cmdop rsh [ssh options] MACHINE [COMMAND…]`: an ssh-shaped entry point for the tools that take "an ssh
//! command" (`rsync -e`, `GIT_SSH_COMMAND`, `BORG_RSH`, `restic -o sftp.command`).
//!
//! It behaves like `ssh MACHINE COMMAND…`: the command words are joined with spaces and run by the remote
//! user's shell, stdin, stdout, stderr and the exit code pass through, and cmdop's own failures exit 255. The
//! options those tools pass are accepted and ignored or mapped (docs/cli.md lists each); any other option is
//! an error. Without a command it opens a shell: on a terminal an interactive session, like
//! `cmdop connect MACHINE`; without one, the login shell reading stdin, as ssh does.
//!
//! ```text
//!  rsync -a -e 'cmdop rsh' src/ web-1:/dst/
//!    └─▶ cmdop rsh web-1 rsync --server -logDtpre.iLsfxCIvu . /dst/
//!          └─▶ exec on web-1: sh -c 'exec "$SHELL" -c "$1"' sh 'rsync --server … /dst/'
//! ```

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Args;

use crate::attach::{self, AttachArgs};
use crate::escape::EscapeChar;
use crate::exec::{self, OWN_FAILURE, Output, RemoteCommand};
use crate::exit::{Failure, usage};
use crate::global_args::GlobalArgs;

/// What `cmdop rsh --help` shows; the arguments themselves are parsed the way ssh parses them.
#[derive(Debug, Args)]
pub(crate) struct RshArgs {
    /// `[-l USER] [-p PORT] [-o KEY=VALUE] [-T] [-x] [-a] [-q] [-e CHAR] [-4|-6] [-C] [--workspace FLEET]
    /// MACHINE [COMMAND…]`, as ssh takes them. cmdop's own flags (--config-dir, --relay, …) go before `rsh`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

/// The options understood, and what became of them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    machine: String,
    command: Vec<String>,
    workspace: Option<String>,
    quiet: bool,
    escape: Option<EscapeChar>,
    /// `-o StrictHostKeyChecking=accept-new` (or `no`): pin a machine met for the first time, as
    /// `--accept-new` does.
    accept_new: bool,
}

/// The ssh options that take no value: all accepted, only `-q` changes anything.
const FLAGS: &str = "Txaq46C";
/// The ssh options that take a value.
const WITH_VALUE: &str = "lpoe";
const ACCEPTED: &str =
    "-l USER, -p PORT, -o KEY=VALUE, -T, -x, -a, -q, -e CHAR, -4, -6, -C and --workspace FLEET";

/// Runs `cmdop rsh`.
pub(crate) fn run(global: &GlobalArgs, args: &RshArgs) -> ExitCode {
    let parsed = match parse(&args.args) {
        Ok(parsed) => parsed,
        Err(failure) => return failure.report(),
    };
    if parsed.quiet {
        crate::channel::be_quiet();
    }
    let mut global = global.clone();
    global.accept_new |= parsed.accept_new;
    let global = &global;
    let workspace = parsed.workspace.as_deref();
    if parsed.command.is_empty() {
        if std::io::stdin().is_terminal() {
            let attach = AttachArgs::with_escape(parsed.escape.unwrap_or(EscapeChar::Byte(b'~')));
            return attach::run(global, workspace, Some(parsed.machine), &attach);
        }
        return shell_without_terminal(global, workspace, &parsed.machine);
    }
    // Like ssh without -n, stdin is always forwarded (a terminal too): the remote command decides whether to
    // read it, and cmdop exits when the command has, whatever stdin does.
    let command = RemoteCommand::through_shell(&parsed.command, true);
    passthrough(global, workspace, &parsed.machine, &command)
}

/// `cmdop connect MACHINE` and `cmdop rsh MACHINE` when stdin is not a terminal: as ssh does, the login shell
/// without a PTY, reading commands from stdin, with the streams passed through and its exit code.
pub(crate) fn shell_without_terminal(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: &str,
) -> ExitCode {
    passthrough(global, workspace, machine, &RemoteCommand::login_shell())
}

fn passthrough(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: &str,
    command: &RemoteCommand,
) -> ExitCode {
    match exec::run_one(global, workspace, machine, command, Output::Stream) {
        Ok((machine, received)) => {
            let code = received.exit_code(&machine);
            ExitCode::from(u8::try_from(code & 0xff).unwrap_or(OWN_FAILURE))
        }
        Err(failure) => {
            failure.print();
            ExitCode::from(OWN_FAILURE)
        }
    }
}

/// Parses ssh's command line: options (clustered like `-Tx`, values attached like `-p22` or separate), the
/// destination (`[USER@]MACHINE`), more options, then the command. `--` ends the options.
fn parse(args: &[String]) -> Result<Parsed, Failure> {
    let mut parsed = Parsed::default();
    let mut machine: Option<String> = None;
    let mut words = args.iter();
    // `--` ends the options for good; otherwise ssh reads options after the destination too, until the
    // command starts.
    let mut terminated = false;
    while let Some(arg) = words.next() {
        if !terminated && arg == "--" {
            terminated = true;
            continue;
        }
        if !terminated && let Some(long) = arg.strip_prefix("--") {
            let value = match long.split_once('=') {
                Some(("workspace", value)) => value.to_owned(),
                None if long == "workspace" => words
                    .next()
                    .cloned()
                    .ok_or_else(|| usage("cmdop rsh: --workspace needs a fleet name"))?,
                _ => return Err(unknown(arg)),
            };
            parsed.workspace = Some(value);
            continue;
        }
        if !terminated && arg.len() > 1 && arg.starts_with('-') {
            option_cluster(arg, &mut words, &mut parsed)?;
            continue;
        }
        if machine.is_none() {
            machine = Some(arg.clone());
            continue;
        }
        parsed.command.push(arg.clone());
        parsed.command.extend(words.by_ref().cloned());
    }
    let machine = machine.ok_or_else(|| {
        usage("cmdop rsh: no machine given; usage: cmdop rsh [ssh options] MACHINE [COMMAND…]")
    })?;
    // `user@web-1`: commands run as the agent's user, so the user part is dropped like `-l`.
    parsed.machine = machine
        .rsplit_once('@')
        .map_or(machine.as_str(), |(_, host)| host)
        .to_owned();
    if parsed.machine.is_empty() {
        return Err(usage(format!("cmdop rsh: {machine:?} names no machine")));
    }
    Ok(parsed)
}

/// One `-…` argument: flags, and at most one option with a value (the rest of the argument, or the next one).
fn option_cluster<'a>(
    arg: &str,
    words: &mut impl Iterator<Item = &'a String>,
    parsed: &mut Parsed,
) -> Result<(), Failure> {
    for (at, option) in arg.char_indices().skip(1) {
        if FLAGS.contains(option) {
            if option == 'q' {
                parsed.quiet = true;
            }
            continue;
        }
        if !WITH_VALUE.contains(option) {
            return Err(unknown(&format!("-{option}")));
        }
        let attached = arg.get(at + option.len_utf8()..).unwrap_or_default();
        let value = if attached.is_empty() {
            words
                .next()
                .cloned()
                .ok_or_else(|| usage(format!("cmdop rsh: option -{option} needs a value")))?
        } else {
            attached.to_owned()
        };
        apply(option, &value, parsed)?;
        return Ok(());
    }
    Ok(())
}

/// What an option with a value does: `-e` sets the escape character; `-o StrictHostKeyChecking=…` picks the
/// first-contact policy; `-l`, `-p` and other `-o` settings are checked and ignored (commands run as the
/// agent's user, the contour has no ports, ssh's other settings do not apply).
fn apply(option: char, value: &str, parsed: &mut Parsed) -> Result<(), Failure> {
    match option {
        'e' => {
            let escape = value
                .parse::<EscapeChar>()
                .map_err(|err| usage(format!("cmdop rsh: -e: {err}")))?;
            parsed.escape = Some(escape);
        }
        'p' if value.parse::<u16>().is_err() => {
            return Err(usage(format!(
                "cmdop rsh: -p {value:?} is not a port number (it is ignored, but must be a number)"
            )));
        }
        'o' => parsed.accept_new |= strict_host_key_checking(value)?.unwrap_or(false),
        _ => {}
    }
    Ok(())
}

/// Reads one `-o` setting (`KEY=VALUE` or `KEY VALUE`, as ssh takes it). For `StrictHostKeyChecking`,
/// whether first contacts are accepted: `accept-new` and `no` do, `yes` and `ask` leave it to the terminal
/// (asked) or refuse. Any other key is `None`: ignored.
fn strict_host_key_checking(setting: &str) -> Result<Option<bool>, Failure> {
    let setting = setting.trim();
    let Some((key, value)) = setting.split_once(['=', ' ']) else {
        return Err(usage(format!("cmdop rsh: -o {setting:?} is not KEY=VALUE")));
    };
    if !key.trim().eq_ignore_ascii_case("StrictHostKeyChecking") {
        return Ok(None);
    }
    match value.trim().to_ascii_lowercase().as_str() {
        "accept-new" | "no" | "off" => Ok(Some(true)),
        "yes" | "ask" => Ok(Some(false)),
        other => Err(usage(format!(
            "cmdop rsh: -o StrictHostKeyChecking={other:?} is not one of accept-new, no, yes, ask"
        ))),
    }
}

fn unknown(option: &str) -> Failure {
    usage(format!(
        "cmdop rsh: unknown option {option}; it takes the ssh options {ACCEPTED} (see docs/cli.md)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Kind;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn rsync_and_git_command_lines_parse_like_ssh() {
        let rsync = parse(&words("web-1 rsync --server -logDtpre.iLsfxCIvu . /dst/")).unwrap();
        assert_eq!(rsync.machine, "web-1");
        assert_eq!(
            rsync.command,
            words("rsync --server -logDtpre.iLsfxCIvu . /dst/")
        );
        let git = parse(&[
            "-o".into(),
            "SendEnv=GIT_PROTOCOL".into(),
            "git@web-1".into(),
            "git-upload-pack '/srv/repo'".into(),
        ])
        .unwrap();
        assert_eq!(git.machine, "web-1");
        assert_eq!(git.command, ["git-upload-pack '/srv/repo'"]);
        let many = parse(&words(
            "-Tx -q -p22 -l root -oBatchMode=yes -4 -C -a -e none db-1 true",
        ))
        .unwrap();
        assert_eq!(
            many,
            Parsed {
                machine: "db-1".into(),
                command: vec!["true".into()],
                workspace: None,
                quiet: true,
                escape: Some(EscapeChar::None),
                accept_new: false,
            }
        );
    }

    #[test]
    fn options_after_the_machine_and_the_end_of_options() {
        let after = parse(&words("web-1 -l me -T uname -a")).unwrap();
        assert_eq!(after.command, words("uname -a"));
        let ended = parse(&words("-- web-1 -l")).unwrap();
        assert_eq!(ended.command, ["-l"]);
        let fleet = parse(&words("--workspace prod web-1")).unwrap();
        assert_eq!(fleet.workspace.as_deref(), Some("prod"));
        assert!(fleet.command.is_empty());
        assert_eq!(
            parse(&words("--workspace=dev web-1"))
                .unwrap()
                .workspace
                .as_deref(),
            Some("dev")
        );
    }

    #[test]
    fn strict_host_key_checking_accept_new_pins_first_contacts_like_the_flag() {
        for (line, accept_new) in [
            ("-o StrictHostKeyChecking=accept-new web-1 true", true),
            ("-o stricthostkeychecking=no web-1 true", true),
            ("-oStrictHostKeyChecking=yes web-1 true", false),
            ("-o SendEnv=GIT_PROTOCOL web-1 true", false),
            ("web-1 true", false),
        ] {
            assert_eq!(
                parse(&words(line)).unwrap().accept_new,
                accept_new,
                "{line}"
            );
        }
        let spaced = parse(&[
            "-o".into(),
            "StrictHostKeyChecking accept-new".into(),
            "web-1".into(),
        ])
        .unwrap();
        assert!(spaced.accept_new);
    }

    #[test]
    fn unknown_options_and_missing_parts_are_usage_errors() {
        for (bad, words_expected) in [
            ("-G web-1", "unknown option -G"),
            ("-v web-1", "unknown option -v"),
            ("--verbose web-1", "unknown option --verbose"),
            ("-p", "needs a value"),
            ("-p http web-1", "not a port number"),
            ("-e xx web-1", "escape character"),
            ("-o SendEnv web-1", "not KEY=VALUE"),
            (
                "-o StrictHostKeyChecking=maybe web-1",
                "not one of accept-new",
            ),
            ("-T", "no machine given"),
        ] {
            let failure = parse(&words(bad)).unwrap_err();
            assert_eq!(failure.kind(), Kind::Usage, "{bad}");
            assert!(
                failure.message().contains(words_expected),
                "{bad}: {}",
                failure.message()
            );
        }
    }
}
