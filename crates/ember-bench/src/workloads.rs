//! The workloads: Ember's `examples/`, embedded in the binary so that `ember up` and
//! `ember bench` need no checkout.

use std::io::{Cursor, Write};

use ember_api::package::Manifest;
use include_dir::{Dir, DirEntry, include_dir};
use zip::write::SimpleFileOptions;

static EXAMPLES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../examples");

/// Every workload, in the order reports list them.
pub const ORDER: [&str; 7] = [
    "noop",
    "helloworld",
    "json",
    "aes",
    "chameleon",
    "numpy",
    "sklearn",
];

#[derive(Debug, Clone)]
pub struct Workload {
    /// The example's name, which reports show.
    pub name: String,
    /// The function it is deployed as: its name, unless [`Workload::deployed_as`] chose
    /// another (a daemon shared with other functions).
    pub function: String,
    pub manifest: Manifest,
    pub zip: Vec<u8>,
}

impl Workload {
    /// The same workload, deployed as the function `function`.
    pub fn deployed_as(mut self, function: String) -> Workload {
        self.manifest.name = Some(function.clone());
        self.function = function;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("unknown workload {0:?}; known: {known}", known = ORDER.join(", "))]
    Unknown(String),
    #[error("embedded example {0} is broken: {1}")]
    Broken(String, String),
}

fn add(w: &mut zip::ZipWriter<Cursor<Vec<u8>>>, dir: &Dir<'_>, base: &str) -> Result<(), String> {
    for e in dir.entries() {
        let rel = e
            .path()
            .strip_prefix(base)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        match e {
            DirEntry::Dir(d) => {
                w.add_directory(&rel, SimpleFileOptions::default())
                    .map_err(|e| e.to_string())?;
                add(w, d, base)?;
            }
            DirEntry::File(f) => {
                w.start_file(&rel, SimpleFileOptions::default().unix_permissions(0o644))
                    .map_err(|e| e.to_string())?;
                w.write_all(f.contents()).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

pub fn load(name: &str) -> Result<Workload, WorkloadError> {
    let dir = EXAMPLES
        .get_dir(name)
        .ok_or_else(|| WorkloadError::Unknown(name.to_string()))?;
    let broken = |e: String| WorkloadError::Broken(name.to_string(), e);
    let text = dir
        .get_file(format!("{name}/ember.toml"))
        .and_then(|f| f.contents_utf8())
        .ok_or_else(|| broken("no ember.toml".into()))?;
    let manifest =
        Manifest::parse(text, std::path::Path::new(name)).map_err(|e| broken(e.to_string()))?;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    add(&mut w, dir, name).map_err(broken)?;
    let zip = w.finish().map_err(|e| broken(e.to_string()))?.into_inner();
    Ok(Workload {
        name: name.to_string(),
        function: name.to_string(),
        manifest,
        zip,
    })
}

/// The named workloads, or all of them for an empty list.
pub fn select(names: &[String]) -> Result<Vec<Workload>, WorkloadError> {
    if names.is_empty() {
        ORDER.iter().map(|n| load(n)).collect()
    } else {
        names.iter().map(|n| load(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_loads_with_a_handler_and_event() {
        for w in select(&[]).unwrap() {
            assert_eq!(w.manifest.name.as_deref(), Some(w.name.as_str()));
            assert_eq!(w.function, w.name);
            assert!(w.manifest.handler.is_some());
            assert!(serde_json::from_slice::<serde_json::Value>(&w.manifest.bench_event()).is_ok());
            assert!(!w.zip.is_empty());
        }
        assert!(matches!(load("nope"), Err(WorkloadError::Unknown(_))));
    }
}
