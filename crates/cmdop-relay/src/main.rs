//! The `cmdop-relay` binary: flag parsing and logging over the library.

use clap::Parser;

/// cmdop relay.
#[derive(Debug, Parser)]
#[command(name = "cmdop-relay", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
