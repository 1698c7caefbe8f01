//! Logging to stderr, as text or JSON. `RUST_LOG` overrides `log.filter`.
//! The filter can be replaced on reload; the format cannot (the layers
//! are built once).

use hearth_core::config::{LogConfig, LogFormat};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// What the output layer sits on: the registry behind the reloadable filter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The running logger's filter, for reloads.
#[derive(Debug)]
pub(crate) struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Whether `RUST_LOG` chose the filter at start; it keeps winning.
    from_env: bool,
}

/// A checked `log.filter`, ready to apply.
#[derive(Debug)]
pub(crate) enum NewFilter {
    Apply(Box<EnvFilter>),
    /// `RUST_LOG` was set at start and wins over `log.filter`, as then.
    KeptFromEnv,
}

pub(crate) fn init(config: &LogConfig) -> anyhow::Result<Logging> {
    let from_env = std::env::var("RUST_LOG").ok();
    // Colour only on a terminal: not in files, journald or `docker logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (subscriber, logging) = build(config, from_env, ansi, std::io::stderr)?;
    subscriber
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(logging)
}

/// The subscriber writing to `writer`, and the handle on its filter.
fn build<W>(
    config: &LogConfig,
    rust_log: Option<String>,
    ansi: bool,
    writer: W,
) -> anyhow::Result<(impl tracing::Subscriber + Send + Sync, Logging)>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match &rust_log {
        Some(from_env) => EnvFilter::try_new(from_env)?,
        None => parse(config)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let fmt: Box<dyn Layer<Filtered> + Send + Sync> = match config.format {
        LogFormat::Text => Box::new(layer.with_writer(writer)),
        LogFormat::Json => Box::new(layer.json().with_writer(writer)),
    };
    let subscriber = Registry::default().with(filter).with(fmt);
    let logging = Logging {
        filter: handle,
        from_env: rust_log.is_some(),
    };
    Ok((subscriber, logging))
}

fn parse(config: &LogConfig) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(&config.filter)
        .map_err(|e| anyhow::anyhow!("log.filter {:?}: {e}", config.filter))
}

impl Logging {
    /// Checks the new `log.filter`, as start-up would have.
    pub(crate) fn prepare(&self, config: &LogConfig) -> anyhow::Result<NewFilter> {
        if self.from_env {
            return Ok(NewFilter::KeptFromEnv);
        }
        parse(config).map(|filter| NewFilter::Apply(Box::new(filter)))
    }

    /// Filters with `filter` from the next event on; what it did.
    pub(crate) fn apply(&self, filter: NewFilter) -> &'static str {
        match filter {
            NewFilter::KeptFromEnv => "log filter kept: RUST_LOG is set and wins over log.filter",
            NewFilter::Apply(filter) => match self.filter.reload(*filter) {
                Ok(()) => "log filter",
                // Only when the subscriber is gone, so nobody would read it.
                Err(_) => "log filter not applied: the logger is gone",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file the logger writes to, and what it holds so far.
    struct Output(tempfile::NamedTempFile);

    impl Output {
        fn new() -> Self {
            Self(tempfile::NamedTempFile::new().unwrap())
        }

        fn writer(&self) -> std::fs::File {
            self.0.reopen().unwrap()
        }

        fn text(&self) -> String {
            std::fs::read_to_string(self.0.path()).unwrap()
        }
    }

    fn config(filter: &str, format: LogFormat) -> LogConfig {
        LogConfig {
            filter: filter.to_owned(),
            format,
        }
    }

    /// A reloaded `log.filter` decides from the next event on, in either
    /// format; a filter that does not parse is refused before anything
    /// changes.
    #[test]
    fn a_reloaded_filter_applies_to_the_next_events() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let lines = Output::new();
            let (subscriber, logging) =
                build(&config("warn", format), None, false, lines.writer()).unwrap();
            let _guard = tracing::subscriber::set_default(subscriber);
            tracing::info!("before the reload");
            assert!(
                logging
                    .prepare(&config("info,hearth=loud", format))
                    .is_err()
            );
            let filter = logging.prepare(&config("info", format)).unwrap();
            tracing::info!("prepared, not applied");
            assert_eq!(logging.apply(filter), "log filter");
            tracing::info!("after the reload");
            let text = lines.text();
            assert!(!text.contains("before the reload"), "{text}");
            assert!(!text.contains("prepared, not applied"), "{text}");
            assert!(text.contains("after the reload"), "{text}");
        }
    }

    /// With `RUST_LOG` set at start it keeps winning, as it did then, and
    /// the reload says so.
    #[test]
    fn rust_log_keeps_winning_over_a_reloaded_filter() {
        let lines = Output::new();
        let (subscriber, logging) = build(
            &config("info", LogFormat::Text),
            Some("warn".to_owned()),
            false,
            lines.writer(),
        )
        .unwrap();
        let _guard = tracing::subscriber::set_default(subscriber);
        let filter = logging.prepare(&config("debug", LogFormat::Text)).unwrap();
        assert!(logging.apply(filter).contains("RUST_LOG"));
        tracing::info!("filtered out");
        assert!(!lines.text().contains("filtered out"));
    }
}
