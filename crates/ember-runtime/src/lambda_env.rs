//! What every runtime tells a function about itself as Lambda does: its reserved environment
//! variables, and the names in its ARN. The Python runtime's `context` reads them back from
//! the environment, as Lambda's own Python runtime does.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

/// The region and account in the ARNs Ember shows (Lambda clients want ARNs to parse).
pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "000000000000";
/// The version an unqualified function is: until versions are published, the only one.
pub const LATEST: &str = "$LATEST";

/// `arn:aws:lambda:<region>:<account>:function:<name>`; for a published version (`name:N`)
/// its qualified ARN.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
}

/// A function as the node names it, split into Lambda's name and version: a published
/// version is served as a function of its own named `name:N`; `name` alone is `$LATEST`.
pub fn split_qualified(internal: &str) -> (&str, Option<&str>) {
    match internal.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (internal, None),
    }
}

/// How an instance came to be, as `AWS_LAMBDA_INITIALIZATION_TYPE` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initialization {
    /// Booted, or restored from a dependency image (its function's code imported anew).
    OnDemand,
    /// Restored from its function's snapshot, as Lambda SnapStart's instances are.
    SnapStart,
}

impl Initialization {
    pub fn as_str(self) -> &'static str {
        match self {
            Initialization::OnDemand => "on-demand",
            Initialization::SnapStart => "snap-start",
        }
    }
}

/// Who an instance is.
pub struct Identity<'a> {
    pub function: &'a str,
    pub instance_id: &'a str,
    pub handler: &'a str,
    pub memory_mb: u32,
    /// Where the instance sees its function's code (`LAMBDA_TASK_ROOT`).
    pub task_root: &'a Path,
    /// Where it sees the runtime's own files (`LAMBDA_RUNTIME_DIR`).
    pub runtime_dir: &'a Path,
    pub region: &'a str,
    pub initialization: Initialization,
}

/// Lambda's reserved variables, plus `EMBER_INSTANCE_ID`, a `PATH` of `path` and, as
/// Lambda's, the places of a function's layers (`/opt/bin` last on `PATH`,
/// `LD_LIBRARY_PATH`, `NODE_PATH`). The function's own variables go over these (the node
/// refuses the reserved names).
pub fn lambda_env(id: &Identity<'_>, path: String) -> BTreeMap<String, String> {
    let (function, version) = split_qualified(id.function);
    let version = version.unwrap_or(LATEST);
    let task_root = id.task_root.to_string_lossy().into_owned();
    // As Lambda's: the system's libraries first (a zip cannot replace what the runtime
    // itself loads), then the function's, then its layers'.
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let libs = format!(
        "/lib/{triple}:/usr/lib/{triple}:/lib:/usr/lib:{task_root}:{task_root}/lib:/opt/lib"
    );
    [
        ("PATH", format!("{path}:/opt/bin")),
        ("LD_LIBRARY_PATH", libs),
        (
            "NODE_PATH",
            "/opt/nodejs/node20/node_modules:/opt/nodejs/node22/node_modules:\
             /opt/nodejs/node18/node_modules:/opt/nodejs/node_modules"
                .into(),
        ),
        ("LANG", "C.UTF-8".into()),
        ("HOME", "/tmp".into()),
        ("TZ", ":UTC".into()),
        ("_HANDLER", id.handler.into()),
        ("LAMBDA_TASK_ROOT", task_root),
        (
            "LAMBDA_RUNTIME_DIR",
            id.runtime_dir.to_string_lossy().into_owned(),
        ),
        ("AWS_REGION", id.region.into()),
        ("AWS_DEFAULT_REGION", id.region.into()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", id.memory_mb.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", version.into()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE",
            id.initialization.as_str().into(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            log_stream(std::time::SystemTime::now(), version),
        ),
        ("EMBER_INSTANCE_ID", id.instance_id.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A log stream's name as Lambda gives one to each execution environment:
/// `YYYY/MM/DD/[<version>]` and 32 hex digits, new for each instance.
pub fn log_stream(now: std::time::SystemTime, version: &str) -> String {
    let day = humantime::format_rfc3339_seconds(now).to_string();
    let day = day.get(..10).unwrap_or("1970-01-01").replace('-', "/");
    // Two 64-bit words from the standard library's randomly keyed hasher: unique enough to
    // tell instances apart, and no dependency for it.
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            now.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{day}/[{version}]{:016x}{:016x}", word(), word())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_stream_is_named_as_lambda_names_one() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_728_172_800);
        let s = log_stream(t, LATEST);
        let (day, rest) = s.split_at(11);
        assert_eq!(day, "2024/10/06/");
        let hex = rest.strip_prefix("[$LATEST]").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{s}");
        assert_ne!(log_stream(t, LATEST), s, "each instance its own");
        assert!(log_stream(t, "3").starts_with("2024/10/06/[3]"));
    }

    #[test]
    fn the_reserved_variables_are_lambdas() {
        let id = Identity {
            function: "f",
            instance_id: "f-7",
            handler: "app.handler",
            memory_mb: 256,
            task_root: Path::new("/ember/code/abc"),
            runtime_dir: Path::new("/ember/runtime/def"),
            region: REGION,
            initialization: Initialization::SnapStart,
        };
        let env = lambda_env(&id, "/usr/bin:/bin".into());
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("$LATEST"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_LAMBDA_INITIALIZATION_TYPE"), Some("snap-start"));
        assert_eq!(get("AWS_LAMBDA_LOG_GROUP_NAME"), Some("/aws/lambda/f"));
        assert_eq!(get("AWS_REGION"), get("AWS_DEFAULT_REGION"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some("/ember/code/abc"));
        assert_eq!(get("_HANDLER"), Some("app.handler"));
        assert_eq!(get("TZ"), Some(":UTC"));
        assert_eq!(
            function_arn("f"),
            "arn:aws:lambda:us-east-1:000000000000:function:f"
        );
        let v3 = lambda_env(
            &Identity {
                function: "f:3",
                ..id
            },
            String::new(),
        );
        assert_eq!(v3["AWS_LAMBDA_FUNCTION_NAME"], "f");
        assert_eq!(v3["AWS_LAMBDA_FUNCTION_VERSION"], "3");
        assert_eq!(v3["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/f");
        assert!(v3["AWS_LAMBDA_LOG_STREAM_NAME"].contains("/[3]"));
    }
}
