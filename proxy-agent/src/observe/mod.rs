//! Observers: what operators and Prometheus see of the agent and its data plane. They
//! read what the layers below expose (the reconciler's reports, the data plane's
//! views) and change nothing.

pub mod ctl;
pub mod errors;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod render;
pub mod render_netfilter;
pub mod runtime;
