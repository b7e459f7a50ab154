//! The catalog's schema migrations, embedded in the binary: the files of
//! `migrations/sqlite` and `migrations/postgres`, run by sqlx's migrator.
//! Listed here rather than found by `sqlx::migrate!`, whose proc macro
//! built a second copy of sqlx's drivers and of SQLite's C source for the
//! compiler (about a minute of every clean build); the migrations are the
//! same (version, description and checksum as the macro made them, so a
//! catalog migrated before runs on), and a test checks that the lists name
//! every file.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(file name without .sql, its text)` for each file of a directory.
macro_rules! embedded {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../migrations/", $dir, "/", $name, ".sql")))),*]
    };
}

pub(crate) const SQLITE: &[(&str, &str)] = embedded!("sqlite":
    "0001_catalog",
    "0002_recoveries",
    "0003_backup_position",
    "0004_recovery_plans",
    "0005_job_specs_and_roles",
    "0006_backup_configs",
    "0007_placement",
    "0008_same_as_postgres",
    "0009_jobs_without_params",
    "0010_backup_copies",
    "0011_backup_verification",
    "0012_recoveries_without_backup",
);

pub(crate) const POSTGRES: &[(&str, &str)] = embedded!("postgres":
    "0001_catalog",
    "0002_placement",
    "0003_keep_forever_integer",
    "0004_jobs_without_params",
    "0005_backup_copies",
    "0006_backup_verification",
    "0007_recoveries_without_backup",
);

/// The migrator for `files`, read as sqlx reads a directory: the version
/// before the first `_`, the rest with `_` as spaces the description.
pub(crate) fn migrator(files: &'static [(&'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(name, sql)| {
            let (version, description) = name.split_once('_').expect("VERSION_DESCRIPTION");
            Migration::new(
                version.parse().expect("a numbered migration"),
                Cow::Owned(description.replace('_', " ")),
                MigrationType::Simple,
                sql.into_sql_str(),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        for (dir, listed) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let names: Vec<String> = listed.iter().map(|(name, _)| format!("{name}.sql")).collect();
            assert_eq!(names, files, "{}", path.display());
            let versions: Vec<i64> = migrator(listed).iter().map(|m| m.version).collect();
            assert_eq!(versions, (1..=listed.len() as i64).collect::<Vec<_>>(), "{dir}");
        }
    }
}
