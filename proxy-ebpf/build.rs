use which::which;

/// Rebuild the eBPF objects when bpf-linker changes (it is not a Cargo dependency,
/// so Cargo would not notice an upgrade on its own).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
