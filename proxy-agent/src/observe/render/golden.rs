//! Golden files for `proxyctl`'s text outputs, in `observe/golden/`: a change to an
//! output shows as a diff of its file. `UPDATE_GOLDEN=1 cargo test -p proxy-agent
//! --lib observe` rewrites them; read the diff before committing it.

use std::path::PathBuf;

/// Compares `got` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN`.
#[track_caller]
pub(crate) fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/observe/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    if got != want {
        panic!(
            "the output differs from the golden file {} (UPDATE_GOLDEN=1 rewrites it); \
             got:\n{got}",
            path.display()
        );
    }
}
