//! `orderflow status`, `watch` and `wait`: reading the pipeline's progress
//! from the tracker, by polling, as the manifesto prefers.

use crate::tracker_client::TrackerClient;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use shared::settings::Settings;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub async fn status(settings: &Settings, id: &str, as_json: bool) -> anyhow::Result<()> {
    let view = TrackerClient::new(settings).order(id).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let terminal = if view["terminal"].as_bool() == Some(true) { " (terminal)" } else { "" };
    println!(
        "order {}: {}{terminal}",
        view["order_id"].as_str().unwrap_or(id),
        view["state"].as_str().unwrap_or("?")
    );
    for entry in view["history"].as_array().into_iter().flatten() {
        println!(
            "  {:<27} {:<17} {:<11} {}",
            entry["at"].as_str().unwrap_or_default(),
            entry["state"].as_str().unwrap_or_default(),
            entry["node"].as_str().unwrap_or_default(),
            entry["detail"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn counts_line(stats: &Value) -> String {
    let mut parts: Vec<String> = stats["by_state"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(state, n)| format!("{state}={n}"))
        .collect();
    parts.push(format!("total={}", stats["orders"]));
    parts.join("  ")
}

pub async fn watch(settings: &Settings, once: bool) -> anyhow::Result<()> {
    let client = TrackerClient::new(settings);
    if once {
        println!("{}", counts_line(&client.stats().await?));
        return Ok(());
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    loop {
        match client.stats().await {
            Ok(stats) => spinner.set_message(counts_line(&stats)),
            Err(error) => spinner.set_message(format!("{error:#}")),
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
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            Uuid::parse_str(l).map_err(|_| anyhow::anyhow!("line {}: {l:?} is not an order id", i + 1))
        })
        .collect()
}

/// Polls until every order is terminal; `Ok(false)` on timeout.
pub async fn wait(settings: &Settings, ids_file: &Path, timeout_secs: f64) -> anyhow::Result<bool> {
    let ids = read_ids(ids_file)?;
    let client = TrackerClient::new(settings);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} terminal [{bar:30}] {pos}/{len} orders  {msg}")
            .expect("valid template"),
    );
    loop {
        let found = client.statuses(&ids).await.unwrap_or_default();
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
            println!("{}", json!(counts));
            if !done {
                eprintln!(
                    "timed out after {timeout_secs} s: {} of {} orders are terminal",
                    terminal,
                    ids.len()
                );
            }
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
