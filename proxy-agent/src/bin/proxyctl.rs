//! `proxyctl`: inspect the data plane on this node. All logic lives in the library.

fn main() -> std::process::ExitCode {
    proxy_agent::observe::errors::exit(proxy_agent::observe::ctl::main())
}
