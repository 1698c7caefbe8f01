//! The pages: the manager Element opens at `integrations_ui_url` with
//! `?scalar_token=&room_id=&room_name=&theme=[&integ_id=][&screen=]`
//! (`getScalarInterfaceUrlForRoom`), and the widget wrapper pages.

mod common;

use common::{Harness, backends, test_config};
use hearth_integrations::BotConfig;
use http::StatusCode;

const ROOM: &str = "room_id=%21room%3Ahs.test&room_name=Team%20%3Cb%3Eroom%3C%2Fb%3E";

/// Every `src=` and `href=` in a page: none may name another host.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            found.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    found
}

/// Element's dialog shows whatever the iframe serves: a bad token gets a
/// page saying so (401), a token without the IM's terms gets the terms,
/// and the manager follows once they are accepted.
#[tokio::test]
async fn the_ui_asks_for_terms_before_the_manager() {
    for h in Harness::all().await {
        let out = h
            .get(&format!("/element?scalar_token=wrong&{ROOM}&theme=light"))
            .await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED);
        assert!(out.page().contains("Not connected"));

        let token = h.register("alice").await;
        let terms = h
            .get(&format!("/element?scalar_token={token}&{ROOM}&theme=light"))
            .await;
        assert_eq!(terms.status, StatusCode::OK);
        let html = terms.page();
        assert!(html.contains("data-view=\"terms\""), "{html}");
        assert!(html.contains(common::TERMS_URL));
        assert!(html.contains("id=\"accept\""));

        h.accept_terms(&token).await;
        let riot = h.get(&format!("/riot?scalar_token={token}&{ROOM}")).await;
        assert!(
            riot.page().contains("data-view=\"manager\""),
            "Dimension's /riot path"
        );
        let manager = h
            .get(&format!("/element?scalar_token={token}&{ROOM}&theme=dark"))
            .await;
        assert_eq!(manager.status, StatusCode::OK);
        let html = manager.page();
        assert!(html.contains("data-view=\"manager\""));
        assert!(html.contains("data-theme=\"dark\""));
        assert!(html.contains("Signed in as @alice:hs.test"));
        // room_name comes from the room's state: escaped, never markup.
        assert!(html.contains("Team &lt;b&gt;room&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>room"));
        // The token is read by the script from the URL, never echoed.
        assert!(!html.contains(&token));
    }
}

/// A strict CSP, no referrer (the URL holds the token), and nothing from
/// another host: every reference is to this server or a `data:` icon.
#[tokio::test]
async fn the_ui_is_locked_down_and_self_contained() {
    let h = Harness::all().await.remove(0);
    let token = h.user("alice").await;
    let page = h
        .get(&format!("/element?scalar_token={token}&{ROOM}"))
        .await;
    assert_eq!(
        page.header("content-security-policy"),
        Some(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors *"
        )
    );
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.page();
    let refs = references(&html);
    assert!(refs.contains(&"/element/app.js".to_owned()), "{refs:?}");
    assert!(refs.contains(&"/element/app.css".to_owned()));
    for r in &refs {
        assert!(
            r.starts_with('/') || r == "data:,",
            "external reference {r}"
        );
    }
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains("style="), "no inline style");
}

/// The first load (page, script, stylesheet) stays under 50 KB.
#[tokio::test]
async fn the_first_load_is_under_50_kb() {
    let h = Harness::all().await.remove(0);
    let token = h.user("alice").await;
    let page = h
        .get(&format!("/element?scalar_token={token}&{ROOM}"))
        .await;
    let js = h.get("/element/app.js").await;
    let css = h.get("/element/app.css").await;
    assert_eq!(js.header("content-type"), Some("text/javascript"));
    assert_eq!(css.header("content-type"), Some("text/css"));
    let total = page.body.len() + js.body.len() + css.body.len();
    assert!(total < 50 * 1024, "first load is {total} bytes");
}

/// `screen=type_<widget type>` opens that editor at once (Element's widget
/// "Edit" and the sticker picker's manage link), under Element's type names
/// and the legacy ones; Jitsi is offered only with a Jitsi domain.
#[tokio::test]
async fn screen_opens_the_editor_and_jitsi_needs_a_domain() {
    for (db, dir) in backends().await {
        let h = Harness::start(db, dir, test_config(), false).await;
        let token = h.user("alice").await;
        for screen in ["type_jitsi", "type_m.jitsi"] {
            let page = h
                .get(&format!(
                    "/element?scalar_token={token}&{ROOM}&screen={screen}"
                ))
                .await;
            let html = page.page();
            assert!(html.contains("id=\"ed-jitsi\""));
            assert!(
                html.contains(r#"<form id="ed-jitsi" class="editor" data-kind="jitsi" aria-labelledby="ed-jitsi-h" novalidate>"#),
                "the Jitsi editor is open for {screen}"
            );
            assert!(
                html.contains(
                    r#"data-kind="video" aria-labelledby="ed-video-h" novalidate hidden>"#
                )
            );
        }
        let html = h
            .get(&format!(
                "/element?scalar_token={token}&{ROOM}&screen=type_grafana"
            ))
            .await
            .page();
        assert!(
            html.contains(r#"data-kind="dashboard" aria-labelledby="ed-dashboard-h" novalidate>"#)
        );
        // The script's settings, HTML-escaped in an attribute.
        let start = html.find("data-config=\"").unwrap() + "data-config=\"".len();
        let json = html[start..start + html[start..].find('"').unwrap()]
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({
                "widgets_base": "https://im.test/widgets",
                "jitsi_domain": "meet.example.org",
                "etherpad_url": null,
                "terms_urls": [],
            })
        );
    }
    for (db, dir) in backends().await {
        let mut config = test_config();
        config.widgets.jitsi_domain = None;
        let h = Harness::start(db, dir, config, false).await;
        let token = h.user("alice").await;
        let html = h
            .get(&format!(
                "/element?scalar_token={token}&{ROOM}&screen=type_jitsi"
            ))
            .await
            .page();
        assert!(!html.contains("ed-jitsi"), "no Jitsi without a domain");
        assert!(
            !html.contains("data-kind=\"etherpad\""),
            "no Etherpad without a pad server"
        );
        h.get("/widgets/jitsi")
            .await
            .assert_error(StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

/// Bots from config, with avatars Hearth serves itself.
#[tokio::test]
async fn bots_are_listed_with_their_own_avatars() {
    let dir = tempfile::tempdir().unwrap();
    let avatar = dir.path().join("echo.png");
    std::fs::write(&avatar, b"\x89PNG\r\n\x1a\nfake").unwrap();
    for (db, db_dir) in backends().await {
        let mut config = test_config();
        config.bots = vec![
            BotConfig {
                user_id: hearth_core::ids::UserId::parse("@echo:hs.test").unwrap(),
                name: "Echo".to_owned(),
                description: "Repeats what you say".to_owned(),
                avatar: Some(avatar.clone()),
            },
            BotConfig {
                user_id: hearth_core::ids::UserId::parse("@rss:hs.test").unwrap(),
                name: "rss".to_owned(),
                description: String::new(),
                avatar: None,
            },
        ];
        let h = Harness::start(db, db_dir, config, false).await;
        let token = h.user("alice").await;
        let html = h
            .get(&format!("/element?scalar_token={token}&{ROOM}"))
            .await
            .page();
        assert!(html.contains(r#"data-user="@echo:hs.test" data-name="Echo""#));
        assert!(html.contains(r#"<img src="/element/bots/0/avatar""#));
        assert!(html.contains(r#"<span class="avatar" aria-hidden="true">R</span>"#));
        let image = h.get("/element/bots/0/avatar").await;
        assert_eq!(image.status, StatusCode::OK);
        assert_eq!(image.header("content-type"), Some("image/png"));
        assert_eq!(&image.body[..], b"\x89PNG\r\n\x1a\nfake");
        h.get("/element/bots/1/avatar")
            .await
            .assert_error(StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

/// `/widgets/generic?url=` frames an https page, nothing else.
#[tokio::test]
async fn generic_wrapper_frames_https_pages_only() {
    let h = Harness::all().await.remove(0);
    let page = h
        .get("/widgets/generic?url=https%3A%2F%2Fpad.example.org%2Fp%2Fteam%3Fa%3D1%26b%3D%22&title=Pad")
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.page();
    assert!(
        html.contains(r#"<iframe src="https://pad.example.org/p/team?a=1&amp;b=%22" title="Pad""#),
        "{html}"
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("frame-src https:;") && csp.contains("default-src 'none'"));
    for bad in ["http%3A%2F%2Fexample.org%2F", "javascript%3Aalert(1)", ""] {
        let page = h.get(&format!("/widgets/generic?url={bad}")).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(!page.page().contains("<iframe"));
    }
}

/// `/widgets/video` plays YouTube through the no-cookie host (and Vimeo
/// with Do Not Track), and may frame only those players.
#[tokio::test]
async fn video_wrapper_uses_privacy_preserving_players() {
    let h = Harness::all().await.remove(0);
    let page = h
        .get("/widgets/video?url=https%3A%2F%2Fwww.youtube.com%2Fwatch%3Fv%3DdQw4w9WgXcQ")
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.page()
            .contains(r#"<iframe src="https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ""#)
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("frame-src https://www.youtube-nocookie.com https://player.vimeo.com;"));
    let page = h
        .get("/widgets/video?url=https%3A%2F%2Fexample.org%2Fclip")
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
}

/// `/widgets/jitsi` serves Element's Jitsi widget URL form
/// (`?confId=…#conferenceDomain=$domain&conferenceId=$conferenceId&…`):
/// its script frames only the configured Jitsi host.
#[tokio::test]
async fn jitsi_wrapper_frames_only_the_configured_host() {
    let h = Harness::all().await.remove(0);
    let page = h
        .get("/widgets/jitsi?confId=JitsiAbcdefghijklmnopqrstuvw")
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.page()
            .contains(r#"<body data-domain="meet.example.org">"#)
    );
    assert!(
        page.page()
            .contains(r#"<script src="/widgets/jitsi.js" defer>"#)
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("frame-src https://meet.example.org;"));
    assert!(csp.contains("script-src 'self';"));
    let script = h.get("/widgets/jitsi.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.page().contains("conferenceDomain"));
}

/// `templates_dir` brands the pages: a file of the same name replaces the
/// built-in one, with the same values, still escaped.
#[tokio::test]
async fn templates_dir_replaces_pages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("frame.html"),
        "<title>Example Chat</title><iframe src=\"{{ src }}\" title=\"{{ title }}\"></iframe>",
    )
    .unwrap();
    for (db, db_dir) in backends().await {
        let mut config = test_config();
        config.templates_dir = Some(dir.path().to_owned());
        let h = Harness::start(db, db_dir, config, false).await;
        let page = h
            .get("/widgets/generic?url=https%3A%2F%2Fpad.example.org%2F&title=%3Cb%3EPad")
            .await;
        assert_eq!(
            page.page(),
            "<title>Example Chat</title><iframe src=\"https://pad.example.org/\" title=\"&lt;b&gt;Pad\"></iframe>"
        );
    }
}
