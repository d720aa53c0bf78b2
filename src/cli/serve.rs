//! `entsync serve` (placeholder until the receiver lands).

use clap::Args;
use std::path::Path;
use std::process::ExitCode;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub policy: super::PolicyArgs,
}

pub fn run(_db: &Path, _args: ServeArgs) -> ExitCode {
    eprintln!("entsync serve: not built yet");
    ExitCode::from(2)
}
