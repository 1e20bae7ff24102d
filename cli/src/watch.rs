//! `orderflow status`, `watch` and `wait`: reading the pipeline's progress
//! from the tracker, by polling, as the manifesto prefers.

use crate::exit::Outcome;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shared::settings::Settings;
use shared::text::escaped as safe;
use shared::tracker_api::{Stats, TrackerClient};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn client(settings: &Settings) -> TrackerClient {
    TrackerClient::new(&settings.tracker_url())
}

pub async fn status(settings: &Settings, id: &Uuid, as_json: bool) -> anyhow::Result<()> {
    let view = client(settings).order(id).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let terminal = if view.terminal { " (terminal)" } else { "" };
    let trace = view.history.iter().find_map(|h| h.trace_id.as_deref());
    let trace = trace.map(|t| format!(" (trace {})", safe(t))).unwrap_or_default();
    println!("order {}: {}{terminal}{trace}", safe(&view.order_id), safe(&view.state));
    for entry in &view.history {
        let (at, state, node) = (safe(&entry.at), safe(&entry.state), safe(&entry.node));
        let mode = entry.mode.as_deref().map(|m| format!(" ({})", safe(m))).unwrap_or_default();
        println!("  {at:<27} {state:<17} {node:<11} {}{mode}", safe(&entry.detail));
    }
    Ok(())
}

fn counts_line(stats: &Stats) -> String {
    let mut parts: Vec<String> =
        stats.by_state.iter().map(|(state, n)| format!("{}={n}", safe(state))).collect();
    parts.push(format!("total={}", stats.orders));
    parts.join("  ")
}

pub async fn watch(settings: &Settings, once: bool) -> anyhow::Result<()> {
    let client = client(settings);
    if once {
        println!("{}", counts_line(&client.stats().await?));
        return Ok(());
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    loop {
        match client.stats().await {
            Ok(stats) => spinner.set_message(counts_line(&stats)),
            Err(error) => spinner.set_message(format!("{:#}", anyhow::Error::from(error))),
        }
        spinner.tick();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    spinner.finish();
    Ok(())
}

fn read_ids(path: &Path) -> anyhow::Result<Vec<Uuid>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ids = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Uuid::parse_str(l.trim())
                .map_err(|_| anyhow::anyhow!("line {}: {:?} is not an order id", i + 1, safe(l.trim())))
        })
        .collect::<anyhow::Result<Vec<Uuid>>>()?;
    anyhow::ensure!(!ids.is_empty(), "{} holds no order ids: nothing to wait for", path.display());
    Ok(ids)
}

/// Polls until every order is terminal ([`Outcome::Done`]), or the timeout
/// passes ([`Outcome::TimedOut`]; an error when the tracker did not answer).
pub async fn wait(settings: &Settings, ids_file: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
    let ids = read_ids(ids_file)?;
    let client = client(settings);
    let deadline = Instant::now() + timeout;
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} terminal [{bar:30}] {pos}/{len} orders  {msg}")
            .expect("valid template"),
    );
    let mut last_error: Option<String>;
    loop {
        // A tracker that does not answer is said, not shown as orders in state "unknown".
        let found = match client.statuses(&ids).await {
            Ok(found) => {
                last_error = None;
                bar.set_message("");
                found
            }
            Err(error) => {
                let message = format!("{:#}", anyhow::Error::from(error));
                bar.set_message(message.clone());
                last_error = Some(message);
                Default::default()
            }
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for id in &ids {
            let state =
                found.get(&id.to_string()).map(|s| s.state.clone()).unwrap_or_else(|| "unknown".into());
            *counts.entry(state).or_default() += 1;
        }
        let terminal = found.values().filter(|s| s.terminal).count();
        bar.set_position(terminal as u64);
        let done = terminal == ids.len();
        if done || Instant::now() >= deadline {
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&counts)?);
            if done {
                return Ok(Outcome::Done);
            }
            let seconds = timeout.as_secs_f64();
            let said =
                format!("timed out after {seconds} s: {terminal} of {} orders are terminal", ids.len());
            if let Some(error) = last_error {
                anyhow::bail!("{said}; the tracker's last answer: {error}");
            }
            eprintln!("{said}");
            return Ok(Outcome::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
