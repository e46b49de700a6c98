//! Golden files for tests: the exact bytes a wire or file format has today, checked in under
//! `gateway/testdata/golden/`. A test compares and fails with the first differing line;
//! `SSHGW_BLESS=1 cargo test -p sshgw golden` rewrites the files instead (review the diff).

use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name)
}

fn blessing() -> bool {
    std::env::var_os("SSHGW_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file `name`, or rewrites it under `SSHGW_BLESS=1`.
pub fn assert_golden(name: &str, actual: &[u8]) {
    let path = path(name);
    if blessing() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e} (SSHGW_BLESS=1 creates it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (expected, actual) = (
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual),
    );
    let mut old = expected.lines();
    let mut new = actual.lines();
    let mut line = 1;
    loop {
        match (old.next(), new.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (None, None) => panic!(
                "{name} differs from {} only in line endings or the final newline",
                path.display()
            ),
            (a, b) => panic!(
                "{name} no longer matches {} at line {line}:\n  golden: {}\n  now:    {}\n\
                 A changed wire or file format breaks operators' tools; if the change is \
                 meant, rerun with SSHGW_BLESS=1 and review the diff.\nNow:\n{actual}",
                path.display(),
                a.unwrap_or("<end of file>"),
                b.unwrap_or("<end of file>"),
            ),
        }
    }
}

/// [`assert_golden`] of `value` as the control API and the state files write it.
pub fn assert_json_golden(name: &str, value: &impl serde::Serialize) {
    assert_golden(name, &crate::util::json_file::to_bytes(value).unwrap());
}
