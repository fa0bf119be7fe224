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
//! names of at most 128 characters in 8 parts. A name that does not import is skipped by the
//! build (`preloading ... failed` in the daemon's log). One tenant can make an image rebuilt
//! at most once a minute; a rebuild makes the function snapshots over the old image stale
//! (they are taken again).

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
    building: bool,
    last_build: Option<Instant>,
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

    /// Adds `missing`; true when a rebuild should start now (and marks it started).
    fn add(&self, key: &str, missing: Vec<String>) -> bool {
        let mut envs = self.lock();
        let e = envs.entry(key.to_string()).or_default();
        for m in missing {
            if e.modules.len() >= MAX_LEARNED {
                break;
            }
            e.modules.insert(m);
        }
        if e.building || e.last_build.is_some_and(|t| t.elapsed() < RELEARN) {
            return false;
        }
        e.building = true;
        true
    }

    fn built(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.building = false;
            e.last_build = Some(Instant::now());
        }
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
    name.len() <= 128 && name.split('.').count() <= 8 && name.split('.').all(ident)
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
        if missing.is_empty() || !self.learned.add(&d.env.key, missing) {
            return;
        }
        let (me, env) = (self.me.clone(), d.env.clone());
        self.spawn_background(async move {
            let Some(node) = me.upgrade() else { return };
            // One automatic build at a time, as on deploy.
            let _one = node.auto_builds.acquire().await;
            let learned = node.learned.modules(&env.key);
            tracing::info!(image = %image_id(&env.key), modules = ?learned, "rebuilding an image with the modules its functions import");
            if let Err(e) = node.build_image_for(&env).await {
                tracing::warn!(image = %image_id(&env.key), "rebuilding the image with learned imports failed: {}", error_chain(&e));
            }
            node.learned.built(&env.key);
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
            .unwrap_or_default();
        let extra: BTreeSet<String> = earlier
            .into_iter()
            .chain(self.learned.modules(&env.key))
            .filter(|m| !base.contains(m))
            .take(MAX_LEARNED)
            .collect();
        v.extend(extra);
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
        l.built("e");
        assert!(!l.add("e", vec!["a.d".into()]), "not again within RELEARN");
        assert_eq!(l.modules("e"), ["a.b", "a.c", "a.d"]);
        let many: Vec<String> = (0..1000).map(|i| format!("a.m{i}")).collect();
        l.add("e", many);
        assert_eq!(l.modules("e").len(), MAX_LEARNED);
        assert!(l.modules("other").is_empty());
    }
}
