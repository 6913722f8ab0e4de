//! Opening an end-to-end channel to a machine, as the CLI does it: cmdop-client routes the stream, checks the
//! machine's key (certified by its locked fleet, or against the pins) and runs the handshake; the CLI asks the
//! person about a first contact, as ssh does, and says which machine a relayed name reached.
//! Every operation (exec, shell, …) starts here.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cmdop_client::fleet_lock::NameMatch;
use cmdop_client::known_machines::{FirstContact, KnownMachines, NewMachine, PinStatus};
use cmdop_client::{Channel, ClientConnection, ClientError};
use cmdop_identity::Identity;
use cmdop_proto::e2e::StreamKind;

use crate::exit::Failure;
use crate::global_args::GlobalArgs;
use crate::profile::Profile;

/// The client's pin store with the first-contact policy of this run: `--accept-new` pins without asking; on a
/// terminal the person is asked; anywhere else a first contact is refused with the way to accept it.
pub(crate) fn known_machines(profile: &Profile, global: &GlobalArgs) -> KnownMachines {
    let policy = if global.accept_new {
        FirstContact::AcceptNew
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        FirstContact::Ask(Arc::new(ask))
    } else {
        FirstContact::Refuse
    };
    KnownMachines::in_dir(profile.dir()).with_first_contact(policy)
}

/// Asks on the terminal whether to trust a machine met for the first time; only `yes` does.
fn ask(new: &NewMachine) -> bool {
    let mut stderr = std::io::stderr();
    let _ = write!(
        stderr,
        "cmdop: {new}
Are you sure you want to continue connecting (yes/no)? "
    );
    let _ = stderr.flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    answer.trim().eq_ignore_ascii_case("yes")
}

/// Opens a `kind` channel to `machine` (any name the resolver accepts) over `client`, checking the machine's
/// key against `known` (and pinning it on an accepted first contact).
pub(crate) async fn open(
    client: &ClientConnection,
    identity: &Identity,
    known: &KnownMachines,
    workspace: Option<&str>,
    machine: &str,
    kind: StreamKind,
) -> Result<Channel, Failure> {
    Ok(open_typed(client, identity, known, workspace, machine, kind).await?)
}

/// [`open`], with the library's error, for callers that tell its cases apart (an offline machine among many).
pub(crate) async fn open_typed(
    client: &ClientConnection,
    identity: &Identity,
    known: &KnownMachines,
    workspace: Option<&str>,
    machine: &str,
    kind: StreamKind,
) -> Result<Channel, ClientError> {
    let channel = client
        .open_channel(identity, known, workspace, machine, kind)
        .await?;
    announce_first_contact(&channel, known);
    Ok(channel)
}

/// Set by `cmdop rsh -q`: no notices, as `ssh -q` prints none.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Stops the notices of a first contact (a key pinned) and of a certified name for the rest of this process.
pub(crate) fn be_quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Tells the person, as ssh does, that a machine's key has just been pinned; and, in a locked fleet, which
/// certified machine a prefix reached.
pub(crate) fn announce_first_contact(channel: &Channel, known: &KnownMachines) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let machine = &channel.machine;
    if let (PinStatus::Added, Some(key)) = (channel.pin, machine.public_key) {
        eprintln!(
            "cmdop: first contact with {} ({}): pinned its key {} in {}",
            machine.hostname,
            machine.id,
            key.fingerprint().with_short(),
            known.path().display()
        );
    }
    if let Some((hostname, NameMatch::Relayed)) = &channel.certified {
        eprintln!(
            "cmdop: reached {hostname} ({}), certified by its fleet",
            machine.id
        );
    }
}
