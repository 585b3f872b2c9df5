//! The VIP map on disk: JSON, replaced atomically (write a temporary file in the same
//! directory, fsync, rename over the old one, fsync the directory).
//!
//! ```json
//! { "format": 1,
//!   "entries": [ { "service": { "namespace": "shop", "name": "api" },
//!                  "ipv4": "10.96.12.7", "ipv6": null, "released": null } ] }
//! ```
//!
//! `released` orders the services that are gone (oldest first); `null` means active.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{Entry, Pool, VipAllocator};
use crate::error::Error;
use crate::names::ServiceName;

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipFile {
    format: u32,
    entries: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    service: ServiceName,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    released: Option<u64>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    |source| Error::VipFile {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, field: String, value: String, reason: &'static str) -> Error {
    Error::Invalid {
        field: format!("{}: {field}", path.display()),
        value,
        reason,
    }
}

impl VipAllocator {
    /// Loads the map saved at `path`, or starts empty if there is no file. Addresses outside the
    /// configured ranges (the ranges changed) are dropped, and their services get new ones. A
    /// file that does not parse, or gives one address or service twice, is an error.
    pub fn load(path: &Path, v4: Ipv4Net, v6: Option<Ipv6Net>) -> Result<Self, Error> {
        let mut alloc = Self::new(v4, v6);
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(alloc),
            Err(e) => return Err(io_error(path)(e)),
        };
        let file: VipFile =
            serde_json::from_slice(&bytes).map_err(|source| Error::VipFileFormat {
                path: path.to_path_buf(),
                source,
            })?;
        if file.format != FORMAT {
            let value = file.format.to_string();
            return Err(invalid(path, "format".into(), value, "unknown format"));
        }
        let mut released = Vec::new();
        let mut dropped = false;
        for (i, e) in file.entries.into_iter().enumerate() {
            if alloc.entries.contains_key(&e.service) {
                let (field, value) = (format!("entries[{i}].service"), e.service.to_string());
                return Err(invalid(path, field, value, "listed twice"));
            }
            let mut entry = Entry::default();
            if let Some(a) = e.ipv4 {
                entry.v4 = claim(&mut alloc.v4, IpAddr::V4(a), path, i)?.map(|_| a);
                dropped |= entry.v4.is_none();
            }
            if let Some(a) = e.ipv6 {
                entry.v6 = match alloc.v6.as_mut() {
                    Some(pool) => claim(pool, IpAddr::V6(a), path, i)?.map(|_| a),
                    None => None,
                };
                dropped |= entry.v6.is_none();
            }
            if entry.v4.is_none() && entry.v6.is_none() {
                continue;
            }
            if let Some(seq) = e.released {
                released.push((seq, e.service.clone()));
                entry.released = Some(seq);
            }
            alloc.entries.insert(e.service, entry);
        }
        // Keep the saved release order, numbered afresh.
        released.sort();
        for (seq, (_, name)) in (0u64..).zip(released) {
            if let Some(e) = alloc.entries.get_mut(&name) {
                e.released = Some(seq);
            }
            alloc.released.insert(seq, name);
            alloc.next_release = seq + 1;
        }
        alloc.dirty = dropped;
        Ok(alloc)
    }

    /// Writes the map to `path` atomically and marks it clean.
    pub fn save(&mut self, path: &Path) -> Result<(), Error> {
        let file = VipFile {
            format: FORMAT,
            entries: self
                .entries
                .iter()
                .map(|(name, e)| FileEntry {
                    service: name.clone(),
                    ipv4: e.v4,
                    ipv6: e.v6,
                    released: e.released,
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|source| Error::VipFileFormat {
            path: path.to_path_buf(),
            source,
        })?;
        json.push(b'\n');
        write_atomically(path, &json).map_err(io_error(path))?;
        self.dirty = false;
        Ok(())
    }
}

/// Marks `addr` used in `pool`: `None` if it lies outside the range.
fn claim(pool: &mut Pool, addr: IpAddr, path: &Path, i: usize) -> Result<Option<()>, Error> {
    let Some(off) = pool.offset(addr) else {
        return Ok(None);
    };
    if !pool.used.insert(off) {
        let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        let field = format!("entries[{i}].{family}");
        return Err(invalid(
            path,
            field,
            addr.to_string(),
            "held by two services",
        ));
    }
    Ok(Some(()))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "vips".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // The rename is durable only once the directory is synced.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}
