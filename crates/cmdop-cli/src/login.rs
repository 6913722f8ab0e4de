//! `cmdop login`, `cmdop logout` and `cmdop status`.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use cmdop_client::ClientConnection;
use cmdop_identity::Fingerprint;
use serde_json::json;
use zeroize::Zeroizing;

use crate::exit::Outcome;
use crate::exit::{Failure, Kind};
use crate::fleet_lock;
use crate::global_args::GlobalArgs;
use crate::profile::Profile;

/// Flags of `cmdop login`.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// A file holding the user token (or an API key); else CMDOP_TOKEN, else a hidden prompt.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The fleet key (`SHA256:…`) of a locked fleet this credential reaches, as your fleet admin gave it out
    /// of band; pins it so the fleet's machines are accepted only with certificates from it. Repeat for
    /// several fleets. Without it, a locked fleet's key is confirmed on a terminal.
    #[arg(long = "fleet-key", value_name = "FP")]
    fleet_keys: Vec<String>,
    /// Pin the relay's new certificate fingerprint (--relay-fingerprint, after a rotation) and keep the saved
    /// credential: no token needed. Without --relay-fingerprint, says what the relay presents now.
    #[arg(long, conflicts_with = "token_file")]
    repin: bool,
}

/// Flags of `cmdop status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Checks the credential against the relay, then saves both.
pub(crate) fn login(global: &GlobalArgs, args: LoginArgs) -> Outcome {
    if args.repin {
        return repin(global);
    }
    if global.relay.is_none() || global.relay_fingerprint.is_none() {
        return Err(crate::exit::usage(
            "cmdop login needs --relay HOST:PORT and --relay-fingerprint FP (run `cmdop-relay fingerprint` on the relay)",
        ));
    }
    let token = read_token(&args)?;
    let wanted = args
        .fleet_keys
        .iter()
        .map(|text| {
            text.trim().parse::<Fingerprint>().map_err(|err| {
                Failure::new(
                    Kind::General,
                    format!(
                        "--fleet-key {text:?} is not a fleet key fingerprint (SHA256:…): {err}"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let profile = Profile::open(global)?;
    let relay = profile.relay_target(global, None)?;
    let (identity, _) = profile.identity()?;
    let runtime = runtime()?;
    let mut client = runtime.block_on(ClientConnection::login(&relay, &identity, &token))?;
    let path = profile.save_login(&identity, &relay, &token)?;
    println!("logged in to {} as {}", relay.address, client.principal());
    println!("fleets: {}", client.fleets().join(", "));
    println!("saved to {}", path.display());
    println!("this client's key: {}", identity.public_key().fingerprint());
    let pinned = runtime.block_on(pin_locked_fleets(&profile, &mut client, &wanted));
    // Say goodbye rather than vanish, so the relay does not count this client until its idle timeout.
    runtime.block_on(client.close());
    pinned?;
    Ok(ExitCode::SUCCESS)
}

/// Pins the fleet key of each locked fleet in scope: given with `--fleet-key`, or confirmed on a terminal;
/// elsewhere says how to pin it. A `--fleet-key` no fleet has is an error.
async fn pin_locked_fleets(
    profile: &Profile,
    client: &mut ClientConnection,
    wanted: &[Fingerprint],
) -> Result<(), Failure> {
    let relay = client.relay().fingerprint;
    let mut used = Vec::new();
    for name in client.fleets().to_vec() {
        let lock = client.fleet_lock(Some(&name)).await?;
        let Some((claimed, locked)) = fleet_lock::claimed(&lock) else {
            continue;
        };
        let key = cmdop_fleet::lock::VerifiedAuthority::claimed_fleet_key(&lock.authority)
            .map_err(|err| anyhow::anyhow!("fleet {name}'s lock is unusable: {err}"))?;
        let state = if locked { "locked" } else { "lock disabled" };
        let known = cmdop_client::known_machines::KnownMachines::in_dir(profile.dir());
        let fleet = cmdop_fleet::FleetId::from_bytes(lock.fleet_id.0);
        if let Some(pin) = known.fleet_pin(&relay, fleet)? {
            if pin.fleet_key == key {
                used.push(claimed);
                println!("fleet {name} ({state}): fleet key {claimed} is pinned");
                continue;
            }
            eprintln!(
                "cmdop: fleet {name} shows fleet key {claimed}, but {} is pinned here; the relay may be substituting the lock (nothing changed)",
                pin.fleet_key.fingerprint()
            );
            continue;
        }
        if wanted.contains(&claimed) {
            fleet_lock::pin_fleet(profile, relay, &lock, key)?;
            used.push(claimed);
            println!("fleet {name} ({state}): pinned fleet key {claimed}");
        } else if confirm(&format!(
            "fleet {name} is {state} with fleet key {claimed}; compare it with your fleet admin. Pin it (yes/no)? "
        )) {
            fleet_lock::pin_fleet(profile, relay, &lock, key)?;
            println!("fleet {name} ({state}): pinned fleet key {claimed}");
        } else {
            eprintln!(
                "cmdop: fleet {name} is {state} with fleet key {claimed}, not pinned; check it with your fleet admin, then `cmdop fleet lock trust {claimed} --workspace {name}`"
            );
        }
    }
    if let Some(unused) = wanted.iter().find(|fp| !used.contains(fp)) {
        return Err(Failure::new(
            Kind::General,
            format!(
                "no locked fleet of this credential has fleet key {unused}; check it with your fleet admin (the relay may be substituting the lock)"
            ),
        ));
    }
    Ok(())
}

/// Asks on a terminal; `false` anywhere else.
fn confirm(question: &str) -> bool {
    use std::io::{BufRead as _, Write as _};
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return false;
    }
    eprint!("cmdop: {question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok()
        && answer.trim().eq_ignore_ascii_case("yes")
}

/// `cmdop login --repin`: after the relay's certificate was rotated, pins the new fingerprint and keeps the
/// saved credential (sealed again under the new pin), so the token shown once at its creation is not needed.
/// The new fingerprint must be given: it is never taken from the relay on its own word.
fn repin(global: &GlobalArgs) -> Outcome {
    let profile = Profile::open(global)?;
    let saved = profile.saved_login()?.ok_or_else(|| {
        Failure::new(
            Kind::General,
            "nothing to re-pin: not logged in; run `cmdop login --relay HOST:PORT --relay-fingerprint FP` with a token",
        )
    })?;
    let (identity, _) = profile.identity()?;
    let credential = profile.unseal(&identity, &saved)?;
    let old = profile.relay_target(&GlobalArgs::default(), Some(&saved))?;
    let runtime = runtime()?;
    let Some(_) = &global.relay_fingerprint else {
        // Say what the relay presents now, for the person to compare with `cmdop-relay fingerprint` on it.
        return match runtime.block_on(ClientConnection::login(&old, &identity, &credential)) {
            Ok(client) => {
                runtime.block_on(client.close());
                println!(
                    "the relay at {} still presents the pinned certificate {}; nothing to re-pin",
                    old.address, old.fingerprint
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(cmdop_client::ClientError::FingerprintMismatch { expected, got }) => {
                Err(Failure::new(
                    Kind::Fingerprint,
                    format!(
                        "the relay at {} now presents {got} (pinned: {expected}); if `cmdop-relay fingerprint` on the relay shows the same, run `cmdop login --repin --relay-fingerprint {got}`",
                        old.address
                    ),
                ))
            }
            Err(err) => Err(err.into()),
        };
    };
    let new = profile.relay_target(global, Some(&saved))?;
    let client = runtime.block_on(ClientConnection::login(&new, &identity, &credential))?;
    let path = profile.save_login(&identity, &new, &credential)?;
    // The machines and fleet keys pinned under the old certificate stay known under the new one.
    let carried = cmdop_client::known_machines::KnownMachines::in_dir(profile.dir())
        .carry_over(&old.fingerprint, &new.fingerprint)?;
    println!(
        "re-pinned {}: {} (was {} at {}); {carried} machine and fleet pins carried over",
        new.address, new.fingerprint, old.fingerprint, old.address
    );
    println!(
        "logged in as {}; saved to {}",
        client.principal(),
        path.display()
    );
    runtime.block_on(client.close());
    Ok(ExitCode::SUCCESS)
}

/// Forgets the saved login.
pub(crate) fn logout(global: &GlobalArgs) -> Outcome {
    let profile = Profile::open(global)?;
    if profile.forget_login()? {
        println!("logged out: removed {}", profile.login_path().display());
        println!("the credential itself is still valid on the relay; revoke it there if it leaked");
    } else {
        println!("not logged in");
    }
    Ok(ExitCode::SUCCESS)
}

/// Says who you are, which relay, and which fleets.
pub(crate) fn status(global: &GlobalArgs, args: StatusArgs) -> Outcome {
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let (_, info) = profile.identity()?;
    let runtime = runtime()?;
    let client = runtime.block_on(ClientConnection::login(
        &session.relay,
        &session.identity,
        &session.credential,
    ))?;
    let fingerprint = session.identity.public_key().fingerprint();
    if args.json {
        let value = json!({
            "relay": session.relay.address,
            "relay_fingerprint": session.relay.fingerprint.to_string(),
            "principal": client.principal(),
            "fleets": client.fleets(),
            "client_fingerprint": fingerprint.to_string(),
            "client_key_storage": info.kek_location.to_string(),
        });
        println!("{value:#}");
    } else {
        println!(
            "relay:    {} ({})",
            session.relay.address, session.relay.fingerprint
        );
        println!("you:      {}", client.principal());
        println!("fleets:   {}", client.fleets().join(", "));
        println!(
            "this client: key {} ({})",
            fingerprint.with_short(),
            info.kek_location
        );
    }
    runtime.block_on(client.close());
    Ok(ExitCode::SUCCESS)
}

fn read_token(args: &LoginArgs) -> Result<Zeroizing<String>, Failure> {
    let token = if let Some(path) = &args.token_file {
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_string(&mut text))
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        text
    } else if let Ok(token) = std::env::var("CMDOP_TOKEN") {
        Zeroizing::new(token)
    } else if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password("token: ")
                .context("cannot read the token from the terminal")?,
        )
    } else {
        return Err(Failure::new(
            Kind::General,
            "no token given; pass --token-file FILE, set CMDOP_TOKEN, or run on a terminal to be prompted",
        ));
    };
    let token = Zeroizing::new(token.trim().to_owned());
    if token.is_empty() {
        return Err(Failure::new(
            Kind::General,
            "the token is empty; check --token-file or CMDOP_TOKEN",
        ));
    }
    Ok(token)
}

/// A single-threaded runtime: one command, one connection.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
