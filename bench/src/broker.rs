//! The local broker as the bench uses it: its address without a vhost, the
//! management API, and vhosts of the bench's own that are deleted when
//! dropped (so also on error and panic), plus the machine's description.

use anyhow::Context;
use topology::management::{amqp_url_parts, encode, Management};

/// Where the broker is: AMQP address (no vhost) and management API.
#[derive(Clone)]
pub struct Broker {
    /// `amqp://user:password@host:port`, without the vhost.
    base: String,
    user: String,
    mgmt_url: String,
    mgmt_user: String,
    mgmt_password: String,
    management: Management,
}

impl Broker {
    /// From an AMQP URL (its vhost is ignored) and the management API's URL;
    /// management credentials are `ORDERFLOW_MGMT_USER`/`_PASSWORD`, else the URL's.
    pub fn new(amqp_url: &str, mgmt_url: &str) -> anyhow::Result<Broker> {
        let (user, password, _) = amqp_url_parts(amqp_url)?;
        let (scheme, rest) = amqp_url.split_once("://").context("AMQP URL without a scheme")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let mgmt_user = std::env::var("ORDERFLOW_MGMT_USER").unwrap_or_else(|_| user.clone());
        let mgmt_password = std::env::var("ORDERFLOW_MGMT_PASSWORD").unwrap_or(password);
        Ok(Broker {
            base: format!("{scheme}://{authority}"),
            user,
            mgmt_url: mgmt_url.trim_end_matches('/').to_string(),
            management: Management::new(mgmt_url, &mgmt_user, &mgmt_password),
            mgmt_user,
            mgmt_password,
        })
    }

    pub fn url(&self, vhost: &str) -> String {
        format!("{}/{}", self.base, encode(vhost))
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

/// A vhost of the bench's own; deleted (with all its queues) by [`BenchVhost::delete`] or on drop.
pub struct BenchVhost {
    pub name: String,
    pub amqp_url: String,
    management: Management,
    /// Management URL, user and password, for a client of its own in `drop`.
    credentials: (String, String, String),
    deleted: bool,
}

impl BenchVhost {
    pub async fn create(broker: &Broker, run_id: &str, tag: &str) -> anyhow::Result<BenchVhost> {
        let name = format!("orderflow-bench-{run_id}-{tag}");
        let management = broker.management.clone();
        management
            .create_vhost(&name)
            .await
            .with_context(|| format!("creating vhost {name} (is the management plugin on?)"))?;
        let credentials = (broker.mgmt_url.clone(), broker.mgmt_user.clone(), broker.mgmt_password.clone());
        let vhost = BenchVhost { amqp_url: broker.url(&name), name, management, credentials, deleted: false };
        vhost.management.set_permissions(&vhost.name, &broker.user, ".*", ".*", ".*").await?;
        Ok(vhost)
    }

    pub async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        self.management.delete_vhost(&self.name).await
    }
}

impl Drop for BenchVhost {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // Drop cannot await: delete on a thread with a runtime (and an HTTP client) of its own.
        let (url, user, password) = self.credentials.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let management = Management::new(&url, &user, &password);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async { management.delete_vhost(&name).await })
        })
        .join();
    }
}

/// CPU, memory, kernel and OS of this machine, in one line.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    format!("{model}, {cores} cores, {mem_gib:.1} GiB RAM, {os}, kernel {}", kernel.trim())
}
