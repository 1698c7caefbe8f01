//! Starting Hearth: storage, keys, the routers of the enabled services on the
//! public listener, `/health` and `/metrics` on the admin listener, a
//! reload on SIGHUP (`crate::reload`), and a graceful stop on SIGTERM or
//! SIGINT.

use crate::config::Config;
use crate::reload::Reloader;
use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hearth_core::http::{Listener, public_app, serve, tls_acceptor};
use hearth_core::keys::KeyRing;
use hearth_core::storage::{Backend, Database};
use hearth_core::tls::ServerCert;
use hearth_federation::FederationClient;
use hearth_federation::client::Origin;
use hearth_federation::connect::SystemDns;
use hearth_service::{Context, Service, Shutdown};
use http::StatusCode;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The services in this build, as their config sections. Adding a service
/// is one line here (and its section in [`Config`]).
pub(crate) fn services(config: &Config) -> Vec<&dyn Service> {
    vec![
        &config.identity,
        &config.integrations,
        &config.notary,
        &config.turn,
    ]
}

/// Opens the configured database and brings every service's tables up to
/// date, whether enabled or not, so enabling one later needs no step.
/// Returns what was applied.
pub(crate) async fn open_database(config: &Config) -> anyhow::Result<(Database, Vec<String>)> {
    create_data_dir(&config.data_dir)?;
    let url = config.database_url()?;
    let db = Database::connect(
        url.expose(),
        config.database.max_connections,
        config.database.busy_timeout.0,
    )
    .await?;
    let mut applied = db.migrate(&hearth_core::storage::SCHEMA).await?;
    for service in services(config) {
        applied.extend(db.migrate(service.schema()).await?);
    }
    Ok((db, applied))
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

/// The shared context, as `serve` builds it, for commands that manage a
/// service's data. Its shutdown is never triggered.
pub(crate) async fn context(config: &Config) -> anyhow::Result<Context> {
    let (db, _) = open_database(config).await?;
    let (keys, created) = KeyRing::load_or_create(&config.signing_key_path(), &db).await?;
    if created {
        tracing::info!(path = %config.signing_key_path().display(), "generated a new signing key; back it up");
    }
    let federation = federation_client(
        config,
        Some(Origin {
            server_name: config.server_name.clone(),
            key: keys.signing_key()?.clone(),
        }),
    )?;
    let (_, shutdown) = Shutdown::new();
    Ok(Context::new(
        config.server_name.clone(),
        keys,
        db,
        federation,
        config.http.clone(),
        config.data_dir.clone(),
        shutdown,
    ))
}

/// Validates what can be checked without binding or writing anything:
/// TLS files load, federation settings build a client, and each enabled
/// service accepts its section.
pub(crate) fn check(config: &Config) -> anyhow::Result<()> {
    if let Some(files) = config.tls_files()? {
        ServerCert::read(&files).map_err(|e| anyhow::anyhow!("http TLS: {e}"))?;
    }
    federation_client(config, None)?;
    for service in services(config).into_iter().filter(|s| s.enabled()) {
        service
            .check(&config.server_name)
            .with_context(|| format!("[{}]", service.name()))?;
    }
    Ok(())
}

fn federation_client(config: &Config, origin: Option<Origin>) -> anyhow::Result<FederationClient> {
    let dns =
        SystemDns::new(&config.federation.dns_servers).context("setting up DNS resolution")?;
    FederationClient::new(&config.federation, Arc::new(dns), origin)
        .map_err(|e| anyhow::anyhow!("federation: {e}"))
}

/// Runs every enabled service, or only the one named `only`, reloading
/// what `reloader` can on SIGHUP.
pub(crate) async fn run(
    config: Config,
    only: Option<&str>,
    mut reloader: Reloader,
) -> anyhow::Result<()> {
    // Before the slow part of start-up: SIGHUP would otherwise end the
    // process, and one arriving now is served once it runs.
    let mut hangups = Hangups::listen()?;
    let runs_here = |s: &dyn Service| s.enabled() && only.is_none_or(|name| name == s.name());
    let enabled: Vec<&dyn Service> = services(&config)
        .into_iter()
        .filter(|s| runs_here(*s))
        .collect();
    if only.is_some() {
        for service in services(&config).into_iter().filter(|s| !runs_here(*s)) {
            reloader.ignore(service.name());
        }
    }
    if enabled.is_empty() {
        match only {
            Some(name) => bail!("the {name} service is disabled ({name}.enabled = false)"),
            None => bail!("no service is enabled: set <service>.enabled = true for at least one"),
        }
    }
    let mut ctx = context(&config)
        .await
        .context("opening the database and keys")?;
    let (stop, shutdown) = Shutdown::new();
    ctx.shutdown = shutdown.clone();
    let metrics = hearth_core::metrics::install();

    let mut tasks = tokio::task::JoinSet::new();
    let mut routes = Vec::new();
    let mut served = Vec::new();
    let mut advice = Vec::new();
    for service in enabled {
        let parts = service
            .build(&ctx)
            .await
            .with_context(|| format!("starting the {} service", service.name()))?;
        routes.extend(parts.routes.map(|r| (r.router, r.policy)));
        for task in parts.tasks {
            tracing::debug!(task = task.name, "starting");
            tasks.spawn(task.run);
        }
        served.extend(parts.summary);
        advice.extend(parts.advice);
        reloader.service(service.name(), parts.reload);
    }

    let cert = config
        .tls_files()?
        .map(|files| ServerCert::load(&files))
        .transpose()
        .map_err(|e| anyhow::anyhow!("http TLS: {e}"))?;
    let tls = cert.as_ref().map(tls_acceptor);
    // Services without HTTP routes (TURN) need no public HTTP listener.
    let public_bind = if routes.is_empty() {
        reloader.ignore("http");
        Vec::new()
    } else {
        if let Some(cert) = cert {
            reloader.http_tls(cert);
        }
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
    let mut admin_tcp = Vec::new();
    for addr in &config.admin.bind.0 {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin.bind {addr}"))?;
        admin_tcp.push(tcp);
    }
    let admin = Router::new()
        .route("/health", get(health))
        .with_state(ctx.db.clone())
        .merge(Router::new().route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        ));

    advice.extend(common_advice(&config, &public));
    tracing::info!(
        "{}",
        summary(&config, &public, &admin_tcp, &served, &advice, &ctx.db)?
    );

    let app = public_app(routes, &config.http);
    for listener in public {
        tasks.spawn(serve(listener, app.clone(), shutdown.wait()));
    }
    for tcp in admin_tcp {
        let listener = Listener { tcp, tls: None };
        tasks.spawn(serve(listener, admin.clone(), shutdown.wait()));
    }
    let stop_signal = shutdown_signal();
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            () = &mut stop_signal => break,
            () = hangups.next() => reloader.on_hangup(),
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    stop.trigger();
    while tasks.join_next().await.is_some() {}
    ctx.db.close().await;
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

/// What production still needs whatever the services: a public name,
/// HTTPS, a public address, a backed-up key.
fn common_advice(config: &Config, public: &[Listener]) -> Vec<String> {
    let mut advice = Vec::new();
    let name = config.server_name.hostname();
    if name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        advice.push(
            "set server_name to the public hostname homeservers use for this service".to_owned(),
        );
    }
    if !public.is_empty() && config.http.tls_certificate.is_none() {
        advice.push("serve HTTPS: set http.tls_certificate and http.tls_private_key, or put a TLS reverse proxy in front".to_owned());
    }
    if !public.is_empty()
        && public
            .iter()
            .all(|l| l.local_addr().is_ok_and(|a| a.ip().is_loopback()))
        && config.http.tls_certificate.is_some()
    {
        advice.push("listen on a public address (http.bind)".to_owned());
    }
    advice.push("back up the signing key file".to_owned());
    advice
}

/// The start-up block: what is served where, as whom, and what production
/// would still need.
fn summary(
    config: &Config,
    public: &[Listener],
    admin: &[TcpListener],
    served: &[String],
    advice: &[String],
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
    for line in served {
        write!(s, "\n  serves  {line}")?;
    }
    for listener in admin {
        write!(
            s,
            "\n  admin   http://{} (/health, /metrics)",
            listener.local_addr()?
        )?;
    }
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
    s.push_str("\n  for production:");
    for item in advice {
        write!(s, "\n    - {item}")?;
    }
    Ok(s)
}

/// Reload requests: SIGHUP, as `systemctl reload` and `docker kill -s HUP`
/// send it.
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("listening for SIGHUP")?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Issue "service contract": every service of this build, enabled and
    /// built on one shared context in one process, merges into one public
    /// app (axum panics on overlapping routes), and each serves its own
    /// policy documents under its own namespace.
    #[tokio::test]
    async fn every_service_builds_on_one_context_without_colliding_routes() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.html");
        std::fs::write(&policy, "<p>Be kind.</p>").unwrap();
        let mut toml = format!("data_dir = {:?}\n", dir.path().join("data"));
        for service in services(&Config::default()) {
            toml.push_str(&format!("[{}]\nenabled = true\n", service.name()));
            if service.name() == "turn" {
                // On loopback ports of its own choosing, with a secret.
                toml.push_str(
                    "shared_secret = \"s\"\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\ntls = []\n",
                );
            }
        }
        // Identity and the integration manager each have policies of the
        // same id: their documents live under each service's namespace.
        for service in ["identity", "integrations"] {
            toml.push_str(&format!(
                "[{service}.auth.terms.policies.rules]\nversion = \"1\"\n\
                 [{service}.auth.terms.policies.rules.languages.en]\nname = \"Rules\"\nfile = {policy:?}\n"
            ));
        }
        let file = dir.path().join("hearth.toml");
        std::fs::write(&file, toml).unwrap();
        let config = Config::load(Some(&file)).unwrap();

        let ctx = context(&config).await.unwrap();
        let mut routes = Vec::new();
        for service in services(&config) {
            assert!(service.enabled(), "{}", service.name());
            let parts = service.build(&ctx).await.unwrap();
            routes.extend(parts.routes.map(|r| (r.router, r.policy)));
        }
        let app = public_app(routes, &config.http);
        for (path, status) in [
            ("/_hearth/terms/identity/rules/1/en", StatusCode::OK),
            ("/_hearth/terms/integrations/rules/1/en", StatusCode::OK),
            ("/_matrix/integrations/v1/terms", StatusCode::OK),
            ("/_matrix/key/v2/server", StatusCode::OK),
            ("/_matrix/identity/v2", StatusCode::OK),
            ("/_hearth/terms/identity/rules/2/en", StatusCode::NOT_FOUND),
        ] {
            let response = app
                .clone()
                .oneshot(
                    http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path}");
        }
        ctx.db.close().await;
    }
}
