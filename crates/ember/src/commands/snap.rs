//! `ember snap`: the checkpoint/restore engine on its own (dump, restore, inspect).

use std::os::fd::RawFd;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use std::sync::Arc;

use ember_snap::lazy::{FileSource, PageSource, Policy, RemoteSource};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Dump a stopped or running single-threaded process into an image directory
    Dump {
        /// The process to dump
        #[arg(long)]
        pid: i32,
        /// Image directory to write
        #[arg(long)]
        out: PathBuf,
        /// Descriptors the caller owns (stdio, a protocol pipe): a restore hands them in
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        inherit: Vec<i32>,
        /// Let the process run on after the dump (by default it is killed)
        #[arg(long)]
        leave_running: bool,
        /// Longest the process may be kept stopped, in milliseconds: past it the dump lets
        /// the process go unchanged and fails naming the step it was at
        #[arg(long, default_value_t = 10_000)]
        freeze_limit_ms: u64,
        /// Dump as a layer over this image, the one the process was restored from: only
        /// the pages that differ from it are stored (restoring the layer loads it too)
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Restore instances of an image, wired to this command's descriptors; waits for them
    Restore {
        /// Image directory
        dir: PathBuf,
        /// How many instances, restored at the same time
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// How pages reach the instances: eager (all before they run), lazy (on fault),
        /// bulk (first fault, then all in the background), prefetch (the recorded working
        /// set first), mapped (copy-on-write from a shared memfd; see docs/snap.md)
        #[arg(long, default_value = "eager")]
        policy: Policy,
        /// Where a lazy or bulk restore gets pages: memory (the image loaded here), file
        /// (its page file, read as needed) or HOST:PORT of an `ember snap serve`
        #[arg(long, default_value = "memory")]
        source: String,
        /// Token of the page server (with a HOST:PORT source)
        #[arg(
            long,
            env = "EMBER_SNAP_TOKEN",
            hide_env_values = true,
            default_value = ""
        )]
        token: String,
        /// Lazy: record the pages the first instance touched as the image's working set
        /// (DIR/workingset), which `--policy prefetch` installs before resuming
        #[arg(long)]
        record_working_set: bool,
    },
    /// Serve images' pages over TCP to lazy restores on other nodes (until killed)
    Serve {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Token clients must present
        #[arg(long, env = "EMBER_SNAP_TOKEN", hide_env_values = true)]
        token: String,
        /// Image directories to serve (loaded and checked into memory)
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Print a human summary of an image: VMAs, pages, sizes, process state, requirements, parent
    Inspect {
        /// Image directory
        dir: PathBuf,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || match args.verb {
        Verb::Dump {
            pid,
            out,
            inherit,
            leave_running,
            freeze_limit_ms,
            parent,
        } => {
            let opts = DumpOptions {
                inherited: inherit,
                freeze_limit: std::time::Duration::from_millis(freeze_limit_ms),
            };
            dump(pid, out, &opts, leave_running, parent)
        }
        Verb::Restore {
            dir,
            count,
            policy,
            source,
            token,
            record_working_set,
        } => restore(dir, count, policy, &source, &token, record_working_set),
        Verb::Serve {
            listen,
            token,
            dirs,
        } => {
            let images = dirs
                .iter()
                .map(|d| LoadedImage::load(d).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let listener = std::net::TcpListener::bind(&listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "serving {} image(s) on {}",
                images.len(),
                listener.local_addr()?
            );
            ember_snap::lazy::remote::serve(listener, token, images)?;
            Ok(())
        }
        Verb::Inspect { dir } => {
            let meta = ember_snap::image::read_meta(&dir)?;
            print!("{}", ember_snap::image::describe(&dir, &meta));
            Ok(())
        }
    })
    .await?
}

fn dump(
    pid: i32,
    out: PathBuf,
    opts: &DumpOptions,
    leave_running: bool,
    parent: Option<PathBuf>,
) -> anyhow::Result<()> {
    let layered = parent.is_some();
    let stats = match parent {
        Some(p) => {
            let parent = LoadedImage::load(&p)?;
            ember_snap::dump_layer(pid, &out, opts, &parent)?
        }
        None => ember_snap::dump(pid, &out, opts)?,
    };
    if !leave_running {
        // SAFETY: kill takes plain integers; the pid was just dumped and is ours to end.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let layer = if layered {
        format!("{} pages the parent's, ", stats.parent_pages)
    } else {
        String::new()
    };
    eprintln!(
        "dumped pid {pid} to {}: {} VMAs, {} pages stored ({layer}{} zero pages left out, {} read through a lazy restore's page server), {} files; stopped {:.2} ms, total {:.2} ms",
        out.display(),
        stats.vmas,
        stats.pages,
        stats.zero_pages,
        stats.faulted_in,
        stats.files,
        stats.frozen_us as f64 / 1000.0,
        stats.total_us as f64 / 1000.0
    );
    Ok(())
}

/// The image (loaded, or only opened when pages come from elsewhere) and the options of a
/// restore with `policy` from `source` (memory, file, or HOST:PORT of a page server).
fn restore_options(
    dir: &std::path::Path,
    policy: Policy,
    source: &str,
    token: &str,
) -> anyhow::Result<(Arc<LoadedImage>, RestoreOptions)> {
    let in_memory = matches!(policy, Policy::Eager | Policy::Mapped) || source == "memory";
    let img = Arc::new(if in_memory {
        LoadedImage::load(dir)?
    } else {
        LoadedImage::open(dir)?
    });
    let source: Arc<dyn PageSource> = match source {
        "memory" => img.clone(),
        "file" => Arc::new(FileSource::open(dir, &img.meta)?),
        addr if addr.contains(':') => Arc::new(RemoteSource::connect(addr, token, &img.meta)?),
        other => bail!("unknown page source {other:?}: use memory, file or HOST:PORT"),
    };
    let working_set = match policy {
        Policy::Prefetch => Some(Arc::new(
            ember_snap::image::read_working_set(dir, &img.meta)?.with_context(|| {
                format!(
                    "{} has no working set: run a lazy restore with --record-working-set first",
                    dir.display()
                )
            })?,
        )),
        _ => None,
    };
    let opts = RestoreOptions {
        policy,
        source: Some(source),
        working_set,
        ..RestoreOptions::default()
    };
    Ok((img, opts))
}

/// What `ember snap restore` says of one restored process.
fn restored_line(r: &ember_snap::Restored) -> String {
    let s = r.stats;
    format!(
        "restored pid {} in {:.2} ms (attach {:.2}, map {:.2}, fill {:.2}, state {:.2}, finish {:.2}; {} pages, {} VMAs, {} syscalls in {} round trips)",
        r.pid,
        s.total_us as f64 / 1000.0,
        s.attach_us as f64 / 1000.0,
        s.map_us as f64 / 1000.0,
        s.fill_us as f64 / 1000.0,
        s.state_us as f64 / 1000.0,
        s.finish_us as f64 / 1000.0,
        s.pages,
        s.vmas,
        s.injected,
        s.round_trips
    )
}

fn restore(
    dir: PathBuf,
    count: usize,
    policy: Policy,
    source: &str,
    token: &str,
    record: bool,
) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let (img, opts) = restore_options(&dir, policy, source, token)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut fds: Vec<(RawFd, RawFd)> = Vec::new();
    for n in img.meta.inherited_fds() {
        // SAFETY: F_GETFD only asks whether our descriptor `n` is open.
        if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
            bail!(
                "the image needs descriptor {n} from its caller; open it when running this command (for example {n}<>some-file)"
            );
        }
        fds.push((n, n));
    }
    eprintln!("loaded {} in {load_ms:.2} ms", dir.display());
    // Each restoring thread is its process's parent: a death signal the process asked for
    // (PR_SET_PDEATHSIG) comes when that thread ends, so the thread itself waits for it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..count.max(1))
            .map(|_| {
                let fds = fds.clone();
                let (img, opts, tx) = (&img, &opts, tx.clone());
                s.spawn(move || {
                    let r = ember_snap::restore(img, Target::Fork { fds }, opts)?;
                    let _ = tx.send(restored_line(&r));
                    let mut st = 0;
                    // SAFETY: reaping our own child (this thread's) into a local.
                    unsafe { libc::waitpid(r.pid, &mut st, 0) };
                    Ok::<_, ember_snap::RestoreError>((r.pid, st, r.server))
                })
            })
            .collect();
        drop(tx);
        for line in rx {
            eprintln!("{line}");
        }
        hs.into_iter().map(|h| h.join()).collect()
    });
    let mut ended = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(Ok(done)) => ended.push(done),
            Ok(Err(e)) => first_err = first_err.or(Some(anyhow::Error::from(e))),
            Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("a restore thread panicked"))),
        }
    }
    let mut failed = 0;
    let mut recorded = false;
    for (pid, st, server) in ended {
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            failed += 1;
            eprintln!("pid {pid} ended with status {st:#x}");
        }
        if let Some(server) = server {
            if record && !recorded {
                let ws = server.working_set();
                ember_snap::image::write_working_set(&dir, &img.meta, &ws)?;
                eprintln!(
                    "recorded a working set of {} pages in {}",
                    ws.len(),
                    dir.display()
                );
                recorded = true;
            }
            match server.wait() {
                Ok(l) => eprintln!(
                    "pid {pid} page server: {} faults ({} for zero pages), {} pages installed, {:.1} MiB fetched, blocked {:.2} ms, {} memory events",
                    l.faults,
                    l.zero_faults,
                    l.pages_installed,
                    l.bytes_fetched as f64 / (1 << 20) as f64,
                    l.blocked_us as f64 / 1000.0,
                    l.events
                ),
                Err(e) => first_err = first_err.or(Some(anyhow::Error::from(e))),
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e).context("restore failed");
    }
    if failed > 0 {
        bail!("{failed} restored process(es) did not exit cleanly");
    }
    Ok(())
}
