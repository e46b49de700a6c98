//! `LiveState` without a datapath: a change is validated, staged and committed, and one
//! that is refused or cannot be committed leaves memory and disk exactly as they were.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use crate::{
    config::Config,
    identity::devices::{Device, DeviceTable},
    policy::model::PolicySet,
    state::{self, ApplyError, Expect, LiveState},
    util::json_file,
};

const DEVICES: &str = r#"{"devices": [{"id": "laptop-jdoe", "addresses": ["100.96.0.7"],
    "user": {"email": "jdoe@example.com"}}]}"#;
const POLICIES: &str = r#"{"policies": [{"id": "audit-prod", "name": "Audit", "precedence": 10,
    "action": "audit_ssh", "destinations": ["203.0.113.0/24"]}]}"#;
const OTHER_POLICIES: &str = r#"{"policies": [{"id": "audit-lab", "name": "Lab", "precedence": 1,
    "action": "audit_ssh", "destinations": ["198.51.100.0/24"]}]}"#;

struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
    state: LiveState,
}

fn config_in(dir: &Path, ports: &str) -> Config {
    Config::parse(&format!(
        "state_dir = {:?}\n[datapath]\ninterfaces = [\"wg0\"]\nports = {ports}\n",
        dir.display().to_string()
    ))
    .unwrap()
}

/// A state dir holding both documents as the daemon stores them, loaded without a datapath.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "[22]");
    let devices = json_file::to_bytes(&DeviceTable::parse(DEVICES).unwrap()).unwrap();
    fs::write(config.devices_path(), devices).unwrap();
    store_policies(&config, POLICIES);
    let (devices, policies) = state::load(&config).unwrap();
    let state = LiveState::new(
        config.clone(),
        devices,
        policies,
        Arc::new(Mutex::new(None)),
    );
    Fixture { dir, config, state }
}

/// What is in force, in memory and on disk: both ETags, both documents as served, and
/// every entry of the state dir with its bytes (a directory lists its entries).
#[derive(Debug, PartialEq)]
struct Observed {
    etags: (String, String),
    memory: (Vec<u8>, Vec<u8>),
    disk: Vec<(String, Vec<u8>)>,
}

fn observe(f: &Fixture) -> Observed {
    let now = f.state.snapshot();
    Observed {
        etags: (now.devices_etag.clone(), now.policies_etag.clone()),
        memory: (
            json_file::to_bytes(&now.devices).unwrap(),
            json_file::to_bytes(&now.policies).unwrap(),
        ),
        disk: tree(f.dir.path()),
    }
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            out.extend(
                tree(&path)
                    .into_iter()
                    .map(|(n, b)| (format!("{name}/{n}"), b)),
            );
        } else {
            out.push((name, fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

fn store_policies(config: &Config, text: &str) {
    let set = PolicySet::parse(text).unwrap();
    fs::write(config.policies_path(), json_file::to_bytes(&set).unwrap()).unwrap();
}

/// A document as pushed: parsed, not yet validated.
fn policies(text: &str) -> PolicySet {
    json_file::parse(text).unwrap()
}

fn devices(text: &str) -> DeviceTable {
    json_file::parse(text).unwrap()
}

#[tokio::test]
async fn a_valid_change_is_stored_and_made_current() {
    let f = fixture();
    let mut changes = f.state.subscribe();
    let next = f
        .state
        .replace_policies(policies(OTHER_POLICIES), &Expect::Anything)
        .await
        .unwrap();
    let on_disk = fs::read(f.config.policies_path()).unwrap();
    assert_eq!(on_disk, json_file::to_bytes(&next.policies).unwrap());
    assert_eq!(next.policies_etag, json_file::sha256_hex(&on_disk));
    assert_eq!(f.state.snapshot().policies_etag, next.policies_etag);
    assert!(changes.has_changed().unwrap());
    assert_eq!(
        changes.borrow_and_update().policies_etag,
        next.policies_etag
    );
    let mode = fs::metadata(f.config.policies_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let expect = Expect::OneOf(vec![next.devices_etag.clone()]);
    let tablet: Device = serde_json::from_str(
        r#"{"id": "tablet-jdoe", "addresses": ["100.96.0.9"], "user": {"email": "jdoe@example.com"}}"#,
    )
    .unwrap();
    let added = f.state.upsert_device(tablet, &expect).await.unwrap();
    assert_eq!(added.devices.devices.len(), 2);
    let on_disk = fs::read(f.config.devices_path()).unwrap();
    assert_eq!(added.devices_etag, json_file::sha256_hex(&on_disk));
    let removed = f
        .state
        .delete_device("tablet-jdoe", &Expect::Anything)
        .await
        .unwrap();
    // Back to the original table: the same bytes, so the same ETag.
    assert_eq!(removed.devices_etag, next.devices_etag);
    let names: Vec<String> = tree(f.dir.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["devices.json", "policies.json"]);
}

#[tokio::test]
async fn refused_changes_leave_memory_and_disk_alone() {
    let f = fixture();
    let before = observe(&f);
    let dup_address = r#"{"devices": [
        {"id": "a", "addresses": ["100.96.0.7"], "user": {"email": "a@example.com"}},
        {"id": "b", "addresses": ["100.96.0.7"], "user": {"email": "b@example.com"}}]}"#;
    let same_principal = r#"{"devices": [
        {"id": "a", "addresses": ["100.96.0.7"], "user": {"email": "jdoe@example.com"}},
        {"id": "b", "addresses": ["100.96.0.8"], "user": {"email": "jdoe@example.org"}}]}"#;
    let no_destinations = r#"{"policies": [{"id": "p", "name": "P", "precedence": 1,
        "action": "audit_ssh", "destinations": []}]}"#;
    let bad_id: Device = serde_json::from_str(
        r#"{"id": "-bad", "addresses": ["100.96.0.9"], "user": {"email": "x@example.com"}}"#,
    )
    .unwrap();
    let stale = Expect::OneOf(vec!["0123".into()]);
    let s = &f.state;
    let results: Vec<(&str, Result<_, ApplyError>, &str)> = vec![
        (
            "a duplicate address",
            s.replace_devices(devices(dup_address), &Expect::Anything)
                .await,
            "invalid: devices[1].addresses[0]: 100.96.0.7 already belongs to device \"a\"",
        ),
        (
            "a shared certificate principal",
            s.replace_devices(devices(same_principal), &Expect::Anything)
                .await,
            "invalid: devices[1].user.email: \"jdoe@example.org\" would get the certificate principal",
        ),
        (
            "a policy without destinations",
            s.replace_policies(policies(no_destinations), &Expect::Anything)
                .await,
            "invalid: policies[0].destinations",
        ),
        (
            "a bad device id",
            s.upsert_device(bad_id, &Expect::Anything).await,
            "invalid: devices[1].id: \"-bad\" is not a device id",
        ),
        (
            "an unknown device",
            s.delete_device("nope", &Expect::Anything).await,
            "not found: no device with id \"nope\"",
        ),
        (
            "a stale If-Match",
            s.delete_device("laptop-jdoe", &stale).await,
            "stale: the device table changed since it was read (If-Match \"0123\"); it is now",
        ),
    ];
    for (what, result, want) in results {
        let got = describe(result.map(|_| ()));
        assert!(got.starts_with(want), "{what}: {got}");
        assert_eq!(observe(&f), before, "{what}");
    }
}

/// An error as `kind: message`.
fn describe(result: Result<(), ApplyError>) -> String {
    match result {
        Ok(()) => "applied".into(),
        Err(e @ ApplyError::Invalid(_)) => format!("invalid: {e}"),
        Err(e @ ApplyError::NotFound(_)) => format!("not found: {e}"),
        Err(e @ ApplyError::Stale(_)) => format!("stale: {e}"),
        Err(e @ ApplyError::Internal(_)) => format!("internal: {e}"),
    }
}

/// The rename into place fails (even for root: a non-empty directory is in the way), so
/// the change is rolled back: memory and every file stay as they were, and nothing staged
/// is left behind.
#[tokio::test]
async fn a_commit_that_cannot_rename_rolls_back() {
    for document in ["devices.json", "policies.json"] {
        let f = fixture();
        let target = f.dir.path().join(document);
        fs::remove_file(&target).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"in the way").unwrap();
        let before = observe(&f);
        let changes = f.state.subscribe();
        let result = if document == "devices.json" {
            let table = devices(r#"{"devices": []}"#);
            f.state.replace_devices(table, &Expect::Anything).await
        } else {
            f.state
                .replace_policies(policies(OTHER_POLICIES), &Expect::Anything)
                .await
        };
        let got = describe(result.map(|_| ()));
        let want = format!("internal: cannot replace {}: ", target.display());
        assert!(got.starts_with(&want), "{document}: {got}");
        assert_eq!(observe(&f), before, "{document}");
        assert!(!changes.has_changed().unwrap(), "{document}: published");
    }
}

/// Staging fails (the state dir is gone): nothing changes in memory.
#[tokio::test]
async fn a_change_that_cannot_be_staged_changes_nothing() {
    let f = fixture();
    let before = f.state.snapshot();
    fs::remove_dir_all(f.dir.path()).unwrap();
    let result = f
        .state
        .replace_policies(policies(OTHER_POLICIES), &Expect::Anything)
        .await;
    let got = describe(result.map(|_| ()));
    let want = format!(
        "internal: cannot create {}/.policies.json.tmp-",
        f.dir.path().display()
    );
    assert!(got.starts_with(&want), "{got}");
    assert_eq!(f.state.snapshot().policies_etag, before.policies_etag);
}

/// SIGHUP: an invalid file leaves state and configuration as they were; valid files
/// and the new configuration are taken together.
#[tokio::test]
async fn reload_is_all_or_nothing() {
    let f = fixture();
    let before = observe(&f);
    let policies_path = f.config.policies_path();
    let good = fs::read(&policies_path).unwrap();
    fs::write(&policies_path, b"{\"policies\": [").unwrap();
    let result = f.state.reload(config_in(f.dir.path(), "[22, 2222]")).await;
    let got = describe(result.map(|_| ()));
    let want = format!("invalid: invalid {}: ", policies_path.display());
    assert!(got.starts_with(&want), "{got}");
    fs::write(&policies_path, &good).unwrap();
    assert_eq!(observe(&f), before);
    assert_eq!(f.state.config().datapath.ports, [22]);

    store_policies(&f.config, OTHER_POLICIES);
    let next = f
        .state
        .reload(config_in(f.dir.path(), "[22, 2222]"))
        .await
        .unwrap();
    assert_eq!(next.policies.policies[0].id, "audit-lab");
    assert_eq!(f.state.snapshot().policies_etag, next.policies_etag);
    assert_eq!(f.state.config().datapath.ports, [22, 2222]);
}
