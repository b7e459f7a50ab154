//! The server's configuration file (`--config` / STRONGBOX_CONFIG, TOML),
//! which `serve` and `admin` both read; every setting can also come from a
//! STRONGBOX_* variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use strongbox_core::host_policy::HostPolicy;
use strongbox_core::schedule::{BackupConfig, BackupPolicy, ConfigChange};

/// The file's settings; `contrib/strongbox.toml` lists every one with its
/// default (a test checks it).
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) repository: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) public_url: Option<String>,
    pub(crate) workers: Option<usize>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) lease_seconds: Option<u64>,
    /// Failed sign-ins per client address and per user in a minute
    /// before further attempts are refused with 429.
    pub(crate) signin_failures: Option<u32>,
    /// Serve `/metrics` (default true).
    pub(crate) metrics: Option<bool>,
    /// How long a stopping server lets running jobs finish before handing
    /// them to another server.
    pub(crate) shutdown_grace_seconds: Option<u64>,
    pub(crate) schedule_check_ms: Option<u64>,
    /// How often the catalog is brought in line with the repository (a
    /// backup another server or the repository CLI wrote appears).
    pub(crate) sync_seconds: Option<u64>,
    /// `postgresql://…` for a catalog several servers share; else the
    /// SQLite file `catalog.sqlite` in the data directory.
    pub(crate) catalog: Option<String>,
    /// This server's labels: it runs the jobs of deployments whose
    /// `runsOn` is one of them, and of those that name none.
    pub(crate) labels: Option<Vec<String>>,
    /// The backup configuration of deployments that have none of their
    /// own: `auto_backup_enabled`, `window` or `cron`,
    /// `recovery_window_in_days`, `minimum_backups_kept`.
    #[serde(default)]
    pub(crate) backup_defaults: ConfigChange,
    /// What deployments may run and touch on this host (nothing unless
    /// listed): `programs`, `commands`, `database_files`,
    /// `data_directories`, `bin_dirs`, `hosts`, `certificate_files`.
    #[serde(default)]
    pub(crate) allow: HostPolicy,
    /// Serve `/metrics` on this address instead of the API's (for
    /// scrapers on another network than the API's clients).
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Further repositories holding a copy of every backup, WAL file and
    /// record, each `{ name, repository }` (also STRONGBOX_COPIES, as JSON).
    /// A copy's password: STRONGBOX_COPY_<NAME>_PASSWORD, else generated
    /// into `DATA_DIR/copy-NAME.password`.
    #[serde(default)]
    pub(crate) copies: Vec<CopyConfig>,
    /// How often each copy is brought what it lacks (also at once after
    /// every backup).
    pub(crate) copy_seconds: Option<u64>,
}

/// One copy in `copies`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyConfig {
    /// What recoveries (`"repository"`), listings and metrics call it.
    pub(crate) name: String,
    /// A directory or `s3://BUCKET/PREFIX` (endpoint and credentials from `AWS_*`).
    pub(crate) repository: String,
    /// How long the copy keeps backups, in days (1 to 3650), by the same
    /// rule as a deployment's `recoveryWindowInDays` (with its
    /// `minimumBackupsKept` and `keepForever`); the deployment's own
    /// window if absent.
    #[serde(default)]
    pub(crate) recovery_window_days: Option<u32>,
}

impl Config {
    /// The file at `path` (`--config` / STRONGBOX_CONFIG); empty if none.
    pub(crate) fn read(path: Option<&Path>) -> Result<Config> {
        match path {
            Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("parsing {}", p.display())),
            None => Ok(Config::default()),
        }
    }

    /// Where the catalog is: STRONGBOX_CATALOG, `catalog`, else the
    /// SQLite file in `data_dir`.
    pub(crate) fn catalog(&self, data_dir: &Path) -> Result<String> {
        Ok(env("STRONGBOX_CATALOG")?
            .or_else(|| self.catalog.clone())
            .unwrap_or_else(|| data_dir.join("catalog.sqlite").display().to_string()))
    }

    /// `copies`: STRONGBOX_COPIES (a JSON array) wins over the file; names
    /// are checked and distinct.
    pub(crate) fn copies(&self) -> Result<Vec<CopyConfig>> {
        let copies: Vec<CopyConfig> = match std::env::var("STRONGBOX_COPIES") {
            Ok(json) => serde_json::from_str(&json).context("STRONGBOX_COPIES")?,
            Err(_) => self.copies.clone(),
        };
        let mut seen = std::collections::BTreeSet::new();
        for c in &copies {
            strongbox_core::check_name("a copy", &c.name).context("copies")?;
            anyhow::ensure!(
                c.recovery_window_days.is_none_or(|d| (1..=3650).contains(&d)),
                "copies: {}'s recovery_window_days must be 1 to 3650 (got {})",
                c.name,
                c.recovery_window_days.unwrap_or_default()
            );
            anyhow::ensure!(
                c.name != strongbox_core::copies::PRIMARY && seen.insert(c.name.clone()),
                "copies: the name {:?} is taken (each copy's name is its own, and not \"primary\")",
                c.name
            );
        }
        Ok(copies)
    }

    /// `[backup_defaults]` over the built-in defaults, checked as a change
    /// through the API is. Switched on here, automatic backups are on from
    /// the first period: a deployment's first backup is due at once.
    pub(crate) fn backup_defaults(&self) -> Result<BackupConfig> {
        BackupConfig::default()
            .changed(&self.backup_defaults, time::OffsetDateTime::UNIX_EPOCH)
            .context("[backup_defaults] in the config file")
    }
}

pub(crate) fn env<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().map(Some).map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        Err(_) => Ok(None),
    }
}

impl Config {
    /// `[allow]`, each key also from `STRONGBOX_ALLOW_<KEY>` (a JSON array
    /// of strings, which wins over the file), with `own`: the server's
    /// files and directories, which no deployment may touch.
    pub(crate) fn host_policy(&self, own: Vec<PathBuf>) -> Result<HostPolicy> {
        let mut policy = self.allow.clone();
        for key in HostPolicy::KEYS {
            let var = format!("STRONGBOX_ALLOW_{}", key.to_ascii_uppercase());
            if let Ok(json) = std::env::var(&var) {
                policy.set(key, &json).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
            }
        }
        policy.protected = own;
        Ok(policy)
    }

    /// The files and directories of a server with this configuration and
    /// data directory: the data directory (catalog, password files,
    /// scratch), the repository and the catalog wherever they are, this
    /// file, and the TLS certificate and key.
    pub(crate) fn own_files(&self, data_dir: &Path, config: Option<&Path>) -> Result<Vec<PathBuf>> {
        let mut own = vec![data_dir.to_path_buf()];
        let repository: Option<String> = env("STRONGBOX_REPOSITORY")?.or_else(|| self.repository.clone());
        let catalog = self.catalog(data_dir)?;
        let copies = self.copies()?.into_iter().map(|c| c.repository);
        for location in repository.into_iter().chain([catalog]).chain(copies) {
            if !location.contains("://") {
                own.push(location.into());
            }
        }
        own.extend(config.map(Path::to_path_buf));
        for (var, file) in [
            ("STRONGBOX_TLS_CERT", &self.tls_cert),
            ("STRONGBOX_TLS_KEY", &self.tls_key),
        ] {
            own.extend(env::<PathBuf>(var)?.or_else(|| file.clone()));
        }
        // Relative paths are the server's working directory's.
        let cwd = std::env::current_dir()?;
        Ok(own.into_iter().map(|p| cwd.join(p)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of every setting, as `section.key` for those of a section.
    fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in v.as_object().expect("a table") {
            match v {
                serde_json::Value::Object(_) => keys(v, &format!("{k}."), out),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }

    /// `contrib/strongbox.toml` parses as a configuration and names every
    /// setting there is (set to its default, or commented out where the
    /// default is none), each in its section.
    #[test]
    fn the_example_configuration_names_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/strongbox.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::read(Some(&path)).unwrap();
        assert!(config.backup_defaults().is_ok());
        let mut all = Vec::new();
        keys(&serde_json::to_value(Config::default()).unwrap(), "", &mut all);
        assert!(all.len() > 25, "{all:?}");
        let mut section = String::new();
        let mut named = Vec::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{s}.");
            } else if let Some((key, _)) = line.split_once(" = ") {
                named.push(format!("{section}{key}"));
            }
        }
        let missing: Vec<_> = all.iter().filter(|k| !named.contains(k)).collect();
        assert!(missing.is_empty(), "not in contrib/strongbox.toml: {missing:?}");
    }
}
