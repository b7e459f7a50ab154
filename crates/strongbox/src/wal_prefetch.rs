//! Prefetching WAL for replay. PostgreSQL runs its `restore_command` once
//! per segment, one after another, and replays each before asking for the
//! next; a fetch (a process start, the repository's key derivation, a
//! download, decryption, a check) would otherwise sit between every two
//! segments. As pgBackRest's asynchronous archive-get does, each
//! `wal-fetch --prefetch N` claims the N segments after the one asked for
//! and starts one background `wal-prefetch` process that fetches the
//! claimed ones into a spool beside PostgreSQL's destination
//! (`pg_wal/.strongbox-prefetch`); the next `wal-fetch` then only links
//! its segment out of the spool, without opening the repository.
//!
//! A claim is a file `NAME.claim` holding the claimer's pid, created only
//! if absent: one prefetcher per segment. A `wal-fetch` whose segment is
//! claimed waits for it, unless the claimer has died. A segment that is
//! not archived releases its claim and nothing is spooled: the direct
//! fetch then answers "not archived", as PostgreSQL expects at the end of
//! the archive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The spool's name inside `pg_wal` (the engine removes it after recovery).
pub use strongbox_engines::PREFETCH_SPOOL;

/// How long a `wal-fetch` waits for a segment a live prefetcher claimed.
const CLAIM_WAIT: Duration = Duration::from_secs(60);

pub struct Spool {
    dir: PathBuf,
}

/// The name of the segment after `name` (`TTTTTTTTLLLLLLLLSSSSSSSS`) for
/// segments of `segment_size` bytes; `None` for other files.
pub fn next_segment(name: &str, segment_size: u64) -> Option<String> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || segment_size == 0 {
        return None;
    }
    let per_log = 0x1_0000_0000 / segment_size;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()? + 1;
    let (log, seg) = if seg == per_log { (log + 1, 0) } else { (log, seg) };
    Some(format!("{}{log:08X}{seg:08X}", &name[..8]))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Spool {
    /// The spool beside `dest` (PostgreSQL's `%p`, `pg_wal/RECOVERYXLOG`).
    pub fn beside(dest: &Path) -> Spool {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Spool {
            dir: parent.join(PREFETCH_SPOOL),
        }
    }

    pub fn at(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn claim_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.claim"))
    }

    /// Gives `dest` a spooled `name` (a hard link: PostgreSQL only reads
    /// it), waiting for one a live prefetcher is fetching; segments before
    /// it leave the spool, it stays (at the end of recovery PostgreSQL asks
    /// for the last one again). Returns its size, or `None` if it is not
    /// spooled.
    pub fn take(&self, name: &str, dest: &Path) -> Result<Option<u64>> {
        let spooled = self.dir.join(name);
        let deadline = Instant::now() + CLAIM_WAIT;
        loop {
            if let Ok(meta) = std::fs::metadata(&spooled) {
                let _ = std::fs::remove_file(dest);
                std::fs::hard_link(&spooled, dest)
                    .with_context(|| format!("linking {} to {}", spooled.display(), dest.display()))?;
                self.drop_before(name);
                return Ok(Some(meta.len()));
            }
            let claimer = std::fs::read_to_string(self.claim_path(name))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            match claimer {
                Some(pid) if alive(pid) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Some(_) => {
                    // Its prefetcher died (or hangs): fetch directly.
                    let _ = std::fs::remove_file(self.claim_path(name));
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
    }

    /// Claims, for `pid`, those of the `count` segments after `name` that
    /// are neither spooled nor claimed.
    pub fn claim_after(&self, name: &str, segment_size: u64, count: usize, pid: u32) -> Vec<String> {
        if std::fs::create_dir(&self.dir).is_err() && !self.dir.is_dir() {
            return Vec::new();
        }
        let mut claimed = Vec::new();
        let mut next = next_segment(name, segment_size);
        for _ in 0..count {
            let Some(n) = next else { break };
            let fresh = !self.dir.join(&n).exists()
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.claim_path(&n))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, pid.to_string().as_bytes()))
                    .is_ok();
            if fresh {
                claimed.push(n.clone());
            }
            next = next_segment(&n, segment_size);
        }
        claimed
    }

    /// Hands claimed names over to another process (the prefetcher).
    pub fn reassign(&self, names: &[String], pid: u32) {
        for n in names {
            let _ = std::fs::write(self.claim_path(n), pid.to_string());
        }
    }

    /// Spools a fetched segment (written aside, then renamed: a `wal-fetch`
    /// never sees half a file) and releases its claim. False if the spool
    /// is gone (the recovery ended).
    pub fn put(&self, name: &str, data: &[u8]) -> Result<bool> {
        if !self.dir.is_dir() {
            return Ok(false);
        }
        let partial = self.dir.join(format!("{name}.partial-fetch"));
        std::fs::write(&partial, data).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, self.dir.join(name)).with_context(|| format!("spooling {name}"))?;
        self.release(name);
        Ok(true)
    }

    /// Removes spooled segments of `name`'s timeline that replay has passed.
    fn drop_before(&self, name: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if n.len() == 24 && n[..8] == name[..8] && *n < *name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    pub fn release(&self, name: &str) {
        let _ = std::fs::remove_file(self.claim_path(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_after_crosses_log_ids() {
        let seg = 16 << 20;
        assert_eq!(
            next_segment("000000020000000100000003", seg).as_deref(),
            Some("000000020000000100000004")
        );
        assert_eq!(
            next_segment("0000000200000001000000FF", seg).as_deref(),
            Some("000000020000000200000000")
        );
        assert_eq!(
            next_segment("000000010000000000000FFF", 1 << 20).as_deref(),
            Some("000000010000000100000000")
        );
        assert_eq!(next_segment("00000002.history", seg), None);
        assert_eq!(next_segment("000000020000000100000003.partial", seg), None);
    }

    #[test]
    fn a_claimed_segment_is_waited_for_and_a_dead_claimers_is_not() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::beside(&d.path().join("RECOVERYXLOG"));
        let first = "000000010000000000000003";
        let me = std::process::id();
        let claimed = spool.claim_after(first, 16 << 20, 3, me);
        assert_eq!(claimed.len(), 3);
        assert!(spool.claim_after(first, 16 << 20, 3, me).is_empty(), "claimed once");
        // Spooled by another thread while a fetch waits for it.
        let dest = d.path().join("RECOVERYXLOG");
        let writer = {
            let dir = spool.dir().to_path_buf();
            let name = claimed[0].clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                Spool::at(dir).put(&name, b"segment").unwrap()
            })
        };
        assert_eq!(spool.take(&claimed[0], &dest).unwrap(), Some(7));
        assert!(writer.join().unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"segment");
        // Asked for again (as at the end of recovery), it is still there;
        // once a later one is taken, it is gone.
        assert_eq!(spool.take(&claimed[0], &dest).unwrap(), Some(7));
        spool.put(&claimed[2], b"later").unwrap();
        assert_eq!(spool.take(&claimed[2], &dest).unwrap(), Some(5));
        assert!(!spool.dir().join(&claimed[0]).exists());
        // A claim whose process is gone is not waited for.
        spool.reassign(&claimed[1..2], u32::MAX - 1);
        assert_eq!(spool.take(&claimed[1], &dest).unwrap(), None);
        // Nothing claimed, nothing spooled: fetch directly.
        assert_eq!(spool.take("000000010000000000000009", &dest).unwrap(), None);
    }
}
