//! `strongbox domain|user|deployment add`: set-up verbs that write the
//! catalog in the data directory directly (a running server sees them).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strongbox_catalog::{Catalog, NewDeployment, SqliteCatalog};

#[derive(Args)]
pub struct AdminArgs {
    /// The server's data directory.
    #[arg(long, env = "STRONGBOX_DATA_DIR", default_value = "strongbox-data", global = true)]
    data_dir: PathBuf,
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
    },
}

pub async fn run(args: AdminArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let catalog = SqliteCatalog::open(&args.data_dir.join("catalog.sqlite")).await?;
    match args.verb {
        Verb::Domain { name } => {
            catalog.ensure_domain(&name).await?;
            println!("identity domain {name} ready");
        }
        Verb::User { name, domain } => {
            catalog.ensure_domain(&domain).await?;
            let password = match std::env::var("STRONGBOX_NEW_PASSWORD") {
                Ok(p) => p,
                Err(_) => rpassword::prompt_password(format!("password for {name}: "))?,
            };
            anyhow::ensure!(!password.is_empty(), "the password must not be empty");
            catalog.put_user(&name, &domain, &password).await?;
            println!("user {name} in identity domain {domain} ready");
        }
        Verb::Deployment {
            name,
            domain,
            engine,
            connection,
        } => {
            let connection: serde_json::Value =
                serde_json::from_str(&connection).context("--connection is not JSON")?;
            strongbox_engines::engine_for(&engine, &connection)?;
            catalog.ensure_domain(&domain).await?;
            catalog
                .put_deployment(&NewDeployment {
                    domain: domain.clone(),
                    name: name.clone(),
                    engine,
                    connection,
                })
                .await?;
            println!("deployment {name} registered in identity domain {domain}");
        }
    }
    Ok(())
}
