//! Dispatch of every `cmdop-relay` verb, and the admin verbs themselves: fleets, keys, users, tokens,
//! machines and the audit log, each a call into the store with its output printed.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cmdop_fleet::{CredentialRecord, Role, Timestamp};
use cmdop_relay::admin;
use cmdop_relay::store::Store;
use cmdop_relay::tls::{leaf_fingerprint_from_pem, stored_fingerprint};

use crate::cli::{
    Command, ConfigCommand, DataDir, FleetCommand, KeyCommand, MachineCommand, MachinesCommand,
    RoleArg, TokenCommand, UserCommand,
};
use crate::relay_settings::{Loaded, ServeFlags};
use crate::{serve_command, status_command};

/// The wall clock, as the store takes it.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_unix_seconds(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

fn expiry(expires: Option<&str>) -> Result<Option<Timestamp>> {
    expires
        .map(|text| Ok(now().saturating_add_seconds(admin::parse_duration(text)?.as_secs())))
        .transpose()
}

/// Runs one verb.
pub(crate) fn run(command: Command, loaded: &Loaded) -> Result<()> {
    // Every admin verb takes --data-dir, which the config file may supply instead.
    let open =
        |data: DataDir| -> Result<Store> { Ok(Store::open(&loaded.data_dir(data.data_dir)?)?) };
    match command {
        Command::Serve(args) => serve_command::serve(loaded.serve(ServeFlags::from(args))?),
        Command::Config(ConfigCommand::Check(args)) => {
            serve_command::config_check(loaded, ServeFlags::from(args))
        }
        Command::Status { data, json } => status_command::run(
            &loaded.data_dir(data.data_dir)?,
            json,
            now().as_unix_seconds(),
        ),
        Command::Fingerprint { data, cert } => {
            let fingerprint = match cert.or_else(|| loaded.file.cert.clone()) {
                Some(cert) => {
                    let pem = std::fs::read(&cert)
                        .with_context(|| format!("cannot read {}", cert.display()))?;
                    leaf_fingerprint_from_pem(&pem)
                        .with_context(|| format!("{} holds no PEM certificate", cert.display()))?
                }
                None => stored_fingerprint(&loaded.data_dir(data.data_dir)?)
                    .context("no generated certificate yet; run `cmdop-relay serve` once")?,
            };
            println!("{fingerprint}");
            Ok(())
        }
        Command::Fleet(verb) => fleet(verb, open),
        Command::Key(verb) => key(verb, open),
        Command::User(UserCommand::Create { data, name }) => {
            open(data)?.create_user(&name, now())?;
            println!("created user {name}");
            Ok(())
        }
        Command::Token(verb) => token(verb, open),
        Command::Machines(MachinesCommand::List { data, fleet, json }) => {
            let machines = open(data)?.machines(fleet.as_deref())?;
            if json {
                let array: Vec<_> = machines
                    .iter()
                    .map(|(fleet, machine)| admin::machine_json(fleet, machine))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&array)?);
            } else {
                print!("{}", admin::machines_table(&machines));
            }
            Ok(())
        }
        Command::Machine(MachineCommand::Rename { data, id, name }) => {
            let machine = open(data)?.rename_machine(&id, &name, now())?;
            println!(
                "machine {} is now named {:?}",
                machine.id,
                machine.display_name()
            );
            Ok(())
        }
        Command::Completions { .. } | Command::Man { .. } => {
            anyhow::bail!("completions and man pages are generated before the config is read")
        }
        Command::Audit { data, fleet, json } => {
            let records = open(data)?.audit(fleet.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", admin::audit_table(&records));
            }
            Ok(())
        }
    }
}

fn fleet(verb: FleetCommand, open: impl Fn(DataDir) -> Result<Store>) -> Result<()> {
    match verb {
        FleetCommand::Create { data, name } => {
            let record = open(data)?.create_fleet(&name, now())?;
            println!("created fleet {} ({})", record.fleet.name, record.fleet.id);
        }
        FleetCommand::List { data } => print!("{}", admin::fleets_table(&open(data)?.fleets()?)),
    }
    Ok(())
}

fn key(verb: KeyCommand, open: impl Fn(DataDir) -> Result<Store>) -> Result<()> {
    match verb {
        KeyCommand::Create {
            data,
            fleet,
            role,
            expires,
            label,
        } => {
            let role = match role {
                RoleArg::Agent => Role::Agent,
                RoleArg::Member => Role::Member,
                RoleArg::Admin => Role::Admin,
            };
            let (record, secret) = open(data)?.create_api_key(
                &fleet,
                role,
                label.as_deref(),
                expiry(expires.as_deref())?,
                now(),
            )?;
            eprintln!(
                "created {} key {} for fleet {fleet}; the secret below is shown only once:",
                role.as_str(),
                record.id
            );
            println!("{}", secret.expose_text().as_str());
        }
        KeyCommand::List { data, fleet } => {
            let store = open(data)?;
            let names = admin::Names::new(&store.fleets()?, &store.users()?);
            let credentials = store.credentials(fleet.as_deref())?;
            print!("{}", admin::credentials_table(&credentials, &names, now()));
        }
        KeyCommand::Revoke { data, id } => revoke(&open(data)?, &id)?,
    }
    Ok(())
}

fn token(verb: TokenCommand, open: impl Fn(DataDir) -> Result<Store>) -> Result<()> {
    match verb {
        TokenCommand::Create {
            data,
            user,
            fleets,
            expires,
        } => {
            let (record, secret) = open(data)?.create_user_token(
                &user,
                &fleets,
                expiry(expires.as_deref())?,
                now(),
            )?;
            eprintln!(
                "created token {} for {user} ({}); the secret below is shown only once:",
                record.id,
                fleets.join(", ")
            );
            println!("{}", secret.expose_text().as_str());
        }
        TokenCommand::Revoke { data, id } => revoke(&open(data)?, &id)?,
    }
    Ok(())
}

fn revoke(store: &Store, id: &str) -> Result<()> {
    let record: CredentialRecord = store.revoke(id, now())?;
    println!(
        "revoked {}; live connections using it close within a second",
        record.id()
    );
    Ok(())
}
