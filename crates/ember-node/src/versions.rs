//! Published versions and aliases, as Lambda has them.
//!
//! A published version freezes a function's code and configuration: the node serves it as a
//! function of its own named `name:N` (a registry row, a pool, a function snapshot taken at
//! publish), so everything that serves `$LATEST` serves a version unchanged. Numbers are
//! never used twice for a function. An alias names a version (or `$LATEST`) and may send a
//! share of its invocations to a second published version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use ember_runtime::lambda_env::split_qualified;

use crate::function::{InvalidFunction, LATEST, invalid, lambda_name};

/// The node's name for version `n` of `function`.
pub fn qualified(function: &str, n: u64) -> String {
    format!("{function}:{n}")
}

/// An alias of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub function: String,
    pub name: String,
    /// A published version's number, or `$LATEST`.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// At most one other published version and the share (0 to 1) of invocations it gets.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Counts the alias's changes (its `RevisionId`).
    pub revision: u64,
}

impl Alias {
    /// The version an invocation runs: the additional version with its weight's
    /// probability, given `roll` uniform in [0, 1).
    pub fn pick(&self, roll: f64) -> &str {
        match self.weights.iter().next() {
            Some((v, w)) if roll < *w => v,
            _ => &self.version,
        }
    }
}

/// Lambda's rule for alias names: 1 to 128 of `[A-Za-z0-9_-]`, not all digits (a version).
pub fn validate_alias_name(name: &str) -> Result<(), InvalidFunction> {
    let ok = lambda_name(name, 128) && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "alias",
            name,
            "must be 1 to 128 letters, digits, '-' or '_', and not a number (numbers are \
             versions)",
        ))
    }
}

/// A qualifier as given: `$LATEST`, a version number, or an alias name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    Latest,
    Version(u64),
    Alias(String),
}

impl Qualifier {
    pub fn parse(q: Option<&str>) -> Result<Qualifier, InvalidFunction> {
        match q {
            None | Some(LATEST) => Ok(Qualifier::Latest),
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(Qualifier::Version)
                .ok_or_else(|| invalid("qualifier", v, "is not a version this function has")),
            Some(a) => {
                validate_alias_name(a)?;
                Ok(Qualifier::Alias(a.to_string()))
            }
        }
    }
}

/// Checks an alias's routing: at most one additional version, a published one other than
/// the alias's own, with a weight from 0 to 1; the alias's own version must then be a
/// published one too (Lambda routes between published versions only).
pub fn validate_routing(
    version: &str,
    weights: &BTreeMap<String, f64>,
) -> Result<(), InvalidFunction> {
    let Some((extra, w)) = weights.iter().next() else {
        return Ok(());
    };
    let rule = if weights.len() > 1 {
        "may name one additional version only"
    } else if !(0.0..=1.0).contains(w) || !w.is_finite() {
        "weights must be from 0.0 to 1.0"
    } else if version == LATEST || extra == LATEST {
        "routes between published versions only, not $LATEST"
    } else if extra == version {
        "must name a version other than the alias's own"
    } else if !matches!(Qualifier::parse(Some(extra)), Ok(Qualifier::Version(_))) {
        "must name a published version by its number"
    } else {
        return Ok(());
    };
    Err(invalid("RoutingConfig", extra, rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_are_latest_versions_or_aliases() {
        assert_eq!(Qualifier::parse(None), Ok(Qualifier::Latest));
        assert_eq!(Qualifier::parse(Some("$LATEST")), Ok(Qualifier::Latest));
        assert_eq!(Qualifier::parse(Some("12")), Ok(Qualifier::Version(12)));
        assert_eq!(
            Qualifier::parse(Some("live_1-a")),
            Ok(Qualifier::Alias("live_1-a".into()))
        );
        for bad in ["0", "99999999999999999999999", "a:b", "", "$latest", "x y"] {
            assert!(Qualifier::parse(Some(bad)).is_err(), "{bad}");
        }
        assert!(validate_alias_name("7").is_err());
        assert!(validate_alias_name(&"a".repeat(129)).is_err());
        assert!(validate_alias_name(&"a".repeat(128)).is_ok());
        assert_eq!(split_qualified("f:3"), ("f", Some("3")));
        assert_eq!(split_qualified("f"), ("f", None));
        assert_eq!(qualified("f", 3), "f:3");
    }

    #[test]
    fn routing_sends_a_share_to_one_other_published_version() {
        let w = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert!(validate_routing("1", &w(&[])).is_ok());
        assert!(validate_routing("$LATEST", &w(&[])).is_ok());
        assert!(validate_routing("1", &w(&[("2", 0.25)])).is_ok());
        for (v, ws) in [
            ("1", w(&[("2", 1.5)])),
            ("1", w(&[("2", f64::NAN)])),
            ("1", w(&[("2", 0.1), ("3", 0.1)])),
            ("$LATEST", w(&[("2", 0.1)])),
            ("1", w(&[("$LATEST", 0.1)])),
            ("1", w(&[("1", 0.1)])),
            ("1", w(&[("live", 0.1)])),
        ] {
            assert!(validate_routing(v, &ws).is_err(), "{v} {ws:?}");
        }
        let a = Alias {
            function: "f".into(),
            name: "live".into(),
            version: "1".into(),
            description: String::new(),
            weights: w(&[("2", 0.25)]),
            revision: 1,
        };
        assert_eq!(a.pick(0.1), "2");
        assert_eq!(a.pick(0.25), "1");
        assert_eq!(a.pick(0.9), "1");
    }
}
