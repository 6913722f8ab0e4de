//! `cmdop connect MACHINE`: an interactive shell in a session on the machine, through the relay, end to end
//! encrypted; plus `cmdop connect sessions` and `cmdop connect kill`.
//!
//! The session lives on the agent. This process is only a terminal attached to it: when its connection
//! breaks (network loss, relay restart) it reconnects with backoff and resumes from the exact output offset
//! it had written, so nothing is lost or repeated; `~.` detaches and leaves the session running.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_client::{ClientConnection, Machine, reconnect_delay};
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::shell::{
    AttachRequest, SessionInfo, ShellReply, ShellRequest, valid_session_name,
};
use cmdop_proto::ops::{ExitStatus, MAX_CHUNK};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::channel;
use crate::escape::{Action, EscapeChar, EscapeScanner, help_text};
use crate::exit::{Failure, Kind};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::{Profile, Session};
use crate::resume::{Claim, Resume, ResumeFile};
use crate::table::{print_columns, rfc3339};
use crate::terminal::{self, Keys, RawMode, TerminalWriter};
use cmdop_client::Channel;
use cmdop_client::known_machines::KnownMachines;

/// cmdop's own failures, as ssh reports its own: distinct from the shell's exit code.
const OWN_FAILURE: u8 = 255;
/// Acknowledge written output every this many bytes: often enough that the agent's 1 MiB buffer never
/// fills with acknowledged-but-unconfirmed output, rarely enough to cost nothing.
const ACK_EVERY: u64 = 64 * 1024;
/// The longest wait between reconnect attempts: a person is waiting at the terminal.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Flags of an interactive `cmdop connect MACHINE`.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// Attach to this session, creating it if it does not exist; without it a new session is started.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,
    /// Watch the session without typing into it (needs --session).
    #[arg(long, requires = "session")]
    read_only: bool,
    /// The escape character (at the start of a line: `~.` detaches, `~?` lists escapes); `^X` for a control
    /// character, `none` to disable.
    #[arg(long, default_value = "~", value_name = "CHAR")]
    escape_char: EscapeChar,
}

impl AttachArgs {
    /// A new session with `escape` as the escape character (what `cmdop rsh MACHINE` opens on a terminal).
    pub(crate) fn with_escape(escape: EscapeChar) -> Self {
        Self {
            session: None,
            read_only: false,
            escape_char: escape,
        }
    }

    /// Whether a named session was asked for (`--session`, `--read-only`), which only a terminal can use.
    pub(crate) fn names_a_session(&self) -> bool {
        self.session.is_some() || self.read_only
    }
}

/// Flags of `cmdop connect sessions`.
#[derive(Debug, Args)]
pub(crate) struct SessionsArgs {
    /// The machine: its id, hostname, display name, or a unique prefix of one of them.
    machine: String,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

/// Flags of `cmdop connect kill`.
#[derive(Debug, Args)]
pub(crate) struct KillArgs {
    /// The machine.
    machine: String,
    /// The session to end (its processes get SIGHUP, then SIGKILL).
    session: String,
}

/// Runs an interactive session; with no machine, offers a picker on a terminal.
pub(crate) fn run(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: Option<String>,
    args: &AttachArgs,
) -> ExitCode {
    match interactive(global, workspace, machine, args) {
        Ok(code) => code,
        Err(failure) => {
            terminal::restore();
            failure.print();
            ExitCode::from(OWN_FAILURE)
        }
    }
}

fn interactive(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: Option<String>,
    args: &AttachArgs,
) -> Result<ExitCode, Failure> {
    if let Some(name) = args
        .session
        .as_ref()
        .filter(|name| !valid_session_name(name))
    {
        return Err(Failure::new(
            Kind::General,
            format!(
                "invalid --session {name:?}: use 1 to 32 letters, digits, '.', '_' or '-', not starting with '-' or '.'"
            ),
        ));
    }
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let machine = match machine {
            Some(machine) => machine,
            None => pick_machine(&session, workspace).await?,
        };
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let known = channel::known_machines(&profile, global);
        let channel = channel::open(
            &client,
            &session.identity,
            &known,
            workspace,
            &machine,
            StreamKind::Shell,
        )
        .await?;
        let mut attachment = Attachment::new(&profile, &channel.machine, args)?;
        let code = attachment
            .run(&session, workspace, &known, client, channel)
            .await?;
        Ok(code)
    })
}

/// How one attached stream ended.
enum End {
    Exited(ExitStatus),
    Detached,
    Replaced,
    Refused(String),
    Lost(String),
    Signal(i32),
}

/// The terminal's side of a session across reconnects.
struct Attachment {
    machine: Machine,
    session: Option<String>,
    instance: [u8; 16],
    /// The output offset written to the terminal so far; `None` until the first attach answered.
    offset: Option<u64>,
    resume: Option<ResumeFile>,
    /// Whether `resume` was claimed (a second terminal on the same session runs without one).
    claim_tried: bool,
    read_only: bool,
    /// The current stream got as far as `Attached`.
    reached: bool,
    escape: EscapeChar,
    scanner: EscapeScanner,
    profile_dir: std::path::PathBuf,
}

impl Attachment {
    fn new(profile: &Profile, machine: &Machine, args: &AttachArgs) -> Result<Self, Failure> {
        let mut instance = [0u8; 16];
        OsRng.fill_bytes(&mut instance);
        let mut attachment = Self {
            machine: machine.clone(),
            session: args.session.clone(),
            instance,
            offset: None,
            resume: None,
            claim_tried: false,
            read_only: args.read_only,
            reached: false,
            escape: args.escape_char,
            scanner: EscapeScanner::new(args.escape_char),
            profile_dir: profile.dir().to_path_buf(),
        };
        if let Some(name) = args.session.clone() {
            attachment.claim(&name)?;
        }
        Ok(attachment)
    }

    /// Takes over the resume file of `name`, adopting the position a previous terminal left there.
    fn claim(&mut self, name: &str) -> Result<(), Failure> {
        self.claim_tried = true;
        let claim = ResumeFile::claim(&self.profile_dir, self.machine.id, name).map_err(|err| {
            Failure::new(
                Kind::General,
                format!(
                    "cannot open the session state under {}: {err}",
                    self.profile_dir.join("sessions").display()
                ),
            )
        })?;
        if let Claim::Owned(file, saved) = claim {
            if let Some(saved) = saved {
                self.instance = saved.instance;
                self.offset = Some(saved.offset);
            }
            self.resume = Some(file);
        }
        Ok(())
    }

    fn request(&self, create: bool) -> ShellRequest {
        ShellRequest::Attach(AttachRequest {
            session: self.session.clone(),
            create,
            instance: self.instance,
            resume_from: self.offset,
            read_only: self.read_only,
            term: terminal::term(),
            size: terminal::size(),
        })
    }

    async fn run(
        &mut self,
        session: &Session,
        workspace: Option<&str>,
        known: &KnownMachines,
        client: ClientConnection,
        channel: Channel,
    ) -> Result<ExitCode, Failure> {
        let signals = Signals::new()?;
        let raw = RawMode::enable().map_err(|err| {
            Failure::new(
                Kind::General,
                format!("cannot put the terminal in raw mode: {err}"),
            )
        })?;
        let mut io = TerminalIo {
            input: Keys::start(),
            stdout: TerminalWriter::new(),
            signals,
        };
        let end = self
            .until_the_end(session, workspace, known, (client, channel), &mut io)
            .await;
        drop(raw);
        self.outcome(end)
    }

    /// Attaches over `live`, then reconnects (with backoff) and reattaches whenever the connection is lost,
    /// until the session ends, the person detaches, or a reconnect is refused.
    async fn until_the_end(
        &mut self,
        session: &Session,
        workspace: Option<&str>,
        known: &KnownMachines,
        live: (ClientConnection, Channel),
        io: &mut TerminalIo,
    ) -> End {
        let mut live = Some(live);
        let mut create = true;
        let mut attempt: u32 = 0;
        loop {
            let (client, channel) = match live.take() {
                Some(live) => live,
                None => match self.reconnect(session, workspace, known, io, attempt).await {
                    Ok(Some(live)) => live,
                    Ok(None) => {
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    Err(end) => return end,
                },
            };
            let end = self.attached(client, channel, create, io).await;
            create = false;
            match end {
                End::Lost(reason) => {
                    let name = self.session.as_deref().unwrap_or("?");
                    note(&format!(
                        "connection lost ({reason}); reconnecting to session {name} (type {}. to give up)",
                        self.escape.display()
                    ));
                    // A stream that attached resets the backoff: the connection did work.
                    if std::mem::take(&mut self.reached) {
                        attempt = 0;
                    } else {
                        attempt = attempt.saturating_add(1);
                    }
                }
                other => return other,
            }
        }
    }

    /// What the person sees once the attachment has ended, and cmdop's exit.
    fn outcome(&mut self, end: End) -> Result<ExitCode, Failure> {
        let host = self.machine.hostname.clone();
        let name = self.session.clone().unwrap_or_default();
        match end {
            End::Exited(status) => {
                if let Some(file) = self.resume.take() {
                    file.remove();
                }
                Ok(exit_code(status.shell_code()))
            }
            End::Detached => {
                eprintln!(
                    "cmdop: detached from session {name} on {host}; it keeps running. Reattach with: cmdop connect {host} --session {name}"
                );
                Ok(ExitCode::SUCCESS)
            }
            End::Signal(number) => {
                eprintln!(
                    "cmdop: stopped by signal {number}; session {name} on {host} keeps running"
                );
                Ok(exit_code(128 + number))
            }
            End::Replaced => Err(Failure::new(
                Kind::General,
                format!("another attach of this terminal to session {name} on {host} took over"),
            )),
            End::Refused(message) => {
                if let Some(file) = self.resume.take() {
                    file.remove();
                }
                Err(Failure::new(Kind::General, format!("{host}: {message}")))
            }
            End::Lost(reason) => Err(Failure::connection_lost(&reason)),
        }
    }

    /// One attached stream: sends the attach, then moves keystrokes one way and output the other.
    async fn attached(
        &mut self,
        client: ClientConnection,
        channel: Channel,
        create: bool,
        io: &mut TerminalIo,
    ) -> End {
        let Channel {
            mut sender,
            mut receiver,
            ..
        } = channel;
        if let Err(end) = self.attach(&mut sender, &mut receiver, create).await {
            return end;
        }
        let end = self.exchange(&mut sender, &mut receiver, io).await;
        if matches!(end, End::Detached) {
            // Let the agent see the detach before the connection closes.
            let _ = sender.send(&ShellRequest::Detach).await;
            let _ = sender.end(0).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(Some(_)) = receiver.recv::<ShellReply>().await {}
            })
            .await;
        }
        client.close().await;
        end
    }

    /// Sends the attach request and takes the answer: from where the output continues, and under which
    /// session name (a new session's is the agent's choice).
    async fn attach(
        &mut self,
        sender: &mut SecureSender,
        receiver: &mut SecureReceiver,
        create: bool,
    ) -> Result<(), End> {
        sender.send(&self.request(create)).await.map_err(lost)?;
        match receiver.recv::<ShellReply>().await {
            Ok(Some(ShellReply::Attached {
                session,
                offset,
                dropped,
                ..
            })) => {
                if !self.claim_tried
                    && let Err(failure) = self.claim(&session)
                {
                    failure.print();
                }
                self.session = Some(session);
                self.reached = true;
                if dropped > 0 {
                    note(&format!(
                        "{dropped} bytes of output were produced while detached and no longer fit the session's buffer"
                    ));
                }
                self.offset = Some(offset);
                self.save();
                Ok(())
            }
            Ok(Some(ShellReply::Failed { message })) => Err(End::Refused(escaped(&message))),
            Ok(Some(other)) => Err(End::Lost(format!("unexpected first reply {other:?}"))),
            Ok(None) => Err(End::Lost("the machine ended the stream".into())),
            Err(err) => Err(lost(err)),
        }
    }

    /// Moves output to the terminal and keystrokes, resizes and signals to the session until it ends.
    async fn exchange(
        &mut self,
        sender: &mut SecureSender,
        receiver: &mut SecureReceiver,
        io: &mut TerminalIo,
    ) -> End {
        let mut input_open = true;
        let mut acked = self.offset.unwrap_or(0);
        loop {
            tokio::select! {
                reply = receiver.recv::<ShellReply>() => match reply {
                    Ok(Some(ShellReply::Output(bytes))) => {
                        if let Err(end) = self.output(&bytes, &mut io.stdout, sender, &mut acked).await {
                            return end;
                        }
                    }
                    Ok(Some(ShellReply::Exited(status))) => return End::Exited(status),
                    Ok(Some(ShellReply::Replaced)) => return End::Replaced,
                    Ok(Some(ShellReply::Failed { message })) => return End::Refused(escaped(&message)),
                    Ok(Some(_)) => {}
                    Ok(None) => return End::Lost("the machine ended the stream".into()),
                    Err(err) => return lost(err),
                },
                bytes = io.input.recv(), if input_open => {
                    let Some(bytes) = bytes else {
                        input_open = false;
                        continue;
                    };
                    match self.keystrokes(sender, &bytes).await {
                        Ok(None) => {}
                        Ok(Some(end)) => return end,
                        Err(err) => return lost(err),
                    }
                }
                _ = io.signals.winch.recv() => {
                    if !self.read_only
                        && let Err(err) = sender.send(&ShellRequest::Resize(terminal::size())).await
                    {
                        return lost(err);
                    }
                }
                _ = io.signals.term.recv() => return End::Signal(15),
                _ = io.signals.hup.recv() => return End::Signal(1),
                _ = io.signals.int.recv() => return End::Signal(2),
            }
        }
    }

    /// Writes output to the terminal, advancing (and saving) the position by exactly what the terminal took,
    /// and acknowledges it to the agent every [`ACK_EVERY`] bytes.
    async fn output(
        &mut self,
        bytes: &[u8],
        stdout: &mut TerminalWriter,
        sender: &mut SecureSender,
        acked: &mut u64,
    ) -> Result<(), End> {
        // Saved after each piece, so a kill at any moment leaves the position true.
        let written = stdout
            .write_all(bytes, |n| {
                self.offset = Some(self.offset.unwrap_or(0).saturating_add(n as u64));
                self.save();
            })
            .await;
        if written.is_err() {
            // The terminal went away (a closed pipe): leave the session running.
            return Err(End::Detached);
        }
        let offset = self.offset.unwrap_or(0);
        if offset.saturating_sub(*acked) >= ACK_EVERY {
            *acked = offset;
            sender
                .send(&ShellRequest::Ack(offset))
                .await
                .map_err(lost)?;
        }
        Ok(())
    }

    /// Sends keystrokes, acting on escapes; returns how the attachment ends, if it does.
    async fn keystrokes(
        &mut self,
        sender: &mut SecureSender,
        bytes: &[u8],
    ) -> Result<Option<End>, SecureStreamError> {
        for action in self.scanner.feed(bytes) {
            match action {
                Action::Send(bytes) => {
                    if self.read_only {
                        continue;
                    }
                    for chunk in bytes.chunks(MAX_CHUNK) {
                        sender.send(&ShellRequest::Input(chunk.to_vec())).await?;
                    }
                }
                Action::Detach => return Ok(Some(End::Detached)),
                Action::Help => {
                    let _ =
                        write_terminal(&mut std::io::stderr(), help_text(self.escape).as_bytes());
                }
            }
        }
        Ok(None)
    }

    /// Reconnects after a lost connection, with backoff, until it works, the session is gone, or the person
    /// gives up with the escape. `Ok(None)`: this attempt failed in a way worth retrying.
    async fn reconnect(
        &mut self,
        session: &Session,
        workspace: Option<&str>,
        known: &KnownMachines,
        io: &mut TerminalIo,
        attempt: u32,
    ) -> Result<Option<(ClientConnection, Channel)>, End> {
        let delay = reconnect_delay(attempt, &mut OsRng).min(MAX_RECONNECT_DELAY);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        // Only the escape matters while disconnected; other keystrokes have nowhere to go.
        loop {
            tokio::select! {
                () = &mut sleep => break,
                bytes = io.input.recv() => self.while_disconnected(bytes)?,
                _ = io.signals.term.recv() => return Err(End::Signal(15)),
                _ = io.signals.hup.recv() => return Err(End::Signal(1)),
                _ = io.signals.int.recv() => return Err(End::Signal(2)),
            }
        }
        let machine = self.machine.id.to_string();
        let identity = &session.identity;
        let attempt_connect = async {
            let client =
                ClientConnection::login(&session.relay, identity, &session.credential).await?;
            let channel = channel::open(
                &client,
                identity,
                known,
                workspace,
                &machine,
                StreamKind::Shell,
            )
            .await?;
            Ok::<_, Failure>((client, channel))
        };
        tokio::pin!(attempt_connect);
        loop {
            tokio::select! {
                result = &mut attempt_connect => {
                    return match result {
                        Ok(live) => Ok(Some(live)),
                        Err(failure) if failure.is_retryable() => Ok(None),
                        Err(failure) => Err(End::Refused(failure.message().to_owned())),
                    };
                }
                bytes = io.input.recv() => self.while_disconnected(bytes)?,
                _ = io.signals.term.recv() => return Err(End::Signal(15)),
                _ = io.signals.hup.recv() => return Err(End::Signal(1)),
                _ = io.signals.int.recv() => return Err(End::Signal(2)),
            }
        }
    }

    fn while_disconnected(&mut self, bytes: Option<Vec<u8>>) -> Result<(), End> {
        let Some(bytes) = bytes else {
            // No more input; keep trying to reconnect for the output.
            return Ok(());
        };
        for action in self.scanner.feed(&bytes) {
            match action {
                Action::Detach => return Err(End::Detached),
                Action::Help => {
                    let _ =
                        write_terminal(&mut std::io::stderr(), help_text(self.escape).as_bytes());
                }
                Action::Send(_) => {}
            }
        }
        Ok(())
    }

    fn save(&self) {
        if let (Some(file), Some(offset)) = (&self.resume, self.offset) {
            file.save(Resume {
                instance: self.instance,
                offset,
            });
        }
    }
}

/// The terminal's side of an attachment: keystrokes in, output out, and the signals it handles itself.
struct TerminalIo {
    input: Keys,
    stdout: TerminalWriter,
    signals: Signals,
}

/// A broken stream: worth reconnecting.
fn lost(err: SecureStreamError) -> End {
    End::Lost(err.to_string())
}

/// The signals an attached terminal handles itself.
struct Signals {
    winch: Signal,
    term: Signal,
    hup: Signal,
    /// In raw mode Ctrl-C is a byte, not SIGINT; this is `kill -INT` from elsewhere.
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|err| {
                Failure::new(
                    Kind::General,
                    format!("cannot install a signal handler: {err}"),
                )
            })
        };
        Ok(Self {
            winch: install(SignalKind::window_change())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
            int: install(SignalKind::interrupt())?,
        })
    }
}

fn write_terminal(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// A one-line notice on the terminal, in raw mode or not.
fn note(message: &str) {
    let _ = write_terminal(
        &mut std::io::stderr(),
        format!("\r\n[cmdop] {message}\r\n").as_bytes(),
    );
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(OWN_FAILURE))
}

/// `cmdop connect` with no machine on a terminal: a fuzzy picker over the fleet's machines, online first.
async fn pick_machine(session: &Session, workspace: Option<&str>) -> Result<String, Failure> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(Failure::new(
            Kind::General,
            "no machine given; name one (`cmdop connect MACHINE`), or list them with `cmdop connect --list`",
        ));
    }
    let mut client =
        ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
    let mut machines = client.list_machines(workspace).await?;
    client.close().await;
    if machines.is_empty() {
        return Err(Failure::new(
            Kind::NotFound,
            "this fleet has no machines yet; enrol one with `cmdop-agent run --workspace FLEET …`",
        ));
    }
    machines.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    let items: Vec<String> = machines
        .iter()
        .map(|m| {
            let status = if m.online { "online" } else { "offline" };
            format!("{:<24} {:<8} {}", m.name, status, m.hostname)
        })
        .collect();
    let chosen = tokio::task::spawn_blocking(move || {
        dialoguer::FuzzySelect::new()
            .with_prompt("machine (type to filter)")
            .items(&items)
            .default(0)
            .interact_opt()
    })
    .await
    .map_err(|err| Failure::new(Kind::General, format!("the picker failed: {err}")))?
    .map_err(|err| Failure::new(Kind::General, format!("the picker failed: {err}")))?;
    let index = chosen.ok_or_else(|| Failure::new(Kind::General, "no machine chosen"))?;
    machines
        .get(index)
        .map(|m| m.id.to_string())
        .ok_or_else(|| Failure::new(Kind::General, "no machine chosen"))
}

/// Runs `cmdop connect sessions MACHINE`.
pub(crate) fn list(global: &GlobalArgs, workspace: Option<&str>, args: &SessionsArgs) -> ExitCode {
    let result = one_request(global, workspace, &args.machine, ShellRequest::List).and_then(
        |(machine, reply)| match reply {
            ShellReply::Sessions(sessions) => {
                print_sessions(&machine, &sessions, args.json)?;
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected(&machine, other)),
        },
    );
    result.unwrap_or_else(Failure::report)
}

/// Runs `cmdop connect kill MACHINE SESSION`.
pub(crate) fn kill(global: &GlobalArgs, workspace: Option<&str>, args: &KillArgs) -> ExitCode {
    let request = ShellRequest::Kill {
        name: args.session.clone(),
    };
    let result =
        one_request(global, workspace, &args.machine, request).and_then(|(machine, reply)| {
            match reply {
                ShellReply::Killed => {
                    println!("ended session {} on {}", args.session, machine.hostname);
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(&machine, other)),
            }
        });
    result.unwrap_or_else(Failure::report)
}

fn unexpected(machine: &Machine, reply: ShellReply) -> Failure {
    match reply {
        ShellReply::Failed { message } => Failure::new(
            Kind::NotFound,
            format!("{}: {}", machine.hostname, escaped(&message)),
        ),
        other => Failure::new(
            Kind::General,
            format!("{}: unexpected reply {other:?}", machine.hostname),
        ),
    }
}

/// Opens a shell stream, sends one request and returns the one reply.
fn one_request(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: &str,
    request: ShellRequest,
) -> Result<(Machine, ShellReply), Failure> {
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let known = channel::known_machines(&profile, global);
    runtime()?.block_on(async {
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let Channel {
            machine,
            mut sender,
            mut receiver,
            ..
        } = channel::open(
            &client,
            &session.identity,
            &known,
            workspace,
            machine,
            StreamKind::Shell,
        )
        .await?;
        sender.send(&request).await?;
        let reply = receiver
            .recv::<ShellReply>()
            .await?
            .ok_or_else(|| Failure::connection_lost("the machine sent no answer"))?;
        let _ = sender.end(0).await;
        client.close().await;
        Ok((machine, reply))
    })
}

fn print_sessions(machine: &Machine, sessions: &[SessionInfo], json: bool) -> Result<(), Failure> {
    if json {
        let rows: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| {
                json!({
                    "name": escaped(&s.name),
                    "created": rfc3339(s.created),
                    "last_attached": rfc3339(s.last_attached),
                    "attached": s.attached,
                    "command": escaped(&s.command),
                    "buffered_bytes": s.buffered,
                    "exit_code": s.exited.map(ExitStatus::shell_code),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    if sessions.is_empty() {
        println!(
            "no sessions on {}; start one with `cmdop connect {}`",
            machine.hostname, machine.hostname
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                escaped(&s.name),
                rfc3339(s.created).unwrap_or_default(),
                rfc3339(s.last_attached).unwrap_or_default(),
                s.attached.to_string(),
                match s.exited {
                    Some(status) => format!("(exited {})", status.shell_code()),
                    None => escaped(&s.command),
                },
                s.buffered.to_string(),
            ]
        })
        .collect();
    print_columns(
        &[
            "NAME",
            "CREATED",
            "LAST ATTACHED",
            "CLIENTS",
            "COMMAND",
            "BUFFERED",
        ],
        &rows,
    );
    Ok(())
}
