//! The command line as an operator meets it: help texts, the version, and
//! the config commands that check a file before anything starts.

use hearth_e2e::Site;

/// The example shipped in the repository, byte for byte.
const EXAMPLE: &str = include_str!("../../config/hearth.example.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// Every command line with its own help: the binary and each subcommand.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["serve"],
    &["identity"],
    &["integrations"],
    &["notary"],
    &["turn"],
    &["config"],
    &["config", "example"],
    &["config", "check"],
    &["migrate"],
    &["keys"],
    &["keys", "generate"],
    &["keys", "show"],
    &["keys", "import"],
    &["keys", "export"],
    &["health"],
];

/// Issue requirement "`--help` explains each command": `hearth --help` and
/// the help of every subcommand exit 0 and open with a description line
/// before clap's `Usage:` line for that very command.
#[test]
fn every_command_has_help_with_a_description() {
    let site = Site::new();
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let out = site.run_ok(&args);
        let usage = format!(
            "Usage: {}",
            ["hearth"]
                .iter()
                .chain(*command)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        );
        let description = out.stdout.lines().next().unwrap_or_default();
        assert!(
            !description.trim().is_empty() && !description.starts_with("Usage:"),
            "hearth {}: no description before the usage line:\n{}",
            args.join(" "),
            out.stdout
        );
        assert!(
            out.stdout.contains(&usage),
            "hearth {}: no `{usage}` line:\n{}",
            args.join(" "),
            out.stdout
        );
    }
}

/// `hearth --version` prints the workspace version, as packagers and bug
/// reports need.
#[test]
fn version_is_the_workspace_version() {
    let version = WORKSPACE_MANIFEST
        .split("[workspace.package]")
        .nth(1)
        .and_then(|package| {
            package
                .lines()
                .find_map(|line| line.strip_prefix("version = "))
        })
        .map(|quoted| quoted.trim().trim_matches('"'))
        .expect("a version in [workspace.package]");
    let out = Site::new().run_ok(&["--version"]);
    assert_eq!(out.stdout.trim(), format!("hearth {version}"));
}

/// `hearth config example` prints exactly `config/hearth.example.toml`, and
/// `hearth config check` accepts it ("config OK"): the documented example is
/// a valid config.
#[test]
fn config_example_is_the_shipped_file_and_passes_check() {
    let site = Site::new();
    let out = site.run_ok(&["config", "example"]);
    assert!(
        out.stdout == EXAMPLE,
        "config example differs from config/hearth.example.toml:\n{}",
        out.stdout
    );

    let path = site.write_file("example.toml", &out.stdout);
    let out = site.run_ok(&["config", "check", path.to_str().unwrap()]);
    assert!(out.stdout.contains("config OK"), "{out}");
    // --config is the other way to name the file.
    let out = site.run_ok(&["--config", path.to_str().unwrap(), "config", "check"]);
    assert!(
        out.stdout.contains("config OK") && out.stdout.contains("example.toml"),
        "{out}"
    );
}

/// Issue requirement "config errors name the key and the file": a misspelt
/// key, a wrong type, a missing file and an unreadable `database.url_file`
/// each fail `config check` with a message that says where to look.
#[test]
fn config_check_names_the_key_and_the_file() {
    let site = Site::new();
    let check = |name: &str, text: Option<&str>, expected: &[&str]| {
        let path = match text {
            Some(text) => site.write_file(name, text),
            None => site.path().join(name),
        };
        let out = site.run(&["config", "check", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}: config check passed: {out}");
        assert!(!out.stdout.contains("config OK"), "{name}: {out}");
        for word in expected {
            assert!(
                out.stderr.contains(word),
                "{name}: stderr does not name {word:?}: {out}"
            );
        }
    };
    check(
        "unknown.toml",
        Some("[http]\nbindd = []\n"),
        &["bindd", "unknown.toml"],
    );
    check(
        "wrong-type.toml",
        Some("[database]\nmax_connections = \"ten\"\n"),
        &["database.max_connections", "wrong-type.toml"],
    );
    check("missing.toml", None, &["missing.toml", "not found"]);
    let absent = site.path().join("no-such-secret");
    check(
        "url-file.toml",
        Some(&format!(
            "[database]\nurl_file = {:?}\n",
            absent.to_str().unwrap()
        )),
        &["database.url_file", "no-such-secret"],
    );
}
