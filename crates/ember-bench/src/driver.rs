//! The load driver: deploys workloads, forces cold starts by stopping a function's
//! instances, drives warm invocations at a concurrency, and times a bare interpreter import
//! of the same packages as the baseline, all in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ember_api::client::{Client, ClientError};
use serde::Serialize;

use crate::workloads::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Cold starts measured per workload.
    pub cold: usize,
    /// Warm invocations measured per workload (after one warm-up).
    pub warm: usize,
    /// Warm invocations in flight at once.
    pub concurrency: usize,
    /// Bare `python -I -c 'import <packages>'` runs per workload (0: skip the baseline).
    pub baseline: usize,
}

/// One measured request.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub workload: String,
    /// `warm`, `cold-boot`, or `bare-import` for the baseline.
    pub path: String,
    /// `cold` or `warm`: what the driver asked for.
    pub phase: String,
    pub status: u16,
    /// Wall time seen by the client.
    pub latency_ms: f64,
    /// The server's `Ember-Timing` header.
    pub timing: String,
    /// Handler execution time reported by the runtime.
    pub exec_ms: Option<f64>,
}

#[cfg(test)]
impl Sample {
    /// A sample for report and plot tests.
    pub(crate) fn fixture(
        workload: &str,
        path: &str,
        latency_ms: f64,
        exec_ms: Option<f64>,
    ) -> Sample {
        Sample {
            workload: workload.into(),
            path: path.into(),
            phase: "test".into(),
            status: 200,
            latency_ms,
            timing: String::new(),
            exec_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("workload {workload}: {source}")]
    Client {
        workload: String,
        #[source]
        source: ClientError,
    },
    #[error("workload {workload}: invocation failed with HTTP {status}: {body}")]
    Failed {
        workload: String,
        status: u16,
        body: String,
    },
    /// Anything else that stopped the run before or between measurements (a deploy that
    /// could not be made, a daemon that did not get ready).
    #[error("workload {workload}: {detail}")]
    Setup { workload: String, detail: String },
    #[error("workload {workload}: baseline {python}: {detail}")]
    Baseline {
        workload: String,
        python: PathBuf,
        detail: String,
    },
}

impl BenchError {
    /// A [`BenchError::Setup`] of `workload`.
    pub fn setup(workload: &str, detail: impl Into<String>) -> BenchError {
        BenchError::Setup {
            workload: workload.to_string(),
            detail: detail.into(),
        }
    }
}

/// Deploys `w` (showing install progress through `log`).
pub async fn deploy(
    client: &Client,
    w: &Workload,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), BenchError> {
    let cerr = |source| BenchError::Client {
        workload: w.name.clone(),
        source,
    };
    let mut manifest = w.manifest.clone();
    // Enough instances that warm runs at any concurrency the driver uses stay warm.
    manifest.max_instances = Some(manifest.max_instances.unwrap_or(10).max(64));
    let body = manifest
        .deploy_body(&w.zip)
        .map_err(|e| BenchError::setup(&w.name, e.to_string()))?;
    let mut progress = |l: &str| log(&format!("  [{}] {l}", w.name));
    client
        .deploy(&w.function, &body, &mut progress)
        .await
        .map_err(cerr)?;
    Ok(())
}

/// One invocation, timed by the client.
pub async fn one(
    client: &Client,
    w: &Workload,
    event: &[u8],
    phase: &str,
) -> Result<Sample, BenchError> {
    let t0 = Instant::now();
    let r = client
        .invoke(&w.function, event.to_vec())
        .await
        .map_err(|source| BenchError::Client {
            workload: w.name.clone(),
            source,
        })?;
    let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    if r.status != 200 {
        return Err(BenchError::Failed {
            workload: w.name.clone(),
            status: r.status,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        });
    }
    Ok(Sample {
        workload: w.name.clone(),
        path: r.start.clone(),
        phase: phase.to_string(),
        status: r.status,
        latency_ms,
        exec_ms: r.phase_ms("exec"),
        timing: r.timing,
    })
}

/// Measures one workload: cold starts interleaved with baseline runs (so both see the same
/// machine), then warm invocations.
pub async fn measure(
    client: &Client,
    w: &Workload,
    opts: &BenchOptions,
) -> Result<Vec<Sample>, BenchError> {
    let event = w.manifest.bench_event();
    let mut samples = Vec::new();
    let bare = if opts.baseline > 0 {
        Some(bare_import(client, w).await?)
    } else {
        None
    };
    for i in 0..opts.cold.max(opts.baseline) {
        if i < opts.cold {
            client
                .stop_instances(&w.function)
                .await
                .map_err(|source| BenchError::Client {
                    workload: w.name.clone(),
                    source,
                })?;
            samples.push(one(client, w, &event, "cold").await?);
        }
        if let Some((python, code)) = &bare
            && i < opts.baseline
        {
            samples.push(bare_run(w, python, code).await?);
        }
    }
    one(client, w, &event, "warm-up").await?;
    let conc = opts.concurrency.max(1);
    let per_task = opts.warm.div_ceil(conc);
    let shared = Arc::new((client.clone(), w.clone(), event.clone()));
    let mut tasks = Vec::new();
    for t in 0..conc {
        let shared = shared.clone();
        let n = per_task.min(opts.warm.saturating_sub(t * per_task));
        tasks.push(tokio::spawn(async move {
            let (client, w, event) = &*shared;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(one(client, w, event, "warm").await?);
            }
            Ok::<_, BenchError>(v)
        }));
    }
    for t in tasks {
        match t.await {
            Ok(r) => samples.extend(r?),
            Err(e) => {
                return Err(BenchError::setup(
                    &w.name,
                    format!("a driver task failed: {e}"),
                ));
            }
        }
    }
    Ok(samples)
}

/// The interpreter and import statement of the bare-import baseline: the function's own
/// environment, importing its packages' top-level modules.
async fn bare_import(client: &Client, w: &Workload) -> Result<(PathBuf, String), BenchError> {
    let info = client
        .get(&w.function)
        .await
        .map_err(|source| BenchError::Client {
            workload: w.name.clone(),
            source,
        })?;
    let python = PathBuf::from(info["python"].as_str().unwrap_or("/usr/bin/python3"));
    let imports: Vec<String> = info["imports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // os._exit: a cold boot never tears the interpreter down, so neither may the baseline
    // (for pandas + scikit-learn, teardown alone is ~350 ms).
    let code = if imports.is_empty() {
        "import os; os._exit(0)".to_string()
    } else {
        format!("import {}; import os; os._exit(0)", imports.join(", "))
    };
    Ok((python, code))
}

/// Times one `<env python> -I -c 'import <packages>; os._exit(0)'`: the floor a cold boot is
/// compared with.
async fn bare_run(w: &Workload, python: &PathBuf, code: &str) -> Result<Sample, BenchError> {
    let t0 = Instant::now();
    let st = tokio::process::Command::new(python)
        .args(["-I", "-c", code])
        .env_clear()
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .status()
        .await;
    let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    match st {
        Ok(s) if s.success() => Ok(Sample {
            workload: w.name.clone(),
            path: "bare-import".into(),
            phase: "baseline".into(),
            status: 0,
            latency_ms,
            timing: code.to_string(),
            exec_ms: None,
        }),
        other => Err(BenchError::Baseline {
            workload: w.name.clone(),
            python: python.clone(),
            detail: format!("{other:?}"),
        }),
    }
}
