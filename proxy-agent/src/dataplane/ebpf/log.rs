//! The data plane's debug logging (aya-log), behind `--bpf-log-level`, off by default.
//!
//! The programs' `aya_log_ebpf` statements test `AYA_LOG_LEVEL`, a global the loader
//! sets before the verifier runs: at `off` every statement is a branch on a constant,
//! which the verifier prunes, so logging costs nothing unless asked for. When on, the
//! records (from the `AYA_LOGS` ring buffer) go to the agent's own log, at their level,
//! with target `proxy_ebpf`.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::warn;

/// `--bpf-log-level`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfLogLevel {
    /// No logging (and no cost).
    #[default]
    Off,
    /// Errors.
    Error,
    /// And warnings.
    Warn,
    /// And information.
    Info,
    /// And debug records: one per new flow and per balanced connection.
    Debug,
    /// Everything.
    Trace,
}

impl BpfLogLevel {
    /// The value of `AYA_LOG_LEVEL` (aya-log's `Level`: error 1 .. trace 5).
    pub fn global(self) -> u8 {
        match self {
            BpfLogLevel::Off => 0,
            BpfLogLevel::Error => 1,
            BpfLogLevel::Warn => 2,
            BpfLogLevel::Info => 3,
            BpfLogLevel::Debug => 4,
            BpfLogLevel::Trace => 5,
        }
    }
}

/// aya-log's records into tracing: the agent's log has one format and one filter.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "proxy_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "proxy_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "proxy_ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "proxy_ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "proxy_ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Starts forwarding the programs' records when `level` is not `off`; the task runs
/// until aborted. A logger that cannot start is reported and the data plane runs on.
pub(super) fn spawn(ebpf: &mut Ebpf, level: BpfLogLevel) -> Option<tokio::task::JoinHandle<()>> {
    if level == BpfLogLevel::Off {
        return None;
    }
    let logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "--bpf-log-level: the data plane's log cannot be read; running without it");
            return None;
        }
    };
    // SAFETY: the descriptor is the logger's ring buffer map, owned by the logger, which
    // the AsyncFd owns and never replaces: it stays open and the same until dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let fd = match registered.map_err(|e| e.into_parts().1) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "--bpf-log-level: waiting on the data plane's log");
            return None;
        }
    };
    tracing::info!(
        ?level,
        "the data plane logs to the agent's log (target proxy_ebpf)"
    );
    Some(tokio::spawn(async move {
        let mut fd = fd;
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
