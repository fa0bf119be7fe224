//! Greedy-Dual-Size-Frequency (Cherkasova, 1998): each snapshot has a priority
//!
//! ```text
//! H = L + frequency × cost / size
//! ```
//!
//! and the lowest H leaves first. `frequency` counts its uses since it entered the cache
//! (1 on arrival; the count starts again at a daemon's restart), `size` is its bytes on disk,
//! and `cost` is what it saves: the function's `init_ms` when the snapshot was taken, with a
//! floor of 1 ms (a snapshot of a function whose init cost nothing still has a cost). `L`, the
//! cache's age, starts at 0 and becomes the H of each evicted snapshot, so an entry's H is
//! fixed at its last use while newer ones are computed over a higher L: a snapshot used often
//! long ago ages out, one used now competes with the current ones. Ties go to the least
//! recently used.

use std::collections::HashMap;

use super::EvictionPolicy;

/// The floor of a snapshot's cost, in milliseconds.
pub const MIN_COST_MS: f64 = 1.0;

struct Entry {
    frequency: u64,
    /// Cost per byte: `cost / size`.
    value: f64,
    h: f64,
    tick: u64,
}

#[derive(Default)]
pub struct Gdsf {
    l: f64,
    tick: u64,
    entries: HashMap<String, Entry>,
}

impl Gdsf {
    /// The cache's age (the H of the last snapshot evicted).
    pub fn age(&self) -> f64 {
        self.l
    }

    /// The priority of `id`, if it is in the cache.
    pub fn priority(&self, id: &str) -> Option<f64> {
        self.entries.get(id).map(|e| e.h)
    }
}

impl EvictionPolicy for Gdsf {
    fn insert(&mut self, id: &str, bytes: u64, init_ms: f64) {
        let cost = if init_ms.is_finite() {
            init_ms.max(MIN_COST_MS)
        } else {
            MIN_COST_MS
        };
        let value = cost / bytes.max(1) as f64;
        self.tick += 1;
        self.entries.insert(
            id.to_string(),
            Entry {
                frequency: 1,
                value,
                h: self.l + value,
                tick: self.tick,
            },
        );
    }

    fn touch(&mut self, id: &str) {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(id) {
            e.frequency += 1;
            e.h = self.l + e.frequency as f64 * e.value;
            e.tick = self.tick;
        }
    }

    fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    fn evict(&mut self, spare: &str) -> Option<String> {
        let (victim, h) = self
            .entries
            .iter()
            .filter(|(id, _)| id.as_str() != spare)
            .min_by(|(a, x), (b, y)| x.h.total_cmp(&y.h).then(x.tick.cmp(&y.tick)).then(a.cmp(b)))
            .map(|(id, e)| (id.clone(), e.h))?;
        self.entries.remove(&victim);
        self.l = self.l.max(h);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_small_frequent_costly_snapshot_outlives_a_large_rare_one() {
        let mut p = Gdsf::default();
        // The large one arrives later: under LRU the small one would leave first.
        p.insert("small", 2 * MB, 300.0);
        p.touch("small");
        p.touch("small");
        p.insert("large", 200 * MB, 50.0);
        assert_eq!(p.evict("").as_deref(), Some("large"));
        assert_eq!(p.age(), 50.0 / (200 * MB) as f64);
        // Even used once, small and costly beats large and cheap.
        let mut p = Gdsf::default();
        p.insert("small", 2 * MB, 300.0);
        p.insert("large", 200 * MB, 50.0);
        assert_eq!(p.evict("").as_deref(), Some("large"));
    }

    #[test]
    fn the_age_inflates_so_old_frequent_snapshots_leave() {
        let mut p = Gdsf::default();
        // Used 5 times long ago: H = 500/MB, fixed from then on.
        p.insert("old", MB, 100.0);
        for _ in 0..4 {
            p.touch("old");
        }
        // A cache of two: each newcomer is used 3 times (H = L + 300/MB), below "old"'s H
        // while L is 0; each eviction raises L until a current newcomer outranks "old".
        let mut left_at = None;
        for n in 0..100 {
            let id = format!("new-{n}");
            p.insert(&id, MB, 100.0);
            if n > 0 && p.evict(&id).as_deref() == Some("old") {
                left_at = Some(n);
                break;
            }
            p.touch(&id);
            p.touch(&id);
        }
        assert_eq!(left_at, Some(2), "age {}", p.age());
        assert!(p.age() > 0.0);
        assert!(p.priority("new-1").is_some() && p.priority("new-2").is_some());
    }

    #[test]
    fn cost_has_a_floor_and_ties_go_to_the_least_recent() {
        let mut p = Gdsf::default();
        p.insert("a", MB, 0.0);
        p.insert("b", MB, f64::NAN);
        p.insert("c", MB, 0.5);
        assert_eq!(p.priority("a"), p.priority("b"));
        assert_eq!(p.priority("a"), p.priority("c"));
        assert_eq!(p.evict("").as_deref(), Some("a"));
        assert_eq!(p.evict("").as_deref(), Some("b"));
        p.insert("zero", 0, 1.0);
        assert!(p.priority("zero").unwrap().is_finite());
    }
}
