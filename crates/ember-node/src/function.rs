//! What a function is, and the rules its name and configuration must follow. Every rule
//! broken is reported with the rule's text, so a user knows what to change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ember_runtime::python::reserved_env;

pub use ember_runtime::lambda_env::{ACCOUNT, LATEST, REGION, function_arn};

/// What network an instance sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// An empty network namespace: no interface but a loopback that is down.
    #[default]
    None,
    /// The host's network (for functions that call out).
    Host,
}

/// When a function's instance is snapshotted (a layer over its dependency image, or whole
/// without one), so that later cold starts skip its init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum SnapshotPoint {
    /// After its handler was imported and module-level code ran, before its first event (as
    /// Lambda SnapStart): no request data is in the snapshot.
    #[default]
    AfterInit,
    /// After its first invocation returned (as vHive): what the first event left in memory
    /// (caches, lazily made clients, the event itself in freed memory) is in the snapshot and
    /// in every instance started from it.
    AfterFirstInvoke,
    /// Never snapshotted.
    Off,
}

impl SnapshotPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPoint::AfterInit => "after-init",
            SnapshotPoint::AfterFirstInvoke => "after-first-invoke",
            SnapshotPoint::Off => "off",
        }
    }

    /// Parses a point as a user writes it.
    pub fn parse(s: &str) -> Result<SnapshotPoint, InvalidFunction> {
        match s {
            "after-init" => Ok(SnapshotPoint::AfterInit),
            "after-first-invoke" => Ok(SnapshotPoint::AfterFirstInvoke),
            "off" => Ok(SnapshotPoint::Off),
            _ => Err(invalid(
                "snapshot",
                s,
                "must be after-init, after-first-invoke or off",
            )),
        }
    }
}

impl TryFrom<String> for SnapshotPoint {
    type Error = InvalidFunction;
    fn try_from(s: String) -> Result<SnapshotPoint, InvalidFunction> {
        SnapshotPoint::parse(&s)
    }
}

/// How a function's code runs. Lambda's names are accepted as aliases: `python3.8` to
/// `python3.13` run on the node's interpreter (which `ember ls` names), and `provided.al2`
/// and `provided.al2023` run the executable as `provided` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `handler` is `module.function`, run by Ember's Python bootstrap.
    #[default]
    #[serde(alias = "python3.8", alias = "python3.9", alias = "python3.10")]
    #[serde(alias = "python3.11", alias = "python3.12", alias = "python3.13")]
    Python,
    /// Lambda's custom runtime: the code's `bootstrap` executable, talking to the node's
    /// Runtime API at `AWS_LAMBDA_RUNTIME_API`; `handler` is passed on as `_HANDLER`.
    #[serde(alias = "provided.al2", alias = "provided.al2023")]
    Provided,
    /// One process per request: `handler` names an executable in the code, which reads the
    /// event on stdin and writes the result on stdout. Always cold-only.
    Native,
    /// Node.js: `handler` is `file.export` (`index.handler`: `index.js`, `.mjs` or `.cjs`),
    /// run on the node's Node.js by Ember's JavaScript bootstrap, a Lambda Runtime API
    /// client (instances speak the Runtime API, as `provided` ones do).
    #[serde(alias = "nodejs18.x", alias = "nodejs20.x", alias = "nodejs22.x")]
    Node,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Provided => "provided",
            Runtime::Native => "native",
            Runtime::Node => "node",
        }
    }

    /// Parses a runtime name as a user gives it (Ember's or Lambda's).
    pub fn parse(name: &str) -> Result<Runtime, InvalidFunction> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
            invalid(
                "runtime",
                name,
                "must be python (or python3.8 to python3.13), node (or nodejs18.x, \
                 nodejs20.x, nodejs22.x), provided (or provided.al2, provided.al2023) or native",
            )
        })
    }

    // What each runtime is, decided here once: the node asks these rather than matching on
    // the runtime itself.

    /// Instances run Ember's Python runtime: the one dependency images and function
    /// snapshots hold, with its protocol's snapshot point.
    pub fn restorable(self) -> bool {
        self == Runtime::Python
    }

    /// Each instance serves one request (a native executable reads one event and exits).
    pub fn one_request_per_instance(self) -> bool {
        self == Runtime::Native
    }

    /// Instances can be made ahead of demand, their executable stopped before its first
    /// instruction (the pre-made rung).
    pub fn can_premake(self) -> bool {
        self == Runtime::Native
    }

    /// Instances speak the Lambda Runtime API over HTTP (a port in their sandbox).
    pub fn runtime_api(self) -> bool {
        matches!(self, Runtime::Provided | Runtime::Node)
    }

    /// Instances see the function's package environment (Python's, or a `provided`
    /// bootstrap's `python3`).
    pub fn sees_packages(self) -> bool {
        matches!(self, Runtime::Python | Runtime::Provided)
    }

    /// Instances see Ember's runtime directory (its Python and JavaScript bootstraps).
    pub fn sees_bootstrap(self) -> bool {
        matches!(self, Runtime::Python | Runtime::Node)
    }

    /// The executable a function of this runtime starts, relative to its code, and the rule
    /// a deploy states when it is missing; `None` for Ember's Python runtime.
    pub fn entry_point(self, handler: &str) -> Option<(&str, &'static str)> {
        match self {
            Runtime::Python => None,
            Runtime::Provided => Some((
                "bootstrap",
                "a provided runtime starts the code's 'bootstrap'",
            )),
            Runtime::Native => Some((handler, "a native function's handler names its executable")),
            Runtime::Node => None,
        }
    }
}

/// A function URL's configuration (the Lambda API's `FunctionUrlConfig`, checked there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionUrl {
    /// `NONE` (public) or `AWS_IAM` (the daemon's token).
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoke_mode: Option<String>,
}

/// What becomes of a function's asynchronous invocations (Lambda's event-invoke config):
/// how often a failed one is tried again, how long one may wait, and the functions that get
/// the record of each success and failure (Lambda's destinations; functions only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventInvoke {
    /// Retries after a failed attempt: 0 to 2 (the node's 2 when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Seconds an event may wait to run: 60 to 21600 (the node's `event_max_age` when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u32>,
    /// A function (name or ARN, with a qualifier or not) invoked asynchronously with the
    /// record of each invocation that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// Likewise for each that was dropped: retries exhausted, or too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Seconds since the Unix epoch of its last change.
    #[serde(default)]
    pub updated_at: u64,
}

/// The function (name and qualifier) a destination names: a function ARN of this node's
/// region and account, or a name.
pub fn parse_destination(d: &str) -> Result<(String, Option<String>), InvalidFunction> {
    let refuse = || {
        invalid(
            "DestinationConfig",
            d,
            "must be a Lambda function of this node (its name or ARN): Ember sends destination \
             records to functions only; SQS, SNS, EventBridge and S3 destinations are not \
             supported",
        )
    };
    let rest = match d.strip_prefix("arn:aws:lambda:") {
        Some(rest) => rest
            .strip_prefix(&format!("{REGION}:{ACCOUNT}:function:"))
            .ok_or_else(refuse)?,
        None if d.starts_with("arn:") => return Err(refuse()),
        None => d,
    };
    let (name, qualifier) = match rest.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (rest, None),
    };
    validate_name(name).map_err(|_| refuse())?;
    Ok((name.to_string(), qualifier))
}

impl EventInvoke {
    pub fn validate(&self) -> Result<(), InvalidFunction> {
        if let Some(r) = self.max_retries
            && r > 2
        {
            return Err(invalid(
                "MaximumRetryAttempts",
                r.to_string(),
                "must be from 0 to 2",
            ));
        }
        if let Some(a) = self.max_age_s
            && !(60..=21_600).contains(&a)
        {
            return Err(invalid(
                "MaximumEventAgeInSeconds",
                a.to_string(),
                "must be from 60 to 21600",
            ));
        }
        for d in self.on_success.iter().chain(&self.on_failure) {
            parse_destination(d)?;
        }
        Ok(())
    }
}

/// A function's configuration as a user gives it (code travels separately).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    #[serde(default)]
    pub runtime: Runtime,
    pub handler: String,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Network,
    /// Every request gets a fresh instance, which ends with it; none is kept idle.
    #[serde(default)]
    pub cold_only: bool,
    /// Whether the function may start from a dependency image (and, with automatic images,
    /// have one built for its packages on deploy). False: every start that is not warm is a
    /// cold boot. Records from before the switch existed have it on.
    #[serde(default = "images_on", skip_serializing_if = "is_on")]
    pub images: bool,
    /// When the node snapshots an initialized instance of the function (records from before
    /// snapshots load with the default, after-init).
    #[serde(default)]
    pub snapshot: SnapshotPoint,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The runtime's name as the user gave it (`python3.12`, `provided.al2023`), shown back
    /// by the Lambda API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_name: Option<String>,
    /// A Lambda execution role, kept and shown; Ember does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Lambda tags (other than Ember's own `ember:` settings), kept and shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Lambda's resource-based policy statements (AddPermission), kept and shown; Ember does
    /// not evaluate them (the daemon's token decides access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<serde_json::Value>,
    /// The function's URL configuration, when it has one: it is served at
    /// `/lambda-url/<name>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<FunctionUrl>,
    /// How the runtime writes the function's own log records (Lambda's `LoggingConfig`):
    /// `Text` (the default) or `JSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// The lowest level of the function's log records the runtime writes (Lambda's
    /// `ApplicationLogLevel`: TRACE, DEBUG, INFO, WARN, ERROR or FATAL; with JSON only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// `max_instances` was reserved (Lambda's PutFunctionConcurrency), not derived from the
    /// node's capacity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub concurrency_reserved: bool,
    /// Lambda layer versions (`arn:aws:lambda:<region>:<account>:layer:<name>:<n>`, or
    /// `<name>:<n>`), at most five, their files merged in this order at /opt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// The size of its instances' /tmp in MiB (Lambda's `EphemeralStorage`); the node's
    /// (`--tmp-mb`) when none. A tmpfs: what it holds counts against `memory_mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_mb: Option<u32>,
    /// What becomes of its asynchronous invocations; the node's defaults when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_invoke: Option<EventInvoke>,
    /// Instances kept started and ready whatever the keep-alive (Lambda's provisioned
    /// concurrency), at most `max_instances`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_instances: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub const DEFAULT_MEMORY_MB: u32 = 512;
pub const DEFAULT_TIMEOUT_S: u32 = 30;
pub const DEFAULT_MAX_INSTANCES: u32 = 10;

fn images_on() -> bool {
    true
}
fn is_on(b: &bool) -> bool {
    *b
}
fn default_memory() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_S
}
fn default_max_instances() -> u32 {
    DEFAULT_MAX_INSTANCES
}

/// A deployed function: its configuration, where its code and packages are, and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: String,
    pub version: u64,
    #[serde(flatten)]
    pub config: FunctionConfig,
    /// BLAKE3 of the code tree; the directory under `code/` with this name holds it.
    pub code_hash: String,
    /// The package environment serving this function.
    pub env_key: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    /// SHA-256 of the zip archive last uploaded, base64 (Lambda's `CodeSha256`); empty for
    /// records from before it was kept.
    #[serde(default)]
    pub code_sha256: String,
    #[serde(default)]
    pub code_size: u64,
    /// The merged tree of the function's layers (`config.layers`, in order) in the code
    /// store, mounted read-only at /opt in its instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_hash: Option<String>,
}

impl FunctionRecord {
    /// True when no instance of this function serves more than one request.
    pub fn cold_only(&self) -> bool {
        self.config.cold_only || self.config.runtime.one_request_per_instance()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field} {value:?} is invalid: {rule}")]
pub struct InvalidFunction {
    pub field: &'static str,
    pub value: String,
    pub rule: String,
}

pub(crate) fn invalid(
    field: &'static str,
    value: impl Into<String>,
    rule: impl Into<String>,
) -> InvalidFunction {
    InvalidFunction {
        field,
        value: value.into(),
        rule: rule.into(),
    }
}

/// A function's name, as Lambda's: `[A-Za-z0-9_-]{1,64}` (CloudFormation makes mixed-case
/// names). Names are case-sensitive; they name directories and cgroups, which take them as
/// they are.
pub fn validate_name(name: &str) -> Result<(), InvalidFunction> {
    if lambda_name(name, 64) {
        Ok(())
    } else {
        Err(invalid(
            "name",
            name,
            "must match [A-Za-z0-9_-]{1,64}: letters, digits, '-' and '_', at most 64",
        ))
    }
}

/// Whether `s` is 1 to `max` of `[A-Za-z0-9_-]`: Lambda's rule for the names of functions,
/// aliases and layers.
pub(crate) fn lambda_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn is_js_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f == '_' || f == '$' || f.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch == '$' || ch.is_ascii_alphanumeric())
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f == '_' || f.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
}

impl FunctionConfig {
    /// The variables the runtime reads its logging from (`AWS_LAMBDA_LOG_FORMAT`,
    /// `AWS_LAMBDA_LOG_LEVEL`), over the function's own.
    pub fn runtime_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        if let Some(f) = &self.log_format {
            env.insert("AWS_LAMBDA_LOG_FORMAT".into(), f.to_uppercase());
        }
        if let Some(l) = &self.log_level {
            env.insert("AWS_LAMBDA_LOG_LEVEL".into(), l.to_uppercase());
        }
        env
    }

    /// The instance's memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mb) << 20
    }

    pub fn validate(&self) -> Result<(), InvalidFunction> {
        validate_handler(self.runtime, &self.handler)?;
        crate::layers::validate_layers(&self.layers)?;
        if let Some(e) = &self.event_invoke {
            e.validate()?;
        }
        if self.min_instances > 0 && (self.cold_only || self.runtime.one_request_per_instance()) {
            return Err(invalid(
                "min_instances",
                self.min_instances.to_string(),
                "cannot be kept ready for a function whose instances serve one request each \
                 (cold-only or native); pre-made sandboxes (`ember serve --prestart`) serve \
                 those",
            ));
        }
        if self.min_instances > self.max_instances {
            return Err(invalid(
                "min_instances",
                self.min_instances.to_string(),
                format!(
                    "must be at most max_instances ({}): the instances kept ready are some \
                     of those the function may have",
                    self.max_instances
                ),
            ));
        }
        if let Some(t) = self.tmp_mb
            && !(1..=10_240).contains(&t)
        {
            return Err(invalid(
                "tmp_mb",
                t.to_string(),
                "must be from 1 to 10240 (MiB)",
            ));
        }
        if self.description.len() > 256 {
            return Err(invalid(
                "description",
                format!("{} bytes", self.description.len()),
                "at most 256 bytes",
            ));
        }
        if let Some(n) = &self.runtime_name
            && (n.len() > 32 || Runtime::parse(n).ok() != Some(self.runtime))
        {
            return Err(invalid(
                "runtime_name",
                n,
                "must name the function's runtime (e.g. python3.12 for python)",
            ));
        }
        if self.role.as_ref().is_some_and(|r| r.len() > 2048) {
            return Err(invalid("role", "(too long)", "at most 2048 bytes"));
        }
        if let Some(f) = &self.log_format
            && !matches!(f.as_str(), "Text" | "JSON")
        {
            return Err(invalid("log_format", f, "must be Text or JSON"));
        }
        if let Some(l) = &self.log_level {
            if !matches!(
                l.as_str(),
                "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR" | "FATAL"
            ) {
                return Err(invalid(
                    "log_level",
                    l,
                    "must be TRACE, DEBUG, INFO, WARN, ERROR or FATAL",
                ));
            }
            if self.log_format.as_deref() != Some("JSON") {
                return Err(invalid(
                    "log_level",
                    l,
                    "needs log_format JSON (as Lambda's ApplicationLogLevel does)",
                ));
            }
        }
        if !(128..=10240).contains(&self.memory_mb) {
            return Err(invalid(
                "memory_mb",
                self.memory_mb.to_string(),
                "must be between 128 and 10240",
            ));
        }
        if !(1..=900).contains(&self.timeout_s) {
            return Err(invalid(
                "timeout_s",
                self.timeout_s.to_string(),
                "must be between 1 and 900 seconds",
            ));
        }
        if !(1..=1000).contains(&self.max_instances) {
            return Err(invalid(
                "max_instances",
                self.max_instances.to_string(),
                "must be between 1 and 1000",
            ));
        }
        validate_packages(&self.packages)?;
        validate_env(&self.env)
    }
}

/// The handler's rule depends on the runtime.
fn validate_handler(runtime: Runtime, h: &str) -> Result<(), InvalidFunction> {
    match runtime {
        Runtime::Python => {
            let parts: Vec<&str> = h.split('.').collect();
            if h.len() > 128 || parts.len() < 2 || !parts.iter().all(|p| is_identifier(p)) {
                return Err(invalid(
                    "handler",
                    h,
                    "must be module.function (e.g. main.handler), made of Python identifiers",
                ));
            }
        }
        Runtime::Provided => {
            if h.len() > 128 || h.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    "handler",
                    h,
                    "is passed to the bootstrap as _HANDLER: at most 128 characters, no control \
                     characters",
                ));
            }
        }
        Runtime::Node => {
            // `file.export`: the file's path may have directories (`src/app.handler`).
            let ok = h.len() <= 128
                && h.rsplit_once('.').is_some_and(|(file, export)| {
                    !file.is_empty()
                        && is_js_identifier(export)
                        && std::path::Path::new(file)
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                });
            if !ok {
                return Err(invalid(
                    "handler",
                    h,
                    "must be file.export (e.g. index.handler), the file relative to the code, \
                     without '..'",
                ));
            }
        }
        Runtime::Native => {
            let path = std::path::Path::new(h);
            let ok = !h.is_empty()
                && h.len() <= 128
                && !h.chars().any(|c| c.is_control())
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(invalid(
                    "handler",
                    h,
                    "must be the path of the executable inside the code (e.g. bin/hello), \
                     relative, without '..'",
                ));
            }
        }
    }
    Ok(())
}

/// A package list, for a function or an image: at most 64 pip requirements.
pub fn validate_packages(packages: &[String]) -> Result<(), InvalidFunction> {
    if packages.len() > 64 {
        return Err(invalid(
            "packages",
            format!("{} entries", packages.len()),
            "at most 64 requirements",
        ));
    }
    packages.iter().try_for_each(|p| validate_requirement(p))
}

/// A pip requirement: a distribution name, optional extras, version specifiers and an
/// environment marker. Options (`-r`, `--index-url`), URLs and paths are refused, since they
/// would let a deploy read files of the host or fetch from anywhere.
pub fn validate_requirement(req: &str) -> Result<(), InvalidFunction> {
    const RULE: &str = "must be a pip requirement such as 'numpy' or 'pandas==2.2.3': a name, \
        optional [extras], version specifiers and a '; marker'; no options, URLs or paths";
    let t = req.trim();
    let ok = !t.is_empty()
        && t.len() <= 200
        && t.as_bytes()[0].is_ascii_alphanumeric()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._-[],<>=!~;:'\"()*+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid("package", req, RULE))
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), InvalidFunction> {
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if env.len() > 64 || total > 4096 {
        return Err(invalid(
            "env",
            format!("{} variables, {total} bytes", env.len()),
            "at most 64 variables and 4 KiB in all",
        ));
    }
    for (k, v) in env {
        if !is_identifier(k) {
            return Err(invalid("env", k, "names must be letters, digits and '_'"));
        }
        if reserved_env(k) {
            return Err(invalid(
                "env",
                k,
                "names starting with EMBER_, AWS_LAMBDA_ or PYTHON are reserved",
            ));
        }
        if v.contains('\0') {
            return Err(invalid("env", k, "values must not contain NUL"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(handler: &str) -> FunctionConfig {
        serde_json::from_value(serde_json::json!({ "handler": handler })).unwrap()
    }

    #[test]
    fn event_invoke_settings_are_in_lambdas_ranges_and_destinations_are_functions() {
        let ok = EventInvoke {
            max_retries: Some(0),
            max_age_s: Some(60),
            on_success: Some(function_arn("dest")),
            on_failure: Some("dest:live".into()),
            updated_at: 1,
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            parse_destination(&function_arn("d:3")),
            Ok(("d".to_string(), Some("3".to_string())))
        );
        for bad in [
            EventInvoke {
                max_retries: Some(3),
                ..ok.clone()
            },
            EventInvoke {
                max_age_s: Some(59),
                ..ok.clone()
            },
            EventInvoke {
                max_age_s: Some(21_601),
                ..ok.clone()
            },
            EventInvoke {
                on_failure: Some("arn:aws:sqs:us-east-1:000000000000:q".into()),
                ..ok.clone()
            },
            EventInvoke {
                on_success: Some("arn:aws:lambda:eu-west-1:1:function:x".into()),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_pattern() {
        for ok in [
            "a",
            "hello-world",
            "0x",
            "A",
            "My_Stack-Fn-1ABC",
            "-a",
            &"a".repeat(64),
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a.b", "a/b", "a b", &"a".repeat(65), "é", "..", "a:b"] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.to_string().contains("[A-Za-z0-9_-]{1,64}"), "{bad}");
        }
    }

    #[test]
    fn handlers_are_dotted_identifiers() {
        assert!(config("main.handler").validate().is_ok());
        assert!(config("pkg.mod.handler").validate().is_ok());
        for bad in [
            "main", "main.", ".h", "ma in.h", "../x.h", "main.h-x", "1m.h",
        ] {
            let err = config(bad).validate().unwrap_err();
            assert_eq!(err.field, "handler", "{bad}");
        }
    }

    #[test]
    fn requirements_refuse_options_urls_and_paths() {
        for ok in [
            "numpy",
            "pandas==2.2.3",
            "requests[socks]>=2,<3",
            "a; python_version>'3'",
        ] {
            assert!(validate_requirement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-r /etc/passwd",
            "--index-url=x",
            "pkg @ https://x/y.whl",
            "./local",
            "",
            "a\nb",
        ] {
            assert!(validate_requirement(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_and_env_are_checked() {
        let mut c = config("m.h");
        c.memory_mb = 64;
        assert_eq!(c.validate().unwrap_err().field, "memory_mb");
        let mut c = config("m.h");
        c.timeout_s = 0;
        assert_eq!(c.validate().unwrap_err().field, "timeout_s");
        let mut c = config("m.h");
        c.env.insert("AWS_LAMBDA_X".into(), "1".into());
        assert!(c.validate().unwrap_err().rule.contains("reserved"));
        let mut c = config("m.h");
        c.env.insert("GOOD_NAME".into(), "v".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn images_default_on_and_old_records_load() {
        let c = config("m.h");
        assert!(c.images);
        // On is not written, so records read by an older daemon stay as they were.
        assert!(serde_json::to_value(&c).unwrap().get("images").is_none());
        let off: FunctionConfig =
            serde_json::from_value(serde_json::json!({"handler": "m.h", "images": false})).unwrap();
        assert!(!off.images);
        assert_eq!(serde_json::to_value(&off).unwrap()["images"], false);
        let host: FunctionConfig =
            serde_json::from_value(serde_json::json!({"handler": "m.h", "network": "host"}))
                .unwrap();
        assert_eq!(host.network, Network::Host);
    }

    #[test]
    fn snapshot_points_default_after_init_and_parse() {
        let c = config("m.h");
        assert_eq!(c.snapshot, SnapshotPoint::AfterInit);
        assert_eq!(serde_json::to_value(&c).unwrap()["snapshot"], "after-init");
        for p in ["after-init", "after-first-invoke", "off"] {
            let c: FunctionConfig =
                serde_json::from_value(serde_json::json!({"handler": "m.h", "snapshot": p}))
                    .unwrap();
            assert_eq!(c.snapshot.as_str(), p);
            assert_eq!(SnapshotPoint::parse(p), Ok(c.snapshot));
        }
        let err = SnapshotPoint::parse("after-lunch").unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot \"after-lunch\" is invalid: must be after-init, after-first-invoke or off"
        );
        let r: Result<FunctionConfig, _> =
            serde_json::from_value(serde_json::json!({"handler": "m.h", "snapshot": "on"}));
        assert!(r.unwrap_err().to_string().starts_with(
            "snapshot \"on\" is invalid: must be after-init, after-first-invoke or off"
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<FunctionConfig, _> =
            serde_json::from_value(serde_json::json!({"handler": "m.h", "memory": 3}));
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }
}
