//! Observers: what operators see of the agent and its data plane.

pub mod render;
