//! The command line of `cargo xtask bench`.

use std::time::Duration;

use anyhow::{Context, Result, bail};

pub(crate) const USAGE: &str = "\
usage: cargo xtask bench [options]

Measures hashed lookups (POST /_matrix/identity/v2/lookup) of the release
hearth binary against Sydent 2.6.1 from PyPI on this machine, one server at a
time with the same associations and batches, then Hearth alone with a large
data set. Writes <target dir>/bench/report.md and prints it. The servers'
directories and logs are left in <target dir>/bench/ until the next run.

options:
  --quick            a short run for trying things: 10000 associations,
                     100000 in the large scenario, 1 s warm-up, 5 s measured
  --associations N   associations both servers hold (default 100000)
  --large N          associations in the Hearth-only scenario
                     (default 1000000; 0 skips the scenario)
  --batch N          addresses per lookup, half bound, half not (default 1000)
  --concurrency N    connections, each with one request in flight (default 4)
  --warmup SECS      unmeasured load before each measurement (default 2)
  --duration SECS    measured time per server (default 20)
  --only SECTION     run one section: lookups (against Sydent) or notary
                     (cached key queries against Synapse)
  -h, --help         show this message

HEARTH_BIN=path    measure that binary instead of building one";

/// The sections a run can be limited to.
const SECTIONS: &[&str] = &["lookups", "notary"];

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    pub(crate) associations: usize,
    pub(crate) large: usize,
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) quick: bool,
    /// One section alone, or every section.
    pub(crate) only: Option<String>,
}

impl Options {
    /// The numbers the issue asks for.
    fn full() -> Self {
        Self {
            associations: 100_000,
            large: 1_000_000,
            batch: 1_000,
            concurrency: 4,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(20),
            quick: false,
            only: None,
        }
    }

    fn quick() -> Self {
        Self {
            associations: 10_000,
            large: 100_000,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            quick: true,
            ..Self::full()
        }
    }

    /// The options, or `None` when help was asked for. `--quick` sets the
    /// defaults, wherever it stands; other flags override them.
    pub(crate) fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut options = if args.iter().any(|arg| arg == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .or_else(|| args.next().map(String::as_str))
                    .with_context(|| format!("{flag} needs a value"))
            };
            match flag {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--associations" => options.associations = number(flag, value()?)?,
                "--large" => options.large = number(flag, value()?)?,
                "--batch" => options.batch = number(flag, value()?)?,
                "--concurrency" => options.concurrency = number(flag, value()?)?,
                "--warmup" => options.warmup = seconds(flag, value()?)?,
                "--duration" => options.duration = seconds(flag, value()?)?,
                "--only" => options.only = Some(value()?.to_owned()),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        options.validate()?;
        Ok(Some(options))
    }

    /// Whether `section` is part of this run.
    pub(crate) fn runs(&self, section: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == section)
    }

    fn validate(&self) -> Result<()> {
        if let Some(only) = &self.only
            && !SECTIONS.contains(&only.as_str())
        {
            bail!("--only takes one of {SECTIONS:?}, not {only:?}");
        }
        if self.associations == 0 || self.batch < 2 || self.concurrency == 0 {
            bail!("--associations and --concurrency must be at least 1, --batch at least 2");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        Ok(())
    }
}

fn number(flag: &str, value: &str) -> Result<usize> {
    value
        .replace('_', "")
        .parse()
        .with_context(|| format!("{flag} takes a whole number, not {value:?}"))
}

fn seconds(flag: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value
        .parse()
        .with_context(|| format!("{flag} takes seconds, not {value:?}"))?;
    Duration::try_from_secs_f64(secs).with_context(|| format!("{flag} {value} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::Options;
    use std::time::Duration;

    fn parse(list: &[&str]) -> anyhow::Result<Option<Options>> {
        let args: Vec<String> = list.iter().map(|arg| (*arg).to_owned()).collect();
        Options::parse(&args)
    }

    #[test]
    fn defaults_are_the_issues_numbers() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!(options, Options::full());
        assert_eq!(options.associations, 100_000);
        assert_eq!(options.large, 1_000_000);
        assert_eq!(options.batch, 1_000);
        assert_eq!(options.concurrency, 4);
    }

    #[test]
    fn explicit_flags_win_over_quick_in_either_order() {
        let options = parse(&["--duration", "7", "--quick", "--large=0"])
            .unwrap()
            .unwrap();
        assert!(options.quick);
        assert_eq!(options.associations, 10_000);
        assert_eq!(options.large, 0);
        assert_eq!(options.duration, Duration::from_secs(7));
        assert_eq!(
            parse(&["--warmup=0.5"]).unwrap().unwrap().warmup,
            Duration::from_millis(500)
        );
        assert_eq!(
            parse(&["--associations", "1_000"])
                .unwrap()
                .unwrap()
                .associations,
            1_000
        );
    }

    #[test]
    fn bad_input_is_refused_and_help_is_not_a_run() {
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--concurrency"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--batch", "many"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
        assert!(parse(&["--fast"]).is_err());
    }
}
