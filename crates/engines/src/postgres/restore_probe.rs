//! PostgreSQL's `restore_command`, tried before a recovery stops anything.
//! PostgreSQL runs it as the data directory's owner, not as Strongbox: a
//! repository or password file that user cannot read (a copy's generated
//! password file is root's), or a store it cannot reach, would otherwise
//! show only after the live server was stopped and its data moved aside,
//! as "could not start server" with the cause in PostgreSQL's own log.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::{Error, WalArchive};

/// Fetches one archived file with `command` (`%f`, `%p` as PostgreSQL
/// fills them) as `owner`, into `scratch` (made and removed here). An
/// empty archive has nothing to try.
pub(super) fn probe(command: &str, wal: &dyn WalArchive, owner: (u32, u32), scratch: &Path) -> Result<(), Error> {
    let names = wal.names()?;
    // A small file where there is one: a timeline history or a backup's label.
    let Some(name) = names
        .iter()
        .find(|n| n.ends_with(".history") || n.ends_with(".backup"))
        .or_else(|| names.iter().find(|n| !n.contains('.')))
    else {
        return Ok(());
    };
    std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch.display(), e))?;
    let result = run_as(command, name, owner, scratch);
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn run_as(command: &str, name: &str, (uid, gid): (u32, u32), scratch: &Path) -> Result<(), Error> {
    let into = scratch.join("probe");
    std::os::unix::fs::chown(scratch, Some(uid), Some(gid)).map_err(|e| Error::io(scratch.display(), e))?;
    let line = command.replace("%f", name).replace("%p", &into.display().to_string());
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(&line).current_dir(scratch);
    if super::server::nix_euid() == 0 {
        sh.uid(uid).gid(gid);
    }
    let out = sh
        .output()
        .map_err(|e| Error::Failed(format!("running PostgreSQL's restore_command: {e}")))?;
    if out.status.success() && into.exists() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(Error::Failed(format!(
        "PostgreSQL's restore_command fails when run as the data directory's owner (uid {uid}), as PostgreSQL \
         would run it, fetching {name}: {} (nothing was stopped or changed); make the repository and its password \
         file readable by that user",
        said.trim().lines().last().unwrap_or("it exited without a word")
    )))
}
