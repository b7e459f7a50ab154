//! Key slots and the repository config.
//!
//! `init` draws a random master key and stores it once per key slot, sealed
//! with a key derived from that slot's password by Argon2id. Any slot's
//! password opens the repository; slots can be added and removed without
//! re-encrypting any data.

use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::{Store, layout};

pub const KEY_FILE_VERSION: u32 = 1;
/// 2: pack headers list frames and chunk positions, not chunk ids.
pub const CONFIG_VERSION: u32 = 2;

/// Content-defined chunking bounds, fixed when a repository is created.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    /// Chosen by `cargo run --release -p strongbox-repo --example chunk_params`
    /// on a SQLite database with 4 KiB pages: see README "Chunk sizes".
    fn default() -> Self {
        ChunkerParams {
            min: 16 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
        }
    }
}

/// Repository-wide settings, sealed under the master key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: Id,
    pub chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u32,
    pub compression_level: i32,
}

/// What `init` lets a user choose.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            // See README "Compression": level 2 on ~1 MiB frames.
            compression_level: 2,
            pack_size: 16 << 20,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    created: String,
    hostname: String,
    kdf: String,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
    /// nonce || sealed master key || tag, hex.
    master_key: String,
}

/// What `key list` shows of a slot; never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeySlot {
    pub id: Id,
    pub created: String,
    pub hostname: String,
}

fn kdf(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<XChaCha20Poly1305> {
    let params = Params::new(m, t, p, Some(32)).map_err(|e| Error::Invalid(format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
    Ok(XChaCha20Poly1305::new(&Key::from(out)))
}

const KEY_AAD: &[u8] = b"strongbox key slot";

fn wrap(master: &MasterKey, password: &[u8]) -> Result<(Id, Vec<u8>)> {
    if password.is_empty() {
        return Err(Error::Invalid("the repository password must not be empty".into()));
    }
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let (m, t, p) = (Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, Params::DEFAULT_P_COST);
    let aead = kdf(password, &salt, m, t, p)?;
    let plaintext = serde_json::to_vec(master).expect("serializable");
    let sealed = seal_with(&aead, &plaintext);
    let kf = KeyFile {
        version: KEY_FILE_VERSION,
        created: crate::now_rfc3339(),
        hostname: crate::hostname(),
        kdf: "argon2id".into(),
        m_cost: m,
        t_cost: t,
        p_cost: p,
        salt: hex::encode(salt),
        master_key: hex::encode(sealed),
    };
    let body = serde_json::to_vec_pretty(&kf).expect("serializable");
    Ok((Id::of_content(&body), body))
}

fn seal_with(aead: &XChaCha20Poly1305, plaintext: &[u8]) -> Vec<u8> {
    use chacha20poly1305::AeadInOut;
    let mut nonce = [0u8; 24];
    rand::fill(&mut nonce);
    let mut buf = plaintext.to_vec();
    let tag = aead
        .encrypt_inout_detached(&nonce.into(), KEY_AAD, buf.as_mut_slice().into())
        .expect("short message");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn unwrap_slot(path: &str, body: &[u8], password: &[u8]) -> Result<Option<MasterKey>> {
    use chacha20poly1305::AeadInOut;
    let kf: KeyFile = serde_json::from_slice(body).map_err(|e| Error::corrupt(path, e))?;
    if kf.version != KEY_FILE_VERSION {
        return Err(Error::UnsupportedVersion {
            object: path.into(),
            found: kf.version,
            supported: KEY_FILE_VERSION,
        });
    }
    if kf.kdf != "argon2id" {
        return Err(Error::corrupt(path, format!("unknown key derivation {:?}", kf.kdf)));
    }
    let salt = hex::decode(&kf.salt).map_err(|e| Error::corrupt(path, e))?;
    let sealed = hex::decode(&kf.master_key).map_err(|e| Error::corrupt(path, e))?;
    if sealed.len() < 40 {
        return Err(Error::corrupt(path, "sealed master key too short"));
    }
    let aead = kdf(password, &salt, kf.m_cost, kf.t_cost, kf.p_cost)?;
    let (nonce, rest) = sealed.split_at(24);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut buf = ct.to_vec();
    let ok = aead.decrypt_inout_detached(
        nonce.try_into().expect("24 bytes"),
        KEY_AAD,
        buf.as_mut_slice().into(),
        tag.try_into().expect("16 bytes"),
    );
    if ok.is_err() {
        return Ok(None);
    }
    let master = serde_json::from_slice(&buf).map_err(|e| Error::corrupt(path, e))?;
    Ok(Some(master))
}

/// Creates a repository: first key slot, then the config (its existence
/// marks an initialized repository).
pub async fn init(store: &Store, password: &[u8], opts: InitOptions) -> Result<(MasterKey, Config)> {
    if !store.list(layout::KEYS).await?.is_empty() {
        return Err(Error::AlreadyInitialized {
            location: store.location().into(),
        });
    }
    validate_chunker(&opts.chunker)?;
    if !(1..=19).contains(&opts.compression_level) {
        return Err(Error::Invalid(format!(
            "compression level must be 1 to 19, got {}",
            opts.compression_level
        )));
    }
    if !(1 << 20..=1 << 30).contains(&opts.pack_size) {
        return Err(Error::Invalid(format!(
            "pack size must be 1 MiB to 1 GiB, got {}",
            opts.pack_size
        )));
    }
    let master = MasterKey::generate();
    let config = Config {
        version: CONFIG_VERSION,
        id: Id::random(),
        chunker: opts.chunker,
        pack_size: opts.pack_size,
        compression_level: opts.compression_level,
    };
    let (id, body) = wrap(&master, password)?;
    store.put_new(&layout::of(layout::KEYS, &id), Bytes::from(body)).await?;
    let sealed = master
        .cipher()
        .seal_object("config", &serde_json::to_vec(&config).expect("serializable"));
    if !store
        .create_claimed(&layout::config(), Bytes::from(sealed), &config.id.to_hex())
        .await?
    {
        // Another init won: its key slot is the repository's, not ours.
        store.delete(&layout::of(layout::KEYS, &id)).await?;
        return Err(Error::AlreadyInitialized {
            location: store.location().into(),
        });
    }
    Ok((master, config))
}

fn validate_chunker(c: &ChunkerParams) -> Result<()> {
    use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MIN};
    let ok = c.min as usize >= MINIMUM_MIN
        && c.min < c.avg
        && c.avg < c.max
        && (AVERAGE_MIN..=AVERAGE_MAX).contains(&(c.avg as usize))
        && c.max as usize <= MAXIMUM_MAX
        && c.min.is_multiple_of(2)
        && c.avg.is_multiple_of(2)
        && c.max.is_multiple_of(2);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "chunker sizes must be even with {MINIMUM_MIN} <= min < avg < max <= {MAXIMUM_MAX}; got {c:?}"
        )))
    }
}

/// Opens the repository with any slot's password.
pub async fn unlock(store: &Store, password: &[u8]) -> Result<(MasterKey, Config)> {
    // The config before the slots: a slot is written before the config it
    // opens, so the slot of any config read here is in the list below.
    // (Listed first, the slots could miss the slot of a config an init
    // racing this one wrote between the listing and the read: "config is
    // corrupt" with no damage at all; seen under load in `tests/keys.rs`.)
    let sealed_config = store.get_if_exists(&layout::config()).await?;
    let slots = store.list(layout::KEYS).await?;
    if slots.is_empty() {
        return Err(Error::NotARepository {
            location: store.location().into(),
        });
    }
    let mut foreign = None;
    let mut vanished = 0;
    for meta in &slots {
        // A slot an init that lost its race removes again.
        let body = match store.get(&meta.location).await {
            Err(Error::Missing { .. }) => {
                vanished += 1;
                continue;
            }
            other => other?,
        };
        if let Some(master) = unwrap_slot(meta.location.as_ref(), &body, password)? {
            let Some(sealed) = &sealed_config else {
                // A racing init's slot, its config not written yet.
                return Err(Error::Missing {
                    object: layout::config().to_string(),
                });
            };
            // A slot an interrupted init left behind holds another master
            // key, which does not open the config: try the next slot.
            let plain = match master.cipher().open_object("config", sealed, &"config") {
                Ok(p) => p,
                Err(e) => {
                    foreign = Some(e);
                    continue;
                }
            };
            let config: Config = serde_json::from_slice(&plain).map_err(|e| Error::corrupt("config", e))?;
            if config.version != CONFIG_VERSION {
                return Err(Error::UnsupportedVersion {
                    object: "config".into(),
                    found: config.version,
                    supported: CONFIG_VERSION,
                });
            }
            validate_chunker(&config.chunker).map_err(|e| Error::corrupt("config", e))?;
            return Ok((master, config));
        }
    }
    if vanished == slots.len() {
        return Err(Error::NotARepository {
            location: store.location().into(),
        });
    }
    Err(foreign.unwrap_or(Error::WrongPassword { slots: slots.len() }))
}

pub async fn add_key(store: &Store, master: &MasterKey, new_password: &[u8]) -> Result<Id> {
    let (id, body) = wrap(master, new_password)?;
    store.put_new(&layout::of(layout::KEYS, &id), Bytes::from(body)).await?;
    Ok(id)
}

pub async fn list_keys(store: &Store) -> Result<Vec<KeySlot>> {
    let mut out = Vec::new();
    for meta in store.list(layout::KEYS).await? {
        let body = store.get(&meta.location).await?;
        let kf: KeyFile = serde_json::from_slice(&body).map_err(|e| Error::corrupt(&meta.location, e))?;
        if let Some(id) = layout::id_of(&meta.location) {
            out.push(KeySlot {
                id,
                created: kf.created,
                hostname: kf.hostname,
            });
        }
    }
    Ok(out)
}

/// Removes a slot; refuses to remove the last one (that would lock
/// everyone out of the repository for good).
pub async fn remove_key(store: &Store, id: &Id) -> Result<()> {
    let slots = list_keys(store).await?;
    if !slots.iter().any(|s| s.id == *id) {
        return Err(Error::Invalid(format!("no key slot {id}")));
    }
    if slots.len() == 1 {
        return Err(Error::Invalid("refusing to remove the only key slot".into()));
    }
    store.delete(&layout::of(layout::KEYS, id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository written by an earlier format (version 1: pack headers
    /// with chunk ids) is refused by name, not misread.
    #[tokio::test]
    async fn an_earlier_format_is_refused_by_version() {
        let store = Store::open("memory:").unwrap();
        let (master, mut config) = init(&store, b"pw", InitOptions::default()).await.unwrap();
        config.version = 1;
        let sealed = master
            .cipher()
            .seal_object("config", &serde_json::to_vec(&config).unwrap());
        store.delete(&layout::config()).await.unwrap();
        store.put_new(&layout::config(), sealed.into()).await.unwrap();
        let err = unlock(&store, b"pw").await.expect_err("version 1 is refused");
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 1,
                    supported: CONFIG_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("reads version 2"), "{err}");
    }
}
