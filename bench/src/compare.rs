//! `orderflow-bench --compare-bin-dir OTHER`: the same saturated measurement
//! with two builds of orderflow's binaries (`--bin-dir` and OTHER),
//! alternating A B B A ... on fresh stacks, so that the machine's drift
//! cancels; prints each build's median throughput and CPU per 1,000
//! orders (its own processes and the broker's), each process's peak RSS
//! (the largest over the build's runs) and their ratios. It shows
//! what a change costs, such as a feature compiled in but switched off.
//! With `--directed`, the orders go through the coordinator instead.

use crate::load::{self, Route};
use crate::orderflow::{self, Load, RunResult};
use crate::report::{peak_rss_mib, process_name};
use crate::stack::{BenchConfig, Stack};
use crate::stats::median;
use std::path::PathBuf;

pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub runs_a: Vec<RunResult>,
    pub runs_b: Vec<RunResult>,
    pub route: Route,
}

/// How much each comparison runs: `reps` runs of each build, each of
/// `orders` with `in_flight` in flight after `warmup`.
pub struct Sizes {
    pub reps: usize,
    pub orders: usize,
    pub in_flight: usize,
    pub warmup: usize,
}

pub async fn run(config: &BenchConfig, b: PathBuf, sizes: Sizes, route: Route) -> anyhow::Result<Comparison> {
    let Sizes { reps, orders, in_flight, warmup } = sizes;
    let a = config.stack.bin_dir.clone();
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for rep in 0..reps * 2 {
        // A B B A A B ...: each build goes first as often as second.
        let use_b = matches!(rep % 4, 1 | 2);
        let mut config = config.clone();
        if use_b {
            config.stack.bin_dir = b.clone();
        }
        let tag = format!("compare-{rep}");
        let mut stack = Stack::start(&config, &tag).await?;
        orderflow::warm_up_on(&mut stack, warmup, route).await?;
        let name = if use_b { "B" } else { "A" };
        let phase = format!("compare: build {name}, run {}/{}", rep + 1, reps * 2);
        let run =
            orderflow::measure(&mut stack, load::orders(orders), Load::Saturated(in_flight), route, &phase)
                .await?;
        stack.shutdown().await?;
        if use_b {
            runs_b.push(run)
        } else {
            runs_a.push(run)
        }
    }
    Ok(Comparison { a, b, runs_a, runs_b, route })
}

/// The comparison as a markdown section.
pub fn markdown(c: &Comparison) -> String {
    let figures = |runs: &[RunResult]| {
        (
            median(&runs.iter().map(|r| r.throughput.per_sec).collect::<Vec<_>>()),
            median(&runs.iter().map(|r| r.cpu_ours_per_1000).collect::<Vec<_>>()),
            median(&runs.iter().map(|r| r.cpu_broker_per_1000).collect::<Vec<_>>()),
        )
    };
    let (a, b) = (figures(&c.runs_a), figures(&c.runs_b));
    let memory: String = harness::processes()
        .into_iter()
        .map(|name| {
            let (a, b) = (peak_rss_mib(&c.runs_a, name), peak_rss_mib(&c.runs_b, name));
            format!("| peak RSS, {name} (MiB) | {a:.1} | {b:.1} | {:.3} |\n", b / a)
        })
        .collect();
    // Each process's CPU tells a lever's effect apart from the machine's drift, which moves them all.
    let cpu_of = |runs: &[RunResult], name: &str| {
        median(
            &runs
                .iter()
                .map(|r| {
                    r.cpu_per_process.iter().filter(|(l, _)| process_name(l) == name).map(|(_, c)| c).sum()
                })
                .collect::<Vec<f64>>(),
        )
    };
    let cpu: String = harness::processes()
        .into_iter()
        .map(|name| {
            let (a, b) = (cpu_of(&c.runs_a, name), cpu_of(&c.runs_b, name));
            format!("| CPU s per 1,000 orders, {name} | {a:.3} | {b:.3} | {:.3} |\n", b / a)
        })
        .collect();
    let each = |runs: &[RunResult]| {
        runs.iter().map(|r| format!("{:.0}", r.throughput.per_sec)).collect::<Vec<_>>().join(", ")
    };
    format!(
        "## A/B: two builds, saturated, alternating{}\n\n\
         - A: `{}`\n- B: `{}`\n\n\
         | figure | A | B | B / A |\n|---|---:|---:|---:|\n\
         | orders/s (median; each run: A {}, B {}) | {:.0} | {:.0} | {:.3} |\n\
         | CPU s per 1,000 orders, orderflow's processes | {:.2} | {:.2} | {:.3} |\n\
         | CPU s per 1,000 orders, broker | {:.2} | {:.2} | {:.3} |\n{cpu}{memory}",
        if c.route == Route::Directed {
            ", directed mode (the coordinator through the services)"
        } else {
            ""
        },
        c.a.display(),
        c.b.display(),
        each(&c.runs_a),
        each(&c.runs_b),
        a.0,
        b.0,
        b.0 / a.0,
        a.1,
        b.1,
        b.1 / a.1,
        a.2,
        b.2,
        b.2 / a.2
    )
}
