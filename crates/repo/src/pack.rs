//! Frames and packs.
//!
//! A frame holds one or more consecutive new chunks of a stream, compressed
//! together (so zstd sees a MiB of context, its window, though chunks average
//! 32 KiB, which keeps deduplication fine-grained) and sealed as one:
//! `nonce || AEAD(codec || payload) || tag`. `codec` is 0 for stored, 1 for
//! zstd. Each chunk is addressed by its frame and its offset inside the
//! frame's plaintext, and verified after decryption by its keyed hash.
//!
//! A pack is frames back to back, then a sealed header, then the header's
//! length as a little-endian u32. The header lists each frame's sealed
//! length and the position and length of each chunk in it; chunk ids are
//! left out, since they are the keyed hashes of those bytes (at 32 KiB
//! chunks, ids in pack headers were a fifth of a percent of a backup).
//! Packs are named by the BLAKE3 hash of their bytes. The header keeps every
//! pack self-describing: `check --read-data` opens each frame it lists,
//! hashes each chunk and compares the result with the index.

use std::borrow::Borrow;

use bytes::Bytes;

use crate::crypto::{Cipher, NONCE_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const FRAME_AAD: &[u8] = b"strongbox frame";
/// Refuse to inflate a frame beyond this (a damaged header must not
/// allocate without bound).
const MAX_FRAME: u64 = 64 << 20;

/// Where a chunk sits: its frame in the pack, and its bytes in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: Id,
    /// The frame's position and sealed length in the pack.
    pub offset: u32,
    pub length: u32,
    /// The chunk's position and length in the frame's plaintext.
    pub start: u32,
    pub raw_len: u32,
}

/// A sealed frame and the chunks in it (`offset`/`length` still to be set
/// by the pack it goes into).
pub struct Frame {
    pub sealed: Vec<u8>,
    pub chunks: Vec<BlobEntry>,
}

/// Compresses (where it pays) and seals chunks as frames: `push` the
/// chunks of one frame, then `seal`. Owns its zstd context and buffers so
/// that the hot path does not allocate them per frame. The chunks are copied
/// in by `push`, so a caller can let go of its read buffers before the
/// (slow) compression. zstd writes straight behind the frame's nonce, the
/// frame is sealed there, and only its final bytes are copied out: a frame
/// in flight holds its sealed size, not the compression bound.
pub struct FrameSealer {
    zstd: zstd::bulk::Compressor<'static>,
    plain: Vec<u8>,
    entries: Vec<BlobEntry>,
    out: Vec<u8>,
}

impl FrameSealer {
    pub fn new(level: i32) -> Self {
        FrameSealer {
            zstd: zstd::bulk::Compressor::new(level).expect("valid zstd level"),
            plain: Vec::new(),
            entries: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Adds a chunk to the frame being built.
    pub fn push(&mut self, id: Id, data: &[u8]) {
        self.entries.push(BlobEntry {
            id,
            offset: 0,
            length: 0,
            start: self.plain.len() as u32,
            raw_len: data.len() as u32,
        });
        self.plain.extend_from_slice(data);
    }

    /// Seals the chunks pushed since the last frame; `None` if there were none.
    pub fn seal(&mut self, cipher: &Cipher) -> Option<Frame> {
        if self.entries.is_empty() {
            return None;
        }
        let raw = self.plain.len();
        let head = NONCE_LEN + 1;
        let out = &mut self.out;
        out.clear();
        out.reserve(head + zstd::zstd_safe::compress_bound(raw) + crate::crypto::TAG_LEN);
        out.resize(head, 0);
        out[NONCE_LEN] = CODEC_ZSTD;
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(head as u64);
        let compressed = self.zstd.compress_to_buffer(&self.plain, &mut cursor).is_ok() && out.len() + 64 < head + raw;
        if !compressed {
            out.truncate(NONCE_LEN);
            out.push(CODEC_STORED);
            out.extend_from_slice(&self.plain);
        }
        cipher.seal_in_place(out, FRAME_AAD);
        self.plain.clear();
        Some(Frame {
            sealed: out.as_slice().to_vec(),
            chunks: std::mem::take(&mut self.entries),
        })
    }
}

/// Decrypts and decompresses a frame.
pub fn open_frame(cipher: &Cipher, sealed: &[u8], pack: &Id, offset: u32) -> Result<Vec<u8>> {
    let object = format!("frame at {offset} in pack {pack}");
    let plain = cipher.open(sealed, FRAME_AAD, &object)?;
    match plain.split_first() {
        Some((&CODEC_STORED, rest)) => Ok(rest.to_vec()),
        Some((&CODEC_ZSTD, rest)) => {
            let size = zstd::zstd_safe::get_frame_content_size(rest)
                .ok()
                .flatten()
                .filter(|&n| n <= MAX_FRAME)
                .ok_or_else(|| Error::corrupt(&object, "bad compressed frame header"))?;
            crate::crypto::decompress(rest, size as usize)
                .map_err(|e| Error::corrupt(&object, format!("decompression failed: {e}")))
        }
        Some((codec, _)) => Err(Error::corrupt(&object, format!("unknown codec {codec}"))),
        None => Err(Error::corrupt(&object, "empty frame")),
    }
}

/// A chunk's bytes from its opened frame, checked against its id.
pub fn chunk_in<'a>(cipher: &Cipher, frame: &'a [u8], e: &BlobEntry, pack: &Id) -> Result<&'a [u8]> {
    let data = frame
        .get(e.start as usize..e.start as usize + e.raw_len as usize)
        .ok_or_else(|| Error::corrupt(format!("chunk {} in pack {pack}", e.id), "lies outside its frame"))?;
    if cipher.chunk_id(data) != e.id {
        return Err(Error::corrupt(
            format!("chunk {} in pack {pack}", e.id),
            "content does not match its id",
        ));
    }
    Ok(data)
}

/// A pack's entries read back from its own bytes (what its index object
/// would say): each frame opened, each chunk hashed to its id. For packs a
/// killed writer left without their index object.
pub fn entries_of(cipher: &Cipher, pack: &Id, data: &[u8]) -> Result<Vec<BlobEntry>> {
    if Id::of_content(data) != *pack {
        return Err(Error::corrupt(
            format!("pack {pack}"),
            "content does not match its name",
        ));
    }
    let mut entries = Vec::new();
    for f in read_header(cipher, pack, data)? {
        // In bounds: `read_header` checked every frame against the pack size.
        let sealed = &data[f.offset as usize..f.offset as usize + f.length as usize];
        let plain = open_frame(cipher, sealed, pack, f.offset)?;
        for (start, raw_len) in f.chunks {
            let chunk = plain
                .get(start as usize..start as usize + raw_len as usize)
                .ok_or_else(|| {
                    Error::corrupt(
                        format!("pack {pack}"),
                        format!("a chunk at {start} lies outside its frame"),
                    )
                })?;
            entries.push(BlobEntry {
                id: cipher.chunk_id(chunk),
                offset: f.offset,
                length: f.length,
                start,
                raw_len,
            });
        }
    }
    Ok(entries)
}

/// Accumulates frames into one pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

pub struct FinishedPack {
    pub id: Id,
    pub data: Bytes,
    pub entries: Vec<BlobEntry>,
}

impl PackBuilder {
    /// A builder writing into `buf` (cleared).
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackBuilder {
            buf,
            entries: Vec::new(),
        }
    }

    /// Appends a sealed frame holding `chunks` (positions within the frame).
    pub fn add_frame(&mut self, sealed: &[u8], chunks: impl IntoIterator<Item = BlobEntry>) {
        let (offset, length) = (self.buf.len() as u32, sealed.len() as u32);
        self.entries
            .extend(chunks.into_iter().map(|c| BlobEntry { offset, length, ..c }));
        self.buf.extend_from_slice(sealed);
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn finish(self, cipher: &Cipher) -> FinishedPack {
        let mut buf = self.buf;
        let header = cipher.seal_object("pack header", &encode_header(&self.entries));
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        FinishedPack {
            id: Id::of_content(&buf),
            data: Bytes::from(buf),
            entries: self.entries,
        }
    }
}

pub fn take_u32(input: &mut &[u8], object: &dyn std::fmt::Display) -> Result<u32> {
    let (head, rest) = input
        .split_first_chunk::<4>()
        .ok_or_else(|| Error::corrupt(object, "truncated"))?;
    *input = rest;
    Ok(u32::from_le_bytes(*head))
}

/// A frame as a pack header lists it: where it is, and where each chunk is
/// in its plaintext (`start`, `raw_len`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    pub offset: u32,
    pub length: u32,
    pub chunks: Vec<(u32, u32)>,
}

/// A pack's entries (in pack order, a frame's chunks together) grouped by
/// frame; works on entries and on references to them.
pub fn by_frame<E: Borrow<BlobEntry>>(entries: &[E]) -> impl Iterator<Item = &[E]> {
    entries.chunk_by(|a, b| a.borrow().offset == b.borrow().offset)
}

/// The frames of a pack's entries, as its header lists them.
pub fn frames_of(entries: &[BlobEntry]) -> Vec<FrameLayout> {
    by_frame(entries)
        .map(|chunks| FrameLayout {
            offset: chunks[0].offset,
            length: chunks[0].length,
            chunks: chunks.iter().map(|e| (e.start, e.raw_len)).collect(),
        })
        .collect()
}

/// `u32 frames`, then per frame `u32 sealed length, u32 chunks`, then per
/// chunk `u32 start, u32 raw_len`. Frames lie back to back from the pack's
/// start, so offsets are implied.
fn encode_header(entries: &[BlobEntry]) -> Vec<u8> {
    let frames = frames_of(entries);
    let mut out = Vec::with_capacity(4 + frames.len() * 8 + entries.len() * 8);
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for f in &frames {
        out.extend_from_slice(&f.length.to_le_bytes());
        out.extend_from_slice(&(f.chunks.len() as u32).to_le_bytes());
        for (start, raw_len) in &f.chunks {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&raw_len.to_le_bytes());
        }
    }
    out
}

/// Parses a whole pack's header and checks its frames lie inside the pack.
pub fn read_header(cipher: &Cipher, pack: &Id, data: &[u8]) -> Result<Vec<FrameLayout>> {
    let object = format!("pack {pack}");
    let Some(len_at) = data.len().checked_sub(4) else {
        return Err(Error::corrupt(&object, "truncated: shorter than a pack trailer"));
    };
    let header_len = u32::from_le_bytes(data[len_at..].try_into().expect("4 bytes")) as usize;
    let Some(header_at) = len_at.checked_sub(header_len) else {
        return Err(Error::corrupt(&object, "truncated: header length exceeds pack size"));
    };
    let header = cipher.open_object("pack header", &data[header_at..len_at], &object)?;
    let input = &mut header.as_slice();
    let count = take_u32(input, &object)?;
    let mut frames = Vec::new();
    let mut offset = 0u64;
    for _ in 0..count {
        let length = take_u32(input, &object)?;
        let chunks = take_u32(input, &object)? as usize;
        if input.len() < chunks.saturating_mul(8) {
            return Err(Error::corrupt(
                &object,
                format!("header truncated: {chunks} chunks announced"),
            ));
        }
        let chunks = (0..chunks)
            .map(|_| Ok((take_u32(input, &object)?, take_u32(input, &object)?)))
            .collect::<Result<_>>()?;
        if offset + u64::from(length) > header_at as u64 {
            return Err(Error::corrupt(
                &object,
                format!("the frame at {offset} lies outside the blob area"),
            ));
        }
        frames.push(FrameLayout {
            offset: offset as u32,
            length,
            chunks,
        });
        offset += u64::from(length);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    fn pack_of(cipher: &Cipher, frames: &[Vec<Vec<u8>>]) -> FinishedPack {
        let mut sealer = FrameSealer::new(1);
        let mut b = PackBuilder::default();
        for f in frames {
            for c in f {
                sealer.push(cipher.chunk_id(c), c);
            }
            let frame = sealer.seal(cipher).expect("a frame of one chunk or more");
            b.add_frame(&frame.sealed, frame.chunks);
        }
        b.finish(cipher)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn pack_round_trip(frames in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3000), 1..6), 1..8)) {
            let cipher = MasterKey::generate().cipher();
            let p = pack_of(&cipher, &frames);
            prop_assert_eq!(p.id, Id::of_content(&p.data));
            let layout = read_header(&cipher, &p.id, &p.data).unwrap();
            prop_assert_eq!(&layout, &frames_of(&p.entries));
            prop_assert_eq!(layout.len(), frames.len());
            let chunks: Vec<&Vec<u8>> = frames.iter().flatten().collect();
            prop_assert_eq!(p.entries.len(), chunks.len());
            for (e, c) in p.entries.iter().zip(chunks) {
                let sealed = &p.data[e.offset as usize..(e.offset + e.length) as usize];
                let frame = open_frame(&cipher, sealed, &p.id, e.offset).unwrap();
                prop_assert_eq!(chunk_in(&cipher, &frame, e, &p.id).unwrap(), &c[..]);
            }
        }
    }

    #[test]
    fn tampered_frame_and_truncated_pack_are_named_errors() {
        let cipher = MasterKey::generate().cipher();
        let data = b"hello hello hello hello".repeat(100);
        let p = pack_of(&cipher, &[vec![data.clone()]]);
        assert!(p.data.len() < data.len(), "compressible data is compressed");
        let e = p.entries[0];
        let mut sealed = p.data[e.offset as usize..(e.offset + e.length) as usize].to_vec();
        sealed[30] ^= 1;
        let err = open_frame(&cipher, &sealed, &p.id, e.offset).unwrap_err();
        assert!(err.to_string().contains(&p.id.to_hex()), "{err}");
        let err = read_header(&cipher, &p.id, &p.data[..p.data.len() / 2]).unwrap_err();
        assert!(err.to_string().contains(&p.id.to_hex()), "{err}");
        // Another repository's key cannot open it.
        assert!(read_header(&MasterKey::generate().cipher(), &p.id, &p.data).is_err());
        // A chunk whose bytes do not hash to its id is refused.
        let frame = open_frame(
            &cipher,
            &p.data[e.offset as usize..(e.offset + e.length) as usize],
            &p.id,
            0,
        )
        .unwrap();
        let wrong = BlobEntry { id: Id::random(), ..e };
        assert!(chunk_in(&cipher, &frame, &wrong, &p.id).is_err());
    }

    #[test]
    fn incompressible_data_is_stored() {
        let cipher = MasterKey::generate().cipher();
        let mut data = vec![0u8; 10_000];
        rand::fill(&mut data[..]);
        let p = pack_of(&cipher, &[vec![data.clone()]]);
        assert_eq!(p.entries[0].length as usize, data.len() + 1 + crate::crypto::OVERHEAD);
    }
}
