//! The image pages a lazily restored process does not have yet, by where they are now.
//!
//! The process moves memory (`mremap`), frees it (`munmap`) and discards it
//! (`madvise(MADV_DONTNEED)`); the page server hears of each through userfaultfd events and
//! applies them here, so a moved page is still served from the image and a freed or
//! discarded one never reads back as image content. Pure bookkeeping, tested without root.

use std::collections::BTreeMap;

use crate::image::{PAGE, PageRun};

/// One contiguous piece: `pages` image pages from page-file index `first`, at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub first: u64,
    pub pages: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// addr -> (first page index, pages)
    runs: BTreeMap<u64, (u64, u64)>,
    count: u64,
}

impl Pending {
    pub fn from_runs<'a>(runs: impl IntoIterator<Item = &'a PageRun>) -> Pending {
        let mut p = Pending::default();
        for r in runs {
            p.insert(Piece {
                addr: r.addr,
                first: r.first,
                pages: u64::from(r.pages),
            });
        }
        p
    }

    /// Puts back a piece taken with [`Pending::cut`] (its copy must be retried).
    pub fn restore(&mut self, piece: Piece) {
        self.insert(piece);
    }

    fn insert(&mut self, piece: Piece) {
        if piece.pages > 0 {
            self.runs.insert(piece.addr, (piece.first, piece.pages));
            self.count += piece.pages;
        }
    }

    /// Every pending piece, in address order.
    pub fn pieces(&self) -> Vec<Piece> {
        self.runs
            .iter()
            .map(|(&addr, &(first, pages))| Piece { addr, first, pages })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the image page now at `addr` is still pending (a mapped restore: the image's
    /// page is still the right content there).
    pub fn holds(&self, addr: u64) -> bool {
        self.runs
            .range(..=addr)
            .next_back()
            .is_some_and(|(&a, &(_, n))| addr < a + n * PAGE)
    }

    /// Where the first pending piece at or after `addr` starts.
    pub fn next_start(&self, addr: u64) -> Option<u64> {
        self.runs.range(addr..).next().map(|(&a, _)| a)
    }

    /// Removes and returns what is pending in `[start, end)`, cutting pieces at the edges.
    pub fn cut(&mut self, start: u64, end: u64) -> Vec<Piece> {
        let mut hit: Vec<Piece> = Vec::new();
        // The piece starting before `start` may reach into the range.
        let before = self
            .runs
            .range(..start)
            .next_back()
            .map(|(&a, &(f, n))| (a, f, n));
        let mut keys: Vec<u64> = self.runs.range(start..end).map(|(&a, _)| a).collect();
        if let Some((a, _, n)) = before
            && a + n * PAGE > start
        {
            keys.insert(0, a);
        }
        for a in keys {
            let Some((f, n)) = self.runs.remove(&a) else {
                continue;
            };
            self.count -= n;
            let piece_end = a + n * PAGE;
            let lo = a.max(start);
            let hi = piece_end.min(end);
            if lo > a {
                self.insert(Piece {
                    addr: a,
                    first: f,
                    pages: (lo - a) / PAGE,
                });
            }
            if piece_end > hi {
                self.insert(Piece {
                    addr: hi,
                    first: f + (hi - a) / PAGE,
                    pages: (piece_end - hi) / PAGE,
                });
            }
            if hi > lo {
                hit.push(Piece {
                    addr: lo,
                    first: f + (lo - a) / PAGE,
                    pages: (hi - lo) / PAGE,
                });
            }
        }
        hit
    }

    /// `mremap` moved `[from, from+len)` to `to`: what was pending there is now at `to`.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.cut(from, from + len);
        self.cut(to, to + len);
        for p in moved {
            self.insert(Piece {
                addr: p.addr - from + to,
                ..p
            });
        }
    }

    /// Up to `max` pending pages from the lowest address (bulk filling).
    pub fn next_batch(&mut self, max: u64) -> Option<Piece> {
        let (&a, &(_, n)) = self.runs.iter().next()?;
        self.cut(a, a + n.min(max) * PAGE).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(addr: u64, first: u64, pages: u64) -> Piece {
        Piece { addr, first, pages }
    }

    fn pending() -> Pending {
        Pending::from_runs(&[
            PageRun {
                addr: 0x10000,
                pages: 4,
                first: 0,
            },
            PageRun {
                addr: 0x20000,
                pages: 2,
                first: 4,
            },
        ])
    }

    #[test]
    fn next_start_is_the_first_piece_at_or_after_an_address() {
        let mut q = pending();
        assert_eq!(q.next_start(0x0), Some(0x10000));
        assert_eq!(q.next_start(0x10000), Some(0x10000));
        assert_eq!(q.next_start(0x14000), Some(0x20000));
        assert_eq!(q.next_start(0x20001), None);
        q.cut(0x20000, 0x21000);
        assert_eq!(q.next_start(0x14000), Some(0x21000));
    }

    #[test]
    fn cut_takes_the_middle_of_a_piece_and_keeps_the_edges() {
        let mut q = pending();
        assert_eq!(q.cut(0x11000, 0x12000), vec![p(0x11000, 1, 1)]);
        assert_eq!(q.count(), 5);
        assert_eq!(q.cut(0x10000, 0x11000), vec![p(0x10000, 0, 1)]);
        assert_eq!(
            q.cut(0x0, 0x100000),
            vec![p(0x12000, 2, 2), p(0x20000, 4, 2)]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn remap_moves_pending_pages_with_their_image_index() {
        let mut q = pending();
        // The second half of the first piece moves up, over part of the second piece's place.
        q.remap(0x12000, 0x21000, 0x2000);
        assert_eq!(q.cut(0x21000, 0x23000), vec![p(0x21000, 2, 2)]);
        assert_eq!(q.cut(0x20000, 0x21000), vec![p(0x20000, 4, 1)]);
        assert_eq!(q.cut(0x0, 0x100000), vec![p(0x10000, 0, 2)]);
    }

    #[test]
    fn holds_follows_cuts_and_moves() {
        let mut q = pending();
        assert!(q.holds(0x10000) && q.holds(0x13fff) && !q.holds(0x14000));
        q.cut(0x11000, 0x12000);
        assert!(q.holds(0x10000) && !q.holds(0x11000) && q.holds(0x12000));
        q.remap(0x20000, 0x40000, 0x2000);
        assert!(!q.holds(0x20000) && q.holds(0x41000));
    }

    #[test]
    fn batches_drain_in_address_order() {
        let mut q = pending();
        assert_eq!(q.next_batch(3), Some(p(0x10000, 0, 3)));
        assert_eq!(q.next_batch(3), Some(p(0x13000, 3, 1)));
        assert_eq!(q.next_batch(3), Some(p(0x20000, 4, 2)));
        assert_eq!(q.next_batch(3), None);
    }
}
