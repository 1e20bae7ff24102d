//! `orderflow domains promote COPY [--force]`: a replica becomes its
//! domain's primary when the primary is gone for good.
//!
//! 1. The primary must not answer (a primary that answers is not gone:
//!    stop it first). A copy already promoted says so and nothing changes.
//! 2. The replica must hold every change the primary made, as far as it
//!    last learned from the primary (`CopyStatus::lag`: how many, and which
//!    by number and key). Its feed is given `--wait-s` to drain; then a
//!    replica that still lacks changes is refused, unless `--force`, which
//!    promotes it and names the changes lost.
//! 3. The routes and grants move (`topology::promotion`, by the management
//!    API), then the copy is told its epoch: one more than any copy knows.
//!
//! Exits 0 when promoted (or already the primary), 4 when refused, 3 when
//! the replica does not answer.

use crate::domain_session::{failed, Session};
use crate::exit::Outcome;
use anyhow::Context;
use serde_json::json;
use shared::domains::{ChangeRef, CopyRequest, CopyStatus};
use shared::settings::Settings;
use shared::text::escaped;
use std::time::{Duration, Instant};
use topology::DomainCopy;
use transport::domain_client::ClientError;

/// How long the (gone) primary is given to answer.
const PRIMARY_SILENT: Duration = Duration::from_secs(3);

pub async fn promote(
    settings: &Settings,
    named: &str,
    force: bool,
    wait: Duration,
    json: bool,
) -> anyhow::Result<Outcome> {
    let Some(copy) = replica_named(named) else {
        let replicas: Vec<String> =
            DomainCopy::all().into_iter().filter(|c| c.region.is_some()).map(|c| c.process()).collect();
        eprintln!("no replica {:?}: one of {}", escaped(named), replicas.join(", "));
        return Ok(Outcome::Declined);
    };
    let session = Session::open(settings).await?;
    let outcome = promote_copy(settings, &session, copy, force, wait, json).await;
    session.close().await;
    outcome
}

/// A replica by process name (`customer-uk`) or label (`customer@uk`).
fn replica_named(named: &str) -> Option<DomainCopy> {
    DomainCopy::all()
        .into_iter()
        .filter(|copy| copy.region.is_some() && copy.own_process())
        .find(|copy| copy.process() == named || copy.label() == named)
}

async fn promote_copy(
    settings: &Settings,
    session: &Session,
    copy: DomainCopy,
    force: bool,
    wait: Duration,
    json: bool,
) -> anyhow::Result<Outcome> {
    let domain = copy.domain;
    let asked = CopyRequest::Status { after_seq: None }.to_json();
    let primary = DomainCopy::primary(domain);
    if let Ok(answer) = session.client.call_result(primary, &asked, None, PRIMARY_SILENT).await {
        if answer.service == copy.label() {
            println!("{} is already the primary of {domain}", copy.label());
            return Ok(Outcome::Done);
        }
        eprintln!(
            "refused: {} answers as the primary of {domain}; promotion is for a primary that is gone \
             for good (stop it first)",
            escaped(&answer.service)
        );
        return Ok(Outcome::Declined);
    }
    let status = match caught_up(session, copy, wait).await {
        Ok(status) => status,
        Err(error) => return Ok(failed(error)),
    };
    let lost = match what_is_lost(&status) {
        Ok(lost) => lost,
        Err(unknown) if force => {
            eprintln!("promoting anyway (--force): {unknown}");
            Lost { count: 0, named: Vec::new() }
        }
        Err(unknown) => {
            eprintln!("refused: {unknown}; promote with --force to accept that");
            return Ok(Outcome::Declined);
        }
    };
    if lost.count > 0 && !force {
        eprintln!(
            "refused: {} lacks {} of the primary's changes ({}); wait for its feed, or promote with \
             --force and lose them",
            copy.label(),
            lost.count,
            lost.describe()
        );
        return Ok(Outcome::Declined);
    }
    let epoch = newest_epoch(session, domain).await.max(status.epoch) + 1;
    let management = topology::management::Management::from_env(&settings.amqp_url)?;
    let vhost = topology::management::amqp_url_parts(&settings.amqp_url)?.2;
    topology::promotion::route_to(&management, &vhost, &settings.user_prefix, copy)
        .await
        .context("moving the domain's routes and grants (an administrator's management credentials are needed: ORDERFLOW_MGMT_USER)")?;
    topology::promotion::record(&management, &vhost, copy, epoch).await?;
    let promoted = match session.ask(copy, CopyRequest::Promote { epoch }.to_json(), None).await {
        Ok(promoted) => serde_json::from_value::<CopyStatus>(promoted)?,
        Err(error) => return Ok(failed(error)),
    };
    if json {
        let lost: Vec<_> = lost.named.iter().map(|c| json!({"seq": c.seq, "key": c.key})).collect();
        println!("{}", json!({"promoted": promoted, "lost_count": lost_count(&status), "lost": lost}));
    } else {
        println!(
            "{} is the primary of {domain} at epoch {}, from change {}",
            promoted.copy, promoted.epoch, promoted.epoch_from_seq
        );
        if lost.count > 0 {
            println!("lost: {} changes the old primary made: {}", lost.count, lost.describe());
        }
    }
    Ok(Outcome::Done)
}

/// The replica's status once its lag is zero, or after `wait`.
async fn caught_up(session: &Session, copy: DomainCopy, wait: Duration) -> Result<CopyStatus, ClientError> {
    let started = Instant::now();
    loop {
        let asked = CopyRequest::Status { after_seq: None }.to_json();
        let answer = session.ask(copy, asked, None).await?;
        let status: CopyStatus = serde_json::from_value(answer)
            .map_err(|e| ClientError::Unavailable(format!("{} answered no status: {e}", copy.label())))?;
        if status.role == "primary" || lost_count(&status) == 0 || started.elapsed() >= wait {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn lost_count(status: &CopyStatus) -> i64 {
    status.lag.as_ref().map_or(0, |lag| lag.changes)
}

/// The changes a replica lacks, as it last learned them from its primary.
struct Lost {
    count: i64,
    named: Vec<ChangeRef>,
}

impl Lost {
    fn describe(&self) -> String {
        let mut named: Vec<String> =
            self.named.iter().map(|c| format!("change {} of {}", c.seq, escaped(&c.key))).collect();
        let unnamed = self.count - named.len() as i64;
        if unnamed > 0 {
            named.push(format!("{unnamed} more"));
        }
        named.join(", ")
    }
}

fn what_is_lost(status: &CopyStatus) -> Result<Lost, String> {
    let Some(lag) = &status.lag else {
        return Err(format!(
            "{} has not heard from its primary since it started: it cannot tell which changes it lacks",
            status.copy
        ));
    };
    Ok(Lost { count: lag.changes, named: lag.missing.clone() })
}

/// The newest epoch any copy of `domain` that answers knows.
async fn newest_epoch(session: &Session, domain: &str) -> i64 {
    let mut newest = 1;
    for copy in DomainCopy::all().into_iter().filter(|c| c.domain == domain && c.region.is_some()) {
        let asked = CopyRequest::Status { after_seq: None }.to_json();
        if let Ok(answer) = session.client.call(copy, &asked, None, Duration::from_secs(2)).await {
            if let Ok(status) = serde_json::from_value::<CopyStatus>(answer) {
                newest = newest.max(status.epoch);
            }
        }
    }
    newest
}
