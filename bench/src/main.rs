//! `orderflow-bench`: in one run, on the local broker and in vhosts of its
//! own, measures (1) the broker's limit for orderflow's message pattern with a
//! minimal lapin relay, (2) orderflow end to end (every worker and the tracker
//! as separate processes) saturated, at its maximum sustainable open-loop rate
//! and at half of it, (3) their ratio over alternating repetitions, each
//! process's peak RSS and CPU per 1,000 orders against the broker's, and (4)
//! throughput with 1, 2 and 4 payment instances slowed to 10 ms per charge,
//! (5) directed mode (the coordinator through the services) saturated and at
//! the autonomous half rate, and a synchronous service call's round trip on
//! an idle stack and under saturating load, (6) the saturated run with every
//! store on PostgreSQL beside each repetition's SQLite run; then prints a
//! markdown report (and writes it to `--report`). Every vhost it
//! creates and every process it starts is removed when it ends, also on error,
//! panic, Ctrl-C or SIGTERM.

mod calls;
mod compare;
mod domains;
mod load;
mod machine;
mod orderflow;
mod postgres;
mod procfs;
mod progress;
mod relay;
mod report;
mod soak;
mod stack;
mod stats;

use anyhow::Context;
use clap::Parser;
use harness::{Broker, StackConfig};
use load::Route;
use orderflow::{Load, RunResult};
use progress::note;
use relay::{RelayConfig, RelayResult};
use stack::{BenchConfig, Stack};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "orderflow-bench",
    version,
    about = "Benchmark orderflow against the broker's limit for its message pattern; prints a markdown report",
    after_help = "Needs the local RabbitMQ with its management plugin (scripts/bench.sh makes sure of both) \
                  and the built binaries (cargo build --profile dist --workspace --bins).\n\n\
                  Examples:\n  orderflow-bench --smoke                   # seconds: checks that everything runs\n  \
                  orderflow-bench --report BENCHMARKS.md    # the full run (tens of minutes)\n  \
                  orderflow-bench --soak --report SOAK.md   # 100,000 orders at 70 % of the maximum\n\n\
                  Environment: AMQP_URL (the broker; its vhost is not used), ORDERFLOW_MGMT_URL, \
                  ORDERFLOW_MGMT_USER and ORDERFLOW_MGMT_PASSWORD (the management API, which creates the \
                  bench's vhosts); the orderflow processes get their settings from --env.\n\n\
                  Exit codes: 0 the report was printed, 1 error, 2 usage error."
)]
pub struct Args {
    /// A short run (seconds, not minutes) that checks everything runs: tiny counts, one repetition,
    /// scale-out with 1 and 2 payment instances. Its figures are not measurements.
    #[arg(long)]
    pub smoke: bool,
    /// Folder holding the orderflow binaries (every one of `topology processes`); scripts/bench.sh
    /// builds them with the `dist` profile (whole-program optimization).
    #[arg(long, default_value = "target/dist")]
    pub bin_dir: PathBuf,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Broker address and credentials; its vhost is not used (the bench makes its own).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// RabbitMQ management API (creates and deletes the bench's vhosts).
    #[arg(long, env = "ORDERFLOW_MGMT_URL", default_value = "http://127.0.0.1:15672")]
    pub mgmt_url: String,
    /// Alternating relay/orderflow repetitions [default: 3; smoke 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Chains per relay run [default: 6000; smoke 300].
    #[arg(long)]
    pub relay_chains: Option<usize>,
    /// Orders per saturating orderflow run [default: 4000; smoke 200].
    #[arg(long)]
    pub orders: Option<usize>,
    /// Orders (relay: chains) in flight in a saturating run: published, not yet complete
    /// [default: 1000; smoke 100].
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Seconds of publishing in each open-loop run [default: 20; smoke 2].
    #[arg(long)]
    pub open_secs: Option<f64>,
    /// Open-loop attempts to find the maximum sustainable rate, each 10 % below the
    /// previous, starting at the saturated throughput [default: 4; smoke 1].
    #[arg(long)]
    pub max_attempts: Option<usize>,
    /// Orders per scale-out run [default: 2000; smoke 100].
    #[arg(long)]
    pub scale_orders: Option<usize>,
    /// Payment instance counts of the scale-out runs [default: 1,2,4; smoke 1,2].
    #[arg(long, value_delimiter = ',')]
    pub scale: Option<Vec<usize>>,
    /// Payment delay per charge in the scale-out runs (ORDERFLOW_DELAY_MS_PAYMENT).
    #[arg(long, default_value_t = 10)]
    pub scale_delay_ms: u64,
    /// Synchronous service calls per round-trip measurement [default: 300; smoke 20].
    #[arg(long)]
    pub calls: Option<usize>,
    /// Skip the supplementary scale-out with one charge at a time per payment instance
    /// (ORDERFLOW_PREFETCH=1 on payment); the smoke run always skips it.
    #[arg(long)]
    pub no_serial_scale: bool,
    /// Hops of the relay's chain [default: a multi-unit order's path through the workflow definition].
    #[arg(long, default_value_t = relay::multi_unit_hops())]
    pub hops: usize,
    /// Warm-up orders on every fresh stack before measuring [default: 50; smoke 10].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Compare two builds instead of the full run: saturated runs alternating between the
    /// binaries of --bin-dir (A) and of this folder (B), --reps of each.
    #[arg(long, value_name = "DIR")]
    pub compare_bin_dir: Option<PathBuf>,
    /// With --compare-bin-dir: place the orders in directed mode (the coordinator calls each
    /// node's service) instead of at intake.
    #[arg(long, requires = "compare_bin_dir")]
    pub directed: bool,
    /// Run only the soak: --soak-orders orders open loop at --soak-rate, a row of figures every
    /// --soak-every seconds (throughput, latency, every process's memory, the tracker's store).
    #[arg(long)]
    pub soak: bool,
    /// Run only the data domains' figures: orders/s of orders placed by reference (intake reads
    /// the domains) beside self-contained orders, alternating (--reps pairs of --orders each), and
    /// the latency of a customer lookup at a replica and at the primary.
    #[arg(long)]
    pub domains: bool,
    /// The domains' seed files (--domains).
    #[arg(long, default_value = "data/domains")]
    pub seed_dir: PathBuf,
    /// Orders of the soak.
    #[arg(long, default_value_t = 100_000)]
    pub soak_orders: usize,
    /// Orders per second of the soak [default: 70 % of a saturated run measured first].
    #[arg(long)]
    pub soak_rate: Option<f64>,
    /// Seconds between the soak's rows.
    #[arg(long, default_value_t = 60)]
    pub soak_every: u64,
    /// Skip the saturated runs on PostgreSQL (section 6).
    #[arg(long)]
    pub no_postgres: bool,
    /// The PostgreSQL server of section 6, as a URL of a database to connect to while creating
    /// each stack's own database (dropped after it).
    #[arg(long, env = "ORDERFLOW_BENCH_POSTGRES_URL", default_value = postgres::DEFAULT_ADMIN_URL)]
    pub postgres_admin_url: String,
    /// Extra environment for every orderflow process, KEY=VALUE (repeatable), e.g.
    /// ORDERFLOW_PICKLIST_FLUSH_MS=200.
    #[arg(long = "env", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// The counts and options of one bench run, after defaults.
#[derive(Clone, Debug)]
pub struct Plan {
    pub smoke: bool,
    pub reps: usize,
    pub relay: RelayConfig,
    pub burst_orders: usize,
    pub in_flight: usize,
    pub warmup: usize,
    pub open_secs: f64,
    pub max_attempts: usize,
    pub scale_orders: usize,
    pub scale: Vec<usize>,
    pub scale_delay_ms: u64,
    pub serial_scale: bool,
    pub calls: usize,
    /// A fresh stack (vhost, processes, stores) per measurement; the smoke run shares them.
    pub fresh_stacks: bool,
    pub env: Vec<(String, String)>,
    pub bin_dir: PathBuf,
}

impl Plan {
    fn from_args(args: &Args) -> Plan {
        let pick = |value: Option<usize>, full: usize, smoke: usize| {
            value.unwrap_or(if args.smoke { smoke } else { full })
        };
        let prefetch = args
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "ORDERFLOW_PREFETCH")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(64);
        Plan {
            smoke: args.smoke,
            reps: pick(args.reps, 3, 1).max(1),
            relay: RelayConfig {
                hops: args.hops.max(1),
                chains: pick(args.relay_chains, 6000, 300).max(20),
                prefetch,
                in_flight: pick(args.in_flight, 1000, 100).max(load::WINDOW),
            },
            burst_orders: pick(args.orders, 4000, 200).max(20),
            in_flight: pick(args.in_flight, 1000, 100).max(load::WINDOW),
            warmup: pick(args.warmup, 50, 10),
            open_secs: args.open_secs.unwrap_or(if args.smoke { 2.0 } else { 20.0 }).max(0.5),
            max_attempts: pick(args.max_attempts, 4, 1).max(1),
            scale_orders: pick(args.scale_orders, 2000, 100).max(20),
            scale: args.scale.clone().unwrap_or_else(|| if args.smoke { vec![1, 2] } else { vec![1, 2, 4] }),
            scale_delay_ms: args.scale_delay_ms,
            serial_scale: !args.smoke && !args.no_serial_scale,
            calls: pick(args.calls, 300, 20).max(5),
            fresh_stacks: !args.smoke,
            env: args.env.clone(),
            bin_dir: args.bin_dir.clone(),
        }
    }

    /// The value of a setting of the orderflow processes: `--env`, else the default.
    pub fn setting(&self, key: &str, default: &str) -> String {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| default.into())
    }
}

/// One saturating pair: the relay and orderflow, measured back to back,
/// then orderflow with its stores on PostgreSQL (unless skipped).
pub struct Pair {
    pub relay_first: bool,
    pub relay: RelayResult,
    pub orderflow: RunResult,
    pub postgres: Option<RunResult>,
}

/// A scale-out measurement.
pub struct ScalePoint {
    pub instances: usize,
    pub serial: bool,
    pub run: RunResult,
}

/// Directed mode beside autonomous, and synchronous calls.
pub struct Directed {
    pub saturated: RunResult,
    /// Open loop at the autonomous half rate.
    pub half: RunResult,
    pub calls_idle: stats::Dist,
    pub calls_loaded: stats::Dist,
    /// The autonomous saturated run the loaded calls ran beside.
    pub loaded_by: RunResult,
}

pub struct Results {
    pub directed: Directed,
    pub pairs: Vec<Pair>,
    /// Open-loop attempts at the maximum rate, in order; the last one is reported.
    pub max_attempts: Vec<RunResult>,
    pub half: RunResult,
    pub scale: Vec<ScalePoint>,
}

/// Takes the reusable stack or starts a fresh one (and warms it up).
async fn acquire(
    slot: &mut Option<Stack>,
    plan: &Plan,
    config: &BenchConfig,
    tag: &str,
) -> anyhow::Result<Stack> {
    if let Some(stack) = slot.take() {
        if !plan.fresh_stacks {
            return Ok(stack);
        }
        stack.shutdown().await?;
    }
    let mut stack = Stack::start(config, tag).await.with_context(|| format!("starting the {tag} stack"))?;
    orderflow::warm_up(&mut stack, plan.warmup)
        .await
        .with_context(|| format!("warming the {tag} stack up"))?;
    Ok(stack)
}

/// Keeps the stack for the next measurement, or stops it.
async fn release(slot: &mut Option<Stack>, plan: &Plan, stack: Stack) -> anyhow::Result<()> {
    if plan.fresh_stacks {
        stack.shutdown().await
    } else {
        *slot = Some(stack);
        Ok(())
    }
}

async fn measure(
    slot: &mut Option<Stack>,
    plan: &Plan,
    config: &BenchConfig,
    tag: &str,
    orders: usize,
    load: Load,
    phase: &str,
) -> anyhow::Result<RunResult> {
    let mut stack = acquire(slot, plan, config, tag).await?;
    let run = orderflow::measure(&mut stack, load::orders(orders), load, Route::Autonomous, phase).await?;
    release(slot, plan, stack).await?;
    Ok(run)
}

/// A saturated run on a fresh stack whose stores are all in a fresh
/// PostgreSQL database; `None` (with a note) when the server cannot be reached.
async fn measure_on_postgres(
    plan: &Plan,
    config: &BenchConfig,
    admin_url: &str,
    rep: usize,
) -> anyhow::Result<Option<RunResult>> {
    let tag = format!("pg-{rep}");
    let database = match postgres::Database::create(admin_url, &config.run_id, &tag).await {
        Ok(database) => database,
        Err(error) => {
            note(&format!("  PostgreSQL skipped: {error:#}"));
            return Ok(None);
        }
    };
    let mut stack_config = config.stack.clone();
    stack_config.env.push(("DATABASE_URL".into(), database.url.clone()));
    let config = BenchConfig { stack: stack_config, ..config.clone() };
    let phase = format!("orderflow saturated on PostgreSQL {rep}/{}", plan.reps);
    let load = Load::Saturated(plan.in_flight);
    let started = acquire(&mut None, plan, &config, &tag).await;
    let run = match started {
        Ok(mut stack) => {
            let orders = load::orders(plan.burst_orders);
            let run = orderflow::measure(&mut stack, orders, load, Route::Autonomous, &phase).await;
            stack.shutdown().await.and(run)
        }
        Err(error) => Err(error),
    };
    database.drop_now().await?;
    Ok(Some(run?))
}

/// Directed mode saturated and at `half_rate`, and synchronous calls idle
/// and beside a saturated autonomous run, on one stack.
async fn measure_directed(plan: &Plan, config: &BenchConfig, half_rate: f64) -> anyhow::Result<Directed> {
    let mut stack = Stack::start(config, "directed").await.context("starting the directed stack")?;
    orderflow::warm_up_on(&mut stack, plan.warmup, Route::Directed).await?;
    let load = Load::Saturated(plan.in_flight);
    let phase = "directed mode saturated";
    let saturated =
        orderflow::measure(&mut stack, load::orders(plan.burst_orders), load, Route::Directed, phase).await?;
    let orders = ((half_rate * plan.open_secs).ceil() as usize).max(10);
    let phase = format!("directed mode open loop at {half_rate:.0}/s (the autonomous half rate)");
    let half = orderflow::measure(
        &mut stack,
        load::orders(orders),
        Load::OpenLoop(half_rate),
        Route::Directed,
        &phase,
    )
    .await?;
    let caller = stack.connect("orderflow-bench-calls").await?;
    let user = stack.user();
    let progress = progress::Progress::start("synchronous calls, idle stack");
    let calls_idle = calls::round_trips(&caller, &user, plan.calls).await?;
    progress.finish(&format!("round trip p50 {:.1} ms, p99 {:.1} ms", calls_idle.p50, calls_idle.p99));
    let phase = "orderflow saturated, with synchronous calls beside it";
    let (loaded_by, calls_loaded) = tokio::join!(
        orderflow::measure(&mut stack, load::orders(plan.burst_orders), load, Route::Autonomous, phase),
        async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            calls::round_trips(&caller, &user, plan.calls).await
        }
    );
    let (loaded_by, calls_loaded) = (loaded_by?, calls_loaded?);
    note(&format!(
        "  calls under load: round trip p50 {:.1} ms, p99 {:.1} ms",
        calls_loaded.p50, calls_loaded.p99
    ));
    let _ = caller.close(200, "calls done".into()).await;
    stack.shutdown().await?;
    Ok(Directed { saturated, half, calls_idle, calls_loaded, loaded_by })
}

/// Runs what `args` asks for: an A/B comparison, a soak, the domains run,
/// or the main benchmark, and publishes its report.
async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args);
    stack::check_binaries(&plan.bin_dir)?;
    let broker = Broker::new(&args.amqp_url, &args.mgmt_url)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let versions = broker.versions().await;
    let started = chrono::Utc::now();
    note(&format!(
        "orderflow-bench {} run {run_id}: {} on {}",
        if plan.smoke { "smoke" } else { "full" },
        versions,
        machine::describe()
    ));
    let mut stack_config = StackConfig::new(broker.clone(), plan.bin_dir.clone());
    stack_config.env = plan.env.clone();
    // Measured at the processes' default log level; a failed run's logs stay for a look.
    stack_config.pass_rust_log = false;
    stack_config.keep_run_dir_on_drop = true;
    let config = BenchConfig { stack: stack_config, run_id: run_id.clone() };
    let markdown = if let Some(other) = &args.compare_bin_dir {
        run_compare(&plan, &config, (other, args.directed), started, &versions).await?
    } else if args.soak {
        run_soak(&args, &plan, &config, started, &versions).await?
    } else if args.domains {
        run_domains(&args, &plan, &config, started, &versions).await?
    } else {
        run_main(&args, &plan, &config, &broker, started, versions).await?
    };
    publish(&markdown, args.report.as_deref())
}

/// A report of one mode under its title: the day, the broker and machine,
/// how to rerun it (`rerun`, may be empty), then `body`.
fn headed(
    title: &str,
    started: chrono::DateTime<chrono::Utc>,
    versions: &str,
    rerun: &str,
    body: &str,
) -> String {
    format!(
        "# {title}, {}\n\n{versions} on {}{rerun}\n\n{body}",
        started.format("%Y-%m-%d"),
        machine::describe()
    )
}

/// The A/B of this build's binaries against `other`'s.
async fn run_compare(
    plan: &Plan,
    config: &BenchConfig,
    (other, directed): (&std::path::Path, bool),
    started: chrono::DateTime<chrono::Utc>,
    versions: &str,
) -> anyhow::Result<String> {
    stack::check_binaries(other)?;
    let route = if directed { load::Route::Directed } else { load::Route::Autonomous };
    let sizes = compare::Sizes {
        reps: plan.reps,
        orders: plan.burst_orders,
        in_flight: plan.in_flight,
        warmup: plan.warmup,
    };
    let comparison = compare::run(config, other.to_path_buf(), sizes, route).await?;
    Ok(headed("orderflow A/B", started, versions, "", &compare::markdown(&comparison)))
}

/// The long soak: memory and latency over time at a steady rate.
async fn run_soak(
    args: &Args,
    plan: &Plan,
    config: &BenchConfig,
    started: chrono::DateTime<chrono::Utc>,
    versions: &str,
) -> anyhow::Result<String> {
    let every = std::time::Duration::from_secs(args.soak_every.max(1));
    let result = soak::run(config, args.soak_orders.max(10), args.soak_rate, every, plan.warmup).await?;
    let rerun = "; rerun: `scripts/bench.sh SOAK.md --soak`";
    Ok(headed("orderflow soak", started, versions, rerun, &soak::markdown(&result)))
}

/// orderflow with its data domains seeded and asked.
async fn run_domains(
    args: &Args,
    plan: &Plan,
    config: &BenchConfig,
    started: chrono::DateTime<chrono::Utc>,
    versions: &str,
) -> anyhow::Result<String> {
    let lookups = if plan.smoke { 50 } else { 2000 };
    let result = domains::run(
        config,
        &args.seed_dir,
        plan.reps,
        plan.burst_orders,
        plan.in_flight,
        plan.warmup,
        lookups,
    )
    .await?;
    let rerun = "; rerun: `scripts/bench.sh DOMAINS.md --domains`";
    Ok(headed("orderflow and its data domains", started, versions, rerun, &domains::markdown(&result)))
}

/// The main benchmark: relay and orderflow in pairs, the maximum sustainable
/// rate and half of it, directed mode, and scale-out.
async fn run_main(
    args: &Args,
    plan: &Plan,
    config: &BenchConfig,
    broker: &Broker,
    started: chrono::DateTime<chrono::Utc>,
    versions: String,
) -> anyhow::Result<String> {
    let mut main_stack: Option<Stack> = None;
    let pairs = measure_pairs(args, plan, config, broker, &mut main_stack).await?;
    let saturated = stats::median(&pairs.iter().map(|p| p.orderflow.throughput.per_sec).collect::<Vec<_>>());
    let max_attempts = find_max_rate(plan, config, &mut main_stack, saturated).await?;
    let max_rate = match max_attempts.last().map(|r| r.load) {
        Some(Load::OpenLoop(rate)) => rate,
        _ => saturated,
    };
    // 2b: half of it.
    let half_rate = (max_rate / 2.0).max(1.0);
    let orders = ((half_rate * plan.open_secs).ceil() as usize).max(10);
    let phase = format!("orderflow open loop at {half_rate:.0}/s (half)");
    let half =
        measure(&mut main_stack, plan, config, "half", orders, Load::OpenLoop(half_rate), &phase).await?;
    if let Some(stack) = main_stack.take() {
        stack.shutdown().await?;
    }

    // 5: directed mode beside autonomous; a service call's round trip.
    let directed = measure_directed(plan, config, half_rate).await?;
    let scale = measure_scale(plan, config).await?;
    let results = Results { directed, pairs, max_attempts, half, scale };
    let context = report::Context {
        plan,
        started,
        finished: chrono::Utc::now(),
        machine: machine::describe(),
        versions,
        bin_dir: plan.bin_dir.display().to_string(),
    };
    Ok(report::markdown(&context, &results))
}

/// 1 and 2: the relay and orderflow saturated, alternating (ABBA) so that drift cancels.
async fn measure_pairs(
    args: &Args,
    plan: &Plan,
    config: &BenchConfig,
    broker: &Broker,
    main_stack: &mut Option<Stack>,
) -> anyhow::Result<Vec<Pair>> {
    let run_id = &config.run_id;
    let mut pairs = Vec::new();
    for rep in 1..=plan.reps {
        let relay_first = rep % 2 == 1;
        let mut relay_result = None;
        let mut orderflow_result = None;
        for relay_turn in [relay_first, !relay_first] {
            if relay_turn {
                let tag = format!("relay-{rep}");
                relay_result = Some(relay::run(broker, run_id, &tag, &plan.relay).await?);
            } else {
                let (tag, phase) =
                    (format!("burst-{rep}"), format!("orderflow saturated {rep}/{}", plan.reps));
                let run = measure(
                    main_stack,
                    plan,
                    config,
                    &tag,
                    plan.burst_orders,
                    Load::Saturated(plan.in_flight),
                    &phase,
                )
                .await?;
                orderflow_result = Some(run);
            }
        }
        let (relay, orderflow) = (relay_result.expect("relay ran"), orderflow_result.expect("orderflow ran"));
        note(&format!(
            "  pair {rep}: relay {:.0} chains/s, orderflow {:.0} orders/s, ratio {:.2}",
            relay.throughput.per_sec,
            orderflow.throughput.per_sec,
            orderflow.throughput.per_sec / relay.throughput.per_sec
        ));
        let postgres = if args.no_postgres {
            None
        } else {
            measure_on_postgres(plan, config, &args.postgres_admin_url, rep).await?
        };
        pairs.push(Pair { relay_first, relay, orderflow, postgres });
    }

    Ok(pairs)
}

/// 2a: the maximum sustainable rate, open loop, starting at the saturated
/// throughput and stepping down 10 % until it is sustained.
async fn find_max_rate(
    plan: &Plan,
    config: &BenchConfig,
    main_stack: &mut Option<Stack>,
    saturated: f64,
) -> anyhow::Result<Vec<RunResult>> {
    let mut max_attempts: Vec<RunResult> = Vec::new();
    for attempt in 0..plan.max_attempts {
        let rate = (saturated * (1.0 - 0.1 * attempt as f64)).max(1.0);
        let orders = ((rate * plan.open_secs).ceil() as usize).max(10);
        let tag = format!("max-{}", attempt + 1);
        let phase = format!("orderflow open loop at {rate:.0}/s (maximum, attempt {})", attempt + 1);
        let run = measure(main_stack, plan, config, &tag, orders, Load::OpenLoop(rate), &phase).await?;
        let sustained = run.sustained();
        max_attempts.push(run);
        if sustained {
            break;
        }
        if attempt + 1 < plan.max_attempts {
            note("  not sustained (completions behind the offered rate, growing latency or publisher lag): 10 % lower");
        }
    }
    Ok(max_attempts)
}

/// 4: scale-out of a slowed payment node.
async fn measure_scale(plan: &Plan, config: &BenchConfig) -> anyhow::Result<Vec<ScalePoint>> {
    let mut scale = Vec::new();
    let variants: &[bool] = if plan.serial_scale { &[false, true] } else { &[false] };
    for &serial in variants {
        let mut binary_env = vec![(
            "payment".to_string(),
            "ORDERFLOW_DELAY_MS_PAYMENT".to_string(),
            plan.scale_delay_ms.to_string(),
        )];
        if serial {
            binary_env.push(("payment".into(), "ORDERFLOW_PREFETCH".into(), "1".into()));
        }
        let config =
            BenchConfig { stack: StackConfig { binary_env, ..config.stack.clone() }, ..config.clone() };
        let mut scale_stack: Option<Stack> = None;
        for &instances in &plan.scale {
            let suffix = if serial { "-serial" } else { "" };
            let tag = format!("scale-{instances}{suffix}");
            let mut stack = acquire(&mut scale_stack, plan, &config, &tag).await?;
            let load = Load::Saturated(plan.in_flight);
            let running = stack.processes.iter().filter(|p| p.binary == "payment").count();
            stack.scale("payment", instances).await?;
            if running < instances {
                orderflow::warm_up(&mut stack, plan.warmup).await?;
            }
            let phase = format!(
                "scale-out, {instances} payment instance{}{}",
                if instances == 1 { "" } else { "s" },
                if serial { " (one charge at a time each)" } else { "" }
            );
            let orders = load::orders(plan.scale_orders);
            let run = orderflow::measure(&mut stack, orders, load, Route::Autonomous, &phase).await?;
            release(&mut scale_stack, plan, stack).await?;
            scale.push(ScalePoint { instances, serial, run });
        }
        if let Some(stack) = scale_stack.take() {
            stack.shutdown().await?;
        }
    }

    Ok(scale)
}

/// Prints a report and writes it to `path` when one is given.
fn publish(markdown: &str, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{markdown}");
    if let Some(path) = path {
        std::fs::write(path, markdown)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        note(&format!("report written to {}", path.display()));
    }
    Ok(())
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = term.recv() => "terminated (SIGTERM)",
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // On a signal the run is dropped: its stacks kill their processes and every vhost is deleted.
    let outcome = tokio::select! {
        outcome = run(args) => outcome,
        why = interrupted() => Err(anyhow::anyhow!("{why}; cleaned up")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\norderflow-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
