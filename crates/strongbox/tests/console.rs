//! The web console, driven in Debian's headless Chromium by playwright-core
//! (`tests/console/console.mjs`): sign-in (a wrong password refused), a
//! backup started and watched to completion, a recovery to a moment picked
//! on the range with the keyboard, after a confirmation; a copy of that
//! moment restored into another file; the activity log; a change without
//! the CSRF token refused. Here: the recovered database and the copy hold
//! exactly what it held at that moment.
//!
//! `STRONGBOX_SCREENSHOTS=DIR` keeps the screenshots (the README's come
//! from `docs/`).

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "npm ci: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_console_signs_in_backs_up_and_recovers_to_a_picked_moment_in_a_real_browser() {
    debian_package("chromium", "chromium");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    node_modules(&script);
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir);
    let db = dir.path().join("data-demo/usexample/db12c.sqlite");
    let orders = || table_checksum(&db, "orders");
    let at_first = orders();

    // The first backup, then a write it does not hold (a later second).
    let (status, location) = s.post_backup("db12c", &[]);
    assert_eq!(status, "HTTP/2 202", "{location}");
    s.wait_for(&location, "Succeeded");
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    let first = list["backupList"][0]["backupCompleteDate"]
        .as_str()
        .unwrap()
        .trim_end_matches(" UTC")
        .to_string();
    // A restore drill of it, for the console's backup list to show.
    let url = s.url("/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups/verify");
    let (status, h, body) = s.curl(&[&AUTH[..], &["-X", "POST", &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{body}");
    s.wait_for(header(&h, "location"), "Succeeded");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO orders (customer, amount, created_at) VALUES ('after the first backup', 1, 'now')",
            [],
        )
        .unwrap();
    assert_ne!(orders(), at_first);
    // What the console's own backup will hold.
    let at_second = orders();

    let copy = dir.path().join("copy-of-db12c.sqlite");
    let shots = std::env::var("STRONGBOX_SCREENSHOTS").unwrap_or_else(|_| dir.path().display().to_string());
    let out = Command::new("node")
        .arg(script.join("console.mjs"))
        .args([&s.url(""), "serviceadmin", "Pa55_word", &shots])
        .arg(&copy)
        .current_dir(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CONSOLE OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The earliest moment on the range is the first backup's; recovered to
    // it, the database lost the later write (the console's own backup,
    // taken after it, held it).
    assert!(
        stdout.contains(&format!("RECOVERED TO {first}")),
        "{stdout} (first backup {first})"
    );
    assert_eq!(
        orders(),
        at_first,
        "the first backup's rows, exactly (ordered checksum)"
    );
    // The latest moment is the console's own backup's completion.
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    let second = list["backupList"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["backupCompleteDate"].as_str())
        .map(|d| d.trim_end_matches(" UTC"))
        .find(|d| *d != first)
        .unwrap_or_else(|| panic!("the console's backup: {list}"))
        .to_string();
    assert!(stdout.contains(&format!("COPIED {second} TO")), "{stdout}");
    assert_eq!(orders(), at_first, "the deployment not changed by the copy");
    assert_eq!(table_checksum(&copy, "orders"), at_second, "the copy, exactly");
    for shot in ["console-1280.png", "console-390.png"] {
        let png = std::fs::read(Path::new(&shots).join(shot)).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{shot}: {} bytes",
            png.len()
        );
    }
    let (_, list) = s.json(&[&s.url(BACKUPS)]);
    assert_eq!(list["backupList"].as_array().unwrap().len(), 2, "{list}");
}
