//! The report's summary table: every headline figure beside its target.

use super::{
    dist, list, met, ms, rate, speedup, Figures, CPU_TARGET_S, OUTSIDE_P99_TARGET_MS, RSS_TARGET_MIB,
    TOTAL_P99_SLACK_MS,
};
use crate::orderflow::RunResult;
use crate::stats::median;
use crate::{Plan, Results};
use std::fmt::Write;

/// The summary table: every headline figure against its target.
pub(super) fn summary(o: &mut String, plan: &Plan, results: &Results, figures: &Figures) {
    let Figures { flush_ms, relay_rates, orderflow_rates, ratios, ratio, .. } = figures;
    let (flush_ms, ratio) = (*flush_ms, *ratio);
    let max_run = results.max_attempts.last().expect("at least one attempt");
    let half = &results.half;
    let _ = writeln!(o, "### Summary\n");
    let _ = writeln!(o, "| figure | result | target | met |");
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| relay chains/s (broker limit, {} hops) | {} (median; runs: {}) | | |",
        plan.relay.hops,
        rate(median(relay_rates)),
        list(relay_rates, rate)
    );
    let _ = writeln!(
        o,
        "| orderflow orders/s, saturated | {} (median; runs: {}) | | |",
        rate(median(orderflow_rates)),
        list(orderflow_rates, rate)
    );
    let _ = writeln!(
        o,
        "| ratio orderflow / relay | {:.2} (median of pairs: {}) | ≥ 0.9 | {} |",
        ratio,
        list(ratios, |r| format!("{r:.2}")),
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
    summary_resources(o, plan, results, figures);
}

/// The summary's rows on resources, PostgreSQL, directed mode and scale-out.
fn summary_resources(o: &mut String, plan: &Plan, results: &Results, figures: &Figures) {
    let (orderflow_rates, cpu_ours, cpu_broker) =
        (&figures.orderflow_rates, figures.cpu_ours, figures.cpu_broker);
    let (worst_name, worst_rss) = figures.worst_rss();
    let scale_main: Vec<_> = results.scale.iter().filter(|s| !s.serial).collect();
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
            median(&rates) / median(orderflow_rates)
        );
    }
    let directed = &results.directed;
    let _ = writeln!(
        o,
        "| directed orders/s, saturated (coordinator and services) | {} ({:.2} of autonomous); latency at the half rate {} | | |",
        rate(directed.saturated.throughput.per_sec),
        directed.saturated.throughput.per_sec / median(orderflow_rates),
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
}
