//! A runtime of the observers' own, on a thread of its own: `/metrics`, `/healthz`,
//! `/livez` and the `healthCheckNodePort` servers answer there, so a long sync on the
//! daemon's single-threaded runtime never stalls them. (The daemon's loop stays on one
//! thread, where a change reaches the maps without crossing threads.)

use std::io;

use tokio::runtime::Handle;

/// Starts the observers' runtime; tasks spawned on the returned handle run until the
/// process exits.
pub fn start() -> io::Result<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("observe".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            // Serve whatever is spawned on it, for the life of the process.
            runtime.block_on(std::future::pending::<()>());
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("the observers' runtime thread ended at start"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spawned_on_it_run_while_the_caller_blocks() {
        let handle = start().expect("the runtime starts");
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let _ = tx.send(42);
        });
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(42));
    }
}
