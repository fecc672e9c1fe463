//! `deploy/` checked piece by piece: every manifest is read into the real Kubernetes
//! types (and nothing in it is a field those types do not know), the ClusterRole grants
//! exactly what the agent reads, every metric the Grafana dashboard queries is in a
//! live scrape of an agent serving services, and the Dockerfile builds with the
//! commands the README documents (no container engine runs on the test machines, so
//! the image itself is not built here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tests::{Agent, BpfFs, ClusterTopology, ManifestDir, service};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The `deploy/*.yaml` files, by name.
fn manifests() -> BTreeMap<String, String> {
    let dir = repo().join("deploy");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("reading deploy/").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.insert(
                name,
                read(&format!("deploy/{}", e.file_name().to_string_lossy())),
            );
        }
    }
    assert!(!out.is_empty(), "no manifests in {}", dir.display());
    out
}

/// The documents of a multi-document YAML file, as JSON; empty documents left out.
fn documents(file: &str, yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Where `typed` (the document read into a type and written back) lacks or changes
/// what `original` says: fields the type does not know are dropped on the way.
fn dropped(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => dropped(v, tv, &p, out),
                    None => out.push(format!("{p} (unknown field)")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) if o.len() == t.len() => {
            for (i, (v, tv)) in o.iter().zip(t).enumerate() {
                dropped(v, tv, &format!("{path}[{i}]"), out);
            }
        }
        (o, t) if o == t => {}
        (o, t) => out.push(format!("{path}: {o} became {t}")),
    }
}

/// Reads `doc` into `K`, and fails with every field `K` dropped or changed.
fn typed<K: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> K {
    let what = format!(
        "{file}: {} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let k: K = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&k).expect("serializing a k8s-openapi object");
    let mut problems = Vec::new();
    dropped(doc, &back, "", &mut problems);
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
    k
}

/// Every object of `deploy/`, read into its type; (file, kind, name) of each.
fn check_all() -> Vec<(String, String, String)> {
    let mut seen = Vec::new();
    for (file, yaml) in manifests() {
        let docs = documents(&file, &yaml);
        assert!(!docs.is_empty(), "{file}: no documents");
        for doc in docs {
            let api = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a {kind} without a name"))
                .to_owned();
            match (api, kind) {
                ("apps/v1", "DaemonSet") => {
                    typed::<DaemonSet>(&file, &doc);
                }
                ("v1", "ServiceAccount") => {
                    typed::<ServiceAccount>(&file, &doc);
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    typed::<ClusterRole>(&file, &doc);
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    typed::<ClusterRoleBinding>(&file, &doc);
                }
                _ => panic!("{file}: {api} {kind} {name}: a kind this test does not check"),
            }
            seen.push((file.clone(), kind.to_owned(), name));
        }
    }
    seen
}

#[test]
fn every_manifest_in_deploy_reads_into_the_kubernetes_types_without_an_unknown_field() {
    let seen = check_all();
    let kinds: BTreeSet<&str> = seen.iter().map(|(_, k, _)| k.as_str()).collect();
    for want in [
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(kinds.contains(want), "no {want} in deploy/: {seen:?}");
    }
}

#[test]
fn the_unknown_field_check_finds_a_misspelt_field() {
    let doc = documents(
        "inline",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namepsace: kube-system\n",
    );
    let back = serde_json::to_value(
        serde_json::from_value::<ServiceAccount>(doc[0].clone()).expect("a ServiceAccount"),
    )
    .expect("json");
    let mut problems = Vec::new();
    dropped(&doc[0], &back, "", &mut problems);
    assert_eq!(problems, [".metadata.namepsace (unknown field)"]);
}

/// (apiGroup, resource) -> verbs, over every rule of the agent's ClusterRole.
fn grants() -> BTreeMap<(String, String), BTreeSet<String>> {
    let yaml = read("deploy/rbac.yaml");
    let role = documents("rbac.yaml", &yaml)
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole in rbac.yaml");
    let role: ClusterRole = typed("rbac.yaml", &role);
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "a rule narrowed or widened beyond resources: {rule:?}"
        );
        for g in rule.api_groups.unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                out.entry((g.clone(), r))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

#[test]
fn the_cluster_role_grants_exactly_get_list_watch_on_services_endpointslices_and_nodes() {
    // The agent lists and watches these three and nothing else; it writes nothing
    // (it records no Events: `proxy-agent/src` has no event recorder), so no write
    // verb and no `events` resource belong here.
    let read_only: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
    let want: BTreeMap<(String, String), BTreeSet<String>> = [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ]
    .into_iter()
    .map(|(g, r)| ((g.to_owned(), r.to_owned()), read_only.clone()))
    .collect();
    assert_eq!(grants(), want);

    // The binding gives that role to the DaemonSet's service account.
    let yaml = read("deploy/rbac.yaml");
    let docs = documents("rbac.yaml", &yaml);
    let binding: ClusterRoleBinding = typed(
        "rbac.yaml",
        docs.iter()
            .find(|d| d["kind"] == "ClusterRoleBinding")
            .expect("a ClusterRoleBinding"),
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "proxy-agent");
    let ds_yaml = read("deploy/daemonset.yaml");
    let ds: DaemonSet = typed("daemonset.yaml", &documents("daemonset.yaml", &ds_yaml)[0]);
    let pod = ds
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let account = pod.service_account_name.expect("a serviceAccountName");
    let ns = ds.metadata.namespace.expect("a namespace");
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == account
            && s.namespace.as_deref() == Some(&ns)),
        "the binding does not name {ns}/{account}: {subjects:?}"
    );
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names (in `{...}` and `by (...)`), strings or durations.
fn promql_metrics(expr: &str) -> Vec<String> {
    // Aggregations may be followed by `by (...)` rather than their argument.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Skips from an opening `open` to just past its matching `close`.
    let skip = |i: &mut usize, open: char, close: char| {
        let mut depth = 0;
        while *i < chars.len() {
            let c = chars[*i];
            *i += 1;
            if c == '"' || c == '\'' {
                while *i < chars.len() && chars[*i] != c {
                    *i += if chars[*i] == '\\' { 2 } else { 1 };
                }
                *i += 1;
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            skip(&mut i, '{', '}');
        } else if c == '[' {
            skip(&mut i, '[', ']');
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            // A number (and a unit, as in `5m` outside brackets).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let called = j < chars.len() && chars[j] == '(';
            if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                if called {
                    // by (le, instance): label names.
                    i = j;
                    skip(&mut i, '(', ')');
                }
            } else if !called && !AGGREGATIONS.contains(&word.as_str()) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn promql_metric_names_are_told_from_functions_labels_and_durations() {
    assert_eq!(
        promql_metrics(
            "histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{x=\"y\"}[5m])))"
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        promql_metrics("sum(rate(b_total{event=\"drop}\"}[$__rate_interval])) / on(instance) c"),
        ["b_total", "c"]
    );
    assert_eq!(promql_metrics("max without (table) (d) > 0.8"), ["d"]);
}

/// Every `expr` in the dashboard, wherever it is (panels, rows, templating).
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric families of a Prometheus text exposition: name -> type, from the
/// `# TYPE` lines (the family name, without a counter's `_total` or a histogram's
/// `_bucket`/`_sum`/`_count`).
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Whether the series `name` a query reads is exposed, given the families.
fn exposed(name: &str, families: &BTreeMap<String, String>) -> bool {
    let is = |family: &str, types: &[&str]| {
        families
            .get(family)
            .is_some_and(|t| types.contains(&t.as_str()))
    };
    let suffixed =
        |suffix: &str, types: &[&str]| name.strip_suffix(suffix).is_some_and(|f| is(f, types));
    suffixed("_total", &["counter"])
        || suffixed("_bucket", &["histogram"])
        || suffixed("_sum", &["histogram", "summary"])
        || suffixed("_count", &["histogram", "summary"])
        || is(
            name,
            &["gauge", "counter", "untyped", "unknown", "info", "stateset"],
        )
}

#[test]
fn every_metric_the_dashboard_queries_is_in_a_live_scrape_of_an_agent_serving_services() {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/dashboard.json")).expect("dashboard.json is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(!queries.is_empty(), "no queries in dashboard.json");

    let topo = ClusterTopology::new("dashboard", 2);
    let _servers = topo.serve_backends(&[8080], &[]);
    let ips: Vec<std::net::IpAddr> = topo
        .backends
        .iter()
        .map(|p| std::net::IpAddr::V4(p.ipv4))
        .collect();
    let dir = ManifestDir::new("dashboard");
    dir.write(
        "web.yaml",
        &service(
            "web",
            "10.96.0.10".parse().expect("vip"),
            &[("http", 80, "TCP", 8080)],
            &ips,
            None,
        ),
    );
    let bpffs = BpfFs::new("dashboard");
    let agent = Agent::start(bpffs.path(), topo.client_cgroup.path(), dir.path(), &[]);
    let backends: Vec<std::net::SocketAddr> = ips
        .iter()
        .map(|i| std::net::SocketAddr::new(*i, 8080))
        .collect();
    agent.wait_for("10.96.0.10:80/TCP", &backends, Duration::from_secs(15));
    // Traffic, so that the data plane's counters have been read at least once.
    topo.client_probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]);
    let text = agent.metrics();
    let families = families(&text);

    let mut missing = Vec::new();
    for q in &queries {
        let names = promql_metrics(q);
        assert!(!names.is_empty(), "no metric in the query {q:?}");
        for n in names {
            if !exposed(&n, &families) {
                missing.push(format!("{n} (in {q})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries series the agent does not expose:\n{}\n\nscrape:\n{text}",
        missing.join("\n")
    );
}

/// The shell commands of the Dockerfile's `RUN` instructions in the stage named
/// `stage`, split at `&&`, continuation lines joined.
fn dockerfile_runs(dockerfile: &str, stage: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut in_stage = false;
    let mut out = Vec::new();
    for line in joined.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            in_stage = from.split_whitespace().last() == Some(stage);
        } else if in_stage && let Some(run) = line.strip_prefix("RUN ") {
            out.extend(
                run.split("&&")
                    .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                    .filter(|c| !c.is_empty()),
            );
        }
    }
    out
}

/// The commands of the README's build block: the lines of the code block between
/// `<!-- build-commands -->` and `<!-- /build-commands -->`, comments left out.
fn readme_build_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find("<!-- build-commands -->")
        .expect("README.md has no `<!-- build-commands -->` block");
    let rest = &readme[start..];
    let end = rest
        .find("<!-- /build-commands -->")
        .expect("README.md's build-commands block is not closed");
    rest[..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```") && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn the_dockerfile_builds_with_the_commands_the_readme_documents() {
    let dockerfile = read("deploy/Dockerfile");
    let runs = dockerfile_runs(&dockerfile, "build");
    assert!(!runs.is_empty(), "no RUN in the Dockerfile's build stage");
    assert_eq!(
        runs,
        readme_build_commands(&read("README.md")),
        "deploy/Dockerfile's build stage and the README's build commands differ"
    );
    // It builds the agent package's binaries, in release mode as `cargo xtask bench`
    // does, and ships each of them.
    assert!(
        runs.iter()
            .any(|c| c == "cargo build --release -p proxy-agent --bins"),
        "{runs:?}"
    );
    let manifest = read("proxy-agent/Cargo.toml");
    let bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| {
            b.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"'))
        })
        .collect();
    assert!(!bins.is_empty(), "no [[bin]] in proxy-agent/Cargo.toml");
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .expect("a COPY --from=build line");
    for b in bins {
        assert!(
            copy.contains(&format!("/src/target/release/{b} ")),
            "the image does not ship {b}: {copy}"
        );
    }
}

#[test]
fn the_build_commands_are_read_from_the_dockerfile_stage_and_the_readme_block() {
    let dockerfile = "FROM rust AS build\nRUN a --x \\\n && b\nFROM debian\nRUN apt-get update\n";
    assert_eq!(dockerfile_runs(dockerfile, "build"), ["a --x", "b"]);
    let readme = "text\n<!-- build-commands -->\n```sh\n# a comment\na  --x\nb\n```\n<!-- /build-commands -->\nmore\n";
    assert_eq!(readme_build_commands(readme), ["a --x", "b"]);
}

/// The kubeadm patch applied to a DaemonSet of kubeadm's shape (its `kube-proxy`
/// container, command and mounts) reads into the Kubernetes types without an unknown
/// field, keeps kubeadm's command with the paths the agent needs, and grants the same
/// capabilities as `daemonset.yaml`.
#[test]
fn the_kubeadm_patch_keeps_kubeadm_s_command_and_grants_the_daemonset_s_capabilities() {
    let file = "deploy/kubeadm/kube-proxy-patch.yaml";
    let patch = documents(file, &read(file));
    assert_eq!(patch.len(), 1, "{file}: one document");
    let container = &patch[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "kube-proxy", "kubeadm's container name");
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("a command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        command[..3],
        [
            "/usr/local/bin/kube-proxy",
            "--config=/var/lib/kube-proxy/config.conf",
            "--hostname-override=$(NODE_NAME)"
        ],
        "kubeadm's command first"
    );
    assert!(
        command.contains(&"--bpffs=/sys/fs/bpf/proxy-agent"),
        "{command:?}"
    );
    let caps = |c: &Value| c["securityContext"]["capabilities"].clone();
    let daemonset = documents("daemonset.yaml", &read("deploy/daemonset.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in daemonset.yaml");
    assert_eq!(
        caps(container),
        caps(&daemonset["spec"]["template"]["spec"]["containers"][0]),
        "the same capabilities as deploy/daemonset.yaml"
    );
    // As a whole DaemonSet (the patch's fields, under kubeadm's metadata and selector).
    let mut whole = patch[0].clone();
    whole["apiVersion"] = "apps/v1".into();
    whole["kind"] = "DaemonSet".into();
    whole["metadata"] = serde_json::json!({"name": "kube-proxy", "namespace": "kube-system"});
    whole["spec"]["selector"] = serde_json::json!({"matchLabels": {"k8s-app": "kube-proxy"}});
    let _: DaemonSet = typed(file, &whole);
    // The image links kube-proxy to the agent, so that command runs it.
    assert!(
        read("deploy/Dockerfile").contains("ln -s proxy-agent /usr/local/bin/kube-proxy"),
        "deploy/Dockerfile must provide /usr/local/bin/kube-proxy"
    );
}
