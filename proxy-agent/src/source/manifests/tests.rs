//! The source: last good versions, deletion, the directory and its watch.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::test_support::*;
use super::*;

#[test]
fn an_object_defined_twice_is_reported_and_the_first_file_wins() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "web", "10.96.0.1", 80));
    dir.write("b.yaml", &service_yaml("demo", "web", "10.96.0.2", 81));
    let (snapshot, errors) = source(&dir).load();
    assert_eq!(port(&snapshot, "demo", "web"), 80);
    assert_eq!(
        shown(&dir, &errors),
        ["DIR/b.yaml: Service demo/web: also defined in DIR/a.yaml; this definition is ignored"]
    );
}

#[test]
fn an_object_that_becomes_invalid_keeps_its_last_good_version() {
    let dir = TempDir::new();
    dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 80));
    let mut src = source(&dir);
    let (snapshot, errors) = src.load();
    assert_eq!((port(&snapshot, "demo", "web"), errors.len()), (80, 0));

    dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 70000));
    let (snapshot, errors) = src.load();
    assert_eq!(port(&snapshot, "demo", "web"), 80);
    assert_eq!(
        shown(&dir, &errors),
        [
            "DIR/web.yaml: Service demo/web: spec.ports[0].port: 70000 is not in 1..=65535 (keeping the last good version)"
        ]
    );
    // Still kept on the next read, and replaced once fixed.
    let (snapshot, _) = src.load();
    assert_eq!(port(&snapshot, "demo", "web"), 80);
    dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 8080));
    let (snapshot, errors) = src.load();
    assert_eq!((port(&snapshot, "demo", "web"), errors.len()), (8080, 0));
}

#[test]
fn an_object_invalid_from_the_start_is_only_reported() {
    let dir = TempDir::new();
    dir.write("web.yaml", &service_yaml("demo", "web", "10.96.0.1", 70000));
    let (snapshot, errors) = source(&dir).load();
    assert!(snapshot.services.is_empty());
    assert_eq!(
        shown(&dir, &errors),
        ["DIR/web.yaml: Service demo/web: spec.ports[0].port: 70000 is not in 1..=65535"]
    );
}

#[test]
fn objects_of_a_file_that_stops_parsing_are_kept_until_it_is_fixed_or_deleted() {
    let dir = TempDir::new();
    let both = format!(
        "{}---\n{}",
        service_yaml("demo", "a", "10.96.0.1", 80),
        slice_yaml("demo", "a-1", "a", "10.244.0.11")
    );
    dir.write("a.yaml", &both);
    dir.write("b.yaml", &service_yaml("demo", "b", "10.96.0.2", 80));
    let mut src = source(&dir);
    src.load();

    // A truncated write: the first document is cut in the middle of a flow mapping.
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a,\n",
    );
    let (snapshot, errors) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    assert_eq!(keys(&snapshot.slices), ["demo/a-1"]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().ends_with(
            " (keeping the last good version of Service demo/a, EndpointSlice demo/a-1 from this file)"
        ),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].object.as_deref(), Some("document 1"));

    // Fixed without the slice: the slice goes.
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    assert!(snapshot.slices.is_empty());

    // Broken again, then deleted: its objects go.
    dir.write("a.yaml", "{");
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b"]);
    dir.remove("a.yaml");
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/b"]);
}

#[test]
fn a_good_object_in_a_file_with_a_broken_document_is_not_duplicated_by_retention() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let mut src = source(&dir);
    src.load();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\nfoo: [\n",
            service_yaml("demo", "a", "10.96.0.1", 81)
        ),
    );
    let (snapshot, errors) = src.load();
    // The new good version wins over the last good one.
    assert_eq!(port(&snapshot, "demo", "a"), 81);
    assert_eq!(errors.len(), 1);
    assert!(!errors[0].message.contains("keeping"), "{}", errors[0]);
}

#[test]
fn objects_removed_from_the_files_are_removed() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("demo", "a", "10.96.0.1", 80),
            service_yaml("demo", "b", "10.96.0.2", 80)
        ),
    );
    dir.write("c.yaml", &service_yaml("demo", "c", "10.96.0.3", 80));
    let mut src = source(&dir);
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/b", "demo/c"]);

    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a", "demo/c"]);

    dir.remove("c.yaml");
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
}

#[test]
fn an_object_moved_to_another_file_stays() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let mut src = source(&dir);
    src.load();
    dir.remove("a.yaml");
    dir.write("z.yaml", &service_yaml("demo", "a", "10.96.0.1", 81));
    let (snapshot, errors) = src.load();
    assert_eq!(errors, []);
    assert_eq!(port(&snapshot, "demo", "a"), 81);
}

#[test]
fn a_missing_directory_or_a_file_is_refused() {
    let dir = TempDir::new();
    let missing = dir.file("nope");
    let err = ManifestSource::new(missing.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "manifest directory {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    dir.write("f.yaml", "");
    let err = ManifestSource::new(dir.file("f.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "manifest directory {}: not a directory",
            dir.file("f.yaml").display()
        )
    );
}

#[test]
fn a_directory_that_disappears_keeps_the_last_good_objects() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let mut src = source(&dir);
    src.load();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (snapshot, errors) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .starts_with("could not list the directory: ")
    );
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

async fn expect_change(src: &mut ManifestSource, what: &str) {
    if tokio::time::timeout(EVENT_TIMEOUT, src.changed())
        .await
        .is_err()
    {
        panic!("no change reported within {EVENT_TIMEOUT:?} after {what}");
    }
}

async fn expect_quiet(src: &mut ManifestSource, what: &str) {
    let quiet = Duration::from_millis(400);
    if tokio::time::timeout(quiet, src.changed()).await.is_ok() {
        panic!("a change was reported after {what}");
    }
}

#[tokio::test]
async fn changed_fires_after_a_file_is_written() {
    let dir = TempDir::new();
    let mut src = source(&dir);
    src.load();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    expect_change(&mut src, "writing a.yaml").await;
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
}

#[tokio::test(start_paused = true)]
async fn a_change_is_not_lost_when_changed_is_dropped_mid_debounce() {
    let dir = TempDir::new();
    let mut src = source(&dir);
    src.load();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    // Wait in real time (tokio's clock is paused) for the write's events, which the
    // channel coalesces into one.
    let waited = std::time::Instant::now();
    while src.events.is_empty() {
        assert!(
            waited.elapsed() < EVENT_TIMEOUT,
            "no event within {EVENT_TIMEOUT:?} after writing a.yaml"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    // Dropped before the directory has been quiet for DEBOUNCE, as when another branch
    // of the agent's `tokio::select!` wins; the first call takes the event.
    for i in 0..3 {
        assert!(
            tokio::time::timeout(DEBOUNCE / 4, src.changed())
                .await
                .is_err(),
            "call {i} returned before the directory was quiet for {DEBOUNCE:?}"
        );
    }
    assert!(src.events.is_empty(), "a dropped call took the event");
    // The next call finishes the debounce the dropped ones began.
    assert!(
        tokio::time::timeout(DEBOUNCE / 2, src.changed())
            .await
            .is_ok(),
        "the change seen by a dropped call was lost"
    );
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/a"]);
}

#[tokio::test]
async fn changed_fires_after_a_delete_and_an_atomic_rename() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let mut src = source(&dir);
    src.load();
    dir.remove("a.yaml");
    expect_change(&mut src, "removing a.yaml").await;
    src.load();
    // How editors and kubectl-like tools write: a temporary file renamed over.
    dir.write(".b.yaml.tmp", &service_yaml("demo", "b", "10.96.0.2", 80));
    std::fs::rename(dir.file(".b.yaml.tmp"), dir.file("b.yaml")).unwrap();
    expect_change(&mut src, "renaming into b.yaml").await;
    let (snapshot, _) = src.load();
    assert_eq!(keys(&snapshot.services), ["demo/b"]);
}

#[tokio::test]
async fn a_burst_of_writes_is_one_change() {
    let dir = TempDir::new();
    let mut src = source(&dir);
    src.load();
    for i in 0..20 {
        dir.write(
            &format!("s{i}.yaml"),
            &service_yaml("demo", &format!("s{i}"), "10.96.0.1", 80),
        );
    }
    expect_change(&mut src, "20 writes").await;
    let (snapshot, _) = src.load();
    assert_eq!(snapshot.services.len(), 20);
    expect_quiet(&mut src, "the burst was read").await;
}

#[tokio::test]
async fn reading_the_directory_is_not_a_change() {
    let dir = TempDir::new();
    dir.write("a.yaml", &service_yaml("demo", "a", "10.96.0.1", 80));
    let mut src = source(&dir);
    src.load();
    src.load();
    expect_quiet(&mut src, "only reading").await;
}
