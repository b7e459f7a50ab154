//! How the jobs of a server reach the shipper of a database it ships: a
//! backup asks it for a generation's base, a recovery has it push what it
//! holds and end its generation first (no generation spans a recovery:
//! the recovered database's history begins with the base taken after it).

use std::path::{Path, PathBuf};

use super::{Base, Shipper};
use crate::Error;

/// What a backup or recovery job asks of the shipper of its database,
/// which runs on its own thread in the same server.
pub enum Request {
    /// A new generation's base, for a backup to store.
    Base(std::sync::mpsc::Sender<Result<Base, Error>>),
    /// Push what is pending now and end the generation: a recovery wants
    /// every transaction up to its moment, and replaces the database.
    End(std::sync::mpsc::Sender<Result<(), Error>>),
}

type Registry = std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::mpsc::Sender<Request>>>;

fn registry() -> &'static Registry {
    static SHIPPERS: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    SHIPPERS.get_or_init(Default::default)
}

/// Announces the shipper of the database at `path`; requests come on the
/// returned channel until `unregister`.
pub fn register(path: &Path) -> std::sync::mpsc::Receiver<Request> {
    let (tx, rx) = std::sync::mpsc::channel();
    registry()
        .lock()
        .expect("shipper registry")
        .insert(path.to_path_buf(), tx);
    rx
}

pub fn unregister(path: &Path) {
    registry().lock().expect("shipper registry").remove(path);
}

/// Asks the shipper of `path`, if one runs in this process, and waits up
/// to `LOCK_WAIT` for its answer; `None` if no shipper runs there.
fn ask<T>(
    path: &Path,
    request: impl FnOnce(std::sync::mpsc::Sender<Result<T, Error>>) -> Request,
) -> Option<Result<T, Error>> {
    let shipper = registry().lock().expect("shipper registry").get(path).cloned()?;
    let (tx, rx) = std::sync::mpsc::channel();
    shipper.send(request(tx)).ok()?;
    let wait = crate::sqlite::LOCK_WAIT;
    Some(rx.recv_timeout(wait).unwrap_or_else(|_| {
        Err(Error::Failed(format!(
            "sqlite {}: the WAL shipper did not answer within {} s",
            path.display(),
            wait.as_secs()
        )))
    }))
}

/// A new generation's base from the shipper of `path`, if one runs here.
pub fn request_base(path: &Path) -> Option<Result<Base, Error>> {
    ask(path, Request::Base)
}

/// Has the shipper of `path`, if one runs here, push what is pending and
/// end its generation.
pub fn request_end(path: &Path) -> Option<Result<(), Error>> {
    ask(path, Request::End)
}

/// Why the shipper ends a generation when a recovery asks.
pub const ENDED_FOR_RECOVERY: &str = "a recovery is replacing the database";

impl Shipper {
    /// Answers the requests waiting on `requests`; returns why the
    /// generation ended, if a request ended it.
    pub fn answer(&mut self, requests: &std::sync::mpsc::Receiver<Request>) -> Option<String> {
        let mut ended = None;
        while let Ok(request) = requests.try_recv() {
            match request {
                Request::Base(reply) => {
                    let _ = reply.send(self.begin_generation());
                }
                Request::End(reply) => {
                    let done = match self.generation.is_some() {
                        true => self.read_new().and_then(|_| self.end_generation()),
                        false => Ok(()),
                    };
                    if done.is_ok() {
                        ended = Some(ENDED_FOR_RECOVERY.to_string());
                    }
                    let _ = reply.send(done);
                }
            }
        }
        ended
    }
}
