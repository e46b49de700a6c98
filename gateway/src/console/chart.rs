//! `/api/v1/chart`: sessions over time, counted per bucket and per destination or user.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::sessions::format_time;

/// At most this many buckets, and this many named series (the rest are `other`).
const MAX_BUCKETS: i64 = 48;
const MAX_SERIES: usize = 8;
/// Bucket widths to pick from, in seconds: the smallest that fits the span.
const WIDTHS: [i64; 9] = [
    60,
    300,
    900,
    3600,
    3 * 3600,
    6 * 3600,
    86_400,
    7 * 86_400,
    30 * 86_400,
];

/// Buckets of `starts` (µs, user, destination), grouped `by` destination or user.
pub fn buckets(starts: &[(i64, Option<String>, String)], by_user: bool) -> Value {
    let by = if by_user { "user" } else { "destination" };
    let key = |(_, user, destination): &(i64, Option<String>, String)| -> String {
        if by_user {
            user.clone().unwrap_or_else(|| "(unknown)".into())
        } else {
            destination.clone()
        }
    };
    let (Some(first), Some(last)) = (
        starts.iter().map(|s| s.0).min(),
        starts.iter().map(|s| s.0).max(),
    ) else {
        return json!({ "by": by, "bucket_secs": WIDTHS[3], "buckets": [] });
    };
    let span = (last - first) / 1_000_000 + 1;
    let width = WIDTHS
        .iter()
        .copied()
        .find(|w| span / w < MAX_BUCKETS)
        .unwrap_or(WIDTHS[WIDTHS.len() - 1]);
    let mut totals: HashMap<String, u64> = HashMap::new();
    for s in starts {
        *totals.entry(key(s)).or_default() += 1;
    }
    let mut ranked: Vec<(&String, &u64)> = totals.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let named: Vec<&String> = ranked.iter().take(MAX_SERIES).map(|(k, _)| *k).collect();
    let width_us = width * 1_000_000;
    let mut counts: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for s in starts {
        let bucket = s.0.div_euclid(width_us) * width_us;
        let k = key(s);
        let series = if named.contains(&&k) {
            k
        } else {
            "other".into()
        };
        *counts.entry(bucket).or_default().entry(series).or_default() += 1;
    }
    // Every bucket from the first to the last, empty ones too: a gap shows as a gap.
    let first_bucket = first.div_euclid(width_us) * width_us;
    let last_bucket = last.div_euclid(width_us) * width_us;
    let buckets: Vec<Value> = (0..)
        .map(|i| first_bucket + i * width_us)
        .take_while(|start| *start <= last_bucket)
        .map(|start| {
            let counts = counts.remove(&start).unwrap_or_default();
            json!({ "start": format_time(start), "counts": counts })
        })
        .collect();
    json!({ "by": by, "bucket_secs": width, "buckets": buckets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: i64, user: &str, dest: &str) -> (i64, Option<String>, String) {
        (secs * 1_000_000, Some(user.into()), dest.into())
    }

    #[test]
    fn sessions_are_counted_per_bucket_and_series() {
        let starts = [
            s(1_800_000_000, "a@x", "192.0.2.10:22"),
            s(1_800_000_030, "b@x", "192.0.2.10:22"),
            s(1_800_003_700, "a@x", "192.0.2.11:22"),
        ];
        let chart = buckets(&starts, false);
        assert_eq!(chart["bucket_secs"], 300);
        let buckets = chart["buckets"].as_array().unwrap();
        // 13 buckets of 5 minutes, the 11 between the two empty.
        assert_eq!(buckets.len(), 13);
        assert_eq!(buckets[0]["counts"]["192.0.2.10:22"], 2);
        assert_eq!(buckets[5]["counts"], json!({}));
        assert_eq!(buckets[12]["counts"]["192.0.2.11:22"], 1);
        let by_user = buckets_by_user(&starts);
        assert_eq!(by_user["buckets"][0]["counts"]["a@x"], 1);
        assert!(
            by_user["buckets"].as_array().unwrap().len() <= MAX_BUCKETS as usize + 1,
            "{by_user}"
        );
        assert_eq!(by_user["buckets"][0]["counts"]["b@x"], 1);
    }

    fn buckets_by_user(starts: &[(i64, Option<String>, String)]) -> Value {
        buckets(starts, true)
    }

    #[test]
    fn many_series_fold_into_other_and_long_spans_widen_buckets() {
        let starts: Vec<_> = (0..12)
            .map(|i| s(1_800_000_000 + i * 86_400, "u", &format!("192.0.2.{i}:22")))
            .collect();
        let chart = buckets(&starts, false);
        assert_eq!(chart["bucket_secs"], 6 * 3600);
        let total_other: u64 = chart["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["counts"]["other"].as_u64())
            .sum();
        assert_eq!(total_other, 4);
        assert_eq!(buckets(&[], true)["buckets"], json!([]));
    }
}
