//! A snapshot of the repository as the `BackupFiles` a recovery reads.
//! Engines run on blocking threads; the repository is async, so a stream
//! is a pipe filled by a thread that drives the restore on the runtime.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use strongbox_repo::{Progress, Repository, Snapshot};
use tokio::runtime::Handle;

use crate::{BackupFiles, Error};

pub struct SnapshotFiles {
    repo: Arc<Repository>,
    snapshot: Arc<Snapshot>,
    runtime: Handle,
    progress: Arc<dyn Progress>,
    /// The first error reading the repository: a recovery that failed with
    /// one may succeed from another repository holding the same backup.
    read_failure: Arc<OnceLock<String>>,
}

impl SnapshotFiles {
    pub fn new(repo: Arc<Repository>, snapshot: Snapshot, runtime: Handle, progress: Arc<dyn Progress>) -> Self {
        SnapshotFiles {
            repo,
            snapshot: Arc::new(snapshot),
            runtime,
            progress,
            read_failure: Arc::default(),
        }
    }

    /// Set once reading the repository failed (see `read_failure`).
    pub fn read_failure(&self) -> Arc<OnceLock<String>> {
        self.read_failure.clone()
    }

    fn failed(&self, e: strongbox_repo::Error) -> Error {
        failed_reading(&self.read_failure, e)
    }
}

fn failed_reading(noted: &OnceLock<String>, e: strongbox_repo::Error) -> Error {
    let message = format!("reading the backup: {e}");
    let _ = noted.set(message.clone());
    Error::Failed(message)
}

impl BackupFiles for SnapshotFiles {
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        self.snapshot.file(name).map_err(|e| self.failed(e))?;
        let (reader, writer) = io::pipe().map_err(|e| Error::io("pipe", e))?;
        let (repo, snap, progress, name) = (
            self.repo.clone(),
            self.snapshot.clone(),
            self.progress.clone(),
            name.to_string(),
        );
        let runtime = self.runtime.clone();
        let filler = std::thread::spawn(move || {
            runtime.block_on(repo.restore_to_writer(&snap, &name, writer, progress.as_ref()))
        });
        Ok(Box::new(Stream {
            reader,
            filler: Some(filler),
            read_failure: self.read_failure.clone(),
        }))
    }

    fn restore_to(&self, name: &str, dest: &Path) -> Result<(), Error> {
        self.runtime
            .block_on(
                self.repo
                    .restore_file(&self.snapshot, name, dest, self.progress.as_ref()),
            )
            .map_err(|e| self.failed(e))
    }

    fn restore_tree(&self, dir: &Path) -> Result<(), Error> {
        self.runtime
            .block_on(self.repo.restore_all(&self.snapshot, dir, self.progress.as_ref()))
            .map_err(|e| self.failed(e))
    }
}

/// The read end; at EOF the filler's result decides between the end of the
/// file and an error (a damaged backup is never a short, clean stream).
struct Stream {
    reader: io::PipeReader,
    filler: Option<JoinHandle<strongbox_repo::Result<()>>>,
    read_failure: Arc<OnceLock<String>>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(filler) = self.filler.take()
        {
            match filler.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::other(failed_reading(&self.read_failure, e))),
                Err(_) => return Err(io::Error::other("reading the backup: the restore thread panicked")),
            }
        }
        Ok(n)
    }
}
