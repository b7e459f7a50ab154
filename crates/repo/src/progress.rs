//! Progress reporting, shared by the CLI (a progress bar) and the server
//! (job progress in the catalog).

use std::sync::atomic::{AtomicU64, Ordering};

pub trait Progress: Send + Sync {
    /// A new file or stream begins; `total` is its size when known.
    fn start(&self, _name: &str, _total: Option<u64>) {}
    /// `read` more bytes were processed, `new` of them not already stored.
    fn advance(&self, _read: u64, _new: u64) {}
    /// `bytes` were written to the storage.
    fn stored(&self, _bytes: u64) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// Running totals; readable from another thread while work goes on.
#[derive(Default, Debug)]
pub struct Counters {
    pub total: AtomicU64,
    pub read: AtomicU64,
    pub new: AtomicU64,
    pub stored: AtomicU64,
}

impl Progress for Counters {
    fn start(&self, _name: &str, total: Option<u64>) {
        self.total.fetch_add(total.unwrap_or(0), Ordering::Relaxed);
    }
    fn advance(&self, read: u64, new: u64) {
        self.read.fetch_add(read, Ordering::Relaxed);
        self.new.fetch_add(new, Ordering::Relaxed);
    }
    fn stored(&self, bytes: u64) {
        self.stored.fetch_add(bytes, Ordering::Relaxed);
    }
}
