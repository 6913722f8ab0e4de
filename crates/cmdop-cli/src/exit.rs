//! Exit codes (documented in docs/cli.md) and the one place a failure is printed.

use std::process::ExitCode;

use cmdop_client::ClientError;
use cmdop_client::known_machines::KnownMachinesError;
use cmdop_proto::wire::ErrorCode;

/// Why cmdop itself failed, as distinct from a remote command's own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anything else: local files, a missing remote file, not logged in.
    General = 1,
    /// The command line is wrong: an unknown flag, a missing argument, a value that does not parse. clap's own
    /// errors exit with this code too.
    Usage = 2,
    /// The relay refused the credential, or it does not cover what was asked.
    Auth = 3,
    /// A machine or fleet was not found, or the name was ambiguous.
    NotFound = 4,
    /// The relay could not be reached, did not answer, or the connection was lost.
    Unreachable = 5,
    /// The relay presented a certificate other than the pinned one.
    Fingerprint = 6,
}

/// The result of a subcommand: an exit code, or a failure to report.
pub(crate) type Outcome = Result<ExitCode, Failure>;

/// A failure with its exit code and a one-line message that names the problem and the fix.
#[derive(Debug)]
pub(crate) struct Failure {
    kind: Kind,
    message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The connection broke before the operation finished.
    pub(crate) fn connection_lost(detail: &str) -> Self {
        Self::new(
            Kind::Unreachable,
            format!("connection lost: {detail}; the result is incomplete"),
        )
    }

    /// Whether retrying later may succeed: the relay or the machine was unreachable for a while.
    pub(crate) fn is_retryable(&self) -> bool {
        self.kind == Kind::Unreachable
    }

    /// What kind of failure this is (and so its exit code).
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The message, without the `cmdop:` prefix.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Prints `cmdop: <message>` to stderr.
    pub(crate) fn print(&self) {
        eprintln!("cmdop: {}", self.message);
    }

    /// Prints the failure and returns its exit code.
    pub(crate) fn report(self) -> ExitCode {
        self.print();
        ExitCode::from(self.kind as u8)
    }
}

/// A usage error: the command line is wrong (exit code 2, like clap's own errors).
pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Kind::Usage, message)
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Self::new(Kind::General, format!("{err:#}"))
    }
}

impl From<cmdop_client::secure_stream::SecureStreamError> for Failure {
    fn from(err: cmdop_client::secure_stream::SecureStreamError) -> Self {
        use cmdop_client::secure_stream::SecureStreamError;
        // Only a broken transport is worth retrying; a refused or tampered channel is not.
        let kind = match err {
            SecureStreamError::Io(_) => Kind::Unreachable,
            _ => Kind::General,
        };
        Self::new(kind, err.to_string())
    }
}

impl From<KnownMachinesError> for Failure {
    fn from(err: KnownMachinesError) -> Self {
        // With its cause (`cannot read …: Permission denied`), as every local failure is printed.
        Self::from(anyhow::Error::from(err))
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        let err = match err {
            // Opening a channel: the same words and codes as when the CLI checked pins and ran the handshake.
            ClientError::KnownMachines(err) => return Self::from(err),
            ClientError::SecureStream(err) => return Self::from(err),
            other => other,
        };
        if let ClientError::FingerprintMismatch { got, .. } = &err {
            return Self::new(
                Kind::Fingerprint,
                format!(
                    "{err}; if the relay's certificate was rotated on purpose (compare `cmdop-relay fingerprint` on the relay), re-pin it with `cmdop login --repin --relay-fingerprint {got}`"
                ),
            );
        }
        let kind = match &err {
            ClientError::AuthenticationFailed(_)
            | ClientError::Forbidden(_)
            | ClientError::CredentialRevoked(_) => Kind::Auth,
            ClientError::FleetNotFound(_)
            | ClientError::WorkspaceRequired { .. }
            | ClientError::MachineNotFound(_)
            | ClientError::Ambiguous { .. } => Kind::NotFound,
            ClientError::MachineOffline(_) => Kind::Unreachable,
            ClientError::InvalidRelayAddress { .. } => Kind::Usage,
            ClientError::Resolve { .. }
            | ClientError::Unreachable { .. }
            | ClientError::RelayBusy { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout(_) => Kind::Unreachable,
            // A relay limit (the connections one credential may hold): try again later, like a lost relay.
            ClientError::Refused { code, .. } if *code == ErrorCode::BUSY => Kind::Unreachable,
            _ => Kind::General,
        };
        Self::new(kind, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_relay_exits_5_like_an_unreachable_one_and_says_why() {
        let failure = Failure::from(ClientError::Refused {
            code: ErrorCode::BUSY,
            message: "this credential already has 64 connections to the relay".into(),
        });
        assert_eq!(failure.kind, Kind::Unreachable);
        assert!(failure.is_retryable());
        assert!(
            failure.message().contains("64 connections"),
            "{}",
            failure.message()
        );
    }
}
