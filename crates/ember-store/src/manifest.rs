//! A manifest: the files of one set (an image, a layer) and the chunks of each, in order.
//!
//! ```text
//! 0   "EMBRMNFT"
//! 8   format version   u32 le (1)
//! 12  flags (0)        u32 le
//! 16  body length      u64 le (<= MAX_BODY)
//! 24  BLAKE3(body)     [32]
//! 56  body (postcard: Manifest)
//! ```
//!
//! Every file is cut at the same offsets: a first chunk of `head` bytes (a file's header: an
//! image's page file has 4 KiB before its pages), then `chunk_size` bytes each. So a page at
//! one position in two files of one layout lands in the same chunk: an image uploaded twice,
//! or the runs of pages two functions' layers share at the same positions, are stored once.

use serde::{Deserialize, Serialize};

use crate::chunk::{Hash, MAX_CHUNK};

pub const MAGIC: [u8; 8] = *b"EMBRMNFT";
pub const VERSION: u32 = 1;
pub const HEADER: usize = 56;
/// Largest manifest body: 16 MiB holds ~500,000 chunk names.
pub const MAX_BODY: u64 = 16 << 20;
/// Most files in one set.
pub const MAX_FILES: usize = 64;
/// Largest file (64 GiB, an image's largest page file and then some).
pub const MAX_FILE: u64 = 64 << 30;
/// Chunk sizes are multiples of this (a page), so chunks hold whole pages.
pub const CHUNK_ALIGN: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {name} is not usable: {why}")]
    Invalid { name: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the set is: `image`, `snapshot`, ...
    pub kind: String,
    /// Its id within the kind (an image's id, a snapshot's).
    pub id: String,
    /// Unix seconds when it was uploaded.
    pub created: u64,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// A plain file name (no `/`), as in the set's directory.
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Bytes of the first chunk (0: none; every chunk is `chunk_size`).
    pub head: u32,
    /// [`FileEntry::chunk_count`] chunks, in file order.
    pub chunks: Vec<Hash>,
}

impl FileEntry {
    /// How many chunks a file of `size` bytes is cut into: a first chunk of `head` bytes
    /// (0: none), then `chunk_size` bytes each, the last shorter.
    pub fn chunk_count(size: u64, head: u32, chunk_size: u32) -> u64 {
        let (head, cs) = (u64::from(head), u64::from(chunk_size.max(1)));
        match (head, size) {
            (0, _) => size.div_ceil(cs),
            (_, 0) => 0,
            (h, s) if s <= h => 1,
            (h, s) => 1 + (s - h).div_ceil(cs),
        }
    }

    /// Chunk `i`'s bytes in the file: (offset, length).
    pub fn chunk_range(&self, i: u64) -> (u64, u64) {
        let (head, cs) = (u64::from(self.head), u64::from(self.chunk_size));
        let (start, end) = match (head, i) {
            (0, i) => (i * cs, (i + 1) * cs),
            (h, 0) => (0, h),
            (h, i) => (h + (i - 1) * cs, h + i * cs),
        };
        let start = start.min(self.size);
        (start, end.min(self.size) - start)
    }

    /// The chunk holding byte `offset`.
    fn chunk_of(&self, offset: u64) -> u64 {
        let (head, cs) = (u64::from(self.head), u64::from(self.chunk_size));
        match head {
            0 => offset / cs,
            h if offset < h => 0,
            h => 1 + (offset - h) / cs,
        }
    }

    /// The chunks covering bytes `[offset, offset + len)`: (index of the first, count).
    pub fn chunks_for(&self, offset: u64, len: u64) -> (usize, usize) {
        if len == 0 || offset >= self.size {
            return (0, 0);
        }
        let end = (offset + len).min(self.size);
        let first = self.chunk_of(offset);
        let last = self.chunk_of(end - 1);
        (first as usize, (last - first + 1) as usize)
    }
}

/// A name that can be a kind, an id or a file name: letters, digits and `._-`, 1 to 128
/// bytes, not starting with a dot.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.check()?;
        let body = postcard::to_stdvec(self).map_err(|e| self.invalid(format!("encoding: {e}")))?;
        if body.len() as u64 > MAX_BODY {
            return Err(self.invalid(format!("{} bytes, more than {MAX_BODY}", body.len())));
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The manifest in `object` (named `name` for messages), every field checked.
    pub fn decode(name: &str, object: &[u8]) -> Result<Manifest, ManifestError> {
        let bad = |why: String| ManifestError::Invalid {
            name: name.to_string(),
            why,
        };
        if object.len() < HEADER || object[..8] != MAGIC {
            return Err(bad("not an Ember manifest (magic)".into()));
        }
        let version = u32::from_le_bytes([object[8], object[9], object[10], object[11]]);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&object[16..24]);
        let len = u64::from_le_bytes(len);
        if len > MAX_BODY || len != (object.len() - HEADER) as u64 {
            return Err(bad(format!(
                "claims a body of {len} bytes, holds {} (at most {MAX_BODY})",
                object.len() - HEADER
            )));
        }
        let body = &object[HEADER..];
        if blake3::hash(body).as_bytes()[..] != object[24..56] {
            return Err(bad("its body does not match its hash".into()));
        }
        let m: Manifest = postcard::from_bytes(body).map_err(|e| bad(format!("decoding: {e}")))?;
        m.check().map_err(|e| match e {
            ManifestError::Invalid { why, .. } => bad(why),
        })?;
        Ok(m)
    }

    fn invalid(&self, why: String) -> ManifestError {
        ManifestError::Invalid {
            name: format!("{}/{}", self.kind, self.id),
            why,
        }
    }

    /// Consistency: names, counts, sizes within the caps, chunk counts matching sizes.
    fn check(&self) -> Result<(), ManifestError> {
        if !valid_name(&self.kind) || !valid_name(&self.id) {
            return Err(self.invalid(format!(
                "kind {:?} or id {:?} is not a plain name",
                self.kind, self.id
            )));
        }
        if self.files.len() > MAX_FILES {
            return Err(self.invalid(format!("{} files, more than {MAX_FILES}", self.files.len())));
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.files {
            if !valid_name(&f.name) || !names.insert(f.name.as_str()) {
                return Err(self.invalid(format!(
                    "file name {:?} is not a plain, unique name",
                    f.name
                )));
            }
            if f.size > MAX_FILE {
                return Err(self.invalid(format!(
                    "file {} is {} bytes, more than {MAX_FILE}",
                    f.name, f.size
                )));
            }
            if f.chunk_size == 0
                || f.chunk_size > MAX_CHUNK
                || !f.chunk_size.is_multiple_of(CHUNK_ALIGN)
            {
                return Err(self.invalid(format!(
                    "file {} has chunks of {} bytes",
                    f.name, f.chunk_size
                )));
            }
            if f.head > MAX_CHUNK {
                return Err(self.invalid(format!("file {} has a head of {} bytes", f.name, f.head)));
            }
            let want = FileEntry::chunk_count(f.size, f.head, f.chunk_size);
            if f.chunks.len() as u64 != want {
                return Err(self.invalid(format!(
                    "file {} of {} bytes lists {} chunks, not {want}",
                    f.name,
                    f.size,
                    f.chunks.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            kind: "image".into(),
            id: "img-1".into(),
            created: 1,
            files: vec![FileEntry {
                name: "pages".into(),
                size: 300 << 10,
                chunk_size: 256 << 10,
                head: 0,
                chunks: vec![Hash::of(b"a"), Hash::of(b"b")],
            }],
        }
    }

    #[test]
    fn manifests_round_trip_and_chunks_cover_ranges() {
        let m = sample();
        let obj = m.encode().unwrap();
        assert_eq!(Manifest::decode("x", &obj).unwrap(), m);
        let f = &m.files[0];
        assert_eq!(f.chunks_for(0, 1), (0, 1));
        assert_eq!(f.chunks_for((256 << 10) - 1, 2), (0, 2));
        assert_eq!(f.chunks_for(256 << 10, 1 << 20), (1, 1));
        assert_eq!(f.chunks_for(400 << 10, 1), (0, 0));
        // A 4 KiB head, then 16 KiB chunks: a page file's pages align with the chunks.
        let paged = FileEntry {
            name: "pages".into(),
            size: 4096 + 5 * 4096,
            chunk_size: 16384,
            head: 4096,
            chunks: vec![Hash::of(b"h"), Hash::of(b"a"), Hash::of(b"b")],
        };
        assert_eq!(FileEntry::chunk_count(paged.size, 4096, 16384), 3);
        assert_eq!(FileEntry::chunk_count(100, 4096, 16384), 1);
        assert_eq!(FileEntry::chunk_count(0, 4096, 16384), 0);
        assert_eq!(paged.chunk_range(0), (0, 4096));
        assert_eq!(paged.chunk_range(1), (4096, 16384));
        assert_eq!(paged.chunk_range(2), (20480, 4096));
        assert_eq!(paged.chunks_for(4096 + 4 * 4096, 4096), (2, 1));
        assert_eq!(paged.chunks_for(0, 4097), (0, 2));
    }

    #[test]
    fn hostile_manifests_are_refused_by_name() {
        let obj = sample().encode().unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![(obj[..20].to_vec(), "magic")];
        let mut m = obj.clone();
        m[8] = 2;
        cases.push((m, "version"));
        let mut m = obj.clone();
        m[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push((m, "claims a body"));
        let mut m = obj.clone();
        let last = m.len() - 1;
        m[last] ^= 1;
        cases.push((m, "hash"));
        for (object, says) in cases {
            let e = Manifest::decode("x", &object).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        let mut wrong_count = sample();
        wrong_count.files[0].chunks.pop();
        assert!(
            wrong_count
                .encode()
                .unwrap_err()
                .to_string()
                .contains("lists 1 chunks")
        );
        let mut escape = sample();
        escape.files[0].name = "../meta".into();
        assert!(escape.encode().is_err());
        let mut odd = sample();
        odd.files[0].chunk_size = 1000;
        assert!(odd.encode().is_err());
        let mut dup = sample();
        dup.files.push(dup.files[0].clone());
        assert!(dup.encode().is_err());
        // A body that is valid postcard but inconsistent is refused at decode too.
        let mut m = sample();
        m.files[0].size = 10 << 20;
        let body = postcard::to_stdvec(&m).unwrap();
        let mut obj = Vec::new();
        obj.extend_from_slice(&MAGIC);
        obj.extend_from_slice(&VERSION.to_le_bytes());
        obj.extend_from_slice(&0u32.to_le_bytes());
        obj.extend_from_slice(&(body.len() as u64).to_le_bytes());
        obj.extend_from_slice(blake3::hash(&body).as_bytes());
        obj.extend_from_slice(&body);
        assert!(Manifest::decode("x", &obj).is_err());
    }
}
