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
mod scalar;
mod title;
mod ui;

pub use assets::get_state as asset_state;
pub use config::{BotConfig, Config, TitleLookupConfig, WidgetsConfig};
pub use title::PageFetcher;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use hearth_auth::Auth;
use hearth_core::ids::ServerName;
use hearth_core::storage::Database;
use hearth_federation::FederationClient;
use std::ops::Deref;
use std::sync::Arc;

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
    pub config: Config,
    pub(crate) pages: PageFetcher,
    pub(crate) catalog: catalog::Catalog,
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

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("integrations: {0}")]
    Config(String),
    #[error("integrations: {0}")]
    Storage(#[from] sqlx::Error),
}

fn public_base_url(server_name: &ServerName, config: &Config) -> String {
    config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("https://{server_name}"))
        .trim_end_matches('/')
        .to_owned()
}

/// Checks the config without opening anything (for `hearth config check`).
pub fn check(server_name: &ServerName, config: &Config) -> Result<(), BuildError> {
    let base = public_base_url(server_name, config);
    url::Url::parse(&base)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.path() == "/")
        .ok_or_else(|| {
            BuildError::Config(format!(
                "public_base_url {base:?} must be an http(s) URL with no path: Element calls the terms API at the host's root"
            ))
        })?;
    hearth_auth::Terms::new(SERVICE, &config.auth.terms, &base).map_err(BuildError::Config)?;
    catalog::Catalog::new(&config.widgets, &config.bots, &base).map_err(BuildError::Config)?;
    Ok(())
}

/// Builds the service: checks the config, makes sure its table exists, and
/// loads the catalog (bot avatars included). `pages` fetches pages for
/// `title_lookup`.
pub async fn build(
    server_name: ServerName,
    db: Database,
    federation: FederationClient,
    pages: PageFetcher,
    config: Config,
) -> Result<IntegrationsState, BuildError> {
    check(&server_name, &config)?;
    let public_base_url = public_base_url(&server_name, &config);
    let auth = Auth::new(
        SERVICE,
        db.clone(),
        federation,
        &config.auth,
        &public_base_url,
        // Element sends the token as `?scalar_token=` to every legacy route.
        &["scalar_token"],
    )
    .map_err(BuildError::Config)?;
    assets::ensure_schema(&db).await?;
    let catalog = catalog::Catalog::new(&config.widgets, &config.bots, &public_base_url)
        .map_err(BuildError::Config)?;
    let ui = ui::Pages::new().map_err(BuildError::Config)?;
    Ok(IntegrationsState(Arc::new(Integrations {
        server_name,
        public_base_url,
        db,
        auth,
        config,
        pages,
        catalog,
        ui,
        titles: scalar::TitleCache::default(),
    })))
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
        .with_state(state)
}
