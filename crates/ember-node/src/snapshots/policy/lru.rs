//! Least recently used (vHive's policy): the snapshot whose last use (or arrival) is oldest
//! leaves first. Recency is a counter, not a clock, so order is exact and tests are
//! deterministic.

use std::collections::HashMap;

use super::EvictionPolicy;

#[derive(Default)]
pub struct Lru {
    tick: u64,
    /// Id -> tick of its last use or arrival.
    last: HashMap<String, u64>,
}

impl Lru {
    fn bump(&mut self, id: &str) {
        self.tick += 1;
        self.last.insert(id.to_string(), self.tick);
    }
}

impl EvictionPolicy for Lru {
    fn insert(&mut self, id: &str, _bytes: u64, _init_ms: f64) {
        self.bump(id);
    }

    fn touch(&mut self, id: &str) {
        if self.last.contains_key(id) {
            self.bump(id);
        }
    }

    fn remove(&mut self, id: &str) {
        self.last.remove(id);
    }

    fn evict(&mut self, spare: &str) -> Option<String> {
        let victim = self
            .last
            .iter()
            .filter(|(id, _)| id.as_str() != spare)
            .min_by_key(|(id, t)| (**t, id.as_str()))
            .map(|(id, _)| id.clone())?;
        self.last.remove(&victim);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_leaves_first() {
        let mut p = Lru::default();
        for id in ["a", "b", "c"] {
            p.insert(id, 10, 1.0);
        }
        p.touch("a");
        assert_eq!(p.evict("").as_deref(), Some("b"));
        assert_eq!(p.evict("c").as_deref(), Some("a"));
        assert_eq!(p.evict("c"), None);
        assert_eq!(p.evict("").as_deref(), Some("c"));
        p.touch("gone");
        assert_eq!(p.evict(""), None);
    }
}
