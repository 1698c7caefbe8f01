//! `hearth integrations export|forget` (a user's access and erasure
//! requests) on the database a running Hearth uses: what the integration
//! manager holds (its tokens, accepted terms and sticker asset state) is
//! printed, then erased, and the running server stops honouring the token.

use std::time::Duration;

use hearth_e2e::{FakeHomeserver, HttpClient, Site, wait_until};

const ALICE: &str = "@alice:hs.test";

#[test]
fn export_and_forget_what_the_integration_manager_holds() {
    let homeserver = FakeHomeserver::start("hs.test");
    let site = Site::new();
    let config = site.write_file(
        "hearth.toml",
        &format!(
            "[federation.overrides.\"hs.test\"]\nurl = \"{}\"\n",
            homeserver.url()
        ),
    );
    let config = config.to_str().expect("a UTF-8 path");
    let hearth = site.start(&["--config", config, "serve"]);
    let client = HttpClient::plain(hearth.public_addr());

    let registered = client.post(
        "/api/register?v=1.1",
        None,
        &homeserver.openid_credentials("alice"),
    );
    assert_eq!(registered.status, 200, "{}", registered.text());
    let token = registered.json()["scalar_token"]
        .as_str()
        .expect("a scalar_token")
        .to_owned();
    let state = client.get(
        &format!(
            "/api/widgets/set_assets_state?scalar_token={token}&widget_type=m.stickerpicker&widget_id=s1&state=disable"
        ),
        None,
    );
    assert_eq!(state.status, 200, "{}", state.text());

    let export = site.run_ok(&["--config", config, "integrations", "export", ALICE]);
    let held: serde_json::Value = serde_json::from_str(&export.stdout).expect("JSON");
    assert_eq!(held["account"]["active_tokens"], 1, "{held}");
    assert_eq!(held["widget_assets"][0]["widget_id"], "s1", "{held}");

    let forget = site.run_ok(&["--config", config, "integrations", "forget", ALICE]);
    assert!(forget.stdout.contains("erased everything"), "{forget}");
    let export = site.run_ok(&["--config", config, "integrations", "export", ALICE]);
    let held: serde_json::Value = serde_json::from_str(&export.stdout).expect("JSON");
    assert_eq!(held["account"]["active_tokens"], 0, "{held}");
    assert_eq!(held["widget_assets"], serde_json::json!([]), "{held}");
    let again = site.run_ok(&["--config", config, "integrations", "forget", ALICE]);
    assert!(again.stdout.contains("nothing was held"), "{again}");

    // The running server follows the erasure through the auth change log.
    let refused = wait_until(Duration::from_secs(5), || {
        client
            .get(&format!("/api/account?v=1.1&scalar_token={token}"), None)
            .status
            == 401
    });
    assert!(refused, "the erased token still works:\n{}", hearth.log());
}
