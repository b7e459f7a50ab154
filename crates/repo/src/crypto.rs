//! Encryption and keyed hashing.
//!
//! Every object but the key files is sealed with XChaCha20-Poly1305 under the
//! repository's random master key. Random 192-bit nonces make nonce reuse
//! negligible without any counter state shared between processes.
//! Chunk ids are BLAKE3 keyed with a separate secret so that ids reveal
//! nothing about content to someone who can list the storage.

use std::cell::RefCell;

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted blob is longer than its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// First byte of every sealed metadata object: its format version.
pub const FORMAT_VERSION: u8 = 1;
/// The zstd level of sealed objects (metadata, archived WAL).
pub(crate) const OBJECT_LEVEL: i32 = 3;

/// The secrets of a repository. Wrapped by each key slot; never stored in clear.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    #[serde(with = "hex32")]
    encrypt: [u8; 32],
    #[serde(with = "hex32")]
    chunk_id: [u8; 32],
    /// Seeds the chunker's gear table, so that chunk boundaries (and thus
    /// chunk sizes visible in the storage) do not fingerprint known files.
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = MasterKey {
            encrypt: [0; 32],
            chunk_id: [0; 32],
            chunker_seed: 0,
        };
        rand::fill(&mut k.encrypt);
        rand::fill(&mut k.chunk_id);
        k.chunker_seed = rand::random();
        k
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    pub fn cipher(&self) -> Cipher {
        Cipher {
            aead: XChaCha20Poly1305::new(&Key::from(self.encrypt)),
            chunk_key: self.chunk_id,
        }
    }
}

/// The master key made ready for use; cheap to clone into worker threads.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
    chunk_key: [u8; 32],
}

impl Cipher {
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.chunk_key, data).as_bytes())
    }

    /// Encrypts `buf[NONCE_LEN..]` in place; `buf[..NONCE_LEN]` must be
    /// reserved for the nonce. Appends the tag. `aad` binds the ciphertext to
    /// its role (object kind or chunk id) so objects cannot be swapped.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .aead
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut buf[NONCE_LEN..]).into())
            .expect("XChaCha20-Poly1305 accepts any length below 256 GiB");
        buf.extend_from_slice(&tag);
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + OVERHEAD);
        buf.resize(NONCE_LEN, 0);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(&mut buf, aad);
        buf
    }

    /// Decrypts `nonce || ciphertext || tag`; returns the plaintext.
    pub fn open(&self, sealed: &[u8], aad: &[u8], object: &dyn std::fmt::Display) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::corrupt(
                object,
                format!("only {} bytes, too short to be encrypted data", sealed.len()),
            ));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut out = ct.to_vec();
        let nonce = XNonce::try_from(nonce).expect("length checked");
        let tag = Tag::try_from(tag).expect("length checked");
        self.aead
            .decrypt_inout_detached(&nonce, aad, out.as_mut_slice().into(), &tag)
            .map_err(|_| {
                Error::corrupt(
                    object,
                    "authentication failed (data damaged or not written with this repository's key)",
                )
            })?;
        Ok(out)
    }

    /// Seals a metadata object: `version || nonce || ciphertext || tag`,
    /// the plaintext zstd-compressed.
    pub fn seal_object(&self, kind: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_object_at(kind, plaintext, OBJECT_LEVEL)
    }

    /// `seal_object` at another zstd level: a negative one compresses at
    /// several times the speed, for objects rewritten often and kept
    /// briefly (a streamed WAL tail, every 200 ms). Any level reads back
    /// alike.
    pub fn seal_object_at(&self, kind: &str, plaintext: &[u8], level: i32) -> Vec<u8> {
        thread_local! {
            static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
        }
        let compressed = COMPRESSOR
            .with_borrow_mut(|c| {
                let c = match c {
                    Some(c) => c,
                    None => c.insert(zstd::bulk::Compressor::new(level)?),
                };
                c.set_compression_level(level)?;
                c.compress(plaintext)
            })
            .expect("in-memory zstd cannot fail");
        let mut out = Vec::with_capacity(1 + compressed.len() + OVERHEAD);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.seal(&compressed, kind.as_bytes()));
        out
    }

    pub fn open_object(&self, kind: &str, data: &[u8], object: &dyn std::fmt::Display) -> Result<Vec<u8>> {
        let Some((&version, sealed)) = data.split_first() else {
            return Err(Error::corrupt(object, "empty object"));
        };
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                object: object.to_string(),
                found: version.into(),
                supported: FORMAT_VERSION.into(),
            });
        }
        let compressed = self.open(sealed, kind.as_bytes(), object)?;
        // `seal_object` records the size in the frame header: one buffer of
        // exactly that size, rather than one grown by doubling (a 16 MiB WAL
        // segment otherwise costs its size again in copies and page faults).
        // The header is authenticated, so the size is ours; capped anyway.
        let decompressed = match zstd::zstd_safe::get_frame_content_size(&compressed) {
            Ok(Some(size)) if size <= 1 << 30 => decompress(&compressed, size as usize),
            _ => zstd::stream::decode_all(compressed.as_slice()),
        };
        decompressed.map_err(|e| Error::corrupt(object, format!("decompression failed: {e}")))
    }
}

/// Decompresses one zstd frame of a known `size`, with one context per
/// thread: making one per call cost its workspace's allocation and page
/// faults every time (a tenth of a busy server's CPU, reading small index
/// objects).
pub(crate) fn decompress(frame: &[u8], size: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    DECOMPRESSOR.with_borrow_mut(|d| match d {
        Some(d) => d.decompress(frame, size),
        None => d.insert(zstd::bulk::Decompressor::new()?).decompress(frame, size),
    })
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn objects_round_trip_and_reject_tampering(body in proptest::collection::vec(any::<u8>(), 0..5000), flip in any::<prop::sample::Index>()) {
            let cipher = MasterKey::generate().cipher();
            let sealed = cipher.seal_object("snapshot", &body);
            prop_assert_eq!(cipher.open_object("snapshot", &sealed, &"t").unwrap(), body);
            // Bound to its kind and its key.
            prop_assert!(cipher.open_object("index", &sealed, &"t").is_err());
            prop_assert!(MasterKey::generate().cipher().open_object("snapshot", &sealed, &"t").is_err());
            // Any flipped bit after the version byte is detected.
            let mut bad = sealed.clone();
            let i = 1 + flip.index(bad.len() - 1);
            bad[i] ^= 1;
            prop_assert!(cipher.open_object("snapshot", &bad, &"t").is_err());
        }
    }

    #[test]
    fn master_key_debug_hides_secrets() {
        assert_eq!(format!("{:?}", MasterKey::generate()), "MasterKey(<secret>)");
    }
}
