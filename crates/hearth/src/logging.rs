//! Logging to stderr, as text or JSON. `RUST_LOG` overrides `log.filter`.

use hearth_core::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub(crate) fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) => EnvFilter::try_new(from_env)?,
        Err(_) => EnvFilter::try_new(&config.filter)
            .map_err(|e| anyhow::anyhow!("log.filter {:?}: {e}", config.filter))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: not in files, journald or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
