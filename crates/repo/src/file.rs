//! Reading the files a backup takes: through the page cache where their
//! data already is, around it (`O_DIRECT`) where it is not.
//!
//! A backup reads most of a database once, cold. Read through the page
//! cache, every page is first inserted there — on this project's 2-core
//! machines 2.1 s of kernel CPU per GiB (`dd`: 0.12 s when the data is
//! already cached, 0.06 s with `iflag=direct`), a quarter of a backup's
//! CPU to a three-node Garage — and the database's own hot pages are
//! evicted to make room. So before each read, `cachestat(2)` tells whether
//! the range is cached: if so it is read as usual; if not, with `O_DIRECT`
//! into an aligned window, which neither fills nor disturbs the cache. (A
//! `RWF_NOWAIT` read cannot ask this: its miss starts read-ahead into the
//! cache.) A direct read first writes back dirty cached pages of its
//! range, so it returns what a buffered read would. Filesystems without
//! `O_DIRECT` (tmpfs) and kernels without `cachestat` (before 6.5) get
//! plain reads.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Direct reads' alignment (offset, length and buffer): the largest
/// logical block size of common devices.
const ALIGN: usize = 4096;
/// How much one direct read fetches: large enough that a device keeps up
/// with the backup pipeline without read-ahead.
const WINDOW: usize = 4 << 20;

pub struct BackupFile {
    file: File,
    /// The same file opened `O_DIRECT`; `None` once the filesystem or
    /// kernel refused what the uncached path needs.
    direct: Option<File>,
    /// The size when opened: beyond it no page is cached.
    size: u64,
    pos: u64,
    /// The last direct read: `buf[at..at + len]` holds the file's bytes
    /// from `from`.
    buf: Vec<u8>,
    at: usize,
    from: u64,
    len: usize,
}

impl BackupFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .ok();
        let size = file.metadata()?.len();
        Ok(BackupFile {
            file,
            direct,
            size,
            pos: 0,
            buf: Vec::new(),
            at: 0,
            from: 0,
            len: 0,
        })
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// Copies from the last direct read's window, if `pos` lies in it.
    fn copy_window(&mut self, out: &mut [u8]) -> Option<usize> {
        let skip = self.pos.checked_sub(self.from)? as usize;
        if skip >= self.len {
            return None;
        }
        let n = out.len().min(self.len - skip);
        out[..n].copy_from_slice(&self.buf[self.at + skip..self.at + skip + n]);
        Some(n)
    }

    /// Reads the aligned window around `pos` past the page cache; `None`
    /// when the filesystem refuses.
    fn read_direct(&mut self) -> Option<io::Result<()>> {
        let direct = self.direct.as_ref()?;
        if self.buf.is_empty() {
            self.buf = vec![0; WINDOW + ALIGN];
        }
        // A slice of the buffer starting on an ALIGN boundary: the kernel
        // requires it of O_DIRECT buffers.
        let at = self.buf.as_ptr().align_offset(ALIGN);
        let from = self.pos - self.pos % ALIGN as u64;
        match direct.read_at(&mut self.buf[at..at + WINDOW], from) {
            Ok(len) => {
                (self.at, self.from, self.len) = (at, from, len);
                Some(Ok(()))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Read for BackupFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = match self.copy_window(out) {
            Some(n) => n,
            None if self.direct.is_some() => {
                let want = (out.len() as u64).min(self.size.saturating_sub(self.pos));
                match cached_pages(&self.file, self.pos, want) {
                    // At the end (as opened), or cached: a plain read.
                    _ if want == 0 => self.file.read_at(out, self.pos)?,
                    Some(pages) if pages >= pages_in(self.pos, want) => self.file.read_at(out, self.pos)?,
                    Some(_) => match self.read_direct() {
                        Some(Ok(())) => self.copy_window(out).unwrap_or(0),
                        Some(Err(e)) => return Err(e),
                        None => self.file.read_at(out, self.pos)?,
                    },
                    None => {
                        self.direct = None;
                        self.file.read_at(out, self.pos)?
                    }
                }
            }
            None => self.file.read_at(out, self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

const PAGE: u64 = 4096;

/// The pages `len` bytes from `offset` touch.
fn pages_in(offset: u64, len: u64) -> u64 {
    (offset + len).div_ceil(PAGE) - offset / PAGE
}

/// `struct cachestat_range` of <linux/mman.h>.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of <linux/mman.h>.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `cachestat(2)`'s number on every Linux architecture (the unified
/// syscall table); the libc crate does not name it yet.
const SYS_CACHESTAT: libc::c_long = 451;

/// How many pages of the range are in the page cache; `None` where the
/// kernel has no `cachestat` (before 6.5).
fn cached_pages(file: &File, offset: u64, len: u64) -> Option<u64> {
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat(fd, range, cstat, flags) reads one
    // `struct cachestat_range` through its second argument and writes one
    // `struct cachestat` through its third; both point to live, aligned
    // values with exactly the kernel's layout (repr(C), five or two u64s)
    // for the whole call, and the descriptor is open (borrowed from `file`).
    // A kernel without the call returns ENOSYS and touches neither.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    (r == 0).then_some(stat.nr_cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever mix of cached and uncached pages and read sizes, the bytes
    /// read are the file's.
    #[test]
    fn reads_the_files_bytes_cached_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let seed = strongbox_testkit::fresh_seed();
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let len = 3 * WINDOW + 12345;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        f.sync_all().unwrap();
        // Evict the file's pages, then bring a few ranges back: the reads
        // below cross cached and uncached data.
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        for _ in 0..8 {
            let at = next() % len as u64;
            let mut b = vec![0; 100_000];
            let _ = f.read_at(&mut b, at).unwrap();
        }
        let mut r = BackupFile::open(&path).unwrap();
        let mut got = Vec::new();
        loop {
            let mut b = vec![0; 1 + (next() % (WINDOW as u64 + 5000)) as usize];
            let n = r.read(&mut b).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got.len(), data.len(), "seed {seed}");
        assert!(got == data, "seed {seed}: different bytes");
        if r.direct.is_some() {
            assert!(!r.buf.is_empty(), "the evicted pages were read past the cache");
            // Once the whole file is cached, every read goes through the cache.
            let _ = std::fs::read(&path).unwrap();
            let mut r = BackupFile::open(&path).unwrap();
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            assert!(
                all == data && r.buf.is_empty(),
                "a cached file is read through the cache"
            );
        }
    }
}
