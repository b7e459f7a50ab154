//! The backup pipeline.
//!
//! ```text
//! reader ─▶ chunker thread ─▶ N worker threads ─▶ collector ─▶ uploader threads ─▶ store
//!            (FastCDC cuts,    (keyed BLAKE3 ids,   (orders ids,  (pack, then its
//!             ~2 MiB batches)   dedup, one frame of  fills packs)  index object)
//!                               new chunks: zstd, AEAD)
//! ```
//! Channels are bounded, so memory stays flat however large the input:
//! a few read blocks, a few packs. Any error stops the readers; every
//! stage keeps draining its input so nothing blocks, and the first error
//! is returned. Nothing is committed unless the snapshot manifest is written.

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::chunker::Chunker;
use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::index::{self, Index, PackIndex};
use crate::pack::{FinishedPack, Frame, FrameSealer, PackBuilder};
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

/// The streams of one snapshot, pulled one after another: the next is
/// asked for only once the previous one has been read to its end, so an
/// engine can end a backup session (e.g. `pg_backup_stop`) exactly after
/// the data files and before the files that session yields.
pub type Sources = Box<dyn Iterator<Item = std::io::Result<Source>> + Send>;

/// Sources known up front, as `Sources`.
pub fn sources(list: Vec<Source>) -> Sources {
    Box::new(list.into_iter().map(Ok))
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

/// Consecutive chunks are batched up to this many bytes; a batch's new
/// chunks are compressed together as one frame. On the benchmark database
/// 2 MiB frames store 0.65 % less than 1 MiB ones at the same speed (zstd
/// starts each frame cold); each MiB more costs ~8 MiB of peak RSS.
const BATCH: usize = 2 << 20;

/// A batch of consecutive chunks; the first is chunk `seq` of its source.
struct Work {
    seq: usize,
    chunks: Vec<Bytes>,
}

enum Done {
    Batch {
        seq: usize,
        ids: Vec<(Id, u32)>,
        frame: Option<Frame>,
    },
    EndOfSource {
        chunks: usize,
        bytes: u64,
    },
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
    pub fn run(&self, sources: Sources) -> Result<(Vec<FileEntry>, Totals)> {
        let failure = Failure::default();
        let inflight = Mutex::new(IdSet::default());
        // Rendezvous: the chunker hands a batch to a worker as one becomes
        // free (it is several times faster than they are), so batches in
        // flight are the workers' and the one being cut, and no more.
        let (work_tx, work_rx) = bounded::<Work>(0);
        let (done_tx, done_rx) = bounded::<Done>(self.workers);
        // Rendezvous: a finished pack waits for a free uploader rather than
        // queueing, which bounds memory to (uploaders + 1) packs.
        let (pack_tx, pack_rx) = bounded::<FinishedPack>(0);
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
            let mut pack = self.new_pack();
            for source in sources {
                if failure.is_set() {
                    break;
                }
                let source = match source {
                    Ok(source) => source,
                    Err(e) => {
                        failure.set(Error::io("the next backup source", e));
                        break;
                    }
                };
                self.progress.start(&source.name, source.size_hint);
                let (work_tx, done_tx, failure_ref) = (work_tx.clone(), done_tx.clone(), &failure);
                let chunker = self.chunker;
                let reader = source.reader;
                let name = source.name.clone();
                s.spawn(move || {
                    let (mut seq, mut batch, mut batch_bytes) = (0, Vec::new(), 0);
                    // A closed channel means the workers are gone: nothing to do.
                    let read = chunker.run(reader, &failure_ref.abort, |data| {
                        batch_bytes += data.len();
                        batch.push(data);
                        if batch_bytes >= BATCH {
                            let chunks = std::mem::take(&mut batch);
                            let n = chunks.len();
                            let _ = work_tx.send(Work { seq, chunks });
                            seq += n;
                            batch_bytes = 0;
                        }
                    });
                    if !batch.is_empty() {
                        let n = batch.len();
                        let _ = work_tx.send(Work { seq, chunks: batch });
                        seq += n;
                    }
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
                        Done::Batch { seq, ids, frame } => {
                            received += ids.len();
                            if chunks.len() < seq + ids.len() {
                                chunks.resize(seq + ids.len(), Id::default());
                            }
                            let read: u64 = ids.iter().map(|(_, raw)| u64::from(*raw)).sum();
                            for (i, (id, _)) in ids.into_iter().enumerate() {
                                chunks[seq + i] = id;
                            }
                            let mut new = 0;
                            if let Some(frame) = frame {
                                new = frame.chunks.iter().map(|c| u64::from(c.raw_len)).sum();
                                totals.new_chunks += frame.chunks.len() as u64;
                                pack.add_frame(&frame.sealed, frame.chunks);
                                if pack.len() >= self.pack_size {
                                    let full = std::mem::replace(&mut pack, self.new_pack()).finish(self.cipher);
                                    totals.packs += 1;
                                    let _ = pack_tx.send(full);
                                }
                            }
                            self.progress.advance(read, new);
                        }
                    }
                }
                totals.logical_bytes += size;
                totals.chunks += chunks.len() as u64;
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

    /// Pack buffers are allocated at full size: growing 16 MiB by doubling
    /// would briefly hold twice that. (How they are freed matters as much:
    /// see `tune_allocator` in the binary.)
    fn new_pack(&self) -> PackBuilder {
        PackBuilder::with_buffer(Vec::with_capacity(self.pack_size + BATCH + BATCH / 8))
    }

    fn worker(&self, rx: Receiver<Work>, tx: Sender<Done>, inflight: &Mutex<IdSet>, failure: &Failure) {
        let mut sealer = FrameSealer::new(self.compression_level);
        for Work { seq, chunks } in rx {
            let ids: Vec<(Id, u32)> = chunks
                .iter()
                .map(|c| (self.cipher.chunk_id(c), c.len() as u32))
                .collect();
            let new: Vec<usize> = if failure.is_set() {
                Vec::new()
            } else {
                let mut inflight = inflight.lock().expect("inflight");
                (0..ids.len())
                    .filter(|&i| !self.index.has_live(&ids[i].0) && inflight.insert(ids[i].0))
                    .collect()
            };
            for i in new {
                sealer.push(ids[i].0, &chunks[i]);
            }
            // The new chunks are copied into the frame: the read buffers go
            // now rather than after compression (memory grows with the frame
            // size times the batches in flight).
            drop(chunks);
            let frame = sealer.seal(self.cipher);
            let _ = tx.send(Done::Batch { seq, ids, frame });
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
