//! Any database with a dump tool: a backup command whose stdout is the
//! backup, and a recovery command that reads it on stdin (for example
//! `mariadb-dump --single-transaction shop` and `mariadb shop`), after an
//! optional prepare command that recreates the database if it is gone
//! (`mariadb -e 'CREATE DATABASE IF NOT EXISTS shop'`). All run through
//! `sh -c`; `env` values (passwords) reach the commands through their
//! environment and are masked in every message.
//!
//! An optional `database` reaches them as `$STRONGBOX_DATABASE`: a
//! deployment whose commands name their database that way recovers into
//! another one (`{"database": "shop_copy"}`, issue 31). Its recovery
//! command must use it, or a copy would be restored over the deployment.
//! With a `check_command` (a query that must answer, e.g. `mariadb -N -e
//! "CHECK TABLE $STRONGBOX_DATABASE.t"`) and a `drop_command` it is also
//! drilled, in the database `DATABASE_strongbox_drill`.

use std::collections::BTreeMap;

use strongbox_repo::Source;

use crate::process::Tool;
use crate::{Access, BackupFiles, Error, Recovered, RecoveryContext, RecoveryTarget, backups_only, setting};

/// The name the dump has inside a snapshot.
pub const FILE_NAME: &str = "dump";

pub struct CommandEngine {
    backup_command: String,
    recovery_command: String,
    prepare_command: Option<String>,
    env: BTreeMap<String, String>,
    database: Option<String>,
    /// Checks a drill's scratch database: it exits 0 (what it prints is
    /// what the drill found), and drops it.
    check_command: Option<String>,
    drop_command: Option<String>,
}

/// The variable the commands read the deployment's `database` from.
pub const DATABASE_VARIABLE: &str = "STRONGBOX_DATABASE";

impl CommandEngine {
    pub const CAPABILITIES: crate::Capabilities = crate::Capabilities {
        point_in_time: false,
        online_recovery: true,
        ships_log: false,
        streams_wal: false,
        recovers_into: &["database"],
    };

    pub fn from_connection(c: &serde_json::Value) -> Result<Self, Error> {
        crate::only_settings(
            c,
            "command",
            &[
                "backup_command",
                "recovery_command",
                "prepare_command",
                "env",
                "database",
                "check_command",
                "drop_command",
            ],
        )?;
        let bad = |reason: String| Error::BadConnection {
            engine: "command",
            reason,
        };
        let example = "\"mariadb-dump -h 127.0.0.1 -u root --single-transaction shop\"";
        let backup_command = setting(c, "command", "backup_command", example)?.to_string();
        let recovery_command = setting(
            c,
            "command",
            "recovery_command",
            "\"mariadb -h 127.0.0.1 -u root shop\"",
        )?;
        let env = match c.get("env") {
            None => BTreeMap::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| Error::BadConnection {
                engine: "command",
                reason: "\"env\" must map names to strings, e.g. {\"MYSQL_PWD\": \"...\"}".into(),
            })?,
        };
        let prepare_command = crate::optional_setting(
            c,
            "command",
            "prepare_command",
            "\"mariadb -e 'CREATE DATABASE IF NOT EXISTS shop'\"",
        )?
        .map(String::from);
        let database = crate::optional_setting(c, "command", "database", "\"shop\"")?.map(String::from);
        if let Some(db) = &database {
            // Unquoted in a command line it must stay one word.
            if db.len() > 64 || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(format!(
                    "\"database\" {db:?} must be letters, digits and _ (at most 64)"
                )));
            }
            if !recovery_command.contains(DATABASE_VARIABLE) {
                return Err(bad(format!(
                    "\"database\" reaches the commands as ${DATABASE_VARIABLE}, which recovery_command does not \
                     use: a recovery into another database would restore over this one; write e.g. \
                     \"mariadb -h 127.0.0.1 -u root ${DATABASE_VARIABLE}\""
                )));
            }
        }
        let drill_command = |key: &str, example: &str| -> Result<Option<String>, Error> {
            let line = crate::optional_setting(c, "command", key, example)?;
            if line.is_some_and(|l| database.is_none() || !l.contains(DATABASE_VARIABLE)) {
                return Err(bad(format!(
                    "\"{key}\" acts on a drill's scratch database, named by \"database\" and reaching it as \
                     ${DATABASE_VARIABLE}: set \"database\" and use the variable, e.g. {example}"
                )));
            }
            Ok(line.map(String::from))
        };
        let check_command = drill_command(
            "check_command",
            "\"mariadb -h 127.0.0.1 -u root -N -e 'CHECK TABLE $STRONGBOX_DATABASE.orders'\"",
        )?;
        let drop_command = drill_command(
            "drop_command",
            "\"mariadb -h 127.0.0.1 -u root -e 'DROP DATABASE IF EXISTS $STRONGBOX_DATABASE'\"",
        )?;
        if check_command.is_some() != drop_command.is_some() {
            return Err(bad(
                "a drill needs both check_command (its scratch database answers) and drop_command (it goes after)"
                    .into(),
            ));
        }
        Ok(CommandEngine {
            backup_command,
            recovery_command: recovery_command.to_string(),
            prepare_command,
            env,
            database,
            check_command,
            drop_command,
        })
    }

    fn tool(&self, line: &str, name: &str) -> Tool {
        let mut t = Tool::shell(line, name);
        for (k, v) in &self.env {
            t.secret_env(k, v);
        }
        if let Some(db) = &self.database {
            t.command.env(DATABASE_VARIABLE, db);
        }
        t
    }
}

impl crate::Engine for CommandEngine {
    fn capabilities(&self) -> crate::Capabilities {
        Self::CAPABILITIES
    }

    fn accesses(&self) -> Vec<Access> {
        let commands = [
            ("backup_command", Some(&self.backup_command)),
            ("recovery_command", Some(&self.recovery_command)),
            ("prepare_command", self.prepare_command.as_ref()),
            ("check_command", self.check_command.as_ref()),
            ("drop_command", self.drop_command.as_ref()),
        ];
        let commands = commands.into_iter().filter_map(|(setting, line)| {
            line.map(|line| Access::Command {
                setting,
                line: line.clone(),
            })
        });
        let env = self.env.keys().map(|name| Access::Environment {
            setting: "env",
            name: name.clone(),
        });
        commands.chain(env).collect()
    }

    fn place(&self) -> Option<String> {
        self.database.as_ref().map(|db| format!("database {db}"))
    }

    /// Unknown: a command says nothing of what a database holds.
    fn occupied(&self) -> Option<String> {
        self.database.as_ref().map(|db| {
            format!("a command deployment cannot tell whether database {db} holds data (the prepare command creates it if missing)")
        })
    }

    /// With a check and a drop command: another database, by name.
    fn drill_place(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.check_command.as_ref()?;
        crate::settings(serde_json::json!({"database": crate::drill_database(self.database.as_ref()?)}))
    }

    fn check(&self) -> Result<String, Error> {
        let check = self.check_command.as_ref().ok_or_else(|| {
            Error::Failed("no check_command: nothing says whether the restored database answers".into())
        })?;
        let found = self.tool(check, "the check command").run()?;
        let found = found.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(format!(
            "the check command answered: {}",
            found.chars().take(300).collect::<String>()
        ))
    }

    /// Drops a drill's scratch database, never another (only a name the
    /// drill gave is dropped).
    fn discard(&self) {
        if let (Some(drop), Some(db)) = (&self.drop_command, &self.database)
            && db.ends_with(crate::DRILL_SUFFIX)
        {
            let _ = self.tool(drop, "the drop command").run();
        }
    }

    fn backup(&self, _cx: &crate::BackupContext) -> Result<crate::BackupStreams, Error> {
        let stream = self.tool(&self.backup_command, "the backup command").output_stream()?;
        Ok(crate::BackupStreams::without_position(strongbox_repo::sources(vec![
            Source::new(FILE_NAME, stream),
        ])))
    }

    fn recover(
        &self,
        backup: &dyn BackupFiles,
        target: &RecoveryTarget,
        cx: &RecoveryContext,
    ) -> Result<Recovered, Error> {
        backups_only(target)?;
        let (scratch, log) = (cx.scratch, cx.log);
        // Restored (and so verified) in full first: a dump tool applies what
        // it reads as it goes, so a backup found damaged halfway through a
        // stream would leave the database half recovered.
        let copy = tempfile::NamedTempFile::new_in(scratch).map_err(|e| Error::io("scratch file", e))?;
        backup.restore_to(FILE_NAME, copy.path())?;
        let dump = std::fs::File::open(copy.path()).map_err(|e| Error::io("restored backup", e))?;
        drop(copy); // unlinked; the open handle keeps the data until read
        if let Some(prepare) = &self.prepare_command {
            self.tool(prepare, "the prepare command").run()?;
            log("the prepare command succeeded".into());
        }
        log("backup restored and verified; feeding it to the recovery command".into());
        self.tool(&self.recovery_command, "the recovery command").feed(dump)?;
        Ok(Recovered::from(
            "the recovery command read the whole backup and succeeded".to_string(),
        ))
    }
}
