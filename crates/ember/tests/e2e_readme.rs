//! The README as a user follows it. Privileged: its first command, exactly as the README
//! writes it (read from its "Two commands" block, so that a change there is what is tested),
//! with `--exit`, in a temporary home and with the tests' shared package environments: it must
//! succeed, print its table and leave no cgroup of its node behind (nor may a daemon stopped
//! during an image build). Its native and provided examples, run as written.
//!
//! It runs `cargo run --release`: `./scripts/test` builds the release binary first, so the
//! command here only checks that it is fresh (a checkout without that build pays for it here).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README's first command: the first line of the `sh` block under "## Two commands",
/// without its comment, split into words.
fn first_command(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Two commands")
        .nth(1)
        .expect("README.md has a \"## Two commands\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("the section has a ```sh block");
    let line = block.lines().next().expect("the block has a first line");
    let command = line.split('#').next().unwrap_or_default();
    command.split_whitespace().map(String::from).collect()
}

/// The cgroup directories under `/sys/fs/cgroup` that belong to the node of `home` (its id
/// is the first 12 hex digits of BLAKE3 of the home's absolute path), and that node's base
/// directories themselves.
fn node_cgroups(home: &Path) -> Vec<PathBuf> {
    let home = std::fs::canonicalize(home).unwrap();
    let id = &blake3::hash(home.as_os_str().as_encoded_bytes()).to_hex()[..12];
    let mut found = Vec::new();
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup/ember").join(id)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in rd.flatten() {
            bases.push(c.path().join("ember").join(id));
        }
    }
    for base in bases {
        let Ok(rd) = std::fs::read_dir(&base) else {
            continue;
        };
        found.push(base.clone());
        found.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    found
}

#[test]
fn the_readme_first_command_runs_as_written_and_leaves_nothing() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let words = first_command(&readme);
    assert_eq!(
        words.first().map(String::as_str),
        Some("cargo"),
        "the README's first command is no longer a cargo command: {words:?}"
    );
    assert!(words.iter().any(|w| w == "up"), "{words:?}");
    if !common::need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // The same cargo that runs the tests (rustup's proxy would pick the same toolchain).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(&words[1..])
        .arg("--exit")
        .current_dir(workspace())
        .env("EMBER_HOME", home.path())
        .env("EMBER_ENVS_DIR", common::shared_envs())
        // Port 8080 may be taken on a test machine; the README's address is the default.
        .env("EMBER_LISTEN", "127.0.0.1:0")
        .env("EMBER_LOG", "warn")
        .env_remove("EMBER_CONFIG")
        .env_remove("EMBER_URL")
        .env_remove("EMBER_TOKEN")
        .env_remove("EMBER_IMAGES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{words:?} failed:\n{stdout}\n{stderr}"
    );
    let header = stdout.lines().next().unwrap_or_default();
    for col in ["function", "cold ms", "via", "warm ms", "result"] {
        assert!(header.contains(col), "no {col:?} in the header:\n{stdout}");
    }
    for name in ember_bench::workloads::ORDER {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        assert!(
            row.contains(" cold-boot ") || row.contains(" image "),
            "{name} did not start cold: {row}"
        );
    }
    assert!(stdout.contains("hello, ember"), "{stdout}");
    assert!(home.path().join("registry.db").exists());
    // `up` deployed seven examples and exited while their images were being built: it must
    // have cancelled the builds and removed their sandboxes.
    let left = node_cgroups(home.path());
    assert!(left.is_empty(), "cgroups left behind: {left:?}\n{stderr}");
}

/// A daemon stopped (SIGTERM) while it builds a dependency image on its own cancels the build
/// and removes the build's sandbox: no cgroup of its node is left.
#[tokio::test]
async fn a_daemon_stopped_during_an_image_build_leaves_no_cgroup() {
    if !common::need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut d = common::Daemon::start(home.path(), &["--images", "on-deploy"]);
    // The sklearn example's packages: installed once in the shared environments, and an
    // image whose build (imports, dump, test restore) takes seconds.
    let (status, body) = d
        .deploy_zip(
            "slow-image",
            serde_json::json!({"handler": "main.handler",
                               "packages": ["scikit-learn", "pandas"]}),
            &common::py("def handler(event, context):\n    return event\n"),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    let building = common::eventually(std::time::Duration::from_secs(60), || {
        node_cgroups(home.path())
            .iter()
            .any(|p| p.to_string_lossy().ends_with("-build"))
    });
    assert!(
        building,
        "no image build started: {:?}",
        node_cgroups(home.path())
    );
    d.terminate();
    let left = node_cgroups(home.path());
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// The README's `sh` block that holds `line`.
fn block_with(readme: &str, line: &str) -> String {
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains(line))
        .unwrap_or_else(|| panic!("no sh block in README.md has {line:?}"))
        .to_string()
}

/// The README's native and provided examples, run as written by bash (but for `ember bench`)
/// in a fresh directory: `ember` on PATH is this build's, the daemon is found through
/// `EMBER_URL`, and `target/release/ember-hello` is the one built beside it.
#[tokio::test]
async fn the_readme_native_and_provided_examples_run_as_written() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = block_with(&readme, "ember deploy ./my-native");
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("ember bench"))
        .map(|l| format!("{l}\n"))
        .collect();
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(home.path(), &[]);
    let exe = Path::new(common::EMBER);
    let bin = cwd.path().join(".bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(exe, bin.join("ember")).unwrap();
    std::fs::create_dir_all(cwd.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(
        exe.with_file_name("ember-hello"),
        cwd.path().join("target/release/ember-hello"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .env("PATH", path)
        .env("EMBER_URL", &d.url)
        .env_remove("EMBER_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{stdout}\n{stderr}");
    // What the comments say each invoke prints.
    for line in script.lines().filter(|l| l.starts_with("ember invoke")) {
        let shown = line.split('#').nth(1).unwrap_or_default().trim();
        let shown: serde_json::Value = serde_json::from_str(shown).unwrap();
        let printed = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v == shown);
        assert!(printed, "{line}: no {shown} in\n{stdout}");
    }
}

#[test]
fn the_first_command_is_read_from_the_readme() {
    let readme = "# x\n\n## Two commands\n\ntext\n\n```sh\ncargo run -- up   # serve\n./t\n```\n";
    assert_eq!(first_command(readme), ["cargo", "run", "--", "up"]);
}
