//! A bundle: several small files of a set in one file, so that a node fetches them in one
//! request. A lazy restore's first phase needs a function snapshot's metadata, working set
//! and working-set pack (docs/store.md): stored as their own files they are several objects,
//! and a store serves each small object with its own latency (Garage 2.5 on loopback holds
//! every object between ~3 and ~64 KiB back ~44 ms: its S3 server does not set
//! TCP_NODELAY, and the client's delayed ACK meets its Nagle; measured, docs/store.md).
//!
//! ```text
//! 0   "EMBRBNDL"
//! 8   version            u32 le (1)
//! 12  entry count n      u32 le (<= 16)
//! 16  n x ( name length u8 | name | size u64 le | BLAKE3 of the bytes [32] )
//! ... the entries' bytes, in that order
//! ```
//!
//! Reading checks the magic, the version, the caps (16 entries, names as the store allows,
//! 256 MiB in all), the exact size, and every entry's hash; entries are written into a
//! directory under their names, each to a temporary name and renamed.

use std::io::Read;
use std::path::Path;

const MAGIC: [u8; 8] = *b"EMBRBNDL";
/// A function snapshot's bundle of what a lazy restore needs first: its `meta`,
/// `workingset` and `wspages` (node/working_set.rs writes it, node/fetch.rs reads it).
pub const LAZY_START: &str = "lazystart";
const VERSION: u32 = 1;
const MAX_ENTRIES: usize = 16;
const MAX_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bundle {path} is not usable: {why}")]
    Invalid { path: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the files `names` of `dir` as the bundle `dir/<bundle>` (to a temporary name,
/// then renamed).
pub fn write(dir: &Path, bundle: &str, names: &[&str]) -> Result<(), BundleError> {
    let path = dir.join(bundle);
    let invalid = |why: String| BundleError::Invalid {
        path: path.display().to_string(),
        why,
    };
    if names.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{} entries, at most {MAX_ENTRIES}",
            names.len()
        )));
    }
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(names.len() as u32).to_le_bytes());
    let mut body = Vec::new();
    for name in names {
        // At most 128 bytes: its length fits the byte that holds it.
        if !ember_store::manifest::valid_name(name) {
            return Err(invalid(format!("{name:?} is not a plain file name")));
        }
        let p = dir.join(name);
        let data = std::fs::read(&p).map_err(io(&p))?;
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&(data.len() as u64).to_le_bytes());
        head.extend_from_slice(blake3::hash(&data).as_bytes());
        body.extend_from_slice(&data);
    }
    if (head.len() + body.len()) as u64 > MAX_BYTES {
        return Err(invalid(format!("over {MAX_BYTES} bytes")));
    }
    head.extend_from_slice(&body);
    crate::sys::write_atomic(&path, &head).map_err(io(&path))
}

/// Checks the bundle at `path` and writes its entries into `dir`; their names. Only the
/// names in `allowed` may be entries, each once, and those in `required` must be.
pub fn unpack(
    path: &Path,
    dir: &Path,
    allowed: &[&str],
    required: &[&str],
) -> Result<Vec<String>, BundleError> {
    let invalid = |why: &str| BundleError::Invalid {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut raw = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io(path))?;
    if raw.len() as u64 > MAX_BYTES {
        return Err(invalid("over the size cap"));
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], BundleError> {
        let s = at
            .checked_add(n)
            .and_then(|end| raw.get(at..end))
            .ok_or_else(|| {
                invalid(&format!(
                    "it ends at byte {}, before its last entry",
                    raw.len()
                ))
            })?;
        at += n;
        Ok(s)
    };
    if take(8)? != MAGIC {
        return Err(invalid("bad magic"));
    }
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    let version = word(take(4)?);
    if version != VERSION {
        return Err(invalid(&format!(
            "version {version}; this node reads version {VERSION}"
        )));
    }
    let n = word(take(4)?) as usize;
    if n > MAX_ENTRIES {
        return Err(invalid("too many entries"));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let len = take(1)?[0] as usize;
        let name = std::str::from_utf8(take(len)?)
            .map_err(|_| invalid("a name is not UTF-8"))?
            .to_string();
        if !ember_store::manifest::valid_name(&name) || !allowed.contains(&name.as_str()) {
            return Err(invalid(&format!("an entry named {name:?} does not belong")));
        }
        if entries.iter().any(|(n, _, _)| *n == name) {
            return Err(invalid(&format!("two entries named {name}")));
        }
        let size = u64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
        let hash: [u8; 32] = take(32)?.try_into().unwrap_or_default();
        entries.push((name, size, hash));
    }
    let mut datas = Vec::with_capacity(n);
    for (name, size, hash) in &entries {
        let size = usize::try_from(*size).map_err(|_| invalid("an entry too large"))?;
        let data = take(size)?;
        if blake3::hash(data).as_bytes() != hash {
            return Err(invalid(&format!("entry {name} fails its hash check")));
        }
        datas.push(data);
    }
    if at != raw.len() {
        return Err(invalid("bytes after the last entry"));
    }
    if let Some(r) = required
        .iter()
        .find(|r| !entries.iter().any(|(n, _, _)| n == *r))
    {
        return Err(invalid(&format!("it has no {r}")));
    }
    for ((name, _, _), data) in entries.iter().zip(datas) {
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::write(&tmp, data).map_err(io(&tmp))?;
        let dst = dir.join(name);
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    }
    Ok(entries.into_iter().map(|(n, _, _)| n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_every_corruption_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("meta"), vec![7u8; 5000]).unwrap();
        std::fs::write(src.join("workingset"), b"ws").unwrap();
        write(&src, "lazystart", &["meta", "workingset"]).unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let all = ["meta", "workingset"];
        let names = unpack(&src.join("lazystart"), &out, &all, &["meta"]).unwrap();
        assert_eq!(names, ["meta", "workingset"]);
        assert_eq!(std::fs::read(out.join("meta")).unwrap(), vec![7u8; 5000]);
        assert_eq!(std::fs::read(out.join("workingset")).unwrap(), b"ws");
        let good = std::fs::read(src.join("lazystart")).unwrap();
        let bad = d.path().join("bad");
        let refused = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            let e = unpack(&bad, &out, &all, &["meta"]).unwrap_err().to_string();
            assert!(e.contains("not usable"), "{e}");
            e
        };
        // A flipped byte in the data, the header, a cut, a byte added, another magic.
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(refused(&b).contains("fails its hash check"));
        let mut b = good.clone();
        b[16] = 200;
        refused(&b);
        refused(&good[..good.len() - 1]);
        let mut b = good.clone();
        b.push(0);
        assert!(refused(&b).contains("after the last entry"));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(refused(&b).contains("magic"));
        // A hostile name.
        let mut b = good.clone();
        b[17..21].copy_from_slice(b"../m");
        refused(&b);
        assert!(write(&src, "x", &["../meta"]).is_err());
        // Names it may not hold, and one it must.
        let path = src.join("lazystart");
        let e = unpack(&path, &out, &["meta"], &[]).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let e = unpack(&path, &out, &all, &["pages"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("it has no pages"), "{e}");
        // A size near the end of the address space: refused, not an overflow.
        let mut b = good.clone();
        b[21..29].copy_from_slice(&u64::MAX.to_le_bytes());
        refused(&b);
    }
}
