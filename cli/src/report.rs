//! `orderflow report`: the tracker's `GET /report` for a range (the last N
//! minutes, or from and to), as a table per node with the slowest node and
//! the stuck orders, or as JSON.

use shared::report::Report;
use shared::settings::Settings;
use shared::text::escaped as safe;
use shared::tracker_api::TrackerClient;
use std::time::Duration;

/// What range the report covers.
pub enum Range {
    Last(Duration),
    Between { from: String, to: Option<String> },
}

pub async fn report(
    settings: &Settings,
    range: Range,
    stuck_after: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let mut pairs: Vec<(&str, String)> = match range {
        Range::Last(last) => vec![("last", last.as_secs_f64().to_string())],
        Range::Between { from, to } => {
            std::iter::once(("from", from)).chain(to.map(|to| ("to", to))).collect()
        }
    };
    if let Some(after) = stuck_after {
        pairs.push(("stuck_after", after.as_secs_f64().to_string()));
    }
    let report = TrackerClient::new(&settings.tracker_url()).report(&pairs).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The report as text for a terminal.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "{} to {} ({:.0} s): {} placed, {} ended",
        report.from, report.to, report.seconds, report.orders_placed, report.orders_ended
    );
    for (state, n) in &report.outcomes {
        out.push_str(&format!(", {n} {}", safe(state)));
    }
    let e2e = &report.end_to_end;
    out.push_str(&format!(
        "\nend to end: p50 {} ms, p95 {} ms, p99 {} ms\n\n{:<12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
        e2e.p50_ms, e2e.p95_ms, e2e.p99_ms, "node", "handled", "per s", "p50 ms", "p95 ms", "p99 ms", "errors",
        "retries", "dead"
    ));
    for node in &report.nodes {
        let mark = if report.slowest.as_deref() == Some(node.node.as_str()) { "  <- slowest" } else { "" };
        out.push_str(&format!(
            "{:<12} {:>8} {:>8.1} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}{mark}\n",
            safe(&node.node),
            node.handled,
            node.per_second,
            node.dwell.p50_ms,
            node.dwell.p95_ms,
            node.dwell.p99_ms,
            node.errors,
            node.retries,
            node.dead_letters
        ));
    }
    let c = &report.changes;
    out.push_str(&format!(
        "\nchanges: {} requested, {} applied, {} rejected\n",
        c.requested, c.applied, c.rejected
    ));
    let settled = &report.settlement;
    if settled.batches > 0 {
        let wait = &settled.oldest_wait;
        out.push_str(&format!(
            "settlement: {} batches, {} captures ({:.2} in all), {:.1} per batch (largest {}); oldest capture waited p50 {} ms, p99 {} ms, max {} ms\n",
            settled.batches,
            settled.captures,
            settled.amount_cents as f64 / 100.0,
            settled.mean_size,
            settled.max_size,
            wait.p50_ms,
            wait.p99_ms,
            wait.max_ms
        ));
    } else {
        out.push_str("settlement: no batch settled in the range\n");
    }
    let answers = &report.answers;
    if answers.sent + answers.unroutable + answers.waiting > 0 {
        out.push_str(&format!(
            "answers to placers: {} outcomes sent, {} with no queue to go to, {} waiting to be sent\n",
            answers.sent, answers.unroutable, answers.waiting
        ));
    }
    if !report.in_flight.is_empty() {
        let versions: Vec<String> = report
            .in_flight
            .iter()
            .map(|w| format!("{} v{}: {} orders", safe(&w.workflow), w.version, w.orders))
            .collect();
        out.push_str(&format!("in flight by workflow: {}\n", versions.join(", ")));
    }
    if report.service_calls > 0 {
        out.push_str(&format!(
            "service calls: {} active orders are direct service calls' elements (each ends at the node called; not stuck)\n",
            report.service_calls
        ));
    }
    if report.stuck.is_empty() {
        out.push_str("stuck orders: none\n");
    } else {
        out.push_str(&format!("stuck orders ({}):\n", report.stuck.len()));
        for stuck in &report.stuck {
            out.push_str(&format!(
                "  {}  {:<14} at {:<10} waiting {:.1} s (threshold {:.1} s)\n",
                safe(&stuck.order_id),
                safe(&stuck.state),
                safe(&stuck.at_node),
                stuck.waiting_ms as f64 / 1000.0,
                stuck.threshold_ms as f64 / 1000.0
            ));
        }
    }
    out
}
