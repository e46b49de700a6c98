//! Reading `sshgw doctor --json` reports.

use anyhow::{Context, Result};
use serde_json::Value;

/// The verdict (`ok`, `warn`, `fail`, `skip`) of the check `name` in a report.
pub fn verdict<'v>(report: &'v Value, name: &str) -> Result<&'v str> {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .and_then(|c| c["verdict"].as_str())
        .with_context(|| format!("no check {name:?} in {report:#}"))
}
