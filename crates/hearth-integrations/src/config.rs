//! `[integrations]`: the integration manager's config section.

use hearth_auth::AuthConfig;
use hearth_core::config::Duration;
use hearth_core::ids::UserId;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
    /// The base URL Element reaches this service at; defaults to
    /// `https://<server_name>`. Element's `integrations_ui_url` is
    /// `<base>/element` and `integrations_rest_url` is `<base>/api`.
    /// Terms only work when this is the root of a host: Element strips the
    /// REST URL's path before calling `/_matrix/integrations/v1/terms`.
    pub public_base_url: Option<String>,
    /// The integration manager's own policies, apart from identity's.
    pub auth: AuthConfig,
    pub widgets: WidgetsConfig,
    /// Bot users the UI offers to invite into rooms.
    pub bots: Vec<BotConfig>,
    /// Bounds of `widgets/title_lookup` fetches.
    pub title_lookup: TitleLookupConfig,
    /// A directory whose `ui.html`, `frame.html` or `jitsi.html` replace
    /// the built-in pages (to brand them).
    pub templates_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            public_base_url: None,
            auth: AuthConfig::default(),
            widgets: WidgetsConfig::default(),
            bots: Vec::new(),
            title_lookup: TitleLookupConfig::default(),
            templates_dir: None,
        }
    }
}

/// `[integrations.widgets]`: the catalog. Every default calls no third
/// party: Jitsi and Etherpad appear only once their servers are named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WidgetsConfig {
    /// The Jitsi Meet host conferences run on, e.g. `meet.example.org`.
    pub jitsi_domain: Option<String>,
    /// The pad server's base URL; a pad is `<etherpad_url><pad name>`,
    /// e.g. `https://pad.example.org/p/`.
    pub etherpad_url: Option<String>,
    /// Any web page the user names.
    pub custom: bool,
    /// A Grafana (or other) dashboard, shown full-screen.
    pub dashboard: bool,
    /// YouTube and Vimeo videos, played through the embed hosts below.
    pub video: bool,
    /// Where YouTube videos play: a host serving `/embed/<id>`. The default
    /// is YouTube's no-cookie host; an Invidious instance also fits.
    pub youtube_embed_host: String,
}

impl Default for WidgetsConfig {
    fn default() -> Self {
        Self {
            jitsi_domain: None,
            etherpad_url: None,
            custom: true,
            dashboard: true,
            video: true,
            youtube_embed_host: "www.youtube-nocookie.com".to_owned(),
        }
    }
}

/// `[[integrations.bots]]`: one bot users may add to a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    pub user_id: UserId,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A PNG, JPEG, WebP or SVG file Hearth serves itself (the UI loads
    /// nothing from other hosts); without one the UI shows an initial.
    #[serde(default)]
    pub avatar: Option<PathBuf>,
}

/// `[integrations.title_lookup]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TitleLookupConfig {
    /// The whole fetch, redirects included.
    pub timeout: Duration,
    /// Pages larger than this are refused; `federation.max_response_size`
    /// bounds every outbound answer too.
    pub max_page_size: hearth_core::config::ByteSize,
}

impl Default for TitleLookupConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::secs(5),
            max_page_size: hearth_core::config::ByteSize(512 * 1024),
        }
    }
}
