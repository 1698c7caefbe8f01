//! Subcommands. Each loads the same config; service commands run one
//! service alone on the shared listeners.

use crate::config::{Config, EXAMPLE};
use crate::reload::Reloader;
use crate::{audit, health, keys, serve, wiring};
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use hearth_core::ids::UserId;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Hearth: the identity server, integration manager, key notary and
/// TURN server a Matrix homeserver needs, in one binary.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Config file (TOML). Without one, Hearth runs on embedded defaults.
    #[arg(long, short, global = true, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every enabled service.
    Serve,
    /// Run only the identity service, or manage its data.
    Identity {
        #[command(subcommand)]
        command: Option<IdentityCommand>,
    },
    /// Run only the integration manager, or manage its data.
    Integrations {
        #[command(subcommand)]
        command: Option<IntegrationsCommand>,
    },
    /// Run only the key notary.
    Notary,
    /// Run only the TURN/STUN server, or print credentials.
    Turn {
        #[command(subcommand)]
        command: Option<TurnCommand>,
    },
    /// Inspect and validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Apply database migrations, then exit.
    Migrate,
    /// Manage the server's ed25519 signing keys (Synapse `signing.key` format).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Probe the admin listener's /health; exit 0 when healthy, 1 when not.
    Health,
    /// Print config snippets that point a homeserver and clients at Hearth.
    ///
    /// Synapse's homeserver.yaml, the homeserver's /.well-known/matrix/client,
    /// Element's config.json and LiveKit's TURN servers. Secrets are printed
    /// only where the snippet needs them (an inline TURN secret for Synapse,
    /// credentials for LiveKit), marked.
    HomeserverConfig {
        /// Which snippet to print.
        #[arg(value_enum, default_value = "all")]
        target: wiring::Target,
        /// The homeserver's client URL, for m.homeserver in the well-known
        /// and Element snippets, e.g. https://matrix.example.org.
        #[arg(long)]
        homeserver_url: Option<String>,
        /// The homeserver's server name, for Element's m.homeserver.
        #[arg(long)]
        homeserver_name: Option<String>,
        /// How long the TURN credentials in the LiveKit snippet last.
        #[arg(long, default_value_t = 90, value_name = "DAYS")]
        livekit_days: u64,
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// List third-party services a Synapse or Element config depends on.
    ///
    /// Each comes with the change that points it at Hearth. Exits 1 when any
    /// is found (so it can run in CI), 2 when a file cannot be read.
    #[command(arg_required_else_help = true)]
    Audit {
        /// Synapse's homeserver.yaml.
        #[arg(long, value_name = "FILE")]
        synapse: Option<PathBuf>,
        /// Element Web's config.json.
        #[arg(long, value_name = "FILE")]
        element: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), for packages.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Subcommand)]
enum IntegrationsCommand {
    /// Print everything the integration manager holds about a user as JSON
    /// (GDPR access request).
    Export { user_id: String },
    /// Erase it: tokens, accepted terms, sticker asset state (GDPR erasure
    /// request).
    Forget { user_id: String },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Print everything held about a user as JSON (GDPR access request).
    Export { user_id: String },
    /// Erase everything held about a user: bindings, invites they sent,
    /// tokens, accepted terms (GDPR erasure request).
    Forget { user_id: String },
    /// Move a Sydent deployment here: its bindings, pending invites and
    /// ephemeral keys from sydent.db, and its signing key from sydent.conf
    /// (so associations Sydent signed stay valid).
    ImportSydent {
        /// Sydent's SQLite database.
        database: PathBuf,
        /// Sydent's config, for its signing key [default: sydent.conf beside the database].
        #[arg(long)]
        sydent_config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TurnCommand {
    /// Print TURN credentials for a user as Synapse hands them out
    /// (`/voip/turnServer`): URIs, username, password and lifetime, as JSON.
    /// The password is a secret for that user: share it with them only.
    Credentials {
        /// The Matrix ID the credentials are for.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the example config, with every key documented.
    Example,
    /// Validate a config (FILE, else --config) without starting anything.
    Check { file: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new signing key; the current one is kept as an old verify key.
    Generate,
    /// Show the current and old public keys.
    Show,
    /// Use the key(s) from a Synapse-format key file; current ones are retired.
    Import { file: PathBuf },
    /// Print the current signing key file (secret!) in Synapse's format.
    Export,
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_path = cli.config;
    let load = |path: Option<&PathBuf>| Config::load(path.map(PathBuf::as_path));
    let only = match cli.command {
        Command::Serve => None,
        Command::Identity { command: None } => Some("identity"),
        Command::Identity {
            command: Some(command),
        } => {
            let config = load(config_path.as_ref())?;
            identity_command(&config, command, &mut std::io::stdout()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Integrations { command: None } => Some("integrations"),
        Command::Integrations {
            command: Some(command),
        } => {
            let config = load(config_path.as_ref())?;
            integrations_command(&config, command, &mut std::io::stdout()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Notary => Some("notary"),
        Command::Turn { command: None } => Some("turn"),
        Command::Turn {
            command: Some(TurnCommand::Credentials { user }),
        } => {
            let config = load(config_path.as_ref())?;
            let user = UserId::parse(&user)?;
            let credentials = config
                .turn
                .credentials(user.as_str(), std::time::SystemTime::now())?;
            let mut out = std::io::stdout();
            serde_json::to_writer_pretty(&mut out, &credentials)?;
            writeln!(out)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(ConfigCommand::Example) => {
            std::io::stdout().write_all(EXAMPLE.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let path = file.or(config_path);
            let config = load(path.as_ref())?;
            serve::check(&config)?;
            let mut name = path.map_or_else(
                || "embedded defaults".to_owned(),
                |p| p.display().to_string(),
            );
            // The environment overlays the file, so say when it took part.
            if std::env::vars().any(|(k, _)| k.starts_with("HEARTH_") && k != "HEARTH_CONFIG") {
                name.push_str(" with HEARTH_* environment overrides");
            }
            writeln!(std::io::stdout(), "config OK: {name}")?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Migrate => {
            let config = load(config_path.as_ref())?;
            let (db, applied) = serve::open_database(&config).await?;
            db.close().await;
            let mut out = std::io::stdout();
            if applied.is_empty() {
                writeln!(out, "database is up to date")?;
            }
            for migration in applied {
                writeln!(out, "applied {migration}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Keys(command) => {
            let config = load(config_path.as_ref())?;
            let mut out = std::io::stdout();
            match command {
                KeysCommand::Generate => keys::generate(&config, &mut out).await?,
                KeysCommand::Show => keys::show(&config, &mut out).await?,
                KeysCommand::Import { file } => keys::import(&config, &file, &mut out).await?,
                KeysCommand::Export => keys::export(&config, &mut out)?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Health => {
            let config = load(config_path.as_ref())?;
            return Ok(health::probe(&config).await);
        }
        Command::HomeserverConfig {
            target,
            homeserver_url,
            homeserver_name,
            livekit_days,
            output,
        } => {
            let config = load(config_path.as_ref())?;
            let homeserver = homeserver_url.map(|base_url| wiring::Homeserver {
                base_url,
                server_name: homeserver_name,
            });
            let livekit = std::time::Duration::from_secs(livekit_days.saturating_mul(86_400));
            let text = wiring::Wiring::from_config(&config, homeserver, livekit)?.render(target);
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Audit { synapse, element } => {
            let config = load(config_path.as_ref())?;
            // 1 means "found something"; a file that cannot be read is 2, so
            // CI can tell the two apart.
            return Ok(
                match audit::run(
                    &config,
                    synapse.as_deref(),
                    element.as_deref(),
                    &mut std::io::stdout(),
                ) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::from(2)
                    }
                },
            );
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hearth", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Manpage => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (config, sources) =
        Config::load_with_sources(config_path.as_deref()).context("loading the config")?;
    let logging = crate::logging::init(&config.log)?;
    warn_if_others_may_read(&config);
    let reloader = Reloader::new(config_path, config.clone(), sources, Some(logging));
    serve::run(config, only, reloader).await?;
    Ok(ExitCode::SUCCESS)
}

async fn identity_command(
    config: &Config,
    command: IdentityCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        IdentityCommand::Export { user_id } => {
            let identity = identity(config).await?;
            let data = hearth_identity::export(&identity, &UserId::parse(&user_id)?).await?;
            serde_json::to_writer_pretty(&mut *out, &data)?;
            writeln!(out)?;
        }
        IdentityCommand::Forget { user_id } => {
            let identity = identity(config).await?;
            let user_id = UserId::parse(&user_id)?;
            // Read first, so the operator is not told something was erased
            // for a user (or a mistyped id) that had nothing.
            let held = hearth_identity::export(&identity, &user_id).await?;
            hearth_identity::forget(&identity, &user_id).await?;
            if holds_nothing(&held) {
                writeln!(out, "nothing was held about {user_id}")?;
            } else {
                writeln!(out, "erased everything held about {user_id}")?;
            }
        }
        IdentityCommand::ImportSydent {
            database,
            sydent_config,
        } => {
            let conf = sydent_config.unwrap_or_else(|| database.with_file_name("sydent.conf"));
            let key = hearth_identity::sydent_signing_key(&conf)?;
            // The data first: it can be imported again, so a failure here
            // leaves Hearth signing with its own key, as before.
            let (db, _) = serve::open_database(config).await?;
            let report = hearth_identity::import_sydent(&db, &database).await?;
            db.close().await;
            keys::import_keys(config, key, out).await?;
            writeln!(
                out,
                "imported {} bindings, {} pending invites, {} ephemeral keys ({} rows skipped)",
                report.associations, report.invites, report.ephemeral_keys, report.skipped
            )?;
        }
    }
    Ok(())
}

/// Whether an export lists no binding, invite, token or acceptance.
async fn integrations_command(
    config: &Config,
    command: IntegrationsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let ctx = serve::context(config).await?;
    let state = hearth_integrations::build(&config.integrations, &ctx)?;
    match command {
        IntegrationsCommand::Export { user_id } => {
            let user_id = UserId::parse(&user_id)?;
            let data = hearth_integrations::export(&state, &user_id).await?;
            serde_json::to_writer_pretty(&mut *out, &data)?;
            writeln!(out)?;
        }
        IntegrationsCommand::Forget { user_id } => {
            let user_id = UserId::parse(&user_id)?;
            let held = hearth_integrations::export(&state, &user_id).await?;
            hearth_integrations::forget(&state, &user_id).await?;
            if holds_nothing(&held) {
                writeln!(out, "nothing was held about {user_id}")?;
            } else {
                writeln!(out, "erased everything held about {user_id}")?;
            }
        }
    }
    ctx.db.close().await;
    Ok(())
}

/// Whether an export (identity's or the integration manager's) lists
/// nothing about the user.
fn holds_nothing(export: &serde_json::Value) -> bool {
    let empty = |value: &serde_json::Value| match value {
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Number(n) => n.as_i64() == Some(0),
        serde_json::Value::Null => true,
        _ => false,
    };
    empty(&export["associations"])
        && empty(&export["pending_invites_sent"])
        && empty(&export["widget_assets"])
        && empty(&export["account"]["active_tokens"])
        && empty(&export["account"]["accepted_terms"])
}

/// The data directory holds the signing key, and by default the database:
/// say so at start-up when others on the host can read it.
fn warn_if_others_may_read(config: &Config) {
    let mut exposed = Vec::new();
    if hearth_core::storage::others_may_access(&config.data_dir) {
        exposed.push(config.data_dir.clone());
    }
    let key = config.signing_key_path();
    if hearth_core::storage::others_may_access(&key) {
        exposed.push(key);
    }
    for path in exposed {
        tracing::warn!(
            path = %path.display(),
            "others can read this, and it holds secrets: chmod o-rwx it"
        );
    }
}

/// The identity service on the shared context, for commands that manage
/// its data.
async fn identity(config: &Config) -> anyhow::Result<hearth_identity::IdentityState> {
    let ctx = serve::context(config).await?;
    Ok(hearth_identity::build(&config.identity, &ctx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 item 12: the OS error was printed twice, once in the
    /// message and once more as its source, when `main` printed the chain.
    #[tokio::test]
    async fn a_missing_key_file_names_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let err = keys::import(&Config::default(), &missing, &mut Vec::new())
            .await
            .unwrap_err();
        // As `main` prints it.
        let printed = format!("{err:#}");
        assert!(printed.contains(missing.to_str().unwrap()), "{printed}");
        assert_eq!(
            printed.matches("No such file or directory").count(),
            1,
            "{printed}"
        );
    }

    /// Issue 10 item 15: `identity forget` of a user with nothing held
    /// must not claim to have erased anything.
    #[test]
    fn an_export_with_nothing_in_it_holds_nothing() {
        let nothing = serde_json::json!({
            "user_id": "@unknown:example.org",
            "associations": [],
            "pending_invites_sent": [],
            "account": {"active_tokens": 0, "accepted_terms": []},
        });
        assert!(holds_nothing(&nothing));
        let mut token = nothing.clone();
        token["account"]["active_tokens"] = 1.into();
        assert!(!holds_nothing(&token));
        let mut bound = nothing;
        bound["associations"] = serde_json::json!([{"medium": "email"}]);
        assert!(!holds_nothing(&bound));
    }
}
