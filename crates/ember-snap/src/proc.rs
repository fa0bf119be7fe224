//! Parsers for the `/proc/PID` files a dump reads. Pure functions over text, tested on
//! fixtures without root; the caller reads the files.

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`), without a ` (deleted)` suffix.
    pub name: Option<String>,
    pub deleted: bool,
    /// The two-letter `VmFlags` codes of `/proc/PID/smaps` (empty when read from `maps`).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    pub fn prot(&self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }

    /// `r-xp`-style permissions, as maps prints them.
    pub fn perms(&self) -> String {
        format!(
            "{}{}{}{}",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.exec { 'x' } else { '-' },
            if self.shared { 's' } else { 'p' }
        )
    }

    /// A file on disk (not a pseudo-name, not anonymous).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.name.as_deref().is_some_and(|n| n.starts_with('/'))
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Parses `/proc/PID/maps`. A line it cannot read is an error naming it.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_maps_line(l).ok_or_else(|| format!("unreadable maps line {l:?}")))
        .collect()
}

fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field().as_bytes().to_vec();
    let offset = hex(field())?;
    let dev = field();
    let inode: u64 = field().parse().ok()?;
    let name = rest.trim_start();
    let (lo, hi) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() != 4 {
        return None;
    }
    let (name, deleted) = match name.strip_suffix(" (deleted)") {
        Some(n) => (n, true),
        None => (name, false),
    };
    Some(MapEntry {
        start: hex(lo)?,
        end: hex(hi)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev: (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        ),
        inode,
        name: (!name.is_empty()).then(|| name.to_string()),
        deleted,
        vm_flags: Vec::new(),
    })
}

/// Parses `/proc/PID/smaps`: the maps lines, each with its `VmFlags`. Read once, in place
/// of `maps` (it costs more: the kernel walks each area's page tables for its counters).
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>, String> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out
                .last_mut()
                .ok_or_else(|| format!("smaps line {line:?} before any area"))?;
            last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        } else if is_smaps_field(line) {
            continue;
        } else {
            out.push(
                parse_maps_line(line).ok_or_else(|| format!("unreadable smaps line {line:?}"))?,
            );
        }
    }
    Ok(out)
}

/// `Key:   value` lines of smaps (an area's header starts with its hex range instead).
fn is_smaps_field(line: &str) -> bool {
    line.split_once(':').is_some_and(|(k, _)| {
        k.starts_with(|c: char| c.is_ascii_uppercase())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The `lock:` lines of `/proc/PID/fdinfo/FD`: file locks held through that descriptor.
pub fn fdinfo_locks(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The memory-layout fields of `/proc/PID/stat` (visible to a tracer only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatMm {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

pub fn parse_stat_mm(text: &str) -> Option<StatMm> {
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f[0]` is field 3 (state).
    let at = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(StatMm {
        start_code: at(26)?,
        end_code: at(27)?,
        start_stack: at(28)?,
        start_data: at(45)?,
        end_data: at(46)?,
        start_brk: at(47)?,
        arg_start: at(48)?,
        arg_end: at(49)?,
        env_start: at(50)?,
        env_end: at(51)?,
    })
}

/// The fields of `/proc/PID/status` a dump needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub umask: u32,
    pub threads: u32,
    pub sig_caught: u64,
    pub sig_ignored: u64,
    /// The thread id in the innermost pid namespace (what the process itself sees).
    pub ns_tid: i32,
}

pub fn parse_status(text: &str) -> Option<Status> {
    let mut s = Status::default();
    let mut seen = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Umask" => {
                s.umask = u32::from_str_radix(v, 8).ok()?;
                seen += 1;
            }
            "Threads" => {
                s.threads = v.parse().ok()?;
                seen += 1;
            }
            "SigCgt" => {
                s.sig_caught = u64::from_str_radix(v, 16).ok()?;
                seen += 1;
            }
            "SigIgn" => {
                s.sig_ignored = u64::from_str_radix(v, 16).ok()?;
                seen += 1;
            }
            "NSpid" => {
                s.ns_tid = v.split_whitespace().last()?.parse().ok()?;
                seen += 1;
            }
            _ => {}
        }
    }
    (seen == 5).then_some(s)
}

/// The pids listed in `/proc/PID/task/TID/children` (live and zombie children).
pub fn parse_children(text: &str) -> Vec<i32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The `PPid` of `/proc/PID/status`.
pub fn parse_ppid(text: &str) -> Option<i32> {
    text.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `pos` and `flags` of `/proc/PID/fdinfo/FD`.
pub fn parse_fdinfo(text: &str) -> Option<(u64, u32)> {
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).ok();
        }
    }
    Some((pos?, flags?))
}

/// (soft, hard) of every resource limit, in resource order, from `/proc/PID/limits`
/// (readable where `prlimit` on another user's process is not: that needs
/// CAP_SYS_RESOURCE). Each line is the name in 25 columns and a space, then the soft and
/// hard values (`unlimited` for `RLIM_INFINITY`).
pub fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let value = |v: &str| match v {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    text.lines()
        .skip(1)
        .map(|line| {
            let mut f = line.get(26..)?.split_whitespace();
            Some((value(f.next()?)?, value(f.next()?)?))
        })
        .collect::<Option<Vec<_>>>()
        .filter(|v| v.len() == 16)
}

/// `/proc/PID/auxv` as (type, value) words, up to and including `AT_NULL`.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let k = u64::from_ne_bytes(pair[..8].try_into().unwrap_or([0; 8]));
        let v = u64::from_ne_bytes(pair[8..].try_into().unwrap_or([0; 8]));
        out.push(k);
        out.push(v);
        if k == 0 {
            break;
        }
    }
    out
}

/// Areas of `/proc/PID/smaps` registered with a userfaultfd for missing pages (`um` in
/// VmFlags).
pub fn parse_smaps_uffd(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(range) = current
                && flags.split_whitespace().any(|f| f == "um")
            {
                out.push(range);
            }
        } else if let Some(m) = parse_maps_line(line) {
            current = Some((m.start, m.end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_parse_in_resource_order() {
        let own = std::fs::read_to_string("/proc/self/limits").unwrap();
        let l = super::parse_limits(&own).unwrap();
        let mut r = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        for (res, &(cur, max)) in l.iter().enumerate() {
            // SAFETY: reading our own limit into a local.
            unsafe { libc::getrlimit64(res as libc::__rlimit_resource_t, &mut r) };
            assert_eq!((cur, max), (r.rlim_cur, r.rlim_max), "resource {res}");
        }
        assert_eq!(super::parse_limits("Limit\nMax cpu time  1 2\n"), None);
    }

    use super::*;

    const MAPS: &str = "\
5564673c1000-5564673c3000 r--p 00000000 fe:00 247030                     /usr/bin/cat
5564a34a8000-5564a34c9000 rw-p 00000000 00:00 0                          [heap]
7fbdbfa3b000-7fbdbfa5d000 rw-p 00000000 00:00 0 
7fbdbfca3000-7fbdbfcaa000 r--s 00000000 fe:00 325745                     /usr/lib/gconv/a b.cache
7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_lines_parse_with_spaces_deleted_and_anonymous() {
        let m = parse_maps(MAPS).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].start, 0x5564673c1000);
        assert_eq!(m[0].perms(), "r--p");
        assert!(m[0].is_file());
        assert_eq!(m[1].name.as_deref(), Some("[heap]"));
        assert!(!m[1].is_file());
        assert_eq!(m[2].name, None);
        assert_eq!(m[3].name.as_deref(), Some("/usr/lib/gconv/a b.cache"));
        assert!(m[3].shared);
        assert_eq!(m[3].dev, (0xfe, 0));
        assert!(m[4].deleted);
        assert_eq!(m[4].name.as_deref(), Some("/dev/zero"));
        assert_eq!(m[5].prot(), libc::PROT_EXEC);
        assert!(parse_maps("garbage line").is_err());
    }

    #[test]
    fn stat_fields_survive_a_name_with_parentheses() {
        let mut f: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        f[0] = "S".into();
        let text = format!("42 (a) b) {}", f.join(" "));
        let mm = parse_stat_mm(&text).unwrap();
        assert_eq!(mm.start_code, 26);
        assert_eq!(mm.start_stack, 28);
        assert_eq!(mm.env_end, 51);
        assert!(parse_stat_mm("42 (x) S 1 2").is_none());
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tx\nUmask:\t0022\nThreads:\t1\nNSpid:\t4242\t1\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000002\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.umask, 0o22);
        assert_eq!(s.ns_tid, 1);
        assert_eq!(s.sig_caught, 0x180000002);
        assert_eq!(s.sig_ignored, 0x1000);
        assert!(parse_status("Umask:\t0022\n").is_none());
    }

    #[test]
    fn smaps_areas_carry_their_flags() {
        let text = "\
7f0000000000-7f0000002000 rw-p 00000000 00:00 0                          [anon:my name]
Size:                  8 kB
THPeligible:    0
VmFlags: rd wr mr mw me gd ac lo 
7f0000002000-7f0000003000 r--p 00001000 fe:00 12                         /usr/lib/x (deleted)
ProtectionKey:         0
VmFlags: rd mr mw me 
";
        let m = parse_smaps(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name.as_deref(), Some("[anon:my name]"));
        assert!(m[0].vm_flags.iter().any(|f| f == "gd"));
        assert!(m[0].vm_flags.iter().any(|f| f == "lo"));
        assert!(m[1].deleted);
        assert_eq!(m[1].vm_flags.len(), 4);
        assert!(parse_smaps("VmFlags: rd\n").is_err());
        assert!(parse_smaps("garbage\n").is_err());
    }

    #[test]
    fn children_and_parent() {
        assert_eq!(parse_children("3641 3662 "), vec![3641, 3662]);
        assert!(parse_children("").is_empty());
        assert_eq!(parse_ppid("Name:\tx\nPid:\t5\nPPid:\t1\n"), Some(1));
        assert_eq!(parse_ppid("Name:\tx\n"), None);
    }

    #[test]
    fn fdinfo_lock_lines() {
        let text = "pos:\t0\nflags:\t0100002\nlock:\t1: FLOCK  ADVISORY  READ 3765 fe:00:1 0 EOF\n";
        assert_eq!(
            fdinfo_locks(text),
            vec!["1: FLOCK ADVISORY READ 3765 fe:00:1 0 EOF"]
        );
        assert!(fdinfo_locks("pos:\t0\n").is_empty());
    }

    #[test]
    fn smaps_areas_registered_for_missing_pages() {
        let text = "\
7f0000000000-7f0000002000 rw-p 00000000 00:00 0 
Size:                  8 kB
VmFlags: rd wr mr mw me ac um 
7f0000002000-7f0000003000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac 
";
        assert_eq!(
            parse_smaps_uffd(text),
            vec![(0x7f0000000000, 0x7f0000002000)]
        );
    }

    #[test]
    fn fdinfo_and_auxv() {
        assert_eq!(
            parse_fdinfo("pos:\t12\nflags:\t02100002\nmnt_id:\t1\n"),
            Some((12, 0o2100002))
        );
        let mut raw = Vec::new();
        for w in [6u64, 4096, 0, 0, 99, 99] {
            raw.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&raw), vec![6, 4096, 0, 0]);
    }
}
