//! Ember's runtime wire protocol: length-prefixed frames on a stream socket that the instance
//! inherits as a file descriptor (stdout and stderr stay free for the function's log).
//!
//! ```text
//! frame   := len:u32be kind:u8 body[len-1]        1 <= len <= MAX_FRAME
//! BOOT        host -> rt  JSON {"imports": [module, ...], "snapshot"?: true}
//! PRELOADED   rt -> host  JSON {"import_packages_us": n, "threads"?: n, "closed_fds"?: n}
//! INIT        host -> rt  JSON {"function", "handler", "code_dir", "memory_mb", "version",
//!                               "instance", "restored"?: true, "env"?: {name: value}}
//! HOOKED      rt -> host  JSON {}                     (restored only: the hook is done, the
//!                                                     function's own code runs next)
//! READY       rt -> host  JSON {"import_handler_us": n, "hook_us"?: n, "after_restore_us"?: n,
//!                              "imported"?: [module, ...]}  (modules the handler's import
//!                              added, not of its own code: the node learns images from them)
//! INIT_ERROR  rt -> host  JSON {"type", "message", "traceback": [line, ...]}
//! INVOKE      host -> rt  hlen:u32be JSON{"request_id", "deadline_ms",
//!                              "invoked_function_arn", "client_context"?} event-bytes
//! RESULT      rt -> host  hlen:u32be JSON{"duration_us"} result-bytes (JSON, or the
//!                              handler's own bytes)
//! ERROR       rt -> host  JSON {"type", "message", "traceback", "duration_us", "marshal"?}
//!             (`traceback`: the frames, one string each, as Lambda's stackTrace gives them)
//! SNAPSHOT    host -> rt  JSON {}                     (idle only: the function snapshot point)
//! SNAPSHOT_READY rt -> host JSON {"hook_us": n, "prepare_us": n, "threads": n}
//!                         or {"hook_us": n, "error": {"type", "message", "traceback"}}
//! CONTINUE    host -> rt  JSON {}                     (after SNAPSHOT_READY: serve on)
//! ```
//!
//! BOOT and INIT are separate so that a dependency image can be taken between them (packages
//! imported, no function code yet). With `snapshot`, the runtime prepares for that dump after
//! its imports (a full garbage collection, then `gc.freeze()`; descriptors above the
//! protocol's closed) and says how many threads it has: an image needs exactly one. With
//! `restored`, the INIT goes to a process restored from such an image, which first runs the
//! after-restore hook (new seeds for what Python seeded at import) and says HOOKED before it
//! imports the handler: what goes wrong before HOOKED is the image's fault, what goes wrong
//! after it is the function's own. The event and the result travel as raw bytes so that the
//! host never re-encodes a payload.
//!
//! A function snapshot is taken at an idle instance (after READY or between invocations):
//! SNAPSHOT runs the function's before-snapshot hooks and the platform's preparation, and
//! SNAPSHOT_READY says whether the process may be dumped (not when a hook raised; the instance
//! serves on). The runtime then blocks reading its next frame while the host dumps it: the
//! original gets CONTINUE and waits for INVOKE again; a copy restored from the snapshot gets
//! INIT with `restored` (its own identity and environment), runs the platform's after-restore
//! hook, says HOOKED, runs the function's after-restore hooks and says READY (INIT_ERROR when
//! one of them raised), without importing the handler again.
//!
//! ```text
//! idle --SNAPSHOT--> [before-snapshot hooks] --SNAPSHOT_READY{error}--> idle
//!                                            --SNAPSHOT_READY--> point --CONTINUE--> idle
//!                                                                      --INIT(restored)--> HOOKED
//!                                                                          --> READY --> idle
//!                                                                          --> INIT_ERROR (exits)
//! ```

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest frame either side accepts; payloads are capped far below this by the API.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Boot = 1,
    Preloaded = 2,
    Init = 3,
    Ready = 4,
    InitError = 5,
    Invoke = 6,
    Result = 7,
    Error = 8,
    Hooked = 9,
    Snapshot = 10,
    SnapshotReady = 11,
    Continue = 12,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Boot,
            2 => Kind::Preloaded,
            3 => Kind::Init,
            4 => Kind::Ready,
            5 => Kind::InitError,
            6 => Kind::Invoke,
            7 => Kind::Result,
            8 => Kind::Error,
            9 => Kind::Hooked,
            10 => Kind::Snapshot,
            11 => Kind::SnapshotReady,
            12 => Kind::Continue,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the runtime closed its protocol connection")]
    Closed,
    #[error("protocol i/o failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is outside 1..={MAX_FRAME}")]
    BadLength(usize),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: &'static str, got: Kind },
    #[error("malformed {what} frame: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// One frame as read off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: Kind,
    parts: &[&[u8]],
) -> Result<(), ProtocolError> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > MAX_FRAME {
        return Err(ProtocolError::BadLength(len));
    }
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = kind as u8;
    w.write_all(&head).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Frame, ProtocolError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ProtocolError::BadLength(len));
    }
    r.read_exact(&mut head[4..5]).await.map_err(eof_closed)?;
    let kind = Kind::from_u8(head[4]).ok_or(ProtocolError::BadKind(head[4]))?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body).await.map_err(eof_closed)?;
    Ok(Frame { kind, body })
}

fn eof_closed(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Closed
    } else {
        ProtocolError::Io(e)
    }
}

/// Splits a `hlen:u32be header payload` body into its JSON header and raw payload.
pub fn split_headed<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
) -> Result<(T, &'a [u8]), ProtocolError> {
    let malformed = |detail: String| ProtocolError::Malformed { what, detail };
    if body.len() < 4 {
        return Err(malformed("shorter than its header length".into()));
    }
    let hlen = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let rest = &body[4..];
    if hlen > rest.len() {
        return Err(malformed(format!(
            "header length {hlen} past the frame end"
        )));
    }
    let header = serde_json::from_slice(&rest[..hlen]).map_err(|e| malformed(e.to_string()))?;
    Ok((header, &rest[hlen..]))
}

pub fn parse_json<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed {
        what,
        detail: e.to_string(),
    })
}

#[derive(Debug, Serialize)]
pub struct Boot<'a> {
    pub imports: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

#[derive(Debug, Deserialize)]
pub struct Preloaded {
    pub import_packages_us: u64,
    /// With `snapshot`: the process's threads after the imports (`/proc/self/task`).
    #[serde(default)]
    pub threads: Option<u32>,
    /// With `snapshot`: descriptors the pre-snapshot hook closed.
    #[serde(default)]
    pub closed_fds: u32,
}

#[derive(Debug, Serialize)]
pub struct Init<'a> {
    pub function: &'a str,
    pub handler: &'a str,
    pub code_dir: &'a str,
    pub memory_mb: u32,
    pub version: u64,
    pub instance: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub restored: bool,
    /// With `restored`: the instance's whole environment, replacing the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<&'a std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub struct Ready {
    pub import_handler_us: u64,
    /// With `restored`: the after-restore hook's time.
    #[serde(default)]
    pub hook_us: u64,
    /// In a copy restored from a function snapshot: the function's after-restore hooks' time.
    #[serde(default)]
    pub after_restore_us: u64,
    /// Modules the handler's import added, other than the function's own code (as the
    /// runtime, which runs the function's code, says: the node checks them).
    #[serde(default)]
    pub imported: Vec<String>,
}

/// The runtime's answer to SNAPSHOT.
#[derive(Debug, Deserialize)]
pub struct SnapshotReady {
    /// The function's before-snapshot hooks.
    pub hook_us: u64,
    /// The platform's preparation (a full collection, `gc.freeze()`).
    #[serde(default)]
    pub prepare_us: u64,
    /// The process's threads (`/proc/self/task`); absent with `error`.
    #[serde(default)]
    pub threads: Option<u32>,
    /// A before-snapshot hook raised: no snapshot may be taken.
    #[serde(default)]
    pub error: Option<FunctionError>,
}

#[derive(Debug, Serialize)]
pub struct InvokeHeader<'a> {
    pub request_id: &'a str,
    pub deadline_ms: u64,
    /// What the handler's `context.invoked_function_arn` says.
    pub invoked_function_arn: &'a str,
    /// The caller's client context (a JSON object), when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_context: Option<&'a serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ResultHeader {
    pub duration_us: u64,
    /// On a process's first invocation: the modules it imported (not its own code's).
    #[serde(default)]
    pub imported: Vec<String>,
}

/// An exception raised by the function's code, as the runtime reports it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct FunctionError {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    #[serde(default)]
    pub traceback: Vec<String>,
    #[serde(default, skip_serializing)]
    pub duration_us: u64,
    /// The handler returned, but its result is not JSON-serialisable.
    #[serde(default, skip_serializing)]
    pub marshal: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Invoke, &[b"ab", b"cd"])
            .await
            .unwrap();
        assert_eq!(buf, [0, 0, 0, 5, 6, b'a', b'b', b'c', b'd']);
        let f = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(f.kind, Kind::Invoke);
        assert_eq!(f.body, b"abcd");
    }

    #[tokio::test]
    async fn hostile_frames_are_refused() {
        let zero = [0u8, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut zero.as_slice()).await,
            Err(ProtocolError::BadLength(0))
        ));
        let huge = [0xffu8, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame(&mut huge.as_slice()).await,
            Err(ProtocolError::BadLength(_))
        ));
        let kind = [0u8, 0, 0, 1, 99];
        assert!(matches!(
            read_frame(&mut kind.as_slice()).await,
            Err(ProtocolError::BadKind(99))
        ));
        let short = [0u8, 0, 0, 9, 7, 1];
        assert!(matches!(
            read_frame(&mut short.as_slice()).await,
            Err(ProtocolError::Closed)
        ));
        let empty: [u8; 0] = [];
        assert!(matches!(
            read_frame(&mut empty.as_slice()).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn headed_bodies_are_bounds_checked() {
        let body = [0u8, 0, 0, 50, b'{', b'}'];
        assert!(split_headed::<serde_json::Value>("RESULT", &body).is_err());
        let mut ok = vec![0u8, 0, 0, 17];
        ok.extend_from_slice(br#"{"duration_us":3}[1,2]"#);
        let (h, rest): (ResultHeader, _) = split_headed("RESULT", &ok).unwrap();
        assert_eq!(h.duration_us, 3);
        assert_eq!(rest, b"[1,2]");
    }

    #[test]
    fn snapshot_ready_comes_in_two_shapes() {
        let ok: SnapshotReady = parse_json(
            "SNAPSHOT_READY",
            br#"{"hook_us":5,"prepare_us":7,"threads":1}"#,
        )
        .unwrap();
        assert_eq!((ok.hook_us, ok.prepare_us, ok.threads), (5, 7, Some(1)));
        assert!(ok.error.is_none());
        let failed: SnapshotReady = parse_json(
            "SNAPSHOT_READY",
            br#"{"hook_us":2,"error":{"type":"OSError","message":"m","traceback":["t"]}}"#,
        )
        .unwrap();
        assert_eq!(failed.error.unwrap().error_type, "OSError");
        assert!(parse_json::<SnapshotReady>("SNAPSHOT_READY", b"{}").is_err());
        for kind in [Kind::Snapshot, Kind::SnapshotReady, Kind::Continue] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
    }
}
