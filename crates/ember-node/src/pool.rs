//! One function version's instances: the idle ones (reused most-recent first), a semaphore of
//! `max_instances` permits for the ones serving, and a bounded count of requests waiting for
//! a permit. A request that finds the queue full, or waits past the queue timeout, is throttled.
//!
//! Flushing bumps the pool's generation: idle instances are handed back for killing at once
//! and busy ones when they return. Retiring (a new version, or a delete) also stops reuse.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::live::Live;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct Idle {
    inst: Live,
    since: Instant,
    generation: u64,
}

/// What [`Pool::expire`] took out of the pool.
#[derive(Default)]
pub struct Expired {
    /// Past their keep-alive.
    pub expired: Vec<Live>,
    /// Dead, or of an older generation: only to be stopped.
    pub gone: Vec<Live>,
}

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// Instances started ahead of demand and stopped before their first instruction (a
    /// native function's pre-made sandboxes); each serves one request.
    parked: Mutex<Vec<Live>>,
    /// A refill of `parked` is under way.
    pub filling: AtomicBool,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    live: AtomicUsize,
    generation: AtomicU64,
    retired: AtomicBool,
}

impl Pool {
    pub fn new(max_instances: u32) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            parked: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(max_instances as usize)),
            waiting: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit to run one invocation; `None` means throttled.
    pub async fn admit(
        &self,
        queue_depth: usize,
        queue_timeout: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= queue_depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let got = tokio::time::timeout(queue_timeout, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        got.ok().and_then(|r| r.ok())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The most recently used idle instance that is still alive; dead ones found on the way
    /// are returned for the caller to discard.
    pub fn take_idle(&self) -> (Option<Live>, Vec<Live>) {
        let mut dead = Vec::new();
        let mut idle = self.idle();
        while let Some(mut i) = idle.pop() {
            if i.inst.is_gone() {
                dead.push(i.inst);
                continue;
            }
            return (Some(i.inst), dead);
        }
        (None, dead)
    }

    /// Returns an instance after an invocation; gives it back when it must be discarded
    /// instead (the pool was flushed or retired meanwhile).
    pub fn put_back(&self, inst: Live, generation: u64) -> Option<Live> {
        if self.retired.load(Ordering::SeqCst) || generation != self.generation() {
            return Some(inst);
        }
        self.idle().push(Idle {
            inst,
            since: Instant::now(),
            generation,
        });
        None
    }

    /// Stops reuse of everything started so far; returns the idle instances to discard.
    pub fn flush(&self) -> Vec<Live> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut out: Vec<Live> = self.idle().drain(..).map(|i| i.inst).collect();
        out.append(&mut self.parked());
        out
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pre-started instance, if one is ready.
    pub fn take_parked(&self) -> Option<Live> {
        self.parked().pop()
    }

    /// Keeps a pre-started instance; gives it back when the pool is retired.
    pub fn park(&self, inst: Live) -> Option<Live> {
        if self.retired.load(Ordering::SeqCst) {
            return Some(inst);
        }
        self.parked().push(inst);
        None
    }

    pub fn parked_count(&self) -> usize {
        self.parked().len()
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Like [`Pool::flush`], and nothing is ever put back again.
    pub fn retire(&self) -> Vec<Live> {
        self.retired.store(true, Ordering::SeqCst);
        self.flush()
    }

    /// Idle instances unused for longer than `keep_alive` (`expired`), or left from an
    /// older generation or dead (`gone`); of the current generation's, the `keep` most
    /// recently used stay whatever their age (instances kept ready).
    pub fn expire(&self, keep_alive: Duration, keep: usize) -> Expired {
        let generation = self.generation();
        let mut idle = self.idle();
        let mut protected = keep;
        let mut kept = Vec::new();
        let mut out = Expired::default();
        // Most recently used first (`take_idle` takes from the end).
        for mut i in idle.drain(..).rev() {
            // One that died while idle goes, kept ready or not (a fill replaces it).
            if i.generation != generation || i.inst.is_gone() {
                out.gone.push(i.inst);
            } else if protected > 0 {
                protected -= 1;
                kept.push(i);
            } else if i.since.elapsed() >= keep_alive {
                out.expired.push(i.inst);
            } else {
                kept.push(i);
            }
        }
        kept.reverse();
        *idle = kept;
        out
    }

    /// When the least recently used idle instance was last used.
    pub fn oldest_idle(&self) -> Option<Instant> {
        self.idle().first().map(|i| i.since)
    }

    /// The least recently used idle instance of the current generation that is alive, out
    /// of the pool.
    pub fn take_oldest(&self) -> Option<Live> {
        let generation = self.generation();
        let mut idle = self.idle();
        let i = idle
            .iter_mut()
            .position(|i| i.generation == generation && !i.inst.is_gone())?;
        Some(idle.remove(i).inst)
    }

    /// Calls `f` on every idle instance, in the pool.
    pub fn for_each_idle(&self, mut f: impl FnMut(&mut Live)) {
        for i in self.idle().iter_mut() {
            f(&mut i.inst);
        }
    }

    /// The ids of the idle instances, and of the pre-started ones.
    pub fn idle_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .idle()
            .iter()
            .map(|i| i.inst.id().to_string())
            .collect();
        ids.extend(self.parked().iter().map(|l| l.id().to_string()));
        ids
    }

    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    pub fn live(&self) -> &AtomicUsize {
        &self.live
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_queues_then_throttles() {
        let pool = Arc::new(Pool::new(1));
        let held = pool.admit(1, Duration::from_secs(5)).await.unwrap();
        // One waiter fits in the queue; a second is throttled at once.
        let p2 = pool.clone();
        let waiter =
            tokio::spawn(async move { p2.admit(1, Duration::from_secs(5)).await.is_some() });
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(pool.admit(1, Duration::from_secs(5)).await.is_none());
        drop(held);
        assert!(waiter.await.unwrap());
        // A waiter that times out is throttled too.
        let _held = pool.admit(1, Duration::from_secs(5)).await.unwrap();
        assert!(pool.admit(1, Duration::from_millis(20)).await.is_none());
        assert_eq!(pool.waiting(), 0);
    }
}
