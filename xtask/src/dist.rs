//! `cargo xtask dist`: a Debian package and an RPM from one built binary.
//!
//! Both are assembled from the same staged file tree (the binary, a man
//! page and shell completions that the binary prints from its own CLI
//! definition, the example config as `/etc/hearth/hearth.toml`, the systemd
//! unit and a sysusers file) with the distributions' own tools: `dpkg-deb`
//! and `dpkg-shlibdeps` (Debian's dpkg-dev), and `rpmbuild` (Debian's `rpm`
//! package, installed with apt-get when missing). See
//! docs/decisions/0007-packages-from-dpkg-deb-and-rpmbuild.md for why not
//! cargo-deb and cargo-generate-rpm.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::{cargo_command, debian, describe, output, run_visible, target_dir};

/// The variables naming the packages for the end-to-end suite.
pub(crate) const DEB_VAR: &str = "HEARTH_TEST_DEB";
pub(crate) const RPM_VAR: &str = "HEARTH_TEST_RPM";

const RPMBUILD: &str = "/usr/bin/rpmbuild";
const SHLIBDEPS: &str = "/usr/bin/dpkg-shlibdeps";
const MAINTAINER: &str = "Hearth developers <hearth@example.invalid>";
const HOMEPAGE: &str = "https://example.invalid/hearth";
const SUMMARY: &str = "Identity server, integration manager, key notary and TURN for Matrix";
const DESCRIPTION: &str = "\
Hearth gives a Matrix homeserver the companion services it otherwise
borrows from third parties, in one binary: an identity server, an
integration manager, a trusted key server (notary) and a TURN/STUN server.";

const USAGE: &str = "\
usage: cargo xtask dist [--bin FILE] [--out DIR] [--fast]

Builds hearth in release mode (or packages FILE), then writes a .deb and
an .rpm to DIR (default: <target dir>/dist). --fast compresses lightly.";

/// The packages one run made.
#[derive(Debug)]
pub(crate) struct Packages {
    pub(crate) deb: PathBuf,
    pub(crate) rpm: PathBuf,
}

/// `cargo xtask dist [--bin FILE] [--out DIR] [--fast]`.
pub(crate) fn dist(args: &[String]) -> Result<ExitCode> {
    let root = crate::workspace_root();
    let mut bin = None;
    let mut out = target_dir(&root).join("dist");
    let mut compression = Compression::Best;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bin" => bin = args.next().map(PathBuf::from),
            "--fast" => compression = Compression::Fast,
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let bin = match bin {
        Some(bin) => bin,
        None => {
            let mut cmd = cargo_command();
            cmd.args(["build", "--release", "--locked", "--package", "hearth"])
                .current_dir(&root);
            eprintln!("xtask: {}", describe(&cmd));
            run_visible(&mut cmd)?;
            target_dir(&root).join("release/hearth")
        }
    };
    let packages = build(&root, &bin, &out, compression)?;
    eprintln!(
        "xtask: wrote {} and {}",
        packages.deb.display(),
        packages.rpm.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// How hard to compress: release packages are small, test packages (of an
/// unoptimised 70 MB binary) are quick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Best,
    Fast,
}

/// Packages `bin` into `out`.
pub(crate) fn build(
    root: &Path,
    bin: &Path,
    out: &Path,
    compression: Compression,
) -> Result<Packages> {
    debian::ensure(Path::new(SHLIBDEPS), "dpkg-dev")?;
    debian::ensure(Path::new(RPMBUILD), "rpm")?;
    let version = version(bin)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let work = out.join("work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let deb = deb(root, bin, &version, &work.join("deb"), out, compression)?;
    let rpm = rpm(root, bin, &version, &work.join("rpm"), out, compression)?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(Packages { deb, rpm })
}

/// The version `hearth --version` reports ("hearth 0.1.0").
fn version(bin: &Path) -> Result<String> {
    let text = output(Command::new(bin).arg("--version"))?;
    match text.trim().strip_prefix("hearth ") {
        Some(version) if !version.is_empty() => Ok(version.to_owned()),
        _ => bail!("{} --version printed {text:?}", bin.display()),
    }
}

/// Where the distributions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Debian,
    Rpm,
}

impl Layout {
    fn unit_dir(self) -> &'static str {
        match self {
            // Debian 12 keeps units in /lib, as debhelper installs them.
            Self::Debian => "lib/systemd/system",
            Self::Rpm => "usr/lib/systemd/system",
        }
    }

    fn zsh_dir(self) -> &'static str {
        match self {
            Self::Debian => "usr/share/zsh/vendor-completions",
            Self::Rpm => "usr/share/zsh/site-functions",
        }
    }
}

/// Puts every installed file under `dir`, with the modes it installs with.
fn stage(root: &Path, bin: &Path, dir: &Path, layout: Layout) -> Result<()> {
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))
    };
    let read = |rel: &str| {
        let path = root.join(rel);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let printed = |args: &[&str]| -> Result<Vec<u8>> {
        Ok(output(Command::new(bin).args(args))?.into_bytes())
    };
    put(
        "usr/bin/hearth",
        &fs::read(bin).with_context(|| format!("reading {}", bin.display()))?,
        0o755,
    )?;
    put(
        "usr/share/man/man1/hearth.1.gz",
        &gzip(&printed(&["manpage"])?)?,
        0o644,
    )?;
    put(
        "usr/share/bash-completion/completions/hearth",
        &printed(&["completions", "bash"])?,
        0o644,
    )?;
    put(
        &format!("{}/_hearth", layout.zsh_dir()),
        &printed(&["completions", "zsh"])?,
        0o644,
    )?;
    put(
        "usr/share/fish/vendor_completions.d/hearth.fish",
        &printed(&["completions", "fish"])?,
        0o644,
    )?;
    // The config may hold secrets; the maintainer scripts give it to the
    // hearth group once that exists.
    put(
        "etc/hearth/hearth.toml",
        &read("config/hearth.example.toml")?,
        0o640,
    )?;
    put(
        &format!("{}/hearth.service", layout.unit_dir()),
        &read("deploy/hearth.service")?,
        0o644,
    )?;
    put(
        "usr/lib/sysusers.d/hearth.conf",
        &read("deploy/hearth.sysusers")?,
        0o644,
    )?;
    put("usr/share/doc/hearth/README.md", &read("README.md")?, 0o644)?;
    let license = read("LICENSE")?;
    match layout {
        Layout::Debian => {
            let mut copyright = format!(
                "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                 Upstream-Name: hearth\nSource: {HOMEPAGE}\n\n\
                 Files: *\nCopyright: Hearth developers\nLicense: Apache-2.0\n"
            )
            .into_bytes();
            copyright.extend_from_slice(
                b"\nLicense: Apache-2.0\n On Debian systems, the full text is in\n \
                  /usr/share/common-licenses/Apache-2.0.\n",
            );
            put("usr/share/doc/hearth/copyright", &copyright, 0o644)
        }
        Layout::Rpm => put("usr/share/licenses/hearth/LICENSE", &license, 0o644),
    }
}

/// `gzip -9n`: reproducible (no name or time stamp), as Debian wants man pages.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().context("running gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to gzip panicked"))?
        .context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The Debian package, built with `dpkg-deb`.
fn deb(
    root: &Path,
    bin: &Path,
    version: &str,
    work: &Path,
    out: &Path,
    compression: Compression,
) -> Result<PathBuf> {
    let tree = work.join("root");
    stage(root, bin, &tree, Layout::Debian)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let depends = shlib_depends(work, &tree)?;
    let control_dir = tree.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    let mut control = String::new();
    writeln!(control, "Package: hearth")?;
    writeln!(control, "Version: {version}-1")?;
    writeln!(control, "Architecture: {arch}")?;
    writeln!(control, "Maintainer: {MAINTAINER}")?;
    writeln!(control, "Installed-Size: {}", size_kib(&tree)?)?;
    writeln!(control, "Depends: {depends}, adduser, ca-certificates")?;
    writeln!(control, "Section: net")?;
    writeln!(control, "Priority: optional")?;
    writeln!(control, "Homepage: {HOMEPAGE}")?;
    writeln!(control, "Description: {SUMMARY}")?;
    for line in DESCRIPTION.lines() {
        writeln!(control, " {line}")?;
    }
    fs::write(control_dir.join("control"), control)?;
    fs::write(control_dir.join("conffiles"), "/etc/hearth/hearth.toml\n")?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control_dir.join(script);
        let text = fs::read(root.join("deploy/debian").join(script))
            .with_context(|| format!("reading deploy/debian/{script}"))?;
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("hearth_{version}-1_{arch}.deb"));
    let level = match compression {
        Compression::Best => ["-Zxz", "-z6"],
        Compression::Fast => ["-Zgzip", "-z1"],
    };
    output(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .args(level)
            .arg("--build")
            .arg(&tree)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// What the binary links against, as Debian dependencies.
fn shlib_depends(work: &Path, tree: &Path) -> Result<String> {
    // dpkg-shlibdeps wants to run in a source tree with debian/control.
    let src = work.join("src");
    fs::create_dir_all(src.join("debian"))?;
    fs::write(
        src.join("debian/control"),
        "Source: hearth\n\nPackage: hearth\nArchitecture: any\n",
    )?;
    let text = output(
        Command::new(SHLIBDEPS)
            .arg("-O")
            .arg("-e")
            .arg(tree.join("usr/bin/hearth"))
            .current_dir(&src),
    )?;
    text.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// The tree's size in KiB, as `Installed-Size` counts it.
fn size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            size_kib(&entry.path())? * 1024
        } else {
            meta.len()
        };
    }
    Ok(total.div_ceil(1024))
}

/// The RPM, built with `rpmbuild` from a spec that installs the staged tree.
fn rpm(
    root: &Path,
    bin: &Path,
    version: &str,
    work: &Path,
    out: &Path,
    compression: Compression,
) -> Result<PathBuf> {
    let tree = work.join("root");
    stage(root, bin, &tree, Layout::Rpm)?;
    let spec = work.join("hearth.spec");
    fs::write(&spec, spec_text(version, &tree))?;
    let arch = output(Command::new("rpm").args(["--eval", "%{_arch}"]))?
        .trim()
        .to_owned();
    let define = |cmd: &mut Command, name: &str, value: &Path| {
        cmd.arg("--define")
            .arg(format!("{name} {}", value.display()));
    };
    let mut cmd = Command::new(RPMBUILD);
    cmd.args(["-bb", "--quiet", "--nodeps"]);
    define(&mut cmd, "_topdir", &work.join("top"));
    define(&mut cmd, "_rpmdir", out);
    // The file is named without the arch subdirectory rpmbuild adds by default.
    cmd.arg("--define")
        .arg("_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm");
    cmd.arg("--define").arg(match compression {
        Compression::Best => "_binary_payload w6.xzdio",
        Compression::Fast => "_binary_payload w1.gzdio",
    });
    cmd.arg(&spec).env("HOME", work);
    output(&mut cmd)?;
    let rpm = out.join(format!("hearth-{version}-1.{arch}.rpm"));
    if !rpm.is_file() {
        bail!("rpmbuild wrote no {}", rpm.display());
    }
    Ok(rpm)
}

/// The spec: metadata, the user made before install, the unit reloaded
/// after, and every staged file with its attributes.
fn spec_text(version: &str, tree: &Path) -> String {
    format!(
        "\
# Packages the prebuilt tree; nothing is compiled here.
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%global _build_id_links none

Name: hearth
Version: {version}
Release: 1
Summary: {SUMMARY}
License: Apache-2.0
URL: {HOMEPAGE}
Requires: ca-certificates
Requires(pre): shadow-utils

%description
{DESCRIPTION}

%install
cp -a {tree}/. %{{buildroot}}/

%pre
getent group hearth >/dev/null || groupadd -r hearth
getent passwd hearth >/dev/null || useradd -r -g hearth -d /var/lib/hearth -s /sbin/nologin -c Hearth hearth
exit 0

%post
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi

%preun
if [ $1 -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now hearth.service >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ $1 -ge 1 ]; then systemctl try-restart hearth.service >/dev/null 2>&1 || :; fi
fi

%files
/usr/bin/hearth
%dir %attr(0750,root,hearth) /etc/hearth
%config(noreplace) %attr(0640,root,hearth) /etc/hearth/hearth.toml
/usr/lib/systemd/system/hearth.service
/usr/lib/sysusers.d/hearth.conf
/usr/share/man/man1/hearth.1.gz
/usr/share/bash-completion/completions/hearth
/usr/share/zsh/site-functions/_hearth
/usr/share/fish/vendor_completions.d/hearth.fish
%doc /usr/share/doc/hearth/README.md
%license /usr/share/licenses/hearth/LICENSE
",
        tree = tree.display()
    )
}
