//! Checking a tenant's zip archive and unpacking it beneath a fresh directory.
//!
//! An archive is hostile input, and the daemon that unpacks it (and later byte-compiles it)
//! runs as root, so the whole archive is judged before anything is written:
//!
//! ```text
//! read the central directory -> plan: one entry per path, each name checked
//!     (UTF-8, relative, no '..', <= 255 bytes a component, <= 1024 bytes, <= 64 deep)
//!   -> structure: no path twice, no entry under a file or under a symlink of the archive
//!   -> every symlink resolved inside the planned tree, following the archive's own links
//!      (at most 40 hops): it must end on an entry of the archive, never above the root
//!   -> write: directories, then files (each its declared size, the total under budget),
//!      then symlinks; every write is openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the
//!      staging directory, so nothing is written through a link even if a check above missed
//!   -> the kernel's word: each symlink opened with RESOLVE_BENEATH from the root
//! ```
//!
//! The virtual resolution is what makes the later steps safe: once every link of the tree
//! resolves inside it, following links (compileall as root, the entry-point check) stays in
//! the tenant's own tree. Names shown in errors are the archive's own, never a host path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use super::{CodeError, Limits};
use crate::sys;

/// Longest path of an entry, in bytes (the code directory's own path comes on top).
pub const MAX_PATH: usize = 1024;
/// Longest component of an entry's path (the kernel's NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Deepest nesting of an entry.
pub const MAX_DEPTH: usize = 64;
/// Most symlinks one resolution follows (the kernel's own limit).
const MAX_HOPS: usize = 40;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What the archive puts at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { index: usize, exec: bool, size: u64 },
    Dir,
    Link(String),
}

/// The archive's tree, checked, before anything is written.
#[derive(Debug, Default)]
struct Plan {
    /// Explicit entries by path, and the entry's name as the archive spells it.
    nodes: BTreeMap<PathBuf, (Node, String)>,
}

fn refuse(entry: &str, rule: impl Into<String>) -> CodeError {
    CodeError::Entry {
        entry: entry.to_string(),
        rule: rule.into(),
    }
}

/// Checks `zip` whole, then unpacks it beneath `dest` (an empty directory).
pub fn unpack(zip: &[u8], dest: &Path, limits: Limits) -> Result<(), CodeError> {
    let mut archive =
        zip::ZipArchive::new(io::Cursor::new(zip)).map_err(|e| CodeError::NotZip(e.to_string()))?;
    if archive.has_duplicate_names() {
        let name = first_duplicate(zip).unwrap_or_else(|| "(unknown)".into());
        return Err(refuse(&name, "the archive holds this name twice"));
    }
    if archive.len() > limits.max_entries {
        return Err(CodeError::TooManyEntries(archive.len(), limits.max_entries));
    }
    if archive.is_empty() {
        return Err(CodeError::Empty);
    }
    let size = zip.len() as u64;
    let budget = size
        .saturating_mul(limits.max_ratio)
        .min(limits.max_unpacked);
    let plan = plan(&mut archive, budget, size, limits)?;
    let implied = check_structure(&plan)?;
    // Directories an archive implies are written too: they count.
    let entries = plan.nodes.len() + implied.len();
    if entries > limits.max_entries {
        return Err(CodeError::TooManyEntries(entries, limits.max_entries));
    }
    let mut resolver = Resolver::new(&plan, &implied);
    for (path, (node, name)) in &plan.nodes {
        if let Node::Link(target) = node {
            resolver
                .link(path, target, 1)
                .map_err(|rule| refuse(name, rule))?;
        }
    }
    write(&mut archive, &plan, &implied, dest)
}

/// Reads every entry's header (and a symlink's target) into a [`Plan`].
fn plan(
    archive: &mut zip::ZipArchive<io::Cursor<&[u8]>>,
    budget: u64,
    size: u64,
    limits: Limits,
) -> Result<Plan, CodeError> {
    let mut plan = Plan::default();
    let mut declared: u64 = 0;
    for index in 0..archive.len() {
        let mut f = archive
            .by_index(index)
            .map_err(|e| CodeError::NotZip(e.to_string()))?;
        let shown = String::from_utf8_lossy(f.name_raw()).into_owned();
        let rel = entry_path(f.name_raw()).map_err(|rule| refuse(&shown, rule))?;
        if f.encrypted() {
            return Err(refuse(&shown, "encrypted entries are not supported"));
        }
        let mode = f.unix_mode().unwrap_or(0);
        let kind = mode & S_IFMT;
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR && kind != S_IFLNK {
            return Err(refuse(
                &shown,
                "device files, fifos and sockets are not allowed",
            ));
        }
        declared = declared.saturating_add(f.size());
        if declared > budget {
            return Err(too_large(budget, size, limits));
        }
        let node = if f.is_dir() || kind == S_IFDIR {
            Node::Dir
        } else if kind == S_IFLNK || f.is_symlink() {
            let mut raw = Vec::new();
            (&mut f)
                .take(MAX_PATH as u64 + 1)
                .read_to_end(&mut raw)
                .map_err(|e| CodeError::NotZip(format!("entry {shown:?}: {e}")))?;
            let target = String::from_utf8(raw)
                .map_err(|_| refuse(&shown, "its symlink target is not UTF-8"))?;
            check_target(&target).map_err(|rule| refuse(&shown, rule))?;
            Node::Link(target)
        } else {
            Node::File {
                index,
                exec: mode & 0o111 != 0,
                size: f.size(),
            }
        };
        match plan.nodes.get(&rel) {
            Some((Node::Dir, _)) if node == Node::Dir => {}
            Some((_, first)) if *first != shown => {
                return Err(refuse(
                    &shown,
                    format!("it names the same path as entry {first:?}"),
                ));
            }
            Some(_) => return Err(refuse(&shown, "the archive holds this name twice")),
            None => {
                plan.nodes.insert(rel, (node, shown));
            }
        }
    }
    Ok(plan)
}

fn too_large(budget: u64, size: u64, limits: Limits) -> CodeError {
    CodeError::TooLarge {
        limit: budget,
        ratio: limits.max_ratio,
        size,
    }
}

/// Checks an entry name and turns it into a relative path inside the tree.
fn entry_path(raw: &[u8]) -> Result<PathBuf, String> {
    let name = std::str::from_utf8(raw).map_err(|_| "its name is not UTF-8")?;
    if name.contains('\0') || name.contains('\\') {
        return Err("its name contains NUL or a backslash".into());
    }
    if name.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if name.len() > MAX_PATH {
        return Err(format!("its name is longer than {MAX_PATH} bytes"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => {
                if p.len() > MAX_NAME {
                    return Err(format!(
                        "a component of its name is longer than {MAX_NAME} bytes"
                    ));
                }
                out.push(p);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' components are not allowed".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed".into());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("its name is empty".into());
    }
    if out.components().count() > MAX_DEPTH {
        return Err(format!(
            "it is nested more than {MAX_DEPTH} directories deep"
        ));
    }
    Ok(out)
}

fn check_target(target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("its symlink target is empty");
    }
    if target.len() > MAX_PATH {
        return Err("its symlink target is longer than 1024 bytes");
    }
    if target.contains('\0') {
        return Err("its symlink target contains NUL");
    }
    if target.starts_with('/') {
        return Err("symlinks must point inside the archive (this one is absolute)");
    }
    Ok(())
}

/// No entry lies below a file or a symlink of the archive. Returns the directories that
/// exist because an entry lies below them.
fn check_structure(plan: &Plan) -> Result<BTreeSet<PathBuf>, CodeError> {
    let mut implied = BTreeSet::new();
    for (path, (_, name)) in &plan.nodes {
        for a in path.ancestors().skip(1) {
            if a.as_os_str().is_empty() {
                break;
            }
            implied.insert(a.to_path_buf());
            match plan.nodes.get(a) {
                Some((Node::File { .. }, other)) => {
                    return Err(refuse(
                        name,
                        format!("it lies under {other:?}, which is a file in the archive"),
                    ));
                }
                Some((Node::Link(_), other)) => {
                    return Err(refuse(
                        name,
                        format!("it lies under {other:?}, which is a symlink in the archive"),
                    ));
                }
                Some((Node::Dir, _)) | None => {}
            }
        }
    }
    Ok(implied)
}

/// What is at `path` in the planned tree (the root is a directory).
fn lookup<'a>(plan: &'a Plan, implied: &BTreeSet<PathBuf>, path: &Path) -> Option<Kind<'a>> {
    if path.as_os_str().is_empty() {
        return Some(Kind::Dir);
    }
    match plan.nodes.get(path) {
        Some((Node::Dir, _)) => Some(Kind::Dir),
        Some((Node::File { .. }, _)) => Some(Kind::File),
        Some((Node::Link(t), _)) => Some(Kind::Link(t)),
        None if implied.contains(path) => Some(Kind::Dir),
        None => None,
    }
}

enum Kind<'a> {
    Dir,
    File,
    Link(&'a str),
}

/// Resolves the archive's symlinks in the planned tree as the kernel would, following the
/// archive's own links: each must end on an entry of the archive (or the root) without ever
/// climbing above the root. Each link is resolved once (later links that go through it reuse
/// its result), and all of them together get [`MAX_STEPS`] path components, so a hostile
/// archive cannot make this cost more than a fraction of a second.
struct Resolver<'a> {
    plan: &'a Plan,
    implied: &'a BTreeSet<PathBuf>,
    /// Each link's resolved path once known; `None` while it is being resolved (met again
    /// then, it is part of a loop).
    done: HashMap<PathBuf, Option<Result<PathBuf, String>>>,
    steps: usize,
}

/// Path components all links of one archive may take to resolve.
const MAX_STEPS: usize = 250_000;

const OUTSIDE: &str = "symlinks must point inside the archive, and this one resolves outside it";
const LOOP: &str = "its symlink is part of a loop of symlinks (or a chain of more than 40)";

impl<'a> Resolver<'a> {
    fn new(plan: &'a Plan, implied: &'a BTreeSet<PathBuf>) -> Self {
        Resolver {
            plan,
            implied,
            done: HashMap::new(),
            steps: 0,
        }
    }

    /// Where the link at `link` (target `target`) leads; `depth` links are being followed.
    fn link(&mut self, link: &Path, target: &str, depth: usize) -> Result<PathBuf, String> {
        match self.done.get(link) {
            Some(Some(r)) => return r.clone(),
            Some(None) => return Err(LOOP.into()),
            None => {}
        }
        if depth > MAX_HOPS {
            return Err(LOOP.into());
        }
        self.done.insert(link.to_path_buf(), None);
        let start = link.parent().map(Path::to_path_buf).unwrap_or_default();
        let r = self.walk(start, target, depth);
        self.done.insert(link.to_path_buf(), Some(r.clone()));
        r
    }

    /// Follows `target` from the directory `current`.
    fn walk(
        &mut self,
        mut current: PathBuf,
        target: &str,
        depth: usize,
    ) -> Result<PathBuf, String> {
        if target.starts_with('/') {
            return Err(OUTSIDE.into());
        }
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        for (i, c) in parts.iter().enumerate() {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err("the archive's symlinks take too many steps to resolve".into());
            }
            if *c == "." {
                continue;
            }
            if *c == ".." {
                if !current.pop() {
                    return Err(OUTSIDE.into());
                }
                continue;
            }
            current.push(c);
            let mut kind = lookup(self.plan, self.implied, &current);
            if let Some(Kind::Link(next)) = kind {
                current = self.link(&current.clone(), next, depth + 1)?;
                kind = lookup(self.plan, self.implied, &current);
            }
            match kind {
                Some(Kind::Dir) => {}
                Some(Kind::File) if i + 1 == parts.len() => {}
                Some(Kind::File) => {
                    return Err(format!(
                        "its symlink goes through {:?}, a file of the archive",
                        current.display().to_string()
                    ));
                }
                // A resolved link never ends on a link: `link` follows it through.
                Some(Kind::Link(_)) => return Err(LOOP.into()),
                None => {
                    return Err(format!(
                        "its symlink points to {:?}, which the archive does not contain",
                        current.display().to_string()
                    ));
                }
            }
        }
        Ok(current)
    }
}

/// Writes the planned tree beneath `dest`: directories, files, then symlinks. Each file
/// yields at most its declared size, whose sum [`plan`] held to the budget.
fn write(
    archive: &mut zip::ZipArchive<io::Cursor<&[u8]>>,
    plan: &Plan,
    implied: &BTreeSet<PathBuf>,
    dest: &Path,
) -> Result<(), CodeError> {
    let root = sys::open_dir(dest).map_err(|source| CodeError::Io {
        entry: String::new(),
        source,
    })?;
    let io_err = |name: &str| {
        let entry = name.to_string();
        move |source| CodeError::Io { entry, source }
    };
    let mut dirs = implied.clone();
    for (path, (node, _)) in &plan.nodes {
        if *node == Node::Dir {
            dirs.insert(path.clone());
        }
    }
    // BTreeSet order puts every directory after its parent.
    for d in &dirs {
        sys::mkdir_beneath(&root, d).map_err(io_err(&d.to_string_lossy()))?;
    }
    for (path, (node, name)) in &plan.nodes {
        let Node::File {
            index,
            exec,
            size: declared,
        } = node
        else {
            continue;
        };
        let mut f = archive
            .by_index(*index)
            .map_err(|e| CodeError::NotZip(e.to_string()))?;
        let mut content = Vec::new();
        let n = (&mut f)
            .take(declared.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|e| CodeError::NotZip(format!("entry {name:?}: {e}")))? as u64;
        if n > *declared {
            return Err(refuse(name, "its content is longer than its header says"));
        }
        let out = sys::create_beneath(&root, path, *exec).map_err(io_err(name))?;
        write_all(out, &content).map_err(io_err(name))?;
    }
    for (path, (node, name)) in &plan.nodes {
        if let Node::Link(target) = node {
            sys::symlink_beneath(&root, target, path).map_err(io_err(name))?;
        }
    }
    for (path, (node, name)) in &plan.nodes {
        if matches!(node, Node::Link(_)) {
            sys::resolves_beneath(&root, path).map_err(|e| {
                refuse(
                    name,
                    format!("its symlink does not resolve inside the archive ({e})"),
                )
            })?;
        }
    }
    Ok(())
}

fn write_all(fd: OwnedFd, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)?;
    f.sync_all()
}

/// The first name the central directory holds twice, for the error message (the zip reader
/// keeps only the last copy of each name). `None` when the directory cannot be walked here
/// (zip64), which only costs the name in the message.
fn first_duplicate(zip: &[u8]) -> Option<String> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const CDH: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    let from = zip.len().saturating_sub(22 + 65_535);
    let at = (from..=zip.len().checked_sub(22)?)
        .rev()
        .find(|&i| zip[i..i + 4] == EOCD)?;
    let u16_at = |i: usize| Some(u16::from_le_bytes(zip.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(zip.get(i..i + 4)?.try_into().ok()?));
    let count = u16_at(at + 10)?;
    let mut pos = u32_at(at + 16)? as usize;
    let mut seen = HashSet::new();
    for _ in 0..count {
        if zip.get(pos..pos + 4)? != CDH {
            return None;
        }
        let name_len = u16_at(pos + 28)? as usize;
        let extra = u16_at(pos + 30)? as usize;
        let comment = u16_at(pos + 32)? as usize;
        let name = zip.get(pos + 46..pos + 46 + name_len)?;
        if !seen.insert(name) {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        pos += 46 + name_len + extra + comment;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(entries: &[(&str, Node)]) -> Plan {
        let mut p = Plan::default();
        for (path, node) in entries {
            p.nodes
                .insert(PathBuf::from(path), (node.clone(), path.to_string()));
        }
        p
    }

    fn resolve(
        p: &Plan,
        implied: &BTreeSet<PathBuf>,
        link: &Path,
        target: &str,
    ) -> Result<(), String> {
        Resolver::new(p, implied).link(link, target, 1).map(drop)
    }

    /// Many links sharing one long chain, each padded to its longest: each link is resolved
    /// once, and the whole archive gets a bounded number of steps.
    #[test]
    fn link_bombs_are_bounded() {
        let mut entries: Vec<(String, Node)> = vec![("d/f".into(), FILE)];
        for i in 0..40 {
            let next = if i == 39 {
                "d".to_string()
            } else {
                format!("c{}", i + 1)
            };
            entries.push((format!("c{i}"), link(&next)));
        }
        let pad = format!("{}c0/f", "d/../".repeat(200));
        for j in 0..3000 {
            entries.push((format!("s{j}"), link(&pad)));
        }
        let refs: Vec<(&str, Node)> = entries
            .iter()
            .map(|(p, n)| (p.as_str(), n.clone()))
            .collect();
        let p = plan_of(&refs);
        let implied = check_structure(&p).unwrap();
        let mut r = Resolver::new(&p, &implied);
        let mut verdicts = Vec::new();
        for (path, (node, _)) in &p.nodes {
            if let Node::Link(t) = node {
                let v = r.link(path, t, 1);
                let failed = v.is_err();
                verdicts.push(v);
                if failed {
                    break;
                }
            }
        }
        assert!(r.steps <= MAX_STEPS + 1, "{} steps", r.steps);
        assert!(
            verdicts
                .iter()
                .any(|v| v.as_ref().is_err_and(|e| e.contains("too many steps"))),
            "the budget ran out"
        );
        // The chain itself is fine: 40 links, each resolved once.
        assert!(verdicts.iter().take(40).all(Result::is_ok));
    }

    fn link(t: &str) -> Node {
        Node::Link(t.to_string())
    }

    const FILE: Node = Node::File {
        index: 0,
        exec: false,
        size: 0,
    };

    #[test]
    fn links_resolve_through_the_archives_own_links() {
        let deep = format!("{}../../../home/ember.toml", "s/".repeat(20));
        let p = plan_of(&[("s", link(".")), ("x.py", link(&deep))]);
        let err = resolve(&p, &check_structure(&p).unwrap(), Path::new("x.py"), &deep).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        let p = plan_of(&[("lib/util.py", FILE), ("alias.py", link("lib/util.py"))]);
        assert!(
            resolve(
                &p,
                &check_structure(&p).unwrap(),
                Path::new("alias.py"),
                "lib/util.py"
            )
            .is_ok()
        );
        let p = plan_of(&[("s", link(".")), ("a.py", FILE), ("b.py", link("s/s/a.py"))]);
        assert!(
            resolve(
                &p,
                &check_structure(&p).unwrap(),
                Path::new("b.py"),
                "s/s/a.py"
            )
            .is_ok()
        );
        let p = plan_of(&[("__pycache__", link("."))]);
        assert!(
            resolve(
                &p,
                &check_structure(&p).unwrap(),
                Path::new("__pycache__"),
                "."
            )
            .is_ok()
        );
        let p = plan_of(&[("d/up", link("..")), ("d/f", FILE)]);
        assert!(resolve(&p, &check_structure(&p).unwrap(), Path::new("d/up"), "..").is_ok());
        let p = plan_of(&[("d/up", link("../..")), ("d/f", FILE)]);
        assert!(
            resolve(
                &p,
                &check_structure(&p).unwrap(),
                Path::new("d/up"),
                "../.."
            )
            .is_err()
        );
    }

    #[test]
    fn loops_dangling_links_and_files_as_directories_are_refused() {
        let p = plan_of(&[("a", link("b")), ("b", link("a"))]);
        assert!(
            resolve(&p, &check_structure(&p).unwrap(), Path::new("a"), "b")
                .unwrap_err()
                .contains("loop")
        );
        let p = plan_of(&[("a", link("missing/../../x"))]);
        assert!(
            resolve(
                &p,
                &check_structure(&p).unwrap(),
                Path::new("a"),
                "missing/../../x"
            )
            .unwrap_err()
            .contains("does not contain")
        );
        let p = plan_of(&[("f", FILE), ("a", link("f/../.."))]);
        assert!(
            resolve(&p, &check_structure(&p).unwrap(), Path::new("a"), "f/../..")
                .unwrap_err()
                .contains("a file")
        );
    }

    #[test]
    fn entries_under_links_or_files_are_refused() {
        let p = plan_of(&[("d/lnk", link("..")), ("d/lnk/x", FILE)]);
        let err = check_structure(&p).unwrap_err().to_string();
        assert!(err.contains("symlink in the archive"), "{err}");
        let p = plan_of(&[("a", FILE), ("a/b", FILE)]);
        let err = check_structure(&p).unwrap_err().to_string();
        assert!(err.contains("which is a file"), "{err}");
    }

    #[test]
    fn names_are_bounded() {
        assert!(entry_path("a".repeat(300).as_bytes()).is_err());
        assert!(entry_path("a/".repeat(3000).as_bytes()).is_err());
        assert!(entry_path("a/".repeat(65).trim_end_matches('/').as_bytes()).is_err());
        assert!(entry_path(b"./ok/fine.py").is_ok());
    }
}
