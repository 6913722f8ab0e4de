//! `cmdop-agent identity init|show`: create the agent identity, or show what it is and where it is kept.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use cmdop_identity::Identity;
use cmdop_keystore::{Created, KekLocation, SeedStore, StoreInfo};
use serde_json::json;

/// What to do with the agent identity.
#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Create this machine's identity if it has none, and say whether it was created or found.
    #[command(after_help = "Example:\n  cmdop-agent identity init --json")]
    Init {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key, fingerprints, seed file and where the key-encryption key is kept.
    /// Never creates anything.
    #[command(after_help = "Example:\n  cmdop-agent identity show")]
    Show {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `identity` subcommand against `store`.
pub(crate) fn run(command: IdentityCommand, store: &SeedStore) -> anyhow::Result<()> {
    match command {
        IdentityCommand::Init { json } => {
            let (identity, info, created) = store
                .load_or_create_with_os_rng()
                .context("cannot initialise the agent identity")?;
            let created = created == Created::New;
            if json {
                let mut value = describe(&identity, &info);
                value["created"] = json!(created);
                println!("{value:#}");
            } else {
                println!(
                    "{}",
                    if created {
                        "created a new identity"
                    } else {
                        "found an existing identity"
                    }
                );
                print_text(&identity, &info);
            }
        }
        IdentityCommand::Show { json } => {
            let Some((identity, info)) = store.load().context("cannot load the agent identity")?
            else {
                bail!(
                    "no identity in {} yet; run `cmdop-agent identity init` (with the same --config-dir) to create one",
                    store.dir().display()
                );
            };
            if json {
                println!("{:#}", describe(&identity, &info));
            } else {
                print_text(&identity, &info);
            }
        }
    }
    Ok(())
}

fn print_text(identity: &Identity, info: &StoreInfo) {
    let key = identity.public_key();
    let fingerprint = key.fingerprint();
    println!("public key:   {key}");
    println!("fingerprint:  {fingerprint}");
    println!("short:        {}", fingerprint.short());
    println!("seed file:    {}", info.seed_path.display());
    println!("kek kept in:  {}", info.kek_location);
}

/// The `--json` form; its fields are documented in docs/identity.md.
fn describe(identity: &Identity, info: &StoreInfo) -> serde_json::Value {
    let key = identity.public_key();
    let fingerprint = key.fingerprint();
    let kek_location = match &info.kek_location {
        KekLocation::KeyFile { path } => json!({ "kind": "key_file", "path": path }),
        KekLocation::Keyring { service, user } => {
            json!({ "kind": "keyring", "service": service, "entry": user })
        }
        other => json!({ "kind": "other", "description": other.to_string() }),
    };
    json!({
        "public_key": key.to_string(),
        "fingerprint": fingerprint.to_string(),
        "fingerprint_short": fingerprint.short(),
        "seed_path": info.seed_path,
        "kek_location": kek_location,
    })
}
