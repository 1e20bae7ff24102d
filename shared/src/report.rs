//! The report on the pipeline (`GET /report`, `orderflow report`): for a
//! time range, per node, how many orders it handled, its throughput, its
//! dwell times (time from an order's previous state to the state the node
//! produced), errors, retries and dead letters; end-to-end latencies; the
//! in-flight changes; and the stuck orders with where they wait. The
//! figures come from the tracker's histories (active store and warehouse
//! alike) and the nodes' incidents; [`Tally`] computes them without I/O.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A stuck order's threshold, when its node's own p99 does not give one.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);
/// An order waits this many times its node's p99 before it counts as stuck...
pub const STUCK_P99_FACTOR: u64 = 5;
/// ...and never less than this.
pub const MIN_STUCK_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted here).
    pub fn of(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Percentiles {
            count: samples.len() as u64,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: samples[samples.len() - 1],
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFigures {
    pub node: String,
    /// State changes the node made in the range.
    pub handled: u64,
    pub per_second: f64,
    pub dwell: Percentiles,
    /// Failed attempts (retries and dead letters together).
    pub errors: u64,
    pub retries: u64,
    pub dead_letters: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeFigures {
    pub requested: u64,
    pub applied: u64,
    pub rejected: u64,
}

/// The settlement batches settled in the range: how many, their sizes
/// (captures each), what they captured, and how long each batch's oldest
/// capture waited (from its shipping to the settlement).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SettlementFigures {
    pub batches: u64,
    pub captures: u64,
    pub amount_cents: i64,
    pub mean_size: f64,
    pub max_size: u64,
    pub oldest_wait: Percentiles,
}

impl SettlementFigures {
    /// The figures of batches given as `(captures, amount_cents, oldest_wait_ms)`.
    pub fn of(batches: &[(i64, i64, i64)]) -> SettlementFigures {
        let captures: i64 = batches.iter().map(|b| b.0).sum();
        let mut waits: Vec<u64> = batches.iter().map(|b| b.2.max(0) as u64).collect();
        SettlementFigures {
            batches: batches.len() as u64,
            captures: captures.max(0) as u64,
            amount_cents: batches.iter().map(|b| b.1).sum(),
            mean_size: if batches.is_empty() { 0.0 } else { captures as f64 / batches.len() as f64 },
            max_size: batches.iter().map(|b| b.0.max(0) as u64).max().unwrap_or(0),
            oldest_wait: Percentiles::of(&mut waits),
        }
    }
}

/// The outcomes owed to the orders' placers (`crate::answer`) of the orders
/// that ended in the range: sent (confirmed by the broker), dropped with no
/// queue to go to (a callback key nobody bound), and still waiting to be sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerFigures {
    pub sent: u64,
    pub unroutable: u64,
    pub waiting: u64,
}

/// The orders in flight (now, not in the range) on one version of one
/// workflow: an operator sees when the last order of a version has ended,
/// and the node only it uses may stop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowInFlight {
    pub workflow: String,
    pub version: i64,
    pub orders: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StuckOrder {
    pub order_id: String,
    pub state: String,
    /// The node that takes an order in that state next.
    pub at_node: String,
    pub since: String,
    pub waiting_ms: u64,
    pub threshold_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub seconds: f64,
    pub orders_placed: u64,
    pub orders_ended: u64,
    /// Orders ended in the range, by final state.
    pub outcomes: BTreeMap<String, u64>,
    /// From `placed` to the final state, for the orders that ended in the range.
    pub end_to_end: Percentiles,
    /// Workflow nodes first, in table order.
    pub nodes: Vec<NodeFigures>,
    /// The node with the highest p99 dwell time.
    pub slowest: Option<String>,
    pub changes: ChangeFigures,
    /// Orders waiting longer than their node's threshold, longest first (now, not in the range).
    pub stuck: Vec<StuckOrder>,
    /// Each node's stuck threshold, in milliseconds.
    pub stuck_after_ms: BTreeMap<String, u64>,
    /// Orders that are elements of service calls (intake's service called
    /// directly, not directed): their element ends at the node called, by
    /// design, so they are counted here and never listed as stuck.
    #[serde(default)]
    pub service_calls: u64,
    /// The captures settled in the range, in batches (the settlement queue).
    #[serde(default)]
    pub settlement: SettlementFigures,
    /// The outcomes sent back to the placers that asked for them.
    #[serde(default)]
    pub answers: AnswerFigures,
    /// The orders in flight per workflow version (every version the
    /// tracker's build runs, 0 included; an order intake has not accepted
    /// yet follows none).
    #[serde(default)]
    pub in_flight: Vec<WorkflowInFlight>,
}

/// The active orders as the report sees them now: those waiting longer
/// than their node's threshold, and how many are service calls' elements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stuck {
    pub orders: Vec<StuckOrder>,
    pub service_calls: u64,
}

/// One entry of a history, as the report reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub order_id: String,
    pub seq: i64,
    pub node: String,
    pub state: String,
    pub terminal: bool,
    pub change: bool,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Accumulates the figures of a range from histories fed one order at a time.
pub struct Tally {
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    dwell: HashMap<String, Vec<u64>>,
    handled: HashMap<String, u64>,
    end_to_end: Vec<u64>,
    placed: u64,
    outcomes: BTreeMap<String, u64>,
    changes: ChangeFigures,
}

fn millis(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}

impl Tally {
    pub fn new(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> Tally {
        Tally {
            from,
            to,
            dwell: HashMap::new(),
            handled: HashMap::new(),
            end_to_end: Vec::new(),
            placed: 0,
            outcomes: BTreeMap::new(),
            changes: ChangeFigures::default(),
        }
    }

    fn in_range(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        at >= self.from && at < self.to
    }

    /// Adds one order's whole history (any order of entries); what happened
    /// outside the range only serves as the start of a dwell time.
    pub fn add_order(&mut self, mut entries: Vec<Entry>) {
        let (changes, mut steps): (Vec<Entry>, Vec<Entry>) = entries.drain(..).partition(|e| e.change);
        let (from, to) = (self.from, self.to);
        for change in changes.iter().filter(|c| c.at >= from && c.at < to) {
            match change.state.as_str() {
                "change_requested" => self.changes.requested += 1,
                "change_applied" => self.changes.applied += 1,
                "change_rejected" => self.changes.rejected += 1,
                _ => {}
            }
        }
        steps.sort_by_key(|e| e.seq);
        steps.dedup_by_key(|e| e.seq);
        let placed_at = steps.iter().find(|e| e.seq == 0).map(|e| e.at);
        for (i, step) in steps.iter().enumerate() {
            if !self.in_range(step.at) {
                continue;
            }
            if step.seq == 0 {
                self.placed += 1;
                continue;
            }
            *self.handled.entry(step.node.clone()).or_default() += 1;
            if let Some(previous) = i.checked_sub(1).map(|p| &steps[p]) {
                self.dwell.entry(step.node.clone()).or_default().push(millis(previous.at, step.at));
            }
            if step.terminal {
                *self.outcomes.entry(step.state.clone()).or_default() += 1;
                if let Some(placed) = placed_at {
                    self.end_to_end.push(millis(placed, step.at));
                }
            }
        }
    }

    /// The report, with each node's incidents `(retries, dead letters)` and
    /// the stuck orders found with [`stuck_thresholds`].
    pub fn finish(
        mut self,
        incidents: &HashMap<String, (u64, u64)>,
        node_order: &[&str],
        stuck: Stuck,
        stuck_after: BTreeMap<String, u64>,
    ) -> Report {
        let seconds = (self.to - self.from).num_milliseconds().max(1) as f64 / 1000.0;
        let mut names: Vec<String> = self.handled.keys().chain(incidents.keys()).cloned().collect();
        names.sort_by_key(|n| (node_order.iter().position(|o| o == n).unwrap_or(usize::MAX), n.clone()));
        names.dedup();
        let nodes: Vec<NodeFigures> = names
            .into_iter()
            .map(|node| {
                let handled = self.handled.get(&node).copied().unwrap_or(0);
                let (retries, dead_letters) = incidents.get(&node).copied().unwrap_or((0, 0));
                let dwell =
                    Percentiles::of(self.dwell.get_mut(&node).map(Vec::as_mut_slice).unwrap_or(&mut []));
                NodeFigures {
                    per_second: handled as f64 / seconds,
                    handled,
                    dwell,
                    errors: retries + dead_letters,
                    retries,
                    dead_letters,
                    node,
                }
            })
            .collect();
        let slowest =
            nodes.iter().filter(|n| n.dwell.count > 0).max_by_key(|n| n.dwell.p99_ms).map(|n| n.node.clone());
        Report {
            from: crate::audit::rfc3339::format(&self.from),
            to: crate::audit::rfc3339::format(&self.to),
            seconds,
            orders_placed: self.placed,
            orders_ended: self.outcomes.values().sum(),
            outcomes: self.outcomes,
            end_to_end: Percentiles::of(&mut self.end_to_end),
            nodes,
            slowest,
            changes: self.changes,
            stuck: stuck.orders,
            stuck_after_ms: stuck_after,
            service_calls: stuck.service_calls,
            settlement: SettlementFigures::default(),
            answers: AnswerFigures::default(),
            in_flight: Vec::new(),
        }
    }

    /// Each node's p99 dwell so far (for the stuck thresholds).
    pub fn p99s(&self) -> HashMap<String, u64> {
        self.dwell
            .iter()
            .map(|(node, samples)| (node.clone(), Percentiles::of(&mut samples.clone()).p99_ms))
            .collect()
    }
}

/// How long an order may wait at each node before it counts as stuck:
/// `override_after` for every node when given; otherwise
/// [`STUCK_P99_FACTOR`] times the node's own p99 dwell in the range (at
/// least [`MIN_STUCK_AFTER`]), or [`DEFAULT_STUCK_AFTER`] for a node that
/// handled nothing in it.
pub fn stuck_thresholds(
    nodes: &[&str],
    p99s: &HashMap<String, u64>,
    override_after: Option<Duration>,
) -> BTreeMap<String, u64> {
    nodes
        .iter()
        .map(|node| {
            let ms = match (override_after, p99s.get(*node)) {
                (Some(after), _) => after.as_millis() as u64,
                (None, Some(p99)) => (p99 * STUCK_P99_FACTOR).max(MIN_STUCK_AFTER.as_millis() as u64),
                (None, None) => DEFAULT_STUCK_AFTER.as_millis() as u64,
            };
            (node.to_string(), ms)
        })
        .collect()
}

/// The range the report covers when none is asked for: the last ten minutes.
pub const DEFAULT_LAST: Duration = Duration::from_secs(600);

/// What a report is asked for (`GET /report?...`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReportQuery {
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub stuck_after: Option<Duration>,
}

impl ReportQuery {
    /// Reads `last=SECONDS` (live: up to `now`) or `from=` and `to=` (RFC 3339
    /// times, `to` defaulting to `now`), and `stuck_after=SECONDS`; unknown,
    /// repeated or bad parameters are refused with the reason.
    pub fn parse(
        pairs: &[(String, String)],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<ReportQuery, String> {
        let mut seen = std::collections::HashSet::new();
        let (mut last, mut from, mut to, mut stuck_after) = (None, None, None, None);
        let time = |name: &str, text: &str| {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| format!("{name}={text:?} is not an RFC 3339 time such as 2026-11-29T10:00:00Z"))
        };
        for (name, value) in pairs {
            if !seen.insert(name.as_str()) {
                return Err(format!("{name} is given twice"));
            }
            match name.as_str() {
                "last" => last = Some(crate::order_search::age("last", value)?),
                "from" => from = Some(time("from", value)?),
                "to" => to = Some(time("to", value)?),
                "stuck_after" => stuck_after = Some(crate::order_search::age("stuck_after", value)?),
                other => {
                    return Err(format!(
                        "unknown parameter {:?}: a report takes last, from, to and stuck_after",
                        crate::text::escaped(other)
                    ))
                }
            }
        }
        if last.is_some() && (from.is_some() || to.is_some()) {
            return Err("give either last (seconds up to now) or from and to, not both".into());
        }
        let to = to.unwrap_or(now);
        let from = match (from, last) {
            (Some(from), _) => from,
            (None, last) => to - chrono::Duration::from_std(last.unwrap_or(DEFAULT_LAST)).unwrap_or_default(),
        };
        if from >= to {
            return Err("from must be before to".into());
        }
        Ok(ReportQuery { from, to, stuck_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(ms: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    fn step(order: &str, seq: i64, node: &str, state: &str, ms: i64, terminal: bool) -> Entry {
        Entry {
            order_id: order.into(),
            seq,
            node: node.into(),
            state: state.into(),
            terminal,
            change: false,
            at: at(ms),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.count, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms), (100, 50, 95, 99, 100));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(Percentiles::of(&mut [7]).p99_ms, 7);
    }

    #[test]
    fn dwell_counts_from_the_previous_step_even_before_the_range() {
        let mut tally = Tally::new(at(1_000), at(10_000));
        tally.add_order(vec![
            step("a", 2, "payment", "charged", 1_300, false),
            step("a", 0, "publisher", "placed", 500, false),
            step("a", 1, "intake", "accepted", 1_100, false),
            step("a", 3, "inventory", "out_of_stock", 2_300, true),
            Entry { change: true, ..step("a", -1, "publisher", "change_requested", 1_200, false) },
        ]);
        // A redelivered duplicate of a step counts once.
        tally.add_order(vec![
            step("b", 0, "publisher", "placed", 2_000, false),
            step("b", 1, "intake", "accepted", 2_050, false),
            step("b", 1, "intake", "accepted", 2_050, false),
            step("b", 2, "payment", "charged", 11_000, false),
        ]);
        let nodes: Vec<&str> = topology::WORKFLOW.nodes().map(|n| n.name()).collect();
        let report = tally.finish(&HashMap::new(), &nodes, Stuck::default(), BTreeMap::new());
        let node = |name: &str| report.nodes.iter().find(|n| n.node == name).unwrap().clone();
        assert_eq!(node("intake").handled, 2);
        assert_eq!((node("intake").dwell.count, node("intake").dwell.max_ms), (2, 600));
        assert_eq!(node("payment").handled, 1, "b's charge is after the range");
        assert_eq!(node("inventory").dwell.p50_ms, 1_000);
        assert_eq!(report.slowest.as_deref(), Some("inventory"));
        assert_eq!(report.orders_placed, 1, "a was placed before the range");
        assert_eq!(report.end_to_end.max_ms, 1_800);
        assert_eq!(report.outcomes.get("out_of_stock"), Some(&1));
        assert_eq!(report.changes.requested, 1);
        let order: Vec<&str> = report.nodes.iter().map(|n| n.node.as_str()).collect();
        let expected: Vec<&str> = nodes.iter().copied().filter(|n| order.contains(n)).collect();
        assert_eq!(order, expected, "in the workflow's order");
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn report_queries_are_checked() {
        let now = at(600_000);
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let q = ReportQuery::parse(&pairs(&[]), now).unwrap();
        assert_eq!((q.from, q.to), (at(0), now));
        let q = ReportQuery::parse(&pairs(&[("last", "60"), ("stuck_after", "5")]), now).unwrap();
        assert_eq!((q.from, q.stuck_after), (at(540_000), Some(Duration::from_secs(5))));
        let q = ReportQuery::parse(&pairs(&[("from", "2027-01-15T08:00:00Z")]), now).unwrap();
        assert_eq!(q.to, now);
        for bad in [
            vec![("last", "NaN")],
            vec![("last", "-1")],
            vec![("last", "1"), ("last", "2")],
            vec![("last", "1"), ("from", "2027-01-15T08:00:00Z")],
            vec![("from", "yesterday")],
            vec![("from", "2027-01-15T08:00:00Z"), ("to", "2027-01-15T07:00:00Z")],
            vec![("limit\u{7}", "1")],
        ] {
            assert!(ReportQuery::parse(&pairs(&bad), now).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn stuck_thresholds_follow_each_nodes_p99() {
        let p99s: HashMap<String, u64> = [("intake".to_string(), 100), ("payment".to_string(), 4_000)].into();
        let nodes: Vec<&str> = topology::WORKFLOW.nodes().map(|n| n.name()).collect();
        let t = stuck_thresholds(&nodes, &p99s, None);
        assert_eq!(t["intake"], MIN_STUCK_AFTER.as_millis() as u64);
        assert_eq!(t["payment"], 20_000);
        assert_eq!(t["shipping"], DEFAULT_STUCK_AFTER.as_millis() as u64);
        let t = stuck_thresholds(&nodes, &p99s, Some(Duration::from_secs(3)));
        assert_eq!(t["intake"], 3_000);
    }
}
