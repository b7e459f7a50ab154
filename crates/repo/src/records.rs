//! Records: small documents a service keeps in the repository beside its
//! backups, so that the repository describes itself (a deployment's
//! settings, a recovery's history): `records/KIND/NAME`, NAME one or more
//! `/`-separated parts, each sealed under the master key with its path as
//! associated data (one record cannot be passed off as another). What they
//! hold is the service's; the repository only keeps them.

use bytes::Bytes;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::wal::valid_part;

pub const RECORDS: &str = "records";

fn path(kind: &str, name: &str) -> Result<String> {
    if !valid_part(kind) || !name.split('/').all(valid_part) {
        return Err(Error::Invalid(format!(
            "{kind}/{name} is not a record name ('/'-separated letters, digits, '.', '_', '-')"
        )));
    }
    Ok(format!("{RECORDS}/{kind}/{name}"))
}

/// Stores (or replaces) a record.
pub async fn put(store: &Store, cipher: &Cipher, kind: &str, name: &str, data: &[u8]) -> Result<()> {
    put_sealed(store, cipher, &path(kind, name)?, data).await.map(|_| ())
}

/// Seals `data` with `path` (checked) as associated data and stores it; its sealed size.
async fn put_sealed(store: &Store, cipher: &Cipher, path: &str, data: &[u8]) -> Result<u64> {
    let sealed = cipher.seal_object(path, data);
    let bytes = sealed.len() as u64;
    store
        .put(&object_store::path::Path::from(path), Bytes::from(sealed))
        .await?;
    Ok(bytes)
}

/// Every record of a kind whose name begins with `prefix` (a whole part,
/// or empty), by name.
pub async fn list(store: &Store, cipher: &Cipher, kind: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let folder = match prefix {
        "" => format!("{RECORDS}/{kind}"),
        p => path(kind, p)?,
    };
    let kind_folder = format!("{RECORDS}/{kind}/");
    let mut out: Vec<(String, Vec<u8>)> = read_under(store, cipher, &folder)
        .await?
        .into_iter()
        .filter_map(|(path, data)| Some((path.strip_prefix(&kind_folder)?.to_string(), data)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every record under `folder`, opened, by path; one deleted since it was
/// listed is left out.
async fn read_under(store: &Store, cipher: &Cipher, folder: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for meta in store.list(folder).await? {
        let path = meta.location.as_ref();
        if let Some(sealed) = store.get_if_exists(&meta.location).await? {
            let what = format!("record {path}");
            out.push((path.to_string(), cipher.open_object(path, &sealed, &what)?));
        }
    }
    Ok(out)
}

pub async fn delete(store: &Store, kind: &str, name: &str) -> Result<()> {
    store
        .delete(&object_store::path::Path::from(path(kind, name)?.as_str()))
        .await
}

/// Every record of every kind, by path (`records/KIND/NAME`).
pub async fn list_all(store: &Store, cipher: &Cipher) -> Result<Vec<(String, Vec<u8>)>> {
    read_under(store, cipher, RECORDS).await
}

/// Stores a record at a path `list_all` gave (another repository's), its
/// sealed size returned.
pub async fn put_path(store: &Store, cipher: &Cipher, path: &str, data: &[u8]) -> Result<u64> {
    let (kind, name) = path
        .strip_prefix(RECORDS)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.split_once('/'))
        .ok_or_else(|| Error::Invalid(format!("{path} is not a record's path")))?;
    put_sealed(store, cipher, &self::path(kind, name)?, data).await
}
