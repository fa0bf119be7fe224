//! Fixtures of the runtime's tests: a function's code run by the real bootstrap and
//! `/usr/bin/python3` (unsandboxed, no root needed), its log kept.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ember_runtime::python::{
    Instance, InvokeError, LogSink, Outcome, StartSpec, Stream, install_bootstrap,
};

pub const PYTHON: &str = "/usr/bin/python3";

/// A directory under the target's tmp, removed at the end of the test.
pub struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The function's log, kept for assertions.
#[derive(Default)]
pub struct Log(pub Mutex<Vec<String>>);

impl LogSink for Log {
    fn line(&self, _instance: &str, _stream: Stream, line: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(line).into_owned());
    }
}

impl Log {
    /// Waits (briefly) for a log line containing `needle`: the pipes are read by tasks of
    /// their own.
    pub async fn wait_for(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.0.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

pub struct Function {
    _dir: Tmp,
    pub spec: StartSpec,
    pub log: Arc<Log>,
}

/// A function whose `main.py` is `code`, started with the real bootstrap; `None` (the test is
/// skipped, and says why) without `/usr/bin/python3`.
pub fn function(test: &str, code: &str) -> Option<Function> {
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped {test}: needs {PYTHON}");
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("snapshot-point-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir = Tmp(dir);
    let code_dir = dir.0.join("code");
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("main.py"), code).unwrap();
    let bootstrap = install_bootstrap(&dir.0.join("runtime")).unwrap();
    let spec = StartSpec {
        instance_id: "i-original".into(),
        function: "snappy".into(),
        version: 1,
        handler: "main.handler".into(),
        memory_mb: 128,
        python: PYTHON.into(),
        bootstrap,
        code_dir,
        imports: Vec::new(),
        env: BTreeMap::from([("GREETING".to_string(), "original".to_string())]),
    };
    Some(Function {
        _dir: dir,
        spec,
        log: Arc::default(),
    })
}

impl Function {
    pub async fn start(&self) -> Instance {
        let (inst, _) = Instance::start(&self.spec, self.log.clone(), |_| {})
            .await
            .unwrap_or_else(|e| panic!("start: {e:?}\nlog:\n{}", self.log.text()));
        inst
    }

    /// The spec a copy restored from the snapshot gets: another instance, version and
    /// environment.
    pub fn restored_spec(&self) -> StartSpec {
        StartSpec {
            instance_id: "i-restored".into(),
            version: 2,
            env: BTreeMap::from([("GREETING".to_string(), "restored".to_string())]),
            ..self.spec.clone()
        }
    }
}

pub async fn invoke(inst: &mut Instance, event: &str) -> Result<Outcome, InvokeError> {
    let deadline = SystemTime::now() + Duration::from_secs(30);
    inst.invoke("req-1", deadline, event.as_bytes()).await
}

/// Invokes and returns the handler's JSON result.
pub async fn call(inst: &mut Instance, event: &str) -> serde_json::Value {
    match invoke(inst, event).await {
        Ok(Outcome::Result { payload, .. }) => serde_json::from_slice(&payload).unwrap(),
        other => panic!("invocation: {other:?}"),
    }
}
