//! The bench's output: a markdown report, ready to paste into BENCHMARKS.md,
//! with the summary against the targets, every run's figures, the
//! machine and how to rerun.

mod sections;
mod summary;

use crate::orderflow::RunResult;
use crate::stats::{median, Dist};
use crate::{Plan, Results};
use chrono::{DateTime, Utc};
use sections::{
    directed_section, orderflow_section, postgres_section, ratio_section, relay_section, rerun_section,
    scale_section,
};
use std::fmt::Write;
use summary::summary;

pub struct Context<'a> {
    pub plan: &'a Plan,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub machine: String,
    pub versions: String,
    pub bin_dir: String,
}

const MIB: f64 = 1024.0;
const RSS_TARGET_MIB: f64 = 20.0;
/// Issue 12's targets: orderflow's own CPU per 1,000 orders, and the half
/// rate's p99 outside the aggregation wait and in total (beyond the flush).
const CPU_TARGET_S: f64 = 1.0;
const OUTSIDE_P99_TARGET_MS: f64 = 50.0;
const TOTAL_P99_SLACK_MS: f64 = 60.0;

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

/// The figures the summary and the sections share, computed once.
struct Figures<'a> {
    flush_ms: f64,
    relay_rates: Vec<f64>,
    orderflow_rates: Vec<f64>,
    /// orderflow / relay of each pair.
    ratios: Vec<f64>,
    ratio: f64,
    /// The saturated runs, the open-loop attempts and the half-rate run.
    main_runs: Vec<&'a RunResult>,
    /// orderflow's saturated runs.
    saturated: Vec<&'a RunResult>,
    /// orderflow's and the broker's CPU per 1,000 orders, saturated (median).
    cpu_ours: f64,
    cpu_broker: f64,
}

impl<'a> Figures<'a> {
    fn of(plan: &Plan, results: &'a Results) -> Figures<'a> {
        let flush_ms: f64 = plan.setting("ORDERFLOW_PICKLIST_FLUSH_MS", "500").parse().unwrap_or(500.0);
        let relay_rates: Vec<f64> = results.pairs.iter().map(|p| p.relay.throughput.per_sec).collect();
        let orderflow_rates: Vec<f64> =
            results.pairs.iter().map(|p| p.orderflow.throughput.per_sec).collect();
        let ratios: Vec<f64> = results
            .pairs
            .iter()
            .map(|p| p.orderflow.throughput.per_sec / p.relay.throughput.per_sec)
            .collect();
        let main_runs: Vec<&RunResult> = results
            .pairs
            .iter()
            .map(|p| &p.orderflow)
            .chain(&results.max_attempts)
            .chain(std::iter::once(&results.half))
            .collect();
        let saturated: Vec<&RunResult> = results.pairs.iter().map(|p| &p.orderflow).collect();
        let cpu_ours = median(&saturated.iter().map(|r| r.cpu_ours_per_1000).collect::<Vec<_>>());
        let cpu_broker = median(&saturated.iter().map(|r| r.cpu_broker_per_1000).collect::<Vec<_>>());
        Figures {
            flush_ms,
            ratio: median(&ratios),
            relay_rates,
            orderflow_rates,
            ratios,
            main_runs,
            saturated,
            cpu_ours,
            cpu_broker,
        }
    }

    /// Peak RSS of process `name` over the main runs (not the slowed scale-out ones).
    fn peak_rss(&self, name: &str) -> f64 {
        peak_rss_mib(self.main_runs.iter().copied(), name)
    }

    /// The process with the largest peak RSS, and that RSS.
    fn worst_rss(&self) -> (&'static str, f64) {
        harness::processes().into_iter().map(|n| (n, self.peak_rss(n))).fold(("", 0.0), |a, b| {
            if b.1 > a.1 {
                b
            } else {
                a
            }
        })
    }

    /// Median CPU of process `name` per 1,000 orders over the saturated runs.
    fn cpu_of(&self, name: &str) -> f64 {
        median(
            &self
                .saturated
                .iter()
                .map(|r| {
                    r.cpu_per_process.iter().filter(|(l, _)| process_name(l) == name).map(|(_, c)| c).sum()
                })
                .collect::<Vec<f64>>(),
        )
    }
}

/// How much faster `n` instances ran than one, if both were measured.
fn speedup(points: &[&crate::ScalePoint], n: usize) -> Option<f64> {
    let base = points.iter().find(|s| s.instances == 1)?.run.throughput.per_sec;
    Some(points.iter().find(|s| s.instances == n)?.run.throughput.per_sec / base)
}

/// The report in markdown: its header, the summary against the targets, and
/// one section per measurement.
pub fn markdown(context: &Context, results: &Results) -> String {
    let plan = context.plan;
    let figures = Figures::of(plan, results);
    let mut out = String::new();
    header(&mut out, context, &figures);
    summary(&mut out, plan, results, &figures);
    relay_section(&mut out, plan, results);
    orderflow_section(&mut out, plan, results);
    ratio_section(&mut out, results, &figures);
    scale_section(&mut out, plan, results);
    directed_section(&mut out, plan, results);
    postgres_section(&mut out, results);
    rerun_section(&mut out);
    out
}

/// When, on what, with which settings and load.
fn header(o: &mut String, context: &Context, figures: &Figures) {
    let plan = context.plan;
    let flush_ms = figures.flush_ms;
    let main_runs = &figures.main_runs;
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
}
