//! Issue 30, "errors read once": what a store's failure says. A repository
//! on a real file system too small for the backup (a tmpfs, mounted by the
//! test as root).

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A tmpfs mounted at a directory for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        strongbox_testkit::sh(&format!("mount -t tmpfs -o size={size} tmpfs {}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        strongbox_testkit::sh(&format!("mount -o remount,size={size} {}", self.0.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A backup larger than the repository's file system (40 MB of random
/// bytes into 16 MiB): the job fails and its message says so once, naming
/// the object ("the repository's disk is full (…): no space left on
/// device", not the OS error four times); the repository checks clean;
/// once there is room the next backup succeeds and restores exactly.
#[test]
fn a_full_repository_disk_fails_the_backup_in_one_sentence_and_damages_nothing() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "16m");
    let repository = disk.0.join("repository");
    let (data, restored) = (root.path().join("data.bin"), root.path().join("restored.bin"));
    strongbox_testkit::sh(&format!("head -c 40000000 /dev/urandom > {}", data.display()));
    let (backup_command, recovery_command) = (
        format!("cat {}", data.display()),
        format!("cat > {}", restored.display()),
    );
    let host = root.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let env = [
        ("STRONGBOX_REPOSITORY", repository.display().to_string()),
        ("STRONGBOX_REPO_PASSWORD", "the repository's password".to_string()),
        (
            "STRONGBOX_ALLOW_COMMANDS",
            serde_json::json!([backup_command, recovery_command]).to_string(),
        ),
    ];
    let s = start_with(&host, free_port(), &env);
    register_command(&s, "blob", &backup_command, &recovery_command);

    let url = s.url(&format!("{API}/blob/backups"));
    let (status, h, answer) = s.curl(&[&AUTH[..], &["-X", "POST", "-d", "{}", &url]].concat());
    assert_eq!(status, "HTTP/2 202", "{answer}");
    let failed = s.wait_for(header(&h, "location"), "Failed");
    let message = failed["message"].as_str().unwrap_or_default();
    println!("the job said: {message}");
    assert!(message.contains("the repository's disk is full ("), "{failed}");
    assert_eq!(
        message.to_lowercase().matches("no space left on device").count(),
        1,
        "once: {message}"
    );
    let (_, list) = s.json(&[&url]);
    assert!(
        list["backupList"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] != "COMPLETED"),
        "no backup listed as completed: {list}"
    );

    let password = root.path().join("password");
    std::fs::write(&password, "the repository's password").unwrap();
    let check = s.repo_cli_on(&repository, &password, &["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    disk.resize("128m");
    let job = post_until_accepted(&s, &format!("{API}/blob/backups"), "{}");
    let (_, list) = s.json(&[&url]);
    let tag = list["backupList"][0]["dbTag"].as_str().unwrap().to_string();
    assert_eq!(list["backupList"][0]["status"], "COMPLETED", "{job}");
    post_until_accepted(
        &s,
        &format!("{API}/blob/backups/recovery"),
        &format!(r#"{{"tag": "{tag}"}}"#),
    );
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&data).unwrap(),
        "restored byte for byte"
    );
    drop(s);
}
