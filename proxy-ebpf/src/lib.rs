#![no_std]
// This file exists so that `proxy-agent` can name this package as a build dependency
// (aya-build rebuilds the eBPF objects when it changes); the programs are in main.rs.
