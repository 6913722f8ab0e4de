//! The `cmdop-agent` binary: flag parsing and logging over the library.

use clap::Parser;

/// cmdop agent.
#[derive(Debug, Parser)]
#[command(name = "cmdop-agent", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
