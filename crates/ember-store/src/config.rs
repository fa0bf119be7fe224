//! Where the S3 store is and how to sign for it: from the environment, never from the
//! command line, where every user of the machine could read the secret in the process list
//! (the daemon keeps these variables from the tools it runs: `ember_node::envs::SECRET_VARS`).

use std::time::Duration;

/// A secret that never shows in a `Debug` print or a log line.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is set but {missing} is not: the S3 store needs both (or neither)")]
    Missing {
        var: &'static str,
        missing: &'static str,
    },
    #[error("{var}={value:?}: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http://127.0.0.1:3900`; plain HTTP is accepted (a store on loopback or a private
    /// network), as is HTTPS.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub connect_timeout: Duration,
    /// One request; a call (with its retries) may take up to about three of these.
    pub request_timeout: Duration,
    /// Every key under this prefix (`ember/`, to share a bucket); empty for none.
    pub prefix: String,
    /// How often a node collects the store's garbage (`EMBER_S3_GC_SECONDS`, default an
    /// hour); `None` (0): never.
    pub gc_every: Option<Duration>,
}

/// The variables [`S3Config::from_env`] reads.
pub const ENDPOINT_VAR: &str = "EMBER_S3_ENDPOINT";
pub const BUCKET_VAR: &str = "EMBER_S3_BUCKET";
pub const REGION_VAR: &str = "EMBER_S3_REGION";
pub const KEY_ID_VAR: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_VAR: &str = "AWS_SECRET_ACCESS_KEY";
pub const TIMEOUT_VAR: &str = "EMBER_S3_TIMEOUT_MS";
pub const PREFIX_VAR: &str = "EMBER_S3_PREFIX";
pub const GC_VAR: &str = "EMBER_S3_GC_SECONDS";

impl S3Config {
    /// From the environment: `EMBER_S3_ENDPOINT` and `EMBER_S3_BUCKET` (none: no S3
    /// store), `EMBER_S3_REGION` (default `us-east-1`), the AWS SDKs' `AWS_ACCESS_KEY_ID`
    /// and `AWS_SECRET_ACCESS_KEY`, `EMBER_S3_TIMEOUT_MS` for one request (default 2000;
    /// the connect timeout is a quarter of it), `EMBER_S3_PREFIX` for the keys, and
    /// `EMBER_S3_GC_SECONDS` between a node's garbage collections (default 3600; 0: none).
    pub fn from_env() -> Result<Option<S3Config>, ConfigError> {
        S3Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`S3Config::from_env`], reading variables through `get`.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<S3Config>, ConfigError> {
        let Some(endpoint) = get(ENDPOINT_VAR) else {
            return Ok(None);
        };
        let need = |var: &'static str| {
            get(var)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing {
                    var: ENDPOINT_VAR,
                    missing: var,
                })
        };
        let Some(rest) = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
        else {
            return Err(ConfigError::Invalid {
                var: ENDPOINT_VAR,
                value: endpoint,
                why: "an http:// or https:// URL is needed".into(),
            });
        };
        if rest
            .split('/')
            .next()
            .is_some_and(|host| host.contains('@'))
        {
            return Err(ConfigError::Invalid {
                var: ENDPOINT_VAR,
                value: "(not shown: it holds credentials)".into(),
                why: format!(
                    "credentials go in {KEY_ID_VAR} and {SECRET_VAR}, not in the URL (it is logged)"
                ),
            });
        }
        let bucket = need(BUCKET_VAR)?;
        let gc_every = match get(GC_VAR) {
            None => Some(Duration::from_secs(3600)),
            Some(v) => match v.parse::<u64>() {
                Ok(0) => None,
                Ok(s @ 1..=604_800) => Some(Duration::from_secs(s)),
                _ => {
                    return Err(ConfigError::Invalid {
                        var: GC_VAR,
                        value: v,
                        why: "seconds from 1 to 604800 (a week), or 0 for never".into(),
                    });
                }
            },
        };
        let timeout = match get(TIMEOUT_VAR) {
            None => Duration::from_millis(2000),
            Some(v) => match v.parse::<u64>() {
                Ok(ms @ 10..=600_000) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Invalid {
                        var: TIMEOUT_VAR,
                        value: v,
                        why: "milliseconds from 10 to 600000 are accepted".into(),
                    });
                }
            },
        };
        Ok(Some(S3Config {
            endpoint,
            bucket,
            region: get(REGION_VAR)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: need(KEY_ID_VAR)?,
            secret_access_key: Secret::new(need(SECRET_VAR)?),
            connect_timeout: timeout / 4,
            request_timeout: timeout,
            gc_every,
            prefix: match get(PREFIX_VAR) {
                None => String::new(),
                Some(p) if crate::Key::new(p.trim_end_matches('/')).is_ok() => {
                    p.trim_end_matches('/').to_string()
                }
                Some(p) => {
                    return Err(ConfigError::Invalid {
                        var: PREFIX_VAR,
                        value: p,
                        why: "letters, digits and ._-/ are accepted".into(),
                    });
                }
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn no_endpoint_is_no_store_and_a_partial_one_says_what_is_missing() {
        assert!(S3Config::from_lookup(lookup(&[])).unwrap().is_none());
        let e = S3Config::from_lookup(lookup(&[(ENDPOINT_VAR, "http://x:1")])).unwrap_err();
        assert!(e.to_string().contains(BUCKET_VAR), "{e}");
        let e =
            S3Config::from_lookup(lookup(&[(ENDPOINT_VAR, "x:1"), (BUCKET_VAR, "b")])).unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
        let full = [
            (ENDPOINT_VAR, "http://127.0.0.1:3900"),
            (BUCKET_VAR, "ember"),
            (KEY_ID_VAR, "GK1"),
            (SECRET_VAR, "hush"),
            (TIMEOUT_VAR, "500"),
        ];
        let c = S3Config::from_lookup(lookup(&full)).unwrap().unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert!(
            !format!("{c:?}").contains("hush"),
            "the secret stays out of prints"
        );
        let mut bad = full.to_vec();
        bad[4] = (TIMEOUT_VAR, "0");
        assert!(S3Config::from_lookup(lookup(&bad)).is_err());
        let mut userinfo = full.to_vec();
        userinfo[0] = (ENDPOINT_VAR, "http://me:hush@127.0.0.1:3900");
        let e = S3Config::from_lookup(lookup(&userinfo))
            .unwrap_err()
            .to_string();
        assert!(e.contains(KEY_ID_VAR) && !e.contains("hush"), "{e}");
        let mut empty_region = full.to_vec();
        empty_region.push((REGION_VAR, ""));
        let c = S3Config::from_lookup(lookup(&empty_region))
            .unwrap()
            .unwrap();
        assert_eq!(c.region, "us-east-1");
    }
}
