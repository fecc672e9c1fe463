//! The eBPF data plane. One module per hook family:
//! - [`sock`]: cgroup socket-address hooks that balance ClusterIP traffic when the
//!   application calls connect()/sendmsg(), so it is never NATed per packet.
//! - [`tc`]: tc ingress/egress programs that translate NodePort, ExternalIP,
//!   LoadBalancer and routed-in ClusterIP traffic per packet, with their own
//!   connection tracking ([`ct`]).
//!
//! Shared helpers: [`lb`] (service lookup, backend choice), [`packet`] (parsing,
//! rewriting, checksums), [`fib`] (the FIB's answers for forwarded flows), [`too_big`]
//! (path MTU discovery's ICMP errors for translated flows), [`stats`] (traffic
//! statistics per service and backend), [`maps`], [`monitor`]
//! (events for `proxyctl monitor`, only while someone listens).
// For the host (`cargo build --workspace`, clippy) this is an ordinary program with an
// empty `main`, so that workspace-wide commands work; the programs are for BPF.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ct;
mod fib;
mod lb;
mod maps;
mod monitor;
mod packet;
mod sock;
mod stats;
mod tc;
mod too_big;

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies the linker.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds only: the programs exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
