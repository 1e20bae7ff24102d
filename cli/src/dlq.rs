//! `orderflow dlq list | replay | discard`: what is dead-lettered and why,
//! sending it back to where it failed, exactly once, and removing it.

use crate::exit::Outcome;
use anyhow::Context;
use shared::settings::Settings;
use shared::text::escaped as safe;
use transport::{connect, dead_letters};

async fn open(settings: &Settings) -> anyhow::Result<lapin::Connection> {
    connect(&settings.amqp_url, "orderflow-dlq")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))
}

pub async fn list(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let connection = open(settings).await?;
    let letters = dead_letters::list(&connection).await?;
    let _ = connection.close(200, "done".into()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("the dead-letter queue is empty");
    } else {
        println!("{} dead letters by reason:", letters.len());
        for (reason, count) in dead_letters::by_reason(&letters) {
            println!(
                "{count:>6}  {}",
                if reason.is_empty() { "(no reason given)".into() } else { safe(&reason) }
            );
        }
        println!();
    }
    for l in &letters {
        println!(
            "{}  order {}  node {}  {} -> {}  at {}{}\n    reason: {}",
            safe(&l.message_id),
            if l.order_id.is_empty() { "?".into() } else { safe(&l.order_id) },
            safe(&l.node),
            safe(&l.exchange),
            safe(&l.routing_key),
            safe(&l.dead_lettered_at),
            if l.replays > 0 { format!("  (replayed {} times before)", l.replays) } else { String::new() },
            safe(&l.reason)
        );
    }
    Ok(())
}

/// Sends dead letters back; [`Outcome::Declined`] when none could be.
pub async fn replay(settings: &Settings, target: Option<String>, force: bool) -> anyhow::Result<Outcome> {
    let connection = open(settings).await?;
    let report = dead_letters::replay(&connection, settings, target.as_deref(), force).await?;
    let _ = connection.close(200, "done".into()).await;
    for l in &report.replayed {
        println!(
            "replayed {} (order {}) to queue {}",
            safe(&l.message_id),
            safe(&l.order_id),
            safe(&l.queue)
        );
    }
    for s in &report.skipped {
        let l = &s.letter;
        let id = if l.message_id.is_empty() { "(no message id)".into() } else { safe(&l.message_id) };
        println!("skipped {id} from node {}: {}", safe(&l.node), safe(&s.reason));
    }
    if report.dropped_duplicates > 0 {
        println!("dropped {} duplicate copies of messages sent back in this run", report.dropped_duplicates);
    }
    println!(
        "done: {} of {} dead letters sent back, {} skipped (left in the queue), {} duplicate copies dropped",
        report.replayed.len(),
        report.snapshot,
        report.skipped.len(),
        report.dropped_duplicates
    );
    if report.replayed.is_empty() {
        eprintln!("nothing to replay{}", target.map(|t| format!(" for {}", safe(&t))).unwrap_or_default());
        return Ok(Outcome::Declined);
    }
    Ok(Outcome::Done)
}

pub async fn discard(settings: &Settings, selection: dead_letters::Selection) -> anyhow::Result<()> {
    let connection = open(settings).await?;
    let discarded = dead_letters::discard(&connection, &selection).await?;
    let _ = connection.close(200, "done".into()).await;
    for l in &discarded {
        let id = if l.message_id.is_empty() { "(no message id)".into() } else { safe(&l.message_id) };
        println!("discarded {id} (node {}): {}", safe(&l.node), safe(&l.reason));
    }
    println!("discarded {} dead letters", discarded.len());
    Ok(())
}
