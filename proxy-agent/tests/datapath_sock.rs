//! The socket hooks (`cgroup/connect4` and friends) under BPF_PROG_TEST_RUN.
//!
//! The kernel cannot run them there: `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` has no
//! `test_run` operation (`cg_sock_addr_prog_ops` in net/core/filter.c is empty, still
//! in 6.18), so BPF_PROG_TEST_RUN answers ENOTSUPP (524) before it looks at any
//! input; aya 0.14 accordingly has no `test_run` for `CgroupSockAddr`. The test below
//! checks that claim on the running kernel, through the raw bpf(2) call, so that a
//! kernel that gains the operation fails it and we write real unit tests instead.
//! Until then the hooks are covered end to end, with real sockets in a test cgroup
//! and namespaces, by `tests/tests/clusterip.rs`.

mod datapath;

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::CgroupSockAddr;
use datapath::Datapath;
use proxy_common::programs;

/// `BPF_PROG_TEST_RUN`, the bpf(2) command.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// The kernel's ENOTSUPP (not in libc: it is not a user-space errno, yet bpf(2)
/// returns it).
const ENOTSUPP: i32 = 524;

/// The `test` member of `union bpf_attr` (UAPI `linux/bpf.h`), up to `batch_size`.
/// The kernel accepts a shorter attr and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit padding to the 8-byte alignment, 0.
    _pad: u32,
}

/// `struct bpf_sock_addr` for a connect() to 10.96.0.10:80 over TCP: what a
/// supporting kernel would hand the program.
fn sock_addr_ctx() -> [u8; 72] {
    let mut c = [0u8; 72];
    let words: [(usize, u32); 5] = [
        (0, libc::AF_INET as u32),                // user_family
        (4, u32::from_ne_bytes([10, 96, 0, 10])), // user_ip4
        (24, u32::from(80u16.to_be())),           // user_port
        (28, libc::AF_INET as u32),               // family
        (36, libc::IPPROTO_TCP as u32),           // protocol
    ];
    for (off, w) in words {
        c[off..off + 4].copy_from_slice(&w.to_ne_bytes());
    }
    c
}

/// The errno of BPF_PROG_TEST_RUN of program `fd` with `ctx`, or `None` if it ran.
fn test_run_errno(fd: i32, ctx: &[u8]) -> Option<i32> {
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).expect("a valid fd"),
        repeat: 1,
        ctx_size_in: u32::try_from(ctx.len()).expect("a small context"),
        ctx_in: ctx.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid, fully initialised prefix of `union bpf_attr` with its
    // size given; `ctx_in` points to `ctx_size_in` readable bytes that outlive the
    // call; no output buffers are given, so the kernel writes only into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        None
    } else {
        Some(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn the_kernel_refuses_to_test_run_socket_address_hooks() {
    let mut dp = Datapath::load(datapath::CONNTRACK_MAX);
    let ctx = sock_addr_ctx();
    for name in programs::ALL {
        let prog: &mut CgroupSockAddr = dp
            .ebpf_mut()
            .program_mut(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not a sock_addr program: {e:?}"));
        // Loading verifies it: a program the verifier rejects fails here, not later.
        prog.load()
            .unwrap_or_else(|e| panic!("loading {name} (verifier): {e:?}"));
        let fd = prog
            .fd()
            .unwrap_or_else(|e| panic!("{name} fd: {e:?}"))
            .as_fd()
            .as_raw_fd();
        match test_run_errno(fd, &ctx) {
            Some(ENOTSUPP) => {}
            None => panic!(
                "the kernel now runs {name} under BPF_PROG_TEST_RUN: replace this test \
                 with real unit tests of the socket hooks"
            ),
            Some(e) => panic!(
                "BPF_PROG_TEST_RUN of {name}: errno {e} ({}), expected ENOTSUPP",
                std::io::Error::from_raw_os_error(e)
            ),
        }
    }
}
