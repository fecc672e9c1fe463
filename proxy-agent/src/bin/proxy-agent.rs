//! `proxy-agent`: the node daemon. All logic lives in the library.

fn main() -> std::process::ExitCode {
    proxy_agent::observe::errors::exit(proxy_agent::daemon::main())
}
