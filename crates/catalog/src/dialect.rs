//! What differs between the catalog's two databases, and nothing else:
//! how concurrent writers are kept apart, whose clock leases run on, and
//! how a JSON array is read in SQL. Every statement is written once
//! (`sql.rs`), with `$N` placeholders, which both databases read, and
//! these pieces put in where they differ.

/// The database under the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// One file, one server process: SQLite serializes writers itself
    /// (`BEGIN IMMEDIATE`), and the clock is that machine's.
    Sqlite,
    /// Several replicas: job creation for a deployment takes an advisory
    /// lock, leases skip rows another replica holds, fenced writes lock
    /// the job's row, and leases run on the database's clock.
    Postgres,
}

impl Dialect {
    /// The statement that begins a write transaction.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            // Takes the write lock at once: two writers never deadlock
            // upgrading a read lock.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Run first in the transaction that queues a job for the deployment
    /// bound as `$1`, `$2`: replicas queueing for one deployment take turns
    /// until commit, so that each sees the other's job. SQLite has one
    /// writer at a time already.
    pub(crate) fn serialize_job_creation(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))"),
        }
    }

    /// Unix seconds now. PostgreSQL's clock is the one every replica
    /// shares; SQLite's is the one machine's.
    fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            Dialect::Postgres => "extract(epoch FROM clock_timestamp())::bigint",
        }
    }

    /// The strings of the JSON array bound as `$4`, as a subquery.
    fn json_strings_4(self) -> &'static str {
        match self {
            Dialect::Sqlite => "(SELECT value FROM json_each($4))",
            Dialect::Postgres => "(SELECT jsonb_array_elements_text($4::jsonb))",
        }
    }

    /// After the query that picks the job to lease: replicas leasing at
    /// once take different jobs instead of queueing behind one another's
    /// row lock.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE OF j SKIP LOCKED",
        }
    }

    /// After a fenced read of a job's row inside a write: the row stays
    /// the reader's until commit.
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `template` with `{now}`, `{labels}`, `{skip_locked}` and
    /// `{for_update}` filled in.
    pub(crate) fn statement(self, template: &str) -> std::sync::Arc<str> {
        template
            .replace("{now}", self.now())
            .replace("{labels}", self.json_strings_4())
            .replace("{skip_locked}", self.skip_locked())
            .replace("{for_update}", self.for_update())
            .into()
    }
}
