//! `entsync`: the thin shell around the `entitlement_sync` library. It alone reads the
//! clock, the environment and sockets; everything it decides comes from the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::run(args)
}
