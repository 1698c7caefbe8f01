//! The service contract. The binary builds one [`Context`] and hands it to
//! every enabled [`Service`]; each service turns its config section and that
//! context into the same [`Parts`]: HTTP routes under their own
//! [`HttpPolicy`], background tasks (non-HTTP listeners such as TURN's are
//! tasks too), its lines in the start-up summary, and optionally a
//! [`Reload`] handle. The binary loops over its list of services and knows
//! nothing else about them.
//!
//! Reloading (SIGHUP) is two-phase so that it is all or nothing: the binary
//! re-reads the whole config, asks every running service's [`Reload`] to
//! [`prepare`](Reload::prepare) its new section (checking it and building
//! what it would swap in, changing nothing), and only when every service
//! and the binary's own parts prepared does it apply them all.

use axum::Router;
use hearth_core::config::HttpConfig;
pub use hearth_core::http::HttpPolicy;
use hearth_core::ids::ServerName;
use hearth_core::keys::KeyRing;
use hearth_core::storage::{Database, Schema};
use hearth_federation::{FederationClient, KeyStore, Outbound};
use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::sync::watch;

/// A boxed, sendable future: what tasks and `build` return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the binary builds once and shares with every service.
#[derive(Debug, Clone)]
pub struct Context {
    pub server_name: ServerName,
    /// Current signing keys (the first signs) and retired ones.
    pub keys: KeyRing,
    pub db: Database,
    /// Signs requests as `server_name`.
    pub federation: FederationClient,
    /// Other servers' verified keys, kept in the database.
    pub remote_keys: KeyStore,
    /// The guarded client for operator-named URLs (SMS gateways, upstream
    /// notaries, page titles): same address guard, time and size bounds.
    pub outbound: Outbound,
    /// The public listeners' settings; each service's [`HttpPolicy`]
    /// starts from them.
    pub http: HttpConfig,
    pub data_dir: PathBuf,
    pub shutdown: Shutdown,
}

impl Context {
    /// The context for `server_name` signing with `keys`: the remote-key
    /// store and the outbound client are derived from `federation`, so every
    /// service shares one of each.
    pub fn new(
        server_name: ServerName,
        keys: KeyRing,
        db: Database,
        federation: FederationClient,
        http: HttpConfig,
        data_dir: PathBuf,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            remote_keys: KeyStore::new(federation.clone(), db.clone()),
            outbound: federation.outbound(),
            server_name,
            keys,
            db,
            federation,
            http,
            data_dir,
            shutdown,
        }
    }
}

/// Resolves when the process is asked to stop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Stops every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Waits until shutdown was triggered (at once if it already was).
    /// Only [`ShutdownTrigger::trigger`] stops: a trigger dropped unused
    /// (commands that build a context but run no task) never does.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// A service's public HTTP routes and the policy they run under. Routes
/// never overlap another service's: each lives under its own prefixes.
#[derive(Debug)]
pub struct Routes {
    pub router: Router,
    pub policy: HttpPolicy,
}

/// A long-running piece of a service, stopped through [`Context::shutdown`].
pub struct Task {
    pub name: &'static str,
    pub run: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

impl Task {
    pub fn new(name: &'static str, run: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            name,
            run: Box::pin(run),
        }
    }
}

/// What a built service hands the binary.
#[derive(Debug, Default)]
pub struct Parts {
    pub routes: Option<Routes>,
    pub tasks: Vec<Task>,
    /// What it serves where, one line each (`"identity  /_matrix/identity/v2"`).
    pub summary: Vec<String>,
    /// What production still needs, one short item each.
    pub advice: Vec<String>,
    /// What of its section the service can apply while it runs.
    pub reload: Option<Box<dyn Reload>>,
}

/// A running service's reloadable state. Everything in its section outside
/// [`Reload::keys`] needs a restart, and the binary says so when it changes.
pub trait Reload: Send + Sync + std::fmt::Debug {
    /// The keys of the section a reload applies, relative to it
    /// (`"auth.terms"`, `"widgets"`); a key covers everything under it.
    fn keys(&self) -> &'static [&'static str];

    /// Checks `new`, the same service's freshly loaded section (see
    /// [`section`]), and builds what it would swap in, changing nothing
    /// that runs. An error leaves every service as it was.
    fn prepare(&self, new: &dyn Service) -> Result<Prepared, ServiceError>;
}

/// A reload that was checked and is ready to apply; applying cannot fail.
pub struct Prepared {
    /// What applying it swaps in, for the reload's log line ("terms").
    pub applies: Vec<String>,
    /// Keys that changed but that this process cannot apply (its listeners
    /// were opened without them), named in full for the operator.
    pub needs_restart: Vec<String>,
    apply: Box<dyn FnOnce() + Send>,
}

impl Prepared {
    pub fn new(applies: Vec<String>, apply: impl FnOnce() + Send + 'static) -> Self {
        Self {
            applies,
            needs_restart: Vec::new(),
            apply: Box::new(apply),
        }
    }

    /// Swaps the prepared state in; what it applied.
    pub fn commit(self) -> Vec<String> {
        (self.apply)();
        self.applies
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("applies", &self.applies)
            .field("needs_restart", &self.needs_restart)
            .finish_non_exhaustive()
    }
}

/// The section a [`Reload::prepare`] receives, as its own type. The binary
/// hands each service the section of the same name, so another type is a
/// bug, reported rather than applied.
pub fn section<T: Service>(new: &dyn Service) -> Result<&T, ServiceError> {
    let any: &dyn Any = new;
    any.downcast_ref::<T>().ok_or_else(|| {
        ServiceError::Config(format!(
            "a reload handed the [{}] section to the reload of {}",
            new.name(),
            std::any::type_name::<T>()
        ))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service's config section is wrong; the text names the key.
    #[error("{0}")]
    Config(String),
    /// Something it needs at start-up failed (binding a socket, storage).
    #[error("{0}")]
    Start(String),
}

/// One service, as the binary sees it. Implemented by the service's config
/// section, so the binary's list of services is its list of sections.
pub trait Service: Any + Send + Sync {
    /// The section name, also used by `hearth <name>`.
    fn name(&self) -> &'static str;
    fn enabled(&self) -> bool;
    /// The tables it needs, with those of the crates below it.
    fn schema(&self) -> &'static Schema;
    /// Checks the section without opening anything (`hearth config check`).
    fn check(&self, server_name: &ServerName) -> Result<(), ServiceError>;
    /// Builds the running parts. Listeners are bound here, so a port in use
    /// fails start-up instead of a task.
    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>>;
}
