//! Starting Hearth: storage, keys, the routers of the enabled services on the
//! public listener, `/health` and `/metrics` on the admin listener, and a
//! graceful stop on SIGTERM or SIGINT.

use crate::cli::Only;
use crate::config::Config;
use crate::keys::load_or_create;
use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hearth_core::http::{Listener, load_tls, public_app, serve};
use hearth_core::keys::SigningKey;
use hearth_core::storage::{Backend, Database};
use hearth_federation::FederationClient;
use hearth_federation::client::Origin;
use hearth_federation::connect::SystemDns;
use http::StatusCode;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Opens the configured database and brings its schema up to date.
pub(crate) async fn open_database(config: &Config) -> anyhow::Result<Database> {
    create_data_dir(&config.data_dir)?;
    let url = config.database_url()?;
    let db = Database::connect(
        url.expose(),
        config.database.max_connections,
        config.database.busy_timeout.0,
    )
    .await?;
    db.migrate().await?;
    Ok(db)
}

/// The data directory holds the signing key and personal data: owner only.
fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating data_dir {}", dir.display()))
}

/// The identity service's state, for commands that manage its data.
pub(crate) async fn identity_for_cli(
    config: &Config,
) -> anyhow::Result<hearth_identity::IdentityState> {
    let db = open_database(config).await?;
    let (signing_keys, _) = load_or_create(config)?;
    let federation = federation_client(
        config,
        Some(Origin {
            server_name: config.server_name.clone(),
            key: signing_keys[0].clone(),
        }),
    )?;
    identity(config, &signing_keys, db, federation)
}

fn identity(
    config: &Config,
    signing_keys: &[SigningKey],
    db: Database,
    federation: FederationClient,
) -> anyhow::Result<hearth_identity::IdentityState> {
    hearth_identity::build(
        config.server_name.clone(),
        signing_keys[0].clone(),
        db,
        federation,
        config.identity.clone(),
    )
    .map_err(|e| anyhow::anyhow!("identity: {e}"))
}

/// Validates what can be checked without binding or writing anything:
/// TLS files load, federation settings build a client.
pub(crate) fn check(config: &Config) -> anyhow::Result<()> {
    if let Some(files) = config.tls_files()? {
        load_tls(&files).map_err(|e| anyhow::anyhow!("http TLS: {e}"))?;
    }
    federation_client(config, None)?;
    if config.identity.enabled {
        hearth_identity::check(&config.server_name, &config.identity)
            .map_err(|e| anyhow::anyhow!("identity: {e}"))?;
    }
    Ok(())
}

fn federation_client(config: &Config, origin: Option<Origin>) -> anyhow::Result<FederationClient> {
    let dns = SystemDns::new().context("reading the system DNS configuration")?;
    FederationClient::new(&config.federation, Arc::new(dns), origin)
        .map_err(|e| anyhow::anyhow!("federation: {e}"))
}

pub(crate) async fn run(mut config: Config, only: Only) -> anyhow::Result<()> {
    if only != Only::All {
        config.identity.enabled &= only == Only::Identity;
        config.integrations.enabled &= only == Only::Integrations;
        config.notary.enabled &= only == Only::Notary;
        config.turn.enabled &= only == Only::Turn;
    }
    let db = open_database(&config)
        .await
        .context("opening the database")?;
    let (signing_keys, created) = load_or_create(&config)?;
    if created {
        tracing::info!(path = %config.signing_key_path().display(), "generated a new signing key; back it up");
    }
    let old_verify_keys = db.old_verify_keys().await?;
    let metrics = hearth_core::metrics::install();

    let federation = federation_client(
        &config,
        Some(Origin {
            server_name: config.server_name.clone(),
            key: signing_keys[0].clone(),
        }),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();

    let mut routes = Router::new();
    let mut served = Vec::new();
    if config.identity.enabled {
        let identity = identity(&config, &signing_keys, db.clone(), federation.clone())?;
        routes = routes.merge(hearth_identity::router(identity.clone()));
        tasks.spawn(hearth_identity::run_background(identity.clone(), stopped()));
        tasks.spawn(hearth_identity::run_outbox(identity, stopped()));
        served.push("identity (/_matrix/identity)");
    }
    if config.notary.enabled {
        routes = routes.merge(hearth_notary::router(Arc::new(hearth_notary::Notary {
            server_name: config.server_name.clone(),
            signing_keys: signing_keys.clone(),
            old_verify_keys,
            config: config.notary.clone(),
        })));
        served.push("notary (/_matrix/key/v2/server)");
    }
    let not_built: Vec<&str> = [
        ("integrations", config.integrations.enabled),
        ("turn", config.turn.enabled),
    ]
    .into_iter()
    .filter_map(|(name, enabled)| enabled.then_some(name))
    .collect();

    let tls = config
        .tls_files()?
        .map(|files| load_tls(&files))
        .transpose()
        .map_err(|e| anyhow::anyhow!("http TLS: {e}"))?;
    // TURN has no HTTP side, so `hearth turn` opens no public HTTP listener.
    let public_bind = if only == Only::Turn {
        Vec::new()
    } else {
        config.http.bind.clone()
    };
    let mut public = Vec::new();
    for addr in &public_bind {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding http.bind {addr}"))?;
        public.push(Listener {
            tcp,
            tls: tls.clone(),
        });
    }
    let admin_tcp = TcpListener::bind(config.admin.bind)
        .await
        .with_context(|| format!("binding admin.bind {}", config.admin.bind))?;
    let admin = Router::new()
        .route("/health", get(health))
        .with_state(db.clone())
        .merge(Router::new().route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        ));

    tracing::info!(
        "{}",
        summary(&config, &public, &admin_tcp, &served, &not_built, &db)?
    );

    let app = public_app(routes, &config.http);
    for listener in public {
        tasks.spawn(serve(listener, app.clone(), stopped()));
    }
    tasks.spawn(serve(
        Listener {
            tcp: admin_tcp,
            tls: None,
        },
        admin,
        stopped(),
    ));
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn health(State(db): State<Database>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match db.ping().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "database unreachable"})),
            )
        }
    }
}

/// The start-up block: what is served where, as whom, and what production
/// would still need.
fn summary(
    config: &Config,
    public: &[Listener],
    admin: &TcpListener,
    served: &[&str],
    not_built: &[&str],
    db: &Database,
) -> anyhow::Result<String> {
    let scheme = if config.http.tls_certificate.is_some() {
        "https"
    } else {
        "http"
    };
    let mut s = format!(
        "Hearth {} serving as server_name {:?}",
        env!("CARGO_PKG_VERSION"),
        config.server_name.as_str()
    );
    for listener in public {
        write!(s, "\n  public  {scheme}://{}", listener.local_addr()?)?;
    }
    if !served.is_empty() {
        write!(s, "\n  serves  {}", served.join(", "))?;
    }
    if !not_built.is_empty() {
        write!(
            s,
            "\n  enabled but not in this build yet: {}",
            not_built.join(", ")
        )?;
    }
    write!(
        s,
        "\n  admin   http://{} (/health, /metrics)",
        admin.local_addr()?
    )?;
    let storage = match db.backend() {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    write!(
        s,
        "\n  data    {} ({storage}), signing key {}",
        config.data_dir.display(),
        config.signing_key_path().display()
    )?;
    let mut todo = Vec::new();
    let name = config.server_name.hostname();
    if name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        todo.push("set server_name to the public hostname homeservers use for this service");
    }
    if config.http.tls_certificate.is_none() {
        todo.push("serve HTTPS: set http.tls_certificate and http.tls_private_key, or put a TLS reverse proxy in front");
    }
    if public
        .iter()
        .all(|l| l.local_addr().is_ok_and(|a| a.ip().is_loopback()))
        && config.http.tls_certificate.is_some()
    {
        todo.push("listen on a public address (http.bind)");
    }
    if config.identity.enabled {
        let identity = &config.identity;
        if identity.auth.terms.policies.is_empty() {
            todo.push("publish terms of service for the identity server (identity.auth.terms)");
        }
        if identity.email.from == hearth_identity::EmailConfig::default().from {
            todo.push("set identity.email (SMTP server and From address) for validation mails");
        }
        if identity.sms.sender == hearth_identity::SmsSender::Log {
            todo.push("choose an SMS sender (identity.sms.sender) to validate phone numbers");
        }
    }
    todo.push("back up the signing key file");
    write!(s, "\n  for production: {}", todo.join("; "))?;
    Ok(s)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
