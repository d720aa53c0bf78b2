//! `entsync simulate` (placeholder until the load generator lands).

use clap::Args;
use std::process::ExitCode;

/// Arguments of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {}

pub fn run(_args: SimulateArgs) -> ExitCode {
    eprintln!("entsync simulate: not built yet");
    ExitCode::from(2)
}
