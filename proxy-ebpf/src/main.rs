//! The eBPF data plane. One module per hook family:
//! - [`sock`]: cgroup socket-address hooks that balance ClusterIP traffic when the
//!   application calls connect()/sendmsg(), so it is never NATed per packet.
#![no_std]
#![no_main]

mod maps;
mod sock;

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies the linker.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
