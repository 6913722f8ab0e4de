//! `cmdop fleet lock …`: a locked fleet's admin verbs, run on an admin's own machine. The fleet's admin key
//! lives here, encrypted at rest like this client's identity; the relay only ever receives public keys and
//! signed documents (`docs/fleet.md`, "The fleet lock").
//!
//! ```text
//!  init ─ sign state 1 (or offer this key as an admin)      add-admin FP ─ sign the next state with one more
//!  disable ─ sign the next state, unlocked                  sign MACHINE ─ machine certificate after the FP check
//!  enrol-key ─ enrolment authorization + secret              add-member FP ─ member certificate
//!  revoke FP ─ the next revocation list                      status ─ what the lock holds      trust FP ─ pin it
//! ```

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use cmdop_client::ClientConnection;
use cmdop_client::fleet_lock::{claimed_lock, verify_lock};
use cmdop_fleet::lock::{
    AuthorityState, EnrolmentAuthorization, EnrolmentSecret, MachineCertificateBody,
    MemberCertificate, MemberRole, RevocationList, SignedRevocationList, VerifiedAuthority,
};
use cmdop_fleet::{FleetId, Hostname, MachineId, Timestamp};
use cmdop_identity::{Fingerprint, Identity, PublicKey};
use cmdop_keystore::{KekBackend, SeedStore};
use cmdop_proto::pins::FleetPin;
use cmdop_proto::wire::{FleetLockState, LockItem, Submission};
use rand::rngs::OsRng;

use crate::exit::{Failure, Kind, Outcome};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::{Profile, Session};

/// `cmdop fleet …`.
#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// A locked fleet: authority over machines and members held by admin keys, not by the relay.
    #[command(subcommand)]
    Lock(LockCommand),
}

/// `cmdop fleet lock …`.
#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Lock the fleet with a new fleet key kept on this machine (or re-lock a disabled fleet, or offer this
    /// machine's key as an admin key of an already locked fleet); prints the fleet key's fingerprint.
    #[command(after_help = "Example:\n  cmdop fleet lock init --workspace prod")]
    Init(Workspace),
    /// Trust one more admin key (offered with `lock init` on the other admin's machine), so losing one
    /// laptop does not lock the fleet out.
    #[command(after_help = "Example:\n  cmdop fleet lock add-admin SHA256:… --workspace prod")]
    AddAdmin(KeyArg),
    /// Disable the lock (signed by an admin key): the relay is the fleet's authority again.
    #[command(after_help = "Example:\n  cmdop fleet lock disable --workspace prod")]
    Disable(Workspace),
    /// Show the fleet's keys, machines, members and enrolment keys.
    #[command(after_help = "Example:\n  cmdop fleet lock status --workspace prod --json")]
    Status(StatusArgs),
    /// Certify a machine after comparing its key with `cmdop-agent identity show` on it.
    #[command(
        after_help = "Examples:\n  cmdop fleet lock sign web-1\n  cmdop fleet lock sign web-1 --fingerprint SHA256:…   (no prompt)"
    )]
    Sign(SignArgs),
    /// Create an enrolment key: agents started with it (`--enrol-key-file`) certify themselves.
    #[command(
        after_help = "Example:\n  cmdop fleet lock enrol-key --ttl 1h --uses 3 --out enrol.key"
    )]
    EnrolKey(EnrolKeyArgs),
    /// Certify a client key (the fingerprint `cmdop status` prints on the member's machine) as a member.
    #[command(
        after_help = "Example:\n  cmdop fleet lock add-member SHA256:… --role viewer --ttl 30d"
    )]
    AddMember(AddMemberArgs),
    /// Revoke a machine's, a member's or an enrolment key (by fingerprint) for the whole fleet.
    #[command(after_help = "Example:\n  cmdop fleet lock revoke SHA256:…")]
    Revoke(KeyArg),
    /// Pin the fleet key (given out of band by your admin) so this client accepts the fleet's machines.
    #[command(after_help = "Example:\n  cmdop fleet lock trust SHA256:… --workspace prod")]
    Trust(KeyArg),
}

/// `--workspace`.
#[derive(Debug, Args)]
pub(crate) struct Workspace {
    /// The fleet; may be left out when the credential covers exactly one.
    #[arg(long, value_name = "NAME")]
    workspace: Option<String>,
}

/// A key named by its fingerprint.
#[derive(Debug, Args)]
pub(crate) struct KeyArg {
    /// The key's fingerprint, `SHA256:…`.
    #[arg(value_name = "FP")]
    fingerprint: String,
    #[command(flatten)]
    workspace: Workspace,
}

/// Flags of `lock status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    workspace: Workspace,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Flags of `lock sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The machine: its id, hostname or display name.
    machine: String,
    /// The machine key's fingerprint as `cmdop-agent identity show` prints it on the machine; signs without
    /// asking if it matches, refuses if not.
    #[arg(long, value_name = "FP")]
    fingerprint: Option<String>,
    /// How long the certificate is valid (e.g. 365d).
    #[arg(long, default_value = "365d", value_name = "DUR")]
    lifetime: String,
    #[command(flatten)]
    workspace: Workspace,
}

/// Flags of `lock enrol-key`.
#[derive(Debug, Args)]
pub(crate) struct EnrolKeyArgs {
    /// How long agents may enrol with it (e.g. 1h, 7d).
    #[arg(long, default_value = "1h", value_name = "DUR")]
    ttl: String,
    /// How many machines it is meant for (the relay counts; see docs/security.md).
    #[arg(long, default_value_t = 1, value_name = "N")]
    uses: u32,
    /// How long the certificates it makes are valid (e.g. 365d).
    #[arg(long, default_value = "365d", value_name = "DUR")]
    lifetime: String,
    /// Write the enrolment key to this file (0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    workspace: Workspace,
}

/// Flags of `lock add-member`.
#[derive(Debug, Args)]
pub(crate) struct AddMemberArgs {
    /// The member's client key fingerprint, as `cmdop status` prints it on the member's machine.
    #[arg(value_name = "CLIENT_FP")]
    fingerprint: String,
    /// admin, member, or viewer (list sessions and attach read-only only).
    #[arg(long, value_name = "ROLE")]
    role: String,
    /// How long the membership is valid (e.g. 30d).
    #[arg(long, default_value = "30d", value_name = "DUR")]
    ttl: String,
    #[command(flatten)]
    workspace: Workspace,
}

/// Runs `cmdop fleet …`.
pub(crate) fn run(global: &GlobalArgs, command: FleetCommand) -> Outcome {
    let FleetCommand::Lock(command) = command;
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut admin = Admin::connect(&profile, &session).await?;
        let result = admin.run(command).await;
        admin.client.close().await;
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A logged-in admin session on one fleet's lock.
pub(crate) struct Admin<'a> {
    profile: &'a Profile,
    session: &'a Session,
    pub(crate) client: ClientConnection,
}

impl<'a> Admin<'a> {
    async fn connect(profile: &'a Profile, session: &'a Session) -> Result<Self, Failure> {
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        Ok(Self {
            profile,
            session,
            client,
        })
    }

    /// This client's directory (its pins live there).
    pub(crate) fn profile_dir(&self) -> &std::path::Path {
        self.profile.dir()
    }

    /// The relay's pinned fingerprint.
    pub(crate) fn relay_fingerprint(&self) -> cmdop_proto::RelayFingerprint {
        self.session.relay.fingerprint
    }

    async fn run(&mut self, command: LockCommand) -> Result<(), Failure> {
        match command {
            LockCommand::Init(ws) => self.init(ws.workspace.as_deref()).await,
            LockCommand::AddAdmin(key) => self.add_admin(&key).await,
            LockCommand::Disable(ws) => self.disable(ws.workspace.as_deref()).await,
            LockCommand::Status(args) => {
                crate::fleet_lock_status::show(self, args.workspace.workspace.as_deref(), args.json)
                    .await
            }
            LockCommand::Sign(args) => self.sign(&args).await,
            LockCommand::EnrolKey(args) => self.enrol_key(&args).await,
            LockCommand::AddMember(args) => self.add_member(&args).await,
            LockCommand::Revoke(key) => self.revoke(&key).await,
            LockCommand::Trust(key) => self.trust(&key).await,
        }
    }

    /// The fleet's lock, the fleet id, and this machine's admin key store for it.
    pub(crate) async fn lock(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<(FleetLockState, FleetId), Failure> {
        let lock = self.client.fleet_lock(workspace).await?;
        let fleet = FleetId::from_bytes(lock.fleet_id.0);
        Ok((lock, fleet))
    }

    pub(crate) async fn items(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<(FleetLockState, Vec<LockItem>), Failure> {
        Ok(self.client.fleet_lock_items(workspace).await?)
    }

    pub(crate) fn key_store(&self, fleet: FleetId) -> SeedStore {
        SeedStore::new(
            self.profile
                .dir()
                .join("fleet-keys")
                .join(fleet.to_string()),
            KekBackend::Auto,
        )
    }

    /// This machine's admin key of `fleet`, if it has one.
    pub(crate) fn admin_key(&self, fleet: FleetId) -> Result<Option<Identity>, Failure> {
        Ok(self
            .key_store(fleet)
            .load()
            .context("cannot load this machine's fleet admin key")?
            .map(|(identity, _)| identity))
    }

    /// The verified authority (from the pinned fleet key, else the key that signed state 1) and this
    /// machine's admin key, which must be a current admin.
    async fn as_admin(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<(VerifiedAuthority, FleetLockState, Identity), Failure> {
        let (lock, fleet) = self.lock(workspace).await?;
        let known = cmdop_client::known_machines::KnownMachines::in_dir(self.profile.dir());
        if known
            .fleet_pin(&self.session.relay.fingerprint, fleet)?
            .is_none()
        {
            let claimed = VerifiedAuthority::claimed_fleet_key(&lock.authority).map_err(|_| {
                anyhow!("this fleet is not locked; run `cmdop fleet lock init` first")
            })?;
            return Err(anyhow!(
                "this client has not pinned the fleet key; check it with the other admins, then `cmdop fleet lock trust {}`",
                claimed.fingerprint()
            )
            .into());
        }
        let authority = self.verified(&lock, fleet)?.0;
        let key = self.admin_key(fleet)?.ok_or_else(|| {
            anyhow!("this machine holds no admin key of this fleet; run the command on an admin's machine")
        })?;
        if !authority.is_admin(&key.public_key()) {
            return Err(anyhow!(
                "this machine's key {} is not an admin key of the fleet; an admin adds it with `cmdop fleet lock add-admin`",
                key.public_key().fingerprint()
            )
            .into());
        }
        Ok((authority, lock, key))
    }

    /// The lock verified from the pinned fleet key (or, on an admin's first use, from the claimed one).
    pub(crate) fn verified(
        &self,
        lock: &FleetLockState,
        fleet: FleetId,
    ) -> Result<(VerifiedAuthority, Option<FleetPin>), Failure> {
        let known = cmdop_client::known_machines::KnownMachines::in_dir(self.profile.dir());
        let pin = known.fleet_pin(&self.session.relay.fingerprint, fleet)?;
        let pinned = pin.is_some();
        let fleet_key = match &pin {
            Some(pin) => pin.fleet_key,
            None => VerifiedAuthority::claimed_fleet_key(&lock.authority).map_err(|_| {
                anyhow!("this fleet is not locked; run `cmdop fleet lock init` first")
            })?,
        };
        let pin = pin.unwrap_or(FleetPin {
            relay: self.session.relay.fingerprint,
            fleet,
            fleet_key,
            authority_serial: 0,
            revocation_serial: 0,
        });
        let (authority, _, newer) =
            verify_lock(&pin, lock).map_err(|err| anyhow!("the fleet's lock is refused: {err}"))?;
        // An admin's tools never go back either: what they sign extends the newest lock they have seen.
        if let (true, Some(newer)) = (pinned, &newer) {
            known.save_fleet_pin(newer)?;
        }
        Ok((authority, newer))
    }

    /// Pins the fleet key and the newest serials for this relay and fleet.
    pub(crate) fn pin(&self, lock: &FleetLockState, fleet_key: PublicKey) -> Result<(), Failure> {
        pin_fleet(
            self.profile,
            self.session.relay.fingerprint,
            lock,
            fleet_key,
        )
    }

    async fn submit(&mut self, workspace: Option<&str>, what: Submission) -> Result<(), Failure> {
        let detail = self.client.submit_lock(workspace, what).await?;
        println!("relay stored: {detail}");
        Ok(())
    }

    async fn init(&mut self, workspace: Option<&str>) -> Result<(), Failure> {
        let (lock, fleet) = self.lock(workspace).await?;
        let (key, _, _) = self
            .key_store(fleet)
            .load_or_create_with_os_rng()
            .context("cannot create this machine's fleet admin key")?;
        let me = key.public_key();
        if lock.authority.is_empty() {
            let state = AuthorityState {
                fleet,
                serial: 1,
                locked: true,
                admins: vec![me],
                issued_at: now(),
                signer: me,
            };
            let signed = state.sign(&key).to_bytes();
            self.submit(workspace, Submission::Authority(signed))
                .await?;
            let (lock, _) = self.lock(workspace).await?;
            self.pin(&lock, me)?;
            println!("fleet key: {}", me.fingerprint());
            println!(
                "the fleet is locked. Give this fingerprint to members (`cmdop login --fleet-key {}`) and agents (`cmdop-agent run --fleet-key {}`) out of band; certify machines with `cmdop fleet lock sign` or `enrol-key`.",
                me.fingerprint(),
                me.fingerprint()
            );
            return Ok(());
        }
        let (authority, _) = self.verified(&lock, fleet)?;
        if !authority.is_admin(&me) {
            self.submit(
                workspace,
                Submission::AdminCandidate(cmdop_proto::wire::KeyBytes(me.to_bytes())),
            )
            .await?;
            println!("fleet key: {}", authority.fleet_key().fingerprint());
            println!(
                "this fleet is already locked; this machine's key {} was offered as an admin key. An admin runs `cmdop fleet lock add-admin {}`.",
                me.fingerprint(),
                me.fingerprint()
            );
            return Ok(());
        }
        if authority.is_locked() {
            println!("fleet key: {}", authority.fleet_key().fingerprint());
            println!("the fleet is already locked and this machine's key is one of its admin keys");
            return Ok(());
        }
        let state = authority.next_state(authority.latest().admins.clone(), true, me, now());
        self.submit(
            workspace,
            Submission::Authority(state.sign(&key).to_bytes()),
        )
        .await?;
        println!("fleet key: {}", authority.fleet_key().fingerprint());
        println!("the fleet is locked again");
        Ok(())
    }

    async fn add_admin(&mut self, arg: &KeyArg) -> Result<(), Failure> {
        let workspace = arg.workspace.workspace.as_deref();
        let wanted = fingerprint(&arg.fingerprint)?;
        let (authority, _, key) = self.as_admin(workspace).await?;
        let (_, items) = self.items(workspace).await?;
        let candidate = items
            .iter()
            .find_map(|item| match item {
                LockItem::AdminCandidate(bytes) => PublicKey::from_bytes(&bytes.0)
                    .ok()
                    .filter(|k| k.fingerprint() == wanted),
                _ => None,
            })
            .ok_or_else(|| {
                anyhow!("no key {wanted} was offered; on the new admin's machine run `cmdop fleet lock init` first")
            })?;
        let mut admins = authority.latest().admins.clone();
        admins.push(candidate);
        let state = authority.next_state(admins, authority.is_locked(), key.public_key(), now());
        self.submit(
            workspace,
            Submission::Authority(state.sign(&key).to_bytes()),
        )
        .await
    }

    async fn disable(&mut self, workspace: Option<&str>) -> Result<(), Failure> {
        let (authority, _, key) = self.as_admin(workspace).await?;
        if !authority.is_locked() {
            println!("the lock is already disabled");
            return Ok(());
        }
        let state = authority.next_state(
            authority.latest().admins.clone(),
            false,
            key.public_key(),
            now(),
        );
        self.submit(
            workspace,
            Submission::Authority(state.sign(&key).to_bytes()),
        )
        .await?;
        println!(
            "the lock is disabled; the relay is the fleet's authority again (re-lock with `lock init`)"
        );
        Ok(())
    }

    async fn sign(&mut self, args: &SignArgs) -> Result<(), Failure> {
        let workspace = args.workspace.workspace.as_deref();
        let lifetime = duration("--lifetime", &args.lifetime)?;
        let (authority, _, key) = self.as_admin(workspace).await?;
        let machines = self.client.list_machines(workspace).await?;
        let wanted = args.machine.as_str();
        let machine = machines
            .iter()
            .find(|m| m.id.to_string() == wanted || m.hostname == wanted.to_ascii_lowercase())
            .or_else(|| machines.iter().find(|m| m.name == wanted))
            .ok_or_else(|| {
                anyhow!("no machine {wanted:?} in this fleet; `cmdop connect --list` shows them")
            })?;
        let agent_key = machine
            .public_key
            .ok_or_else(|| anyhow!("the relay reports no valid key for {}", machine.hostname))?;
        let hostname = Hostname::parse(&machine.hostname)
            .map_err(|err| anyhow!("the machine's hostname cannot be certified: {err}"))?;
        confirm_key(
            &format!("machine {} ({})", machine.hostname, machine.id),
            &agent_key,
            args.fingerprint.as_deref(),
        )?;
        let issued = now();
        let body = MachineCertificateBody {
            fleet: authority.fleet(),
            machine: MachineId::from_bytes(machine.id.into_bytes()),
            agent_key,
            hostname,
            issued_at: issued,
            expires: issued.saturating_add_seconds(lifetime.as_secs()),
        };
        let certificate = body.sign_as_admin(&key).to_bytes();
        self.submit(workspace, Submission::MachineCertificate(certificate))
            .await
    }

    async fn enrol_key(&mut self, args: &EnrolKeyArgs) -> Result<(), Failure> {
        let workspace = args.workspace.workspace.as_deref();
        let ttl = duration("--ttl", &args.ttl)?;
        let lifetime = duration("--lifetime", &args.lifetime)?;
        let (authority, _, key) = self.as_admin(workspace).await?;
        let secret = EnrolmentSecret::generate(authority.fleet_key(), &mut OsRng);
        let issued = now();
        let authorization = EnrolmentAuthorization {
            fleet: authority.fleet(),
            enrolment_key: secret.public_key(),
            not_before: issued,
            not_after: issued.saturating_add_seconds(ttl.as_secs()),
            uses: args.uses,
            certificate_lifetime: lifetime.as_secs(),
            signer: key.public_key(),
        }
        .sign(&key);
        self.submit(
            workspace,
            Submission::EnrolmentAuthorization(authorization.to_bytes()),
        )
        .await?;
        let text = secret.expose_text();
        match &args.out {
            Some(path) => {
                cmdop_identity::store::write_private_file(
                    path,
                    format!("{}\n", text.as_str()).as_bytes(),
                )
                .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "wrote the enrolment key to {} (0600); it is shown nowhere else",
                    path.display()
                );
            }
            None => {
                eprintln!(
                    "the enrolment key below is shown only once; start agents with `cmdop-agent run --enrol-key-file FILE`:"
                );
                println!("{}", text.as_str());
            }
        }
        Ok(())
    }

    async fn add_member(&mut self, args: &AddMemberArgs) -> Result<(), Failure> {
        let workspace = args.workspace.workspace.as_deref();
        let role: MemberRole = args.role.parse().map_err(|err: String| anyhow!(err))?;
        let ttl = duration("--ttl", &args.ttl)?;
        let wanted = fingerprint(&args.fingerprint)?;
        let (authority, _, key) = self.as_admin(workspace).await?;
        let (_, items) = self.items(workspace).await?;
        let client_key = items
            .iter()
            .find_map(|item| match item {
                LockItem::ClientKey { public_key, .. } => PublicKey::from_bytes(&public_key.0)
                    .ok()
                    .filter(|k| k.fingerprint() == wanted),
                _ => None,
            })
            .ok_or_else(|| {
                anyhow!("no client key {wanted} has logged in to this fleet; the member runs `cmdop login` (or `cmdop status`) first")
            })?;
        let issued = now();
        let certificate = MemberCertificate {
            fleet: authority.fleet(),
            client_key,
            role,
            issued_at: issued,
            expires: issued.saturating_add_seconds(ttl.as_secs()),
            signer: key.public_key(),
        }
        .sign(&key);
        self.submit(
            workspace,
            Submission::MemberCertificate(certificate.to_bytes()),
        )
        .await
    }

    async fn revoke(&mut self, arg: &KeyArg) -> Result<(), Failure> {
        let workspace = arg.workspace.workspace.as_deref();
        let wanted = fingerprint(&arg.fingerprint)?;
        let (authority, lock, key) = self.as_admin(workspace).await?;
        let (_, items) = self.items(workspace).await?;
        let revoked = crate::fleet_lock_status::keys_of(&items)
            .into_iter()
            .find(|k| k.fingerprint() == wanted)
            .ok_or_else(|| {
                anyhow!("no machine, member, client or enrolment key {wanted} in this fleet; `cmdop fleet lock status` lists them")
            })?;
        let previous = lock
            .revocations
            .as_deref()
            .map(SignedRevocationList::from_bytes)
            .transpose()
            .map_err(|err| anyhow!("the relay's revocation list is unusable: {err}"))?;
        let list = RevocationList::successor(
            previous.as_ref().map(SignedRevocationList::unverified_list),
            authority.fleet(),
            &[revoked],
            key.public_key(),
            now(),
        )
        .sign(&key);
        self.submit(workspace, Submission::RevocationList(list.to_bytes()))
            .await
    }

    async fn trust(&mut self, arg: &KeyArg) -> Result<(), Failure> {
        let workspace = arg.workspace.workspace.as_deref();
        let wanted = fingerprint(&arg.fingerprint)?;
        let (lock, fleet) = self.lock(workspace).await?;
        let claimed = VerifiedAuthority::claimed_fleet_key(&lock.authority)
            .map_err(|_| anyhow!("this fleet is not locked; there is no fleet key to trust"))?;
        if claimed.fingerprint() != wanted {
            return Err(anyhow!(
                "the relay shows fleet key {} for this fleet, not {wanted}; check the fingerprint with your admin (the relay may be substituting the lock)",
                claimed.fingerprint()
            )
            .into());
        }
        self.pin(&lock, claimed)?;
        println!("pinned fleet key {wanted} for fleet {fleet} on this relay");
        Ok(())
    }
}

/// The current time, as documents carry it.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_unix_seconds(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

fn fingerprint(text: &str) -> Result<Fingerprint, Failure> {
    text.trim()
        .parse()
        .map_err(|err| anyhow!("{text:?} is not a key fingerprint (SHA256:…): {err}").into())
}

/// Confirms `key` is the one the person means: it must match `--fingerprint` if given; otherwise the person
/// compares it on a terminal; elsewhere the flag is required.
fn confirm_key(what: &str, key: &PublicKey, given: Option<&str>) -> Result<(), Failure> {
    let actual = key.fingerprint();
    if let Some(given) = given {
        let given = fingerprint(given)?;
        if given != actual {
            return Err(Failure::new(
                Kind::General,
                format!(
                    "{what} has key {actual}, not {given}; the relay may be substituting keys. Nothing was signed."
                ),
            ));
        }
        return Ok(());
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(Failure::new(
            Kind::General,
            format!(
                "{what} has key {actual}; compare it with `cmdop-agent identity show` on the machine and pass --fingerprint {actual}"
            ),
        ));
    }
    eprint!(
        "{what} has key {actual}.\nCompare it with `cmdop-agent identity show` on the machine. Sign it (yes/no)? "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if !answer.trim().eq_ignore_ascii_case("yes") {
        return Err(Failure::new(Kind::General, "not signed"));
    }
    Ok(())
}

/// A duration flag such as `1h`, `30d` or `365d`, which must not be zero.
fn duration(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    let parsed = humantime::parse_duration(text).map_err(|err| {
        Failure::new(
            Kind::General,
            format!("invalid {flag} {text:?} ({err}); write it like 1h, 30d or 365d"),
        )
    })?;
    if parsed.is_zero() {
        return Err(Failure::new(
            Kind::General,
            format!("{flag} must be longer than 0"),
        ));
    }
    Ok(parsed)
}

/// Whether the relay's chain for a fleet is locked, with the fleet key it claims (nothing verified).
pub(crate) fn claimed(lock: &FleetLockState) -> Option<(Fingerprint, bool)> {
    claimed_lock(FleetId::from_bytes(lock.fleet_id.0), &lock.authority)
}

/// Pins `fleet_key` for the fleet of `lock` on `relay`, with the serials of the lock, which must verify from
/// it.
pub(crate) fn pin_fleet(
    profile: &Profile,
    relay: cmdop_proto::RelayFingerprint,
    lock: &FleetLockState,
    fleet_key: PublicKey,
) -> Result<(), Failure> {
    let pin = FleetPin {
        relay,
        fleet: FleetId::from_bytes(lock.fleet_id.0),
        fleet_key,
        authority_serial: 0,
        revocation_serial: 0,
    };
    let (_, _, newer) =
        verify_lock(&pin, lock).map_err(|err| anyhow!("the fleet's lock is refused: {err}"))?;
    let known = cmdop_client::known_machines::KnownMachines::in_dir(profile.dir());
    known.save_fleet_pin(&newer.unwrap_or(pin))?;
    Ok(())
}
