//! `entsync`: the thin shell around the `entitlement_sync` library. It alone reads the
//! clock, the environment and sockets; everything it decides comes from the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
