//! A physical deployment recovered into a copy beside it (issue 31): a new
//! data directory, its own port, started by Strongbox with `pg_ctl` (as the
//! directory's owner) and recovered there exactly as in place, then left
//! running or stopped as asked.
//!
//! A copy must never act as the deployment: it archives nothing (its
//! `archive_command` would push a new timeline into the deployment's WAL
//! archive), waits for no synchronous standby (commits would hang on the
//! deployment's receiver) and listens on its own port. Those settings go
//! into its `postgresql.auto.conf`, after whatever the backup held, so they
//! hold whenever the copy is started again. A cluster whose configuration
//! lives outside its data directory (Debian's `/etc/postgresql`) gets an
//! empty `postgresql.conf` and the deployment's `pg_hba.conf` and
//! `pg_ident.conf`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::Conn;
use super::datadir::AUTO_CONF;
use super::physical::{Control, PgPhysical};
use super::server::WAIT;
use crate::process::Tool;
use crate::{Error, setting};

/// The copy's own settings.
pub(crate) struct Copy {
    /// The deployment's server: it archives up to now before a point in
    /// time is recovered, and lends its client authentication files.
    pub live: Conn,
    pub port: u16,
    /// Left running once recovered (else stopped).
    pub keep_running: bool,
}

const BEGIN: &str = "# A copy Strongbox recovered: its own port; archiving nothing; no synchronous standby.";
const END: &str = "# End of the copy's settings.";

impl PgPhysical {
    /// The deployment `connection` names, recovered into `target`: its
    /// `data_dir` and `port`, and whether it is left `running` (yes).
    pub fn copy(
        connection: &serde_json::Value,
        target: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Error> {
        let engine = "postgresql";
        let bad = |reason: String| Error::BadConnection { engine, reason };
        let live = PgPhysical::from_connection(connection)?;
        let t = serde_json::Value::Object(target.clone());
        crate::only_settings(&t, engine, &["data_dir", "port", "running"])?;
        let data_dir = PathBuf::from(setting(&t, engine, "data_dir", "\"/var/lib/postgresql/15/copy\"")?);
        // Numbers and booleans, or their spelling (the client and the
        // console send every setting as a string).
        let port = match t.get("port") {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("needs \"port\", the port the copy listens on (a number, e.g. 5433)".into()))?;
        let keep_running = match t.get("running") {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => return Err(bad("\"running\" is true (the copy is left running) or false".into())),
        };
        let mut url = url::Url::parse(&live.conn.url).map_err(|e| bad(format!("\"url\": {e}")))?;
        let query_port = url
            .query_pairs()
            .find(|(k, _)| k == "port")
            .and_then(|(_, v)| v.parse().ok());
        if url.port().or(query_port).unwrap_or(5432) == port {
            return Err(bad(format!(
                "port {port} is the deployment's own: name another for the copy"
            )));
        }
        // The copy's server: the deployment's host (TCP, or the same socket
        // directory) on the copy's port (the only port the URL names).
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "port")
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(query);
        url.set_port(Some(port))
            .map_err(|()| bad("\"url\" has no host".into()))?;
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(PgPhysical {
            conn: Conn {
                url: url.to_string(),
                ..live.conn.clone()
            },
            data_dir,
            control: Control::Copy(Copy {
                live: live.conn,
                port,
                keep_running,
            }),
        })
    }

    /// The server that writes the WAL this one recovers from: the
    /// deployment's, also for a copy.
    pub(super) fn source(&self) -> &Conn {
        match &self.control {
            Control::Copy(c) => &c.live,
            Control::Commands { .. } => &self.conn,
        }
    }

    /// What a copy would overwrite, or a port another server holds.
    pub(super) fn copy_occupied(&self) -> Option<String> {
        let holds_files = std::fs::read_dir(&self.data_dir).is_ok_and(|mut d| d.next().is_some());
        if holds_files {
            return Some(format!("data directory {} holds files", self.data_dir.display()));
        }
        self.port_taken().err().map(|e| e.to_string())
    }

    /// Fails when a server other than the copy's own answers on its port
    /// (recovering would stop that server, or the copy fail to start).
    pub(super) fn port_taken(&self) -> Result<(), Error> {
        let Control::Copy(c) = &self.control else {
            return Ok(());
        };
        match self.conn.query("SHOW data_directory") {
            Ok(dir) if Path::new(&dir) != self.data_dir => Err(Error::Failed(format!(
                "port {} is taken by the server of {dir}: name a free port for the copy",
                c.port
            ))),
            _ => Ok(()),
        }
    }

    /// `pg_ctl` on the copy's data directory, as the directory's owner.
    fn pg_ctl(&self, args: &[&str]) -> Result<Tool, Error> {
        let (uid, gid) = self.owner()?;
        let mut t = self.conn.tool("pg_ctl");
        t.command.arg("-D").arg(&self.data_dir).args(args).current_dir("/");
        if super::server::nix_euid() == 0 {
            t.command.uid(uid).gid(gid);
        }
        Ok(t)
    }

    /// Where a copy's server writes its log.
    pub(super) fn copy_log(&self) -> PathBuf {
        self.data_dir.join("strongbox-copy.log")
    }

    /// Starts the server: its start command, or a copy with `pg_ctl`,
    /// which waits until it accepts connections (a recovering copy does
    /// once consistent; the caller watches replay go on from there).
    pub(super) fn start_server(&self) -> Result<(), Error> {
        match &self.control {
            Control::Commands { start, .. } => self.shell(start, "the start command"),
            Control::Copy(_) => {
                let (log, wait) = (self.copy_log(), WAIT.as_secs().to_string());
                let started = self
                    .pg_ctl(&["-l", &log.to_string_lossy(), "-w", "-t", &wait, "start"])?
                    .run();
                started
                    .map(drop)
                    .map_err(|e| Error::Failed(format!("{e}; its log ends: {}", self.log_tail())))
            }
        }
    }

    pub(super) fn stop_server(&self) -> Result<(), Error> {
        match &self.control {
            Control::Commands { stop, .. } => self.shell(stop, "the stop command"),
            Control::Copy(_) => self.pg_ctl(&["-m", "fast", "-w", "stop"])?.run().map(drop),
        }
    }

    /// The last lines of a copy's server log, where it says why it stopped.
    pub(super) fn log_tail(&self) -> String {
        if !matches!(self.control, Control::Copy(_)) {
            return String::new();
        }
        let text = std::fs::read_to_string(self.copy_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// Makes the restored `dir` a copy (nothing for the deployment itself).
    pub(super) fn make_copy(&self, dir: &Path) -> Result<(), Error> {
        let Control::Copy(c) = &self.control else {
            return Ok(());
        };
        let auto = dir.join(AUTO_CONF);
        let earlier = std::fs::read_to_string(&auto).unwrap_or_default();
        let settings = format!(
            "{BEGIN}\nport = {}\narchive_mode = off\nsynchronous_standby_names = ''\nprimary_conninfo = ''\n{END}\n",
            c.port
        );
        std::fs::write(&auto, without_copy_settings(&earlier) + &settings).map_err(|e| Error::io(AUTO_CONF, e))?;
        if !dir.join("postgresql.conf").exists() {
            std::fs::write(
                dir.join("postgresql.conf"),
                "# The deployment keeps its configuration elsewhere; the copy's is in postgresql.auto.conf.\n",
            )
            .map_err(|e| Error::io("postgresql.conf", e))?;
        }
        for (file, setting) in [("pg_hba.conf", "hba_file"), ("pg_ident.conf", "ident_file")] {
            if dir.join(file).exists() {
                continue;
            }
            let from = c.live.query(&format!("SHOW {setting}")).map_err(|e| {
                Error::Failed(format!(
                    "the copy has no {file} and the deployment's server does not say where its own is: {e}"
                ))
            })?;
            std::fs::copy(&from, dir.join(file)).map_err(|e| Error::io(format!("copying {from}"), e))?;
        }
        Ok(())
    }

    /// After a copy's recovery: it keeps running, or is stopped. In words.
    pub(super) fn leave_copy(&self) -> Result<String, Error> {
        let Control::Copy(c) = &self.control else {
            return Ok(format!("the server at {} answers queries", self.data_dir.display()));
        };
        if c.keep_running {
            return Ok(format!(
                "the copy at {} answers on port {}",
                self.data_dir.display(),
                c.port
            ));
        }
        self.stop_server()?;
        Ok(format!(
            "the copy at {} was stopped (it starts on port {})",
            self.data_dir.display(),
            c.port
        ))
    }

    /// Stops a copy's server, if it runs, and removes its data directory.
    pub(super) fn discard_copy(&self) {
        if !matches!(self.control, Control::Copy(_)) {
            return; // never the deployment's own
        }
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.stop_server();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn without_copy_settings(text: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}", &text[..b], text[e + END.len()..].trim_start_matches('\n')),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Engine;

    #[test]
    fn a_copy_gets_its_own_port_and_place_and_runs_no_commands() {
        let live = json!({"url": "postgresql://app@db.internal:5432/postgres?sslmode=require",
            "data_dir": "/srv/pg/main", "stop_command": "stop it", "start_command": "start it"});
        let target = |t: serde_json::Value| t.as_object().cloned().unwrap();
        let copy = PgPhysical::copy(&live, &target(json!({"data_dir": "/srv/pg/copy", "port": 5433}))).unwrap();
        assert_eq!(
            copy.conn.url,
            "postgresql://app@db.internal:5433/postgres?sslmode=require"
        );
        assert_eq!(
            copy.source().url,
            "postgresql://app@db.internal:5432/postgres?sslmode=require"
        );
        assert_eq!(copy.place().as_deref(), Some("/srv/pg/copy"));
        assert!(
            !copy
                .accesses()
                .iter()
                .any(|a| matches!(a, crate::Access::Command { .. }))
        );
        let socket = json!({"url": "postgresql://localhost/postgres?host=/run/postgresql&port=5432", "data_dir": "/d",
            "stop_command": "x", "start_command": "y"});
        let copy = PgPhysical::copy(&socket, &target(json!({"data_dir": "/c", "port": 6000}))).unwrap();
        assert_eq!(
            copy.conn.url,
            "postgresql://localhost:6000/postgres?host=%2Frun%2Fpostgresql"
        );
        let refused = |t: serde_json::Value| match PgPhysical::copy(&live, &target(t)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(refused(json!({"data_dir": "/c", "port": 5432})).contains("the deployment's own"));
        let in_query = PgPhysical::copy(&socket, &target(json!({"data_dir": "/c", "port": 5432})));
        assert!(in_query.is_err());
        assert!(refused(json!({"data_dir": "/c"})).contains("\"port\""));
        assert!(refused(json!({"data_dir": "/c", "port": "a"})).contains("\"port\""));
        assert!(refused(json!({"data_dir": "/c", "port": 70000})).contains("\"port\""));
        let spelt = PgPhysical::copy(
            &live,
            &target(json!({"data_dir": "/c", "port": "5433", "running": "false"})),
        );
        assert!(spelt.is_ok_and(|c| matches!(
            c.control,
            Control::Copy(Copy {
                port: 5433,
                keep_running: false,
                ..
            })
        )));
        assert!(refused(json!({"data_dir": "/c", "port": 5433, "running": "no"})).contains("running"));
        assert!(refused(json!({"data_dir": "/c", "port": 5433, "start_command": "sh"})).contains("unknown setting"));
    }

    #[test]
    fn the_copys_settings_replace_an_earlier_copys() {
        let text = format!("archive_command = 'x'\n{BEGIN}\nport = 1\n{END}\nwork_mem = '8MB'\n");
        assert_eq!(
            without_copy_settings(&text),
            "archive_command = 'x'\nwork_mem = '8MB'\n"
        );
        assert_eq!(without_copy_settings("port = 2\n"), "port = 2\n");
    }
}
