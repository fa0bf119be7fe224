//! Publishing versions, aliases, and which of a function's versions a qualifier serves
//! (the rules are in `crate::versions`).
//!
//! ```text
//! publish: the function's deploy gate -> $LATEST unchanged since the last version? that one
//!          -> registry txn (the next number, the record as `name:N`) -> a pool of its own
//!          -> its function snapshot taken now, in the background (SnapStart's
//!             ApplyOn: PublishedVersions); the version is Pending until it ends
//! invoke `name:q`: $LATEST -> `name`; N -> `name:N`; alias -> its version, or with its
//!          weight its additional version
//! ```

use std::sync::Arc;

use super::{Deployed, FunctionStatus, Node, NodeError, blocking, now_secs};
use crate::function::{FunctionRecord, InvalidFunction, LATEST, SnapshotPoint};
use crate::versions::{Alias, Qualifier, qualified, split_qualified, validate_routing};

/// What a request to change an alias gives.
#[derive(Debug, Clone, Default)]
pub struct AliasChange {
    pub version: Option<String>,
    pub description: Option<String>,
    /// Replaces the routing when given (empty: none).
    pub weights: Option<std::collections::BTreeMap<String, f64>>,
    /// The alias's revision the change was based on, refused when it moved on.
    pub expected_revision: Option<u64>,
}

impl Node {
    /// The name this node serves `function` with qualifier `q` under now. An alias with
    /// routing picks one of its two versions at random by weight when `route` (to invoke),
    /// else names its own.
    pub fn resolve(
        &self,
        function: &str,
        q: Option<&str>,
        route: bool,
    ) -> Result<String, NodeError> {
        let internal = match Qualifier::parse(q)? {
            Qualifier::Latest => function.to_string(),
            Qualifier::Version(n) => qualified(function, n),
            Qualifier::Alias(a) => {
                let alias = self.alias(function, &a)?;
                let roll = if route {
                    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
                } else {
                    1.0
                };
                match alias.pick(roll) {
                    LATEST => function.to_string(),
                    v => format!("{function}:{v}"),
                }
            }
        };
        self.deployed(&internal)?;
        Ok(internal)
    }

    /// Publishes `function`'s `$LATEST` as its next version (or returns the last version
    /// when neither code nor configuration changed since, as Lambda does). With `expected`,
    /// refused unless `$LATEST` is still that revision; with `code_sha256`, unless its code
    /// is that archive.
    pub async fn publish(
        &self,
        function: &str,
        description: Option<String>,
        expected: Option<u64>,
        code_sha256: Option<&str>,
    ) -> Result<FunctionStatus, NodeError> {
        let gate = self.deploy_gate(function);
        let _held = gate.lock().await;
        let latest = self.deployed(function)?;
        if expected.is_some_and(|v| v != latest.record.version) {
            return Err(NodeError::Changed(function.to_string()));
        }
        if let Some(sha) = code_sha256
            && sha != latest.record.code_sha256
        {
            return Err(NodeError::Invalid(InvalidFunction {
                field: "CodeSha256",
                value: sha.to_string(),
                rule: format!(
                    "does not match the function's code ({}): it was updated meanwhile",
                    latest.record.code_sha256
                ),
            }));
        }
        if let Some(last) = self.versions_of(function).into_iter().last()
            && same_function(&last.record, &latest.record)
        {
            return Ok(super::deploy::status(self, &last));
        }
        let reg = self.registry.clone();
        let mut config = latest.record.config.clone();
        if let Some(d) = description {
            config.description = d;
        }
        // A function URL is the function's, served by `$LATEST`; instances kept ready are
        // asked for per version (provisioned concurrency).
        config.url = None;
        config.min_instances = 0;
        let base = latest.record.clone();
        let rec = blocking(move || {
            let now = now_secs();
            Ok(reg.publish(&base.name, |n| FunctionRecord {
                name: qualified(&base.name, n),
                version: 1,
                config,
                created_at: now,
                updated_at: now,
                ..base.clone()
            })?)
        })
        .await?;
        let name = rec.name.clone();
        tracing::info!(function, version = %name, "published");
        self.logs.append(
            function,
            "ember",
            "event",
            format!("published {name}").as_bytes(),
        );
        self.install(rec, latest.env.clone());
        let d = self.deployed(&name)?;
        self.snapshot_at_publish(&d);
        Ok(super::deploy::status(self, &d))
    }

    /// A published version's after-init snapshot, taken now rather than at its first start.
    fn snapshot_at_publish(&self, d: &Arc<Deployed>) {
        if !self.snapshots_on(d) || d.record.config.snapshot != SnapshotPoint::AfterInit {
            return;
        }
        let parent = self.snapshot_parent(d);
        let key = self.snapshot_key(d, parent.as_ref());
        self.snapshot_in_background(d, key);
    }

    /// The published versions of `function`, by number.
    fn versions_of(&self, function: &str) -> Vec<Arc<Deployed>> {
        let mut v: Vec<(u64, Arc<Deployed>)> = self
            .read_functions()
            .iter()
            .filter_map(|(k, d)| match split_qualified(k) {
                (f, Some(n)) if f == function => Some((n.parse().ok()?, d.clone())),
                _ => None,
            })
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v.into_iter().map(|(_, d)| d).collect()
    }

    /// `$LATEST` and the published versions of `function`, by number.
    pub fn versions(&self, function: &str) -> Result<Vec<FunctionStatus>, NodeError> {
        let latest = self.deployed(function)?;
        Ok(std::iter::once(latest)
            .chain(self.versions_of(function))
            .map(|d| super::deploy::status(self, &d))
            .collect())
    }

    /// The aliases naming version `internal` (`name:N`) or, for `name`, `$LATEST`.
    pub(in crate::node) fn aliases_using(&self, internal: &str) -> Vec<String> {
        let (function, v) = split_qualified(internal);
        let v = v.unwrap_or(LATEST);
        self.aliases(function)
            .into_iter()
            .filter(|a| a.version == v || a.weights.contains_key(v))
            .map(|a| a.name)
            .collect()
    }

    pub fn alias(&self, function: &str, alias: &str) -> Result<Alias, NodeError> {
        self.read_aliases()
            .get(&(function.to_string(), alias.to_string()))
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{function}:{alias}")))
    }

    /// `function`'s aliases, by name.
    pub fn aliases(&self, function: &str) -> Vec<Alias> {
        let mut v: Vec<Alias> = self
            .read_aliases()
            .values()
            .filter(|a| a.function == function)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates alias `name` of `function` (`create`) or changes it; the versions it names
    /// must exist.
    pub async fn put_alias(
        &self,
        function: &str,
        name: &str,
        change: AliasChange,
        create: bool,
    ) -> Result<Alias, NodeError> {
        crate::versions::validate_alias_name(name)?;
        let gate = self.deploy_gate(function);
        let _held = gate.lock().await;
        self.deployed(function)?;
        let current = self.alias(function, name).ok();
        let mut alias = match (current, create) {
            (Some(_), true) => {
                return Err(NodeError::InUse {
                    what: format!("alias name {name:?}"),
                    by: format!("an alias of {function}"),
                    hint: "update it, or delete it first",
                });
            }
            (None, false) => return Err(NodeError::NotFound(format!("{function}:{name}"))),
            (Some(a), false) => a,
            (None, true) => Alias {
                function: function.to_string(),
                name: name.to_string(),
                version: String::new(),
                description: String::new(),
                weights: Default::default(),
                revision: 0,
            },
        };
        if change
            .expected_revision
            .is_some_and(|r| r != alias.revision)
        {
            return Err(NodeError::Changed(format!("{function}:{name}")));
        }
        if let Some(v) = change.version {
            alias.version = v;
        }
        if let Some(d) = change.description {
            alias.description = d;
        }
        if let Some(w) = change.weights {
            alias.weights = w;
        }
        // Versions as the node names them ("01" is version 1).
        let canonical = |v: &str| match Qualifier::parse(Some(v)) {
            Ok(Qualifier::Latest) => Ok(LATEST.to_string()),
            Ok(Qualifier::Version(n)) => Ok(n.to_string()),
            _ => Err(NodeError::Invalid(InvalidFunction {
                field: "FunctionVersion",
                value: v.to_string(),
                rule: "must be $LATEST or a published version's number".into(),
            })),
        };
        alias.version = canonical(&alias.version)?;
        alias.weights = alias
            .weights
            .iter()
            .map(|(v, w)| Ok((canonical(v)?, *w)))
            .collect::<Result<_, NodeError>>()?;
        validate_routing(&alias.version, &alias.weights)?;
        for v in std::iter::once(&alias.version).chain(alias.weights.keys()) {
            if v != LATEST {
                self.deployed(&format!("{function}:{v}"))?;
            }
        }
        alias.revision += 1;
        let (reg, a) = (self.registry.clone(), alias.clone());
        blocking(move || Ok(reg.put_alias(&a)?)).await?;
        self.write_aliases()
            .insert((function.to_string(), name.to_string()), alias.clone());
        Ok(alias)
    }

    pub async fn delete_alias(&self, function: &str, name: &str) -> Result<(), NodeError> {
        let gate = self.deploy_gate(function);
        let _held = gate.lock().await;
        let (reg, f, n) = (
            self.registry.clone(),
            function.to_string(),
            name.to_string(),
        );
        if !blocking(move || Ok(reg.delete_alias(&f, &n)?)).await? {
            return Err(NodeError::NotFound(format!("{function}:{name}")));
        }
        self.write_aliases()
            .remove(&(function.to_string(), name.to_string()));
        Ok(())
    }

    fn read_aliases(&self) -> std::sync::RwLockReadGuard<'_, super::Aliases> {
        self.aliases.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(in crate::node) fn write_aliases(&self) -> std::sync::RwLockWriteGuard<'_, super::Aliases> {
        self.aliases.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether two records serve the same code with the same configuration, leaving out what
/// belongs to the function rather than a version (description, tags, URL, instances kept
/// ready, its resource policy, its event-invoke configuration).
fn same_function(a: &FunctionRecord, b: &FunctionRecord) -> bool {
    let mut ca = a.config.clone();
    ca.description.clone_from(&b.config.description);
    ca.tags.clone_from(&b.config.tags);
    ca.url.clone_from(&b.config.url);
    ca.min_instances = b.config.min_instances;
    ca.policy.clone_from(&b.config.policy);
    ca.event_invoke.clone_from(&b.config.event_invoke);
    a.code_hash == b.code_hash && a.env_key == b.env_key && ca == b.config
}
