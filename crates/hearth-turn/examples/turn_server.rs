//! Runs the TURN server alone, configured by a TOML file of `[turn]` keys
//! (without the section header). The interop tests and `cargo xtask bench`
//! use it so that the server is a process of its own, measured apart from
//! the load generator.
//!
//! `cargo run --release -p hearth-turn --example turn_server -- turn.toml`

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: turn_server <config.toml>");
        return ExitCode::from(2);
    };
    let config: hearth_turn::Config = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("turn_server: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match hearth_turn::Server::bind(&config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("turn_server: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in server.summary() {
        eprintln!("{line}");
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("turn_server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match server.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turn_server: {e}");
            ExitCode::FAILURE
        }
    }
}
