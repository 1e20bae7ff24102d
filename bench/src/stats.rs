//! The arithmetic of the figures: percentiles, throughput over the steady
//! part of a run, and per-order latencies from the tracker's histories.

use chrono::{DateTime, Utc};
use harness::OrderView;

/// Seconds since the Unix epoch (microsecond precision survives in an f64).
pub fn epoch_secs(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

pub fn now_secs() -> f64 {
    epoch_secs(Utc::now())
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// p50 / p99 / max of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of_ms(values: &[f64]) -> Dist {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Dist {
            n: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Completions per second over a run's steady part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub per_sec: f64,
    pub window_secs: f64,
    pub counted: usize,
    /// Too few completions before publishing ended: counted over the whole run instead.
    pub short: bool,
}

/// Throughput of a saturating run: completions from the 10th percentile of
/// completion times (the queues have filled) to the end of publishing (after
/// it only the backlog drains), so the publisher's load is inside the window.
pub fn saturated_throughput(completions: &[f64], publish_start: f64, publish_end: f64) -> Throughput {
    let mut sorted = completions.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n < 2 {
        return Throughput { per_sec: f64::NAN, ..Throughput::default() };
    }
    let start = sorted[n / 10];
    let end = publish_end;
    let counted = sorted.iter().filter(|t| **t > start && **t <= end).count();
    if end - start >= 0.2 && counted >= 10 {
        return Throughput {
            per_sec: counted as f64 / (end - start),
            window_secs: end - start,
            counted,
            short: false,
        };
    }
    // Publishing ended too early for a window (a tiny run): everything over the whole run.
    let window = (sorted[n - 1] - publish_start).max(1e-3);
    Throughput { per_sec: n as f64 / window, window_secs: window, counted: n, short: true }
}

/// Completions per second of an open-loop run: completions in the publishing
/// window (less its first `skip` seconds), shifted by the median latency.
pub fn open_loop_throughput(
    completions: &[f64],
    publish_start: f64,
    publish_end: f64,
    skip: f64,
    shift: f64,
) -> Throughput {
    let start = publish_start + skip + shift;
    let end = publish_end + shift;
    let window = end - start;
    if window <= 0.0 {
        return saturated_throughput(completions, publish_start, publish_start);
    }
    let counted = completions.iter().filter(|t| **t > start && **t <= end).count();
    Throughput { per_sec: counted as f64 / window, window_secs: window, counted, short: false }
}

/// One stretch of an order's way, for "where the time goes": from the
/// latest of `from` the order passed to `to`.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// The states it may start at, the latest first (`rebinned`, else `picked`).
    pub from: Vec<&'static str>,
    /// The state it ends at; `recorded` is the tracker storing the last one.
    pub to: &'static str,
}

impl Segment {
    /// `picked or rebinned`.
    pub fn start_label(&self) -> String {
        self.from.iter().rev().copied().collect::<Vec<_>>().join(" or ")
    }
}

/// The state the tracker's storing of an order's last state is shown as.
pub const RECORDED: &str = "recorded";

/// The segments between consecutive states of the workflow definition's
/// happy path of a multi-unit order (the longest), then the tracker's: a
/// state a single-unit order skips (rebin's) is a segment of its own and a
/// possible start of the next.
pub fn segments() -> Vec<Segment> {
    use topology::workflow::Facts;
    let states = |units| -> Vec<&'static str> {
        let path = topology::WORKFLOW.happy_path(&Facts { units, holds_reservation: false });
        std::iter::once(topology::OrderState::Placed.as_str())
            .chain(path.iter().map(|(_, s)| s.as_str()))
            .collect()
    };
    let (longest, shortest) = (states(2), states(1));
    let mut segments: Vec<Segment> = Vec::new();
    for pair in longest.windows(2) {
        let mut from = vec![pair[0]];
        // A skippable state may be missing: the segment after it starts at the one before.
        let mut at = pair[0];
        while !shortest.contains(&at) {
            let before = longest[longest.iter().position(|s| *s == at).unwrap_or(0).saturating_sub(1)];
            from.push(before);
            at = before;
        }
        segments.push(Segment { from, to: pair[1] });
    }
    segments.push(Segment { from: vec![longest[longest.len() - 1]], to: RECORDED });
    segments
}

/// An order's timings, from its history.
#[derive(Clone, Debug)]
pub struct OrderTiming {
    /// `placed.at` (set at publish).
    pub placed: f64,
    /// `shipped.recorded_at`: when the tracker stored `shipped`.
    pub completed: f64,
    /// End to end, in ms.
    pub total_ms: f64,
    /// `picked.at - reserved.at`: the wait in the picklist's aggregation, in ms.
    pub aggregation_ms: f64,
    /// Milliseconds per [`segments`] entry (NaN where the order has no such step).
    pub segments_ms: Vec<f64>,
}

fn parse(at: &str) -> Option<f64> {
    DateTime::parse_from_rfc3339(at).ok().map(|t| epoch_secs(t.with_timezone(&Utc)))
}

impl OrderTiming {
    pub fn from_view(view: &OrderView) -> Option<OrderTiming> {
        let find = |state: &str| view.entry(state);
        let at = |state: &str| find(state).and_then(|h| parse(&h.at));
        let placed = at("placed")?;
        let shipped = find("shipped")?;
        let completed = parse(&shipped.recorded_at)?;
        let (reserved, picked) = (at("reserved")?, at("picked")?);
        let when = |state: &str| if state == RECORDED { Some(completed) } else { at(state) };
        let segments_ms = segments()
            .iter()
            .map(|segment| {
                let from = segment.from.iter().find_map(|state| when(state));
                match (from, when(segment.to)) {
                    (Some(a), Some(b)) => (b - a) * 1000.0,
                    _ => f64::NAN,
                }
            })
            .collect();
        Some(OrderTiming {
            placed,
            completed,
            total_ms: (completed - placed) * 1000.0,
            aggregation_ms: (picked - reserved) * 1000.0,
            segments_ms,
        })
    }

    pub fn outside_aggregation_ms(&self) -> f64 {
        self.total_ms - self.aggregation_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::tracker_api::HistoryEntry;

    #[test]
    fn the_segments_follow_the_workflow_definition() {
        let labels: Vec<(String, &str)> = segments().iter().map(|s| (s.start_label(), s.to)).collect();
        let expected = [
            ("placed", "accepted"),
            ("accepted", "charged"),
            ("charged", "reserved"),
            ("reserved", "picked"),
            ("picked", "rebinned"),
            ("picked or rebinned", "shipped"),
            ("shipped", "recorded"),
        ];
        let expected: Vec<(String, &str)> = expected.iter().map(|(a, b)| (a.to_string(), *b)).collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn saturated_throughput_uses_the_steady_middle() {
        // 1000 completions at 100/s from t=10 to t=20, the last 200 after publishing ended at t=18.
        let completions: Vec<f64> = (0..1000).map(|i| 10.0 + f64::from(i) / 100.0).collect();
        let t = saturated_throughput(&completions, 9.0, 18.0);
        assert!((t.per_sec - 100.0).abs() < 1.0, "{t:?}");
        assert!((t.window_secs - 7.0).abs() < 0.02, "{t:?}");
        assert!(!t.short);
    }

    #[test]
    fn timing_from_a_history() {
        let entry = |state: &str, at: &str| HistoryEntry {
            state: state.into(),
            from_state: None,
            node: "node".into(),
            instance_id: "node-1".into(),
            at: format!("2030-01-01T00:00:{at}Z"),
            recorded_at: format!("2030-01-01T00:00:{at}Z"),
            detail: String::new(),
            seq: 0,
            version: 0,
            event_id: state.into(),
            change_id: None,
            mode: None,
            trace_id: None,
        };
        let mut shipped = entry("shipped", "00.600000");
        shipped.recorded_at = "2030-01-01T00:00:00.650000Z".into();
        let view = OrderView {
            order_id: "o".into(),
            state: "shipped".into(),
            terminal: true,
            history: vec![
                entry("placed", "00.000000"),
                entry("accepted", "00.010000"),
                entry("charged", "00.020000"),
                entry("reserved", "00.030000"),
                entry("picked", "00.530000"),
                shipped,
            ],
            workflow: None,
            workflow_version: None,
        };
        let t = OrderTiming::from_view(&view).unwrap();
        assert!((t.total_ms - 650.0).abs() < 1e-3);
        assert!((t.aggregation_ms - 500.0).abs() < 1e-3);
        assert!((t.outside_aggregation_ms() - 150.0).abs() < 1e-3);
        assert!(t.segments_ms[4].is_nan());
        assert!((t.segments_ms[5] - 70.0).abs() < 1e-3);
    }
}
