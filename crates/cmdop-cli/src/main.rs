//! The `cmdop` binary: reach your machines through your own relay.

use clap::Parser;

/// cmdop: reach your machines through your own relay.
#[derive(Debug, Parser)]
#[command(name = "cmdop", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
