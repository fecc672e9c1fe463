//! `proxy-agent`: the node daemon. All logic lives in the library.

fn main() -> anyhow::Result<()> {
    proxy_agent::daemon::main()
}
