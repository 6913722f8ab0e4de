//! The flags every `cmdop` subcommand understands: where this client keeps its state, and which relay and
//! credential to use instead of the saved login.

use std::path::PathBuf;

use clap::Args;

/// Flags every subcommand understands.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct GlobalArgs {
    /// Directory holding this client's identity, login and known machines
    /// [default: $XDG_CONFIG_HOME/cmdop, else ~/.config/cmdop].
    #[arg(long, global = true, env = "CMDOP_CONFIG_DIR", value_name = "DIR")]
    pub(crate) config_dir: Option<PathBuf>,
    /// The relay, as HOST:PORT (overrides the one saved by `cmdop login`).
    #[arg(long, global = true, env = "CMDOP_RELAY", value_name = "HOST:PORT")]
    pub(crate) relay: Option<String>,
    /// The relay's certificate fingerprint, `SHA256:…` as `cmdop-relay fingerprint` prints it (overrides the
    /// saved one; the older `sha256:<hex>` works too).
    #[arg(
        long,
        global = true,
        env = "CMDOP_RELAY_FINGERPRINT",
        value_name = "FP"
    )]
    pub(crate) relay_fingerprint: Option<String>,
    /// A file holding an API key to use instead of the saved login (the key may also come from CMDOP_API_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) api_key_file: Option<PathBuf>,
    /// Pin a machine met for the first time without asking, like ssh's StrictHostKeyChecking=accept-new
    /// (for scripts; a changed key is still refused). Without it, a first contact is confirmed on a
    /// terminal and refused elsewhere.
    #[arg(long, global = true, env = "CMDOP_ACCEPT_NEW")]
    pub(crate) accept_new: bool,
}
