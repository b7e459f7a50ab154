//! The backup pipeline.
//!
//! ```text
//! reader ─▶ chunker thread ─▶ N worker threads ─▶ collector ─▶ uploader threads ─▶ store
//!            (FastCDC cuts)    (keyed BLAKE3 id,    (orders ids,  (pack, then its
//!                               dedup, zstd, AEAD)   fills packs)  index object)
//! ```
//! Channels are bounded, so memory stays flat however large the input:
//! a few read blocks, a few packs. Any error stops the readers; every
//! stage keeps draining its input so nothing blocks, and the first error
//! is returned. Nothing is committed unless the snapshot manifest is written.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::chunker::Chunker;
use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::index::{self, Index, PackIndex};
use crate::pack::{FinishedPack, PackBuilder, seal_blob};
use crate::progress::Progress;
use crate::snapshot::{FileEntry, Totals};
use crate::storage::{Store, layout};

/// One named stream to back up.
pub struct Source {
    pub name: String,
    pub mode: u32,
    /// Size when known in advance (for progress only).
    pub size_hint: Option<u64>,
    pub reader: Box<dyn Read + Send>,
}

impl Source {
    pub fn new(name: impl Into<String>, reader: impl Read + Send + 'static) -> Self {
        Source {
            name: name.into(),
            mode: 0o600,
            size_hint: None,
            reader: Box::new(reader),
        }
    }
}

pub(crate) struct Pipeline<'a> {
    pub store: &'a Store,
    pub cipher: &'a Cipher,
    pub chunker: Chunker,
    pub index: &'a Index,
    pub pack_size: usize,
    pub compression_level: i32,
    pub workers: usize,
    pub uploaders: usize,
    pub progress: &'a dyn Progress,
    pub runtime: tokio::runtime::Handle,
}

struct Work {
    seq: usize,
    data: Bytes,
}

enum Done {
    Chunk { seq: usize, id: Id, raw: u32, blob: Option<Vec<u8>> },
    EndOfSource { chunks: usize, bytes: u64 },
}

/// The first error wins; setting it also tells every stage to wind down.
#[derive(Default)]
struct Failure {
    abort: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Failure {
    fn set(&self, e: Error) {
        self.error.lock().expect("failure").get_or_insert(e);
        self.abort.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

impl Pipeline<'_> {
    pub fn run(&self, sources: Vec<Source>) -> Result<(Vec<FileEntry>, Totals)> {
        let failure = Failure::default();
        let inflight = Mutex::new(IdSet::default());
        let (work_tx, work_rx) = bounded::<Work>(self.workers * 16);
        let (done_tx, done_rx) = bounded::<Done>(self.workers * 16);
        let (pack_tx, pack_rx) = bounded::<FinishedPack>(1);
        let stored = Mutex::new(0u64);
        let result = std::thread::scope(|s| {
            for _ in 0..self.workers {
                let (rx, tx) = (work_rx.clone(), done_tx.clone());
                let (inflight, failure) = (&inflight, &failure);
                s.spawn(move || self.worker(rx, tx, inflight, failure));
            }
            drop(work_rx);
            for _ in 0..self.uploaders {
                let rx = pack_rx.clone();
                let (failure, stored) = (&failure, &stored);
                s.spawn(move || self.uploader(rx, failure, stored));
            }
            drop(pack_rx);
            let mut files = Vec::new();
            let mut totals = Totals::default();
            let mut pack = PackBuilder::default();
            for source in sources {
                if failure.is_set() {
                    break;
                }
                self.progress.start(&source.name, source.size_hint);
                let (work_tx, done_tx, failure_ref) = (work_tx.clone(), done_tx.clone(), &failure);
                let chunker = self.chunker;
                let reader = source.reader;
                let name = source.name.clone();
                s.spawn(move || {
                    let mut seq = 0;
                    let read = chunker.run(reader, &failure_ref.abort, |data| {
                        // A closed channel means the workers are gone: nothing to do.
                        let _ = work_tx.send(Work { seq, data });
                        seq += 1;
                    });
                    let bytes = read.unwrap_or_else(|e| {
                        failure_ref.set(Error::io(&name, e));
                        0
                    });
                    let _ = done_tx.send(Done::EndOfSource { chunks: seq, bytes });
                });
                let mut chunks: Vec<Id> = Vec::new();
                let (mut received, mut expected, mut size) = (0usize, None, 0u64);
                while expected != Some(received) {
                    match done_rx.recv().expect("senders outlive this loop") {
                        Done::EndOfSource { chunks, bytes } => {
                            expected = Some(chunks);
                            size = bytes;
                        }
                        Done::Chunk { seq, id, raw, blob } => {
                            received += 1;
                            if chunks.len() <= seq {
                                chunks.resize(seq + 1, Id::default());
                            }
                            chunks[seq] = id;
                            totals.chunks += 1;
                            let new = blob.as_ref().map_or(0, |_| u64::from(raw));
                            if let Some(blob) = blob {
                                totals.new_chunks += 1;
                                pack.add(id, &blob, raw);
                                if pack.len() >= self.pack_size {
                                    let full = std::mem::take(&mut pack).finish(self.cipher);
                                    totals.packs += 1;
                                    let _ = pack_tx.send(full);
                                }
                            }
                            self.progress.advance(u64::from(raw), new);
                        }
                    }
                }
                totals.logical_bytes += size;
                files.push(FileEntry {
                    name: source.name,
                    size,
                    mode: source.mode,
                    chunks,
                });
            }
            drop(work_tx);
            if !pack.is_empty() && !failure.is_set() {
                totals.packs += 1;
                let _ = pack_tx.send(pack.finish(self.cipher));
            }
            drop(pack_tx);
            (files, totals)
        });
        if let Some(e) = failure.error.into_inner().expect("failure") {
            return Err(e);
        }
        let (files, mut totals) = result;
        totals.new_bytes_stored = stored.into_inner().expect("stored");
        Ok((files, totals))
    }

    fn worker(&self, rx: Receiver<Work>, tx: Sender<Done>, inflight: &Mutex<IdSet>, failure: &Failure) {
        let mut zstd = zstd::bulk::Compressor::new(self.compression_level).expect("valid zstd level");
        let mut scratch = Vec::new();
        for Work { seq, data } in rx {
            let id = self.cipher.chunk_id(&data);
            let new = !failure.is_set() && !self.index.has_live(&id) && inflight.lock().expect("inflight").insert(id);
            let blob = new.then(|| seal_blob(self.cipher, &id, &data, &mut zstd, &mut scratch));
            let _ = tx.send(Done::Chunk {
                seq,
                id,
                raw: data.len() as u32,
                blob,
            });
        }
    }

    fn uploader(&self, rx: Receiver<FinishedPack>, failure: &Failure, stored: &Mutex<u64>) {
        for pack in rx {
            if failure.is_set() {
                continue; // drain, so the collector never blocks
            }
            match self.runtime.block_on(self.upload(pack)) {
                Ok(bytes) => {
                    *stored.lock().expect("stored") += bytes;
                    self.progress.stored(bytes);
                }
                Err(e) => failure.set(e),
            }
        }
    }

    /// The pack, then its index object: once the index object exists the
    /// pack's chunks are found by every later backup, even if this one dies.
    async fn upload(&self, pack: FinishedPack) -> Result<u64> {
        let size = pack.data.len() as u64;
        self.store.put_new(&layout::pack(&pack.id), pack.data).await?;
        let entry = PackIndex {
            pack: pack.id,
            size,
            blobs: pack.entries,
        };
        let (_, index_bytes) = index::write(self.store, self.cipher, std::slice::from_ref(&entry)).await?;
        Ok(size + index_bytes)
    }
}
