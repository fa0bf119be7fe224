//! An image loaded for restores: its pages in memory, every chunk checked, a layer's parent
//! chain loaded and flattened (see [`super::format`] for the layout).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::*;
use super::{Meta, PAGE};
use crate::sys::{self, Mapping};

/// An image whose pages are in memory and verified: restore many instances from it.
///
/// A layer is held flattened: `meta` has the runs, count and chunk hashes of a whole image
/// over the pages its runs name (in run order), `meta.parent` still names the parent.
pub struct LoadedImage {
    pub dir: PathBuf,
    pub meta: Meta,
    pages: Mapping,
    loaded: bool,
    /// The pages in a sealed memfd, made on first use by a mapped restore.
    memfd: std::sync::OnceLock<Result<std::os::fd::OwnedFd, String>>,
    /// BLAKE3 of the image's metadata file body (what a layer over it records).
    meta_hash: [u8; 32],
    /// For a flattened layer: the index, in the image's own index space (own pages, then the
    /// parent's), of each page held. `None`: a whole image, page `i` is index `i`.
    space: Option<Vec<u64>>,
    /// Size of the image's index space (own stored pages plus its parent's space).
    space_len: u64,
    /// Layers below this one (0: a whole image).
    depth: u32,
}

impl LoadedImage {
    /// The metadata alone (checked), for a restore whose pages come from a page source.
    /// A layer is loaded whole (its parent chain with it): its pages are served from memory.
    pub fn open(dir: &Path) -> Result<LoadedImage, ImageError> {
        let (meta, meta_hash) = read_meta_hashed(dir)?;
        if meta.parent.is_some() {
            return LoadedImage::load(dir);
        }
        Ok(LoadedImage {
            dir: dir.to_path_buf(),
            space_len: meta.pages.count,
            meta,
            pages: Mapping::anonymous(0).map_err(io_at(dir))?,
            loaded: false,
            memfd: std::sync::OnceLock::new(),
            meta_hash,
            space: None,
            depth: 0,
        })
    }

    /// Whether the pages are in memory (`load`), or only the metadata (`open`).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Reads `dir`, checks every chunk hash, and keeps the pages read-only in memory. A
    /// layer's parent is found by the path it recorded (relative to `dir` if relative) and
    /// loaded the same way, recursively.
    pub fn load(dir: &Path) -> Result<LoadedImage, ImageError> {
        Self::load_at(dir, None, 0)
    }

    /// [`LoadedImage::load`] of a layer whose parent the caller already holds (it is checked
    /// to be the layer's parent: id, metadata hash, size). For a whole image, `parent` is
    /// ignored.
    pub fn load_with_parent(dir: &Path, parent: &LoadedImage) -> Result<LoadedImage, ImageError> {
        Self::load_at(dir, Some(parent), 0)
    }

    fn load_at(
        dir: &Path,
        given: Option<&LoadedImage>,
        depth: u32,
    ) -> Result<LoadedImage, ImageError> {
        let (meta, meta_hash) = read_meta_hashed(dir)?;
        let own = Self::read_pages(dir, &meta)?;
        let Some(pref) = meta.parent.clone() else {
            return Ok(LoadedImage {
                dir: dir.to_path_buf(),
                space_len: meta.pages.count,
                meta,
                pages: own,
                loaded: true,
                memfd: std::sync::OnceLock::new(),
                meta_hash,
                space: None,
                depth: 0,
            });
        };
        let perr = |why: String| ImageError::Parent {
            path: dir.to_path_buf(),
            parent: pref.path.clone(),
            why,
        };
        if depth >= MAX_DEPTH {
            return Err(perr(format!(
                "more than {MAX_DEPTH} layers over one image; dump the process whole"
            )));
        }
        let loaded;
        let parent = match given {
            Some(p) => p,
            None => {
                let at = dir.join(&pref.path);
                loaded = Self::load_at(&at, None, depth + 1).map_err(|e| {
                    perr(format!(
                        "the parent cannot be loaded ({}); put the parent image back at {} (or load the layer with LoadedImage::load_with_parent)",
                        crate::error_chain(&e),
                        at.display()
                    ))
                })?;
                &loaded
            }
        };
        check_parent(dir, &pref, parent)?;
        let path = dir.join(PAGES_FILE);
        let flat = flatten(&meta, own.as_slice(), parent).map_err(|why| corrupt(&path, why))?;
        let Flat {
            meta: flat_meta,
            mut pages,
            space,
        } = flat;
        pages.seal_read_only().map_err(io_at(&path))?;
        Ok(LoadedImage {
            dir: dir.to_path_buf(),
            space_len: meta.pages.count + pref.space,
            meta: flat_meta,
            pages,
            loaded: true,
            memfd: std::sync::OnceLock::new(),
            meta_hash,
            space: Some(space),
            depth: parent.depth + 1,
        })
    }

    /// A layer's metadata over its loaded `parent`, flattened as [`LoadedImage::load_with_parent`]
    /// flattens it (the same checks of the parent and of every run), without the layer's own
    /// pages: for a lazy restore whose pages come from a [`crate::lazy::LayerSource`] (the
    /// layer's own from wherever they are, each chunk checked against the layer's hashes;
    /// the parent's from `parent`'s memory).
    pub fn open_layer(
        dir: &Path,
        parent: &LoadedImage,
    ) -> Result<(LoadedImage, LayerPages), ImageError> {
        let (meta, meta_hash) = read_meta_hashed(dir)?;
        let Some(pref) = meta.parent.clone() else {
            return Err(ImageError::Foreign {
                path: dir.join(META_FILE),
                why: "it is a whole image, not a layer".into(),
            });
        };
        check_parent(dir, &pref, parent)?;
        if !parent.is_loaded() {
            return Err(ImageError::Parent {
                path: dir.to_path_buf(),
                parent: pref.path.clone(),
                why: "the parent was opened without its pages; load it".into(),
            });
        }
        let plan = flat_plan(&meta, parent).map_err(|why| corrupt(&dir.join(META_FILE), why))?;
        let mut flat = meta.clone();
        flat.pages.runs = plan.runs;
        flat.pages.count = plan.space.len() as u64;
        flat.pages.chunks = Vec::new();
        let img = LoadedImage {
            dir: dir.to_path_buf(),
            space_len: meta.pages.count + pref.space,
            meta: flat,
            pages: Mapping::anonymous(0).map_err(io_at(dir))?,
            loaded: false,
            memfd: std::sync::OnceLock::new(),
            meta_hash,
            space: Some(plan.space),
            depth: parent.depth + 1,
        };
        Ok((
            img,
            LayerPages {
                own: meta,
                src: plan.src,
            },
        ))
    }

    /// The held pages (`page_data` order) of indices `space` of the image's index space
    /// (a working set as [`super::format::write_working_set`] records it), in the same
    /// order; indices the image does not hold are left out.
    pub fn flat_indices(&self, space: &[u64]) -> Vec<u64> {
        match &self.space {
            None => space
                .iter()
                .copied()
                .filter(|&i| i < self.meta.pages.count)
                .collect(),
            Some(s) => {
                let at: std::collections::HashMap<u64, u64> =
                    s.iter().enumerate().map(|(i, &x)| (x, i as u64)).collect();
                space.iter().filter_map(|x| at.get(x).copied()).collect()
            }
        }
    }

    /// The page file's stored pages, every chunk checked, sealed read-only.
    fn read_pages(dir: &Path, meta: &Meta) -> Result<Mapping, ImageError> {
        let (f, path) = open_pages(dir, meta)?;
        let len = (meta.pages.count * PAGE) as usize;
        let mut pages = Mapping::anonymous(len).map_err(io_at(&path))?;
        f.read_exact_at(pages.as_mut_slice(), PAGE)
            .map_err(io_at(&path))?;
        for (i, chunk) in pages
            .as_slice()
            .chunks((CHUNK_PAGES * PAGE) as usize)
            .enumerate()
        {
            if !chunk_ok(meta, i as u64, chunk) {
                return Err(corrupt(&path, chunk_failed(i as u64)));
            }
        }
        pages.seal_read_only().map_err(io_at(&path))?;
        Ok(pages)
    }

    /// BLAKE3 of the image's metadata, as a layer over it records it.
    pub fn meta_hash(&self) -> [u8; 32] {
        self.meta_hash
    }

    /// Size of the image's page index space: its stored pages and its parent's space.
    pub fn space_len(&self) -> u64 {
        self.space_len
    }

    /// Layers below this image (0 for a whole image).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The index in the image's own index space of held page `i` (`page_data` order).
    pub fn space_index(&self, i: u64) -> u64 {
        match &self.space {
            None => i,
            Some(s) => s.get(i as usize).copied().unwrap_or(u64::MAX),
        }
    }

    /// The held page at address `addr` (page-aligned), if the image has one there: its index
    /// in `page_data` order.
    pub fn page_at(&self, addr: u64) -> Option<u64> {
        let runs = &self.meta.pages.runs;
        let k = runs.partition_point(|r| r.addr + u64::from(r.pages) * PAGE <= addr);
        let r = runs.get(k)?;
        (r.addr <= addr).then(|| r.first + (addr - r.addr) / PAGE)
    }

    /// The stored pages, in page-file order.
    pub fn page_data(&self) -> &[u8] {
        self.pages.as_slice()
    }

    /// The verified pages of the VMAs a mapped restore shares ([`super::Vma::shares_pages`]) in a
    /// memfd sealed against any change, made once: what a mapped restore maps copy-on-write
    /// into every instance. Each page sits at the offset equal to its address, in a sparse
    /// file as large as user space: a mapping grown in place by `mremap` then reaches a
    /// hole of the memfd (a missing-page fault the page server answers with zeros), never
    /// the end of the file (SIGBUS) or another area's pages.
    pub fn memfd(&self) -> Result<std::os::fd::BorrowedFd<'_>, ImageError> {
        use std::os::fd::AsFd;
        let made = self.memfd.get_or_init(|| {
            let name = format!("ember-image-{}", super::files::hexs(&self.meta.id));
            let fd = sys::memfd_exec(&name).map_err(|e| e.to_string())?;
            let f = File::from(fd.try_clone().map_err(|e| e.to_string())?);
            f.set_len(USER_END).map_err(|e| e.to_string())?;
            let data = self.page_data();
            for r in self.meta.pages.runs.iter().filter(|r| {
                self.meta
                    .vmas
                    .iter()
                    .any(|v| v.start <= r.addr && r.addr < v.end && v.shares_pages())
            }) {
                let a = (r.first * PAGE) as usize;
                let b = a + r.pages as usize * PAGE as usize;
                let pages = data.get(a..b).ok_or("a page run outside the page file")?;
                f.write_all_at(pages, r.addr).map_err(|e| e.to_string())?;
            }
            sys::seal(&fd).map_err(|e| e.to_string())?;
            Ok(fd)
        });
        match made {
            Ok(fd) => Ok(fd.as_fd()),
            Err(e) => Err(ImageError::Io {
                path: self.dir.join(PAGES_FILE),
                source: io::Error::other(format!("making the memfd: {e}")),
            }),
        }
    }
}

/// The layer's own part of a layer opened with [`LoadedImage::open_layer`]: its own
/// metadata (the hashes its own pages are checked against) and where each held page comes
/// from.
pub struct LayerPages {
    /// The layer's metadata as stored (its own page runs and chunk hashes).
    pub own: Meta,
    /// Per held page (`page_data` order): the layer's own page `x` when `x < own.pages.count`,
    /// else `own.pages.count + i` for the parent's held page `i`.
    pub src: Vec<u64>,
}

/// A layer's parent checked against what the layer recorded of it (`pref`).
fn check_parent(
    dir: &Path,
    pref: &super::ParentRef,
    parent: &LoadedImage,
) -> Result<(), ImageError> {
    let perr = |why: String| ImageError::Parent {
        path: dir.to_path_buf(),
        parent: pref.path.clone(),
        why,
    };
    if parent.meta.id != pref.id {
        return Err(perr(format!(
            "{} is another image (id {}, the layer's parent is {})",
            parent.dir.display(),
            super::files::hexs(&parent.meta.id),
            super::files::hexs(&pref.id)
        )));
    }
    if parent.meta_hash != pref.meta_hash || parent.space_len != pref.space {
        return Err(perr(format!(
            "{} has changed since the layer was taken (its metadata differs); the layer cannot be used",
            parent.dir.display()
        )));
    }
    if parent.depth + 1 > MAX_DEPTH {
        return Err(perr(format!(
            "more than {MAX_DEPTH} layers over one image; dump the process whole"
        )));
    }
    Ok(())
}

struct Flat {
    meta: Meta,
    pages: Mapping,
    space: Vec<u64>,
}

/// Where each page of a flattened layer comes from, in run order.
struct FlatPlan {
    runs: Vec<super::PageRun>,
    /// Per held page: its index in the layer's index space.
    space: Vec<u64>,
    /// Per held page: the layer's own page `x` (`x < count`), or `count + i` for the
    /// parent's held page `i`.
    src: Vec<u64>,
}

/// The runs of a layer (`meta`) over its loaded `parent`, as a whole image's: the pages its
/// runs name, in run order. An index into the parent's space must be one of the pages the
/// parent holds (a dump only ever refers to those).
fn flat_plan(meta: &Meta, parent: &LoadedImage) -> Result<FlatPlan, String> {
    let count = meta.pages.count;
    let total: u64 = meta.pages.runs.iter().map(|r| u64::from(r.pages)).sum();
    if total > MAX_PAGES {
        return Err(format!("{total} pages named, over the {MAX_PAGES} limit"));
    }
    // Each index of the layer's space (own pages, then the parent's) named once at most (a
    // dump names each once): the pages held are at most its own and its parent's, never a
    // few runs' worth of metadata copied to gigabytes.
    let mut named = vec![0u64; (count + parent.space_len).div_ceil(64) as usize];
    for r in &meta.pages.runs {
        for x in r.first..r.first.saturating_add(u64::from(r.pages)) {
            let (word, bit) = ((x / 64) as usize, 1 << (x % 64));
            let w = named
                .get_mut(word)
                .ok_or_else(|| format!("page {x} is outside the index space"))?;
            if *w & bit != 0 {
                return Err(format!("page {x} is named by two runs"));
            }
            *w |= bit;
        }
    }
    // Parent space index -> held page.
    let by_space: Option<std::collections::HashMap<u64, u64>> = parent
        .space
        .as_ref()
        .map(|s| s.iter().enumerate().map(|(i, &x)| (x, i as u64)).collect());
    let held = |y: u64| -> Option<u64> {
        match &by_space {
            None => (y < parent.meta.pages.count).then_some(y),
            Some(m) => m.get(&y).copied(),
        }
    };
    let mut plan = FlatPlan {
        runs: Vec::with_capacity(meta.pages.runs.len()),
        space: Vec::with_capacity(total as usize),
        src: Vec::with_capacity(total as usize),
    };
    for r in &meta.pages.runs {
        plan.runs.push(super::PageRun {
            first: plan.space.len() as u64,
            ..*r
        });
        for k in 0..u64::from(r.pages) {
            let x = r.first + k;
            let src = if x < count {
                x
            } else {
                let i = held(x - count).ok_or_else(|| {
                    format!(
                        "page {x} (the parent's {}) is not one of the parent's pages",
                        x - count
                    )
                })?;
                count + i
            };
            plan.space.push(x);
            plan.src.push(src);
        }
    }
    Ok(plan)
}

/// A layer (`meta`, its own checked pages `own`) over its loaded `parent`, as a whole image.
fn flatten(meta: &Meta, own: &[u8], parent: &LoadedImage) -> Result<Flat, String> {
    let count = meta.pages.count;
    let plan = flat_plan(meta, parent)?;
    let total = plan.space.len() as u64;
    let mut pages =
        Mapping::anonymous((total * PAGE) as usize).map_err(|e| format!("allocating: {e}"))?;
    let out = pages.as_mut_slice();
    let pdata = parent.page_data();
    for (n, &x) in plan.src.iter().enumerate() {
        let src = if x < count {
            own.get((x * PAGE) as usize..((x + 1) * PAGE) as usize)
        } else {
            pdata.get(((x - count) * PAGE) as usize..((x - count + 1) * PAGE) as usize)
        };
        let src = src.ok_or_else(|| format!("page {} is outside the page data", plan.space[n]))?;
        let at = n * PAGE as usize;
        out[at..at + PAGE as usize].copy_from_slice(src);
    }
    let mut flat = meta.clone();
    flat.pages.runs = plan.runs;
    flat.pages.count = total;
    flat.pages.chunks = out
        .chunks((CHUNK_PAGES * PAGE) as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();
    Ok(Flat {
        meta: flat,
        pages,
        space: plan.space,
    })
}
