//! Client-side packaging: a function directory (with an optional `ember.toml` manifest) or a
//! zip file becomes the body of a deploy request.
//!
//! ```toml
//! # ember.toml (every key optional; command-line flags win)
//! name = "numpy"
//! handler = "main.handler"
//! packages = ["numpy"]
//! memory_mb = 512
//! timeout_s = 30
//! max_instances = 10
//! network = "host"   # the host's network; "none" (the default): no network
//! images = false     # never start from a dependency image ("off" works too)
//! snapshot = "after-init"  # when a function snapshot is taken: after-init, after-first-invoke, off
//! [env]
//! GREETING = "hi"
//! [bench]            # used by `ember bench`: the event each invocation sends
//! event = { n = 200 }
//! ```

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use zip::write::SimpleFileOptions;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    /// python (the default), provided or native; Lambda's names are accepted too.
    pub runtime: Option<String>,
    pub handler: Option<String>,
    /// Every request gets a fresh instance.
    pub cold_only: Option<bool>,
    pub packages: Option<Vec<String>>,
    pub memory_mb: Option<u32>,
    pub timeout_s: Option<u32>,
    pub max_instances: Option<u32>,
    /// `none` (no network, the default) or `host`.
    pub network: Option<String>,
    /// false (or "off"): the function never starts from a dependency image.
    #[serde(default, deserialize_with = "on_off")]
    pub images: Option<bool>,
    /// When a function snapshot is taken: `after-init` (the default), `after-first-invoke` or
    /// `off` (checked by the node).
    pub snapshot: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub bench: Option<BenchSection>,
}

/// A switch written as a boolean or as "on"/"off".
fn on_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Switch {
        Bool(bool),
        Word(String),
    }
    match Switch::deserialize(d)? {
        Switch::Bool(b) => Ok(Some(b)),
        Switch::Word(w) => match w.as_str() {
            "on" => Ok(Some(true)),
            "off" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{w:?} is not a switch: write true, false, \"on\" or \"off\""
            ))),
        },
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    pub event: toml::Value,
}

impl Manifest {
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, PackageError> {
        toml::from_str(text).map_err(|e| PackageError::Manifest {
            path: origin.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// The manifest in `dir/ember.toml`, or an empty one.
    pub fn load(dir: &Path) -> Result<Manifest, PackageError> {
        let path = dir.join("ember.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Manifest::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(source) => Err(PackageError::Io { path, source }),
        }
    }

    /// The bench event as JSON bytes (`{}` when the manifest gives none).
    pub fn bench_event(&self) -> Vec<u8> {
        self.bench
            .as_ref()
            .and_then(|b| serde_json::to_vec(&b.event).ok())
            .unwrap_or_else(|| b"{}".to_vec())
    }

    /// The deploy request body: configuration plus `code_zip`.
    pub fn deploy_body(&self, zip: &[u8]) -> Result<serde_json::Value, PackageError> {
        let handler = self.handler.clone().ok_or(PackageError::NoHandler)?;
        let mut body = serde_json::json!({
            "runtime": self.runtime.as_deref().unwrap_or("python"),
            "cold_only": self.cold_only.unwrap_or(false),
            "handler": handler,
            "packages": self.packages.clone().unwrap_or_default(),
            "env": self.env,
            "code_zip": base64::engine::general_purpose::STANDARD.encode(zip),
        });
        if let Some(n) = &self.network {
            body["network"] = n.as_str().into();
        }
        if let Some(on) = self.images {
            body["images"] = on.into();
        }
        if let Some(p) = &self.snapshot {
            body["snapshot"] = p.as_str().into();
        }
        for (k, v) in [
            ("memory_mb", self.memory_mb),
            ("timeout_s", self.timeout_s),
            ("max_instances", self.max_instances),
        ] {
            if let Some(v) = v {
                body[k] = v.into();
            }
        }
        Ok(body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {detail}")]
    Manifest { path: PathBuf, detail: String },
    #[error(
        "no handler given: pass --handler (module.function for python, the executable for \
         native) or set handler in ember.toml"
    )]
    NoHandler,
    #[error("zipping {path} failed: {detail}")]
    Zip { path: PathBuf, detail: String },
}

fn skip(name: &str) -> bool {
    name == "__pycache__" || name.ends_with(".pyc")
}

/// Zips a directory (symlinks stay symlinks, so the server can check them); `__pycache__`
/// and `.pyc` files are left out since the runtime regenerates them.
pub fn zip_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    add_dir(&mut w, dir, "")?;
    let zerr = |e: zip::result::ZipError| PackageError::Zip {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    };
    Ok(w.finish().map_err(zerr)?.into_inner())
}

fn add_dir(
    w: &mut zip::ZipWriter<Cursor<Vec<u8>>>,
    root: &Path,
    rel: &str,
) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(rel);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    let zerr = |path: &Path, e: zip::result::ZipError| PackageError::Zip {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .collect::<Result<_, _>>()
        .map_err(io(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if skip(&name) {
            continue;
        }
        let path = e.path();
        let rel_name = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let opts = SimpleFileOptions::default().unix_permissions(meta.permissions().mode());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            w.add_symlink(&rel_name, target.to_string_lossy(), opts)
                .map_err(|e| zerr(&path, e))?;
        } else if meta.is_dir() {
            w.add_directory(&rel_name, opts)
                .map_err(|e| zerr(&path, e))?;
            add_dir(w, root, &rel_name)?;
        } else if meta.is_file() {
            let data = std::fs::read(&path).map_err(io(&path))?;
            w.start_file(&rel_name, opts).map_err(|e| zerr(&path, e))?;
            w.write_all(&data).map_err(io(&path))?;
        }
        // Sockets, fifos and devices are not code; the server would refuse them anyway.
    }
    Ok(())
}

/// The code of a function given as a directory or a `.zip` file, and its manifest.
pub fn load_code(path: &Path) -> Result<(Vec<u8>, Manifest), PackageError> {
    let meta = std::fs::metadata(path).map_err(|source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        Ok((zip_dir(path)?, Manifest::load(path)?))
    } else {
        let data = std::fs::read(path).map_err(|source| PackageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((data, Manifest::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_zip_with_their_manifest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("main.py"), "x = 1\n").unwrap();
        std::fs::create_dir(d.path().join("__pycache__")).unwrap();
        std::fs::write(d.path().join("__pycache__/main.pyc"), "junk").unwrap();
        std::fs::write(
            d.path().join("ember.toml"),
            "name = \"f\"\nhandler = \"main.handler\"\npackages = [\"numpy\"]\n[bench]\nevent = { n = 3 }\n",
        )
        .unwrap();
        let (zip, m) = load_code(d.path()).unwrap();
        assert_eq!(m.name.as_deref(), Some("f"));
        assert_eq!(m.bench_event(), br#"{"n":3}"#);
        let mut a = zip::ZipArchive::new(Cursor::new(zip.clone())).unwrap();
        let mut names: Vec<String> = (0..a.len())
            .map(|i| a.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["ember.toml", "main.py"]);
        let body = m.deploy_body(&zip).unwrap();
        assert_eq!(body["handler"], "main.handler");
        assert_eq!(body["packages"][0], "numpy");
        assert!(body.get("snapshot").is_none());
        let m = Manifest::parse(
            "handler = \"main.handler\"\nsnapshot = \"after-first-invoke\"\n",
            Path::new("ember.toml"),
        )
        .unwrap();
        assert_eq!(
            m.deploy_body(&zip).unwrap()["snapshot"],
            "after-first-invoke"
        );
    }

    #[test]
    fn bad_manifests_are_named() {
        let err = Manifest::parse("handler = 3", Path::new("x/ember.toml")).unwrap_err();
        assert!(err.to_string().contains("x/ember.toml"), "{err}");
        let err = Manifest::parse("hander = \"m.h\"", Path::new("e.toml")).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(matches!(
            Manifest::default().deploy_body(b""),
            Err(PackageError::NoHandler)
        ));
        let err = Manifest::parse("images = \"sometimes\"", Path::new("e.toml")).unwrap_err();
        assert!(err.to_string().contains("\"on\" or \"off\""), "{err}");
    }

    #[test]
    fn images_and_network_reach_the_deploy_body() {
        for (text, images) in [
            ("images = false", Some(false)),
            ("images = \"off\"", Some(false)),
            ("images = \"on\"", Some(true)),
            ("images = true", Some(true)),
            ("", None),
        ] {
            let m = Manifest::parse(
                &format!("handler = \"m.h\"\nnetwork = \"host\"\n{text}\n"),
                Path::new("e.toml"),
            )
            .unwrap();
            assert_eq!(m.images, images, "{text}");
            let body = m.deploy_body(b"").unwrap();
            assert_eq!(body["network"], "host");
            assert_eq!(
                body.get("images").and_then(|v| v.as_bool()),
                images,
                "{text}"
            );
        }
    }
}
