//! The widgets and bots the operator offers, checked once at start. The UI
//! gets them as JSON; the wrapper pages use the embed rules here.
//!
//! Widget types: for types Element knows, what Element writes (`jitsi`,
//! `m.custom`); for the rest, the legacy names Scalar and Dimension wrote
//! (`etherpad`, `grafana`, `youtube`), so their widgets open in our editors.

use crate::config::{BotConfig, WidgetsConfig};
use serde::Serialize;
use url::Url;

/// Largest bot avatar file served.
const MAX_AVATAR_BYTES: u64 = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Catalog {
    /// What the UI script needs, serialized into the page.
    pub(crate) ui: UiCatalog,
    pub(crate) youtube_embed_host: String,
    pub(crate) avatars: Vec<Option<Avatar>>,
}

#[derive(Debug)]
pub(crate) struct Avatar {
    pub(crate) content_type: &'static str,
    pub(crate) bytes: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UiCatalog {
    /// Where the wrapper pages live, e.g. `https://hearth.example/widgets`.
    pub(crate) widgets_base: String,
    pub(crate) jitsi_domain: Option<String>,
    pub(crate) etherpad_url: Option<String>,
    pub(crate) custom: bool,
    pub(crate) dashboard: bool,
    pub(crate) video: bool,
    pub(crate) bots: Vec<UiBot>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UiBot {
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    /// Served by Hearth under the UI.
    pub(crate) avatar: Option<String>,
    pub(crate) initial: String,
}

/// A DNS name or IP literal, optionally with a port; no path or scheme.
fn is_host(s: &str) -> bool {
    Url::parse(&format!("https://{s}/")).is_ok_and(|u| {
        u.host_str().is_some()
            && u.path() == "/"
            && u.username().is_empty()
            && u.as_str() == format!("https://{}/", s.to_ascii_lowercase())
    })
}

impl Catalog {
    pub(crate) fn new(
        widgets: &WidgetsConfig,
        bots: &[BotConfig],
        public_base_url: &str,
    ) -> Result<Self, String> {
        if let Some(domain) = &widgets.jitsi_domain
            && !is_host(domain)
        {
            return Err(format!(
                "widgets.jitsi_domain {domain:?}: give a host name such as meet.example.org"
            ));
        }
        if let Some(pad) = &widgets.etherpad_url
            && !Url::parse(pad).is_ok_and(|u| u.scheme() == "https")
        {
            return Err(format!(
                "widgets.etherpad_url {pad:?}: give an https URL such as https://pad.example.org/p/"
            ));
        }
        if !is_host(&widgets.youtube_embed_host) {
            return Err(format!(
                "widgets.youtube_embed_host {:?}: give a host name",
                widgets.youtube_embed_host
            ));
        }
        let mut avatars = Vec::new();
        let mut ui_bots = Vec::new();
        for (i, bot) in bots.iter().enumerate() {
            let avatar = bot
                .avatar
                .as_ref()
                .map(|path| load_avatar(path).map_err(|e| format!("bots[{i}].avatar: {e}")))
                .transpose()?;
            ui_bots.push(UiBot {
                user_id: bot.user_id.as_str().to_owned(),
                name: bot.name.clone(),
                description: bot.description.clone(),
                avatar: avatar.as_ref().map(|_| format!("element/bots/{i}/avatar")),
                initial: bot
                    .name
                    .chars()
                    .next()
                    .map(|c| c.to_uppercase().to_string())
                    .unwrap_or_default(),
            });
            avatars.push(avatar);
        }
        Ok(Self {
            ui: UiCatalog {
                widgets_base: format!("{public_base_url}/widgets"),
                jitsi_domain: widgets.jitsi_domain.clone(),
                etherpad_url: widgets.etherpad_url.clone(),
                custom: widgets.custom,
                dashboard: widgets.dashboard,
                video: widgets.video,
                bots: ui_bots,
            },
            youtube_embed_host: widgets.youtube_embed_host.clone(),
            avatars,
        })
    }

    /// The privacy-preserving player for a YouTube or Vimeo page URL:
    /// YouTube through the configured embed host, Vimeo with Do Not Track.
    pub(crate) fn video_embed(&self, page: &str) -> Option<Url> {
        let url = Url::parse(page).ok()?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return None;
        }
        let host = url
            .host_str()?
            .trim_start_matches("www.")
            .trim_start_matches("m.");
        let segments: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
        let is_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        let youtube = match (host, segments.as_slice()) {
            ("youtube.com" | "youtube-nocookie.com", ["watch"]) => url
                .query_pairs()
                .find(|(k, _)| k == "v")
                .map(|(_, v)| v.into_owned()),
            ("youtube.com" | "youtube-nocookie.com", ["embed" | "shorts" | "live", id]) => {
                Some((*id).to_owned())
            }
            ("youtu.be", [id]) => Some((*id).to_owned()),
            _ => None,
        };
        if let Some(id) = youtube.filter(|id| is_id(id)) {
            return Url::parse(&format!("https://{}/embed/{id}", self.youtube_embed_host)).ok();
        }
        let vimeo = match (host, segments.as_slice()) {
            ("vimeo.com", [id]) | ("player.vimeo.com", ["video", id]) => Some(*id),
            _ => None,
        };
        vimeo
            .filter(|id| id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty())
            .and_then(|id| Url::parse(&format!("https://player.vimeo.com/video/{id}?dnt=1")).ok())
    }

    /// The hosts video wrappers may frame, for their CSP.
    pub(crate) fn video_hosts(&self) -> String {
        format!(
            "https://{} https://player.vimeo.com",
            self.youtube_embed_host
        )
    }
}

fn load_avatar(path: &std::path::Path) -> Result<Avatar, String> {
    let content_type = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        _ => {
            return Err(format!(
                "{}: use a .png, .jpg, .webp or .svg file",
                path.display()
            ));
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_AVATAR_BYTES {
        return Err(format!(
            "{}: larger than {MAX_AVATAR_BYTES} bytes",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Avatar {
        content_type,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(&WidgetsConfig::default(), &[], "https://im.example").unwrap()
    }

    #[test]
    fn youtube_plays_through_the_no_cookie_host_and_vimeo_without_tracking() {
        let c = catalog();
        for page in [
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1",
            "https://youtu.be/dQw4w9WgXcQ",
            "https://m.youtube.com/shorts/dQw4w9WgXcQ",
            "https://www.youtube.com/embed/dQw4w9WgXcQ",
        ] {
            assert_eq!(
                c.video_embed(page).unwrap().as_str(),
                "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ",
                "{page}"
            );
        }
        assert_eq!(
            c.video_embed("https://vimeo.com/76979871")
                .unwrap()
                .as_str(),
            "https://player.vimeo.com/video/76979871?dnt=1"
        );
        for bad in [
            "https://example.org/watch?v=x",
            "https://youtu.be/a\"b",
            "https://vimeo.com/abc",
            "javascript:alert(1)",
        ] {
            assert!(c.video_embed(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn no_jitsi_or_etherpad_unless_configured_and_bad_hosts_refused() {
        let c = catalog();
        assert_eq!(c.ui.jitsi_domain, None);
        assert_eq!(c.ui.etherpad_url, None);
        for bad in ["https://meet.example", "meet.example/x", "", "a b"] {
            let widgets = WidgetsConfig {
                jitsi_domain: Some(bad.to_owned()),
                ..WidgetsConfig::default()
            };
            assert!(
                Catalog::new(&widgets, &[], "https://im.example").is_err(),
                "{bad}"
            );
        }
        let widgets = WidgetsConfig {
            jitsi_domain: Some("meet.example:8443".to_owned()),
            etherpad_url: Some("http://pad.example/p/".to_owned()),
            ..WidgetsConfig::default()
        };
        assert!(Catalog::new(&widgets, &[], "https://im.example").is_err());
    }
}
