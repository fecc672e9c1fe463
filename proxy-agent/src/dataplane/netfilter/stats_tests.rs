use netlink_packet_core::NLM_F_MULTIPART;

use super::*;
use crate::dataplane::ipvs::netlink::socket::tests::{done, error, message};
use crate::dataplane::netfilter::test_support::{Recorder, nfgenmsg, nla};

/// `IPCTNL_MSG_CT_GET_STATS_CPU` / `_GET_STATS` in subsystem 1.
const STATS_CPU: u16 = 0x104;
const STATS: u16 = 0x105;

/// One CPU's message as `ctnetlink_ct_stat_cpu_fill_info` sends it: `res_id` is the
/// CPU, every counter a `__be32`.
fn cpu(n: u16, counters: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = nfgenmsg(0, n);
    for (kind, value) in counters {
        payload.extend(nla(*kind, &value.to_be_bytes()));
    }
    payload
}

#[test]
fn per_cpu_counters_are_summed_and_the_global_counts_read() {
    let mut script = Recorder::default();
    let sent = std::rc::Rc::clone(&script.sent);
    let mut dump = message(
        STATS_CPU,
        NLM_F_MULTIPART,
        1,
        &cpu(
            0,
            &[
                (2, 10),
                (4, 3),
                (8, 5),
                (9, 1),
                (10, 0),
                (11, 2),
                (12, 4),
                (13, 6),
            ],
        ),
    );
    // A counter this code does not know (type 99) is skipped.
    dump.extend(message(
        STATS_CPU,
        NLM_F_MULTIPART,
        1,
        &cpu(1, &[(2, 1), (4, 4), (11, 1), (14, 7), (15, 8), (99, 5)]),
    ));
    dump.extend(done(1));
    script.replies.push_back(dump);
    let mut global = nfgenmsg(0, 0);
    global.extend(nla(1, &42u32.to_be_bytes()));
    global.extend(nla(2, &262_144u32.to_be_bytes()));
    let mut answer = message(STATS, 0, 2, &global);
    answer.extend(error(2, 0));
    script.replies.push_back(answer);

    let stats = Ctnetlink::over(script)
        .stats()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        stats,
        Stats {
            entries: 42,
            max: 262_144,
            cpus: 2,
            sums: CpuStats {
                found: 11,
                invalid: 7,
                insert: 5,
                insert_failed: 1,
                drop: 0,
                early_drop: 3,
                error: 4,
                search_restart: 6,
                clash_resolve: 7,
                chain_toolong: 8,
            },
        }
    );
    let sent = sent.borrow();
    // A dump (NLM_F_REQUEST | NLM_F_DUMP) of type 0x104, then a request with an ack
    // of type 0x105; both a bare AF_UNSPEC nfgenmsg.
    assert_eq!(&sent[0][4..8], &[0x04, 0x01, 0x01, 0x03]);
    assert_eq!(&sent[1][4..8], &[0x05, 0x01, 0x05, 0x00]);
    assert_eq!((sent[0].len(), &sent[1][16..20]), (20, &[0u8, 0, 0, 0][..]));
}

#[test]
fn a_counter_of_the_wrong_width_or_a_missing_global_count_is_an_error() {
    let mut script = Recorder::default();
    let mut payload = nfgenmsg(0, 0);
    payload.extend(nla(4, &[0, 1]));
    let mut dump = message(STATS_CPU, NLM_F_MULTIPART, 1, &payload);
    dump.extend(done(1));
    script.replies.push_back(dump);
    let e = Ctnetlink::over(script).stats().err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "netfilter conntrack: per-CPU statistics: malformed reply: attribute 4 has 2 bytes, expected 4"
        )
    );
    let reply = crate::dataplane::ipvs::netlink::socket::Reply {
        message_type: STATS,
        payload: {
            let mut p = nfgenmsg(0, 0);
            p.extend(nla(1, &1u32.to_be_bytes()));
            p
        },
    };
    assert_eq!(
        global_counts(&[reply]).err().as_deref(),
        Some("no CTA_STATS_GLOBAL_MAX_ENTRIES")
    );
}
