//! What every handler of a node knows about it: its name and instance, its
//! queue and prefetch, its limits, whom it trusts (its broker user and the
//! stack's), and (for a workflow node) its change book.
//! Built once per process and shared by the session, the step and settling.

use super::message::{change_event_message, Outgoing};
use shared::call_book::CallBook;
use shared::change::{ChangeEvent, ChangeKind, ChangeRequest};
use shared::change_book::ChangeBook;
use shared::settings::Settings;
use shared::trust::Trust;
use std::time::Duration;
use topology::{permissions::Role, Node};

pub struct NodeContext {
    pub node: &'static str,
    pub instance_id: String,
    pub queue: String,
    pub prefetch: u16,
    pub delay: Option<Duration>,
    pub max_message_bytes: usize,
    pub max_attempts: u32,
    /// Who this process is on the broker and which senders it believes.
    pub trust: Trust,
    /// The node's book of in-flight changes (workflow nodes only).
    pub book: Option<ChangeBook>,
    /// The queue on which it hears changes (with a book).
    pub changes_queue: Option<String>,
    /// The service queue it answers calls on, and its book of answered
    /// calls (workflow nodes only).
    pub calls: Option<(String, CallBook)>,
    /// Held during the configured per-element delay: a slowed instance handles
    /// one element at a time, like a worker that is busy for that long.
    busy: tokio::sync::Mutex<()>,
}

impl NodeContext {
    pub fn new(
        settings: &Settings,
        node: &'static str,
        queue: String,
        prefetch: u16,
    ) -> anyhow::Result<NodeContext> {
        let role = Role::from_name(node).ok_or_else(|| anyhow::anyhow!("no role is named {node}"))?;
        Ok(NodeContext {
            trust: Trust::new(settings, role)?,
            node,
            instance_id: settings.instance_id(node),
            queue,
            prefetch: prefetch.clamp(1, 2000),
            delay: settings.delay_for(node),
            max_message_bytes: settings.max_message_bytes,
            max_attempts: settings.max_attempts.max(1),
            book: None,
            changes_queue: None,
            calls: None,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The context of a workflow node, with its change book opened.
    pub async fn for_node(settings: &Settings, node: Node, prefetch: u16) -> anyhow::Result<NodeContext> {
        let mut ctx = NodeContext::new(settings, node.name(), node.queue(), prefetch)?;
        let book = ChangeBook::open(settings, node.name()).await?;
        let calls = CallBook::in_store(book.store().clone(), settings, node.name()).await?;
        ctx.book = Some(book);
        ctx.changes_queue = Some(node.changes_queue());
        ctx.calls = Some((node.service_queue(), calls));
        Ok(ctx)
    }

    /// The workflow node this context runs, when it has a change book.
    pub fn workflow_node(&self) -> Option<Node> {
        self.book.as_ref().and_then(|_| Node::from_name(self.node))
    }

    /// The consumer tags of the node's workflow queue, its changes queue
    /// and its service queue.
    pub fn consumer_tags(&self) -> [String; 3] {
        let id = &self.instance_id;
        [id.clone(), format!("{id}-changes"), format!("{id}-calls")]
    }

    /// The queue a delivery came from: the node's changes queue for a
    /// change request heard on the fanout, its service queue for a call,
    /// else its own queue.
    pub fn queue_of(&self, delivery: &lapin::message::Delivery) -> String {
        match (&self.changes_queue, &self.calls) {
            (Some(queue), _) if delivery.exchange.as_str() == topology::CHANGES_EXCHANGE => queue.clone(),
            (_, Some((queue, _))) if delivery.exchange.as_str() == topology::SERVICES_EXCHANGE => {
                queue.clone()
            }
            // A replica's feed of its primary's changes; a primary's feed of
            // its own changes and of what orders copied (the audit events).
            _ if [topology::DOMAIN_CHANGES_EXCHANGE, topology::AUDIT_EXCHANGE]
                .contains(&delivery.exchange.as_str()) =>
            {
                topology::DomainCopy::from_process(self.node)
                    .and_then(|copy| copy.feed_queue())
                    .unwrap_or_else(|| self.queue.clone())
            }
            // Sent to the queue by name (a reply to the coordinator's call).
            _ if delivery.exchange.as_str().is_empty() => delivery.routing_key.to_string(),
            // A domain's feed (received items, captures to settle), else its own queue.
            _ => feed_queue_of(delivery.exchange.as_str()).unwrap_or_else(|| self.queue.clone()),
        }
    }

    /// Waits out the configured per-element delay, one element at a time.
    pub async fn simulate_busy(&self) {
        if let Some(delay) = self.delay {
            let _busy = self.busy.lock().await;
            tokio::time::sleep(delay).await;
        }
    }

    /// A change record from this node, for the tracker.
    pub fn change_event(
        &self,
        request: &ChangeRequest,
        kind: ChangeKind,
        detail: String,
        version: u32,
    ) -> Outgoing {
        change_event_message(&ChangeEvent::new(request, kind, self.node, &self.instance_id, detail, version))
    }
}

/// The domain feed a message published to `exchange` arrives on: the
/// received items, the captures to settle (`DomainDef::receives`).
fn feed_queue_of(exchange: &str) -> Option<String> {
    topology::DomainCopy::all()
        .into_iter()
        .filter_map(|copy| copy.def().receives)
        .find(|feed| feed.exchange == exchange)
        .map(|feed| feed.queue.to_string())
}
