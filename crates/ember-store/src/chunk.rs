//! One chunk object: up to [`MAX_CHUNK`] bytes of a file, named by the BLAKE3 hash of those
//! bytes, stored zstd-compressed (or as they are, when that is not smaller).
//!
//! ```text
//! 0   "EMBRCHNK"
//! 8   format version   u32 le (1)
//! 12  codec            u32 le (0: stored as is, 1: one zstd frame)
//! 16  raw length       u32 le (<= MAX_CHUNK)
//! 20  stored length    u32 le (= object length - 56)
//! 24  BLAKE3(raw)      [32]   (= the name)
//! 56  data
//! ```
//!
//! [`decode`] checks all of it against the name asked for before a byte is returned; the
//! decompression is bounded by the raw length, so a hostile object cannot make it allocate
//! more.

use bytes::Bytes;

pub const MAGIC: [u8; 8] = *b"EMBRCHNK";
pub const VERSION: u32 = 1;
pub const HEADER: usize = 56;
/// Largest chunk (of raw bytes).
pub const MAX_CHUNK: u32 = 4 << 20;
const CODEC_RAW: u32 = 0;
const CODEC_ZSTD: u32 = 1;
/// zstd level: fast to compress (uploads run in the background, but on the node's cores).
const LEVEL: i32 = 3;

/// A BLAKE3 hash: a chunk's name.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// From 64 hex digits (a listed object's name).
    pub fn from_hex(s: &str) -> Option<Hash> {
        blake3::Hash::from_hex(s).ok().map(|h| Hash(*h.as_bytes()))
    }

    /// Where the chunk is kept: `chunks/<first two hex digits>/<hex>`.
    pub fn key(&self) -> crate::Key {
        let hex = self.hex();
        // Hex digits and slashes only: always a valid key.
        crate::Key::new(format!("{CHUNKS}{}/{hex}", &hex[..2])).unwrap_or_else(|_| unreachable!())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.hex()[..16])
    }
}

/// The prefix of every chunk's key.
pub const CHUNKS: &str = "chunks/";

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {hash:?} is corrupt ({why}); it is not used")]
    Corrupt { hash: Hash, why: String },
    #[error("a chunk of {len} bytes is larger than the {MAX_CHUNK} bytes allowed")]
    TooLarge { len: usize },
}

/// The object for `raw`, and its name.
pub fn encode(raw: &[u8]) -> Result<(Hash, Bytes), ChunkError> {
    if raw.len() > MAX_CHUNK as usize {
        return Err(ChunkError::TooLarge { len: raw.len() });
    }
    let hash = Hash::of(raw);
    let packed = zstd::bulk::compress(raw, LEVEL).ok();
    let (codec, data): (u32, &[u8]) = match &packed {
        Some(z) if z.len() < raw.len() => (CODEC_ZSTD, z),
        _ => (CODEC_RAW, raw),
    };
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&codec.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(data);
    Ok((hash, Bytes::from(out)))
}

/// The raw bytes of chunk `want` from its object, every field and the hash checked.
pub fn decode(want: Hash, object: &[u8]) -> Result<Bytes, ChunkError> {
    let bad = |why: String| ChunkError::Corrupt { hash: want, why };
    if object.len() < HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than its header",
            object.len()
        )));
    }
    if object[..8] != MAGIC {
        return Err(bad("not an Ember chunk (magic)".into()));
    }
    let word = |at: usize| {
        u32::from_le_bytes([object[at], object[at + 1], object[at + 2], object[at + 3]])
    };
    let (version, codec, raw_len, stored_len) = (word(8), word(12), word(16), word(20));
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {VERSION}"
        )));
    }
    if raw_len > MAX_CHUNK {
        return Err(bad(format!(
            "claims {raw_len} bytes, more than {MAX_CHUNK}"
        )));
    }
    if stored_len as usize != object.len() - HEADER {
        return Err(bad(format!(
            "claims {stored_len} stored bytes, holds {}",
            object.len() - HEADER
        )));
    }
    if object[24..56] != want.0 {
        return Err(bad("its header names another chunk".into()));
    }
    let data = &object[HEADER..];
    let raw = match codec {
        CODEC_RAW if stored_len == raw_len => Bytes::copy_from_slice(data),
        CODEC_ZSTD => {
            let out = zstd::bulk::decompress(data, raw_len as usize)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            if out.len() != raw_len as usize {
                return Err(bad(format!(
                    "{} bytes after zstd, {raw_len} claimed",
                    out.len()
                )));
            }
            Bytes::from(out)
        }
        other => {
            return Err(bad(format!(
                "codec {other} with {stored_len} of {raw_len} bytes"
            )));
        }
    };
    if Hash::of(&raw) != want {
        return Err(bad("its bytes do not hash to its name".into()));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_compressed_or_not() {
        let zeros = vec![0u8; 256 << 10];
        let (h, obj) = encode(&zeros).unwrap();
        assert!(obj.len() < 1024, "zeros compress: {}", obj.len());
        assert_eq!(decode(h, &obj).unwrap(), zeros);
        let noise: Vec<u8> = (0..4096u32)
            .flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes().to_vec())
            .collect();
        let (h, obj) = encode(&noise).unwrap();
        assert_eq!(obj.len(), HEADER + noise.len(), "noise is stored as is");
        assert_eq!(decode(h, &obj).unwrap(), noise);
        assert!(encode(&vec![1u8; MAX_CHUNK as usize + 1]).is_err());
    }

    #[test]
    fn every_corruption_is_refused_by_name() {
        let raw = b"hello hello hello hello hello hello hello".repeat(100);
        let (h, obj) = encode(&raw).unwrap();
        let other = Hash::of(b"other");
        let mut cases: Vec<(Vec<u8>, Hash, &str)> = vec![
            (obj[..10].to_vec(), h, "shorter"),
            (obj.to_vec(), other, "another chunk"),
        ];
        let mut m = obj.to_vec();
        m[0] ^= 1;
        cases.push((m, h, "magic"));
        let mut m = obj.to_vec();
        m[8] = 9;
        cases.push((m, h, "version"));
        let mut m = obj.to_vec();
        m[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((m, h, "more than"));
        let mut m = obj.to_vec();
        m.push(0);
        cases.push((m, h, "stored bytes"));
        let mut m = obj.to_vec();
        let last = m.len() - 1;
        m[last] ^= 0xff;
        cases.push((m, h, ""));
        let mut m = obj.to_vec();
        m[12] = 7;
        cases.push((m, h, "codec"));
        for (object, want, says) in cases {
            let e = decode(want, &object).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
