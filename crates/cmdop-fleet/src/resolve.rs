//! The resolver: how every command that names a machine turns the name into one machine.
//!
//! Rules, first match wins, within the fleet of the [`FleetAccess`] only:
//!
//! 1. A query shaped like a UUID (`8-4-4-4-12`, any case) matches ids only; a miss is
//!    [`ResolveError::NotFound`], never a fall-through to names.
//! 2. The exact hostname (hostnames are case-insensitive).
//! 3. The exact display name; failing that, the display name ignoring case. Two machines
//!    sharing it is [`ResolveError::Ambiguous`].
//! 4. A case-insensitive prefix, of at least 2 characters, of the id, hostname or display
//!    name, if exactly one machine has it.
//! 5. Otherwise [`ResolveError::Ambiguous`] with the candidates, or [`ResolveError::NotFound`].

use std::fmt;

use crate::id::{MachineId, is_uuid_shaped};
use crate::machine::Machine;
use crate::name::{FleetName, Hostname};
use crate::role::Permission;
use crate::scope::{FleetAccess, ScopeError};

/// The shortest query tried as a prefix; one character would match too much to be useful.
pub const MIN_PREFIX_CHARS: usize = 2;

/// How many candidates an ambiguity message lists before summarising the rest.
const LISTED_CANDIDATES: usize = 10;

/// Finds the one machine `query` names among `machines` in the fleet of `access` (which must
/// allow [`Permission::List`]). Machines of other fleets are never returned.
pub fn resolve<'m>(
    access: &FleetAccess,
    machines: &'m [Machine],
    query: &str,
) -> Result<&'m Machine, ResolveError> {
    access.require(Permission::List)?;
    let fleet = access.fleet_id();
    let ours = || machines.iter().filter(move |m| m.fleet == fleet);
    let not_found = || ResolveError::NotFound {
        query: shorten(query),
        fleet: access.fleet().name.clone(),
    };

    if is_uuid_shaped(query) {
        let id: MachineId = query.parse().map_err(|_| not_found())?;
        return ours().find(|m| m.id == id).ok_or_else(not_found);
    }

    if let Ok(hostname) = Hostname::parse(query)
        && let Some(machine) = ours().find(|m| m.hostname == hostname)
    {
        return Ok(machine);
    }

    let exact: Vec<&Machine> = ours().filter(|m| m.display_name() == query).collect();
    if let Some(found) = unique(query, exact)? {
        return Ok(found);
    }
    let lower = query.to_lowercase();
    let folded: Vec<&Machine> = ours()
        .filter(|m| m.display_name().to_lowercase() == lower)
        .collect();
    if let Some(found) = unique(query, folded)? {
        return Ok(found);
    }

    if query.chars().count() < MIN_PREFIX_CHARS {
        return Err(ResolveError::TooShort {
            query: shorten(query),
        });
    }
    let prefixed: Vec<&Machine> = ours()
        .filter(|m| {
            m.id.to_string().starts_with(&lower)
                || m.hostname.as_str().starts_with(&lower)
                || m.display_name().to_lowercase().starts_with(&lower)
        })
        .collect();
    unique(query, prefixed)?.ok_or_else(not_found)
}

/// `None` for no match, the machine for one, [`ResolveError::Ambiguous`] for several.
fn unique<'m>(query: &str, found: Vec<&'m Machine>) -> Result<Option<&'m Machine>, ResolveError> {
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => {
            let mut candidates: Vec<Candidate> = found
                .iter()
                .map(|m| Candidate {
                    id: m.id,
                    hostname: m.hostname.clone(),
                    name: m.display_name().to_owned(),
                })
                .collect();
            candidates
                .sort_by(|a, b| (&a.name, &a.hostname, a.id).cmp(&(&b.name, &b.hostname, b.id)));
            Err(ResolveError::Ambiguous {
                query: shorten(query),
                candidates,
            })
        }
    }
}

/// Queries come from the peer; keep error messages bounded.
fn shorten(query: &str) -> String {
    query.chars().take(80).collect()
}

/// One of several machines an ambiguous query matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The machine's id.
    pub id: MachineId,
    /// Its hostname.
    pub hostname: Hostname,
    /// Its display name (the hostname if none was set).
    pub name: String,
}

impl fmt::Display for Candidate {
    /// `name (hostname, id)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.hostname, self.id)
    }
}

/// Why a query did not name exactly one machine. Safe to show to the peer.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The credential may not list this fleet's machines.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// No machine matches.
    #[error(
        "no machine matches {query:?} in fleet {fleet}; `cmdop connect --list` shows its machines"
    )]
    NotFound {
        /// The query (cut to 80 characters).
        query: String,
        /// The fleet searched.
        fleet: FleetName,
    },
    /// Several machines match.
    #[error("{query:?} matches several machines: {}; use the hostname, the id or a longer prefix", list(.candidates))]
    Ambiguous {
        /// The query (cut to 80 characters).
        query: String,
        /// The machines it matches, sorted by name, hostname and id.
        candidates: Vec<Candidate>,
    },
    /// The query matched nothing exactly and is too short to use as a prefix.
    #[error(
        "{query:?} is too short to pick a machine by prefix; use at least 2 characters, the hostname or the id"
    )]
    TooShort {
        /// The query.
        query: String,
    },
}

fn list(candidates: &[Candidate]) -> String {
    let mut text = candidates
        .iter()
        .take(LISTED_CANDIDATES)
        .map(Candidate::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(more) = candidates
        .len()
        .checked_sub(LISTED_CANDIDATES)
        .filter(|n| *n > 0)
    {
        text.push_str(&format!(" and {more} more"));
    }
    text
}
