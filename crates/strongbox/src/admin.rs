//! `strongbox admin domain|user|deployment|config`: set-up verbs that write
//! the catalog directly (the data directory's, or STRONGBOX_CATALOG / the
//! config file's `catalog`; a running server sees what they write); `admin
//! key`: the key slots of the server's repository.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strongbox_catalog::Role;
use strongbox_core::Service;

#[derive(Args)]
pub struct AdminArgs {
    /// The server's data directory.
    #[arg(long, env = "STRONGBOX_DATA_DIR", default_value = "strongbox-data", global = true)]
    data_dir: PathBuf,
    /// The server's TOML config file: its `[allow]` section says what a
    /// deployment may run and touch (as for the server), and its
    /// `[backup_defaults]` are what a deployment without a configuration
    /// of its own has.
    #[arg(long, env = "STRONGBOX_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Create an identity domain (a name such as `usexample`, or `idcs-…`).
    Domain { name: String },
    /// Create a user in a domain, or set its password (from STRONGBOX_NEW_PASSWORD or a prompt).
    User {
        name: String,
        #[arg(long)]
        domain: String,
        /// `reader` reads; `operator` also starts backups and recoveries;
        /// `admin` also registers deployments through the API.
        #[arg(long, default_value = "operator", value_parser = ["reader", "operator", "admin"])]
        role: String,
    },
    /// Register an existing database as a deployment.
    Deployment {
        name: String,
        #[arg(long)]
        domain: String,
        /// sqlite, postgresql, postgresql-logical or command (settings in the README)
        #[arg(long)]
        engine: String,
        /// Engine settings as JSON, e.g. '{"path": "/srv/app.db"}'.
        #[arg(long)]
        connection: String,
        /// Only servers with this label (`labels` in their config) run its
        /// jobs, e.g. the database's host for a physical PostgreSQL backup.
        #[arg(long)]
        runs_on: Option<String>,
    },
    /// Change a deployment's backup configuration (what is not given stays).
    Config {
        deployment: String,
        #[arg(long)]
        domain: String,
        /// Back up on the schedule: true or false.
        #[arg(long)]
        auto_backup: Option<bool>,
        /// A daily UTC window, e.g. 02:00-04:00.
        #[arg(long)]
        window: Option<String>,
        /// A cron expression (UTC), e.g. "0 2 * * *".
        #[arg(long)]
        cron: Option<String>,
        /// 1 to 365.
        #[arg(long)]
        recovery_window_days: Option<i64>,
        /// 0 to 1000.
        #[arg(long)]
        minimum_backups_kept: Option<i64>,
        /// Ship the database's log as it is written (SQLite): true or false.
        #[arg(long)]
        continuous_archiving: Option<bool>,
        /// PostgreSQL with continuous archiving: the WAL receiver is a
        /// synchronous standby (true or false).
        #[arg(long)]
        synchronous_archiving: Option<bool>,
        /// Restore drills at the times of this cron expression (UTC), e.g.
        /// "0 5 * * 0"; "" for none.
        #[arg(long, value_name = "CRON")]
        verify: Option<String>,
    },
    /// The key slots of the server's repository: any slot's password opens
    /// it. Add one whose password is kept offline (an escrow), so that
    /// losing the server's password loses no backup.
    Key {
        #[command(subcommand)]
        verb: crate::repo_cmd::KeyVerb,
    },
    /// The catalog as an index of the server's repository.
    Catalog {
        #[command(subcommand)]
        verb: CatalogVerb,
    },
}

#[derive(Subcommand)]
enum CatalogVerb {
    /// Bring the catalog in line with the repository now: what the
    /// repository holds and the catalog lacks (deployments, backups) is
    /// added, nothing twice; deployments' records are written (a running
    /// server also does this at start and every `sync_seconds`).
    Sync,
}

pub async fn run(args: AdminArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let config = crate::config::Config::read(args.config.as_deref())?;
    if let Verb::Key { verb } = &args.verb {
        crate::repo_cmd::key(&server_repository(&config, &args.data_dir).await?, verb).await?;
        return Ok(());
    }
    let catalog = strongbox_catalog::open(&config.catalog(&args.data_dir)?)
        .await
        .context("opening the catalog")?;
    match args.verb {
        Verb::Domain { name } => {
            strongbox_core::check_name("an identity domain", &name)?;
            catalog.ensure_domain(&name).await?;
            println!("identity domain {name} ready");
        }
        Verb::User { name, domain, role } => {
            let role = Role::parse(&role).context("--role is reader, operator or admin")?;
            strongbox_core::check_name("an identity domain", &domain)?;
            let password = match std::env::var("STRONGBOX_NEW_PASSWORD") {
                Ok(p) => p,
                Err(_) => rpassword::prompt_password(format!("password for {name}: "))?,
            };
            anyhow::ensure!(!password.is_empty(), "the password must not be empty");
            Service::new(catalog).put_user(&name, &domain, &password, role).await?;
            println!("user {name} ({}) in identity domain {domain} ready", role.as_str());
        }
        Verb::Deployment {
            name,
            domain,
            engine,
            connection,
            runs_on,
        } => {
            let connection: serde_json::Value =
                serde_json::from_str(&connection).context("--connection is not JSON")?;
            let mut service = Service::new(catalog);
            service.host_policy = config.host_policy(config.own_files(&args.data_dir, args.config.as_deref())?)?;
            service
                .register_deployment(&domain, &name, engine, connection, runs_on)
                .await?;
            println!("deployment {name} registered in identity domain {domain}");
        }
        Verb::Config {
            deployment,
            domain,
            auto_backup,
            window,
            cron,
            recovery_window_days,
            minimum_backups_kept,
            continuous_archiving,
            synchronous_archiving,
            verify,
        } => {
            let change = strongbox_core::schedule::ConfigChange {
                auto_backup_enabled: auto_backup,
                window,
                cron,
                recovery_window_in_days: recovery_window_days,
                minimum_backups_kept,
                continuous_archiving,
                synchronous_archiving,
                verify,
            };
            let mut service = Service::new(catalog);
            service.backup_defaults = config.backup_defaults()?;
            let c = service.change_backup_config(&domain, &deployment, &change).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
        Verb::Catalog {
            verb: CatalogVerb::Sync,
        } => {
            let repo = std::sync::Arc::new(server_repository(&config, &args.data_dir).await?);
            let mut service = Service::new(catalog);
            let scratch = args.data_dir.join("tmp");
            service.wal = Some(std::sync::Arc::new(strongbox_core::pitr::WalArchives::new(
                repo,
                String::new(),
                scratch,
            )));
            println!("{}", service.sync().await?);
        }
        Verb::Key { .. } => unreachable!("answered above"),
    }
    Ok(())
}

/// The repository the server opens (its location and password found as
/// `serve` finds them).
async fn server_repository(
    config: &crate::config::Config,
    data_dir: &std::path::Path,
) -> Result<strongbox_repo::Repository> {
    use crate::server_repo;
    let configured = crate::config::env::<String>("STRONGBOX_REPOSITORY")?.or(config.repository.clone());
    let location = server_repo::location(configured.as_deref(), data_dir);
    let store = strongbox_repo::Store::open(&location)?;
    strongbox_repo::Repository::open(store, server_repo::password(data_dir, false)?.as_bytes())
        .await
        .with_context(|| format!("opening the repository at {location}"))
}
