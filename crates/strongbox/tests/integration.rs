//! Strongbox's integration tests: the server as a real process over real
//! TLS, driven by curl, and the CLI, against real PostgreSQL, MariaDB,
//! SQLite files and an S3 server on loopback. One test binary with a
//! module per file: linked once rather than thirty times, and the test
//! threads take tests from every file, so a long test no longer leaves a
//! thread idle at the end of its file (the suite measured 587 s packed this
//! way, by `cargo nextest run -p strongbox -j 2`, against 778 s as thirty
//! binaries one after another). Run one file's tests with
//! `cargo test -p strongbox --test integration FILE::`.

mod common;

mod api;
mod catalog_outage;
mod client;
mod console;
mod contrib;
mod copies;
mod disasters;
mod drills;
mod format_fixtures;
mod logs;
mod loss_drills;
mod metrics;
mod openapi;
mod pitr;
mod recovery_api;
mod recovery_into;
mod recovery_model;
mod recovery_model_engines;
mod replicas;
mod repo_cli;
mod schedule;
mod security;
mod serve_s3;
mod shutdown;
mod sqlite_archiving_after_recovery;
mod sqlite_pitr;
mod sqlite_pitr_model;
mod store_faults;
mod wal_archive;
mod wal_streaming;
