//! Frames and packs.
//!
//! A frame holds one or more consecutive new chunks of a stream, compressed
//! together (so zstd sees up to a MiB of context even though chunks are a
//! few KiB, which keeps deduplication fine-grained) and sealed as one:
//! `nonce || AEAD(codec || payload) || tag`. `codec` is 0 for stored, 1 for
//! zstd. Each chunk is addressed by its frame and its offset inside the
//! frame's plaintext, and verified after decryption by its keyed hash.
//!
//! A pack is frames back to back, then a sealed header listing every chunk,
//! then the header's length as a little-endian u32. Packs are named by the
//! BLAKE3 hash of their bytes. The header makes every pack self-describing,
//! so `check` can compare packs against the index and an index can be rebuilt.

use bytes::Bytes;

use crate::crypto::{Cipher, NONCE_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const ENTRY_LEN: usize = 32 + 4 * 4;
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

/// Compresses (where it pays) and seals chunks as frames. Owns its zstd
/// context and buffers so that the hot path does not allocate them per frame.
pub struct FrameSealer {
    zstd: zstd::bulk::Compressor<'static>,
    plain: Vec<u8>,
    compressed: Vec<u8>,
}

impl FrameSealer {
    pub fn new(level: i32) -> Self {
        FrameSealer {
            zstd: zstd::bulk::Compressor::new(level).expect("valid zstd level"),
            plain: Vec::new(),
            compressed: Vec::new(),
        }
    }

    pub fn seal(&mut self, cipher: &Cipher, chunks: &[(Id, &[u8])]) -> Frame {
        self.plain.clear();
        let mut entries = Vec::with_capacity(chunks.len());
        for (id, d) in chunks {
            entries.push(BlobEntry {
                id: *id,
                offset: 0,
                length: 0,
                start: self.plain.len() as u32,
                raw_len: d.len() as u32,
            });
            self.plain.extend_from_slice(d);
        }
        let raw = self.plain.len();
        self.compressed.clear();
        self.compressed.reserve(zstd::zstd_safe::compress_bound(raw));
        let compressed =
            self.zstd.compress_to_buffer(&self.plain, &mut self.compressed).is_ok() && self.compressed.len() + 64 < raw;
        let (codec, payload) = if compressed {
            (CODEC_ZSTD, &self.compressed[..])
        } else {
            (CODEC_STORED, &self.plain[..])
        };
        let mut sealed = Vec::with_capacity(NONCE_LEN + 1 + payload.len() + crate::crypto::TAG_LEN);
        sealed.resize(NONCE_LEN, 0);
        sealed.push(codec);
        sealed.extend_from_slice(payload);
        cipher.seal_in_place(&mut sealed, FRAME_AAD);
        Frame {
            sealed,
            chunks: entries,
        }
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
            thread_local! {
                // One context per thread: making one per frame cost its
                // workspace's allocation and page faults every time.
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DECOMPRESSOR.with_borrow_mut(|d| {
                let d = match d {
                    Some(d) => d,
                    None => d.insert(zstd::bulk::Decompressor::new().map_err(|e| Error::io("zstd", e))?),
                };
                d.decompress(rest, size as usize)
                    .map_err(|e| Error::corrupt(&object, format!("decompression failed: {e}")))
            })
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
        let header = cipher.seal_object("pack header", &encode_entries(&self.entries));
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        FinishedPack {
            id: Id::of_content(&buf),
            data: Bytes::from(buf),
            entries: self.entries,
        }
    }
}

pub fn encode_entries(entries: &[BlobEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.start.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    out
}

/// Reads entries written by `encode_entries`, advancing `input`.
pub fn decode_entries(input: &mut &[u8], object: &dyn std::fmt::Display) -> Result<Vec<BlobEntry>> {
    let count = take_u32(input, object)? as usize;
    if input.len() < count.saturating_mul(ENTRY_LEN) {
        return Err(Error::corrupt(object, format!("truncated: {count} entries announced")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let id = Id::from_slice(&input[..32]).expect("32 bytes");
        *input = &input[32..];
        out.push(BlobEntry {
            id,
            offset: take_u32(input, object)?,
            length: take_u32(input, object)?,
            start: take_u32(input, object)?,
            raw_len: take_u32(input, object)?,
        });
    }
    Ok(out)
}

pub fn take_u32(input: &mut &[u8], object: &dyn std::fmt::Display) -> Result<u32> {
    let (head, rest) = input
        .split_first_chunk::<4>()
        .ok_or_else(|| Error::corrupt(object, "truncated"))?;
    *input = rest;
    Ok(u32::from_le_bytes(*head))
}

/// Parses a whole pack's header and checks its entries lie inside the pack.
pub fn read_header(cipher: &Cipher, pack: &Id, data: &[u8]) -> Result<Vec<BlobEntry>> {
    let object = format!("pack {pack}");
    let Some(len_at) = data.len().checked_sub(4) else {
        return Err(Error::corrupt(&object, "truncated: shorter than a pack trailer"));
    };
    let header_len = u32::from_le_bytes(data[len_at..].try_into().expect("4 bytes")) as usize;
    let Some(header_at) = len_at.checked_sub(header_len) else {
        return Err(Error::corrupt(&object, "truncated: header length exceeds pack size"));
    };
    let header = cipher.open_object("pack header", &data[header_at..len_at], &object)?;
    let entries = decode_entries(&mut header.as_slice(), &object)?;
    for e in &entries {
        if e.offset as usize + e.length as usize > header_at {
            return Err(Error::corrupt(
                &object,
                format!("entry for chunk {} lies outside the blob area", e.id),
            ));
        }
    }
    Ok(entries)
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
            let chunks: Vec<(Id, &[u8])> = f.iter().map(|c| (cipher.chunk_id(c), &c[..])).collect();
            let frame = sealer.seal(cipher, &chunks);
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
            let entries = read_header(&cipher, &p.id, &p.data).unwrap();
            prop_assert_eq!(&entries, &p.entries);
            let chunks: Vec<&Vec<u8>> = frames.iter().flatten().collect();
            prop_assert_eq!(entries.len(), chunks.len());
            for (e, c) in entries.iter().zip(chunks) {
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
