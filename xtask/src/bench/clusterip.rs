//! `cargo xtask bench clusterip`: new connections per second and request/response
//! latency through a ClusterIP VIP, against the same traffic sent straight to the
//! backend, with 1 and with 10,000 services programmed.
//!
//! Both sides run from the same client pod in the same cgroup (so the socket programs
//! run for both; the direct side only pays a map miss), alternating direct and VIP
//! rounds (and which goes first) so that machine noise hits both alike; each figure is
//! the median of 15 rounds of 1.5 s, each ratio the median of the rounds' ratios.
//! Everything runs release builds.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tests::{Agent, BpfFs, ClusterTopology, ManifestDir};

use super::{field, median, spread};

const ROUNDS: usize = 15;
const ROUND_MS: &str = "1500";
const VIP: &str = "10.96.0.10:80";
const OTHER_SERVICES: usize = 9_999;

struct Figures {
    crr: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
}

/// Runs the benchmark and prints its table.
pub fn run() -> Result<()> {
    super::release_binaries()?;

    let topo = ClusterTopology::new("bench", 1);
    let _server = topo.serve_backends(&[8080], &[]);
    let backend = topo.backends[0].addr_v4(8080).to_string();
    let dir = ManifestDir::new("bench");
    dir.write(
        "bench.yaml",
        &bench_service(&topo.backends[0].ipv4.to_string()),
    );
    let bpffs = BpfFs::new("bench");
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);

    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:>8}  {:<22} {:>10} {:>10} {:>7}",
        "services", "metric", "direct", "VIP", "ratio"
    );
    for services in [1, OTHER_SERVICES + 1] {
        if services > 1 {
            let start = Instant::now();
            dir.write("others.yaml", &other_services(OTHER_SERVICES));
            wait_for_count(&agent, 2 * OTHER_SERVICES + 1)?;
            println!("programmed {services} services in {:?}", start.elapsed());
        }
        let (direct, vip, ratio) = measure(&topo, &backend)?;
        let rows = [
            ("new connections/s", direct.crr, vip.crr, ratio.crr),
            (
                "RR latency p50 (us)",
                direct.rr_p50_us,
                vip.rr_p50_us,
                ratio.rr_p50_us,
            ),
            (
                "RR latency p99 (us)",
                direct.rr_p99_us,
                vip.rr_p99_us,
                ratio.rr_p99_us,
            ),
        ];
        for (metric, d, v, ratio) in rows {
            let _ = writeln!(
                table,
                "{services:>8}  {metric:<22} {d:>10.0} {v:>10.0} {ratio:>7.3}"
            );
        }
    }
    println!(
        "\nclusterip: VIP vs direct, medians of {ROUNDS} rounds; ratio = median of the \
         rounds' ratios, >= 1 when the VIP is as fast (latency: direct/VIP)\n{table}"
    );
    drop(agent);
    Ok(())
}

/// Alternating direct/VIP rounds: medians of each side, and of each round's ratio.
///
/// Each round measures both sides back to back, connection rate first, then latency,
/// so that the two measurements of a kind are adjacent in time. The ratios are the
/// medians of the per-round ratios: this machine's request/response latency is
/// bimodal (about 10 us or about 100 us, switching every few seconds as the VM's CPUs
/// idle or not), and medians taken per side over the run can land in different modes
/// while the two sides of one round mostly share theirs.
fn measure(topo: &ClusterTopology, backend: &str) -> Result<(Figures, Figures, Figures)> {
    // [side][metric] per round; metrics: conn/s, RR p50, RR p99.
    let mut samples = [
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    ];
    for round in 0..ROUNDS {
        // Alternate which side goes first, so that drift within a round favours neither.
        let mut order = [(0, backend), (1, VIP)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (side, to) in order {
            let crr = probe_line(topo, &["crr", "--to", to, "--duration-ms", ROUND_MS])?;
            let errs = field(&crr, "errs")?;
            if errs > 0.0 {
                bail!("round {round}: {errs} failed connections to {to}: {crr}");
            }
            samples[side][0].push(field(&crr, "conns")? / field(&crr, "secs")?);
        }
        for (side, to) in order {
            let rr = probe_line(topo, &["rr", "--to", to, "--duration-ms", ROUND_MS])?;
            samples[side][1].push(field(&rr, "p50_us")?);
            samples[side][2].push(field(&rr, "p99_us")?);
        }
        let [d, v] = &samples;
        println!(
            "  round {}: direct {:.0} conn/s, RR p50 {:.0} us, p99 {:.0} us;  \
             VIP {:.0} conn/s, RR p50 {:.0} us, p99 {:.0} us",
            round + 1,
            d[0][round],
            d[1][round],
            d[2][round],
            v[0][round],
            v[1][round],
            v[2][round]
        );
    }
    for (s, name) in samples.iter().zip(["direct", "VIP"]) {
        println!(
            "  spread over {ROUNDS} rounds, {name}: {} conn/s, RR p50 {} us, p99 {} us",
            spread(&s[0], 0),
            spread(&s[1], 0),
            spread(&s[2], 0)
        );
    }
    let [d, v] = &samples;
    // Higher is better for connections, lower for latency: each ratio is >= 1 when the
    // VIP is as fast.
    let ratio = |m: usize, vip_over_direct: bool| {
        let mut r: Vec<f64> = d[m]
            .iter()
            .zip(&v[m])
            .map(|(d, v)| if vip_over_direct { v / d } else { d / v })
            .collect();
        median(&mut r)
    };
    let ratios = Figures {
        crr: ratio(0, true),
        rr_p50_us: ratio(1, false),
        rr_p99_us: ratio(2, false),
    };
    let fig = |s: &[Vec<f64>; 3]| Figures {
        crr: median(&mut s[0].clone()),
        rr_p50_us: median(&mut s[1].clone()),
        rr_p99_us: median(&mut s[2].clone()),
    };
    Ok((fig(d), fig(v), ratios))
}

fn probe_line(topo: &ClusterTopology, args: &[&str]) -> Result<String> {
    let out = topo.client_probe(args);
    if !out.status.success() {
        bail!("probe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .context("probe printed nothing")
}

fn wait_for_count(agent: &Agent, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let have = agent.programmed().len();
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {n} frontends programmed:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bench_service(backend: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: bench}}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: bench-1, namespace: bench, labels: {{kubernetes.io/service-name: bench}}}}\n\
         addressType: IPv4\nendpoints:\n- addresses: [\"{backend}\"]\n  conditions: {{ready: true}}\n\
         ports:\n- {{name: http, port: 8080, protocol: TCP}}\n"
    )
}

/// `n` more services (TCP and UDP port each, 10 endpoints), in ranges the test
/// topology never routes.
fn other_services(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: load}}\n\
             spec:\n  clusterIP: 10.97.{a}.{b}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-1, namespace: load, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nendpoints:\n"
        );
        for e in 0..10 {
            let _ = writeln!(
                y,
                "- addresses: [\"10.245.{a}.{}\"]",
                (b + e * 25) % 250 + 1
            );
        }
        let _ = writeln!(
            y,
            "ports:\n- {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}"
        );
    }
    y
}
