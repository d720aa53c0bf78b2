//! `entsync bench` (placeholder).

use clap::Args;
use std::path::Path;
use std::process::ExitCode;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn run(_db: &Path, _args: BenchArgs) -> ExitCode {
    ExitCode::from(2)
}
