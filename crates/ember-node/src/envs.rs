//! Package environments: one virtual environment per distinct package set, built once with
//! pip from the base interpreter and shared by every function that uses the set.
//!
//! ```text
//! envs/<key>/            the venv (created --without-pip; pip runs from the base python)
//! envs/<key>/ember-env.json   written last, atomically: the environment is complete
//! envs/<key>.lock        flock held while building, so daemons sharing envs/ build once
//! ```
//!
//! `key` is BLAKE3 of the base interpreter's version and the sorted requirement strings. A
//! directory without `ember-env.json` is a build a crash interrupted; it is rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What `ember-env.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageEnv {
    pub key: String,
    pub packages: Vec<String>,
    /// Top-level modules of the requested distributions, preloaded by the runtime.
    pub imports: Vec<String>,
    /// Every installed distribution and its version.
    pub installed: BTreeMap<String, String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl PackageEnv {
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("pip could not install {packages:?}:\n{output}")]
    Pip {
        packages: Vec<String>,
        output: String,
    },
    #[error("{what} failed for environment {dir}")]
    Io {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} in {dir} failed:\n{output}")]
    Tool {
        what: &'static str,
        dir: PathBuf,
        output: String,
    },
    #[error("environment {0} is not installed on this node")]
    Missing(String),
}

impl EnvError {
    pub fn is_user_error(&self) -> bool {
        matches!(self, EnvError::Pip { .. })
    }
}

/// Lists what a set of requirements installs and which top-level modules they provide.
const INSPECT_PY: &str = r#"
import json, re, sys
from importlib import metadata
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
wanted = {norm(re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0]) for r in sys.argv[1:]}
imports, installed = [], {}
for d in metadata.distributions():
    name = norm(d.metadata["Name"])
    installed[name] = d.version
    if name not in wanted:
        continue
    tops = (d.read_text("top_level.txt") or "").split()
    if not tops:
        for f in d.files or []:
            p = f.parts
            if p[0].endswith((".dist-info", ".data")) or p[0] == "..":
                continue
            if len(p) == 1 and p[0].endswith(".py"):
                tops.append(p[0][:-3])
            elif len(p) == 2 and p[1] == "__init__.py":
                tops.append(p[0])
    for t in tops:
        if t.isidentifier() and not t.startswith("_") and t not in imports:
            imports.append(t)
print(json.dumps({"imports": sorted(imports), "installed": installed}))
"#;

pub struct EnvManager {
    root: PathBuf,
    python: PathBuf,
    python_version: String,
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Requirements in the order that defines an environment's identity.
pub fn normalize(packages: &[String]) -> Vec<String> {
    let mut v: Vec<String> = packages
        .iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v.dedup();
    v
}

impl EnvManager {
    /// `python` is the base interpreter every environment is made from.
    pub async fn open(root: PathBuf, python: PathBuf) -> Result<EnvManager, EnvError> {
        let io = |what| {
            let dir = root.clone();
            move |source| EnvError::Io { what, dir, source }
        };
        std::fs::create_dir_all(&root).map_err(io("creating the environments directory"))?;
        let out = without_secrets(&mut Command::new(&python))
            .args(["-I", "-c", "import sys; print(sys.version)"])
            .output()
            .await
            .map_err(io("running the base python"))?;
        if !out.status.success() {
            return Err(EnvError::Tool {
                what: "running the base python",
                dir: python.clone(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(EnvManager {
            root,
            python,
            python_version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            building: Mutex::new(HashMap::new()),
        })
    }

    /// The base interpreter's (major, minor) version.
    pub fn python_minor(&self) -> Option<(u32, u32)> {
        let v = self.python_version.split_whitespace().next()?;
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// The directory every environment is made under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key(&self, packages: &[String]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.python_version.as_bytes());
        for p in normalize(packages) {
            h.update(b"\0");
            h.update(p.as_bytes());
        }
        h.finalize().to_hex()[..32].to_string()
    }

    /// The complete environment `key`, if this node has it.
    pub fn load(&self, key: &str) -> Result<PackageEnv, EnvError> {
        let dir = self.root.join(key);
        let text = std::fs::read(dir.join("ember-env.json"))
            .map_err(|_| EnvError::Missing(key.to_string()))?;
        let mut env: PackageEnv = serde_json::from_slice(&text).map_err(|e| EnvError::Tool {
            what: "reading ember-env.json",
            dir: dir.clone(),
            output: e.to_string(),
        })?;
        env.dir = dir;
        Ok(env)
    }

    /// Returns the environment for `packages`, building it first if needed. `progress`
    /// receives pip's output line by line.
    pub async fn ensure(
        &self,
        packages: &[String],
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<PackageEnv, EnvError> {
        let key = self.key(packages);
        if let Ok(env) = self.load(&key) {
            return Ok(env);
        }
        let gate = {
            let mut b = self.building.lock().unwrap_or_else(|p| p.into_inner());
            b.entry(key.clone()).or_default().clone()
        };
        let _held = gate.lock().await;
        let lock_path = self.root.join(format!("{key}.lock"));
        let _flock = crate::sys::lock_file(lock_path.clone())
            .await
            .map_err(|source| EnvError::Io {
                what: "locking",
                dir: lock_path,
                source,
            })?;
        if let Ok(env) = self.load(&key) {
            return Ok(env);
        }
        self.build(&key, packages, progress).await
    }

    async fn build(
        &self,
        key: &str,
        packages: &[String],
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<PackageEnv, EnvError> {
        let dir = self.root.join(key);
        let io = |what| {
            let dir = dir.clone();
            move |source| EnvError::Io { what, dir, source }
        };
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(io("removing an interrupted build"))?;
        }
        let packages = normalize(packages);
        progress(&format!("creating environment {key} for {packages:?}"));
        self.run_tool(
            "python -m venv",
            &dir,
            without_secrets(&mut Command::new(&self.python))
                .args(["-m", "venv", "--without-pip"])
                .arg(&dir),
        )
        .await?;
        let venv_python = dir.join("bin/python");
        if !packages.is_empty() {
            let mut cmd = Command::new(&self.python);
            without_secrets(&mut cmd)
                .args(["-m", "pip", "--python"])
                .arg(&venv_python)
                .args([
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--progress-bar",
                    "off",
                    "--",
                ])
                .args(&packages)
                .env("PIP_NO_CACHE_DIR", "0");
            if let Err(output) = stream_pip(&mut cmd, progress).await.map_err(|e| match e {
                PipFailure::Io(source) => EnvError::Io {
                    what: "running pip",
                    dir: dir.clone(),
                    source,
                },
                PipFailure::Failed(output) => EnvError::Pip {
                    packages: packages.clone(),
                    output,
                },
            }) {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(output);
            }
        }
        let mut inspect = Command::new(&venv_python);
        without_secrets(&mut inspect)
            .args(["-I", "-c", INSPECT_PY])
            .args(&packages);
        ember_runtime::kill_with_daemon(&mut inspect);
        let out = inspect
            .kill_on_drop(true)
            .output()
            .await
            .map_err(io("inspecting the environment"))?;
        if !out.status.success() {
            return Err(EnvError::Tool {
                what: "inspecting the environment",
                dir,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        #[derive(Deserialize)]
        struct Inspected {
            imports: Vec<String>,
            installed: BTreeMap<String, String>,
        }
        let found: Inspected = serde_json::from_slice(&out.stdout).map_err(|e| EnvError::Tool {
            what: "inspecting the environment",
            dir: dir.clone(),
            output: e.to_string(),
        })?;
        let env = PackageEnv {
            key: key.to_string(),
            packages,
            imports: found.imports,
            installed: found.installed,
            dir: dir.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&env).map_err(|e| io("encoding ember-env.json")(e.into()))?;
        crate::sys::write_atomic(&dir.join("ember-env.json"), &json)
            .map_err(io("writing ember-env.json"))?;
        progress(&format!(
            "environment {key} ready: imports {:?}",
            env.imports
        ));
        Ok(env)
    }

    async fn run_tool(
        &self,
        what: &'static str,
        dir: &Path,
        cmd: &mut Command,
    ) -> Result<(), EnvError> {
        ember_runtime::kill_with_daemon(cmd);
        let out = cmd
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| EnvError::Io {
                what,
                dir: dir.to_path_buf(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(EnvError::Tool {
                what,
                dir: dir.to_path_buf(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

enum PipFailure {
    Io(std::io::Error),
    Failed(String),
}

/// Runs pip, forwarding each output line to `progress`; on failure returns pip's own
/// messages (its `ERROR:` lines, or the tail of its output).
async fn stream_pip(
    cmd: &mut Command,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), PipFailure> {
    ember_runtime::die_with_daemon_tree(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(PipFailure::Io)?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(PipFailure::Io(std::io::Error::other(
            "pip has no output pipes",
        )));
    };
    let mut out = BufReader::new(out).lines();
    let mut err = BufReader::new(err).lines();
    let mut tail: Vec<String> = Vec::new();
    let mut keep = |l: String| {
        progress(&l);
        if tail.len() == 200 {
            tail.remove(0);
        }
        tail.push(l);
    };
    let (mut out_done, mut err_done) = (false, false);
    loop {
        tokio::select! {
            l = out.next_line(), if !out_done => match l {
                Ok(Some(l)) => keep(l),
                _ => out_done = true,
            },
            l = err.next_line(), if !err_done => match l {
                Ok(Some(l)) => keep(l),
                _ => err_done = true,
            },
            else => break,
        }
    }
    let status = child.wait().await.map_err(PipFailure::Io)?;
    if status.success() {
        return Ok(());
    }
    let errors: Vec<&String> = tail.iter().filter(|l| l.starts_with("ERROR")).collect();
    let text = if errors.is_empty() {
        tail.join("\n")
    } else {
        errors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    Err(PipFailure::Failed(text))
}

/// Variables holding the daemon's secrets (the snapshot store's credentials, the API token):
/// never passed to a tool the daemon runs (pip runs packages' build scripts, which a tenant
/// chooses).
pub const SECRET_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "EMBER_S3_ENDPOINT",
    "EMBER_S3_BUCKET",
    "EMBER_S3_REGION",
    "EMBER_S3_PREFIX",
    "EMBER_TOKEN",
];

/// `cmd` without the daemon's secrets in its environment ([`SECRET_VARS`]).
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for v in SECRET_VARS {
        cmd.env_remove(v);
    }
    cmd
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[tokio::test]
    async fn the_tools_the_daemon_runs_never_see_its_secrets() {
        let mut cmd = Command::new("/usr/bin/env");
        cmd.env("AWS_SECRET_ACCESS_KEY", "hush").env("KEEP", "1");
        let out = without_secrets(&mut cmd).output().await.unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("KEEP=1") && !env.contains("hush"), "{env}");
    }
}
