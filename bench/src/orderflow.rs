//! One measurement of orderflow end to end on a running [`Stack`]: publish a
//! load (saturating or open loop), wait until the tracker has recorded
//! every order `shipped` (polling `GET /stats` every 250 ms only), then fetch
//! the histories for exact completion times and latencies, and read each
//! process's CPU time and peak RSS.

use crate::load::{self, Published, Route};
use crate::procfs;
use crate::progress::Progress;
use crate::stack::Stack;
use crate::stats::{self, Dist, OrderTiming, Throughput};
use shared::order::Order;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an orderflow run is loaded.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// As fast as confirms allow with at most this many orders in flight;
    /// throughput from the 10th percentile of completions to the end of publishing.
    Saturated(usize),
    /// Open loop at this many orders per second.
    OpenLoop(f64),
}

#[derive(Clone, Debug)]
pub struct RunResult {
    pub load: Load,
    pub orders: usize,
    pub single_unit_share: f64,
    pub published_rate: f64,
    pub max_lag_ms: f64,
    pub throughput: Throughput,
    /// Publish to the tracker's record of `shipped`.
    pub total: Dist,
    /// The total less the wait in the picklist's aggregation.
    pub outside: Dist,
    pub aggregation: Dist,
    /// Per [`stats::segments`] entry.
    pub segments: Vec<Dist>,
    /// Median total latency of the last quarter of orders less the first quarter's, ms.
    pub drift_ms: f64,
    /// From the last publish to the last completion, s.
    pub drain_secs: f64,
    /// CPU seconds per 1,000 orders: each process, all of ours, the broker.
    pub cpu_per_process: Vec<(String, f64)>,
    pub cpu_ours_per_1000: f64,
    pub cpu_broker_per_1000: f64,
    /// The PostgreSQL server's processes (about 0 when the stores are SQLite).
    pub cpu_database_per_1000: f64,
    /// The bench process (the publisher, mostly), for comparison.
    pub cpu_bench_per_1000: f64,
    /// Peak RSS (VmHWM) of each process at the end of the run, KiB.
    pub rss_kib: Vec<(String, u64)>,
    pub missing_histories: usize,
}

impl RunResult {
    /// Open loop only: completions kept up with the offered rate, the latency
    /// did not grow, and the publisher kept its schedule.
    pub fn sustained(&self) -> bool {
        self.throughput.per_sec >= 0.95 * self.published_rate
            && self.drift_ms < 200.0
            && self.max_lag_ms < 100.0
            && self.missing_histories == 0
    }
}

/// Polls the tracker's `GET /stats` in the background: orders shipped, and ended otherwise.
struct Watch {
    shipped: Arc<AtomicU64>,
    other_terminal: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const OTHER_TERMINAL: [&str; 4] = ["rejected", "payment_declined", "out_of_stock", "cancelled"];

impl Watch {
    fn start(stack: &Stack) -> Watch {
        let (shipped, other_terminal) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, o) = (shipped.clone(), other_terminal.clone());
        let tracker = stack.tracker().clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(stats) = tracker.stats().await {
                    let count = |state: &str| stats.count(state).max(0) as u64;
                    s.store(count("shipped"), Ordering::Relaxed);
                    o.store(OTHER_TERMINAL.iter().map(|st| count(st)).sum(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Watch { shipped, other_terminal, task }
    }

    fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the tracker counts `target` orders shipped; fails when a
/// process dies, an order ends otherwise, or nothing moves for `stall`.
async fn wait_shipped(
    stack: &mut Stack,
    watch: &Watch,
    target: u64,
    stall: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut last = (watch.shipped(), Instant::now());
    loop {
        let shipped = watch.shipped();
        if shipped >= target {
            return Ok(());
        }
        stack.check_alive()?;
        let other = watch.other_terminal.load(Ordering::Relaxed);
        anyhow::ensure!(
            other == 0,
            "{other} valid orders did not ship (see GET /stats); logs in {}",
            stack.run_dir.display()
        );
        if shipped != last.0 {
            last = (shipped, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < stall,
            "no order shipped for {stall:?} ({shipped} of {target}); logs in {}",
            stack.run_dir.display()
        );
        progress.set(format!("shipped {shipped} of {target}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders the tracker counts shipped now.
async fn shipped_now(stack: &Stack) -> anyhow::Result<u64> {
    Ok(stack.tracker().stats().await?.count("shipped").max(0) as u64)
}

/// Publishes `n` orders and waits for them: warms a fresh stack up (connections,
/// stores, caches) so the measured run starts steady.
pub async fn warm_up(stack: &mut Stack, n: usize) -> anyhow::Result<()> {
    warm_up_on(stack, n, Route::Autonomous).await
}

/// [`warm_up`] through `route` (directed: the coordinator and the services).
pub async fn warm_up_on(stack: &mut Stack, n: usize, route: Route) -> anyhow::Result<()> {
    let watch = Watch::start(stack);
    let target = shipped_now(stack).await? + n as u64;
    load::saturate(&stack.publisher, route, load::orders(n), n, || 0, |_| {}).await?;
    let progress = Progress::start("warm-up");
    wait_shipped(stack, &watch, target, Duration::from_secs(60), &progress).await?;
    drop(progress);
    Ok(())
}

fn cpu_snapshot(stack: &Stack) -> Vec<(String, f64)> {
    stack.processes.iter().map(|p| (p.label.clone(), procfs::cpu_seconds(p.pid()).unwrap_or(0.0))).collect()
}

/// Runs one measurement of `orders` under `load`, placed through `route`.
pub async fn measure(
    stack: &mut Stack,
    orders: Vec<Order>,
    load: Load,
    route: Route,
    phase: &str,
) -> anyhow::Result<RunResult> {
    let n = orders.len();
    let single_unit_share = load::single_unit_share(&orders);
    let watch = Watch::start(stack);
    let baseline = shipped_now(stack).await?;
    let target = baseline + n as u64;
    let progress = Progress::start(phase);
    let broker_pids = procfs::broker_pids();
    let (cpu_before, broker_before) = (cpu_snapshot(stack), procfs::total_cpu_seconds(&broker_pids));
    let database_pids = procfs::database_pids();
    let database_before = procfs::total_cpu_seconds(&database_pids);
    let bench_before = procfs::own_cpu_seconds();

    let shipped = watch.shipped.clone();
    let report = |i: usize| {
        let done = shipped.load(Ordering::Relaxed).saturating_sub(baseline);
        progress.set(format!("published {i}/{n}, shipped {done}"));
    };
    let published: Published = match load {
        Load::Saturated(in_flight) => {
            let completed = || shipped.load(Ordering::Relaxed).saturating_sub(baseline) as usize;
            load::saturate(&stack.publisher, route, orders, in_flight, completed, report).await?
        }
        Load::OpenLoop(rate) => load::open_loop(&stack.publisher, route, orders, rate, report).await?,
    };
    wait_shipped(stack, &watch, target, Duration::from_secs(30), &progress).await?;

    let cpu_after = cpu_snapshot(stack);
    let broker_cpu = procfs::total_cpu_seconds(&broker_pids) - broker_before;
    let database_cpu = procfs::total_cpu_seconds(&database_pids) - database_before;
    let bench_cpu = procfs::own_cpu_seconds() - bench_before;
    let rss_kib: Vec<(String, u64)> = stack
        .processes
        .iter()
        .map(|p| (p.label.clone(), procfs::peak_rss_kib(p.pid()).unwrap_or(0)))
        .collect();
    let per_1000 = 1000.0 / n as f64;
    let cpu_per_process: Vec<(String, f64)> = cpu_after
        .iter()
        .map(|(label, after)| {
            let before = cpu_before.iter().find(|(l, _)| l == label).map(|(_, b)| *b).unwrap_or(0.0);
            (label.clone(), (after - before) * per_1000)
        })
        .collect();
    let cpu_ours_per_1000 = cpu_per_process.iter().map(|(_, c)| c).sum();

    progress.set("fetching histories");
    let views = stack.histories(&published.ids).await;
    let timings: Vec<OrderTiming> = views.iter().flatten().filter_map(OrderTiming::from_view).collect();
    let missing_histories = n - timings.len();
    let result = summarize(SummaryInput {
        load,
        published: &published,
        timings: &timings,
        single_unit_share,
        missing_histories,
        cpu_per_process,
        cpu_ours_per_1000,
        cpu_broker_per_1000: broker_cpu * per_1000,
        cpu_database_per_1000: database_cpu * per_1000,
        cpu_bench_per_1000: bench_cpu * per_1000,
        rss_kib,
    });
    progress.finish(&format!(
        "{:.0} orders/s completed{}; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        result.throughput.per_sec,
        match load {
            Load::OpenLoop(rate) => format!(" at {rate:.0} offered"),
            Load::Saturated(_) => String::new(),
        },
        result.total.p50,
        result.total.p99,
        result.total.max
    ));
    Ok(result)
}

struct SummaryInput<'a> {
    load: Load,
    published: &'a Published,
    timings: &'a [OrderTiming],
    single_unit_share: f64,
    missing_histories: usize,
    cpu_per_process: Vec<(String, f64)>,
    cpu_ours_per_1000: f64,
    cpu_broker_per_1000: f64,
    cpu_database_per_1000: f64,
    cpu_bench_per_1000: f64,
    rss_kib: Vec<(String, u64)>,
}

fn summarize(input: SummaryInput) -> RunResult {
    let SummaryInput { load, published, timings, .. } = input;
    let totals: Vec<f64> = timings.iter().map(|t| t.total_ms).collect();
    let total = Dist::of_ms(&totals);
    let completions: Vec<f64> = timings.iter().map(|t| t.completed).collect();
    let throughput = match load {
        Load::Saturated(_) => stats::saturated_throughput(&completions, published.start, published.end),
        Load::OpenLoop(_) => {
            let skip = (0.2 * (published.end - published.start)).min(2.0);
            stats::open_loop_throughput(
                &completions,
                published.start,
                published.end,
                skip,
                total.p50 / 1000.0,
            )
        }
    };
    let mut by_placed: Vec<&OrderTiming> = timings.iter().collect();
    by_placed.sort_by(|a, b| a.placed.total_cmp(&b.placed));
    let quarter = (by_placed.len() / 4).max(1);
    let median_of =
        |slice: &[&OrderTiming]| stats::median(&slice.iter().map(|t| t.total_ms).collect::<Vec<_>>());
    let drift_ms = if by_placed.len() >= 8 {
        median_of(&by_placed[by_placed.len() - quarter..]) - median_of(&by_placed[..quarter])
    } else {
        0.0
    };
    let last_completion = completions.iter().copied().fold(f64::NAN, f64::max);
    RunResult {
        load,
        orders: published.ids.len(),
        single_unit_share: input.single_unit_share,
        published_rate: published.rate(),
        max_lag_ms: published.max_lag_ms,
        throughput,
        total,
        outside: Dist::of_ms(&timings.iter().map(OrderTiming::outside_aggregation_ms).collect::<Vec<_>>()),
        aggregation: Dist::of_ms(&timings.iter().map(|t| t.aggregation_ms).collect::<Vec<_>>()),
        segments: (0..stats::segments().len())
            .map(|i| Dist::of_ms(&timings.iter().map(|t| t.segments_ms[i]).collect::<Vec<_>>()))
            .collect(),
        drift_ms,
        drain_secs: last_completion - published.end,
        cpu_per_process: input.cpu_per_process,
        cpu_ours_per_1000: input.cpu_ours_per_1000,
        cpu_broker_per_1000: input.cpu_broker_per_1000,
        cpu_database_per_1000: input.cpu_database_per_1000,
        cpu_bench_per_1000: input.cpu_bench_per_1000,
        rss_kib: input.rss_kib,
        missing_histories: input.missing_histories,
    }
}
