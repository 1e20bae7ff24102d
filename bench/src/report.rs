//! The bench's output: a markdown report, ready to paste into BENCHMARKS.md,
//! with the summary against the issue's targets, every run's figures, the
//! machine and how to rerun.

use crate::orderflow::{Load, RunResult};
use crate::stats::{median, segments, Dist};
use crate::{Plan, Results};
use chrono::{DateTime, Utc};
use std::fmt::Write;

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub machine: String,
    pub versions: String,
    pub bin_dir: String,
}

/// Section 5: directed mode beside autonomous, and a service call's round trip.
fn directed_section(o: &mut String, plan: &crate::Plan, results: &Results) {
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

const MIB: f64 = 1024.0;
const RSS_TARGET_MIB: f64 = 20.0;
/// Issue 12's targets: orderflow's own CPU per 1,000 orders, and the half
/// rate's p99 outside the aggregation wait and in total (beyond the flush).
const CPU_TARGET_S: f64 = 1.0;
const OUTSIDE_P99_TARGET_MS: f64 = 50.0;
const TOTAL_P99_SLACK_MS: f64 = 60.0;

/// Section 6: each repetition's saturated run with the stores on PostgreSQL
/// beside its SQLite run.
fn postgres_section(o: &mut String, results: &Results) {
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

fn rate(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "–".into()
    }
}

fn ms(x: f64) -> String {
    match x {
        x if !x.is_finite() => "–".into(),
        x if x.abs() < 10.0 => format!("{x:.1} ms"),
        x => format!("{x:.0} ms"),
    }
}

fn dist(d: &Dist) -> String {
    format!("p50 {}, p99 {}, max {}", ms(d.p50), ms(d.p99), ms(d.max))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn list(values: &[f64], format: impl Fn(f64) -> String) -> String {
    values.iter().map(|v| format(*v)).collect::<Vec<_>>().join(", ")
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty =
                run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            format!("{commit}{}", if dirty { " + uncommitted changes" } else { "" })
        }
        None => "unknown".into(),
    }
}

/// The largest peak RSS (VmHWM) of process `name` over `runs`, MiB.
pub fn peak_rss_mib<'a>(runs: impl IntoIterator<Item = &'a RunResult>, name: &str) -> f64 {
    runs.into_iter()
        .flat_map(|r| &r.rss_kib)
        .filter(|(label, _)| process_name(label) == name)
        .map(|(_, kib)| *kib as f64 / MIB)
        .fold(0.0, f64::max)
}

pub fn process_name(label: &str) -> &str {
    label.rsplit_once('-').map(|(name, _)| name).unwrap_or(label)
}

pub fn markdown(context: &Context, results: &Results) -> String {
    let plan = context.plan;
    let mut out = String::new();
    let o = &mut out;
    let flush_ms: f64 = plan.setting("ORDERFLOW_PICKLIST_FLUSH_MS", "500").parse().unwrap_or(500.0);
    let relay_rates: Vec<f64> = results.pairs.iter().map(|p| p.relay.throughput.per_sec).collect();
    let orderflow_rates: Vec<f64> = results.pairs.iter().map(|p| p.orderflow.throughput.per_sec).collect();
    let ratios: Vec<f64> =
        results.pairs.iter().map(|p| p.orderflow.throughput.per_sec / p.relay.throughput.per_sec).collect();
    let ratio = median(&ratios);
    let max_run = results.max_attempts.last().expect("at least one attempt");
    let half = &results.half;
    let main_runs: Vec<&RunResult> = results
        .pairs
        .iter()
        .map(|p| &p.orderflow)
        .chain(&results.max_attempts)
        .chain(std::iter::once(half))
        .collect();
    // Peak RSS of each process over the main runs (not the slowed scale-out ones).
    let peak_rss = |name: &str| peak_rss_mib(main_runs.iter().copied(), name);
    let saturated: Vec<&RunResult> = results.pairs.iter().map(|p| &p.orderflow).collect();
    let cpu_of = |name: &str| {
        median(
            &saturated
                .iter()
                .map(|r| {
                    r.cpu_per_process.iter().filter(|(l, _)| process_name(l) == name).map(|(_, c)| c).sum()
                })
                .collect::<Vec<f64>>(),
        )
    };
    let cpu_ours = median(&saturated.iter().map(|r| r.cpu_ours_per_1000).collect::<Vec<_>>());
    let cpu_broker = median(&saturated.iter().map(|r| r.cpu_broker_per_1000).collect::<Vec<_>>());
    let (worst_name, worst_rss) = harness::processes()
        .into_iter()
        .map(|n| (n, peak_rss(n)))
        .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let scale_main: Vec<_> = results.scale.iter().filter(|s| !s.serial).collect();
    let scale_serial: Vec<_> = results.scale.iter().filter(|s| s.serial).collect();
    let speedup = |points: &[&crate::ScalePoint], n: usize| {
        let base = points.iter().find(|s| s.instances == 1)?.run.throughput.per_sec;
        Some(points.iter().find(|s| s.instances == n)?.run.throughput.per_sec / base)
    };

    let _ = writeln!(o, "## Results of {}", context.started.format("%Y-%m-%d %H:%M UTC"));
    let _ = writeln!(o);
    if plan.smoke {
        let _ = writeln!(
            o,
            "> **Smoke run**: tiny counts and one repetition, to check that the benchmark runs; \
             these figures are not measurements.\n"
        );
    }
    let _ = writeln!(o, "- Machine: {}; {}.", context.machine, context.versions);
    let _ = writeln!(
        o,
        "- Code: commit {}; binaries from `{}`; took {:.0} s.",
        git_commit(),
        context.bin_dir,
        (context.finished - context.started).num_milliseconds() as f64 / 1000.0
    );
    let extra_env = if plan.env.is_empty() {
        "none".to_string()
    } else {
        plan.env.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(
        o,
        "- Settings: prefetch {}, picklist batch {}, flush {flush_ms:.0} ms; extra environment: {extra_env}.",
        plan.setting("ORDERFLOW_PREFETCH", "64"),
        plan.setting("ORDERFLOW_PICKLIST_BATCH", "25"),
    );
    let single = median(&main_runs.iter().map(|r| r.single_unit_share).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "- Load: valid generated orders, {:.0} % single-unit (5 hops after publish) and the rest multi-unit \
         (6 hops, through rebin); {} alternating repetition{} of relay and orderflow.",
        single * 100.0,
        plan.reps,
        if plan.reps == 1 { "" } else { "s" }
    );
    let _ = writeln!(o);

    // Summary.
    let _ = writeln!(o, "### Summary\n");
    let _ = writeln!(o, "| figure | result | target | met |");
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| relay chains/s (broker limit, {} hops) | {} (median; runs: {}) | | |",
        plan.relay.hops,
        rate(median(&relay_rates)),
        list(&relay_rates, rate)
    );
    let _ = writeln!(
        o,
        "| orderflow orders/s, saturated | {} (median; runs: {}) | | |",
        rate(median(&orderflow_rates)),
        list(&orderflow_rates, rate)
    );
    let _ = writeln!(
        o,
        "| ratio orderflow / relay | {:.2} (median of pairs: {}) | ≥ 0.9 | {} |",
        ratio,
        list(&ratios, |r| format!("{r:.2}")),
        met(ratio >= 0.9)
    );
    let sustained_note = if max_run.sustained() { "" } else { ", **not sustained**" };
    let _ = writeln!(
        o,
        "| orderflow orders/s at the maximum sustainable rate ({}/s offered{sustained_note}) | {} completed; latency {} | | |",
        rate(max_run.published_rate),
        rate(max_run.throughput.per_sec),
        dist(&max_run.total)
    );
    let _ = writeln!(
        o,
        "| orderflow orders/s at half rate ({}/s offered) | {} completed; latency {} | | |",
        rate(half.published_rate),
        rate(half.throughput.per_sec),
        dist(&half.total)
    );
    let _ = writeln!(
        o,
        "| half rate: p99 outside the picklist's aggregation wait | {} | < {} | {} |",
        ms(half.outside.p99),
        ms(OUTSIDE_P99_TARGET_MS),
        met(half.outside.p99 < OUTSIDE_P99_TARGET_MS)
    );
    let _ = writeln!(
        o,
        "| half rate: p99 total, publish to tracker's `shipped` | {} | < {} (flush + {}) | {} |",
        ms(half.total.p99),
        ms(flush_ms + TOTAL_P99_SLACK_MS),
        ms(TOTAL_P99_SLACK_MS),
        met(half.total.p99 < flush_ms + TOTAL_P99_SLACK_MS)
    );
    let _ = writeln!(
        o,
        "| peak RSS of the largest worker | {:.1} MiB ({worst_name}) | < {RSS_TARGET_MIB:.0} MiB each | {} |",
        worst_rss,
        met(worst_rss < RSS_TARGET_MIB)
    );
    let _ = writeln!(
        o,
        "| CPU s/1000 orders, saturated (median): orderflow's processes | {cpu_ours:.2} s (broker {cpu_broker:.2} s) | ≤ {CPU_TARGET_S:.1} s | {} |",
        met(cpu_ours <= CPU_TARGET_S)
    );
    let postgres: Vec<&RunResult> = results.pairs.iter().filter_map(|p| p.postgres.as_ref()).collect();
    if !postgres.is_empty() {
        let rates: Vec<f64> = postgres.iter().map(|r| r.throughput.per_sec).collect();
        let _ = writeln!(
            o,
            "| orderflow orders/s saturated, stores on PostgreSQL (section 6) | {} (median; runs: {}); {:.2} of SQLite | | |",
            rate(median(&rates)),
            list(&rates, rate),
            median(&rates) / median(&orderflow_rates)
        );
    }
    let directed = &results.directed;
    let _ = writeln!(
        o,
        "| directed orders/s, saturated (coordinator and services) | {} ({:.2} of autonomous); latency at the half rate {} | | |",
        rate(directed.saturated.throughput.per_sec),
        directed.saturated.throughput.per_sec / median(&orderflow_rates),
        dist(&directed.half.total)
    );
    let _ = writeln!(
        o,
        "| sync service call round trip, idle / under saturating load | p50 {} p99 {} / p50 {} p99 {} | | |",
        ms(directed.calls_idle.p50),
        ms(directed.calls_idle.p99),
        ms(directed.calls_loaded.p50),
        ms(directed.calls_loaded.p99)
    );
    match speedup(&scale_main, 4) {
        Some(x) => {
            let _ = writeln!(
                o,
                "| scale-out 4 vs 1 payment instance ({} ms per charge) | {x:.2}x | ≥ 3.5x | {} |",
                plan.scale_delay_ms,
                met(x >= 3.5)
            );
        }
        None => {
            let two =
                speedup(&scale_main, 2).map(|x| format!("2 vs 1: {x:.2}x")).unwrap_or_else(|| "–".into());
            let _ = writeln!(o, "| scale-out 4 vs 1 payment instance | not run ({two}) | ≥ 3.5x | – |");
        }
    }
    let _ = writeln!(o);

    // 1. The relay.
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

    // 2. orderflow.
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

    // 3. Ratio, memory, CPU.
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
        let rss = peak_rss(name);
        let _ =
            writeln!(o, "| {name} | {rss:.1} MiB | {} | {:.2} |", met(rss < RSS_TARGET_MIB), cpu_of(name));
    }
    let _ = writeln!(o, "| **orderflow, all processes** | | | **{cpu_ours:.2}** |");
    let _ = writeln!(o, "| **broker (beam.smp)** | | | **{cpu_broker:.2}** |");
    let _ = writeln!(o);

    // 4. Scale-out.
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
    directed_section(o, plan, results);
    postgres_section(o, results);
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
    out
}
