//! The broker-free step: one decoded element in, the messages to publish and
//! the settle decision out. It checks the element may arrive here, decides
//! its pending changes, runs the stage (or the cancel path), turns the
//! outcome into audit events and the forwarded element, and closes the order
//! in the change book when it ends here. The runners publish what it returns
//! and acknowledge only once all of it is confirmed.

use super::context::NodeContext;
use super::message::{audit_message, capture_message, element_message, Outgoing};
use super::settle::Settle;
use shared::audit::{AuditEvent, Transition};
use shared::change::{cancel_outcome, Change, ChangeKind, Decision};
use shared::events::{ChangeApplied, ChangeRejected, ElementHandled};
use shared::order::{OrderElement, OrderState};
use shared::routing::{check_arrival, next_node};
use shared::stage::{Outcome, Stage, StageError};

/// What one step decided for one element.
#[derive(Debug)]
pub enum StepOutcome {
    /// Publish `messages` (each confirmed), then acknowledge the delivery.
    Handled(Box<Handled>),
    /// Publish nothing of it; settle the delivery so.
    Failed(Settle),
}

/// A handled element: what to publish, and what to report once it is confirmed.
#[derive(Debug)]
pub struct Handled {
    /// The element as it leaves the node.
    pub element: OrderElement,
    /// Change records, audit events, the forwarded element, late rejections: in that order.
    pub messages: Vec<Outgoing>,
    pub changes: ChangeRecords,
}

impl Handled {
    /// Reports the element and its change decisions (call once confirmed).
    pub fn emit(&self, node: &'static str) {
        ElementHandled { node, order_id: self.element.order_id, state: self.element.state }.emit();
        self.changes.emit();
    }
}

/// Change decisions made for an element: their records for the tracker,
/// and their events to emit once the records are confirmed.
#[derive(Debug, Default)]
pub struct ChangeRecords {
    pub messages: Vec<Outgoing>,
    pub applied: Vec<ChangeApplied>,
    pub rejected: Vec<ChangeRejected>,
}

impl ChangeRecords {
    pub fn extend(&mut self, more: ChangeRecords) {
        self.messages.extend(more.messages);
        self.applied.extend(more.applied);
        self.rejected.extend(more.rejected);
    }

    pub fn emit(&self) {
        self.applied.iter().for_each(ChangeApplied::emit);
        self.rejected.iter().for_each(ChangeRejected::emit);
    }
}

/// Runs one element through `stage` at its `attempts`-th delivery (1 for the first).
pub async fn step<S: Stage>(
    ctx: &NodeContext,
    stage: &S,
    element: OrderElement,
    attempts: i64,
) -> StepOutcome {
    match try_step(ctx, stage, element, attempts > 1).await {
        Ok(handled) => StepOutcome::Handled(Box::new(handled)),
        Err(error) => StepOutcome::Failed(Settle::after_failure(error, attempts, ctx.max_attempts)),
    }
}

/// `redone`: a delivery after the first (the node stopped before
/// acknowledging it, or it went round the retry queue), which may follow a
/// step whose messages all went out. It decides only what the first
/// delivery decided (the book's stored decisions, applied again with the
/// same record ids), so the stage reaches the same outcome with the same
/// keyed effects: a change heard since waits for the next node, which hears
/// it too. Deciding it here could end an order the first delivery already
/// sent on (a cancel after a charge would leave its authorization held).
async fn try_step<S: Stage>(
    ctx: &NodeContext,
    stage: &S,
    element: OrderElement,
    redone: bool,
) -> Result<Handled, StageError> {
    check_arrival(S::NODE, &element)?;
    let before = (element.seq, Some(element.state));
    let mut replayed = None;
    if let (true, Some(book)) = (S::KEEPS_ELEMENTS_WAITING, &ctx.book) {
        if redone || book.may_have_changes(element.order_id).await? {
            // The decisions made at its first delivery (or since, where it
            // waits) are applied again and their records sent again (the
            // same ids): none is lost when the node stopped before sending them.
            let again = replay_changes(ctx, element.clone()).await?;
            if let Some(outcome) = stage.prior_outcome(&again.element).await? {
                return record_outcome(ctx, before, again.changes, &outcome, Onward::NextNode).await;
            }
            replayed = Some(again);
        }
    }
    let resolved = match (redone, replayed) {
        (true, Some(replayed)) => replayed,
        (true, None) => replay_changes(ctx, element).await?,
        (false, _) => resolve_changes(ctx, element).await?,
    };
    let outcome = if resolved.cancelled {
        cancel_outcome(resolved.element)
    } else {
        stage.handle(resolved.element).await?
    };
    record_outcome(ctx, before, resolved.changes, &outcome, Onward::NextNode).await
}

/// An element with its pending changes decided.
pub struct Resolved {
    /// The element as changed.
    pub element: OrderElement,
    pub changes: ChangeRecords,
    /// A cancel was just applied: the element takes its cancel path instead of the stage.
    pub cancelled: bool,
}

/// Decides the element's pending changes in the node's change book.
pub async fn resolve_changes(ctx: &NodeContext, element: OrderElement) -> Result<Resolved, StageError> {
    resolve_or_replay(ctx, element, true).await
}

/// The decisions the book already made for the element (a step redone),
/// applied with their records; pending changes stay pending.
pub async fn replay_changes(ctx: &NodeContext, element: OrderElement) -> Result<Resolved, StageError> {
    resolve_or_replay(ctx, element, false).await
}

async fn resolve_or_replay(
    ctx: &NodeContext,
    element: OrderElement,
    decide: bool,
) -> Result<Resolved, StageError> {
    let Some(book) = &ctx.book else {
        return Ok(Resolved { element, changes: ChangeRecords::default(), cancelled: false });
    };
    let mut version = element.version;
    let (element, decisions) =
        if decide { book.resolve(element).await? } else { book.replay(element).await? };
    let mut changes = ChangeRecords::default();
    let mut cancelled = false;
    for (request, decision) in decisions {
        let (order_id, change_id, node) = (request.order_id, request.change_id, ctx.node);
        match decision {
            Decision::Apply => {
                version += 1;
                cancelled |= request.change == Change::Cancel;
                let detail = format!("{} (version {version})", request.change.describe());
                changes.messages.push(ctx.change_event(&request, ChangeKind::ChangeApplied, detail, version));
                changes.applied.push(ChangeApplied { node, order_id, change_id, version });
            }
            Decision::Reject(reason) => {
                let record = ctx.change_event(&request, ChangeKind::ChangeRejected, reason.clone(), version);
                changes.messages.push(record);
                changes.rejected.push(ChangeRejected { node, order_id, change_id, reason });
            }
        }
    }
    Ok(Resolved { element, changes, cancelled })
}

/// Where the element goes after an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Onward {
    /// To its next node (the autonomous workflow).
    NextNode,
    /// Nowhere: the caller holds it (the coordinator calls the next service).
    Kept,
}

/// Everything a stage's outcome leads to: the change records decided before
/// it, its audit events, the element forwarded (when `onward` says so), and
/// the order closed if it ended here. `before` is the element's sequence
/// number and state on arrival.
pub async fn record_outcome(
    ctx: &NodeContext,
    before: (u32, Option<OrderState>),
    mut changes: ChangeRecords,
    outcome: &Outcome,
    onward: Onward,
) -> Result<Handled, StageError> {
    let mut messages = std::mem::take(&mut changes.messages);
    let (element, outgoing) = match onward {
        Onward::NextNode => outcome_messages(before, outcome, ctx),
        Onward::Kept => {
            let (element, events) = outcome_events(before, outcome, ctx);
            (element, events.iter().map(audit_message).collect())
        }
    };
    messages.extend(outgoing);
    messages.extend(capture_if_shipped(outcome, &element));
    let late = close_if_terminal(ctx, &element).await?;
    messages.extend(late.messages);
    changes.applied.extend(late.applied);
    changes.rejected.extend(late.rejected);
    Ok(Handled { element, messages, changes })
}

/// The capture of an order this outcome shipped (its authorization, to the
/// settlement aggregation queue); nothing for any other outcome.
pub fn capture_if_shipped(outcome: &Outcome, element: &OrderElement) -> Option<Outgoing> {
    let reached = outcome.steps.iter().map(|step| step.state);
    shared::settlement::Capture::due_after(reached, element).map(|capture| capture_message(&capture))
}

/// The messages that record an outcome: one audit event per step, then the
/// element forwarded to its next node (if it has one).
pub fn outcome_messages(
    before: (u32, Option<OrderState>),
    outcome: &Outcome,
    ctx: &NodeContext,
) -> (OrderElement, Vec<Outgoing>) {
    let (element, events) = outcome_events(before, outcome, ctx);
    let mut messages: Vec<Outgoing> = events.iter().map(audit_message).collect();
    if let Some(next) = next_node(&element) {
        messages.push(element_message(&element, next));
    }
    (element, messages)
}

/// The audit events of an outcome, one per step, and the element as it
/// leaves (its step count and state those of its last event).
pub fn outcome_events(
    before: (u32, Option<OrderState>),
    outcome: &Outcome,
    ctx: &NodeContext,
) -> (OrderElement, Vec<AuditEvent>) {
    let (mut seq, mut from_state) = before;
    let mut element = outcome.element.clone();
    let mut events = Vec::with_capacity(outcome.steps.len());
    for step in &outcome.steps {
        seq += 1;
        let transition = Transition {
            order_id: element.order_id,
            seq,
            version: element.version,
            from_state,
            to_state: step.state,
        };
        let mut event = AuditEvent::new(transition, ctx.node, &ctx.instance_id, step.detail.clone());
        // What it copied, its workflow, where its outcome goes (the tracker sends it).
        event.with_element_facts(&element);
        events.push(event);
        from_state = Some(step.state);
    }
    element.seq = seq;
    if let Some(state) = from_state {
        element.state = state;
    }
    (element, events)
}

/// When the element ends its travel here, closes the order in the change
/// book and rejects the changes that arrived meanwhile.
pub async fn close_if_terminal(
    ctx: &NodeContext,
    element: &OrderElement,
) -> Result<ChangeRecords, StageError> {
    let mut changes = ChangeRecords::default();
    let Some(book) = &ctx.book else { return Ok(changes) };
    if !shared::routing::has_ended(element) {
        return Ok(changes);
    }
    for (request, reason) in book.close(element).await? {
        let record = ctx.change_event(&request, ChangeKind::ChangeRejected, reason.clone(), element.version);
        changes.messages.push(record);
        let (node, order_id, change_id) = (ctx.node, request.order_id, request.change_id);
        changes.rejected.push(ChangeRejected { node, order_id, change_id, reason });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests;
