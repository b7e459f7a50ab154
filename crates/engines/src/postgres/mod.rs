//! PostgreSQL, two ways: `physical` (the whole cluster, recovered in place
//! by swapping data directories) and logical (`postgresql-logical`):
//! `pg_dump -Fc` of one database, recovered with `pg_restore --clean
//! --if-exists --single-transaction`, so a failed restore rolls back and
//! leaves the database as it was.
//!
//! Passwords in connection URLs are taken out of the URL and passed as
//! PGPASSWORD (or to the client library): never in argv (visible to `ps`),
//! masked in messages.

mod copy;
mod datadir;
mod physical;
pub mod pitr;
mod receive;
mod receiver;
mod recovery;
mod replication;
mod restore_probe;
mod server;
mod tls;
mod waldump;

pub use physical::PgPhysical;
pub use receive::whole_segment;
pub use recovery::PREFETCH_SPOOL;
pub use waldump::FLUSH_MARKER;

use std::path::{Path, PathBuf};

use strongbox_repo::Source;

use crate::process::Tool;
use crate::{BackupFiles, Error, Recovered, RecoveryContext, RecoveryTarget, backups_only, setting};

/// The name of a logical dump inside a snapshot.
pub const DUMP: &str = "database.dump";

/// Where and how to connect, with the password held apart.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) url: String,
    pub(crate) password: Option<String>,
    bin_dir: Option<PathBuf>,
}

impl Conn {
    pub(crate) fn from_connection(c: &serde_json::Value, engine: &'static str) -> Result<Self, Error> {
        let raw = setting(c, engine, "url", "\"postgresql://postgres@127.0.0.1:5432/postgres\"")?;
        let bad = |reason: String| Error::BadConnection { engine, reason };
        let mut url = url::Url::parse(raw).map_err(|e| bad(format!("\"url\" is not a URL ({e})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("\"url\" must start with postgresql://".into()));
        }
        let password = url.password().map(percent_decode);
        // (A URL without a host, `postgresql:///db?host=/run/postgresql`,
        // names a Unix socket and cannot hold a password.)
        if password.is_some() {
            url.set_password(None).map_err(|()| bad("\"url\" has no host".into()))?;
        }
        let bin_dir =
            crate::optional_setting(c, engine, "bin_dir", "\"/usr/lib/postgresql/15/bin\"")?.map(PathBuf::from);
        Ok(Conn {
            url: url.to_string(),
            password,
            bin_dir,
        })
    }

    /// The servers its URL names (`host` and `hostaddr` in the query too,
    /// each of a comma-separated list), `localhost` for none (libpq then
    /// uses its Unix socket), the CA file it names (`sslrootcert`: the
    /// server reads it, and so do libpq's tools), and the directory its
    /// programs come from.
    pub(crate) fn accesses(&self) -> Vec<crate::Access> {
        let mut hosts = Vec::new();
        let mut files = Vec::new();
        if let Ok(url) = url::Url::parse(&self.url) {
            hosts.extend(url.host_str().filter(|h| !h.is_empty()).map(str::to_string));
            for (key, value) in url.query_pairs() {
                match &*key {
                    "host" | "hostaddr" => {
                        hosts.extend(value.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
                    }
                    "sslrootcert" => files.push(crate::Access::CertificateFile {
                        setting: "url's sslrootcert",
                        path: PathBuf::from(&*value),
                    }),
                    _ => {}
                }
            }
        }
        if hosts.is_empty() {
            hosts.push("localhost".into());
        }
        let mut out: Vec<crate::Access> = hosts
            .into_iter()
            .map(|host| crate::Access::Host { setting: "url", host })
            .chain(files)
            .collect();
        if let Some(dir) = &self.bin_dir {
            out.push(crate::Access::ProgramDirectory {
                setting: "bin_dir",
                path: dir.clone(),
            });
        }
        out
    }

    pub(crate) fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }

    pub(crate) fn tool(&self, program: &str) -> Tool {
        let path = match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut t = Tool::new(path, program);
        if let Some(p) = &self.password {
            t.secret_env("PGPASSWORD", p);
        }
        t
    }

    /// A client session on the server (the password given apart).
    pub(crate) fn client(&self) -> Result<postgres::Client, Error> {
        let (mut config, tls) = tls::parse(&self.url)?;
        if let Some(p) = &self.password {
            config.password(p);
        }
        // As psql's (`query`): a server that does not answer is an error, not a wait.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        config.connect(tls.connector()).map_err(|e| {
            // Its causes too: "error performing TLS handshake" alone
            // does not say that the certificate was refused, or why.
            let why: Vec<String> = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(|e| e.to_string())
                .collect();
            Error::Failed(format!("connecting to {}: {}", self.url, why.join(": ")))
        })
    }

    /// Runs one query with psql; its output, trimmed.
    pub(crate) fn query(&self, sql: &str) -> Result<String, Error> {
        let mut t = self.tool("psql");
        t.command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5");
        Ok(t.run()?.trim().to_string())
    }

    /// The database's own checks: every valid B-tree index (the system
    /// catalogs' too) by `amcheck`'s `bt_index_check`, where the extension
    /// can be created, then each table's rows counted.
    pub(crate) fn check_database(&self) -> Result<String, Error> {
        let amcheck = match self.query("CREATE EXTENSION IF NOT EXISTS amcheck") {
            Ok(_) => {
                let checked = self.query(
                    "SELECT c.relname, bt_index_check(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready \
                     AND c.relpersistence <> 't'",
                )?;
                format!("amcheck: {} B-tree indexes sound", checked.lines().count())
            }
            Err(e) => format!("no amcheck ({e})"),
        };
        let counts = self.query(
            "SELECT n.nspname || '.' || c.relname || ' ' || (xpath('/row/c/text()', query_to_xml(format('SELECT \
             count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN \
             ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        )?;
        let counts: Vec<String> = counts.lines().map(str::to_string).collect();
        Ok(format!("{amcheck}; rows per table: {}", crate::listed(&counts)))
    }

    /// The same server, its maintenance database (`postgres`, or
    /// `template1` for `postgres` itself).
    fn maintenance(&self, database: &str) -> Result<Conn, Error> {
        let mut url = url::Url::parse(&self.url).map_err(|e| Error::Failed(e.to_string()))?;
        url.set_path(if database == "postgres" {
            "/template1"
        } else {
            "/postgres"
        });
        Ok(Conn {
            url: url.to_string(),
            ..self.clone()
        })
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub struct PgLogical {
    conn: Conn,
}

impl PgLogical {
    /// `pg_restore --clean` into the running server.
    pub const CAPABILITIES: crate::Capabilities = crate::Capabilities {
        point_in_time: false,
        online_recovery: true,
        ships_log: false,
        streams_wal: false,
        recovers_into: &["database"],
    };

    /// `database`, if set, names the database instead of the URL's path
    /// (a recovery into another database of the same server names only
    /// that, never a URL with a password).
    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        const ENGINE: &str = "postgresql-logical";
        crate::only_settings(c, ENGINE, &["url", "bin_dir", "database"])?;
        let mut conn = Conn::from_connection(c, ENGINE)?;
        if let Some(name) = crate::optional_setting(c, ENGINE, "database", "\"shop_copy\"")? {
            if name.contains(['/', '\0', '?', '#']) {
                return Err(Error::BadConnection {
                    engine: ENGINE,
                    reason: format!("\"database\" is a database's name, without /, ?, # (got {name:?})"),
                });
            }
            let mut url = url::Url::parse(&conn.url).map_err(|e| Error::Failed(e.to_string()))?;
            url.set_path(&format!("/{name}"));
            conn.url = url.to_string();
        }
        Ok(PgLogical { conn })
    }

    /// The database's name, as the server knows it.
    fn database(&self) -> String {
        let path = url::Url::parse(&self.conn.url)
            .map(|u| u.path().trim_start_matches('/').to_string())
            .unwrap_or_default();
        percent_decode(&path)
    }
}

impl PgLogical {
    /// A dropped database is created again (empty, owned by the connecting
    /// user) so that the dump has somewhere to go.
    fn create_if_missing(&self, log: crate::Log) -> Result<(), Error> {
        let Err(e) = self.conn.query("SELECT 1") else {
            return Ok(());
        };
        if !e.to_string().contains("does not exist") {
            return Err(e);
        }
        let name = self.database();
        let maintenance = self.conn.maintenance(&name)?;
        maintenance.query(&format!("CREATE DATABASE {}", crate::quoted(&name)))?;
        log(format!("database {name} did not exist; created it"));
        Ok(())
    }
}

impl crate::Engine for PgLogical {
    fn capabilities(&self) -> crate::Capabilities {
        Self::CAPABILITIES
    }

    fn accesses(&self) -> Vec<crate::Access> {
        self.conn.accesses()
    }

    fn place(&self) -> Option<String> {
        let url = url::Url::parse(&self.conn.url).ok()?;
        Some(format!(
            "{}:{}/{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(5432),
            self.database()
        ))
    }

    fn occupied(&self) -> Option<String> {
        self.conn
            .query("SELECT 1")
            .is_ok()
            .then(|| format!("database {} exists", self.database()))
    }

    /// Another database of the same server.
    fn drill_place(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        crate::settings(serde_json::json!({"database": crate::drill_database(&self.database())}))
    }

    fn check(&self) -> Result<String, Error> {
        self.conn.check_database()
    }

    fn discard(&self) {
        let name = self.database();
        if let Ok(m) = self.conn.maintenance(&name) {
            let _ = m.query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                crate::quoted(&name)
            ));
        }
    }

    fn backup(&self, _cx: &crate::BackupContext) -> Result<crate::BackupStreams, Error> {
        let mut t = self.conn.tool("pg_dump");
        t.command
            .args(["--format=custom", "--compress=0", "-d", &self.conn.url]);
        Ok(crate::BackupStreams::without_position(strongbox_repo::sources(vec![
            Source::new(DUMP, t.output_stream()?),
        ])))
    }

    fn recover(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error> {
        backups_only(target)?;
        let log = cx.log;
        let dump = backup.open(DUMP)?;
        self.create_if_missing(log)?;
        log("restoring with pg_restore --clean in one transaction".into());
        let mut t = self.conn.tool("pg_restore");
        t.command.args([
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
            "-d",
            &self.conn.url,
        ]);
        t.feed(dump)?;
        Ok(Recovered::from("pg_restore completed in one transaction".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_the_url() {
        let c = Conn::from_connection(
            &serde_json::json!({"url": "postgresql://app:s%40cret@127.0.0.1:5432/shop"}),
            "postgresql-logical",
        )
        .unwrap();
        assert_eq!(c.url, "postgresql://app@127.0.0.1:5432/shop");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"url": "mysql://x"}),
            serde_json::json!({"url": "::"}),
        ] {
            let e = Conn::from_connection(&bad, "postgresql").err().unwrap().to_string();
            assert!(e.contains("url"), "{e}");
        }
    }
}
