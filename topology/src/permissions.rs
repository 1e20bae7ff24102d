//! Least privilege: who connects to the broker (each node, the tracker, the
//! publisher) and exactly what each may configure, write and read, down to
//! the routing keys it may publish with (topic permissions).

use crate::{Node, AUDIT_EXCHANGE, CHANGES_EXCHANGE, DEAD_LETTER_EXCHANGE, TRACKER_QUEUE, WORKFLOW_EXCHANGE};

/// A kind of process that connects to the broker with its own user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node(Node),
    Tracker,
    /// Injects orders (`orderflow publish`): writes to intake and records `placed`.
    Publisher,
}

impl Role {
    pub fn all() -> Vec<Role> {
        let mut roles: Vec<Role> = Node::all().into_iter().map(Role::Node).collect();
        roles.push(Role::Tracker);
        roles.push(Role::Publisher);
        roles
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Node(node) => node.name(),
            Role::Tracker => "tracker",
            Role::Publisher => "publisher",
        }
    }

    /// The broker user of this role, e.g. `orderflow-payment` for prefix `orderflow-`.
    pub fn user(self, prefix: &str) -> String {
        format!("{prefix}{}", self.name())
    }
}

/// The nodes a node may forward elements to: derived from the workflow
/// definition (the routes of the states the node produces).
pub fn forwards_to(node: Node) -> Vec<Node> {
    crate::WORKFLOW.forwards_to(node)
}

/// A user's rights on the vhost: configure/write/read patterns, and per
/// topic exchange the routing keys it may publish with (write) and bind with (read).
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub configure: String,
    pub write: String,
    pub read: String,
    pub topic: Vec<TopicGrant>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicGrant {
    pub exchange: &'static str,
    pub write: String,
    pub read: String,
}

fn topic(exchange: &'static str, write: String, read: String) -> TopicGrant {
    TopicGrant { exchange, write, read }
}

fn exact(names: &[&str]) -> String {
    if names.is_empty() {
        return "^$".to_string();
    }
    let escaped: Vec<String> = names.iter().map(|n| n.replace('.', "\\.")).collect();
    format!("^({})$", escaped.join("|"))
}

pub fn grant(role: Role) -> Grant {
    match role {
        Role::Node(node) => {
            let queue = node.queue();
            let changes = node.changes_queue();
            // The retry queue: declared (configure), bound to the workflow
            // exchange (write on the queue, topic read of its key) and
            // published to by key (topic write); never consumed. Declaring
            // it with a dead-letter exchange needs read on the queue.
            let retry = node.retry_queue();
            let retry_key = node.retry_routing_key();
            let keys: Vec<String> = forwards_to(node).iter().map(|n| n.routing_key()).collect();
            let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            keys.push(&retry_key);
            Grant {
                configure: exact(&[&queue, &changes, &retry]),
                write: exact(&[
                    &queue,
                    &changes,
                    &retry,
                    WORKFLOW_EXCHANGE,
                    AUDIT_EXCHANGE,
                    DEAD_LETTER_EXCHANGE,
                ]),
                read: exact(&[&queue, &changes, &retry, WORKFLOW_EXCHANGE, CHANGES_EXCHANGE]),
                topic: vec![
                    topic(WORKFLOW_EXCHANGE, exact(&keys), exact(&[&node.routing_key(), &retry_key])),
                    topic(AUDIT_EXCHANGE, format!("^audit\\.{}\\.[a-z_]+$", node.name()), exact(&[])),
                    topic(DEAD_LETTER_EXCHANGE, format!("^{}\\.", node.name()), exact(&[])),
                ],
            }
        }
        Role::Tracker => Grant {
            configure: exact(&[TRACKER_QUEUE]),
            write: exact(&[TRACKER_QUEUE, DEAD_LETTER_EXCHANGE]),
            read: exact(&[TRACKER_QUEUE, AUDIT_EXCHANGE]),
            topic: vec![
                topic(WORKFLOW_EXCHANGE, exact(&[]), exact(&[])),
                topic(AUDIT_EXCHANGE, exact(&[]), "^#$".to_string()),
                topic(DEAD_LETTER_EXCHANGE, "^tracker\\.".to_string(), exact(&[])),
            ],
        },
        Role::Publisher => Grant {
            configure: exact(&[]),
            write: exact(&[WORKFLOW_EXCHANGE, AUDIT_EXCHANGE, CHANGES_EXCHANGE]),
            read: exact(&[]),
            topic: vec![
                topic(WORKFLOW_EXCHANGE, exact(&[&Node::Intake.routing_key()]), exact(&[])),
                topic(
                    AUDIT_EXCHANGE,
                    "^audit\\.publisher\\.(placed|change_requested)$".to_string(),
                    exact(&[]),
                ),
                topic(DEAD_LETTER_EXCHANGE, exact(&[]), exact(&[])),
            ],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_grants_name_only_their_own_queue() {
        let g = grant(Role::Node(Node::Payment));
        assert_eq!(
            g.configure,
            "^(orderflow\\.payment|orderflow\\.changes\\.payment|orderflow\\.retry\\.payment)$"
        );
        assert!(g.read.contains("orderflow\\.payment") && !g.read.contains("shipping"));
        assert_eq!(g.topic[0].write, "^(order\\.inventory|retry\\.payment)$");
        assert_eq!(g.topic[0].read, "^(order\\.payment|retry\\.payment)$");
        assert_eq!(grant(Role::Node(Node::Exceptions)).topic[0].write, "^(retry\\.exceptions)$");
    }

    #[test]
    fn every_role_has_a_distinct_user() {
        let users: std::collections::HashSet<String> = Role::all().iter().map(|r| r.user("of-")).collect();
        assert_eq!(users.len(), Role::all().len());
    }
}
