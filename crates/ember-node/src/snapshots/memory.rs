//! The in-memory tier: loaded snapshot layers kept under a byte budget, the least recently
//! used leaving first. Leaving the tier only drops its reference: an instance being restored
//! from a layer keeps it until it is done.

use std::collections::HashMap;

pub struct MemoryTier<T> {
    budget: u64,
    used: u64,
    tick: u64,
    entries: HashMap<String, Held<T>>,
}

struct Held<T> {
    value: T,
    bytes: u64,
    tick: u64,
}

impl<T: Clone> MemoryTier<T> {
    pub fn new(budget: u64) -> Self {
        MemoryTier {
            budget,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.used
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// The value kept for `id`, now its most recently used.
    pub fn get(&mut self, id: &str) -> Option<T> {
        self.tick += 1;
        let held = self.entries.get_mut(id)?;
        held.tick = self.tick;
        Some(held.value.clone())
    }

    /// Keeps `value` (taking `bytes`) for `id`, sending the least recently used others out
    /// until it fits. False, keeping nothing new, if it is larger than the whole budget.
    pub fn keep(&mut self, id: &str, value: T, bytes: u64) -> bool {
        self.remove(id);
        if bytes > self.budget {
            return false;
        }
        while self.used + bytes > self.budget {
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(id, h)| (h.tick, id.as_str()))
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.remove(&victim);
        }
        self.tick += 1;
        self.used += bytes;
        self.entries.insert(
            id.to_string(),
            Held {
                value,
                bytes,
                tick: self.tick,
            },
        );
        true
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(h) = self.entries.remove(id) {
            self.used -= h.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_budget_least_recently_used_leaving_first() {
        let mut t = MemoryTier::new(100);
        assert!(t.keep("a", 1, 40));
        assert!(t.keep("b", 2, 40));
        assert_eq!(t.get("a"), Some(1));
        assert!(t.keep("c", 3, 40));
        assert!(!t.contains("b") && t.contains("a") && t.contains("c"));
        assert_eq!(t.bytes(), 80);
        assert!(!t.keep("huge", 4, 101));
        assert_eq!(t.bytes(), 80);
        // Kept again with another size: counted once.
        assert!(t.keep("a", 5, 10));
        assert_eq!((t.bytes(), t.get("a")), (50, Some(5)));
        t.remove("a");
        t.remove("a");
        assert_eq!(t.bytes(), 40);
    }
}
