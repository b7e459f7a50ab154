//! What deployments may run and touch on the server's host: the
//! operator's decision, in the server's configuration (`[allow]`), never a
//! network request's. A deployment's engine declares everything its
//! settings make the server run or touch (`Engine::accesses`); each must
//! be allowed here, when the deployment is registered and again before
//! each of its jobs runs (the configuration may have changed since, or
//! another tool written the catalog). Nothing is allowed unless listed,
//! and the server's own files are refused whatever the lists say.
//!
//! Directory entries may hold `{domain}`, replaced by the deployment's
//! identity domain: `/srv/sqlite/{domain}` keeps each domain's admins to
//! their own folder (the lists are the host's, shared by every domain).
//!
//! Commands run through `sh -c`. A line whose program is listed under
//! `programs` is allowed only if it is plain words (no `;`, `|`, `&`,
//! `$`, backquotes, redirections, globs or escapes: quotes are fine), so
//! that the shell can only start that program with those arguments. Any
//! other line must be listed whole under `commands`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use strongbox_engines::Access;

use crate::{Error, Result};

/// The `[allow]` section of the server's configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicy {
    /// Programs (names on the server's PATH, or absolute paths) that
    /// `command` deployments and PostgreSQL's stop and start commands may
    /// start, with any plain arguments.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Whole command lines allowed as written (shell syntax included).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Directories under which database files (SQLite) may be.
    #[serde(default)]
    pub database_files: Vec<PathBuf>,
    /// Directories under which data directories (PostgreSQL) may be.
    #[serde(default)]
    pub data_directories: Vec<PathBuf>,
    /// Directories database programs may be run from (PostgreSQL's
    /// `bin_dir`), and those under them.
    #[serde(default)]
    pub bin_dirs: Vec<PathBuf>,
    /// Database servers (host names, addresses, socket directories) that
    /// connection URLs may name.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Directories under which the CA files connection URLs name
    /// (`sslrootcert`) may be.
    #[serde(default)]
    pub certificate_files: Vec<PathBuf>,
    /// The server's own files and directories (data directory, repository,
    /// configuration, password and TLS files): never a deployment's, not
    /// even inside an allowed directory. Filled in by the server.
    #[serde(skip)]
    pub protected: Vec<PathBuf>,
}

/// Variables a command's environment may not set: they change which
/// program runs or what the dynamic loader or the shell does with it.
const FORBIDDEN_ENV: [&str; 9] = [
    "PATH",
    "ENV",
    "BASH_ENV",
    "IFS",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "CDPATH",
    "GCONV_PATH",
];

impl HostPolicy {
    /// The config keys, as messages name them.
    pub const KEYS: [&str; 7] = [
        "programs",
        "commands",
        "database_files",
        "data_directories",
        "bin_dirs",
        "hosts",
        "certificate_files",
    ];

    /// Fills a key from a JSON array of strings (how each key can also come
    /// from a `STRONGBOX_ALLOW_*` variable).
    pub fn set(&mut self, key: &str, json: &str) -> std::result::Result<(), String> {
        let values: Vec<String> =
            serde_json::from_str(json).map_err(|e| format!("{key}: a JSON array of strings is expected ({e})"))?;
        let paths = || values.iter().map(PathBuf::from).collect();
        match key {
            "programs" => self.programs = values,
            "commands" => self.commands = values,
            "database_files" => self.database_files = paths(),
            "data_directories" => self.data_directories = paths(),
            "bin_dirs" => self.bin_dirs = paths(),
            "hosts" => self.hosts = values,
            "certificate_files" => self.certificate_files = paths(),
            other => return Err(format!("unknown [allow] key {other:?}")),
        }
        Ok(())
    }

    /// Refuses the first access that is not allowed, with a message that
    /// names the setting and the config key that would allow it.
    pub fn check(&self, domain: &str, engine: &str, accesses: &[Access]) -> Result<()> {
        for a in accesses {
            self.check_one(domain, engine, a).map_err(Error::Invalid)?;
        }
        Ok(())
    }

    fn check_one(&self, domain: &str, engine: &str, access: &Access) -> std::result::Result<(), String> {
        let refuse = |setting: &str, value: &dyn std::fmt::Debug, why: String| {
            format!(
                "the {engine} setting {setting} = {value:?} is not allowed on this server: {why}. What deployments \
                 may run and touch is set by the server's operator, in the [allow] section of its configuration \
                 file; see docs/security.md"
            )
        };
        match access {
            Access::Command { setting, line } => {
                if self.commands.iter().any(|c| c.trim() == line.trim()) {
                    return Ok(());
                }
                let Some(words) = plain_words(line) else {
                    return Err(refuse(
                        setting,
                        line,
                        "it uses shell syntax (;, |, &, $, `, <, >, globs, escapes), so only the whole line listed \
                         under `commands` allows it"
                            .into(),
                    ));
                };
                let program = &words[0];
                if self.programs.iter().any(|p| same_program(p, program)) {
                    Ok(())
                } else {
                    Err(refuse(
                        setting,
                        line,
                        format!(
                            "its program {program:?} is not under `programs` (allowed: {}), nor is the whole line \
                             under `commands`",
                            listed(&self.programs)
                        ),
                    ))
                }
            }
            Access::DatabaseFile { setting, path } => self
                .check_path(domain, path, &self.database_files, "database_files", false)
                .map_err(|why| refuse(setting, path, why)),
            Access::DataDirectory { setting, path } => self
                .check_path(domain, path, &self.data_directories, "data_directories", true)
                .map_err(|why| refuse(setting, path, why)),
            Access::ProgramDirectory { setting, path } => self
                .check_path(domain, path, &self.bin_dirs, "bin_dirs", true)
                .map_err(|why| refuse(setting, path, why)),
            Access::CertificateFile { setting, path } => self
                .check_path(domain, path, &self.certificate_files, "certificate_files", false)
                .map_err(|why| refuse(setting, path, why)),
            Access::Host { setting, host } => {
                if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                    Ok(())
                } else {
                    Err(refuse(
                        setting,
                        host,
                        format!(
                            "the host {host:?} is not under `hosts` (allowed: {})",
                            listed(&self.hosts)
                        ),
                    ))
                }
            }
            Access::Environment { setting, name } => {
                let forbidden = FORBIDDEN_ENV.contains(&name.as_str())
                    || name.starts_with("LD_")
                    || name.starts_with("BASH_FUNC_")
                    || name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if forbidden {
                    Err(refuse(
                        setting,
                        name,
                        "environment variables are for secrets such as MYSQL_PWD; PATH, LD_*, and the shell's own \
                         variables would change what runs, and are never allowed"
                            .into(),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `path` (resolved, symlinks followed) must be under one of `allowed`
    /// (resolved too), and neither be nor hold one of the server's own
    /// files (`holds`: it is a directory the engine replaces whole).
    fn check_path(
        &self,
        domain: &str,
        path: &Path,
        allowed: &[PathBuf],
        key: &str,
        holds: bool,
    ) -> std::result::Result<(), String> {
        let resolved = resolve(path)?;
        for own in &self.protected {
            let own = resolve(own).unwrap_or_else(|_| own.clone());
            // A database file's siblings (`-wal`, `-shm`) are written too.
            let sibling_of = |p: &Path| {
                let (p, o) = (p.as_os_str().to_string_lossy(), own.as_os_str().to_string_lossy());
                o.strip_prefix(p.as_ref())
                    .is_some_and(|rest| ["-wal", "-shm", "-journal"].contains(&rest))
            };
            if resolved.starts_with(&own) || (holds && own.starts_with(&resolved)) || sibling_of(&resolved) {
                return Err(format!(
                    "it resolves to {}, which is or holds the server's own {}; no deployment may use the server's \
                     data directory, repository, configuration, password or TLS files, whatever `{key}` says",
                    resolved.display(),
                    own.display()
                ));
            }
        }
        let inside = allowed.iter().any(|dir| {
            let dir = PathBuf::from(dir.to_string_lossy().replace("{domain}", domain));
            resolve(&dir).is_ok_and(|dir| resolved.starts_with(dir))
        });
        if inside {
            Ok(())
        } else {
            Err(format!(
                "it resolves to {}, which is under none of `{key}` (allowed: {})",
                resolved.display(),
                listed(&allowed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>())
            ))
        }
    }
}

fn listed(values: &[String]) -> String {
    if values.is_empty() {
        "none".into()
    } else {
        values.join(", ")
    }
}

/// An absolute path with every symlink of its existing part followed; the
/// part that does not exist yet (a database a recovery will create) is
/// appended as written, and may not climb with `..`.
fn resolve(path: &Path) -> std::result::Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                let mut out = real;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let name = match existing.components().next_back() {
                    Some(Component::Normal(name)) => name.to_owned(),
                    _ => {
                        return Err(format!(
                            "{} climbs out of a directory that does not exist",
                            path.display()
                        ));
                    }
                };
                rest.push(name);
                existing.pop();
            }
        }
    }
}

/// Whether the allowed program `allowed` and a command's first word are
/// the same program: the same file once both are looked up on the PATH
/// (or followed, if they name a path), else the same word.
fn same_program(allowed: &str, word: &str) -> bool {
    match (locate(allowed), locate(word)) {
        (Some(a), Some(b)) => a == b,
        _ => allowed == word,
    }
}

fn locate(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).canonicalize().ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// The words of a command line that `sh` would run as one program with
/// plain arguments, or `None` if the line uses anything else: words of
/// letters, digits and `-_./:=,@%+`, single-quoted strings, and
/// double-quoted strings without `$`, backquotes, backslashes or `!`. A
/// first word with `=` is an assignment (it would set a variable for the
/// program), also refused.
pub fn plain_words(line: &str) -> Option<Vec<String>> {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' => break,
                '\'' => {
                    chars.next();
                    loop {
                        match chars.next()? {
                            '\'' => break,
                            c => word.push(c),
                        }
                    }
                }
                '"' => {
                    chars.next();
                    loop {
                        match chars.peek()? {
                            '"' => {
                                chars.next();
                                break;
                            }
                            '$' => word.push_str(&the_database_variable(&mut chars)?),
                            '`' | '\\' | '!' => return None,
                            _ => word.extend(chars.next()),
                        }
                    }
                }
                c if bare(c) => {
                    chars.next();
                    word.push(c);
                }
                '$' => word.push_str(&the_database_variable(&mut chars)?),
                _ => return None,
            }
        }
        words.push(word);
    }
    let first = words.first()?;
    if first.is_empty() || first.contains('=') {
        return None;
    }
    Some(words)
}

/// `$STRONGBOX_DATABASE` (or `${STRONGBOX_DATABASE}`), taken from
/// `chars`: a command deployment's `database`, which its engine allows
/// only as letters, digits and `_`, so it expands to one plain word.
fn the_database_variable(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
    let rest: String = chars.clone().collect();
    let name = strongbox_engines::DATABASE_VARIABLE;
    [format!("${{{name}}}"), format!("${name}")]
        .into_iter()
        .find_map(|form| {
            let after = rest.strip_prefix(&form)?;
            if !form.ends_with('}') && after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                return None; // a longer name
            }
            chars.nth(form.len() - 1);
            Some(form)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dir: &Path) -> HostPolicy {
        HostPolicy {
            programs: vec!["mariadb-dump".into(), "true".into()],
            commands: vec!["pg_dump shop | gzip".into()],
            database_files: vec![dir.join("dbs")],
            data_directories: vec![dir.join("pg")],
            bin_dirs: vec![],
            hosts: vec!["127.0.0.1".into()],
            certificate_files: vec![dir.join("certs")],
            protected: vec![dir.join("dbs/strongbox-data"), dir.join("pg/secret.password")],
        }
    }

    fn command(line: &str) -> Access {
        Access::Command {
            setting: "backup_command",
            line: line.into(),
        }
    }

    #[test]
    fn plain_words_are_what_sh_would_run_as_one_program() {
        assert_eq!(
            plain_words("mariadb -h 127.0.0.1 -e 'CREATE DATABASE IF NOT EXISTS x; DROP'").unwrap(),
            [
                "mariadb",
                "-h",
                "127.0.0.1",
                "-e",
                "CREATE DATABASE IF NOT EXISTS x; DROP"
            ]
        );
        assert_eq!(plain_words(r#"a "b c" d"#).unwrap(), ["a", "b c", "d"]);
        // A shell started with a script is plain words: `sh` must be allowed.
        assert_eq!(plain_words("sh -c \"id > /x\"").unwrap(), ["sh", "-c", "id > /x"]);
        // A command deployment's database: one word of letters, digits, `_`.
        assert_eq!(
            plain_words("mariadb $STRONGBOX_DATABASE -e \"CREATE DATABASE ${STRONGBOX_DATABASE}_x\"").unwrap(),
            [
                "mariadb",
                "$STRONGBOX_DATABASE",
                "-e",
                "CREATE DATABASE ${STRONGBOX_DATABASE}_x"
            ]
        );
        for line in [
            "true; id",
            "true | id",
            "true && id",
            "true $(id)",
            "true `id`",
            "true > /etc/x",
            "true \\; id",
            "true *",
            "true ~root",
            "PATH=/tmp true",
            "LD_PRELOAD=/x.so true",
            "true 'unterminated",
            "true \"$HOME\"",
            "true $STRONGBOX_DATABASES",
            "true \"$STRONGBOX_DATABASE_X\"",
            "true $STRONGBOX_DATABASE$HOME",
            "true\nid",
            "",
        ] {
            assert!(plain_words(line).is_none(), "{line:?} passed as plain words");
        }
    }

    #[test]
    fn commands_paths_and_hosts_need_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(dir.join("dbs/strongbox-data")).unwrap();
        std::fs::create_dir_all(dir.join("pg/main")).unwrap();
        let p = policy(&dir);
        let ok = |a: Access| {
            p.check("dom", "command", std::slice::from_ref(&a))
                .map_err(|e| format!("{a:?}: {e}"))
        };
        let refused = |a: Access| match p.check("dom", "command", std::slice::from_ref(&a)) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{a:?} was not refused: {other:?}"),
        };
        ok(command("mariadb-dump -h 127.0.0.1 shop")).unwrap();
        ok(command("/usr/bin/true")).unwrap();
        ok(command("  pg_dump shop | gzip ")).unwrap();
        let m = refused(command("sh -c \"id > /tmp/x; echo x\""));
        assert!(m.contains("backup_command") && m.contains("`commands`"), "{m}");
        let m = refused(command("cat /etc/shadow"));
        assert!(
            m.contains("\"cat\" is not under `programs`") && m.contains("[allow]"),
            "{m}"
        );

        let file = |p: PathBuf| Access::DatabaseFile {
            setting: "path",
            path: p,
        };
        ok(file(dir.join("dbs/app.db"))).unwrap();
        ok(file(dir.join("dbs/new/sub/app.db"))).unwrap(); // not there yet
        let m = refused(file(dir.join("elsewhere.db")));
        assert!(m.contains("under none of `database_files`"), "{m}");
        assert!(refused(file("relative.db".into())).contains("not an absolute path"));
        assert!(refused(file(dir.join("dbs/../elsewhere.db"))).contains("under none"));
        let m = refused(file(dir.join("dbs/strongbox-data/catalog.sqlite")));
        assert!(m.contains("the server's own"), "{m}");
        // Through a symlink inside the allowed directory.
        std::os::unix::fs::symlink(dir.join("dbs/strongbox-data"), dir.join("dbs/link")).unwrap();
        assert!(refused(file(dir.join("dbs/link/catalog.sqlite"))).contains("the server's own"));
        std::os::unix::fs::symlink(dir.join("pg"), dir.join("dbs/to-pg")).unwrap();
        assert!(refused(file(dir.join("dbs/to-pg/x.db"))).contains("under none"));

        let data = |p: PathBuf| Access::DataDirectory {
            setting: "data_dir",
            path: p,
        };
        ok(data(dir.join("pg/main"))).unwrap();
        // A data directory that holds the server's files is replaced whole.
        assert!(refused(data(dir.join("pg"))).contains("the server's own"));

        let ca = |p: PathBuf| Access::CertificateFile {
            setting: "url's sslrootcert",
            path: p,
        };
        ok(ca(dir.join("certs/db-ca.pem"))).unwrap();
        assert!(refused(ca(dir.join("dbs/db-ca.pem"))).contains("under none of `certificate_files`"));

        let host = |h: &str| Access::Host {
            setting: "url",
            host: h.into(),
        };
        ok(host("127.0.0.1")).unwrap();
        assert!(refused(host("db.example.com")).contains("not under `hosts`"));
        let env = |n: &str| Access::Environment {
            setting: "env",
            name: n.into(),
        };
        ok(env("MYSQL_PWD")).unwrap();
        for bad in ["PATH", "LD_PRELOAD", "BASH_ENV", "A-B"] {
            assert!(refused(env(bad)).contains("never allowed"), "{bad}");
        }
        // Nothing is allowed by default.
        let none = HostPolicy::default();
        assert!(none.check("dom", "sqlite", &[file(dir.join("dbs/app.db"))]).is_err());
        assert!(none.check("dom", "command", &[command("true")]).is_err());
        // `{domain}` keeps each domain to its own folder.
        let per_domain = HostPolicy {
            database_files: vec![dir.join("tenants/{domain}")],
            ..HostPolicy::default()
        };
        let in_a = [file(dir.join("tenants/a/app.db"))];
        per_domain.check("a", "sqlite", &in_a).unwrap();
        assert!(per_domain.check("b", "sqlite", &in_a).is_err());
    }
}
