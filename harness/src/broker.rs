//! The broker a stack runs on: its AMQP address without a vhost and its
//! management API, and vhosts of a stack's own, created through the
//! management API and deleted when dropped (so also on error and panic).

use anyhow::Context;
use topology::management::{amqp_url_parts, encode, Management};

/// Where the broker is: AMQP address (no vhost) and management API.
#[derive(Clone)]
pub struct Broker {
    /// `amqp://user:password@host:port`, without the vhost; one per node of a cluster.
    bases: Vec<String>,
    user: String,
    mgmt_url: String,
    mgmt_user: String,
    mgmt_password: String,
    management: Management,
}

/// The local broker's address as the tests use it (guest is allowed from loopback only).
const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const LOCAL_MGMT_URL: &str = "http://127.0.0.1:15672";

impl Broker {
    /// From an AMQP URL, or a comma-separated list of the nodes of a cluster
    /// (their vhost is ignored), and the management API's URL; management
    /// credentials are `ORDERFLOW_MGMT_USER`/`_PASSWORD`, else the URL's.
    pub fn new(amqp_url: &str, mgmt_url: &str) -> anyhow::Result<Broker> {
        let (user, password, _) = amqp_url_parts(amqp_url)?;
        let mut bases = Vec::new();
        for url in topology::management::amqp_urls(amqp_url) {
            let (scheme, rest) = url.split_once("://").context("AMQP URL without a scheme")?;
            let authority = rest.split('/').next().unwrap_or(rest);
            bases.push(format!("{scheme}://{authority}"));
        }
        let mgmt_user = std::env::var("ORDERFLOW_MGMT_USER").unwrap_or_else(|_| user.clone());
        let mgmt_password = std::env::var("ORDERFLOW_MGMT_PASSWORD").unwrap_or(password);
        Ok(Broker {
            bases,
            user,
            mgmt_url: mgmt_url.trim_end_matches('/').to_string(),
            management: Management::new(mgmt_url, &mgmt_user, &mgmt_password),
            mgmt_user,
            mgmt_password,
        })
    }

    /// The local broker as guest, its management API at `ORDERFLOW_MGMT_URL`
    /// (default `http://127.0.0.1:15672`).
    pub fn local() -> Broker {
        let mgmt_url = std::env::var("ORDERFLOW_MGMT_URL").unwrap_or_else(|_| LOCAL_MGMT_URL.into());
        Broker::new(LOCAL_AMQP_URL, &mgmt_url).expect("the local broker's URL is valid")
    }

    /// The AMQP URL of `vhost` on this broker (a comma-separated list for a cluster).
    pub fn url(&self, vhost: &str) -> String {
        let urls: Vec<String> = self.bases.iter().map(|base| format!("{base}/{}", encode(vhost))).collect();
        urls.join(",")
    }

    /// The AMQP user, who gets every right on the vhosts made here.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn management(&self) -> &Management {
        &self.management
    }

    /// A management client of its own, with its own HTTP connections: for a
    /// runtime other than the one that made this broker (e.g. in `drop`).
    pub fn fresh_management(&self) -> Management {
        Management::new(&self.mgmt_url, &self.mgmt_user, &self.mgmt_password)
    }

    /// The settings that point a process (the CLI's dead-letter commands) at this management API.
    pub fn management_env(&self) -> [(&'static str, &str); 3] {
        [
            ("ORDERFLOW_MGMT_URL", &self.mgmt_url),
            ("ORDERFLOW_MGMT_USER", &self.mgmt_user),
            ("ORDERFLOW_MGMT_PASSWORD", &self.mgmt_password),
        ]
    }

    /// RabbitMQ's and Erlang's versions, from the management API's overview.
    pub async fn versions(&self) -> String {
        let response = reqwest::Client::new()
            .get(format!("{}/api/overview", self.mgmt_url))
            .basic_auth(&self.mgmt_user, Some(&self.mgmt_password))
            .send()
            .await;
        let overview: serde_json::Value = match response {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let rabbit = overview["rabbitmq_version"].as_str().unwrap_or("?");
        let erlang = overview["erlang_version"].as_str().unwrap_or("?");
        format!("RabbitMQ {rabbit} on Erlang {erlang}")
    }
}

/// A vhost of its own; deleted (with all its queues) by [`Vhost::delete`] or on drop.
pub struct Vhost {
    pub name: String,
    pub amqp_url: String,
    broker: Broker,
    deleted: bool,
}

impl Vhost {
    /// Creates `name` and gives the broker's user every right on it.
    pub async fn create(broker: &Broker, name: &str) -> anyhow::Result<Vhost> {
        broker
            .management
            .create_vhost(name)
            .await
            .with_context(|| format!("creating vhost {name} (is the management plugin on?)"))?;
        let vhost = Vhost {
            name: name.to_string(),
            amqp_url: broker.url(name),
            broker: broker.clone(),
            deleted: false,
        };
        broker.management.set_permissions(name, &broker.user, ".*", ".*", ".*").await?;
        Ok(vhost)
    }

    /// Deletes the vhost now (its drop then has nothing left to do).
    pub async fn delete(&mut self) -> anyhow::Result<()> {
        self.deleted = true;
        self.broker.management.delete_vhost(&self.name).await
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // Drop cannot await: delete on a thread with a runtime (and an HTTP client) of its own.
        let management = self.broker.fresh_management();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async { management.delete_vhost(&name).await })
        })
        .join();
    }
}
