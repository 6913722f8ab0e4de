//! The agent's view of its fleet's lock: which fleet key it trusts, the newest authority and revocation
//! list it has verified, and the member check every stream of a locked fleet goes through.
//!
//! ```text
//!  relay ── FleetLock{chain, list} ──▶ FleetLockKeeper::update ── verify from the pinned fleet key,
//!                                        never older than held ──▶ fleet_lock file (0600)
//!  stream ── member certificate ──▶ FleetLockKeeper::authorize ── admin-signed, this client key, not revoked,
//!                                        valid now, role allows the operation ──▶ Grant
//! ```
//!
//! The fleet key comes from `--fleet-key` (or the enrolment secret, which carries it), or is pinned the first
//! time the relay shows a lock (trust on first use, logged loudly; `docs/security.md` says what that costs).
//! Once a lock is held, the agent enforces it even if the relay stops sending it; a configured fleet key that
//! the relay never shows a lock for refuses every stream (fail closed).

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use cmdop_fleet::lock::{
    LockError, MemberRole, SignedMemberCertificate, SignedRevocationList, VerifiedAuthority,
    VerifiedRevocations,
};
use cmdop_fleet::{FleetId, Operation, Timestamp};
use cmdop_identity::{Fingerprint, PublicKey};
use cmdop_proto::wire::FleetLockState;

/// File name of the agent's fleet-lock state inside its config directory:
/// `<fleet id> <fleet key> <latest authority state, hex> <revocation list, hex or ->` per line.
pub const LOCK_FILE: &str = "fleet_lock";

/// What the agent lets a client do on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Everything the operation allows.
    Full,
    /// A viewer in a locked fleet: list sessions and attach read-only to existing ones.
    ViewOnly,
}

/// Why a stream was refused by the fleet lock; the message is what the client is told.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockRefusal {
    /// The agent was told a fleet key but holds no verified lock for it yet.
    #[error(
        "this machine trusts fleet key {0} but has not received its fleet's lock from the relay; refusing until it does"
    )]
    NoLockYet(Fingerprint),
    /// No member certificate in a locked fleet.
    #[error(
        "this fleet is locked and no member certificate came with the stream; ask a fleet admin for one (`cmdop fleet lock add-member`)"
    )]
    NoMemberCertificate,
    /// The member certificate does not verify.
    #[error("member certificate refused: {0}")]
    Member(LockError),
    /// The role does not allow the operation.
    #[error("a {role} may not open {operation} streams in this locked fleet")]
    Role {
        /// The member's role.
        role: MemberRole,
        /// The operation asked for.
        operation: Operation,
    },
}

/// Why a fleet lock the relay sent was not taken.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// It does not verify (forged, rooted elsewhere, older than held, tampered).
    #[error("the relay's fleet lock is refused ({0}); keeping the one held")]
    Invalid(#[from] LockError),
    /// The lock file cannot be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The lock file holds a line that cannot be read.
    #[error("{}:{line}: cannot read this fleet lock line; fix or remove it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
}

/// What happened to a fleet lock the relay sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// The fleet has no lock, and none is held.
    Unlocked,
    /// The relay sent no lock but one is held: it keeps being enforced.
    Withheld,
    /// Nothing newer than what is held.
    Unchanged,
    /// A newer authority or revocation list is now held.
    Newer {
        /// The authority serial held now.
        serial: u64,
        /// The revocation-list serial held now.
        revocations: u64,
        /// Whether the fleet key was pinned just now, on first sight.
        pinned_now: bool,
    },
}

#[derive(Debug, Default)]
struct Held {
    fleet_key: Option<PublicKey>,
    authority: Option<VerifiedAuthority>,
    revocations: VerifiedRevocations,
}

/// The agent's fleet-lock state for its one fleet.
#[derive(Debug)]
pub struct FleetLockKeeper {
    path: PathBuf,
    fleet: FleetId,
    configured: Option<Fingerprint>,
    held: RwLock<Held>,
}

impl FleetLockKeeper {
    /// The state of `fleet` kept in `dir`, trusting `configured` as the fleet key if given.
    pub fn load(
        dir: &Path,
        fleet: FleetId,
        configured: Option<Fingerprint>,
    ) -> Result<Self, UpdateError> {
        let path = dir.join(LOCK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(UpdateError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let mut held = Held::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let corrupt = || UpdateError::Corrupt {
                path: path.clone(),
                line: index + 1,
            };
            let parsed = parse_line(line).ok_or_else(corrupt)?;
            if parsed.0 == fleet {
                held = parsed.1;
            }
        }
        Ok(Self {
            path,
            fleet,
            configured,
            held: RwLock::new(held),
        })
    }

    /// Takes the fleet lock the relay sent, if it verifies and is not older than what is held.
    pub fn update(&self, offered: &FleetLockState) -> Result<Updated, UpdateError> {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        if offered.authority.is_empty() {
            return Ok(if held.authority.is_some() {
                Updated::Withheld
            } else {
                Updated::Unlocked
            });
        }
        let claimed = VerifiedAuthority::claimed_fleet_key(&offered.authority)?;
        let (fleet_key, pinned_now) = match (held.fleet_key, self.configured) {
            (Some(key), _) => (key, false),
            (None, Some(configured)) if claimed.fingerprint() != configured => {
                return Err(LockError::NotRootedAt {
                    pinned: configured,
                    found: claimed.fingerprint(),
                }
                .into());
            }
            (None, configured) => (claimed, configured.is_none()),
        };
        let authority = VerifiedAuthority::verify(self.fleet, &fleet_key, &offered.authority)?;
        let held_serial = held.authority.as_ref().map_or(0, VerifiedAuthority::serial);
        authority.check_not_older(
            held_serial,
            held.authority.as_ref().map(VerifiedAuthority::latest_bytes),
        )?;
        let revocations = match offered.revocations.as_deref() {
            // A list held and none offered: the relay withholds it; keep enforcing the held one.
            None => held.revocations.clone(),
            Some(bytes) => {
                let verified = SignedRevocationList::from_bytes(bytes)?.verify(&authority)?;
                // Not older, not a different list under the held serial, and no revocation undone.
                verified.check_replaces(&held.revocations)?;
                verified
            }
        };
        let changed = held_serial != authority.serial()
            || held.revocations.serial() != revocations.serial()
            || held.fleet_key.is_none();
        if !changed {
            return Ok(Updated::Unchanged);
        }
        let updated = Updated::Newer {
            serial: authority.serial(),
            revocations: revocations.serial(),
            pinned_now,
        };
        let next = Held {
            fleet_key: Some(fleet_key),
            authority: Some(authority),
            revocations,
        };
        self.save(&next)?;
        *held = next;
        Ok(updated)
    }

    /// The lock check of one stream: `Full` outside a locked fleet; in a locked fleet, a valid member
    /// certificate for `client` whose role allows `operation`.
    pub fn authorize(
        &self,
        client: &PublicKey,
        member_certificate: Option<&[u8]>,
        operation: Operation,
        now: Timestamp,
    ) -> Result<Grant, LockRefusal> {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        let Some(authority) = &held.authority else {
            return match self.configured {
                Some(expected) => Err(LockRefusal::NoLockYet(expected)),
                None => Ok(Grant::Full),
            };
        };
        if !authority.is_locked() {
            return Ok(Grant::Full);
        }
        let bytes = member_certificate.ok_or(LockRefusal::NoMemberCertificate)?;
        let role = SignedMemberCertificate::from_bytes(bytes)
            .and_then(|certificate| certificate.verify(authority, &held.revocations, client, now))
            .map_err(LockRefusal::Member)?;
        if !role.allows(operation) {
            return Err(LockRefusal::Role { role, operation });
        }
        Ok(if role.is_viewer() {
            Grant::ViewOnly
        } else {
            Grant::Full
        })
    }

    /// The fleet key trusted (pinned or configured), if any.
    pub fn fleet_key(&self) -> Option<Fingerprint> {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        held.fleet_key
            .map(|key| key.fingerprint())
            .or(self.configured)
    }

    /// Writes the held state of this fleet, keeping other fleets' lines, atomically (0600).
    fn save(&self, next: &Held) -> Result<(), UpdateError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut out = String::from(
            "# cmdop-agent fleet locks: <fleet id> <fleet key> <latest authority state> <revocation list>\n",
        );
        let fleet = self.fleet.to_string();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(&fleet) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if let (Some(key), Some(authority)) = (next.fleet_key, &next.authority) {
            let list = next.revocations.bytes();
            out.push_str(&format!(
                "{fleet} {key} {} {}\n",
                hex(authority.latest_bytes()),
                if list.is_empty() {
                    "-".to_owned()
                } else {
                    hex(list)
                }
            ));
        }
        cmdop_identity::store::write_private_file(&self.path, out.as_bytes()).map_err(|source| {
            UpdateError::Io {
                action: "write",
                path: self.path.clone(),
                source,
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// One line of the lock file, trusted as the agent wrote it (0600, the agent's own), its signatures rechecked.
fn parse_line(line: &str) -> Option<(FleetId, Held)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [fleet, key, latest, list] = fields.as_slice() else {
        return None;
    };
    let fleet: FleetId = fleet.parse().ok()?;
    let key: PublicKey = key.parse().ok()?;
    let authority = VerifiedAuthority::from_held(key, &unhex(latest)?).ok()?;
    let revocations = if *list == "-" {
        VerifiedRevocations::none()
    } else {
        VerifiedRevocations::from_held(&unhex(list)?).ok()?
    };
    Some((
        fleet,
        Held {
            fleet_key: Some(key),
            authority: Some(authority),
            revocations,
        },
    ))
}

#[cfg(test)]
mod tests {
    use cmdop_fleet::lock::{AuthorityState, MemberCertificate, RevocationList};
    use cmdop_identity::{Identity, Seed};
    use cmdop_proto::wire::IdBytes;

    use super::*;

    const T: u64 = 1_700_000_000;

    fn id(byte: u8) -> Identity {
        Identity::from_seed(&Seed::from_bytes([byte; 32]))
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_seconds(secs)
    }

    fn fleet() -> FleetId {
        FleetId::from_bytes([3; 16])
    }

    fn genesis(admin: &Identity) -> Vec<u8> {
        AuthorityState {
            fleet: fleet(),
            serial: 1,
            locked: true,
            admins: vec![admin.public_key()],
            issued_at: at(T),
            signer: admin.public_key(),
        }
        .sign(admin)
        .to_bytes()
    }

    fn offered(chain: Vec<Vec<u8>>, revocations: Option<Vec<u8>>) -> FleetLockState {
        FleetLockState {
            fleet_id: IdBytes(fleet().to_bytes()),
            authority: chain,
            revocations,
        }
    }

    fn member(admin: &Identity, client: &Identity, role: MemberRole) -> Vec<u8> {
        MemberCertificate {
            fleet: fleet(),
            client_key: client.public_key(),
            role,
            issued_at: at(T),
            expires: at(T + 1000),
            signer: admin.public_key(),
        }
        .sign(admin)
        .to_bytes()
    }

    fn list(
        admin: &Identity,
        previous: Option<&RevocationList>,
        keys: &[PublicKey],
    ) -> RevocationList {
        RevocationList::successor(previous, fleet(), keys, admin.public_key(), at(T))
    }

    #[test]
    fn an_unlocked_agent_grants_everything_and_pins_the_first_lock_it_sees() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = FleetLockKeeper::load(dir.path(), fleet(), None).unwrap();
        let client = id(7);
        assert_eq!(
            keeper.authorize(&client.public_key(), None, Operation::Exec, at(T)),
            Ok(Grant::Full)
        );
        assert_eq!(
            keeper.update(&offered(Vec::new(), None)).unwrap(),
            Updated::Unlocked
        );
        let admin = id(1);
        assert!(matches!(
            keeper
                .update(&offered(vec![genesis(&admin)], None))
                .unwrap(),
            Updated::Newer {
                serial: 1,
                pinned_now: true,
                ..
            }
        ));
        assert_eq!(
            keeper.authorize(&client.public_key(), None, Operation::Exec, at(T)),
            Err(LockRefusal::NoMemberCertificate)
        );
        let viewer = member(&admin, &client, MemberRole::Viewer);
        assert_eq!(
            keeper.authorize(&client.public_key(), Some(&viewer), Operation::Shell, at(T)),
            Ok(Grant::ViewOnly)
        );
        assert!(matches!(
            keeper.authorize(&client.public_key(), Some(&viewer), Operation::Exec, at(T)),
            Err(LockRefusal::Role { .. })
        ));
        let full = member(&admin, &client, MemberRole::Member);
        assert_eq!(
            keeper.authorize(&client.public_key(), Some(&full), Operation::Copy, at(T)),
            Ok(Grant::Full)
        );
        // The relay's own key, its own chain: neither pinned over the held one, nor a signer of members.
        let relay = id(9);
        assert!(matches!(
            keeper.update(&offered(vec![genesis(&relay)], None)),
            Err(UpdateError::Invalid(LockError::NotRootedAt { .. }))
        ));
        assert!(matches!(
            keeper.authorize(
                &client.public_key(),
                Some(&member(&relay, &client, MemberRole::Admin)),
                Operation::Exec,
                at(T)
            ),
            Err(LockRefusal::Member(LockError::NotAnAdmin { .. }))
        ));
        // A withheld lock stays enforced, also after a restart.
        assert_eq!(
            keeper.update(&offered(Vec::new(), None)).unwrap(),
            Updated::Withheld
        );
        let reloaded = FleetLockKeeper::load(dir.path(), fleet(), None).unwrap();
        assert_eq!(
            reloaded.authorize(&client.public_key(), None, Operation::Exec, at(T)),
            Err(LockRefusal::NoMemberCertificate)
        );
    }

    #[test]
    fn a_configured_fleet_key_is_required_and_lists_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let admin = id(1);
        let keeper =
            FleetLockKeeper::load(dir.path(), fleet(), Some(admin.public_key().fingerprint()))
                .unwrap();
        let client = id(7);
        // Nothing seen yet: fail closed.
        assert!(matches!(
            keeper.authorize(&client.public_key(), None, Operation::Exec, at(T)),
            Err(LockRefusal::NoLockYet(_))
        ));
        assert!(matches!(
            keeper.update(&offered(vec![genesis(&id(9))], None)),
            Err(UpdateError::Invalid(LockError::NotRootedAt { .. }))
        ));
        let first = list(&admin, None, &[id(5).public_key()]);
        let second = list(&admin, Some(&first), &[client.public_key()]);
        let chain = vec![genesis(&admin)];
        assert!(matches!(
            keeper
                .update(&offered(
                    chain.clone(),
                    Some(first.clone().sign(&admin).to_bytes())
                ))
                .unwrap(),
            Updated::Newer {
                revocations: 1,
                pinned_now: false,
                ..
            }
        ));
        keeper
            .update(&offered(
                chain.clone(),
                Some(second.sign(&admin).to_bytes()),
            ))
            .unwrap();
        let certificate = member(&admin, &client, MemberRole::Member);
        assert!(matches!(
            keeper.authorize(
                &client.public_key(),
                Some(&certificate),
                Operation::Exec,
                at(T)
            ),
            Err(LockRefusal::Member(LockError::Revoked { .. }))
        ));
        // Served list 1 again, or no list: the agent keeps list 2.
        assert!(matches!(
            keeper.update(&offered(chain.clone(), Some(first.sign(&admin).to_bytes()))),
            Err(UpdateError::Invalid(LockError::Rollback {
                held: 2,
                offered: 1,
                ..
            }))
        ));
        assert_eq!(
            keeper.update(&offered(chain.clone(), None)).unwrap(),
            Updated::Unchanged
        );
        // A newer list that drops the revoked client (made from a list the relay lied about) is refused too.
        let dropping = RevocationList {
            serial: 3,
            revoked: vec![id(5).public_key()],
            ..list(&admin, None, &[])
        };
        assert!(matches!(
            keeper.update(&offered(chain, Some(dropping.sign(&admin).to_bytes()))),
            Err(UpdateError::Invalid(LockError::Unrevoked))
        ));
        assert!(
            keeper
                .authorize(
                    &client.public_key(),
                    Some(&certificate),
                    Operation::Exec,
                    at(T)
                )
                .is_err()
        );
    }

    #[test]
    fn an_unreadable_lock_file_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "# note\ngarbage\n").unwrap();
        let err = FleetLockKeeper::load(dir.path(), fleet(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
