//! What an operator installs: the systemd unit (`systemd-analyze verify`
//! finds nothing to say), the example configuration (a server starts with
//! it; the config module's own test checks it names every setting), the
//! shell completions and the manual page.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib").join(name)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_systemd_unit_verifies_clean() {
    debian_package("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    // The unit as installed, with the binary where this build put it.
    let unit = std::fs::read_to_string(contrib("strongbox.service"))
        .unwrap()
        .replace("/usr/local/bin/strongbox", BIN);
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=strongbox",
        "User=strongbox",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
    let path = dir.path().join("strongbox.service");
    std::fs::write(&path, &unit).unwrap();
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok && err.trim().is_empty(), "{out}{err}");
    // Verification speaks up about a mistake (the check can fail).
    std::fs::write(&path, unit.replace("UMask=0077", "UMask=0077\nProtectSystems=strict")).unwrap();
    let (_, _, err) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(err.contains("ProtectSystems"), "{err}");
}

#[test]
fn a_server_starts_with_the_example_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--demo", "--config"])
        .arg(contrib("strongbox.toml"))
        .env("STRONGBOX_DATA_DIR", dir.path().join("data"))
        .env("STRONGBOX_LISTEN", format!("127.0.0.1:{port}"))
        .env("STRONGBOX_DEMO_PASSWORD", "pw")
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap();
    wait_for_port(port);
    let (ok, body, _) = run(Command::new("curl").args([
        "-s",
        "-u",
        "serviceadmin:pw",
        "-H",
        "X-ID-TENANT-NAME: usexample",
        &format!("http://127.0.0.1:{port}/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups/config"),
    ]));
    let _ = child.kill();
    let _ = child.wait();
    let config: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(ok, "{body}");
    // The file's [backup_defaults] are the built-in defaults.
    assert_eq!(
        (&config["autoBackupWindow"], &config["recoveryWindowInDays"]),
        (&serde_json::json!("02:00-04:00"), &serde_json::json!(30)),
        "{body}"
    );
}

#[test]
fn completions_and_the_manual_page_cover_every_command() {
    let (ok, bash, err) = run(Command::new(BIN).args(["completions", "bash"]));
    assert!(ok, "{err}");
    let check = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bash.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "bash -n rejects the script");
    let (ok, man, err) = run(Command::new(BIN).arg("man"));
    assert!(ok && man.contains(".TH strongbox 1"), "{err}");
    for command in ["serve", "repo", "admin", "client", "completions"] {
        assert!(bash.contains(command), "completion for {command}");
        assert!(
            man.contains(&format!("strongbox\\-{command}")),
            "manual names {command}"
        );
    }
    let page = contrib_manual(&man);
    assert!(page.contains("Self-hosted database backup service"), "{page}");
}

/// The page rendered by groff, which must not warn.
fn contrib_manual(roff: &str) -> String {
    debian_package("groff", "groff-base");
    let mut child = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(roff.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "groff: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
