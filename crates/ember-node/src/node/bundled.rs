//! What a function's code says of its packages: a `requirements.txt` at its root (the Lambda
//! API's way to declare them: installed as the function's package set, so it gets its
//! dependency image), and packages bundled in it that were built for another Python than the
//! node's (refused at deploy with the reason, rather than failing at import).

use std::path::Path;

use super::{Node, NodeError, StoredCode};
use crate::function::{InvalidFunction, validate_requirement};

/// The file a zip declares its packages in.
pub const REQUIREMENTS: &str = "requirements.txt";
/// Largest `requirements.txt` read.
const MAX_REQUIREMENTS: u64 = 64 << 10;
/// Files of the code looked at for bundled packages, at most (an archive holds at most the
/// code store's entry limit anyway).
const MAX_SCANNED: usize = 200_000;

fn bad(value: impl Into<String>, rule: impl Into<String>) -> NodeError {
    NodeError::Invalid(InvalidFunction {
        field: "code",
        value: value.into(),
        rule: rule.into(),
    })
}

/// The requirements of a `requirements.txt` text: one per line, comments and blank lines
/// skipped; options (`-r`, `-e`, `--index-url`), URLs and paths refused by line.
pub fn parse_requirements(text: &str) -> Result<Vec<String>, NodeError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // An option on its own line or after a requirement (`--hash=...`).
        if line.starts_with('-') || line.contains(" -") {
            return Err(bad(
                format!("{REQUIREMENTS} line {}", n + 1),
                "has a pip option (-r, -e, --hash, --index-url, ...): only package \
                 requirements are installed",
            ));
        }
        validate_requirement(line).map_err(|e| {
            bad(
                format!("{REQUIREMENTS} line {}", n + 1),
                format!(
                    "{} (only package requirements: no options, URLs or paths)",
                    e.rule
                ),
            )
        })?;
        out.push(line.to_string());
    }
    Ok(out)
}

/// Whether a build for CPython `built` runs on `python`: the same version, or a stable-ABI
/// (`abi3`) build for it or an earlier one.
fn runs_on(built: (u32, u32), abi3: bool, python: (u32, u32)) -> bool {
    built == python || (abi3 && built.0 == python.0 && built.1 <= python.1)
}

/// The CPython version a file of a bundled package was built for, from its name
/// (`x.cpython-312-x86_64-linux-gnu.so`) or a wheel's `WHEEL` tag line (`Tag: cp312-...`).
fn built_for(name: &str, wheel_tag: Option<&str>) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<(u32, u32)> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        let (major, minor) = d.split_at(1.min(d.len()));
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    if let Some(tag) = wheel_tag {
        return digits(tag.strip_prefix("cp")?);
    }
    let rest = name.strip_suffix(".so")?.split(".cpython-").nth(1)?;
    digits(rest)
}

/// The first file under `dir` built for a CPython other than `python` (major, minor): its
/// path relative to `dir` and the version it was built for.
pub fn foreign_build(dir: &Path, python: (u32, u32)) -> Option<(String, (u32, u32))> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_SCANNED {
                return None;
            }
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let tag = (name == "WHEEL" && d.extension().is_some_and(|x| x == "dist-info"))
                .then(|| wheel_tag(&path))
                .flatten();
            if tag.as_deref().is_some_and(|t| t.starts_with("py")) {
                continue;
            }
            let abi3 = tag.as_deref().is_some_and(|t| t.contains("-abi3-"));
            if let Some(v) = built_for(&name, tag.as_deref())
                && !runs_on(v, abi3, python)
            {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                return Some((rel.display().to_string(), v));
            }
        }
    }
    None
}

/// The first `Tag:` of a wheel's `WHEEL` file (at most 16 KiB read).
fn wheel_tag(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(16 << 10)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tag:"))
        .map(|t| t.trim().to_string())
}

impl Node {
    /// The requirements `code` declares in its `requirements.txt` (none: it has none).
    pub fn code_requirements(&self, code: &StoredCode) -> Result<Option<Vec<String>>, NodeError> {
        use std::io::Read;
        let path = self.code.path(&code.hash).join(REQUIREMENTS);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NodeError::Io {
                    what: "reading",
                    path,
                    source,
                });
            }
        };
        let mut text = String::new();
        f.take(MAX_REQUIREMENTS + 1)
            .read_to_string(&mut text)
            .map_err(|_| bad(REQUIREMENTS, "must be UTF-8 text"))?;
        if text.len() as u64 > MAX_REQUIREMENTS {
            return Err(bad(
                REQUIREMENTS,
                format!("must be at most {MAX_REQUIREMENTS} bytes"),
            ));
        }
        parse_requirements(&text).map(Some)
    }

    /// Refuses Python code that bundles a package built for another CPython than the node's,
    /// which would fail at import with a misleading message.
    pub(in crate::node) fn check_bundled_builds(&self, code_dir: &Path) -> Result<(), NodeError> {
        let Some(python) = self.envs.python_minor() else {
            return Ok(());
        };
        match foreign_build(code_dir, python) {
            None => Ok(()),
            Some((file, (major, minor))) => Err(bad(
                file,
                format!(
                    "is built for Python {major}.{minor}, and this node runs Python {}.{}: \
                     build the bundled packages for {}.{}, or name them in requirements.txt \
                     (installed for the node's Python)",
                    python.0, python.1, python.0, python.1
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_packages_only() {
        let text = "# deps\nnumpy==2.1.0\n\npandas>=2  # data\nrequests[socks]\n";
        assert_eq!(
            parse_requirements(text).unwrap(),
            ["numpy==2.1.0", "pandas>=2", "requests[socks]"]
        );
        for bad in [
            "-r other.txt",
            "--index-url http://x",
            "git+https://x/y",
            "./local",
            "numpy==1.26 --hash=sha256:abc",
        ] {
            let e = parse_requirements(&format!("numpy\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains("line 2"), "{bad}: {e}");
        }
    }

    #[test]
    fn builds_for_another_python_are_found() {
        assert_eq!(
            built_for("_core.cpython-312-x86_64-linux-gnu.so", None),
            Some((3, 12))
        );
        assert_eq!(
            built_for("x.cpython-311-x86_64-linux-gnu.so", None),
            Some((3, 11))
        );
        assert_eq!(built_for("plain.so", None), None);
        assert_eq!(
            built_for("WHEEL", Some("cp312-cp312-manylinux_2_17_x86_64")),
            Some((3, 12))
        );
        let d = tempfile::tempdir().unwrap();
        let pkg = d.path().join("numpy/core");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("_m.cpython-311-x86_64-linux-gnu.so"), b"").unwrap();
        assert_eq!(foreign_build(d.path(), (3, 11)), None);
        std::fs::write(pkg.join("_n.cpython-312-x86_64-linux-gnu.so"), b"").unwrap();
        let (file, v) = foreign_build(d.path(), (3, 11)).unwrap();
        assert_eq!(
            (file.as_str(), v),
            ("numpy/core/_n.cpython-312-x86_64-linux-gnu.so", (3, 12))
        );
        // A stable-ABI wheel for an earlier CPython runs here; for a later one it does not.
        let abi = d.path().join("crypto-1.0.dist-info");
        std::fs::create_dir_all(&abi).unwrap();
        std::fs::write(abi.join("WHEEL"), "Tag: cp37-abi3-manylinux_2_28_x86_64\n").unwrap();
        assert!(foreign_build(&abi, (3, 11)).is_none());
        std::fs::write(abi.join("WHEEL"), "Tag: cp312-abi3-manylinux_2_28_x86_64\n").unwrap();
        assert!(foreign_build(&abi, (3, 11)).is_some());
        // A pure-Python wheel fits any Python.
        let info = d.path().join("six-1.0.dist-info");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("WHEEL"), "Tag: py3-none-any\n").unwrap();
        assert!(foreign_build(&info, (3, 11)).is_none());
    }
}
