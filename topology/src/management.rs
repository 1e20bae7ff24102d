//! A small client of RabbitMQ's management HTTP API: creating and deleting
//! vhosts, granting permissions, reading queues. Used by `topology apply
//! --create-vhost`, by the bench and by the tests.

use anyhow::Context;
use lapin::uri::AMQPUri;
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Management {
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

/// Percent-encodes a path segment (vhost names such as `/`).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The broker's global parameter that keeps the domains' promotions of the
/// stack on `vhost` (`crate::promotion`).
pub fn promotions_parameter(vhost: &str) -> String {
    format!("orderflow-primaries:{vhost}")
}

/// The file (in a secrets folder) holding the password of `user`: the user
/// name, percent-encoded so that any vhost name makes a plain file name.
pub fn secret_file_name(user: &str) -> String {
    encode(user)
}

/// The URLs of an `AMQP_URL`: one, or several separated by commas (the
/// nodes of a cluster, tried in turn), all with the same user and vhost.
pub fn amqp_urls(amqp_url: &str) -> Vec<&str> {
    amqp_url.split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
}

/// The user, password and vhost of an AMQP URL (of the first, for a list).
pub fn amqp_url_parts(amqp_url: &str) -> anyhow::Result<(String, String, String)> {
    let first = amqp_urls(amqp_url).first().copied().unwrap_or_default();
    let uri: AMQPUri = first.parse().map_err(|e| anyhow::anyhow!("AMQP_URL is not a valid AMQP URL: {e}"))?;
    Ok((uri.authority.userinfo.username, uri.authority.userinfo.password, uri.vhost))
}

impl Management {
    pub fn new(base: &str, user: &str, password: &str) -> Management {
        Management {
            base: base.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password: password.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// From `ORDERFLOW_MGMT_URL` (default `http://127.0.0.1:15672`) and
    /// `ORDERFLOW_MGMT_USER`/`ORDERFLOW_MGMT_PASSWORD` (default: AMQP_URL's user).
    pub fn from_env(amqp_url: &str) -> anyhow::Result<Management> {
        let (user, password, _) = amqp_url_parts(amqp_url)?;
        let base = std::env::var("ORDERFLOW_MGMT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into());
        let user = std::env::var("ORDERFLOW_MGMT_USER").unwrap_or(user);
        let password = std::env::var("ORDERFLOW_MGMT_PASSWORD").unwrap_or(password);
        Ok(Management::new(&base, &user, &password))
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
        let response = request
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| format!("the management API at {} is not reachable", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("{what} failed: HTTP {status}: {body}");
        }
        Ok(response)
    }

    pub async fn create_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/vhosts/{}", self.base, encode(vhost));
        self.send(self.http.put(url).json(&json!({})), "creating the vhost").await?;
        Ok(())
    }

    /// Deletes the vhost, and the record of its domains' promotions (a
    /// broker-wide parameter that would outlive it: `crate::promotion`).
    pub async fn delete_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/vhosts/{}", self.base, encode(vhost));
        self.send(self.http.delete(url), "deleting the vhost").await?;
        self.delete_global_parameter(&promotions_parameter(vhost)).await
    }

    /// Grants `user` the given configure/write/read patterns on `vhost`.
    pub async fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/api/permissions/{}/{}", self.base, encode(vhost), encode(user));
        let body = json!({"configure": configure, "write": write, "read": read});
        self.send(self.http.put(url).json(&body), "setting permissions").await?;
        Ok(())
    }

    /// Creates (or updates) a user with a password and no tags.
    pub async fn create_user(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/users/{}", self.base, encode(user));
        let body = json!({"password": password, "tags": ""});
        self.send(self.http.put(url).json(&body), "creating a user").await?;
        Ok(())
    }

    /// Whether `user` exists on the broker.
    pub async fn user_exists(&self, user: &str) -> anyhow::Result<bool> {
        self.exists(&format!("users/{}", encode(user)), &format!("user {user}")).await
    }

    /// Whether `vhost` exists on the broker.
    pub async fn vhost_exists(&self, vhost: &str) -> anyhow::Result<bool> {
        self.exists(&format!("vhosts/{}", encode(vhost)), &format!("vhost {vhost}")).await
    }

    /// Whether `GET /api/<path>` finds something.
    async fn exists(&self, path: &str, what: &str) -> anyhow::Result<bool> {
        let url = format!("{}/api/{path}", self.base);
        let response = self
            .http
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| format!("the management API at {} is not reachable", self.base))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => anyhow::bail!("reading {what} failed: HTTP {status}"),
        }
    }

    pub async fn delete_user(&self, user: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/users/{}", self.base, encode(user));
        self.send(self.http.delete(url), "deleting a user").await?;
        Ok(())
    }

    /// Limits the routing keys `user` may publish with to `exchange`.
    pub async fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/api/topic-permissions/{}/{}", self.base, encode(vhost), encode(user));
        let body = json!({"exchange": exchange, "write": write, "read": read});
        self.send(self.http.put(url).json(&body), "setting topic permissions").await?;
        Ok(())
    }

    /// Creates the user of `role` with `password` and exactly its grant on `vhost`.
    pub async fn apply_grant(
        &self,
        vhost: &str,
        user: &str,
        password: &str,
        grant: &crate::permissions::Grant,
    ) -> anyhow::Result<()> {
        self.create_user(user, password).await?;
        self.set_permissions(vhost, user, &grant.configure, &grant.write, &grant.read).await?;
        for topic in &grant.topic {
            self.set_topic_permissions(vhost, user, topic.exchange, &topic.write, &topic.read).await?;
        }
        Ok(())
    }

    /// Imports a definitions document (what the compose broker loads at boot).
    pub async fn import_definitions(&self, definitions: &Value) -> anyhow::Result<()> {
        let url = format!("{}/api/definitions", self.base);
        self.send(self.http.post(url).json(definitions), "importing definitions").await?;
        Ok(())
    }

    /// The queue's details (`messages`, `consumers`, ...).
    pub async fn queue(&self, vhost: &str, queue: &str) -> anyhow::Result<Value> {
        let url = format!("{}/api/queues/{}/{}", self.base, encode(vhost), encode(queue));
        Ok(self.send(self.http.get(url), "reading the queue").await?.json().await?)
    }

    /// Every queue of a vhost (name, leader and members of a quorum queue, ...).
    pub async fn queues(&self, vhost: &str) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/api/queues/{}", self.base, encode(vhost));
        Ok(self.send(self.http.get(url), "listing queues").await?.json().await?)
    }

    /// Every connection of a vhost (name, user, client properties).
    pub async fn connections(&self, vhost: &str) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/api/vhosts/{}/connections", self.base, encode(vhost));
        Ok(self.send(self.http.get(url), "listing connections").await?.json().await?)
    }

    /// Sets exactly `grant` for an existing `user` on `vhost` (its password untouched).
    pub async fn set_grant(
        &self,
        vhost: &str,
        user: &str,
        grant: &crate::permissions::Grant,
    ) -> anyhow::Result<()> {
        self.set_permissions(vhost, user, &grant.configure, &grant.write, &grant.read).await?;
        for topic in &grant.topic {
            self.set_topic_permissions(vhost, user, topic.exchange, &topic.write, &topic.read).await?;
        }
        Ok(())
    }

    /// The bindings of `queue` to `exchange`.
    fn bindings_url(&self, vhost: &str, exchange: &str, queue: &str) -> String {
        format!("{}/api/bindings/{}/e/{}/q/{}", self.base, encode(vhost), encode(exchange), encode(queue))
    }

    /// Binds `queue` to `exchange` with `routing_key` (no arguments).
    pub async fn bind(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        routing_key: &str,
    ) -> anyhow::Result<()> {
        let url = self.bindings_url(vhost, exchange, queue);
        let body = json!({"routing_key": routing_key, "arguments": {}});
        self.send(self.http.post(url).json(&body), "binding a queue").await?;
        Ok(())
    }

    /// Removes every binding of `queue` to `exchange` with `routing_key`.
    pub async fn unbind(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        routing_key: &str,
    ) -> anyhow::Result<()> {
        let url = self.bindings_url(vhost, exchange, queue);
        let bindings: Vec<Value> = self.send(self.http.get(&url), "reading bindings").await?.json().await?;
        for binding in bindings.iter().filter(|b| b["routing_key"] == routing_key) {
            let key = binding["properties_key"].as_str().unwrap_or(routing_key);
            let url = format!("{url}/{}", encode(key));
            self.send(self.http.delete(url), "removing a binding").await?;
        }
        Ok(())
    }

    /// A global runtime parameter's value (`None`: not set).
    pub async fn global_parameter(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let path = format!("global-parameters/{}", encode(name));
        if !self.exists(&path, &format!("global parameter {name}")).await? {
            return Ok(None);
        }
        let url = format!("{}/api/{path}", self.base);
        let found: Value = self.send(self.http.get(url), "reading a global parameter").await?.json().await?;
        Ok(Some(found["value"].clone()))
    }

    pub async fn set_global_parameter(&self, name: &str, value: &Value) -> anyhow::Result<()> {
        let url = format!("{}/api/global-parameters/{}", self.base, encode(name));
        let body = json!({"name": name, "value": value});
        self.send(self.http.put(url).json(&body), "setting a global parameter").await?;
        Ok(())
    }

    pub async fn delete_global_parameter(&self, name: &str) -> anyhow::Result<()> {
        if self.global_parameter(name).await?.is_some() {
            let url = format!("{}/api/global-parameters/{}", self.base, encode(name));
            self.send(self.http.delete(url), "deleting a global parameter").await?;
        }
        Ok(())
    }

    pub async fn close_connection(&self, name: &str) -> anyhow::Result<()> {
        let url = format!("{}/api/connections/{}", self.base, encode(name));
        self.send(self.http.delete(url), "closing a connection").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_names_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("orderflow-test_1"), "orderflow-test_1");
        assert_eq!(secret_file_name("orderflow-a/b.payment"), "orderflow-a%2Fb.payment");
    }

    #[test]
    fn url_parts() {
        let (user, password, vhost) = amqp_url_parts("amqp://app:pw@localhost:5672/shop").unwrap();
        assert_eq!((user.as_str(), password.as_str(), vhost.as_str()), ("app", "pw", "shop"));
        let (_, _, vhost) = amqp_url_parts("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(vhost, "/");
    }
}
