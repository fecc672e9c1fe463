//! The listing and the watcher against the real kernel. Each test runs on a thread of
//! its own that `unshare`s a network namespace, so nothing touches the host's network,
//! and everything made goes away with the thread.
//!
//! They need root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`), `nsenter` and `ip`: without them
//! they fail with the reason, never skip. `--nocapture` shows the measured latencies.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::ffi::CString;
use std::future::{Future, poll_fn};
use std::io;
use std::net::IpAddr;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::time::{sleep, timeout};

use super::list;
use super::{Change, DeviceWatch, Interface, RtnlError, Snapshot};

/// Issue 8: a new pod veth gets its tc program within 100 ms of appearing.
const NOTIFY_WITHIN: Duration = Duration::from_millis(100);

/// The namespace of a test thread, for commands run in it.
struct Netns {
    path: String,
}

/// Runs `body` on a new thread in a new network namespace, on a current-thread
/// runtime, and passes its panic on.
fn in_private_netns<F, Fut>(body: F)
where
    F: FnOnce(Netns) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: no pointers; it moves only this thread (the namespace is per task), so
        // the test process and the other tests stay where they are.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET): {} (these tests must run as root)",
                io::Error::last_os_error()
            );
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let ns = Netns {
            path: format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body(ns));
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

impl Netns {
    /// Starts `ip ARGS` in this namespace, after `delay`. Through nsenter, so that it
    /// does not depend on which thread forks.
    fn spawn_ip(&self, delay: Duration, args: &[&str]) -> Child {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path));
        if delay.is_zero() {
            cmd.arg("ip");
        } else {
            cmd.args(["sh", "-c", r#"sleep "$0" && exec ip "$@""#])
                .arg(format!("{:.3}", delay.as_secs_f64()));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `nsenter ... ip {}`: {e}", args.join(" ")))
    }

    /// Runs `ip ARGS` to completion.
    fn ip(&self, args: &[&str]) {
        finish(args, self.spawn_ip(Duration::ZERO, args));
    }
}

/// Waits for an `ip` command and asserts it succeeded.
fn finish(args: &[&str], child: Child) {
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}`: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS` while waiting on `changed()`; asserts a notification within
/// [`NOTIFY_WITHIN`] of starting the command (process start-up included), and returns
/// how long it took.
async fn expect_change(watch: &mut DeviceWatch, ns: &Netns, args: &[&str]) -> Duration {
    let what = args.join(" ");
    let started = Instant::now();
    let child = ns.spawn_ip(Duration::ZERO, args);
    let got = timeout(Duration::from_secs(2), watch.changed()).await;
    let took = started.elapsed();
    finish(args, child);
    match got {
        Ok(Change::Notified) => {}
        Ok(other) => panic!("`ip {what}`: expected a notification, got: {other}"),
        Err(_) => panic!("`ip {what}`: no notification within 2 s"),
    }
    eprintln!("`ip {what}`: notified {took:?} after the command started");
    assert!(
        took < NOTIFY_WITHIN,
        "`ip {what}`: notified after {took:?}, over {NOTIFY_WITHIN:?}"
    );
    settle(watch).await;
    took
}

/// Takes the rest of a command's notifications, so that the next step sees only its
/// own. (Dropping `changed()` at each timeout is itself cancellation.)
async fn settle(watch: &mut DeviceWatch) {
    while let Ok(change) = timeout(Duration::from_millis(50), watch.changed()).await {
        assert!(
            matches!(change, Change::Notified),
            "while settling: {change}"
        );
    }
}

fn find<'a>(snap: &'a Snapshot, name: &str) -> &'a Interface {
    snap.interfaces
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {snap:?}"))
}

fn names(snap: &Snapshot) -> Vec<&str> {
    snap.interfaces.iter().map(|i| i.name.as_str()).collect()
}

/// The index as the ioctl path (if_nametoindex) sees it, in this thread's namespace.
fn if_index(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_new_veth_and_its_addresses_are_notified_and_listed() {
    in_private_netns(|ns| async move {
        // Watch first, then list: nothing can slip between the two.
        let mut watch = DeviceWatch::new().unwrap();
        let snap = list().unwrap();
        assert_eq!(
            snap.interfaces,
            [Interface {
                name: "lo".into(),
                index: 1,
                // Down in a new namespace, so without 127.0.0.1.
                addrs: vec![],
                loopback: true,
            }]
        );
        assert!(snap.default_route_interfaces.is_empty(), "{snap:?}");

        let link = ["link", "add", "nw0", "type", "veth", "peer", "name", "nw1"];
        expect_change(&mut watch, &ns, &link).await;
        let snap = list().unwrap();
        assert_eq!(names(&snap), ["lo", "nw1", "nw0"]);
        let nw0 = find(&snap, "nw0");
        assert_eq!(nw0.index, if_index("nw0"));
        assert!(
            nw0.index > 1 && !nw0.loopback && nw0.addrs.is_empty(),
            "{nw0:?}"
        );

        expect_change(
            &mut watch,
            &ns,
            &["addr", "add", "192.0.2.1/24", "dev", "nw0"],
        )
        .await;
        assert_eq!(find(&list().unwrap(), "nw0").addrs, [ip("192.0.2.1")]);

        let v6 = ["addr", "add", "2001:db8::1/64", "dev", "nw0", "nodad"];
        expect_change(&mut watch, &ns, &v6).await;
        let listed = list().unwrap();
        assert_eq!(
            find(&listed, "nw0").addrs,
            [ip("192.0.2.1"), ip("2001:db8::1")]
        );

        expect_change(&mut watch, &ns, &["link", "del", "nw0"]).await;
        assert_eq!(names(&list().unwrap()), ["lo"]);
    });
}

#[test]
fn default_routes_of_both_families_are_notified_and_listed() {
    in_private_netns(|ns| async move {
        let mut watch = DeviceWatch::new().unwrap();
        ns.ip(&["link", "add", "nr0", "type", "veth", "peer", "name", "nr1"]);
        // No IPv6 link-local address, whose DAD would notify later; the peer stays
        // down, so no carrier change either.
        ns.ip(&["link", "set", "nr0", "addrgenmode", "none"]);
        ns.ip(&["link", "set", "nr0", "up"]);
        settle(&mut watch).await;
        let nr0 = || ["nr0".to_string()].into();

        expect_change(&mut watch, &ns, &["route", "add", "default", "dev", "nr0"]).await;
        assert_eq!(list().unwrap().default_route_interfaces, nr0());

        let v6 = ["-6", "route", "add", "default", "dev", "nr0"];
        expect_change(&mut watch, &ns, &v6).await;
        expect_change(&mut watch, &ns, &["route", "del", "default"]).await;
        // Still held by the IPv6 one.
        assert_eq!(list().unwrap().default_route_interfaces, nr0());
        expect_change(&mut watch, &ns, &["-6", "route", "del", "default"]).await;
        assert!(list().unwrap().default_route_interfaces.is_empty());

        // A pod's route: no re-list for it.
        ns.ip(&["route", "add", "198.51.100.0/24", "dev", "nr0"]);
        if let Ok(change) = timeout(Duration::from_millis(300), watch.changed()).await {
            panic!("a non-default route was reported: {change}");
        }
    });
}

#[test]
fn changed_dropped_by_a_winning_timer_still_reports_the_change() {
    in_private_netns(|ns| async move {
        let mut watch = DeviceWatch::new().unwrap();
        // The link appears 30 ms from now; a 1 ms timer wins until then, dropping
        // changed() each time.
        let link = ["link", "add", "nc0", "type", "veth", "peer", "name", "nc1"];
        let delay = Duration::from_millis(30);
        let started = Instant::now();
        let child = ns.spawn_ip(delay, &link);
        let mut timer_wins = 0;
        let change = loop {
            tokio::select! {
                change = watch.changed() => break change,
                () = sleep(Duration::from_millis(1)) => timer_wins += 1,
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "no change reported"
            );
        };
        let took = started.elapsed();
        finish(&link, child);
        assert!(matches!(change, Change::Notified), "{change}");
        eprintln!("timer won {timer_wins} times; notified {took:?} after start ({delay:?} delay)");
        assert!(timer_wins >= 5, "the timer won only {timer_wins} times");
        assert!(took < delay + NOTIFY_WITHIN, "notified after {took:?}");
        assert!(list().unwrap().interfaces.iter().any(|i| i.name == "nc0"));
    });
}

#[test]
fn a_change_that_woke_a_dropped_future_is_reported_by_the_next_call() {
    in_private_netns(|ns| async move {
        let mut watch = DeviceWatch::new().unwrap();
        {
            // Pending and registered with the reactor...
            let mut pending = pin!(watch.changed());
            let first = poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "nothing has changed yet");
            // ...then woken by the change, and dropped without being polled again.
            ns.ip(&["link", "add", "nd0", "type", "veth", "peer", "name", "nd1"]);
        }
        let started = Instant::now();
        let change = timeout(NOTIFY_WITHIN, watch.changed()).await;
        assert!(matches!(change, Ok(Change::Notified)), "{change:?}");
        eprintln!("reported {:?} after the next call", started.elapsed());

        // A change already queued, raced against a timer that is already due:
        // changed() is polled first and takes it, or leaves it for the next call.
        ns.ip(&["link", "set", "nd0", "mtu", "1400"]);
        let won = tokio::select! {
            biased;
            change = watch.changed() => Some(change),
            () = sleep(Duration::ZERO) => None,
        };
        match won {
            Some(change) => assert!(matches!(change, Change::Notified), "{change}"),
            None => {
                let change = timeout(NOTIFY_WITHIN, watch.changed()).await;
                assert!(matches!(change, Ok(Change::Notified)), "{change:?}");
            }
        }
    });
}

#[test]
fn an_overflowed_receive_buffer_is_reported_as_lost() {
    in_private_netns(|ns| async move {
        let mut watch = DeviceWatch::new().unwrap();
        watch.shrink_receive_buffer();
        // Not read meanwhile: far more than the smallest buffer holds.
        for i in 0..10 {
            let (a, b) = (format!("no{i}"), format!("np{i}"));
            ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        }
        let change = timeout(NOTIFY_WITHIN, watch.changed()).await.unwrap();
        assert!(
            matches!(&change, Change::Lost(e) if e.raw_os_error() == Some(libc::ENOBUFS)),
            "{change}"
        );
        // The caller re-lists and sees everything; the watch goes on (with a buffer
        // this small, even one deletion may overflow it again).
        assert_eq!(list().unwrap().interfaces.len(), 21);
        while timeout(Duration::from_millis(50), watch.changed())
            .await
            .is_ok()
        {}
        let started = Instant::now();
        let child = ns.spawn_ip(Duration::ZERO, &["link", "del", "no0"]);
        let change = timeout(NOTIFY_WITHIN, watch.changed()).await;
        finish(&["link", "del", "no0"], child);
        assert!(
            matches!(change, Ok(Change::Notified | Change::Lost(_))),
            "{change:?} after {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn with_nothing_notified_changed_returns_every_resync_period() {
    in_private_netns(|ns| async move {
        let period = Duration::from_millis(200);
        let mut watch = DeviceWatch::with_resync(period).unwrap();
        let started = Instant::now();
        let change = timeout(Duration::from_secs(2), watch.changed())
            .await
            .unwrap();
        assert!(matches!(change, Change::Resync), "{change}");
        assert!(started.elapsed() >= period - Duration::from_millis(5));

        // A notification restarts the period.
        ns.ip(&["link", "add", "nt0", "type", "veth", "peer", "name", "nt1"]);
        loop {
            let since = Instant::now();
            match timeout(Duration::from_secs(2), watch.changed())
                .await
                .unwrap()
            {
                Change::Notified => continue,
                Change::Resync => {
                    assert!(since.elapsed() >= period - Duration::from_millis(5));
                    break;
                }
                other => panic!("{other}"),
            }
        }
    });
}

#[test]
fn a_watch_outside_a_runtime_is_an_error_not_a_panic() {
    let e = DeviceWatch::new().unwrap_err();
    assert!(matches!(e, RtnlError::NoRuntime), "{e}");
}
