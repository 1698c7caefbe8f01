//! `[identity]`: the identity service's config section.

use hearth_auth::AuthConfig;
use hearth_core::config::{Duration, Secret};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
    /// The base URL clients and homeservers use for this service; defaults
    /// to `https://<server_name>`. Links in mails and `key_validity_url`s
    /// are built from it.
    pub public_base_url: Option<String>,
    /// How often the lookup pepper changes (MSC2134).
    pub pepper_rotation: Duration,
    /// Serve `none` (plain-text) lookups. Off: they reveal who is looked up.
    pub allow_plaintext_lookup: bool,
    /// Most addresses one `/lookup` may carry.
    pub max_lookup_addresses: usize,
    /// Validation sessions expire this long after their last change.
    pub session_lifetime: Duration,
    pub auth: AuthConfig,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    pub invites: InvitesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            public_base_url: None,
            pepper_rotation: Duration::secs(24 * 3600),
            allow_plaintext_lookup: false,
            max_lookup_addresses: 10_000,
            session_lifetime: Duration::secs(24 * 3600),
            auth: AuthConfig::default(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            invites: InvitesConfig::default(),
        }
    }
}

/// `[identity.email]`: how validation and invite mails are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Secret>,
    pub smtp_password_file: Option<PathBuf>,
    /// The `From:` of every mail, e.g. `"Example Chat <noreply@example.org>"`.
    pub from: String,
    /// The name of the service in mails, e.g. the community's name.
    pub brand: String,
    /// A directory whose templates replace the built-in ones, file by file.
    pub templates_dir: Option<PathBuf>,
    /// Mails per address: `burst` at once, then one per `period`; 0 is no limit.
    pub per_address_burst: u32,
    pub per_address_period: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: "localhost".to_owned(),
            smtp_port: 25,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            from: "Hearth <noreply@localhost>".to_owned(),
            brand: "Matrix".to_owned(),
            templates_dir: None,
            per_address_burst: 5,
            per_address_period: Duration::secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Implicit TLS (usually port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, required (usually 587 or 25).
    Starttls,
    /// No encryption: only for a relay on the same host.
    None,
}

/// `[identity.sms]`: how phone validation codes are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    pub sender: SmsSender,
    /// For `http`: the gateway URL receiving `{"to", "text"}` as JSON.
    pub http_url: Option<String>,
    /// For `http`: the gateway is on the operator's own network, so private
    /// and loopback addresses may be dialled for it.
    pub http_allow_private: bool,
    /// For `http`: the `Authorization` header value.
    pub http_authorization: Option<Secret>,
    pub http_authorization_file: Option<PathBuf>,
    /// For `twilio`.
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<Secret>,
    pub twilio_auth_token_file: Option<PathBuf>,
    pub twilio_from: Option<String>,
    /// Codes per number: `burst` at once, then one per `period`; 0 is no limit.
    pub per_number_burst: u32,
    pub per_number_period: Duration,
    /// Serve the three v1 paths Synapse's `account_threepid_delegates.msisdn`
    /// calls, without a token (so anyone may have codes sent: keep the
    /// per-number limit, and put the service behind your homeserver only).
    pub serve_synapse_delegation: bool,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            sender: SmsSender::Log,
            http_url: None,
            http_allow_private: false,
            http_authorization: None,
            http_authorization_file: None,
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_auth_token_file: None,
            twilio_from: None,
            per_number_burst: 3,
            per_number_period: Duration::secs(3600),
            serve_synapse_delegation: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsSender {
    /// Writes the code to the log: for development only.
    Log,
    /// A JSON POST to an operator-run gateway.
    Http,
    /// Twilio's Messages API.
    Twilio,
}

/// `[identity.invites]`: third-party invites by email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvitesConfig {
    /// The web client invite mails link to, e.g. your Element's URL. When
    /// unset, mails carry no link (Hearth never points at a client you did
    /// not choose).
    pub web_client_location: Option<String>,
    /// Pending `onbind` callbacks are retried with backoff for this long.
    pub onbind_retry_for: Duration,
    /// Invites one sender may store per `per_sender_period`; 0 is no limit.
    pub per_sender_limit: u32,
    pub per_sender_period: Duration,
    /// Invite mails one address may receive per `per_recipient_period`; 0
    /// is no limit.
    pub per_recipient_limit: u32,
    pub per_recipient_period: Duration,
}

impl Default for InvitesConfig {
    fn default() -> Self {
        Self {
            web_client_location: None,
            onbind_retry_for: Duration::secs(7 * 24 * 3600),
            per_sender_limit: 10,
            per_sender_period: Duration::secs(3600),
            per_recipient_limit: 5,
            per_recipient_period: Duration::secs(3600),
        }
    }
}
