//! The report's sections, one per measurement: the relay, orderflow end to
//! end, ratios with memory and CPU, scale-out, directed mode, PostgreSQL,
//! and how to rerun.

use super::{dist, met, ms, peak_rss_mib, process_name, rate, speedup, Figures, RSS_TARGET_MIB};
use crate::orderflow::{Load, RunResult};
use crate::stats::{median, segments};
use crate::{Plan, Results};
use std::fmt::Write;

/// Section 1: the minimal relay, the broker's limit.
pub(super) fn relay_section(o: &mut String, plan: &Plan, results: &Results) {
    let _ = writeln!(o, "### 1. The broker's limit: a minimal relay on lapin\n");
    let _ = writeln!(
        o,
        "Durable quorum queues (delivery limit 10), persistent mandatory messages, publisher confirms, \
         each delivery acknowledged after its messages are confirmed. A chain: publish (element to hop 1 + \
         one audit message), then {} hops, each its own connection with prefetch {} and one task per \
         delivery, publishing one audit message and the element to the next hop (the last hop: its audit \
         message only). An order makes 6 hops when multi-unit (every node from intake to shipping, rebin included) \
         and 5 when single-unit, so with 6 hops the relay does at least an average order's work. The audit queue is consumed like the tracker does \
         (chunks of up to 500, one `multiple` ack); a chain is complete when its last audit message is \
         consumed. Bodies are a real element's and audit event's JSON. {} chains per run, published like the \
         orderflow load: confirmed windows of {}, at most {} chains in flight (published, not complete), so the \
         publisher runs through the measurement; throughput is counted from the 10th percentile of completion \
         times to the end of publishing (the drain after it is left out). Latency at saturation is mostly \
         queueing.\n",
        plan.relay.hops,
        plan.relay.prefetch,
        plan.relay.chains,
        crate::load::WINDOW,
        plan.relay.in_flight
    );
    let _ = writeln!(
        o,
        "| run | relay chains/s | latency | CPU s/1000 chains: relay process (with its publisher) | broker |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for (i, pair) in results.pairs.iter().enumerate() {
        let r = &pair.relay;
        let _ = writeln!(
            o,
            "| {} | {}{} | {} | {:.2} | {:.2} |",
            i + 1,
            rate(r.throughput.per_sec),
            if r.throughput.short { " (short run)" } else { "" },
            dist(&r.latency),
            r.cpu_relay_per_1000,
            r.cpu_broker_per_1000
        );
    }
    let _ = writeln!(o);
}

/// Section 2: orderflow end to end, saturated and open loop, and where the time goes.
pub(super) fn orderflow_section(o: &mut String, plan: &Plan, results: &Results) {
    let half = &results.half;
    let _ = writeln!(o, "### 2. orderflow end to end\n");
    let _ = writeln!(
        o,
        "Every node and the tracker as separate processes of the built binaries (as `scripts/up.sh` starts \
         them), in a vhost of their own{}, warmed up with {} orders. Completion is the tracker's record of \
         `shipped`; latency is `shipped.recorded_at - placed.at` (placed at publish); the aggregation wait \
         is `picked.at - reserved.at`. Saturated: {} orders published and counted like the relay's chains \
         (at most {} in flight). Open loop: orders paced by the clock for {:.0} s; orders/s completed over the publishing \
         window (less its first 20 %, shifted by the median latency). The maximum sustainable rate starts at \
         the saturated throughput and steps down 10 % (up to {} attempts) until completions keep up \
         (≥ 95 % of the offered rate), the median latency of the last quarter is within 200 ms of the \
         first quarter's and the publisher keeps its schedule.\n",
        if plan.fresh_stacks { " per run" } else { " (shared by the runs of this smoke run)" },
        plan.warmup,
        plan.burst_orders,
        plan.in_flight,
        plan.open_secs,
        plan.max_attempts
    );
    let _ = writeln!(
        o,
        "| run | orders | offered/s | orderflow orders/s | latency p50 | p99 | max | p99 outside aggregation | aggregation p50 | CPU s/1000 orders: orderflow | broker | bench (publisher) | latency drift | sustained |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<(String, &RunResult)> = results
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("saturated {}", i + 1), &p.orderflow))
        .collect();
    for (i, run) in results.max_attempts.iter().enumerate() {
        rows.push((format!("maximum, attempt {}", i + 1), run));
    }
    rows.push(("half of maximum".into(), half));
    for (name, run) in rows {
        let offered = match run.load {
            Load::Saturated(_) => "–".to_string(),
            Load::OpenLoop(_) => rate(run.published_rate),
        };
        let (sustained, drift) = match run.load {
            Load::Saturated(_) => ("–", "–".to_string()),
            Load::OpenLoop(_) => (met(run.sustained()), ms(run.drift_ms)),
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {offered} | {}{} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {sustained} |",
            run.orders,
            rate(run.throughput.per_sec),
            if run.throughput.short { " (short run)" } else { "" },
            ms(run.total.p50),
            ms(run.total.p99),
            ms(run.total.max),
            ms(run.outside.p99),
            ms(run.aggregation.p50),
            run.cpu_ours_per_1000,
            run.cpu_broker_per_1000,
            run.cpu_bench_per_1000,
            drift,
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Where the time goes at half rate (between the `at` of consecutive states; the last segment is the tracker's recording):\n");
    let _ = writeln!(o, "| segment | p50 | p99 | max |");
    let _ = writeln!(o, "|---|---|---|---|");
    for (segment, d) in segments().iter().zip(&half.segments) {
        let (from, to) = (segment.start_label(), segment.to);
        let _ = writeln!(o, "| {from} → {to} | {} | {} | {} |", ms(d.p50), ms(d.p99), ms(d.max));
    }
    let _ = writeln!(o);
}

/// Section 3: the pairs' ratios, each process's memory and CPU.
pub(super) fn ratio_section(o: &mut String, results: &Results, figures: &Figures) {
    let (ratios, cpu_ours, cpu_broker) = (&figures.ratios, figures.cpu_ours, figures.cpu_broker);
    let _ = writeln!(o, "### 3. Ratio, memory and CPU\n");
    let _ = writeln!(o, "Pairs measured back to back, alternating which goes first, so that the machine's drift cancels in each ratio.\n");
    let _ = writeln!(o, "| pair | first | relay chains/s | orderflow orders/s | ratio |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    for (i, pair) in results.pairs.iter().enumerate() {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.2} |",
            i + 1,
            if pair.relay_first { "relay" } else { "orderflow" },
            rate(pair.relay.throughput.per_sec),
            rate(pair.orderflow.throughput.per_sec),
            ratios[i]
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Peak RSS is each process's VmHWM at the end of a run (the largest over the saturated and open-loop \
         runs); CPU is user + system time over the saturated runs (median), per 1,000 orders. The broker's \
         CPU is its `beam.smp` over the same window (it includes any other load on the broker).\n"
    );
    let _ = writeln!(o, "| process | peak RSS | < {RSS_TARGET_MIB:.0} MiB | CPU s/1000 orders |");
    let _ = writeln!(o, "|---|---|---|---|");
    for name in harness::processes() {
        let rss = figures.peak_rss(name);
        let _ = writeln!(
            o,
            "| {name} | {rss:.1} MiB | {} | {:.2} |",
            met(rss < RSS_TARGET_MIB),
            figures.cpu_of(name)
        );
    }
    let _ = writeln!(o, "| **orderflow, all processes** | | | **{cpu_ours:.2}** |");
    let _ = writeln!(o, "| **broker (beam.smp)** | | | **{cpu_broker:.2}** |");
    let _ = writeln!(o);
}

/// Section 4: scale-out with payment slowed down.
pub(super) fn scale_section(o: &mut String, plan: &Plan, results: &Results) {
    let scale_main: Vec<_> = results.scale.iter().filter(|s| !s.serial).collect();
    let scale_serial: Vec<_> = results.scale.iter().filter(|s| s.serial).collect();
    let _ = writeln!(o, "### 4. Scale-out: payment slowed to {} ms per charge\n", plan.scale_delay_ms);
    let _ = writeln!(
        o,
        "`ORDERFLOW_DELAY_MS_PAYMENT={}` on every payment instance; {} orders per run, published and \
         counted like the saturated runs. Each instance handles up to its prefetch of charges at once, so \
         one instance's bound is prefetch × 1000 / delay charges/s.\n",
        plan.scale_delay_ms, plan.scale_orders
    );
    let _ = writeln!(o, "| scale-out | orders/s | vs 1 instance | latency |");
    let _ = writeln!(o, "|---|---|---|---|");
    let mut scale_rows = |points: &[&crate::ScalePoint], note: &str| {
        for point in points {
            let vs =
                speedup(points, point.instances).map(|x| format!("{x:.2}x")).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                o,
                "| {} payment instance{}{note} | {} | {vs} | {} |",
                point.instances,
                if point.instances == 1 { "" } else { "s" },
                rate(point.run.throughput.per_sec),
                dist(&point.run.total)
            );
        }
    };
    scale_rows(&scale_main, "");
    if !scale_serial.is_empty() {
        scale_rows(&scale_serial, ", one charge at a time each (`ORDERFLOW_PREFETCH=1` on payment)");
    }
    let _ = writeln!(o);
}

/// Section 5: directed mode beside autonomous, and a service call's round trip.
pub(super) fn directed_section(o: &mut String, plan: &crate::Plan, results: &Results) {
    let d = &results.directed;
    let autonomous: Vec<f64> = results.pairs.iter().map(|p| p.orderflow.throughput.per_sec).collect();
    let autonomous_rate = median(&autonomous);
    let _ = writeln!(o, "### 5. Directed mode and service calls\n");
    let _ = writeln!(
        o,
        "Directed: the same orders placed with the coordinator (`order.coordinator`), which calls each \
         node's service in turn and records every step in its store; autonomous: the runs above. The open \
         loop runs both at the autonomous half rate, {} orders/s.\n",
        rate(results.half.published_rate)
    );
    let _ = writeln!(o, "| mode | saturated orders/s | vs autonomous | latency at the half rate | CPU s / 1,000 orders (ours; broker) |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    let saturated_cpu =
        median(&results.pairs.iter().map(|p| p.orderflow.cpu_ours_per_1000).collect::<Vec<_>>());
    let saturated_broker =
        median(&results.pairs.iter().map(|p| p.orderflow.cpu_broker_per_1000).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "| autonomous | {} | 1.00 | {} | {saturated_cpu:.2}; {saturated_broker:.2} |",
        rate(autonomous_rate),
        dist(&results.half.total)
    );
    let sustained = if d.half.sustained() { "" } else { " (**not sustained**)" };
    let _ = writeln!(
        o,
        "| directed | {} | {:.2} | {}{sustained} | {:.2}; {:.2} |",
        rate(d.saturated.throughput.per_sec),
        d.saturated.throughput.per_sec / autonomous_rate,
        dist(&d.half.total),
        d.saturated.cpu_ours_per_1000,
        d.saturated.cpu_broker_per_1000
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "CPU per 1,000 orders by process, saturated: directed beside the first autonomous run.\n"
    );
    let _ = writeln!(o, "| process | autonomous | directed |");
    let _ = writeln!(o, "|---|---|---|");
    let autonomous_run = &results.pairs[0].orderflow;
    let cpu = |run: &RunResult, name: &str| -> f64 {
        run.cpu_per_process.iter().filter(|(l, _)| process_name(l) == name).map(|(_, c)| c).sum()
    };
    for name in harness::processes() {
        let _ = writeln!(o, "| {name} | {:.2} | {:.2} |", cpu(autonomous_run, name), cpu(&d.saturated, name));
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "A synchronous call to intake's service (a plain order, direct reply-to), {} calls one after \
         another: round trip from publish to result.\n",
        plan.calls
    );
    let _ = writeln!(o, "| load | round trip |");
    let _ = writeln!(o, "|---|---|");
    let _ = writeln!(o, "| idle stack | {} |", dist(&d.calls_idle));
    let _ = writeln!(
        o,
        "| beside a saturated autonomous run ({} orders/s) | {} |",
        rate(d.loaded_by.throughput.per_sec),
        dist(&d.calls_loaded)
    );
    let _ = writeln!(o);
}

/// Section 6: each repetition's saturated run with the stores on PostgreSQL
/// beside its SQLite run.
pub(super) fn postgres_section(o: &mut String, results: &Results) {
    let runs: Vec<(&RunResult, &RunResult)> =
        results.pairs.iter().filter_map(|p| Some((&p.orderflow, p.postgres.as_ref()?))).collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(o, "### 6. The stores on PostgreSQL\n");
    let _ = writeln!(
        o,
        "Each repetition's saturated run again on a fresh stack whose every store is in a fresh database \
         of the local PostgreSQL server (`DATABASE_URL`), right after that repetition's SQLite run. The \
         server's CPU is every `postgres` process's over the run.\n"
    );
    let _ = writeln!(
        o,
        "| rep | SQLite orders/s | PostgreSQL orders/s | PG / SQLite | PG latency | CPU s/1000: ours, broker, PostgreSQL |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for (i, (sqlite, pg)) in runs.iter().enumerate() {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.2} | {} | {:.2}, {:.2}, {:.2} |",
            i + 1,
            rate(sqlite.throughput.per_sec),
            rate(pg.throughput.per_sec),
            pg.throughput.per_sec / sqlite.throughput.per_sec,
            dist(&pg.total),
            pg.cpu_ours_per_1000,
            pg.cpu_broker_per_1000,
            pg.cpu_database_per_1000
        );
    }
    let rss: Vec<String> = harness::processes()
        .into_iter()
        .map(|n| format!("{n} {:.1}", peak_rss_mib(runs.iter().map(|(_, pg)| *pg), n)))
        .collect();
    let _ = writeln!(o, "\nPeak RSS on PostgreSQL, MiB: {}.\n", rss.join(", "));
}

/// How to rerun the bench.
pub(super) fn rerun_section(o: &mut String) {
    let _ = writeln!(o, "### How to rerun\n");
    let _ = writeln!(o, "```sh");
    let _ = writeln!(
        o,
        "scripts/bench.sh                       # full run, a few minutes; report in BENCHMARKS-latest.md"
    );
    let _ = writeln!(
        o,
        "scripts/bench.sh my-report.md --reps 5 # report elsewhere; options go to orderflow-bench"
    );
    let _ = writeln!(
        o,
        "scripts/bench.sh --smoke                # seconds: checks it runs, figures are not measurements"
    );
    let _ = writeln!(
        o,
        "target/dist/orderflow-bench --help     # counts, durations, --env KEY=VALUE for every process"
    );
    let _ = writeln!(o, "```");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "The bench needs the local RabbitMQ with its management plugin (the script starts it) and nothing \
         else running heavy on the machine; it creates and deletes vhosts named `orderflow-bench-*`. \
         Expect tens of percent between runs on a shared 2-core machine: compare the ratios, not the \
         absolute rates, across machines and days."
    );
}
