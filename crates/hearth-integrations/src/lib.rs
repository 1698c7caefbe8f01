//! The integration manager Element talks to: the Scalar-compatible REST API
//! under `/api` (what Element's `ScalarAuthClient` calls), the MSC1961 and
//! MSC2140 routes under `/_matrix/integrations/v1`, the web UI Element
//! opens in its "Add widgets, bridges & bots" dialog, and the wrapper pages
//! the widgets of the catalog point at.
//!
//! Modules: `scalar` (register, account, widget helpers), `title` (the
//! guarded page fetch behind `title_lookup`), `assets` (sticker asset
//! state), `catalog` (widgets and bots from config), `ui` (the pages).
//! Bridges and sticker packs would be further modules beside `catalog`,
//! each with its own UI section.

mod assets;
mod catalog;
mod config;
mod gdpr;
mod scalar;
mod title;
mod ui;

pub use assets::get_state as asset_state;
pub use config::{BotConfig, Config, TitleLookupConfig, WidgetsConfig};
pub use gdpr::{export, forget};
pub use title::PageFetcher;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use hearth_auth::Auth;
use hearth_core::ids::ServerName;
use hearth_core::storage::{Database, Migration, Schema};
use hearth_service::{
    BoxFuture, Context, HttpPolicy, Parts, Prepared, Reload, Routes, Service, ServiceError,
};
use std::ops::Deref;
use std::sync::Arc;

/// This crate's tables, after those of `hearth-auth` (tokens, terms).
pub static SCHEMA: Schema = Schema {
    component: "integrations",
    depends_on: &[&hearth_auth::SCHEMA],
    migrations: &[Migration {
        description: "widget asset state",
        sql: include_str!("../migrations/0001_assets_state.sql"),
    }],
};

/// The name under which this service keeps tokens and terms acceptances.
pub const SERVICE: &str = "integrations";

/// Everything the handlers share.
#[derive(Debug)]
pub struct Integrations {
    pub server_name: ServerName,
    /// No trailing slash.
    pub public_base_url: String,
    pub db: Database,
    pub auth: Auth,
    /// The section as at start; the terms and the catalog follow reloads.
    pub config: Config,
    pub(crate) pages: PageFetcher,
    /// Replaced as a whole on reload.
    pub(crate) catalog: ArcSwap<catalog::Catalog>,
    pub(crate) ui: ui::Pages,
    pub(crate) titles: scalar::TitleCache,
}

/// The router state: a cheap handle on [`Integrations`].
#[derive(Debug, Clone)]
pub struct IntegrationsState(pub Arc<Integrations>);

impl Deref for IntegrationsState {
    type Target = Integrations;
    fn deref(&self) -> &Integrations {
        &self.0
    }
}

impl FromRef<IntegrationsState> for Auth {
    fn from_ref(state: &IntegrationsState) -> Auth {
        state.auth.clone()
    }
}

fn public_base_url(server_name: &ServerName, config: &Config) -> String {
    config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("https://{server_name}"))
        .trim_end_matches('/')
        .to_owned()
}

/// The catalog of `config`, its widget pages under `public_base_url`.
fn new_catalog(config: &Config, public_base_url: &str) -> Result<catalog::Catalog, ServiceError> {
    catalog::Catalog::new(&config.widgets, &config.bots, public_base_url)
        .map_err(|e| ServiceError::Config(format!("integrations.{e}")))
}

/// Checks the config without opening anything (for `hearth config check`):
/// the base URL, terms, catalog (bot avatars included) and templates.
pub fn check(server_name: &ServerName, config: &Config) -> Result<(), ServiceError> {
    let base = public_base_url(server_name, config);
    url::Url::parse(&base)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.path() == "/")
        .ok_or_else(|| {
            ServiceError::Config(format!(
                "integrations.public_base_url {base:?}: give an http(s) URL with no path; \
                 Element calls the terms API at the root of the REST URL's host"
            ))
        })?;
    hearth_auth::Terms::new(SERVICE, &config.auth.terms, &base).map_err(ServiceError::Config)?;
    new_catalog(config, &base)?;
    ui::Pages::new(config.templates_dir.as_deref())?;
    Ok(())
}

/// Builds the service from its section and the shared context: tokens and
/// terms through `hearth-auth`, page titles through the guarded outbound
/// client.
pub fn build(config: &Config, ctx: &Context) -> Result<IntegrationsState, ServiceError> {
    check(&ctx.server_name, config)?;
    let public_base_url = public_base_url(&ctx.server_name, config);
    let auth = Auth::new(
        SERVICE,
        ctx.db.clone(),
        ctx.federation.clone(),
        &config.auth,
        &public_base_url,
        // Element sends the token as `?scalar_token=` to every legacy route;
        // MSC1961 allows `?access_token=` beside the Bearer header.
        &["scalar_token", "access_token"],
    )
    .map_err(ServiceError::Config)?;
    let catalog = new_catalog(config, &public_base_url)?;
    let ui = ui::Pages::new(config.templates_dir.as_deref())?;
    Ok(IntegrationsState(Arc::new(Integrations {
        server_name: ctx.server_name.clone(),
        pages: PageFetcher::new(ctx.outbound.clone(), &config.title_lookup),
        db: ctx.db.clone(),
        auth,
        catalog: ArcSwap::from_pointee(catalog),
        ui,
        titles: scalar::TitleCache::default(),
        public_base_url,
        config: config.clone(),
    })))
}

impl Service for Config {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn check(&self, server_name: &ServerName) -> Result<(), ServiceError> {
        check(server_name, self)
    }

    fn build<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Parts, ServiceError>> {
        Box::pin(async move {
            let state = build(self, ctx)?;
            let base = &state.public_base_url;
            Ok(Parts {
                routes: Some(Routes {
                    router: router(state.clone()),
                    policy: HttpPolicy::from_http(&ctx.http),
                }),
                tasks: Vec::new(),
                summary: vec![format!(
                    "integrations  Element's integrations_ui_url {base}/element, integrations_rest_url {base}/api"
                )],
                advice: advice(self),
                reload: Some(Box::new(CatalogReload(state))),
            })
        })
    }
}

/// On reload the integration manager takes its new terms and catalog
/// (widgets and bots, avatars read again); the rest of its section needs a
/// restart, `public_base_url` included: both keep the running base URL.
#[derive(Debug)]
struct CatalogReload(IntegrationsState);

impl Reload for CatalogReload {
    fn keys(&self) -> &'static [&'static str] {
        &["auth.terms", "widgets", "bots"]
    }

    fn prepare(&self, new: &dyn Service) -> Result<Prepared, ServiceError> {
        let new: &Config = hearth_service::section(new)?;
        let terms = self
            .0
            .auth
            .new_terms(&new.auth.terms)
            .map_err(ServiceError::Config)?;
        let catalog = new_catalog(new, &self.0.public_base_url)?;
        let state = self.0.clone();
        let applies = vec!["terms".to_owned(), "widget catalog".to_owned()];
        Ok(Prepared::new(applies, move || {
            state.auth.replace_terms(terms);
            state.catalog.store(Arc::new(catalog));
        }))
    }
}

fn advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    if config.auth.terms.policies.is_empty() {
        advice.push(
            "publish terms of service for the integration manager (integrations.auth.terms)"
                .to_owned(),
        );
    }
    if config.widgets.jitsi_domain.is_none() {
        advice.push(
            "name your Jitsi server (integrations.widgets.jitsi_domain) to offer calls".to_owned(),
        );
    }
    advice
}

/// The Scalar-compatible REST API, relative to Element's
/// `integrations_rest_url`.
fn scalar_api() -> Router<IntegrationsState> {
    Router::new()
        .route("/register", post(scalar::register))
        .route("/account", get(hearth_auth::get_account))
        .route("/widgets/title_lookup", get(scalar::title_lookup))
        .route("/widgets/set_assets_state", get(scalar::set_assets_state))
}

pub fn router(state: IntegrationsState) -> Router {
    let v1 = Router::new()
        .route("/account/register", post(scalar::register_msc1961))
        .route("/account", get(hearth_auth::get_account))
        .route("/account/logout", post(hearth_auth::logout))
        .route(
            "/terms",
            get(hearth_auth::get_terms).post(hearth_auth::accept_terms),
        );
    Router::new()
        .nest("/api", scalar_api())
        // Dimension's REST path, so its users only change the host.
        .nest("/api/v1/scalar", scalar_api())
        .nest("/_matrix/integrations/v1", v1)
        .route("/.well-known/matrix/integrations", get(scalar::well_known))
        .merge(ui::routes())
        .merge(state.auth.terms_document_route())
        .with_state(state)
}
