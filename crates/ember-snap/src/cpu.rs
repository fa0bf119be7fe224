//! What an image needs of the CPU and kernel, and the checks a restore makes against them.

use crate::image::{Requires, VdsoLayout};

/// CPU features this machine has, among those libraries pick code paths for at start
/// (glibc's string functions, numpy's SIMD kernels, OpenBLAS).
pub fn features() -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                out.push($f.to_string());
            }
        )*};
    }
    probe!(
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "bmi1",
        "bmi2",
        "lzcnt",
        "movbe",
        "f16c",
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avx512vbmi",
        "avx512vbmi2",
        "avx512bitalg",
        "avx512vpopcntdq",
        "avx512ifma",
        "avxvnni",
        "sha",
        "aes",
        "pclmulqdq",
        "vaes",
        "vpclmulqdq",
        "gfni",
        "xsave",
        "xsavec",
        "rdrand",
        "rdseed",
        "adx"
    );
    out
}

/// (XCR0 features, size) of an XSAVE area read by ptrace: the kernel stores the XCR0 mask in
/// the software-reserved bytes at offset 464 (the layout gdb reads too).
pub fn xstate_info(xstate: &[u8]) -> (u64, u32) {
    let xcr0 = xstate
        .get(464..472)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    (xcr0, xstate.len() as u32)
}

/// Why this machine cannot run an image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    #[error(
        "the image was taken on another kernel (vDSO {image:?}, this kernel {here:?}); take the image again on this kernel"
    )]
    Vdso { image: String, here: String },
    #[error(
        "the image needs CPU register state {image:#x} ({image_size} bytes) but this CPU offers {here:#x} ({here_size} bytes)"
    )]
    Xstate {
        image: u64,
        image_size: u32,
        here: u64,
        here_size: u32,
    },
    #[error("the image needs CPU features this machine lacks: {0}")]
    Features(String),
}

fn vdso_summary(v: &VdsoLayout) -> String {
    let sizes: Vec<String> = v
        .areas
        .iter()
        .map(|(n, s, e)| format!("{n} {}K", (e - s) / 1024))
        .collect();
    format!(
        "{} #{}",
        sizes.join(" "),
        crate::image::files::hexs(&v.vdso_hash[..4])
    )
}

/// Checks `req` against this machine: the vDSO (`here`), the XSAVE layout of a process
/// about to be restored into (`xstate`), and the CPU features.
pub fn check(req: &Requires, here: &VdsoLayout, xstate: &[u8]) -> Result<(), Mismatch> {
    let sizes = |v: &VdsoLayout| -> Vec<(String, u64)> {
        v.areas.iter().map(|(n, s, e)| (n.clone(), e - s)).collect()
    };
    if sizes(&req.vdso) != sizes(here) || req.vdso.vdso_hash != here.vdso_hash {
        return Err(Mismatch::Vdso {
            image: vdso_summary(&req.vdso),
            here: vdso_summary(here),
        });
    }
    let (features, size) = xstate_info(xstate);
    if req.xfeatures & !features != 0 || req.xstate_size != size {
        return Err(Mismatch::Xstate {
            image: req.xfeatures,
            image_size: req.xstate_size,
            here: features,
            here_size: size,
        });
    }
    let have = self::features();
    let missing: Vec<&str> = req
        .cpu_features
        .iter()
        .filter(|f| !have.contains(f))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Mismatch::Features(missing.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(vdso: u64, hash: u8) -> VdsoLayout {
        VdsoLayout {
            areas: vec![
                ("[vvar]".into(), 0x1000, 0x5000),
                ("[vdso]".into(), 0x5000, 0x5000 + vdso),
            ],
            vdso_hash: [hash; 32],
        }
    }

    fn xstate(features: u64, len: usize) -> Vec<u8> {
        let mut x = vec![0u8; len];
        x[464..472].copy_from_slice(&features.to_le_bytes());
        x
    }

    fn req(vdso: VdsoLayout, xf: u64, size: u32, cpu: &[&str]) -> Requires {
        Requires {
            vdso,
            xfeatures: xf,
            xstate_size: size,
            cpu_features: cpu.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn same_machine_passes() {
        let r = req(layout(0x2000, 1), 0x7, 2688, &[]);
        assert_eq!(check(&r, &layout(0x2000, 1), &xstate(0xe7, 2688)), Ok(()));
    }

    #[test]
    fn another_kernel_or_cpu_is_refused() {
        let r = req(layout(0x2000, 1), 0x7, 2688, &[]);
        let e = check(&r, &layout(0x3000, 1), &xstate(0x7, 2688)).unwrap_err();
        assert!(e.to_string().contains("another kernel"), "{e}");
        let e = check(&r, &layout(0x2000, 2), &xstate(0x7, 2688)).unwrap_err();
        assert!(matches!(e, Mismatch::Vdso { .. }));
        let r = req(layout(0x2000, 1), 0xe7, 2688, &[]);
        let e = check(&r, &layout(0x2000, 1), &xstate(0x7, 2688)).unwrap_err();
        assert!(matches!(e, Mismatch::Xstate { .. }), "{e}");
        let r = req(layout(0x2000, 1), 0x7, 2688, &["avx512-imaginary"]);
        let e = check(&r, &layout(0x2000, 1), &xstate(0x7, 2688)).unwrap_err();
        assert!(e.to_string().contains("avx512-imaginary"), "{e}");
    }

    #[test]
    fn xstate_info_reads_the_software_bytes() {
        assert_eq!(xstate_info(&xstate(0x2e7, 2696)), (0x2e7, 2696));
        assert_eq!(xstate_info(&[0u8; 512]), (0, 512));
        assert_eq!(xstate_info(&[0u8; 100]), (0, 100));
    }
}
