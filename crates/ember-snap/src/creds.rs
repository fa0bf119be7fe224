//! Credentials: user and group ids (real, effective, saved, filesystem), supplementary
//! groups, the five capability sets and the securebits.
//!
//! Read at dump from `/proc/PID/status` (the securebits by an injected `prctl`, the only
//! place the kernel shows them). Restored at the end of batch 2 when the restore has no
//! handoff: the restorer runs as root with every capability, so without this step a process
//! dumped as an unprivileged user would come back as root. (With a handoff the sandbox
//! decides who the instance is.) The order is what the kernel allows:
//!
//! ```text
//! drop from the bounding set      (needs CAP_SETPCAP: still root)
//! setgroups
//! securebits = image's (unlocked, NO_CAP_AMBIENT_RAISE left out) | KEEP_CAPS
//!                                 (permitted survives the uid change; ambient raise allowed)
//! setresgid, setfsgid, setresuid                (effective set cleared by the kernel)
//! capset(permitted = image's + CAP_SETPCAP + CAP_SETUID, effective = that,
//!        inheritable = image's)
//! setfsuid                        (needs CAP_SETUID; never reports a failure)
//! raise each ambient capability   (needs it permitted and inheritable)
//! securebits = image's, locks included           (needs CAP_SETPCAP effective)
//! capset(the image's three sets)  (drops CAP_SETPCAP and CAP_SETUID if the image had none)
//! ```
//!
//! An id of `0xFFFF_FFFF` is refused when an image is read: `setresuid` and its kin take
//! it for "leave unchanged", so the process would stay root.
//!
//! A change of effective or filesystem ids clears the parent-death signal and the dumpable
//! flag, so whatever sets those runs after this.

use serde::{Deserialize, Serialize};

use crate::restorer::Batch;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;
const CAP_SETUID: u32 = 7;
const SECBIT_KEEP_CAPS: u64 = 1 << 4;
/// Once set, `PR_CAP_AMBIENT_RAISE` fails: left out until the ambient set is raised.
const SECBIT_NO_CAP_AMBIENT_RAISE: u64 = 1 << 6;
/// The `*_LOCKED` securebits: once set, the bit beside each cannot change.
const SECBIT_LOCKS: u64 = 0xaa;
/// Most supplementary groups a process can have (`NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65_536;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective, saved and filesystem user ids.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem group ids.
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub securebits: u64,
}

/// The ids, groups and capability sets of `/proc/PID/status` (securebits left 0: the
/// caller asks the process).
pub fn parse_status(text: &str) -> Option<Creds> {
    let mut c = Creds::default();
    let mut seen = 0;
    let ids = |v: &str| -> Option<[u32; 4]> {
        let n: Vec<u32> = v
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        n.try_into().ok()
    };
    let caps = |v: &str| u64::from_str_radix(v.trim(), 16).ok();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k {
            "Uid" => c.uid = ids(v)?,
            "Gid" => c.gid = ids(v)?,
            "Groups" => {
                c.groups = v
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            "CapInh" => c.inheritable = caps(v)?,
            "CapPrm" => c.permitted = caps(v)?,
            "CapEff" => c.effective = caps(v)?,
            "CapBnd" => c.bounding = caps(v)?,
            "CapAmb" => c.ambient = caps(v)?,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 8).then_some(c)
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// Consistency a restore relies on (checked when an image is read).
pub fn validate(c: &Creds) -> Result<(), String> {
    if c.groups.len() > MAX_GROUPS {
        return Err(format!("{} supplementary groups", c.groups.len()));
    }
    if let Some(id) = c
        .uid
        .iter()
        .chain(&c.gid)
        .chain(&c.groups)
        .find(|&&id| id == u32::MAX)
    {
        return Err(format!(
            "user or group id {id:#x}, which the kernel takes for \"unchanged\""
        ));
    }
    if c.effective & !c.permitted != 0 || c.ambient & !(c.permitted & c.inheritable) != 0 {
        return Err("capability sets that no process can have".into());
    }
    Ok(())
}

/// `struct __user_cap_data_struct[2]` for three sets.
fn cap_data(effective: u64, permitted: u64, inheritable: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(24);
    for half in [0, 32] {
        for set in [effective, permitted, inheritable] {
            d.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
        }
    }
    d
}

/// Appends a `capset` emptying the effective, permitted and inheritable sets (what
/// `setresuid` to a non-root user leaves: the inheritable set).
pub(crate) fn clear_calls(b: &mut Batch<'_>) {
    let mut header = Vec::with_capacity(8);
    header.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    let header = b.data(&header);
    let data = b.data(&cap_data(0, 0, 0));
    b.call("capset", libc::SYS_capset, &[header, data], 0);
}

/// Appends the calls that make the restored process the image's user (see the module doc).
pub(crate) fn restore_calls(b: &mut Batch<'_>, c: &Creds, last_cap: u32) {
    let prctl = libc::SYS_prctl;
    for cap in 0..=last_cap.min(63) {
        if c.bounding & (1 << cap) == 0 {
            let args = [libc::PR_CAPBSET_DROP as u64, u64::from(cap)];
            b.call("prctl(PR_CAPBSET_DROP)", prctl, &args, 0);
        }
    }
    let mut groups = Vec::with_capacity(c.groups.len() * 4);
    for g in &c.groups {
        groups.extend_from_slice(&g.to_ne_bytes());
    }
    let at = if groups.is_empty() {
        0
    } else {
        b.data(&groups)
    };
    let n = c.groups.len() as u64;
    b.call("setgroups", libc::SYS_setgroups, &[n, at], 0);
    let unlocked = (c.securebits & !SECBIT_LOCKS & !SECBIT_NO_CAP_AMBIENT_RAISE) | SECBIT_KEEP_CAPS;
    let args = [libc::PR_SET_SECUREBITS as u64, unlocked];
    b.call("prctl(PR_SET_SECUREBITS)", prctl, &args, 0);
    let [r, e, s, fs] = c.gid.map(u64::from);
    b.call("setresgid", libc::SYS_setresgid, &[r, e, s], 0);
    b.call("setfsgid", libc::SYS_setfsgid, &[fs], 0);
    let [r, e, s, fsu] = c.uid.map(u64::from);
    b.call("setresuid", libc::SYS_setresuid, &[r, e, s], 0);

    let mut header = Vec::with_capacity(8);
    header.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    let header = b.data(&header);
    let wide = c.permitted | (1 << CAP_SETPCAP) | (1 << CAP_SETUID);
    let data = b.data(&cap_data(wide, wide, c.inheritable));
    b.call("capset", libc::SYS_capset, &[header, data], 0);
    // setresuid made the filesystem uid the effective one; a different one needs
    // CAP_SETUID, held here whatever the image's sets (a process may have dropped it after
    // setting its fsuid): setfsuid fails silently without it.
    b.call("setfsuid", libc::SYS_setfsuid, &[fsu], 0);
    for cap in 0..=last_cap.min(63) {
        if c.ambient & (1 << cap) != 0 {
            let args = [
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_RAISE as u64,
                u64::from(cap),
                0,
                0,
            ];
            b.call("prctl(PR_CAP_AMBIENT_RAISE)", prctl, &args, 0);
        }
    }
    let args = [libc::PR_SET_SECUREBITS as u64, c.securebits];
    b.call("prctl(PR_SET_SECUREBITS)", prctl, &args, 0);
    let data = b.data(&cap_data(c.effective, c.permitted, c.inheritable));
    b.call("capset", libc::SYS_capset, &[header, data], 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tt\nUid:\t1000\t1001\t1002\t1003\nGid:\t10\t11\t12\t13\n\
        Groups:\t4 24 27 \nCapInh:\t0000000000000000\nCapPrm:\t00000000000004c0\n\
        CapEff:\t0000000000000400\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    #[test]
    fn status_gives_ids_groups_and_capability_sets() {
        let c = parse_status(STATUS).unwrap();
        assert_eq!(c.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(c.gid, [10, 11, 12, 13]);
        assert_eq!(c.groups, vec![4, 24, 27]);
        assert_eq!((c.permitted, c.effective), (0x4c0, 0x400));
        assert_eq!(c.bounding, 0x1ff_ffff_ffff);
        assert!(validate(&c).is_ok());
        assert!(parse_status("Uid:\t1 2 3\n").is_none());
    }

    #[test]
    fn impossible_sets_and_too_many_groups_are_refused() {
        let mut c = parse_status(STATUS).unwrap();
        c.effective = 1;
        assert!(validate(&c).is_err());
        let mut c = parse_status(STATUS).unwrap();
        c.groups = vec![0; MAX_GROUPS + 1];
        assert!(validate(&c).is_err());
        for set in 0..3 {
            let mut c = parse_status(STATUS).unwrap();
            match set {
                0 => c.uid[2] = u32::MAX,
                1 => c.gid[0] = u32::MAX,
                _ => c.groups.push(u32::MAX),
            }
            assert!(validate(&c).unwrap_err().contains("unchanged"), "{set}");
        }
    }

    #[test]
    fn capability_data_is_low_words_then_high_words() {
        let d = cap_data(0x1_0000_0002, 3, 0);
        let w: Vec<u32> = d
            .chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(w, vec![2, 3, 0, 1, 0, 0]);
    }
}
