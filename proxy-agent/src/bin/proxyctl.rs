//! `proxyctl`: inspect the data plane on this node. All logic lives in the library.

fn main() -> anyhow::Result<()> {
    proxy_agent::observe::ctl::main()
}
