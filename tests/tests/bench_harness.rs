//! Tests of the benchmark harness that need no lab and no root: the policy figure's
//! synthetic tables, its reading of `/metrics`, and the SVG charts.
//!
//! `cargo test -p sshgw-tests --test bench_harness`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;
use sshgw_tests::bench::charts::{self, Axes, Chart, Plot};
use sshgw_tests::bench::policy::{
    self, DecisionCell, Decisions, PolicyFigure, PushSize, Table, device_table, policy_set,
};
use sshgw_tests::bench::stats::Series;

fn list<'v>(doc: &'v Value, key: &str) -> &'v [Value] {
    doc[key].as_array().expect("a list").as_slice()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// (network, prefix length) of `a.b.c.d/len`.
fn network(text: &str) -> (u32, u32) {
    let (addr, len) = text.split_once('/').expect("a CIDR");
    let addr: Ipv4Addr = addr.parse().expect("an IPv4 network");
    (u32::from(addr), len.parse().expect("a prefix length"))
}

fn contains((net, len): (u32, u32), addr: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(addr) & mask == net
}

#[test]
fn device_tables_keep_the_lab_device_and_stay_in_cgnat_space() {
    for entries in [1, 10, 1000, 100_000] {
        let doc = device_table(entries).expect("a table");
        let devices = list(&doc, "devices");
        assert_eq!(devices.len(), entries);
        assert_eq!(devices[0]["id"], "laptop-jdoe");
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        let mut principals = HashSet::new();
        let lab = Ipv4Addr::new(100, 96, 0, 0);
        for d in &devices[1..] {
            assert!(ids.insert(d["id"].as_str().expect("id").to_owned()), "{d}");
            let addr: Ipv4Addr = strings(&d["addresses"])[0].parse().expect("IPv4");
            assert!(contains(network("100.64.0.0/10"), addr), "{addr}");
            assert!(addr < lab, "{addr} reaches the lab's device network");
            assert!(addresses.insert(addr), "{addr} twice");
            let email = d["user"]["email"].as_str().expect("email");
            let (local, domain) = email.split_once('@').expect("local@domain");
            assert_eq!(domain, "example.com");
            principals.insert((local.to_owned(), email.to_owned()));
            assert!(!strings(&d["user"]["groups"]).contains(&"developers".to_owned()));
        }
        // Two devices per user; a principal never stands for two users.
        let locals: HashSet<&String> = principals.iter().map(|(l, _)| l).collect();
        assert_eq!(locals.len(), principals.len());
        assert_eq!(principals.len(), entries / 2);
    }
    assert!(device_table(0).is_err());
    assert!(device_table(3_000_000).is_err());
}

#[test]
fn every_synthetic_policy_is_a_candidate_that_never_matches_the_lab_user() {
    let audited = Ipv4Addr::new(203, 0, 113, 10);
    for entries in [1, 10, 1000, 10_000] {
        let doc = policy_set(entries).expect("a set");
        let policies = list(&doc, "policies");
        assert_eq!(policies.len(), entries);
        let last = &policies[entries - 1];
        assert_eq!(last["id"], policy::LAB_POLICY);
        assert_eq!(strings(&last["identity"]["groups"]), ["developers"]);
        let mut precedences: Vec<i64> = policies
            .iter()
            .map(|p| p["precedence"].as_i64().expect("precedence"))
            .collect();
        assert!(
            precedences.windows(2).all(|w| w[0] < w[1]),
            "lab policy last"
        );
        precedences.dedup();
        let mut destinations = HashSet::new();
        let mut ids = HashSet::new();
        for p in &policies[..entries - 1] {
            assert!(ids.insert(p["id"].as_str().expect("id").to_owned()));
            let nets: Vec<(u32, u32)> = strings(&p["destinations"])
                .iter()
                .map(|d| network(d))
                .collect();
            assert!(nets.iter().any(|&n| contains(n, audited)), "{p}");
            destinations.extend(nets);
            let ports: Vec<u64> = p["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert!(ports.contains(&22), "{p}");
            let id = &p["identity"];
            let (emails, domains, groups) = (
                strings(&id["emails"]),
                strings(&id["email_domains"]),
                strings(&id["groups"]),
            );
            assert!(!(emails.is_empty() && domains.is_empty() && groups.is_empty()));
            assert!(!emails.contains(&"jdoe@example.com".to_owned()));
            assert!(!domains.contains(&"example.com".to_owned()));
            assert!(!groups.contains(&"developers".to_owned()));
        }
        // The 1,000-policy limit, not the 16,384-destination one, is what refuses 10,000.
        assert!(destinations.len() < 16_384, "{}", destinations.len());
    }
    assert!(policy_set(0).is_err());
}

#[test]
fn connections_read_the_banner_and_failures_are_counted() {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let addr = listener.local_addr().expect("its address");
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            let _ = stream.expect("accepted").write_all(b"SSH-2.0-test\r\n");
        }
    });
    let got = policy::connect_many(&addr, 3).expect("three connections");
    server.join().expect("server thread");
    assert_eq!((got.connections, got.banners, got.failed), (3, 3, 0));

    // Nothing listens any more: refused at once, counted up to the allowance.
    let got = policy::connect_many(&addr, 3).expect("three failures are allowed");
    assert_eq!((got.connections, got.failed, got.errors.len()), (0, 3, 3));
    assert!(
        got.errors[0].starts_with("connection 1 of 3 to "),
        "{:?}",
        got.errors
    );
    let err = policy::connect_many(&addr, 10).expect_err("a fourth is not");
    assert!(err.to_string().starts_with("4 of 4 connections"), "{err}");
}

#[test]
fn decision_metrics_are_read_from_the_exposition() {
    let text = "# TYPE sshgw_admission_decision_seconds histogram\n\
        sshgw_admission_decision_seconds_bucket{le=\"+Inf\"} 42\n\
        sshgw_admission_decision_seconds_sum 0.00004221\n\
        sshgw_admission_decision_seconds_count 42\n";
    let (sum, count) = policy::parse_decision_metrics(text).expect("both lines");
    assert_eq!(count, 42);
    assert!((sum - 0.00004221).abs() < 1e-15);
    let err = policy::parse_decision_metrics("sshgw_sessions_active 0\n")
        .expect_err("no histogram")
        .to_string();
    assert!(
        err.contains("sshgw_admission_decision_seconds_sum"),
        "{err}"
    );
}

/// Two chunks of 50 decisions at `ns` each, and one of 50 preempted ones (1 ms each).
fn decisions(ns: f64) -> Decisions {
    let chunk = |ns: f64| (ns * 50.0 / 1e9, 50);
    Decisions::from_chunks(&[chunk(ns), chunk(1e6), chunk(ns)])
}

#[test]
fn a_size_is_set_against_the_baselines_either_side() {
    let sample = decisions(3000.0);
    assert_eq!(sample.count, 150);
    assert!((sample.ns() - 3000.0).abs() < 1e-6, "{}", sample.ns());
    assert!(
        (sample.mean_ns - 335_333.3).abs() < 1.0,
        "{}",
        sample.mean_ns
    );
    let cell = DecisionCell::new((1000, 100), &sample, &decisions(900.0), &decisions(1100.0));
    assert!((cell.baseline_ns - 1000.0).abs() < 1e-6);
    assert!((cell.ratio - 3.0).abs() < 1e-9);
    assert_eq!(cell.decisions, 150);
}

fn push(table: Table, entries: usize, push_s: f64, refused: Option<&str>) -> PushSize {
    let series = |v: f64| Series::new("s", if refused.is_some() { vec![] } else { vec![v] });
    PushSize {
        table,
        entries,
        generated_bytes: entries * 150,
        bytes: entries * 160,
        push_s: series(push_s),
        read_back_s: series(push_s / 10.0),
        read_back_bytes: entries * 160,
        ratio: 10.0,
        refused: refused.map(str::to_owned),
    }
}

fn figure() -> PolicyFigure {
    let cell =
        |d, p, ns| DecisionCell::new((d, p), &decisions(ns), &decisions(800.0), &decisions(900.0));
    PolicyFigure {
        baseline: (10, 10),
        connections: 150,
        chunks: 3,
        push_rounds: 1,
        pushes: vec![
            push(Table::Devices, 10, 0.002, None),
            push(Table::Devices, 1000, 0.02, None),
            push(Table::Devices, 100_000, 0.0, Some("HTTP 400: too many")),
            push(Table::Policies, 10, 0.002, None),
            push(Table::Policies, 1000, 0.05, None),
        ],
        cells: vec![
            cell(10, 10, 850.0),
            cell(10, 1000, 40_000.0),
            cell(1000, 10, 870.0),
            cell(1000, 1000, 41_000.0),
        ],
        baseline_ns: vec![800.0, 900.0],
        failed: 1,
        failures: vec!["connection 7 of 100 to 203.0.113.10:22: timed out".to_owned()],
    }
}

fn svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("chart written");
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
    text
}

#[test]
fn policy_charts_and_rows() {
    let f = figure();
    let dir = tempfile::tempdir().expect("temp dir");
    let charts = [charts::decision_chart(&f), charts::push_chart(&f)];
    let charts: Vec<Chart> = charts.into_iter().map(|c| c.expect("data")).collect();
    charts::write(&charts, dir.path()).expect("drawn");
    let decision = svg(&dir.path().join("images/bench-policy-decision.svg"));
    for label in [
        "10 policies",
        "1000 policies",
        "baseline 10 × 10",
        "devices",
    ] {
        assert!(decision.contains(label), "{label}");
    }
    let push = svg(&dir.path().join("images/bench-push.svg"));
    for label in ["devices: push", "policies: read-back", "entries"] {
        assert!(push.contains(label), "{label}");
    }
    // A later run without the policy figure leaves no stale chart behind.
    std::fs::write(dir.path().join("images/notes.txt"), "kept").expect("other file");
    charts::write(&charts[..1], dir.path()).expect("drawn");
    assert!(!dir.path().join("images/bench-push.svg").exists());
    assert!(dir.path().join("images/bench-policy-decision.svg").exists());
    assert!(dir.path().join("images/notes.txt").exists());
    let mut md = String::new();
    charts::markdown(&charts, &mut md);
    assert!(md.contains("](images/bench-policy-decision.svg)"), "{md}");
    assert!(md.contains("](images/bench-push.svg)"), "{md}");

    let rows = policy::rows(&f);
    let text: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.figure, r.comparison))
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("1000 devices × 1000 policies")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("100000 devices HTTP 400: too many")),
        "{text:?}"
    );
    let mut details = String::new();
    policy::markdown(&f, &mut details);
    assert!(details.contains("| devices | 100000 | 15000000 | refused: HTTP 400: too many |"));
    assert!(details.contains("Connections that failed (not decided, left out of the samples): 1."));
}

#[test]
fn line_and_bar_charts_are_plain_svg() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lines.svg");
    let series = [
        ("up", vec![(1.0, 2.0), (10.0, 20.0), (100.0, f64::NAN)]),
        ("flat", vec![(1.0, 5.0), (100.0, 5.0)]),
    ];
    charts::line_chart(&path, "Growth", "items", "cost", true, &series).expect("drawn");
    let text = svg(&path);
    for label in ["Growth", "items", "cost", "up", "flat"] {
        assert!(text.contains(label), "{label}");
    }
    // Drawing again gives the same bytes: no font, no clock.
    charts::line_chart(&path, "Growth", "items", "cost", true, &series).expect("drawn");
    assert_eq!(svg(&path), text);

    let empty: [(&str, Vec<(f64, f64)>); 1] = [("none", vec![(0.0, f64::NAN)])];
    let err = charts::line_chart(&path, "Empty", "x", "y", false, &empty).expect_err("no point");
    assert!(err.to_string().contains("no point"), "{err}");

    let bars = Chart {
        file: "bench-bars.svg",
        title: "Bars".to_owned(),
        plot: Plot::Bars {
            y_label: "s/GiB".to_owned(),
            groups: vec!["upload".to_owned(), "download, logging".to_owned()],
            series: vec![
                ("sshgw".to_owned(), vec![2.4, 4.0]),
                ("floor".to_owned(), vec![1.1, f64::NAN]),
            ],
        },
    };
    let rss = charts::rss_chart(vec![(
        "ramp".to_owned(),
        vec![(0.0, 16.7), (500.0, 86.6), (1000.0, 152.5)],
    )]);
    charts::write(&[bars, rss], dir.path()).expect("drawn");
    let text = svg(&dir.path().join("images/bench-bars.svg"));
    for label in ["upload", "download, logging", "sshgw", "floor", "s/GiB"] {
        assert!(text.contains(label), "{label}");
    }
    let text = svg(&dir.path().join("images/bench-rss.svg"));
    assert!(text.contains("RSS (MiB)") && text.contains("ramp"));
    let axes = Axes {
        x_label: "x".to_owned(),
        y_label: "y".to_owned(),
        log_x: true,
        log_y: true,
    };
    let path = dir.path().join("loglog.svg");
    charts::line_chart_axes(
        &path,
        "Log",
        &axes,
        &[("s", vec![(10.0, 0.001), (1e5, 2.0)])],
    )
    .expect("drawn");
    svg(&path);
}

#[test]
fn ticks_are_short() {
    for (v, want) in [
        (0.0, "0"),
        (0.25, "0.25"),
        (0.0012, "0.0012"),
        (12.5, "12.5"),
        (250.0, "250"),
        (1500.0, "1.5k"),
        (65_536.0, "65.5k"),
        (100_000.0, "100k"),
        (2e6, "2M"),
    ] {
        assert_eq!(charts::tick(v), want, "{v}");
    }
}
