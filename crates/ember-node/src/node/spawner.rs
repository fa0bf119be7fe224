//! Threads that make sandboxes' first processes (`Sandbox::spawn_parked`), for the lifetime
//! of the node.
//!
//! A first process is made with `CLONE_VFORK`, which suspends the calling thread until the
//! process execs, and is then polled until it waits in `pause()`: milliseconds of blocking,
//! which a tokio worker should not spend (it serves other requests meanwhile). And the
//! process dies with the thread that made it (its death signal): a thread of tokio's blocking
//! pool ends after ten idle seconds and would take its instances along. So they are made here, on threads that end
//! only with the node, a few at a time so that their cgroup joins overlap.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub(in crate::node) struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    /// `threads` threads (at least one).
    pub(in crate::node) fn new(threads: usize) -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ember-spawner-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // The node is gone: so are its instances' parents.
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("a spawner thread could not be started: {e}");
            }
        }
        Spawner {
            jobs: Mutex::new(tx),
        }
    }

    /// Runs `f` on a spawner thread; `None` when no thread is left to run it.
    pub(in crate::node) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.lock().ok()?.send(job).ok()?;
        rx.await.ok()
    }
}
