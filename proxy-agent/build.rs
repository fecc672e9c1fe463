//! Builds the eBPF programs (proxy-ebpf) with the nightly toolchain and bpf-linker and
//! places the object in OUT_DIR, where `dataplane::ebpf` embeds it.
//! Set AYA_BUILD_SKIP=1 to skip (an empty object is embedded; loading then fails).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proxy-ebpf");
    let root = root.canonicalize()?;
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // When skipped, leave an empty file so include_bytes! still compiles.
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let obj = out_dir.join("proxy-ebpf");
        if !obj.exists() {
            std::fs::write(obj, [])?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
