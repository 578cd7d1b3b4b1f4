//! Retention: which snapshots to keep (the same rules as restic's `forget`).
//!
//! Snapshots are considered newest first. `keep_last` keeps the newest N.
//! `keep_hourly` keeps the newest snapshot of each of the N most recent
//! hours that have one, and likewise for days, ISO weeks and months (UTC).
//! A snapshot is kept when any rule keeps it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// Indices (into `times`) of the snapshots to keep. `times` are Unix seconds.
pub fn keep(times: &[i64], policy: &Policy) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a]).then(b.cmp(a)));
    let mut kept = BTreeSet::new();
    kept.extend(order.iter().take(policy.keep_last).copied());
    type Bucket = fn(OffsetDateTime) -> (i32, u32, u32, u32);
    let rules: [(usize, Bucket); 4] = [
        (policy.keep_hourly, |t| (t.year(), t.ordinal() as u32, t.hour() as u32, 0)),
        (policy.keep_daily, |t| (t.year(), t.ordinal() as u32, 0, 0)),
        (policy.keep_weekly, |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w as u32, 0, 1)
        }),
        (policy.keep_monthly, |t| (t.year(), t.month() as u32, 0, 2)),
    ];
    for (n, bucket) in rules {
        let mut seen = BTreeSet::new();
        for &i in &order {
            if seen.len() >= n {
                break;
            }
            let t = OffsetDateTime::from_unix_timestamp(times[i]).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            if seen.insert(bucket(t)) {
                kept.insert(i);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 24 * H;

    #[test]
    fn last_hourly_daily() {
        // 2026-01-05 00:00 UTC is a Monday.
        let base = 1_767_571_200;
        let times: Vec<i64> = (0..10).map(|i| base + i * 30 * 60).collect(); // every 30 minutes, 5 hours
        assert_eq!(keep(&times, &Policy { keep_last: 3, ..Default::default() }), [7, 8, 9].into());
        // Newest of each of the 2 latest hours: 9 (04:30) and 7 (03:30).
        assert_eq!(keep(&times, &Policy { keep_hourly: 2, ..Default::default() }), [7, 9].into());
        assert_eq!(keep(&times, &Policy { keep_daily: 5, ..Default::default() }), [9].into());
        assert_eq!(keep(&times, &Policy { keep_last: 1, keep_hourly: 2, ..Default::default() }), [7, 9].into());
        assert!(keep(&times, &Policy::default()).is_empty());
    }

    #[test]
    fn weekly_monthly() {
        let base = 1_767_571_200; // Monday 2026-01-05
        let times: Vec<i64> = (0..60).map(|i| base + i * D).collect(); // 60 days
        let kept = keep(&times, &Policy { keep_weekly: 3, ..Default::default() });
        // The newest is a Thursday (index 59); the newest of the two weeks before are Sundays.
        assert_eq!(kept, [48, 55, 59].into());
        let kept = keep(&times, &Policy { keep_monthly: 12, ..Default::default() });
        // Jan 31 (26), Feb 28 (54), and the newest (Mar 5, 59).
        assert_eq!(kept, [26, 54, 59].into());
    }
}
