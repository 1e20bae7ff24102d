//! Exports the topology as a RabbitMQ definitions document (the JSON that
//! `load_definitions` imports at boot), so the compose broker starts with
//! every exchange, queue, binding and the application user already there.

use crate::permissions::Grant;
use crate::{exchanges, queue_arguments_sized, queues};
use base64::Engine;
use lapin::ExchangeKind;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// A user to create in the definitions, with the password it is given.
pub struct UserSpec {
    pub name: String,
    pub password: String,
    pub tags: String,
}

/// RabbitMQ's `rabbit_password_hashing_sha256` format: base64(salt ++ sha256(salt ++ password)).
pub fn password_hash(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn kind_name(kind: &ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Topic => "topic",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::Headers => "headers",
        _ => "direct",
    }
}

/// The definitions document for `vhost`: `users` get full rights on it,
/// `roles` (user spec, grant) exactly their grant.
pub fn definitions(vhost: &str, users: &[UserSpec], roles: &[(UserSpec, Grant)]) -> Value {
    definitions_sized(vhost, users, roles, None)
}

/// [`definitions`] with quorum queues of `quorum_size` members (see
/// [`crate::queue_arguments_sized`]): what a cluster's nodes load.
pub fn definitions_sized(
    vhost: &str,
    users: &[UserSpec],
    roles: &[(UserSpec, Grant)],
    quorum_size: Option<u32>,
) -> Value {
    let exchanges: Vec<Value> = exchanges()
        .iter()
        .map(|e| {
            let arguments = match e.alternate {
                Some(alternate) => json!({"alternate-exchange": alternate}),
                None => json!({}),
            };
            json!({"name": e.name, "vhost": vhost, "type": kind_name(&e.kind), "durable": true,
                   "auto_delete": false, "internal": false, "arguments": arguments})
        })
        .collect();
    let mut queue_values = Vec::new();
    let mut bindings = Vec::new();
    for q in queues() {
        let arguments: Map<String, Value> = queue_arguments_sized(&q.name, quorum_size)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        queue_values.push(json!({"name": q.name, "vhost": vhost, "durable": true,
                                 "auto_delete": false, "arguments": arguments}));
        for (exchange, key) in &q.bindings {
            bindings.push(json!({"source": exchange, "vhost": vhost, "destination": q.name,
                                 "destination_type": "queue", "routing_key": key, "arguments": {}}));
        }
    }
    let user_values: Vec<Value> = users
        .iter()
        .chain(roles.iter().map(|(u, _)| u))
        .map(|u| {
            json!({"name": u.name, "password_hash": password_hash(&u.password, rand::random()),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": u.tags})
        })
        .collect();
    let mut permissions: Vec<Value> = users
        .iter()
        .map(|u| json!({"user": u.name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}))
        .collect();
    let mut topic_permissions = Vec::new();
    for (u, g) in roles {
        permissions.push(json!({"user": u.name, "vhost": vhost, "configure": g.configure, "write": g.write, "read": g.read}));
        for t in &g.topic {
            topic_permissions.push(json!({"user": u.name, "vhost": vhost, "exchange": t.exchange, "write": t.write, "read": t.read}));
        }
    }
    json!({
        "vhosts": [{"name": vhost}],
        "users": user_values,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
        "queues": queue_values,
        "bindings": bindings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_name_every_queue_and_binding() {
        let defs = definitions("/", &[], &[]);
        let names: Vec<&str> =
            defs["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"orderflow.payment"));
        assert!(names.contains(&"orderflow.audit.tracker"));
        let bindings: usize = queues().iter().map(|q| q.bindings.len()).sum();
        assert_eq!(defs["bindings"].as_array().unwrap().len(), bindings);
        let services =
            defs["exchanges"].as_array().unwrap().iter().find(|e| e["name"] == "orderflow.services");
        assert_eq!(services.unwrap()["arguments"]["alternate-exchange"], "orderflow.services.unrouted");
        assert_eq!(defs["queues"][0]["arguments"]["x-queue-type"], "quorum");
        let retry =
            defs["queues"].as_array().unwrap().iter().find(|q| q["name"] == "orderflow.retry.payment");
        let arguments = &retry.expect("the retry queue is exported")["arguments"];
        assert_eq!(arguments["x-queue-type"], "classic");
        assert_eq!(arguments["x-dead-letter-exchange"], "orderflow.workflow");
        assert_eq!(arguments["x-dead-letter-routing-key"], "order.payment");
    }

    #[test]
    fn password_hash_matches_rabbitmq_format() {
        // 4-byte salt + 32-byte digest = 36 bytes = 48 base64 characters.
        let hash = password_hash("secret", [1, 2, 3, 4]);
        assert_eq!(hash.len(), 48);
        assert_ne!(hash, password_hash("secret", [4, 3, 2, 1]));
    }
}
