//! The server's repository: where it is, the password that opens it, and
//! the key slots beside that password (`strongbox admin key`), so that
//! losing the data directory need not lose every backup.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use strongbox_repo::Repository;

/// The repository's location: the configured one, else `DATA_DIR/repository`.
pub fn location(configured: Option<&str>, data_dir: &Path) -> String {
    match configured {
        Some(l) => l.to_string(),
        None => data_dir.join("repository").display().to_string(),
    }
}

/// The repository password: STRONGBOX_REPO_PASSWORD, else the one kept
/// (mode 0600) in the data directory, drawn at random on first start when
/// `generate` (the server's start; never `admin`).
pub fn password(data_dir: &Path, generate: bool) -> Result<String> {
    password_from(
        "STRONGBOX_REPO_PASSWORD",
        data_dir.join("repository.password"),
        generate,
    )
    .map(|(p, _)| p)
}

/// A repository's password: from the variable `var`, else the one kept in
/// `file` (mode 0600), drawn at random and written there when there is
/// none and `generate`; with the file, when that is where it is kept (the
/// command lines PostgreSQL runs read it from there).
pub fn password_from(var: &str, file: PathBuf, generate: bool) -> Result<(String, Option<PathBuf>)> {
    if let Ok(p) = std::env::var(var) {
        return Ok((p, None));
    }
    match std::fs::read_to_string(&file) {
        Ok(p) => return Ok((p.trim().to_string(), Some(file))),
        Err(e) if !generate => {
            return Err(e).with_context(|| {
                format!(
                    "reading the repository password from {} (or set {var} to any key slot's password)",
                    file.display()
                )
            });
        }
        Err(_) => {}
    }
    let mut raw = [0u8; 24];
    rand::fill(&mut raw);
    let p = hex::encode(raw);
    write_secret(&file, &p)?;
    Ok((p, Some(file)))
}

/// Says at every start where the repository's only key is, while the
/// password is a file beside the catalog and no second key slot exists:
/// lose that directory and no backup can be read, even from S3.
pub async fn key_warning(repo: &Repository, location: &str, data_dir: &Path) {
    if std::env::var_os("STRONGBOX_REPO_PASSWORD").is_some() {
        return;
    }
    match repo.list_keys().await {
        Ok(slots) if slots.len() < 2 => tracing::warn!(
            "the repository password is kept only in {}: without it no backup in {location} can be read; keep \
             a copy offline, or add a second key (an escrow password kept offline) with `strongbox admin key add`",
            data_dir.join("repository.password").display()
        ),
        Ok(slots) => tracing::info!("the repository opens with any of {} key slots", slots.len()),
        Err(e) => tracing::warn!("listing the repository's key slots: {e}"),
    }
}

/// Writes a secret to a new file only its owner reads (mode 0600).
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    Ok(())
}
