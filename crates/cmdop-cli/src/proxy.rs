//! `cmdop connect proxy MACHINE HOST:PORT`: this process's stdin and stdout joined to a TCP connection made from
//! the machine, like `ssh -W HOST:PORT` or `tailscale nc`; and `cmdop ssh-config`, which writes the `Host`
//! blocks that make ssh (and what rides on it: VS Code Remote-SSH, Ansible) use it as its `ProxyCommand`.
//!
//! ```text
//!  ssh ──stdin/stdout──▶ cmdop connect proxy web-1 localhost:22 ══ tunnel stream ══▶ agent ──TCP──▶ sshd
//! ```
//!
//! The destination goes through the machine's destination policy exactly as a `forward`'s connections do.
//! cmdop exits once the destination has closed its side and everything it sent is written out, whatever stdin
//! is doing; the end of stdin reaches the destination as a half-close.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_client::{Channel, ClientConnection, Machine, tunnel};
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::forward::{TunnelReply, TunnelRequest};
use tokio::io::AsyncWriteExt as _;

use crate::channel;
use crate::exit::{Failure, Kind, Outcome, usage};
use crate::forward::{destination, display_host, split_fields};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::Profile;

/// Flags of `cmdop connect proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The machine: its id, hostname, display name, or a unique prefix of one of them.
    machine: String,
    /// Where to connect from the machine, `HOST:PORT` (IPv6 in brackets), e.g. localhost:22.
    #[arg(value_name = "HOST:PORT")]
    destination: String,
}

/// Flags of `cmdop ssh-config`.
#[derive(Debug, Args)]
pub(crate) struct SshConfigArgs {
    /// The fleet whose machines to write; may be left out when the credential covers exactly one.
    #[arg(long, value_name = "NAME")]
    workspace: Option<String>,
    /// The port sshd listens on, on each machine.
    #[arg(long, default_value_t = 22, value_name = "PORT")]
    port: u16,
}

/// Runs `cmdop connect proxy`.
pub(crate) fn run(global: &GlobalArgs, workspace: Option<&str>, args: &ProxyArgs) -> Outcome {
    let (host, port) = parse_destination(&args.destination)?;
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    // stdin carries ssh's bytes: a first contact cannot be asked here, only accepted by --accept-new.
    let known = channel::known_machines(&profile, global);
    let runtime = runtime()?;
    runtime.block_on(async {
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let Channel {
            mut sender,
            mut receiver,
            machine,
            ..
        } = channel::open(
            &client,
            &session.identity,
            &known,
            workspace,
            &args.machine,
            StreamKind::Tunnel,
        )
        .await?;
        sender
            .send(&TunnelRequest::Connect {
                host: host.clone(),
                port,
            })
            .await?;
        connected(&mut receiver, &machine, &host, port).await?;
        let piped = pipe(sender, receiver).await;
        client.close().await;
        piped.map_err(|err| {
            Failure::new(
                Kind::Unreachable,
                format!(
                    "proxy to {}:{port} on {}: {err}",
                    display_host(&host),
                    machine.hostname
                ),
            )
        })?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `HOST:PORT`, the destination half of a forward spec.
fn parse_destination(text: &str) -> Result<(String, u16), Failure> {
    let bad = |why: &str| {
        usage(format!(
            "invalid destination {text:?}: {why}; write HOST:PORT, e.g. localhost:22 or [::1]:22"
        ))
    };
    let fields = split_fields(text).ok_or_else(|| bad("unbalanced brackets"))?;
    let [host, port] = fields.as_slice() else {
        return Err(bad("expected HOST and PORT separated by `:`"));
    };
    destination(host, port).map_err(bad)
}

/// Waits for the agent's answer to the connect: connected, or why not.
async fn connected(
    receiver: &mut SecureReceiver,
    machine: &Machine,
    host: &str,
    port: u16,
) -> Result<(), Failure> {
    match receiver.recv::<TunnelReply>().await? {
        Some(TunnelReply::Connected { .. }) => Ok(()),
        Some(TunnelReply::Refused { message }) => Err(Failure::new(
            Kind::General,
            format!("{}: {message}", machine.hostname),
        )),
        Some(other) => Err(Failure::new(
            Kind::General,
            format!("unexpected answer from {}: {other:?}", machine.hostname),
        )),
        None => Err(Failure::connection_lost(&format!(
            "{} ended the stream without connecting to {}:{port}",
            machine.hostname,
            display_host(host)
        ))),
    }
}

/// Moves stdin to the stream and the stream to stdout until the destination has closed its side.
async fn pipe(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
) -> Result<(), SecureStreamError> {
    let upstream = async {
        let mut stdin = crate::stdin_reader::spawn(tunnel::TCP_READ_CHUNK);
        while let Some(chunk) = stdin.recv().await {
            sender.send_bytes(&chunk).await?;
        }
        // The end of stdin, passed on as a half-close; the answer may still be coming.
        sender.end(0).await?;
        std::future::pending::<Result<(), SecureStreamError>>().await
    };
    let downstream = async {
        let mut stdout = tokio::io::stdout();
        let mut buffer = Vec::new();
        while receiver.recv_bytes(&mut buffer).await? {
            let written = stdout.write_all(&buffer).await;
            if written.and(stdout.flush().await).is_err() {
                // The reader of our stdout (ssh) has gone: nothing more to do.
                return Ok(());
            }
        }
        Ok(())
    };
    tokio::select! {
        result = upstream => result,
        result = downstream => result,
    }
}

/// Runs `cmdop ssh-config`: one `Host` block per machine of the fleet, for `~/.ssh/config`.
pub(crate) fn ssh_config(global: &GlobalArgs, args: &SshConfigArgs) -> Outcome {
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let runtime = runtime()?;
    let mut machines = runtime.block_on(async {
        let mut client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let machines = client.list_machines(args.workspace.as_deref()).await;
        client.close().await;
        machines
    })?;
    machines.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let proxy = proxy_command(global, args.workspace.as_deref(), args.port)?;
    let mut text = format!(
        "# cmdop: the machines of {} through the relay at {}; generated by `cmdop ssh-config`.\n\
         # Each connects to the machine's own sshd through the contour, with no port open on the machine.\n",
        args.workspace
            .as_deref()
            .map_or_else(|| "your fleet".to_owned(), |w| format!("fleet {w}")),
        session.relay.address
    );
    for machine in &machines {
        text.push_str(&format!(
            "\nHost {}\n    ProxyCommand {proxy}\n",
            machine.hostname
        ));
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(Failure::new(
            Kind::General,
            format!("cannot write to stdout: {err}"),
        )),
    }
}

/// The `ProxyCommand` line: this very binary with the flags that chose the relay and state, so the block works
/// wherever ssh runs it from.
fn proxy_command(
    global: &GlobalArgs,
    workspace: Option<&str>,
    port: u16,
) -> Result<String, Failure> {
    let exe = std::env::current_exe().map_err(|err| {
        Failure::new(
            Kind::General,
            format!("cannot find this program's path: {err}"),
        )
    })?;
    let mut words = vec![quote(&exe.to_string_lossy())];
    if let Some(dir) = &global.config_dir {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        words.extend(["--config-dir".to_owned(), quote(&dir.to_string_lossy())]);
    }
    if let Some(relay) = &global.relay {
        words.extend(["--relay".to_owned(), quote(relay)]);
    }
    if let Some(fingerprint) = &global.relay_fingerprint {
        words.extend(["--relay-fingerprint".to_owned(), quote(fingerprint)]);
    }
    if let Some(file) = &global.api_key_file {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        words.extend(["--api-key-file".to_owned(), quote(&file.to_string_lossy())]);
    }
    words.push("connect".to_owned());
    if let Some(workspace) = workspace {
        words.extend(["--workspace".to_owned(), quote(workspace)]);
    }
    words.extend([
        "proxy".to_owned(),
        "%h".to_owned(),
        format!("localhost:{port}"),
    ]);
    Ok(words.join(" "))
}

/// Quotes a word for the shell ssh runs `ProxyCommand` with, when it needs it. `%` is doubled: ssh expands
/// `%` tokens in the line.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+=@,".contains(c));
    let word = word.replace('%', "%%");
    if plain {
        word
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_host_and_port() {
        assert_eq!(
            parse_destination("localhost:22").unwrap(),
            ("localhost".to_owned(), 22)
        );
        assert_eq!(
            parse_destination("[::1]:22").unwrap(),
            ("::1".to_owned(), 22)
        );
        for bad in ["localhost", "localhost:0", ":22", "a:b:c", "[::1:22"] {
            let failure = parse_destination(bad).unwrap_err();
            assert_eq!(failure.kind(), Kind::Usage, "{bad}");
            assert!(failure.message().contains("HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn proxy_words_are_quoted_for_the_shell() {
        assert_eq!(quote("/usr/bin/cmdop"), "/usr/bin/cmdop");
        assert_eq!(quote("/home/me/my dir"), "'/home/me/my dir'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("SHA256:ab+/c="), "SHA256:ab+/c=");
        assert_eq!(quote("50%"), "'50%%'");
    }
}
