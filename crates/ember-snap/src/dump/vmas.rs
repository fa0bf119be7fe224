//! The process's areas as the image records them: smaps entries classified, what cannot
//! be restored refused by name, the vDSO areas set apart.

use super::*;

const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

/// Turns smaps areas into image VMAs, refusing what cannot be restored; returns the vDSO
/// areas separately.
pub(super) fn classify_vmas(
    pid: i32,
    maps: &[MapEntry],
    files: &mut FileTable,
) -> Result<(Vec<Vma>, Vec<VdsoArea>), DumpError> {
    let mut vmas = Vec::new();
    let mut vdso = Vec::new();
    for m in maps {
        let refuse = |why: &str| DumpError::Vma {
            pid,
            vma: format!(
                "{:x}-{:x} {} {}{}",
                m.start,
                m.end,
                m.perms(),
                m.name.as_deref().unwrap_or(""),
                if m.deleted { " (deleted)" } else { "" }
            ),
            why: why.to_string(),
        };
        let name = m.name.as_deref();
        // Shared anonymous memory shows as the (deleted) /dev/zero it is made of.
        if m.shared && (name.is_none() || name == Some("/dev/zero")) {
            return Err(refuse("shared anonymous memory is not supported"));
        }
        let mut anon_name = None;
        let kind = match name {
            Some(n) if VDSO_NAMES.contains(&n) => {
                vdso.push((n.to_string(), m.start, m.end));
                continue;
            }
            Some("[vsyscall]") => continue,
            Some(n) if n.starts_with("/SYSV") => {
                return Err(refuse("SysV shared memory is not supported"));
            }
            // Memory a mapped restore shares from an image's memfd is the process's own
            // private memory: its present pages are what it holds (what it discarded is
            // not present and reads as zeros, as the restore's page server made it).
            Some(n) if !m.shared && m.deleted && is_image_memfd(n) => VmaKind::Anon,
            Some(n) if m.deleted => {
                return Err(refuse(&format!(
                    "the file it maps, {n}, was deleted: a restore could not map it again; keep the file until the process is dumped"
                )));
            }
            Some("[heap]") => VmaKind::Heap,
            Some("[stack]") => VmaKind::Stack,
            None => VmaKind::Anon,
            // A private mapping of /dev/zero is anonymous memory.
            Some("/dev/zero") if !m.shared => VmaKind::Anon,
            Some(n) if n.starts_with("[anon:") && n.ends_with(']') => {
                anon_name = Some(n["[anon:".len()..n.len() - 1].to_string());
                VmaKind::Anon
            }
            Some(n) if n.starts_with('/') && m.inode != 0 => {
                let file = files.index(n, Some((m.dev, m.inode)), true);
                files.mapped_at(file, m.start, m.end);
                VmaKind::File {
                    file,
                    offset: m.offset,
                }
            }
            Some(_) => return Err(refuse("a special mapping of an unsupported kind")),
        };
        if m.shared {
            if !matches!(kind, VmaKind::File { .. }) {
                return Err(refuse("shared anonymous memory is not supported"));
            }
            if m.write {
                return Err(refuse("writable shared file mappings are not supported"));
            }
        }
        let mut flags = 0;
        for code in &m.vm_flags {
            match code.as_str() {
                "sl" => return Err(refuse("it is sealed (mseal): a restore could not map it")),
                "ht" => return Err(refuse("hugetlb memory is not supported")),
                "pf" | "io" => return Err(refuse("device memory is not supported")),
                "ss" => return Err(refuse("shadow stacks are not supported")),
                c => {
                    if let Some((_, f)) = vma_flags::CODES.iter().find(|(k, _)| *k == c) {
                        flags |= f;
                    }
                }
            }
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            shared: m.shared,
            kind,
            flags,
            name: anon_name,
        });
    }
    Ok((vmas, vdso))
}

/// `/memfd:ember-image-<32 hex digits>`: the memfd a mapped restore maps an image's pages
/// from ([`crate::LoadedImage::memfd`]).
fn is_image_memfd(name: &str) -> bool {
    name.strip_prefix("/memfd:ember-image-")
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}
