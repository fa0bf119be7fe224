//! The harness of the end-to-end tests: the real `ember` binary, started on a free loopback
//! port with its own home, driven over HTTP and through the CLI.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

pub mod netns;

pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Package environments shared by every test daemon, so each package set installs once.
pub fn shared_envs() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ember-test-envs")
}

/// Whether daemons run sandboxed: the test script's privileged switch, as root. Otherwise
/// they run with --no-sandbox and the sandbox tests skip.
pub fn sandboxed() -> bool {
    std::env::var_os("EMBER_PRIVILEGED_TESTS").is_some() && nix::unistd::geteuid().is_root()
}

/// For tests that need the sandbox: prints why and returns false when it is not available.
pub fn need_sandbox() -> bool {
    if !sandboxed() {
        eprintln!("skipped: needs EMBER_PRIVILEGED_TESTS=1 and root (the sandbox needs both)");
    }
    sandboxed()
}

pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub home: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(home: &Path, extra: &[&str]) -> Daemon {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_with(home, args, Vec::new())
    }

    /// As [`Daemon::start`], with these environment variables too.
    pub fn start_env(home: &Path, extra: &[&str], env: &[(String, String)]) -> Daemon {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_with(home, args, env.to_vec())
    }

    fn start_with(home: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Daemon {
        let mut cmd = Command::new(EMBER);
        cmd.arg("serve")
            .arg("--home")
            .arg(home)
            .args(["--listen", "127.0.0.1:0"]);
        if !args.iter().any(|a| a == "--envs-dir") {
            cmd.arg("--envs-dir").arg(shared_envs());
        }
        if !sandboxed() {
            cmd.arg("--no-sandbox");
        }
        // Images change which rung serves a start: only the tests about them turn them on.
        if !args.iter().any(|a| a.starts_with("--image")) {
            cmd.args(["--images", "off"]);
        }
        // So do function snapshots.
        if !args.iter().any(|a| a.starts_with("--snapshot")) {
            cmd.args(["--snapshots", "off"]);
        }
        // So do hibernated instances (an idle instance past its keep-alive is hibernated).
        if !args.iter().any(|a| a.starts_with("--hibernate")) {
            cmd.args(["--hibernate", "off"]);
        }
        // Standby instances change an image start's phases and add restores of their own.
        if !args.iter().any(|a| a == "--standby") {
            cmd.args(["--standby", "0"]);
        }
        // A rung that measured slower is skipped otherwise: a test asserts the rung it is about.
        cmd.arg("--fixed-ladder");
        let mut child = cmd
            .args(&args)
            .env_remove("EMBER_TOKEN")
            .env_remove("EMBER_URL")
            .env("EMBER_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ember serve");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("ember serve printed {line:?}"))
            .to_string();
        Daemon {
            child,
            url,
            home: home.to_path_buf(),
            args,
            env,
        }
    }

    /// SIGTERM, wait, start again on the same home.
    pub fn restart(mut self) -> Daemon {
        self.terminate();
        let (home, args, env) = (self.home.clone(), self.args.clone(), self.env.clone());
        Self::start_with(&home, args, env)
    }

    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops `name`'s instances (idle ones now), so that its next invocation is not warm.
    pub async fn stop_instances(&self, name: &str) {
        let r = self
            .http()
            .delete(format!("{}/v1/functions/{name}/instances", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// A start that is not warm: `name`'s instances are stopped first.
    pub async fn fresh_start(&self, name: &str, event: &str) -> Invoked {
        self.stop_instances(name).await;
        self.invoke(name, event).await
    }

    /// Builds the image of `packages` (comma-separated) with the CLI; its JSON.
    pub fn build_image(&self, packages: &str) -> serde_json::Value {
        let out = self.cli(&["image", "build", "--packages", packages, "--json"]);
        assert!(out.ok, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_at(&self.url, args)
    }

    /// One HTTP client for all of a test's calls (a clone shares its connection pool):
    /// building one sets up TLS, milliseconds each, and fifty built in a row delayed the
    /// last requests of a burst by over a second.
    pub fn http(&self) -> reqwest::Client {
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        CLIENT.get_or_init(reqwest::Client::new).clone()
    }

    pub async fn invoke(&self, name: &str, body: &str) -> Invoked {
        let r = self
            .http()
            .post(format!("{}/v1/functions/{name}/invoke", self.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        Invoked::from(r).await
    }

    /// `n` invocations of `name` with `body`, all at once.
    pub async fn invoke_many(&self, name: &str, n: usize, body: &str) -> Vec<Invoked> {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (http, url) = (
                self.http(),
                format!("{}/v1/functions/{name}/invoke", self.url),
            );
            let body = body.to_string();
            calls.spawn(async move {
                Invoked::from(http.post(url).body(body).send().await.unwrap()).await
            });
        }
        calls.join_all().await
    }

    /// Deploys through the HTTP API (plain JSON, no streaming).
    pub async fn deploy_zip(
        &self,
        name: &str,
        config: serde_json::Value,
        zip: &[u8],
    ) -> (u16, serde_json::Value) {
        let mut body = config;
        body["code_zip"] = base64::engine::general_purpose::STANDARD.encode(zip).into();
        let r = self
            .http()
            .put(format!("{}/v1/functions/{name}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// [`Daemon::deploy_zip`] that must succeed.
    pub async fn deploy_ok(&self, name: &str, config: serde_json::Value, zip: &[u8]) {
        let (status, body) = self.deploy_zip(name, config, zip).await;
        assert!(status < 300, "deploying {name}: {status} {body}");
    }

    /// Asserts that a function's log (last 200 lines) has every one of `lines`, within 5 s
    /// (an instance's output reaches the log after the answer that follows it, sometimes).
    pub fn assert_logged(&self, function: &str, lines: &[&str]) {
        let mut logs = self.cli(&["logs", function, "-n", "200"]);
        eventually(Duration::from_secs(5), || {
            logs = self.cli(&["logs", function, "-n", "200"]);
            lines.iter().all(|l| logs.stdout.contains(l))
        });
        for l in lines {
            assert!(
                logs.stdout.contains(l),
                "{l:?} missing from the log:\n{}",
                logs.stdout
            );
        }
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }

    /// Deploys `config` (with a trivial handler file) expecting 400; returns the message.
    pub async fn deploy_refused(&self, name: &str, config: serde_json::Value) -> String {
        let (status, body) = self.deploy_zip(name, config, &py("")).await;
        assert_eq!(status, 400, "{body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Pids of this daemon's Python instances (see [`instance_pids_under`]).
    pub fn instance_pids(&self) -> Vec<i32> {
        instance_pids_under(&self.home)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Gracefully, so the daemon removes its instances' cgroups: a test's home is gone
        // afterwards, so no later start of this node would.
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// The Python instances of the node whose home is `home`: processes running its
/// bootstrap, at its own path (without the sandbox), or at the sandbox's fixed path and in
/// the node's cgroups (named by a hash of its home, as the node names them).
pub fn instance_pids_under(home: &Path) -> Vec<i32> {
    let needle = home.join("runtime").to_string_lossy().into_owned();
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let node = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex()[..12].to_string();
    let node_cgroup = format!("/ember/{node}/");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // A template (an image restored once, its standbys forked from it) shows the
        // image's command line too, but is never an instance: it stays in a trace stop.
        let traced = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('t')))
            .unwrap_or(false);
        let cmd = String::from_utf8_lossy(&cmd);
        let ours = cmd.contains(&needle)
            || (cmd.contains("/ember/runtime/")
                && std::fs::read_to_string(e.path().join("cgroup"))
                    .is_ok_and(|c| c.contains(&node_cgroup)));
        if ours && !traced {
            // A zombie keeps its cmdline empty, so anything found here is alive.
            pids.push(pid);
        }
    }
    pids
}

/// Polls `f` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub struct Invoked {
    pub status: u16,
    pub start: String,
    pub timing: String,
    pub error: String,
    /// The `Ember-Snapshot` header: the function snapshot the instance came from.
    pub snapshot: String,
    pub body: serde_json::Value,
    pub raw: String,
}

/// Response header `name`, or empty.
pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl Invoked {
    pub async fn from(r: reqwest::Response) -> Invoked {
        let h = |n: &str| header(&r, n);
        let (status, start, timing, error) = (
            r.status().as_u16(),
            h("ember-start"),
            h("ember-timing"),
            h("ember-error"),
        );
        let snapshot = h("ember-snapshot");
        let raw = r.text().await.unwrap();
        Invoked {
            status,
            start,
            timing,
            error,
            snapshot,
            body: serde_json::from_str(&raw).unwrap_or_default(),
            raw,
        }
    }
}

pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn cli_at(url: &str, args: &[&str]) -> CliOutput {
    let out = Command::new(EMBER)
        .args(args)
        .env("EMBER_URL", url)
        .env_remove("EMBER_TOKEN")
        .output()
        .unwrap();
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A zip of `(name, content)` files, for hand-made functions.
pub fn zip_files(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(content.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn py(handler_body: &str) -> Vec<u8> {
    zip_files(&[("main.py", handler_body)])
}

/// The value of series `series` (name and labels, as `/metrics` prints them) in the
/// Prometheus text `text`; 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
