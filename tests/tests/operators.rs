//! What operators and packagers get, checked with the tools they use:
//!
//! - the `.deb` that `cargo xtask dist` builds (`HEARTH_TEST_DEB`) installs
//!   with dpkg, runs, validates its own config, carries a unit that
//!   `systemd-analyze verify` accepts, and purges without leftovers; the
//!   `.rpm` (`HEARTH_TEST_RPM`) and `deploy/PKGBUILD` install the same files;
//! - the systemd unit's hardening, scored by `systemd-analyze security`;
//! - `deploy/docker-compose.yml`, validated by Debian's docker-compose
//!   (`config` needs no engine; none runs here, so images are not pulled);
//! - the Docker build context and image shape;
//! - `hearth homeserver-config`: a real Synapse starts with the snippet and
//!   serves the identity server in its client well-known;
//! - `hearth audit` on the config Synapse's `--generate-config` writes and
//!   on Element's defaults, then on configs wired to Hearth.

use hearth_e2e::{Output, Site, Synapse, hearth_bin, python_ok, run, synapse_python};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    hearth_testkit::workspace_root()
}

/// A path the suite was given in `var`, which `cargo xtask test` sets.
fn given(var: &str) -> PathBuf {
    let path = env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{var} is not set: run the suite with `cargo xtask test`"));
    PathBuf::from(path)
}

fn run_ok(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd, None);
    assert!(out.status.success(), "{shown}: {out}");
    out
}

fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Parses YAML text (one document) into JSON.
fn yaml(text: &str) -> Value {
    fn convert(y: &yaml_rust2::Yaml) -> Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
            Yaml::Integer(i) => json!(i),
            Yaml::Boolean(b) => json!(b),
            Yaml::Array(a) => Value::Array(a.iter().map(convert).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| {
                        let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                        (key, convert(v))
                    })
                    .collect(),
            ),
            _ => Value::Null,
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"));
    docs.first().map(convert).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------
// Packages.

/// The files every package installs, by path, apart from where the
/// distributions differ (unit and zsh directories, licence).
const COMMON_FILES: &[&str] = &[
    "/etc/hearth/hearth.toml",
    "/usr/bin/hearth",
    "/usr/lib/sysusers.d/hearth.conf",
    "/usr/share/bash-completion/completions/hearth",
    "/usr/share/doc/hearth/README.md",
    "/usr/share/fish/vendor_completions.d/hearth.fish",
    "/usr/share/man/man1/hearth.1.gz",
];

/// The files of the Fedora-style layout the RPM and the PKGBUILD share.
fn rpm_style_files() -> BTreeSet<String> {
    COMMON_FILES
        .iter()
        .copied()
        .chain([
            "/usr/lib/systemd/system/hearth.service",
            "/usr/share/zsh/site-functions/_hearth",
            "/usr/share/licenses/hearth/LICENSE",
        ])
        .map(str::to_owned)
        .collect()
}

/// Removes the package whatever happens to the test, so a failure leaves
/// the machine as it was.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "hearth"]).output();
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn the_deb_installs_runs_checks_its_config_and_purges_cleanly() {
    let deb = given("HEARTH_TEST_DEB");
    let analyze = given("HEARTH_TEST_SYSTEMD_ANALYZE");
    assert!(
        is_root(),
        "installing {} with dpkg needs root, as `cargo xtask test` runs on CI",
        deb.display()
    );
    let version = run_ok(command(hearth_bin(), &["--version"])).stdout;

    // What the package declares.
    let fields = run_ok(command("dpkg-deb", &["--field", deb.to_str().unwrap()])).stdout;
    assert!(fields.contains("Package: hearth\n"), "{fields}");
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .expect("a Depends field");
    assert!(depends.contains("libc6 (>= "), "{depends}");
    let contents = run_ok(command("dpkg-deb", &["--contents", deb.to_str().unwrap()])).stdout;
    for file in COMMON_FILES.iter().chain(&[
        "/lib/systemd/system/hearth.service",
        "/usr/share/zsh/vendor-completions/_hearth",
    ]) {
        assert!(
            contents.contains(&format!(".{file}\n")),
            "{file} missing:\n{contents}"
        );
    }

    // A leftover from an interrupted run would hide what this one does.
    let _ = Command::new("dpkg").args(["--purge", "hearth"]).output();
    let guard = Installed;
    run_ok(command("dpkg", &["--install", deb.to_str().unwrap()]));

    let out = run_ok(command("/usr/bin/hearth", &["--version"]));
    assert_eq!(out.stdout, version);
    let mut check = command(
        "/usr/bin/hearth",
        &["config", "check", "/etc/hearth/hearth.toml"],
    );
    // As the unit runs it: state in /var/lib/hearth, nothing inherited.
    check.env_clear().env("PATH", "/usr/bin:/bin");
    let out = run_ok(check);
    assert_eq!(out.stdout, "config OK: /etc/hearth/hearth.toml\n");

    // The conffile, readable by the service's group only.
    let conffiles = run_ok(command(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "hearth"],
    ))
    .stdout;
    assert!(conffiles.contains("/etc/hearth/hearth.toml"), "{conffiles}");
    let meta = fs::metadata("/etc/hearth/hearth.toml").unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let group = run_ok(command("getent", &["group", "hearth"])).stdout;
    let gid: u32 = group.split(':').nth(2).unwrap().parse().unwrap();
    assert_eq!(meta.gid(), gid, "hearth.toml belongs to the hearth group");
    let user = run_ok(command("getent", &["passwd", "hearth"])).stdout;
    assert!(user.contains(":/var/lib/hearth:"), "{user}");

    // The installed unit verifies now that its binary exists. (The man page
    // is checked below: `man` itself may be absent on a minimal system.)
    run_ok(command(
        &analyze,
        &["verify", "--man=no", "/lib/systemd/system/hearth.service"],
    ));
    let man = run_ok(command("gzip", &["-dc", "/usr/share/man/man1/hearth.1.gz"])).stdout;
    assert!(man.contains(".TH hearth 1"), "{man}");
    assert!(
        man.contains("homeserver\\-config"),
        "subcommands are listed:\n{man}"
    );
    let completion = fs::read_to_string("/usr/share/bash-completion/completions/hearth").unwrap();
    assert!(
        completion.contains("homeserver-config"),
        "bash completion lists subcommands"
    );
    // Installed, not enabled: the config needs a server name first.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/hearth.service").exists());

    // The service can write its state directory when it runs as hearth.
    fs::create_dir_all("/var/lib/hearth").unwrap();
    run_ok(command("chown", &["hearth:hearth", "/var/lib/hearth"]));

    run_ok(command("dpkg", &["--purge", "hearth"]));
    drop(guard);
    for path in [
        "/usr/bin/hearth",
        "/etc/hearth",
        "/lib/systemd/system/hearth.service",
        "/var/lib/hearth",
    ] {
        assert!(!Path::new(path).exists(), "{path} is left after purge");
    }
    let status = run(command("dpkg-query", &["--show", "hearth"]), None);
    assert!(
        !status.status.success(),
        "dpkg still knows hearth: {status}"
    );
}

#[test]
fn the_rpm_installs_the_same_files_with_its_user_and_conffile() {
    let rpm = given("HEARTH_TEST_RPM");
    let path = rpm.to_str().unwrap();
    let listed: BTreeSet<String> = run_ok(command("rpm", &["-qp", "--list", path]))
        .stdout
        .lines()
        .map(str::to_owned)
        .collect();
    let mut expected = rpm_style_files();
    expected.insert("/etc/hearth".to_owned());
    assert_eq!(listed, expected);
    let config = run_ok(command("rpm", &["-qp", "--configfiles", path])).stdout;
    assert_eq!(config, "/etc/hearth/hearth.toml\n");
    let owners = run_ok(command(
        "rpm",
        &[
            "-qp",
            "--queryformat",
            "[%{FILENAMES} %{FILEMODES:perms} %{FILEGROUPNAME}\n]",
            path,
        ],
    ))
    .stdout;
    assert!(
        owners.contains("/etc/hearth/hearth.toml -rw-r----- hearth\n"),
        "{owners}"
    );
    let scripts = run_ok(command("rpm", &["-qp", "--scripts", path])).stdout;
    assert!(scripts.contains("useradd -r -g hearth"), "{scripts}");
    let requires = run_ok(command("rpm", &["-qp", "--requires", path])).stdout;
    assert!(
        requires.contains("libc.so.6"),
        "automatic library requirements: {requires}"
    );
}

#[test]
fn the_pkgbuild_packages_the_same_files() {
    let root = workspace();
    let dir = tempfile::tempdir().unwrap();
    let version = run_ok(command(hearth_bin(), &["--version"])).stdout;
    let version = version.trim().strip_prefix("hearth ").unwrap().to_owned();
    // makepkg's source directory: the unpacked release with a built binary.
    let src = dir.path().join(format!("src/hearth-{version}"));
    for rel in [
        "config/hearth.example.toml",
        "deploy/hearth.service",
        "deploy/hearth.sysusers",
        "deploy/hearth.tmpfiles",
        "README.md",
        "LICENSE",
    ] {
        let to = src.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(root.join(rel), &to).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }
    fs::create_dir_all(src.join("target/release")).unwrap();
    fs::copy(hearth_bin(), src.join("target/release/hearth")).unwrap();
    let pkg = dir.path().join("pkg");
    fs::create_dir_all(&pkg).unwrap();
    // makepkg sources the PKGBUILD with bash and calls package() in srcdir.
    let script = format!(
        "set -euo pipefail\nsource {}\n[ \"$pkgver\" = {version} ] || {{ echo \"pkgver $pkgver\"; exit 1; }}\n\
         printf '%s\\n' \"${{backup[@]}}\"\nsrcdir={} pkgdir={}\ncd \"$srcdir\"\npackage\n",
        root.join("deploy/PKGBUILD").display(),
        dir.path().join("src").display(),
        pkg.display()
    );
    let out = run_ok(command("bash", &["-c", &script]));
    assert_eq!(out.stdout, "etc/hearth/hearth.toml\n", "backup=()");
    let mut files = BTreeSet::new();
    let mut stack = vec![pkg.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(format!("/{}", path.strip_prefix(&pkg).unwrap().display()));
            }
        }
    }
    let mut expected = rpm_style_files();
    expected.insert("/usr/lib/tmpfiles.d/hearth.conf".to_owned());
    assert_eq!(files, expected);
    let mode = fs::metadata(pkg.join("etc/hearth/hearth.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let man = run_ok(command(
        "gzip",
        &[
            "-dc",
            pkg.join("usr/share/man/man1/hearth.1.gz").to_str().unwrap(),
        ],
    ));
    assert!(man.stdout.contains(".TH hearth 1"));
}

// ---------------------------------------------------------------------------
// systemd and Docker.

#[test]
fn the_unit_is_hardened() {
    let analyze = given("HEARTH_TEST_SYSTEMD_ANALYZE");
    let unit = fs::read_to_string(workspace().join("deploy/hearth.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for required in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "PrivateUsers=yes",
        "User=hearth",
    ] {
        assert!(directives.contains(&required), "{required} missing");
    }
    // `systemctl reload` sends SIGHUP, which Hearth reloads on
    // (tests/tests/reload.rs).
    assert!(directives.contains(&"ExecReload=/bin/kill -s HUP $MAINPID"));
    // systemd's own score of the sandbox: 0 is fully locked down, 10 open.
    let out = run_ok(command(
        &analyze,
        &[
            "security",
            "--offline=yes",
            workspace().join("deploy/hearth.service").to_str().unwrap(),
        ],
    ));
    let level: f64 = out
        .stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for hearth.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 2.0, "exposure {level}:\n{}", out.stdout);
}

/// `docker-compose config` with the names `.env` would hold.
fn compose_config(extra_env: &[(&str, &str)]) -> Output {
    let compose = given("HEARTH_TEST_COMPOSE");
    let mut cmd = Command::new(compose);
    cmd.args(["--file", "docker-compose.yml", "config"])
        .current_dir(workspace().join("deploy"))
        .env_remove("HEARTH_SERVER_NAME")
        .env_remove("SYNAPSE_SERVER_NAME")
        .env_remove("HEARTH_TURN_HOST");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    run(cmd, None)
}

#[test]
fn docker_compose_validates_and_wires_the_services() {
    let names = [
        ("HEARTH_SERVER_NAME", "hearth.example.org"),
        ("SYNAPSE_SERVER_NAME", "example.org"),
        ("HEARTH_TURN_HOST", "turn.example.org"),
    ];
    let out = compose_config(&names);
    assert!(out.status.success(), "docker-compose config: {out}");
    let config = yaml(&out.stdout);
    let services = &config["services"];
    for name in [
        "postgres",
        "hearth",
        "hearth-wiring",
        "hearth-turn",
        "synapse",
    ] {
        assert!(services[name].is_object(), "service {name} missing");
    }
    // Every secret a service uses is defined, from a file.
    for (name, service) in services.as_object().unwrap() {
        for secret in service["secrets"].as_array().into_iter().flatten() {
            let source = secret["source"].as_str().unwrap();
            assert!(
                config["secrets"][source]["file"].is_string(),
                "{name}: secret {source} undefined"
            );
        }
    }
    // Plain HTTP is published on the host's loopback only.
    for (name, service) in services.as_object().unwrap() {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
    }
    // TURN on the host's network, with the relay range given.
    let turn = &services["hearth-turn"];
    assert_eq!(turn["network_mode"], "host");
    assert_eq!(turn["command"], json!(["turn"]));
    assert_eq!(turn["environment"]["HEARTH_TURN__MIN_PORT"], "49152");
    assert_eq!(turn["environment"]["HEARTH_TURN__MAX_PORT"], "49407");
    // Hearth reads its database URL from the secret PostgreSQL's password
    // is in, and Synapse starts on the wiring once it is written.
    let hearth = &services["hearth"];
    assert_eq!(
        hearth["environment"]["HEARTH_DATABASE__URL_FILE"],
        "/run/secrets/hearth_database_url"
    );
    assert_eq!(
        hearth["environment"]["HEARTH_SERVER_NAME"],
        "hearth.example.org"
    );
    assert_eq!(
        services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"],
        "/run/secrets/postgres_password"
    );
    assert_eq!(
        services["synapse"]["depends_on"]["hearth-wiring"]["condition"],
        "service_completed_successfully"
    );
    let wiring_cmd = services["hearth-wiring"]["command"].as_array().unwrap();
    assert_eq!(wiring_cmd[0], "homeserver-config");
    assert!(
        services["synapse"]["command"]
            .as_array()
            .unwrap()
            .contains(&json!("/wiring/hearth.yaml"))
    );

    // Volumes Hearth writes start out owned by the image's user, or a fresh
    // named volume would be root's and unwritable.
    let dockerfile = fs::read_to_string(workspace().join("deploy/Dockerfile")).unwrap();
    for (name, service) in services.as_object().unwrap() {
        if service["image"] != "hearth:local" {
            continue;
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let parts: Vec<&str> = volume.as_str().unwrap().split(':').collect();
            if parts.get(2) == Some(&"ro") {
                continue;
            }
            let owned = format!(
                "COPY --from=build --chown=65532:65532 /out{0} {0}\n",
                parts[1]
            );
            assert!(
                dockerfile.contains(&owned),
                "{name}: {} is not made writable in the image",
                parts[1]
            );
        }
    }

    // The binary accepts the environment each Hearth service runs with, its
    // secrets standing in as files here.
    for name in ["hearth", "hearth-wiring", "hearth-turn"] {
        let mut site = Site::new();
        for (key, value) in services[name]["environment"].as_object().unwrap() {
            let mut value = value.as_str().unwrap().to_owned();
            if let Some(secret) = value.strip_prefix("/run/secrets/") {
                let text = match secret {
                    "hearth_database_url" => "postgres://hearth:pw@postgres/hearth",
                    _ => "a secret",
                };
                value = site.write_file(secret, text).display().to_string();
            }
            site.set_env(key, value);
        }
        let out = site.run(&["config", "check"]);
        assert!(out.status.success(), "{name}'s environment: {out}");
    }

    // Without the names, it refuses instead of running as "localhost".
    let out = compose_config(&names[1..]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("set HEARTH_SERVER_NAME in .env"),
        "{out}"
    );
    // env.example, copied to .env as the header says, sets them all.
    let mut cmd = Command::new(given("HEARTH_TEST_COMPOSE"));
    cmd.args([
        "--env-file",
        "env.example",
        "--file",
        "docker-compose.yml",
        "config",
    ])
    .current_dir(workspace().join("deploy"))
    .env_remove("HEARTH_SERVER_NAME")
    .env_remove("SYNAPSE_SERVER_NAME")
    .env_remove("HEARTH_TURN_HOST");
    let out = run_ok(cmd);
    let config = yaml(&out.stdout);
    assert_eq!(
        config["services"]["synapse"]["environment"]["SYNAPSE_SERVER_NAME"],
        "example.org"
    );
}

#[test]
fn the_docker_build_context_leaves_out_build_output_data_and_secrets() {
    let root = workspace();
    let ignore = fs::read_to_string(root.join(".dockerignore")).unwrap();
    // BuildKit reads the one beside the Dockerfile, the classic builder and
    // docker-compose 1 the one at the context root: they must agree.
    assert_eq!(
        fs::read_to_string(root.join("deploy/Dockerfile.dockerignore")).unwrap(),
        ignore
    );
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules[0], "*", "everything is left out unless listed");
    let included: Vec<&str> = rules.iter().filter_map(|r| r.strip_prefix('!')).collect();
    for path in &included {
        assert!(
            !["target", "data", "deploy"]
                .iter()
                .any(|p| path.starts_with(p)),
            "{path} must stay out of the context"
        );
        assert!(
            root.join(path.trim_end_matches('/')).exists(),
            "{path} does not exist"
        );
    }
    // What `cargo build --locked -p hearth` reads: the manifest, the lock
    // file, and every workspace member's directory.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "crates/",
        "xtask/",
        "tests/",
        "config/",
    ] {
        assert!(
            included.contains(&needed),
            "{needed} must be in the context"
        );
    }
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"members = ["crates/*", "xtask", "tests"]"#),
        "members changed: update .dockerignore"
    );
    for rule in ["**/target", "**/data", "**/node_modules", "**/*.key"] {
        assert!(rules.contains(&rule), "{rule}");
    }

    // Cargo loads the workspace and its locked dependency graph from the
    // context alone, as `cargo build --locked` in the image will.
    let context = tempfile::tempdir().unwrap();
    for path in &included {
        let path = path.trim_end_matches('/');
        copy_context(&root.join(path), &context.path().join(path));
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut metadata = Command::new(cargo);
    metadata
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(context.path());
    let out = run_ok(metadata);
    assert!(
        out.stdout.contains("\"name\":\"hearth\""),
        "hearth is in the context's workspace"
    );

    let dockerfile = fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.matches("\nFROM ").count(),
        2,
        "a build and a runtime stage"
    );
    assert!(
        dockerfile.contains("\nUSER 65532:65532\n"),
        "runs as non-root"
    );
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/hearth", "health"]"#));
}

/// Copies `from` to `to` as the build context would hold it: without the
/// `**/target`, `**/data`, `**/node_modules`, `**/*.key` and `**/*.db` the
/// ignore file leaves out.
fn copy_context(from: &Path, to: &Path) {
    let name = from
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if ["target", "data", "node_modules"].contains(&name)
        || name.ends_with(".key")
        || name.ends_with(".db")
    {
        return;
    }
    if from.is_dir() {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_context(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

// ---------------------------------------------------------------------------
// Wiring and audit.

/// A Hearth site named `hearth.example.org` with a signing key.
fn named_site() -> Site {
    let site = Site::new().with_env("HEARTH_SERVER_NAME", "hearth.example.org");
    site.run_ok(&["keys", "generate"]);
    site
}

const TURN_SECRET: &str = "a shared secret for the tests";

/// [`named_site`] with TURN (its secret in a file) and the integration
/// manager's Jitsi domain.
fn wired_site() -> Site {
    let mut site = named_site();
    let secret = site.write_file("turn.secret", TURN_SECRET);
    site.set_env("HEARTH_TURN__ENABLED", "true");
    site.set_env("HEARTH_TURN__SHARED_SECRET_FILE", secret);
    site.set_env("HEARTH_TURN__EXTERNAL_IP", r#"["203.0.113.7"]"#);
    site.set_env(
        "HEARTH_INTEGRATIONS__WIDGETS__JITSI_DOMAIN",
        "meet.example.org",
    );
    site
}

/// base64(HMAC-SHA1(secret, username)), by Python's standard library: the
/// TURN REST password Synapse computes.
fn turn_password(username: &str) -> String {
    python_ok(
        "import base64, hashlib, hmac, sys\n\
         print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha1).digest()).decode())",
        &[TURN_SECRET, username],
        b"",
    )
    .trim()
    .to_owned()
}

#[test]
fn synapse_starts_on_the_homeserver_config_and_advertises_hearth() {
    let site = wired_site();
    let snippet = site.run_ok(&["homeserver-config", "synapse"]).stdout;
    let wiring = yaml(&snippet);
    // The verify key is the one Hearth signs with.
    let shown = site.run_ok(&["keys", "show"]).stdout;
    let current = shown
        .lines()
        .find_map(|l| l.strip_prefix("current "))
        .unwrap();
    let (key_id, key) = current.split_once(' ').unwrap();
    let server = &wiring["trusted_key_servers"][0];
    assert_eq!(server["server_name"], "hearth.example.org");
    assert_eq!(server["verify_keys"][key_id], key);
    assert_eq!(
        wiring["default_identity_server"],
        "https://hearth.example.org"
    );

    // Synapse parses every key at start-up; with public_baseurl set it
    // serves the client well-known with the identity server.
    let mut overrides = wiring.clone();
    overrides["public_baseurl"] = json!("https://matrix.example.org/");
    let synapse = Synapse::start(&overrides);
    let well_known = synapse.client().get("/.well-known/matrix/client", None);
    assert_eq!(well_known.status, 200, "{}", well_known.text());
    assert_eq!(
        well_known.json()["m.identity_server"]["base_url"],
        "https://hearth.example.org"
    );
    assert_eq!(
        well_known.json()["m.integrations"],
        json!({"managers": [{"api_url": "https://hearth.example.org/api",
                             "ui_url": "https://hearth.example.org/element"}]})
    );

    // Synapse read the secret from Hearth's file: the credentials it hands
    // a user are the ones Hearth's TURN accepts.
    assert!(
        wiring.get("turn_shared_secret").is_none(),
        "no secret printed"
    );
    let token = synapse.user("alice", "a long enough password");
    let turn = synapse
        .client()
        .get("/_matrix/client/v3/voip/turnServer", Some(&token));
    assert_eq!(turn.status, 200, "{}", turn.text());
    let turn = turn.json();
    assert_eq!(
        turn["uris"],
        json!([
            "turn:203.0.113.7:3478?transport=udp",
            "turn:203.0.113.7:3478?transport=tcp"
        ])
    );
    assert_eq!(turn["ttl"], 3600);
    let username = turn["username"].as_str().unwrap();
    assert!(
        username.ends_with(&format!(":{}", synapse.user_id("alice"))),
        "{username}"
    );
    assert_eq!(turn["password"], turn_password(username));

    // The client snippets are JSON naming the same URLs.
    let args = [
        "--homeserver-url",
        "https://matrix.example.org",
        "--homeserver-name",
        "example.org",
    ];
    let mut cmd = vec!["homeserver-config", "well-known"];
    cmd.extend(args);
    let wk: Value = serde_json::from_str(&site.run_ok(&cmd).stdout).unwrap();
    assert_eq!(
        wk,
        json!({"m.homeserver": {"base_url": "https://matrix.example.org"},
               "m.identity_server": {"base_url": "https://hearth.example.org"},
               "m.integrations": {"managers": [{"api_url": "https://hearth.example.org/api",
                                                "ui_url": "https://hearth.example.org/element"}]}})
    );
    let mut cmd = vec!["homeserver-config", "element"];
    cmd.extend(args);
    let element: Value = serde_json::from_str(&site.run_ok(&cmd).stdout).unwrap();
    assert_eq!(
        element,
        json!({
            "default_server_config": {
                "m.homeserver": {"base_url": "https://matrix.example.org", "server_name": "example.org"},
                "m.identity_server": {"base_url": "https://hearth.example.org"}
            },
            "integrations_ui_url": "https://hearth.example.org/element",
            "integrations_rest_url": "https://hearth.example.org/api",
            "integrations_widgets_urls": ["https://hearth.example.org/api"],
            "jitsi": {"preferred_domain": "meet.example.org"}
        })
    );

    // LiveKit's TURN servers: Hearth's URIs, with credentials its TURN
    // accepts for 30 days.
    let livekit = site
        .run_ok(&["homeserver-config", "livekit", "--livekit-days", "30"])
        .stdout;
    assert!(livekit.contains("# SECRET: "), "{livekit}");
    let servers = yaml(&livekit)["rtc"]["turn_servers"].clone();
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (server, protocol) in servers.iter().zip(["udp", "tcp"]) {
        assert_eq!(server["host"], "203.0.113.7");
        assert_eq!(server["port"], 3478);
        assert_eq!(server["protocol"], protocol);
        let username = server["username"].as_str().unwrap();
        let (expiry, who) = username.split_once(':').unwrap();
        assert_eq!(who, "livekit");
        let days = (expiry.parse::<u64>().unwrap() - now) as f64 / 86_400.0;
        assert!((29.9..=30.1).contains(&days), "{days} days");
        assert_eq!(server["credential"], turn_password(username));
    }
}

/// Synapse's own `--generate-config` output for `example.org`.
fn generated_homeserver_yaml(dir: &Path) -> PathBuf {
    let mut generate = Command::new(synapse_python());
    generate
        .args([
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            "example.org",
        ])
        .args([
            "--config-path",
            "homeserver.yaml",
            "--generate-config",
            "--report-stats=no",
        ])
        .current_dir(dir);
    run_ok(generate);
    dir.join("homeserver.yaml")
}

#[test]
fn audit_finds_the_third_parties_of_generated_configs_and_none_once_wired() {
    let site = named_site();
    let dir = tempfile::tempdir().unwrap();
    let homeserver = generated_homeserver_yaml(dir.path());
    // Element's config.sample.json as far as these keys go (the reference's
    // integration-manager.md, 1.1 and 5.2): vector.im as identity server,
    // Scalar's widget URLs, and no integrations_* URLs of its own.
    let element = dir.path().join("config.json");
    fs::write(
        &element,
        json!({
            "default_server_config": {
                "m.homeserver": {"base_url": "https://matrix.example.org", "server_name": "example.org"},
                "m.identity_server": {"base_url": "https://vector.im"}
            },
            "integrations_widgets_urls": [
                "https://scalar.vector.im/_matrix/integrations/v1",
                "https://scalar.vector.im/api",
                "https://scalar-staging.vector.im/_matrix/integrations/v1"
            ],
            "jitsi": {"preferred_domain": "meet.element.io"}
        })
        .to_string(),
    )
    .unwrap();
    let out = site.run(&[
        "audit",
        "--synapse",
        homeserver.to_str().unwrap(),
        "--element",
        element.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(1), "{out}");
    for expected in [
        // Synapse writes matrix.org as its notary.
        "homeserver.yaml: trusted_key_servers[0].server_name\n",
        "homeserver.yaml: turn_uris\n",
        "config.json: default_server_config.m.identity_server.base_url\n",
        // Absent, so Element falls back to Scalar.
        "config.json: integrations_ui_url\n",
        "config.json: integrations_rest_url\n",
        "config.json: integrations_widgets_urls[0]\n",
        "config.json: jitsi.preferred_domain\n",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?} not in:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("with server_name \"hearth.example.org\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("9 third-party dependencies found\n"),
        "{}",
        out.stdout
    );

    // Synapse's own default when the key is left out.
    let text = fs::read_to_string(&homeserver).unwrap();
    let without: String = text
        .lines()
        .scan(false, |skipping, line| {
            if line.starts_with("trusted_key_servers:") {
                *skipping = true;
                return Some(None);
            }
            if *skipping && (line.starts_with(' ') || line.starts_with('-')) {
                return Some(None);
            }
            *skipping = false;
            Some(Some(format!("{line}\n")))
        })
        .flatten()
        .collect();
    let bare = dir.path().join("bare.yaml");
    fs::write(&bare, &without).unwrap();
    let out = site.run(&["audit", "--synapse", bare.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("bare.yaml: trusted_key_servers\n  absent, so Synapse asks matrix.org"),
        "{}",
        out.stdout
    );

    // Wired to Hearth: the generated file with the snippet's keys and a
    // TURN URI of the operator's own, and Element's config with Hearth's
    // identity server and its own Jitsi, integrations off.
    let mut config = yaml(&text);
    let wiring = yaml(&site.run_ok(&["homeserver-config", "synapse"]).stdout);
    for (k, v) in wiring.as_object().unwrap() {
        config[k] = v.clone();
    }
    config["turn_uris"] = json!(["turn:turn.example.org:3478?transport=udp"]);
    let wired = dir.path().join("wired.yaml");
    // JSON is YAML: Synapse reads it as such.
    fs::write(&wired, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut element_config: Value = serde_json::from_str(
        &site
            .run_ok(&[
                "homeserver-config",
                "element",
                "--homeserver-url",
                "https://matrix.example.org",
            ])
            .stdout,
    )
    .unwrap();
    element_config["integrations_ui_url"] = json!("");
    element_config["integrations_rest_url"] = json!("");
    element_config["jitsi"] = json!({"preferred_domain": "meet.example.org"});
    let element_wired = dir.path().join("element.json");
    fs::write(&element_wired, element_config.to_string()).unwrap();
    let out = site.run(&[
        "audit",
        "--synapse",
        wired.to_str().unwrap(),
        "--element",
        element_wired.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "no third-party dependency found\n");

    // A file it cannot read is not a clean bill of health, nor a finding.
    let missing = dir.path().join("missing.yaml");
    let out = site.run(&["audit", "--synapse", missing.to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("missing.yaml"), "{out}");
}
