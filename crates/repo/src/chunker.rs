//! Content-defined chunking of a byte stream.
//!
//! The stream is read in large blocks and cut with FastCDC (2020); chunks
//! are zero-copy slices of their block. A cut is only made once `max` bytes
//! past its start are in memory (or the stream has ended), so cut points
//! depend on the content alone, never on how `read` happened to return it.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};

use crate::keys::ChunkerParams;

const BLOCK: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    pub params: ChunkerParams,
    pub seed: u64,
}

impl Chunker {
    /// Cuts `reader` into chunks, handing each to `emit`; returns the bytes read.
    /// Stops early (returning what was read so far) once `abort` is set.
    pub fn run(&self, mut reader: impl Read, abort: &AtomicBool, mut emit: impl FnMut(Bytes)) -> io::Result<u64> {
        let (min, avg, max) = (
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
        );
        let mut carry: Vec<u8> = Vec::new();
        let mut total = 0u64;
        loop {
            if abort.load(Ordering::Relaxed) {
                return Ok(total);
            }
            let mut buf = Vec::with_capacity(BLOCK + max);
            buf.extend_from_slice(&carry);
            let eof = fill(&mut reader, &mut buf, BLOCK + max)?;
            total += (buf.len() - carry.len()) as u64;
            let buf = Bytes::from(buf);
            let cdc = FastCDC::with_level_and_seed(&buf, min, avg, max, Normalization::Level1, self.seed);
            let mut start = 0;
            while start < buf.len() {
                let remaining = buf.len() - start;
                if remaining < max && !eof {
                    break;
                }
                let (_, end) = cdc.cut(start, remaining);
                emit(buf.slice(start..end));
                start = end;
            }
            if eof {
                return Ok(total);
            }
            carry = buf[start..].to_vec();
        }
    }
}

/// Reads until `buf` holds `want` bytes or the reader ends; true at end.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want {
        let len = buf.len();
        buf.resize(want, 0);
        match reader.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(true);
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `step` bytes per call, to prove that
    /// cut points do not depend on read sizes.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn cuts(data: &[u8], step: usize, c: &Chunker) -> Vec<Bytes> {
        let mut out = Vec::new();
        let n = c
            .run(Dribble(data, step), &AtomicBool::new(false), |b| out.push(b))
            .unwrap();
        assert_eq!(n, data.len() as u64);
        out
    }

    fn small() -> Chunker {
        Chunker {
            params: ChunkerParams {
                min: 256,
                avg: 1024,
                max: 4096,
            },
            seed: 7,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_reassemble_and_respect_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000), step in 1usize..10_000) {
            let c = small();
            let chunks = cuts(&data, step, &c);
            let joined: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
            prop_assert_eq!(&joined, &data);
            for (i, ch) in chunks.iter().enumerate() {
                prop_assert!(ch.len() <= 4096);
                if i + 1 < chunks.len() { prop_assert!(ch.len() >= 256); }
            }
            // Same cuts whatever the read sizes.
            prop_assert_eq!(chunks, cuts(&data, usize::MAX, &c));
        }
    }

    #[test]
    fn an_edit_changes_only_nearby_chunks() {
        let mut data = vec![0u8; 2_000_000];
        let mut x = 12345u64;
        for b in data.iter_mut() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (x >> 33) as u8;
        }
        let c = Chunker {
            params: ChunkerParams::default(),
            seed: 1,
        };
        let before = cuts(&data, usize::MAX, &c);
        data[1_000_000] ^= 0xff;
        let after = cuts(&data, usize::MAX, &c);
        let old: std::collections::HashSet<_> = before.iter().collect();
        let changed = after.iter().filter(|ch| !old.contains(ch)).count();
        assert!(
            (1..=2).contains(&changed),
            "{changed} chunks changed for a one-byte edit"
        );
    }

    #[test]
    fn seed_changes_boundaries() {
        let data: Vec<u8> = (0..500_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let a = cuts(&data, usize::MAX, &small());
        let b = cuts(&data, usize::MAX, &Chunker { seed: 8, ..small() });
        assert_ne!(
            a.iter().map(|c| c.len()).collect::<Vec<_>>(),
            b.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
    }
}
