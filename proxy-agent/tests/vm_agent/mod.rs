//! The harness of the tests and benchmarks that run the real `proxy-agent` binary in
//! `--proxy-mode=ipvs` inside the VM (`cargo xtask vm-test`, `cargo xtask bench ipvs`).
//!
//! - [`netns::Netns`]: a network namespace held by a thread, running closures there;
//! - [`lab::Lab`]: a node, clients and pods joined by veths, the pods serving named
//!   TCP and UDP listeners on both families ([`listeners`]);
//! - [`manifests`]: the agent's manifest directory and the Services written into it;
//! - [`agent::Agent`]: the binary started in the node's namespace, stopped with
//!   SIGTERM or killed on drop, its sync lines, `/metrics` and `/healthz`;
//! - [`client`]: `ask` a service who answers, over TCP or UDP, or hold a connection;
//! - [`kernel`]: what IPVS, ipset and the links hold in the node's namespace.
//!
//! A test builds a [`lab::Lab`], writes manifests, starts an agent, then asks and
//! reads the kernel; everything it made goes with it (the namespaces with their
//! threads' ends, the agent with its guard).

#![allow(dead_code, reason = "each test binary uses a part of the harness")]

pub mod agent;
pub mod client;
pub mod kernel;
pub mod lab;
pub mod listeners;
pub mod manifests;
pub mod netns;
