//! How the jobs of a server reach the shipper of a database it ships: a
//! backup asks it for a generation's base, a recovery has it push what it
//! holds and end its generation first (no generation spans a recovery:
//! the recovered database's history begins with the base taken after it).
//! The server keeps one `ShipperLink` per shipper it runs and hands it to
//! the deployment's jobs (`BackupContext`, `RecoveryContext`).

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::{Base, Lost, Polled, Shipper};
use crate::Error;

/// What a backup or recovery job asks of the shipper of its database,
/// which runs on its own thread in the same server.
pub enum Request {
    /// A new generation's base, for a backup to store.
    Base(Sender<Result<Base, Error>>),
    /// Push what is pending now and end the generation: a recovery wants
    /// every transaction up to its moment, and replaces the database. The
    /// answer names the generation that last lost continuity, if one did
    /// since the last base (then, or before).
    End(Sender<Result<Option<Lost>, Error>>),
}

/// A way to a database's shipper, open while a `Shipper` runs (between
/// `open` and `close`); a job finding it closed goes on as without one.
#[derive(Clone, Default)]
pub struct ShipperLink(Arc<Mutex<Option<Sender<Request>>>>);

impl ShipperLink {
    /// Requests come on the returned channel until `close`.
    pub fn open(&self) -> Receiver<Request> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.0.lock().expect("shipper link") = Some(tx);
        rx
    }

    pub fn close(&self) {
        *self.0.lock().expect("shipper link") = None;
    }

    /// Asks the shipper, if it runs, and waits up to `LOCK_WAIT` for its
    /// answer; `None` if it does not run.
    fn ask<T>(&self, request: impl FnOnce(Sender<Result<T, Error>>) -> Request) -> Option<Result<T, Error>> {
        let shipper = self.0.lock().expect("shipper link").clone()?;
        let (tx, rx) = std::sync::mpsc::channel();
        shipper.send(request(tx)).ok()?;
        let wait = crate::sqlite::LOCK_WAIT;
        Some(rx.recv_timeout(wait).unwrap_or_else(|_| {
            Err(Error::Failed(format!(
                "the WAL shipper did not answer within {} s",
                wait.as_secs()
            )))
        }))
    }

    /// A new generation's base, if the shipper runs.
    pub fn request_base(&self) -> Option<Result<Base, Error>> {
        self.ask(Request::Base)
    }

    /// Has the shipper, if it runs, push what is pending and end its
    /// generation; the generation that lost continuity, if one did.
    pub fn request_end(&self) -> Option<Result<Option<Lost>, Error>> {
        self.ask(Request::End)
    }
}

/// Why the shipper ends a generation when a recovery asks.
pub const ENDED_FOR_RECOVERY: &str = "a recovery is replacing the database";

impl Shipper {
    /// Answers the requests waiting on `requests`; returns why the
    /// generation ended, if a request ended it.
    pub fn answer(&mut self, requests: &Receiver<Request>) -> Option<String> {
        let mut ended = None;
        while let Ok(request) = requests.try_recv() {
            match request {
                Request::Base(reply) => {
                    let _ = reply.send(self.begin_generation());
                }
                Request::End(reply) => {
                    let mut polled = Polled::default();
                    let done = match self.generation.is_some() {
                        true => self.read_new().and_then(|read| match read {
                            Ok(_) => self.end_generation(),
                            Err(why) => self.lose(why, &mut polled),
                        }),
                        false => Ok(()),
                    };
                    if done.is_ok() {
                        ended = Some(polled.lost.unwrap_or_else(|| ENDED_FOR_RECOVERY.to_string()));
                    }
                    let _ = reply.send(done.map(|()| self.lost.clone()));
                }
            }
        }
        ended
    }
}
