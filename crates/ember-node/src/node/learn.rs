//! Imports learned into images. An image preloads its packages' top-level modules; a
//! handler that imports a submodule a package leaves to first use (`sklearn.linear_model`,
//! `PIL.Image`) paid for it on every start from the image. The runtime reports which modules
//! the handler's import added (READY's `imported`); the node keeps those of the function's
//! own packages that its image lacks, and rebuilds the image of its package set with them in
//! the background, so that later starts find them imported.
//!
//! ```text
//! start (cold boot or image) -> READY imported -> checked: a module name, of one of the
//!     function's requested distributions' top-level modules, not in the image yet
//!     -> learned for its environment -> image rebuilt with them (at most once a minute per
//!     image, one build at a time) -> later starts: import_handler finds them loaded
//! ```
//!
//! **Trust.** The report comes from the function's own process: it is a claim. Only modules
//! under a top-level module of a distribution the function asked for are kept (an image is
//! shared only by functions with exactly its distributions, so nothing is imported at a build
//! that those functions' tenants did not choose), at most [`MAX_LEARNED`] per environment,
//! names of at most 128 characters in 8 parts, no `__main__`. A name whose import raises is
//! skipped by the build (`preloading ... failed` in the daemon's log); a build that fails
//! (a module that exits, crashes, starts a thread or hangs at import) refuses the modules it
//! added, which are never learned again. An image is rebuilt at most once a minute, and only
//! for a module not learned before; a rebuild makes the function snapshots over the old
//! image stale (they are taken again). What one tenant's handler imports is preloaded for
//! every function of the same distributions: their import-time code, of packages those
//! tenants chose, runs in the image, and a larger image may no longer fit a function with
//! little memory (which then cold-boots).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Deployed, Node, error_chain};
use crate::envs::PackageEnv;
use crate::images::image_id;

/// An image is rebuilt with what was learned at most this often.
pub(in crate::node) const RELEARN: Duration = Duration::from_secs(60);
/// Most modules learned per package environment.
pub(in crate::node) const MAX_LEARNED: usize = 256;

#[derive(Default)]
struct EnvLearned {
    modules: BTreeSet<String>,
    /// Modules whose build failed: never learned again (a module that exits, crashes,
    /// starts a thread or hangs at import would otherwise fail every rebuild).
    refused: BTreeSet<String>,
    building: bool,
    last_build: Option<Instant>,
}

impl EnvLearned {
    /// Learns `modules` within the cap, none refused; true when one was new.
    fn learn(&mut self, modules: impl IntoIterator<Item = String>) -> bool {
        let mut new = false;
        for m in modules {
            if self.modules.len() >= MAX_LEARNED {
                break;
            }
            if !self.refused.contains(&m) {
                new |= self.modules.insert(m);
            }
        }
        new
    }
}

/// Modules learned per package environment (key).
#[derive(Default)]
pub(in crate::node) struct Learned {
    envs: Mutex<HashMap<String, EnvLearned>>,
}

impl Learned {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EnvLearned>> {
        self.envs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was learned for environment `key`.
    pub fn modules(&self, key: &str) -> Vec<String> {
        self.lock()
            .get(key)
            .map(|e| e.modules.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds `missing`; true when a rebuild should start now (and marks it started): some
    /// module is learned that the image lacks, none is being built and the last build is
    /// [`RELEARN`] old. What is over the cap or was refused is not learned.
    fn add(&self, key: &str, missing: Vec<String>) -> bool {
        let mut envs = self.lock();
        let e = envs.entry(key.to_string()).or_default();
        let new = e.learn(missing);
        new && self.due(e)
    }

    /// Whether a learned module is still missing from an image that preloads `have` and a
    /// rebuild may start now (marking it started).
    fn wants_build(&self, key: &str, have: &[String]) -> bool {
        let mut envs = self.lock();
        let Some(e) = envs.get_mut(key) else {
            return false;
        };
        let have: std::collections::HashSet<&str> = have.iter().map(String::as_str).collect();
        if e.modules.iter().all(|m| have.contains(m.as_str())) {
            return false;
        }
        self.due(e)
    }

    fn due(&self, e: &mut EnvLearned) -> bool {
        if e.building || e.last_build.is_some_and(|t| t.elapsed() < RELEARN) {
            return false;
        }
        e.building = true;
        true
    }

    /// The build with what was learned ended; when it failed, the modules it added to the
    /// image (`tried`) are refused from now on.
    fn built(&self, key: &str, failed: Option<&[String]>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.building = false;
            e.last_build = Some(Instant::now());
            if let Some(tried) = failed {
                e.refused.extend(tried.iter().cloned());
                let refused = &e.refused;
                e.modules.retain(|m| !refused.contains(m));
            }
        }
    }

    /// Seeds environment `key` with what its image already learned before (a daemon
    /// restart), oldest first, within the cap; returns everything learned.
    fn seeded(&self, key: &str, earlier: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut envs = self.lock();
        let e = envs.entry(key.to_string()).or_default();
        e.learn(earlier);
        e.modules.iter().cloned().collect()
    }
}

/// A dotted module name of Python identifiers, short enough to be one.
pub(in crate::node) fn valid_module(name: &str) -> bool {
    let ident = |p: &str| {
        let mut c = p.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    // `__main__` runs a package as a program (`python -m`), never a module to preload.
    name.len() <= 128
        && name.split('.').count() <= 8
        && name.split('.').all(|p| ident(p) && p != "__main__")
}

/// Of `reported`, the modules worth adding to an image that preloads `have` for a function
/// whose distributions' top-level modules are `tops`.
pub(in crate::node) fn worth_learning(
    reported: Vec<String>,
    tops: &[String],
    have: &[String],
) -> Vec<String> {
    let tops: HashSet<&str> = tops.iter().map(String::as_str).collect();
    let have: HashSet<&str> = have.iter().map(String::as_str).collect();
    reported
        .into_iter()
        .filter(|m| valid_module(m))
        .filter(|m| tops.contains(m.split('.').next().unwrap_or_default()))
        .filter(|m| !have.contains(m.as_str()))
        .collect()
}

impl Node {
    /// Learns from what `d`'s handler import added (`reported`, from its runtime): modules of
    /// its packages its image lacks, and rebuilds that image with them when due.
    pub(in crate::node) fn learn_imports(&self, d: &Arc<Deployed>, reported: Vec<String>) {
        let rec = &d.record;
        if reported.is_empty()
            || self.sandboxes.is_none()
            || !rec.config.images
            || !rec.config.runtime.restorable()
        {
            return;
        }
        // Only the image of the function's own environment learns from it.
        let id = image_id(&d.env.key);
        let Some(have) = self.images.imports_of(&id) else {
            return;
        };
        let missing = worth_learning(reported, &d.env.imports, &have);
        // What is new, or learned before and still missing (a build that was not due).
        let start = match missing.is_empty() {
            true => false,
            false => {
                self.learned.add(&d.env.key, missing) || self.learned.wants_build(&d.env.key, &have)
            }
        };
        if !start {
            return;
        }
        let (me, env) = (self.me.clone(), d.env.clone());
        self.spawn_background(async move {
            let Some(node) = me.upgrade() else { return };
            // One automatic build at a time, as on deploy.
            let _one = node.auto_builds.acquire().await;
            let id = image_id(&env.key);
            let before = node.images.imports_of(&id).unwrap_or_default();
            let learned = node.learned.modules(&env.key);
            let tried: Vec<String> = learned
                .iter()
                .filter(|m| !before.contains(m))
                .cloned()
                .collect();
            tracing::info!(image = %id, modules = ?tried, "rebuilding an image with the modules its functions import");
            match node.build_image_for(&env).await {
                Ok(_) => node.learned.built(&env.key, None),
                Err(e) => {
                    tracing::warn!(image = %id, modules = ?tried, "rebuilding the image with learned imports failed; those modules are not learned again: {}", error_chain(&e));
                    node.learned.built(&env.key, Some(&tried));
                }
            }
        });
    }

    /// What an image for `env` imports: its packages' (image_build.rs), then what an earlier
    /// image of it and its functions' starts taught.
    pub(in crate::node) fn image_imports_learned(&self, env: &PackageEnv) -> Vec<String> {
        let mut v = super::image_build::image_imports(env);
        let base: HashSet<String> = v.iter().cloned().collect();
        let earlier = self
            .images
            .imports_of(&image_id(&env.key))
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !base.contains(m));
        let learned = self.learned.seeded(&env.key, earlier);
        v.extend(learned.into_iter().filter(|m| !base.contains(m)));
        v
    }

    /// Modules learned for image `id`'s environment that it does not import yet.
    pub(in crate::node) fn imports_pending(&self, env_key: &str, have: &[String]) -> usize {
        let have: HashSet<&str> = have.iter().map(String::as_str).collect();
        self.learned
            .modules(env_key)
            .iter()
            .filter(|m| !have.contains(m.as_str()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_modules_of_the_functions_packages_missing_from_the_image_are_learned() {
        let tops = vec!["sklearn".to_string(), "pandas".to_string()];
        let have = vec!["sklearn".to_string(), "json".to_string()];
        let got = worth_learning(
            vec![
                "sklearn.linear_model".into(),
                "sklearn".into(),
                "pandas.io.json".into(),
                "json.decoder".into(),
                "os".into(),
                "mine".into(),
                "sklearn.bad name".into(),
                "sklearn..x".into(),
                "1abc".into(),
                format!("sklearn.{}", "a".repeat(200)),
                "sklearn.a.b.c.d.e.f.g.h".into(),
            ],
            &tops,
            &have,
        );
        assert_eq!(got, ["sklearn.linear_model", "pandas.io.json"]);
    }

    #[test]
    fn a_rebuild_starts_once_then_not_before_the_interval_and_learning_is_capped() {
        let l = Learned::default();
        assert!(l.add("e", vec!["a.b".into()]));
        assert!(!l.add("e", vec!["a.c".into()]), "one build at a time");
        l.built("e", None);
        assert!(!l.add("e", vec!["a.d".into()]), "not again within RELEARN");
        assert_eq!(l.modules("e"), ["a.b", "a.c", "a.d"]);
        let many: Vec<String> = (0..1000).map(|i| format!("a.m{i}")).collect();
        l.add("e", many);
        assert_eq!(l.modules("e").len(), MAX_LEARNED);
        assert!(l.modules("other").is_empty());
    }

    /// Past the cap, or with everything learned in the image, nothing asks for a rebuild;
    /// a build that failed refuses the modules it tried.
    #[test]
    fn nothing_new_never_rebuilds_and_a_failed_build_refuses_what_it_tried() {
        let l = Learned::default();
        let full: Vec<String> = (0..MAX_LEARNED).map(|i| format!("a.m{i}")).collect();
        assert!(l.add("e", full.clone()));
        l.lock().get_mut("e").unwrap().last_build = None;
        l.lock().get_mut("e").unwrap().building = false;
        assert!(
            !l.add("e", vec!["a.over".into()]),
            "over the cap: not learned"
        );
        assert!(!l.wants_build("e", &full), "all of it is in the image");
        assert!(l.wants_build("e", &full[1..]), "one still missing");
        l.built("e", Some(&["a.m0".to_string()]));
        l.lock().get_mut("e").unwrap().last_build = None;
        assert!(!l.modules("e").contains(&"a.m0".to_string()));
        assert!(
            !l.add("e", vec!["a.m0".into()]),
            "refused: never learned again"
        );
        assert!(!l.wants_build("e", &full[1..]));
        assert!(!valid_module("pkg.__main__"));
        // A restart: what the image learned before is learned again, within the cap.
        let r = Learned::default();
        assert_eq!(r.seeded("e", ["a.x".to_string()]), ["a.x"]);
        assert_eq!(r.seeded("e", Vec::new()), ["a.x"]);
    }
}
