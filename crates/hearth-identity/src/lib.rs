//! The Matrix Identity Service API v2 (spec "Identity Service API"), with
//! accounts and terms from `hearth-auth`. No v1 endpoint is served, except,
//! when `sms.serve_synapse_delegation` asks for them, the three Synapse's
//! msisdn delegation calls (see `validation`). The invite mail's signing
//! link is Hearth's own `/_hearth/identity/v1/sign-ed25519` (decision 0006).
//!
//! Modules follow the spec's sections: `status` (versions, status),
//! `pubkey` (key management), `lookup` (hashed association lookup),
//! `sessions` and `validation` (3PID validation by email and phone),
//! `associations` (bind, unbind, validated 3PIDs), `invites` (store-invite,
//! ephemeral signing, the onbind outbox).

mod associations;
mod config;
mod email;
mod gdpr;
mod invites;
mod lookup;
mod outbox;
mod params;
mod pubkey;
mod sessions;
mod sms;
mod status;
mod sydent;
mod threepid;
mod validation;

pub use config::{Config, EmailConfig, InvitesConfig, SmsConfig, SmsSender, SmtpTls};
pub use gdpr::{export, forget};
pub use lookup::rotate_pepper_if_due;
pub use outbox::{OutboxSettings, run_outbox, run_outbox_with};
pub use sydent::{SydentError, SydentImport, import_sydent, sydent_signing_key};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use hearth_auth::Auth;
use hearth_core::config::ByteSize;
use hearth_core::ids::ServerName;
use hearth_core::keys::{KeyRing, SigningKey};
use hearth_core::storage::{Database, Migration, Schema};
use hearth_federation::{FederationClient, KeyStore, Outbound};
use hearth_service::{
    BoxFuture, Context, HttpPolicy, Parts, Prepared, Reload, Routes, Service, ServiceError, Task,
};
use std::ops::Deref;
use std::sync::Arc;

/// The identity service's tables, after the auth tables it uses.
pub static SCHEMA: Schema = Schema {
    component: "identity",
    depends_on: &[&hearth_auth::SCHEMA, &hearth_federation::SCHEMA],
    migrations: &[
        Migration {
            description: "peppers, associations, sessions, invites, onbind outbox",
            sql: include_str!("../migrations/0001_identity.sql"),
        },
        Migration {
            description: "hashed client secrets, lower-cased lookup aliases, invite keys",
            sql: include_str!("../migrations/0002_interop.sql"),
        },
    ],
};

/// Everything the identity service's handlers share.
#[derive(Debug)]
pub struct Identity {
    pub server_name: ServerName,
    pub public_base_url: String,
    /// Signs associations and invites; its id is published at `/pubkey`.
    pub signing_key: SigningKey,
    /// This server's keys, current and retired, for `/pubkey`.
    pub own_keys: KeyRing,
    pub db: Database,
    pub auth: Auth,
    pub federation: FederationClient,
    /// The process's shared store of other servers' keys (X-Matrix unbind).
    pub keys: KeyStore,
    /// The guarded client SMS gateways are reached through.
    pub outbound: Outbound,
    pub(crate) index: lookup::LookupIndex,
    pub(crate) onbind_methods: outbox::Methods,
    pub(crate) mailer: email::Mailer,
    pub(crate) sms: sms::Sender,
    pub config: Config,
}

/// The router state: a cheap handle on [`Identity`].
#[derive(Debug, Clone)]
pub struct IdentityState(pub Arc<Identity>);

impl Deref for IdentityState {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl FromRef<IdentityState> for Auth {
    fn from_ref(state: &IdentityState) -> Auth {
        state.auth.clone()
    }
}

/// Periodic upkeep until `shutdown`: the pepper rotates on schedule, old
/// lookup changes and expired validation sessions are deleted.
pub async fn run_background(state: IdentityState, shutdown: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        if let Err(e) = lookup::rotate_pepper_if_due(&state.db, state.config.pepper_rotation).await
        {
            tracing::warn!(error = %e, "pepper rotation failed; will retry");
        }
        // Builds the index at start, and follows a rotation before any
        // lookup has to wait for it.
        if let Err(e) = state.index.refresh(&state, None).await {
            tracing::warn!(error = %e, "refreshing the lookup index failed; will retry");
        }
        if let Err(e) = lookup::prune_changes(&state.db).await {
            tracing::warn!(error = %e, "pruning the lookup change log failed; will retry");
        }
        let lifetime = state.config.session_lifetime.as_millis_i64();
        if let Err(e) = sessions::purge_expired(&state.db, lifetime).await {
            tracing::warn!(error = %e, "purging expired sessions failed; will retry");
        }
    }
}

/// The name under which this service keeps tokens and terms acceptances.
pub const SERVICE: &str = "identity";

fn public_base_url(server_name: &ServerName, config: &Config) -> String {
    config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("https://{server_name}"))
}

/// Checks the config without opening anything: templates, SMS sender and
/// terms policies (for `hearth config check`).
pub fn check(server_name: &ServerName, config: &Config) -> Result<(), ServiceError> {
    email::Mailer::new(&config.email).map_err(ServiceError::Config)?;
    sms::Sender::new(&config.sms).map_err(ServiceError::Config)?;
    hearth_auth::Terms::new(
        SERVICE,
        &config.auth.terms,
        &public_base_url(server_name, config),
    )
    .map_err(ServiceError::Config)?;
    Ok(())
}

/// Builds the identity service on the shared context.
pub fn build(config: &Config, ctx: &Context) -> Result<IdentityState, ServiceError> {
    let public_base_url = public_base_url(&ctx.server_name, config);
    let auth = Auth::new(
        SERVICE,
        ctx.db.clone(),
        ctx.federation.clone(),
        &config.auth,
        &public_base_url,
        // Synapse still sends `?access_token=` (to `/hash_details`, v1.11-era).
        &["access_token"],
    )
    .map_err(ServiceError::Config)?;
    let mailer = email::Mailer::new(&config.email).map_err(ServiceError::Config)?;
    let sms = sms::Sender::new(&config.sms).map_err(ServiceError::Config)?;
    let signing_key = ctx
        .keys
        .signing_key()
        .map_err(|e| ServiceError::Start(e.to_string()))?
        .clone();
    Ok(IdentityState(Arc::new(Identity {
        server_name: ctx.server_name.clone(),
        public_base_url,
        signing_key,
        own_keys: ctx.keys.clone(),
        keys: ctx.remote_keys.clone(),
        outbound: ctx.outbound.clone(),
        db: ctx.db.clone(),
        auth,
        federation: ctx.federation.clone(),
        index: lookup::LookupIndex::default(),
        onbind_methods: outbox::Methods::default(),
        mailer,
        sms,
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
            let mut policy = HttpPolicy::from_http(&ctx.http);
            // A `/lookup` of `max_lookup_addresses` hashes (43 characters
            // each, quoted) must fit, whatever the shared default.
            let lookup_body = self.max_lookup_addresses.saturating_mul(48) + 1024;
            policy.max_body_size = ByteSize(policy.max_body_size.0.max(lookup_body));
            Ok(Parts {
                routes: Some(Routes {
                    router: router(state.clone()),
                    policy,
                }),
                tasks: vec![
                    Task::new(
                        "identity upkeep",
                        run_background(state.clone(), ctx.shutdown.wait()),
                    ),
                    Task::new(
                        "identity onbind outbox",
                        run_outbox(state.clone(), ctx.shutdown.wait()),
                    ),
                ],
                summary: vec![format!(
                    "identity  {}/_matrix/identity/v2",
                    state.public_base_url
                )],
                advice: advice(self),
                reload: Some(Box::new(TermsReload(state.auth.clone()))),
            })
        })
    }
}

/// On reload the identity service takes its new terms; the rest of its
/// section (mail, SMS, lookups) needs a restart.
#[derive(Debug)]
struct TermsReload(Auth);

impl Reload for TermsReload {
    fn keys(&self) -> &'static [&'static str] {
        &["auth.terms"]
    }

    fn prepare(&self, new: &dyn Service) -> Result<Prepared, ServiceError> {
        let new: &Config = hearth_service::section(new)?;
        let terms = self
            .0
            .new_terms(&new.auth.terms)
            .map_err(ServiceError::Config)?;
        let auth = self.0.clone();
        Ok(Prepared::new(vec!["terms".to_owned()], move || {
            auth.replace_terms(terms);
        }))
    }
}

/// What production still needs from this section.
fn advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    if config.auth.terms.policies.is_empty() {
        advice.push(
            "publish terms of service for the identity server (identity.auth.terms)".to_owned(),
        );
    }
    if config.email.from == EmailConfig::default().from {
        advice.push(
            "set identity.email (SMTP server and From address) for validation mails".to_owned(),
        );
    }
    if config.sms.sender == SmsSender::Log {
        advice.push(
            "choose an SMS sender (identity.sms.sender) to validate phone numbers".to_owned(),
        );
    }
    advice
}

pub fn router(state: IdentityState) -> Router {
    let v2 = Router::new()
        .route("/", get(status::status))
        .route("/account/register", post(register))
        .route("/account", get(hearth_auth::get_account))
        .route("/account/logout", post(hearth_auth::logout))
        .route(
            "/terms",
            get(hearth_auth::get_terms).post(hearth_auth::accept_terms),
        )
        .route("/pubkey/isvalid", get(pubkey::is_valid))
        .route("/pubkey/ephemeral/isvalid", get(pubkey::ephemeral_is_valid))
        .route("/pubkey/{key_id}", get(pubkey::get_public_key))
        .route("/hash_details", get(lookup::hash_details))
        .route("/lookup", post(lookup::lookup))
        .route(
            "/validate/email/requestToken",
            post(validation::email_request_token),
        )
        .route(
            "/validate/email/submitToken",
            get(validation::submit_token_get).post(validation::submit_token_post),
        )
        .route(
            "/validate/msisdn/requestToken",
            post(validation::msisdn_request_token),
        )
        .route(
            "/validate/msisdn/submitToken",
            get(validation::submit_token_get).post(validation::submit_token_post),
        )
        .route(
            "/3pid/getValidated3pid",
            get(associations::get_validated_3pid),
        )
        .route("/3pid/bind", post(associations::bind))
        .route("/3pid/unbind", post(associations::unbind))
        .route("/store-invite", post(invites::store_invite))
        .route("/sign-ed25519", post(invites::sign_ed25519));
    let mut router = Router::new()
        .route("/_matrix/identity/versions", get(status::versions))
        .nest("/_matrix/identity/v2", v2)
        .route(invites::MAILED_SIGN_PATH, post(invites::sign_mailed));
    if state.config.sms.serve_synapse_delegation {
        // Exactly the v1 paths Synapse 1.163's msisdn delegation calls.
        router = router
            .route(
                "/_matrix/identity/api/v1/validate/msisdn/requestToken",
                post(validation::v1_msisdn_request_token),
            )
            .route(
                "/_matrix/identity/api/v1/validate/msisdn/submitToken",
                post(validation::v1_submit_token),
            )
            .route(
                "/_matrix/identity/api/v1/3pid/getValidated3pid",
                get(associations::v1_get_validated_3pid),
            );
    }
    router
        .merge(state.auth.terms_document_route())
        .with_state(state)
}

/// Sydent's shape, `token` plus the legacy `access_token` that Element
/// reads.
#[derive(serde::Serialize)]
struct RegisterResponse {
    token: String,
    access_token: String,
}

/// `POST /account/register`.
async fn register(
    axum::extract::State(state): axum::extract::State<IdentityState>,
    hearth_core::Json(credentials): hearth_core::Json<hearth_auth::OpenIdCredentials>,
) -> Result<hearth_core::Json<RegisterResponse>, hearth_core::MatrixError> {
    let (_, token) = state.auth.register(&credentials).await?;
    Ok(hearth_core::Json(RegisterResponse {
        access_token: token.clone(),
        token,
    }))
}
