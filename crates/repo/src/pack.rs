//! Blobs and packs.
//!
//! A blob is one chunk, sealed: `nonce || AEAD(codec || payload) || tag`
//! with the chunk id as associated data, so a blob cannot be passed off as
//! another chunk. `codec` is 0 for stored, 1 for zstd.
//!
//! A pack is blobs back to back, then a sealed header listing them, then the
//! header's length as a little-endian u32. Packs are named by the BLAKE3 hash
//! of their bytes. The header makes every pack self-describing, so `check`
//! can compare packs against the index and an index can be rebuilt.

use bytes::Bytes;

use crate::crypto::{Cipher, NONCE_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const ENTRY_LEN: usize = 32 + 4 + 4 + 4;

/// Where a blob sits in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

/// Compresses (where it pays) and seals one chunk. `scratch` is reused
/// between calls to avoid an allocation per chunk.
pub fn seal_blob(cipher: &Cipher, id: &Id, data: &[u8], zstd: &mut zstd::bulk::Compressor<'_>, scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.clear();
    scratch.reserve(zstd::zstd_safe::compress_bound(data.len()));
    let compressed = zstd.compress_to_buffer(data, scratch).is_ok() && scratch.len() + 64 < data.len();
    let (codec, payload) = if compressed {
        (CODEC_ZSTD, &scratch[..])
    } else {
        (CODEC_STORED, data)
    };
    let mut out = Vec::with_capacity(NONCE_LEN + 1 + payload.len() + crate::crypto::TAG_LEN);
    out.resize(NONCE_LEN, 0);
    out.push(codec);
    out.extend_from_slice(payload);
    cipher.seal_in_place(&mut out, &id.0);
    out
}

/// Opens a blob and checks that its content hashes to `id`.
pub fn open_blob(cipher: &Cipher, id: &Id, raw_len: u32, sealed: &[u8], pack: &Id) -> Result<Vec<u8>> {
    let object = format!("chunk {id} in pack {pack}");
    let plain = cipher.open(sealed, &id.0, &object)?;
    let data = match plain.split_first() {
        Some((&CODEC_STORED, rest)) => rest.to_vec(),
        Some((&CODEC_ZSTD, rest)) => zstd::bulk::decompress(rest, raw_len as usize)
            .map_err(|e| Error::corrupt(&object, format!("decompression failed: {e}")))?,
        Some((codec, _)) => return Err(Error::corrupt(&object, format!("unknown codec {codec}"))),
        None => return Err(Error::corrupt(&object, "empty blob")),
    };
    if data.len() != raw_len as usize || cipher.chunk_id(&data) != *id {
        return Err(Error::corrupt(&object, "content does not match its id"));
    }
    Ok(data)
}

/// Accumulates sealed blobs into one pack.
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
    pub fn add(&mut self, id: Id, sealed: &[u8], raw_len: u32) {
        self.entries.push(BlobEntry {
            id,
            offset: self.buf.len() as u32,
            length: sealed.len() as u32,
            raw_len,
        });
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
            return Err(Error::corrupt(&object, format!("entry for chunk {} lies outside the blob area", e.id)));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn pack_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..5000), 1..20)) {
            let cipher = MasterKey::generate().cipher();
            let mut z = zstd::bulk::Compressor::new(1).unwrap();
            let mut scratch = Vec::new();
            let mut b = PackBuilder::default();
            let mut ids = Vec::new();
            for c in &chunks {
                let id = cipher.chunk_id(c);
                b.add(id, &seal_blob(&cipher, &id, c, &mut z, &mut scratch), c.len() as u32);
                ids.push(id);
            }
            let p = b.finish(&cipher);
            prop_assert_eq!(p.id, Id::of_content(&p.data));
            let entries = read_header(&cipher, &p.id, &p.data).unwrap();
            prop_assert_eq!(&entries, &p.entries);
            for (e, c) in entries.iter().zip(&chunks) {
                let blob = &p.data[e.offset as usize..(e.offset + e.length) as usize];
                prop_assert_eq!(&open_blob(&cipher, &e.id, e.raw_len, blob, &p.id).unwrap(), c);
            }
        }
    }

    #[test]
    fn tampered_blob_and_truncated_pack_are_named_errors() {
        let cipher = MasterKey::generate().cipher();
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        let data = b"hello hello hello hello".repeat(100);
        let id = cipher.chunk_id(&data);
        let mut sealed = seal_blob(&cipher, &id, &data, &mut z, &mut Vec::new());
        assert!(sealed.len() < data.len(), "compressible data is compressed");
        sealed[30] ^= 1;
        let err = open_blob(&cipher, &id, data.len() as u32, &sealed, &Id::default()).unwrap_err();
        assert!(err.to_string().contains(&id.to_hex()), "{err}");

        let mut b = PackBuilder::default();
        b.add(id, &seal_blob(&cipher, &id, &data, &mut z, &mut Vec::new()), data.len() as u32);
        let p = b.finish(&cipher);
        let err = read_header(&cipher, &p.id, &p.data[..p.data.len() / 2]).unwrap_err();
        assert!(err.to_string().contains(&p.id.to_hex()), "{err}");
        // Another repository's key cannot open it.
        let other = MasterKey::generate().cipher();
        assert!(read_header(&other, &p.id, &p.data).is_err());
    }

    #[test]
    fn incompressible_data_is_stored() {
        let cipher = MasterKey::generate().cipher();
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        let mut data = vec![0u8; 10_000];
        rand::fill(&mut data[..]);
        let id = cipher.chunk_id(&data);
        let sealed = seal_blob(&cipher, &id, &data, &mut z, &mut Vec::new());
        assert_eq!(sealed.len(), data.len() + 1 + crate::crypto::OVERHEAD);
        assert_eq!(open_blob(&cipher, &id, 10_000, &sealed, &Id::default()).unwrap(), data);
    }
}
