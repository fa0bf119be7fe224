//! Function logs: what instances print, plus the node's notes about them, appended to
//! `logs/<function>.log` and rotated to `<function>.log.1` past a size cap, so a chatty
//! function costs at most twice the cap on disk.
//!
//! Line format: `<RFC 3339 UTC time> <instance> <stream> <text>`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ember_runtime::{LogSink, Stream};

pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
    open: Mutex<HashMap<String, (File, u64)>>,
    /// Invocations collecting their own lines (`X-Amz-Log-Type: Tail`), per function.
    captures: Mutex<HashMap<String, Vec<Arc<Mutex<Captured>>>>>,
}

/// Lines seen by a capture: (instance, `stream text`), the newest 64 KiB.
#[derive(Default)]
struct Captured {
    lines: std::collections::VecDeque<(String, String)>,
    bytes: usize,
    last: Option<std::time::Instant>,
}

const CAPTURE_BYTES: usize = 64 * 1024;

/// Collects what one invocation's instance logs while it lives; see [`LogStore::capture`].
pub struct Capture {
    store: Arc<LogStore>,
    function: String,
    buf: Arc<Mutex<Captured>>,
}

impl Capture {
    /// The lines `instance` logged, once its output has settled: a runtime's last lines can
    /// still be in its pipe when its answer arrives, so this waits until no line has come
    /// for 5 ms (at most 50 ms). With no instance (none served: its init failed), every line
    /// the function logged meanwhile: the failed start's, which say why.
    pub async fn finish(self, instance: &str) -> String {
        let t0 = std::time::Instant::now();
        loop {
            let quiet = {
                let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
                b.last
                    .is_none_or(|l| l.elapsed() >= std::time::Duration::from_millis(5))
            };
            if (quiet && t0.elapsed() >= std::time::Duration::from_millis(5))
                || t0.elapsed() >= std::time::Duration::from_millis(50)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (inst, text) in &b.lines {
            if inst == instance || instance.is_empty() {
                out.push_str(text);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let mut caps = self
            .store
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = caps.get_mut(&self.function) {
            v.retain(|c| !Arc::ptr_eq(c, &self.buf));
            if v.is_empty() {
                caps.remove(&self.function);
            }
        }
    }
}

/// The function whose log `function` (a name, or a published version's `name:N`) writes.
fn log_of(function: &str) -> &str {
    crate::versions::split_qualified(function).0
}

impl LogStore {
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Arc<LogStore>> {
        fs::create_dir_all(&dir)?;
        Ok(Arc::new(LogStore {
            dir,
            max_bytes: max_bytes.max(4096),
            open: Mutex::new(HashMap::new()),
            captures: Mutex::new(HashMap::new()),
        }))
    }

    /// Starts collecting the lines of `function`, for one invocation's log tail.
    pub fn capture(self: &Arc<Self>, function: &str) -> Capture {
        let buf = Arc::new(Mutex::new(Captured::default()));
        self.captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(function.to_string())
            .or_default()
            .push(buf.clone());
        Capture {
            store: self.clone(),
            function: function.to_string(),
            buf,
        }
    }

    fn captured(&self, function: &str, instance: &str, stream: &str, text: &[u8]) {
        let caps = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = caps.get(function) else {
            return;
        };
        // The instance's own output as it wrote it; the node's notes marked as such.
        let text = String::from_utf8_lossy(text);
        let line = match stream {
            "event" => format!("[ember] {text}"),
            _ => text.into_owned(),
        };
        for c in list {
            let mut b = c.lock().unwrap_or_else(|p| p.into_inner());
            b.bytes += line.len();
            b.lines.push_back((instance.to_string(), line.clone()));
            while b.bytes > CAPTURE_BYTES
                && let Some((_, old)) = b.lines.pop_front()
            {
                b.bytes -= old.len();
            }
            b.last = Some(std::time::Instant::now());
        }
    }

    /// A function's log file: its published versions (`name:N`) write to it too, as
    /// Lambda's versions share their function's log group.
    fn path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{}.log", log_of(function)))
    }

    /// Appends one line to a function's log.
    pub fn append(&self, function: &str, instance: &str, stream: &str, text: &[u8]) {
        self.captured(function, instance, stream, text);
        let now = humantime::format_rfc3339_millis(SystemTime::now());
        let mut line = Vec::with_capacity(text.len() + 64);
        let _ = write!(line, "{now} {instance} {stream} ");
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.write_line(&mut open, function, &line) {
            tracing::warn!(function, "writing the function log failed: {e}");
            open.remove(function);
        }
    }

    fn write_line(
        &self,
        open: &mut HashMap<String, (File, u64)>,
        function: &str,
        line: &[u8],
    ) -> std::io::Result<()> {
        let path = self.path(function);
        let function = log_of(function);
        if !open.contains_key(function) {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = f.metadata()?.len();
            open.insert(function.to_string(), (f, len));
        }
        let Some((f, len)) = open.get_mut(function) else {
            return Ok(());
        };
        if *len + line.len() as u64 > self.max_bytes {
            fs::rename(&path, path.with_extension("log.1"))?;
            *f = OpenOptions::new().create(true).append(true).open(&path)?;
            *len = 0;
        }
        f.write_all(line)?;
        *len += line.len() as u64;
        Ok(())
    }

    /// The last `lines` lines of a function's log (at most 1 MiB of text).
    pub fn tail(&self, function: &str, lines: usize) -> std::io::Result<String> {
        const WINDOW: u64 = 1 << 20;
        let path = self.path(function);
        let mut text = Vec::new();
        for p in [path.with_extension("log.1"), path] {
            let Ok(mut f) = File::open(&p) else { continue };
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
            f.read_to_end(&mut text)?;
        }
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        let mut out = all[start..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        Ok(out)
    }

    /// Removes a function's logs (a published version's lines stay with its function's).
    pub fn remove(&self, function: &str) {
        if log_of(function) != function {
            return;
        }
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
        let path = self.path(function);
        let _ = fs::remove_file(path.with_extension("log.1"));
        let _ = fs::remove_file(path);
    }

    /// A sink that writes one function's runtime output.
    pub fn sink(self: &Arc<Self>, function: &str) -> Arc<dyn LogSink> {
        Arc::new(FunctionSink {
            store: self.clone(),
            function: function.to_string(),
        })
    }
}

struct FunctionSink {
    store: Arc<LogStore>,
    function: String,
}

impl LogSink for FunctionSink {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]) {
        let s = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        self.store.append(&self.function, instance, s, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_tail() {
        let d = tempfile::tempdir().unwrap();
        let s = LogStore::open(d.path().to_path_buf(), 4096).unwrap();
        for i in 0..200 {
            s.append("f", "i1", "stdout", format!("line {i}").as_bytes());
        }
        let tail = s.tail("f", 3).unwrap();
        assert!(tail.ends_with("stdout line 199\n"), "{tail}");
        assert_eq!(tail.lines().count(), 3);
        let on_disk = fs::metadata(d.path().join("f.log")).unwrap().len()
            + fs::metadata(d.path().join("f.log.1")).unwrap().len();
        assert!(on_disk <= 2 * 4096);
        s.remove("f");
        assert_eq!(s.tail("f", 10).unwrap(), "");
    }
}
