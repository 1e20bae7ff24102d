//! The soak (`orderflow-bench --soak`, `scripts/bench.sh --soak`): one stack,
//! `--soak-orders` orders (100,000) published open loop at `--soak-rate`
//! (default: 70 % of the maximum sustainable rate, found first on the same
//! stack as the full run finds it),
//! and every `--soak-every` seconds (60) one row: orders published and
//! ended, throughput over the interval, end-to-end p50 / p99 of the orders
//! that ended in it (the tracker's `GET /report`), each process's resident
//! memory (VmRSS) and the tracker's rows in its active store and its
//! warehouse (`GET /store`). Throughput and latency should stay flat, memory
//! should not grow, and the active store should stay bounded by the orders
//! in flight plus the warehouse's quiet period (`ORDERFLOW_WAREHOUSE_AFTER_S`,
//! 60 s in the soak unless `--env` sets it), however many were placed.

use crate::load::{self, Route};
use crate::orderflow::{self, Load};
use crate::procfs;
use crate::progress::{note, Progress};
use crate::stack::{BenchConfig, Stack};
use shared::tracker_api::StoreRows;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The soak's quiet period unless `--env` sets one.
pub const QUIET_S: &str = "60";

/// One interval of the soak.
#[derive(Clone, Debug)]
pub struct SoakRow {
    pub elapsed_s: f64,
    pub published: usize,
    pub ended: u64,
    pub per_sec: f64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// Each process's resident memory now, KiB.
    pub rss_kib: Vec<(String, u64)>,
    pub store: StoreRows,
}

#[derive(Clone, Debug)]
pub struct SoakResult {
    pub orders: usize,
    pub rate: f64,
    pub saturated: f64,
    /// The maximum sustainable open-loop rate found before the soak.
    pub sustainable: f64,
    pub quiet_s: String,
    pub rows: Vec<SoakRow>,
    /// Peak RSS (VmHWM) of each process at the end, KiB.
    pub peak_rss_kib: Vec<(String, u64)>,
}

/// Orders ended so far, by the tracker's counts.
async fn ended(stack: &Stack) -> u64 {
    let Ok(stats) = stack.tracker().stats().await else { return 0 };
    let terminal: Vec<&str> = topology::OrderState::all()
        .into_iter()
        .filter(|s| topology::WORKFLOW.is_terminal(*s))
        .map(|s| s.as_str())
        .collect();
    stats.by_state.iter().filter(|(s, _)| terminal.contains(&s.as_str())).map(|(_, n)| *n as u64).sum()
}

/// The saturated throughput, then the maximum sustainable open-loop rate
/// as the full run finds it: 20 s at the saturated rate, then 10 % lower
/// each time, until completions keep up without growing latency.
async fn max_sustainable(stack: &mut Stack) -> anyhow::Result<(f64, f64)> {
    let phase = "soak: saturated";
    let saturated =
        orderflow::measure(stack, load::orders(2000), Load::Saturated(1000), Route::Autonomous, phase)
            .await?;
    let saturated = saturated.throughput.per_sec;
    let mut rate = saturated;
    for attempt in 1..=4 {
        let phase = format!("soak: open loop at {rate:.0}/s (maximum, attempt {attempt})");
        let orders = load::orders((rate * 20.0).ceil() as usize);
        let run = orderflow::measure(stack, orders, Load::OpenLoop(rate), Route::Autonomous, &phase).await?;
        if run.sustained() {
            return Ok((saturated, rate));
        }
        rate *= 0.9;
    }
    Ok((saturated, rate))
}

pub async fn run(
    config: &BenchConfig,
    orders: usize,
    rate: Option<f64>,
    every: Duration,
    warmup: usize,
) -> anyhow::Result<SoakResult> {
    let mut config = config.clone();
    let quiet_s = config
        .stack
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "ORDERFLOW_WAREHOUSE_AFTER_S")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            config.stack.env.push(("ORDERFLOW_WAREHOUSE_AFTER_S".into(), QUIET_S.into()));
            QUIET_S.into()
        });
    let mut stack = Stack::start(&config, "soak").await?;
    orderflow::warm_up(&mut stack, warmup).await?;
    let (saturated, sustainable) = match rate {
        Some(_) => (0.0, 0.0),
        None => max_sustainable(&mut stack).await?,
    };
    let rate = rate.unwrap_or(0.7 * sustainable).max(1.0);
    note(&format!(
        "soak: {orders} orders at {rate:.0}/s (about {:.0} min), a row every {} s, warehouse quiet period {quiet_s} s",
        orders as f64 / rate / 60.0,
        every.as_secs()
    ));

    let published = Arc::new(AtomicUsize::new(0));
    let counter = published.clone();
    let publisher = stack.publisher.clone();
    let publishing = tokio::spawn(async move {
        load::open_loop(&publisher, Route::Autonomous, load::orders(orders), rate, |n| {
            counter.store(n, Ordering::Relaxed)
        })
        .await
    });
    let ended_before = ended(&stack).await;
    let started = Instant::now();
    let progress = Progress::start("soak");
    let mut rows: Vec<SoakRow> = Vec::new();
    let mut last_ended = 0;
    let mut row_due = Instant::now() + every;
    loop {
        // A live count every 2 s; a row of figures every `every`.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if Instant::now() < row_due {
            let ended_now = ended(&stack).await.saturating_sub(ended_before);
            progress.set(format!("{} published, {ended_now} ended", published.load(Ordering::Relaxed)));
            continue;
        }
        row_due += every;
        let now_ended = ended(&stack).await.saturating_sub(ended_before);
        let report = stack.tracker().report(&[("last", every.as_secs_f64().to_string())]).await.ok();
        let store = stack.tracker().store_rows().await.unwrap_or_default();
        let rss_kib = stack
            .processes
            .iter()
            .map(|p| (p.label.clone(), procfs::rss_kib(p.pid()).unwrap_or(0)))
            .collect();
        let row = SoakRow {
            elapsed_s: started.elapsed().as_secs_f64(),
            published: published.load(Ordering::Relaxed),
            ended: now_ended,
            per_sec: now_ended.saturating_sub(last_ended) as f64 / every.as_secs_f64(),
            p50_ms: report.as_ref().map_or(0, |r| r.end_to_end.p50_ms),
            p99_ms: report.as_ref().map_or(0, |r| r.end_to_end.p99_ms),
            rss_kib,
            store,
        };
        last_ended = now_ended;
        let line = format!(
            "{:>5.0} s: {} published, {} ended, {:.0}/s, p50 {} ms, p99 {} ms, tracker store {} active / {} warehouse orders",
            row.elapsed_s, row.published, row.ended, row.per_sec, row.p50_ms, row.p99_ms,
            row.store.active_orders, row.store.warehouse_orders
        );
        progress.set(line.clone());
        note(&format!("  {line}"));
        rows.push(row);
        if publishing.is_finished() && now_ended as usize >= orders {
            break;
        }
        if started.elapsed() > Duration::from_secs_f64(orders as f64 / rate * 2.0 + 120.0) {
            anyhow::bail!("the soak's orders did not all end within twice their publishing time");
        }
    }
    publishing.await??;
    progress.finish(&format!("soak: {orders} orders ended"));
    let peak_rss_kib = stack
        .processes
        .iter()
        .map(|p| (p.label.clone(), procfs::peak_rss_kib(p.pid()).unwrap_or(0)))
        .collect();
    stack.shutdown().await?;
    Ok(SoakResult { orders, rate, saturated, sustainable, quiet_s, rows, peak_rss_kib })
}

/// The soak as a markdown section.
pub fn markdown(result: &SoakResult) -> String {
    let how = if result.sustainable > 0.0 {
        format!(
            "70 % of the maximum sustainable {:.0}/s; saturated {:.0}/s",
            result.sustainable, result.saturated
        )
    } else {
        "the rate given".to_string()
    };
    let mut out = format!(
        "## Soak: {} orders at {:.0} orders/s ({how}), warehouse quiet period {} s\n\n",
        result.orders, result.rate, result.quiet_s
    );
    let labels: Vec<String> =
        result.rows.first().map(|r| r.rss_kib.iter().map(|(l, _)| l.clone()).collect()).unwrap_or_default();
    out.push_str("| elapsed s | published | ended | orders/s | p50 ms | p99 ms | active orders | active events | warehouse orders |");
    for label in &labels {
        out.push_str(&format!(" {label} MiB |"));
    }
    out.push_str("\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(labels.len()));
    out.push('\n');
    for row in &result.rows {
        out.push_str(&format!(
            "| {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            row.elapsed_s,
            row.published,
            row.ended,
            row.per_sec,
            row.p50_ms,
            row.p99_ms,
            row.store.active_orders,
            row.store.active_events,
            row.store.warehouse_orders
        ));
        for (_, kib) in &row.rss_kib {
            out.push_str(&format!(" {:.1} |", *kib as f64 / 1024.0));
        }
        out.push('\n');
    }
    out.push_str("\nPeak RSS at the end (VmHWM): ");
    let peaks: Vec<String> =
        result.peak_rss_kib.iter().map(|(l, kib)| format!("{l} {:.1} MiB", *kib as f64 / 1024.0)).collect();
    out.push_str(&peaks.join(", "));
    out.push('\n');
    out
}
