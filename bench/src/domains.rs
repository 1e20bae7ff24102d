//! `--domains`: the data domains' cost, in one run on one stack with the
//! domains started and seeded (`data/domains`, through `orderflow domains
//! seed`): orders per second of orders placed by reference (intake reads
//! the customer and each SKU from the domains) beside self-contained orders,
//! alternating (ABAB) so that drift cancels; and the latency of a customer
//! lookup at a replica (and at the primary), one request at a time on
//! direct reply-to.

use crate::load::Route;
use crate::orderflow::{measure, warm_up, Load, RunResult};
use crate::stack::{BenchConfig, Stack};
use crate::stats::Dist;
use rand::{Rng, SeedableRng};
use shared::order::{Order, PaymentCard, ShipTo};
use std::time::{Duration, Instant};
use topology::DomainCopy;
use transport::domain_client::DomainClient;

pub struct DomainsResult {
    /// (self-contained, by reference) per repetition.
    pub pairs: Vec<(RunResult, RunResult)>,
    pub lookup_replica: Dist,
    pub lookup_primary: Dist,
}

/// Seeded customers with a card on file (every fourth has none: see `scripts/seed-data.py`).
fn customer_with_card(rng: &mut impl Rng) -> String {
    loop {
        let n = rng.gen_range(1..=2000);
        if n % 4 != 0 {
            return format!("C-{n:06}");
        }
    }
}

/// The same orders placed by reference: a seeded customer, no address, no card.
fn by_reference(orders: Vec<Order>) -> Vec<Order> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    orders
        .into_iter()
        .map(|order| Order {
            customer_id: customer_with_card(&mut rng),
            ship_to: ShipTo::default(),
            payment: PaymentCard::default(),
            ..order
        })
        .collect()
}

async fn lookups(client: &DomainClient, copy: DomainCopy, n: usize) -> anyhow::Result<Dist> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let id = format!("C-{:06}", rng.gen_range(1..=2000));
        let started = Instant::now();
        client
            .call(copy, &serde_json::json!({"op": "get", "customer_id": id}), None, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("a lookup at {} failed: {e}", copy.label()))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Dist::of_ms(&times))
}

pub async fn run(
    config: &BenchConfig,
    seed_dir: &std::path::Path,
    reps: usize,
    orders: usize,
    in_flight: usize,
    warmup: usize,
    lookups_n: usize,
) -> anyhow::Result<DomainsResult> {
    let mut stack = Stack::start(config, "domains").await?;
    stack.start_domains().await?;
    let seeded = stack.command("orderflow").args(["domains", "seed", "--dir"]).arg(seed_dir).output()?;
    anyhow::ensure!(seeded.status.success(), "seeding failed: {}", String::from_utf8_lossy(&seeded.stderr));
    crate::progress::note("  domains seeded (2,000 customers, 506 catalog items, 5 distributors)");
    warm_up(&mut stack, warmup).await?;
    let mut pairs = Vec::new();
    for rep in 1..=reps {
        let plain = crate::load::orders(orders);
        let referenced = by_reference(crate::load::orders(orders));
        let load = Load::Saturated(in_flight);
        let a = measure(&mut stack, plain, load, Route::Autonomous, &format!("self-contained {rep}/{reps}"))
            .await?;
        let b =
            measure(&mut stack, referenced, load, Route::Autonomous, &format!("by reference {rep}/{reps}"))
                .await?;
        crate::progress::note(&format!(
            "  pair {rep}: self-contained {:.0} orders/s, by reference {:.0} orders/s, ratio {:.2}",
            a.throughput.per_sec,
            b.throughput.per_sec,
            b.throughput.per_sec / a.throughput.per_sec
        ));
        pairs.push((a, b));
    }
    let connection = stack.connect("orderflow-bench-lookups").await?;
    let client = DomainClient::open(&connection, &stack.user()).await?;
    let uk = DomainCopy::find("customer", Some("uk")).expect("the uk replica");
    let lookup_replica = lookups(&client, uk, lookups_n).await?;
    let lookup_primary = lookups(&client, DomainCopy::primary("customer"), lookups_n).await?;
    client.close().await;
    let _ = connection.close(200, "looked up".into()).await;
    stack.shutdown().await?;
    Ok(DomainsResult { pairs, lookup_replica, lookup_primary })
}

pub fn markdown(result: &DomainsResult) -> String {
    let mut text = String::from(
        "## Orders by reference (intake reads the domains) beside self-contained orders\n\n\
         | pair | self-contained orders/s | by reference orders/s | ratio | p50 self / by ref (ms) |\n|---|---|---|---|---|\n",
    );
    let mut ratios = Vec::new();
    for (i, (a, b)) in result.pairs.iter().enumerate() {
        let ratio = b.throughput.per_sec / a.throughput.per_sec;
        ratios.push(ratio);
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {ratio:.2} | {:.0} / {:.0} |\n",
            i + 1,
            a.throughput.per_sec,
            b.throughput.per_sec,
            a.total.p50,
            b.total.p50
        ));
    }
    text.push_str(&format!(
        "\nMedian ratio {:.2}.\n\n## Customer lookup, one request at a time (direct reply-to)\n\n\
         | copy | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n\
         | customer@uk (replica) | {} | {:.2} | {:.2} | {:.2} |\n| customer (primary) | {} | {:.2} | {:.2} | {:.2} |\n",
        crate::stats::median(&ratios),
        result.lookup_replica.n,
        result.lookup_replica.p50,
        result.lookup_replica.p99,
        result.lookup_replica.max,
        result.lookup_primary.n,
        result.lookup_primary.p50,
        result.lookup_primary.p99,
        result.lookup_primary.max,
    ));
    text
}
