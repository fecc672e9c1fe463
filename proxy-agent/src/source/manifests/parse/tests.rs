//! Reading files: documents, Lists, kinds, and what is reported.

#![allow(clippy::unwrap_used, reason = "tests")]

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::source::manifests::test_support::*;

#[test]
fn services_and_slices_load_from_yaml_yml_and_json_files() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    dir.write("b.yml", &slice_yaml("demo", "a-1", "a", "10.244.0.11"));
    dir.write(
        "c.json",
        r#"{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "c", "namespace": "demo"},
                "spec": {"clusterIP": "10.96.0.3", "ports": [{"name": "http", "port": 81}]}}"#,
    );
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/c"]);
    assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
    assert_eq!(port(&snapshot, "demo", "c"), 81);
    let target = snapshot.services[&("demo".into(), "a".into())]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0]
        .target_port
        .clone();
    assert_eq!(target, Some(IntOrString::Int(8080)));
}

#[test]
fn every_document_of_a_multi_document_file_loads() {
    let dir = TempDir::new();
    let text = format!(
        "---\n# leading marker and comments\n{}---\n---\n# an empty document\n--- \n{}...\n{}",
        service_yaml("demo", "a", "10.96.0.1", 80),
        service_yaml("demo", "b", "10.96.0.2", 80),
        slice_yaml("demo", "a-1", "a", "10.244.0.11"),
    );
    dir.write("all.yaml", &text);
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
}

#[test]
fn a_list_of_items_loads() {
    let dir = TempDir::new();
    dir.write(
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: demo}\n  \
           spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}\n\
         - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: a, namespace: demo}\n\
         - apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: demo}\n  \
           spec: {clusterIP: 10.96.0.2, ports: [{name: http, port: 0}]}\n",
    );
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
    assert_eq!(
        shown(&dir, &errors),
        ["DIR/list.yaml: Service demo/b: spec.ports[0].port: 0 is not in 1..=65535"]
    );
}

#[test]
fn other_kinds_files_and_directories_are_ignored() {
    let dir = TempDir::new();
    dir.write(
        "app.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\n---\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80)
        ),
    );
    dir.write("README.md", "# not a manifest: [");
    dir.write(".hidden.yaml", "not: [valid");
    dir.write("notes.txt", "{");
    std::fs::create_dir(dir.file("sub.yaml")).unwrap();
    std::fs::write(
        dir.file("sub.yaml").join("x.yaml"),
        service_yaml("demo", "x", "10.96.0.9", 80),
    )
    .unwrap();
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
}

/// `yaml` with `label: ""` added to its metadata (the manifest builders' layout).
fn labelled(yaml: &str, label: &str) -> String {
    let entry = format!("    {label}: \"\"\n");
    match yaml.find("  labels:\n") {
        Some(at) => format!("{}{entry}{}", &yaml[..at + 10], &yaml[at + 10..]),
        None => yaml.replacen("metadata:\n", &format!("metadata:\n  labels:\n{entry}"), 1),
    }
}

#[test]
fn objects_outside_kube_proxys_selector_are_absent_as_if_never_listed() {
    let dir = TempDir::new();
    let proxied = "service.kubernetes.io/service-proxy-name";
    let headless = "service.kubernetes.io/headless";
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    dir.write(
        "b.yaml",
        &labelled(&service_yaml("demo", "b", "10.96.0.2", 80), headless),
    );
    dir.write(
        "c.yaml",
        &labelled(&service_yaml("demo", "c", "10.96.0.3", 80), proxied),
    );
    dir.write(
        "d.yaml",
        &labelled(&slice_yaml("demo", "b-1", "b", "10.244.0.12"), headless),
    );
    dir.write("e.yaml", &slice_yaml("demo", "a-1", "a", "10.244.0.11"));
    // Filtered before validation, as the API server's selector would: never reported.
    dir.write(
        "f.yaml",
        &labelled(&service_yaml("demo", "f", "10.96.0.4", 70000), headless),
    );
    let mut src = source(&dir);
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
    assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);

    // Gaining the label is leaving the selection: the object goes, as a watch's delete.
    dir.write(
        "a.yaml",
        &labelled(&service_yaml("demo", "a", "10.96.0.1", 80), headless),
    );
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert!(snapshot.services.is_empty());
}

#[test]
fn an_object_without_a_namespace_is_in_default() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  clusterIP: 10.96.0.1\n  \
         ports: [{port: 80}]\n",
    );
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["default/a"]);
    let svc = &snapshot.services[&("default".into(), "a".into())];
    assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn typed_lists_load_with_or_without_item_kinds() {
    let dir = TempDir::new();
    dir.write(
        "services.json",
        r#"{"apiVersion": "v1", "kind": "ServiceList", "items": [
                {"metadata": {"name": "a", "namespace": "demo"},
                 "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "b", "namespace": "demo"},
                 "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}]}"#,
    );
    dir.write(
        "slices.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n\
         - metadata: {name: a-1, namespace: demo, labels: {kubernetes.io/service-name: a}}\n  \
           addressType: IPv4\n  endpoints: [{addresses: [10.244.0.11]}]\n\
         - apiVersion: v1\n  kind: Service\n  metadata: {name: c, namespace: demo}\n",
    );
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
    // An item of another kind in a typed list is the list's own business: the
    // source reads it like any object (here, a Service without ports).
    assert_eq!(
        shown(&dir, &errors),
        ["DIR/slices.yaml: Service demo/c: spec: is required"]
    );
}

#[test]
fn validation_errors_name_file_object_and_field_and_other_documents_still_load() {
    let dir = TempDir::new();
    let good = service_yaml("demo", "good", "10.96.0.1", 80);
    let cases = [
        (
            service_yaml("demo", "big", "10.96.0.2", 70000),
            "Service demo/big: spec.ports[0].port: 70000 is not in 1..=65535",
        ),
        (
            service_yaml("demo", "zero", "10.96.0.3", 0),
            "Service demo/zero: spec.ports[0].port: 0 is not in 1..=65535",
        ),
        (
            service_yaml("demo", "ip", "10.96.0.300", 80),
            "Service demo/ip: spec.clusterIP: \"10.96.0.300\" is not an IP address, \"None\" or empty",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: noports, namespace: demo}\n\
             spec: {clusterIP: 10.96.0.4}\n"
                .to_string(),
            "Service demo/noports: spec.ports: at least one port is required (only headless and ExternalName services may have none)",
        ),
        (
            service_yaml("demo", "proto", "10.96.0.5", 80).replace(
                "targetPort: 8080",
                "targetPort: 8080\n    protocol: ICMP",
            ),
            "Service demo/proto: spec.ports[0].protocol: unknown protocol \"ICMP\"",
        ),
        (
            slice_yaml("demo", "s-1", "s", "10.244.0.300"),
            "EndpointSlice demo/s-1: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)",
        ),
        (
            slice_yaml("demo", "s-2", "s", "10.244.0.1")
                .replace("  labels:\n    kubernetes.io/service-name: s\n", ""),
            "EndpointSlice demo/s-2: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to",
        ),
        (
            slice_yaml("demo", "s-3", "s", "10.244.0.1").replace("port: 8080", "port: 65536"),
            "EndpointSlice demo/s-3: ports[0].port: 65536 is not in 1..=65535",
        ),
        (
            slice_yaml("demo", "s-4", "s", "10.244.0.1")
                .replace("port: 8080", "port: 8080\n  protocol: QUIC"),
            "EndpointSlice demo/s-4: ports[0].protocol: unknown protocol \"QUIC\"",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n".to_string(),
            "document 2: metadata.name: is required",
        ),
    ];
    for (bad, expected) in cases {
        dir.write("mixed.yaml", &format!("{good}---\n{bad}"));
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(
            shown(&dir, &errors),
            [format!("DIR/mixed.yaml: {expected}")]
        );
        assert_eq!(keys(&snapshot.services), ["demo/good"], "{expected}");
        assert!(snapshot.slices.is_empty());
    }
}

#[test]
fn an_unparseable_document_is_reported_with_its_line_and_the_others_load() {
    let dir = TempDir::new();
    let text = format!(
        "{}---\n# comment\nfoo: [1, 2\n---\n{}",
        service_yaml("demo", "a", "10.96.0.1", 80),
        service_yaml("demo", "b", "10.96.0.2", 80)
    );
    dir.write("bad.yaml", &text);
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    assert_eq!(
        shown(&dir, &errors),
        [
            "DIR/bad.yaml: document 2: did not parse: did not find expected ',' or ']' at line 15 column 1, while parsing a flow sequence at line 14 column 6"
        ]
    );
}

#[test]
fn a_type_error_names_the_object_field_line_and_column() {
    let dir = TempDir::new();
    let text = format!(
        "{}---\n{}",
        service_yaml("demo", "a", "10.96.0.1", 80),
        service_yaml("demo", "b", "10.96.0.2", 80).replace("port: 80", "port: eighty")
    );
    dir.write("typed.yaml", &text);
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
    assert_eq!(
        shown(&dir, &errors),
        [
            "DIR/typed.yaml: Service demo/b: did not parse: spec.ports[0].port: invalid type: string \"eighty\", expected i32 at line 22 column 11"
        ]
    );
}

#[test]
fn kind_and_api_version_problems_are_reported() {
    let dir = TempDir::new();
    let cases = [
        (
            "apiVersion: v1\nkind: Servcie\nmetadata: {name: a}\n",
            "document 1: kind: unknown kind \"Servcie\" in apiVersion v1",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: Endpointslice\nmetadata: {name: a}\n",
            "document 1: kind: unknown kind \"Endpointslice\" in apiVersion discovery.k8s.io/v1",
        ),
        (
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: demo}\n",
            "EndpointSlice demo/a-1: apiVersion: EndpointSlice is in apiVersion discovery.k8s.io/v1, not \"discovery.k8s.io/v1beta1\"",
        ),
        (
            "apiVersion: v2\nkind: Service\nmetadata: {name: a}\n",
            "Service default/a: apiVersion: Service is in apiVersion v1, not \"v2\"",
        ),
        (
            "kind: Service\nmetadata: {name: a}\n",
            "Service default/a: apiVersion: is required",
        ),
        (
            "apiVersion: v1\nmetadata: {name: a}\n",
            "document 1: kind: is required",
        ),
        (
            "- a\n- b\n",
            "document 1: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
        ),
        (
            "just a string\n",
            "document 1: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
        ),
        (
            "apiVersion: v1\nkind: List\nitems: 3\n",
            "document 1 (List): items: must be a list of objects",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n",
            "document 1 item 1: kind: a List inside a List is not supported",
        ),
    ];
    for (text, expected) in cases {
        dir.write("k.yaml", text);
        let (snapshot, errors) = source(&dir).load();
        assert_eq!(shown(&dir, &errors), [format!("DIR/k.yaml: {expected}")]);
        assert!(snapshot.services.is_empty() && snapshot.slices.is_empty());
    }
}

#[test]
fn an_unreadable_file_is_reported_and_other_files_still_load() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    std::fs::write(dir.file("binary.yaml"), b"apiVersion: v1\n\xff\xfe\n").unwrap();
    std::os::unix::fs::symlink(dir.file("missing-target"), dir.file("dangling.yaml")).unwrap();
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
    assert_eq!(
        shown(&dir, &errors),
        [
            "DIR/binary.yaml: could not be read: not UTF-8 (invalid byte at offset 15)",
            "DIR/dangling.yaml: could not be read: No such file or directory (os error 2)",
        ]
    );
}

#[test]
fn the_bad_example_reports_one_error_per_object_and_serves_nothing() {
    let dir = TempDir::new();
    let text = std::fs::read_to_string(examples().join("bad.yaml")).unwrap();
    dir.write("bad.yaml", &text);
    let (snapshot, errors) = source(&dir).load();
    assert!(snapshot.services.is_empty() && snapshot.slices.is_empty());
    let errors = shown(&dir, &errors);
    for e in &errors {
        println!("{e}");
    }
    assert_eq!(
        errors,
        [
            "DIR/bad.yaml: Service default/web: spec.ports[0].port: 70000 is not in 1..=65535",
            "DIR/bad.yaml: Service bad-examples/zero-port: spec.ports[0].port: 0 is not in 1..=65535",
            "DIR/bad.yaml: Service bad-examples/bad-ip: spec.clusterIP: \"10.96.1.300\" is not an IP address, \"None\" or empty",
            "DIR/bad.yaml: Service bad-examples/no-ports: spec.ports: at least one port is required (only headless and ExternalName services may have none)",
            "DIR/bad.yaml: Service bad-examples/icmp: spec.ports[0].protocol: unknown protocol \"ICMP\"",
            "DIR/bad.yaml: Service bad-examples/typed: did not parse: spec.ports[0].port: invalid type: string \"eighty\", expected i32 at line 78 column 13",
            "DIR/bad.yaml: document 7: did not parse: did not find expected ',' or ']' at line 90 column 1, while parsing a flow sequence at line 89 column 10",
            "DIR/bad.yaml: document 8: kind: unknown kind \"Servcie\" in apiVersion v1",
            "DIR/bad.yaml: EndpointSlice bad-examples/old-api-abc: apiVersion: EndpointSlice is in apiVersion discovery.k8s.io/v1, not \"discovery.k8s.io/v1beta1\"",
            "DIR/bad.yaml: Service bad-examples/no-api-version: apiVersion: is required",
            "DIR/bad.yaml: EndpointSlice bad-examples/bad-address-abc: endpoints[0].addresses[0]: \"10.244.0.300\" is not an IPv4 address (the slice's addressType is IPv4)",
            "DIR/bad.yaml: EndpointSlice bad-examples/orphan-abc: metadata.labels[kubernetes.io/service-name]: is required: it names the Service this slice belongs to",
            "DIR/bad.yaml: document 13: is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
        ]
    );
}

#[test]
fn hostile_input_never_panics() {
    let dir = TempDir::new();
    let inputs = [
        "",
        "---",
        "...",
        "--- |\n  text\n",
        "&a [*a]",
        "!!binary AAAA",
        "{a: b, a: c}",
        "apiVersion: v1\nkind: Service\nmetadata: 5\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [1]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: 7}\n",
        "apiVersion: [v1]\nkind: {Service: 1}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 99999999999}]}\n",
        "apiVersion: v1\nkind: List\nitems: [1, null, {kind: Service}]\n",
        "\u{feff}apiVersion: v1\nkind: Service\nmetadata: {name: bom}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
        "a: b\r\n---\r\napiVersion: v1\r\n",
    ];
    let mut src = source(&dir);
    for input in inputs {
        dir.write("h.yaml", input);
        dir.write("h.json", input);
        let _ = src.load();
    }
    // The byte-order mark is not part of the document.
    dir.write("h.json", "");
    dir.write("h.yaml", inputs[13]);
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["default/bom"]);
}
