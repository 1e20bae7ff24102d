//! Settings from the environment (documented in the README), read once at
//! start by every binary. Credentials come only from here, never from code.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8089";

#[derive(Clone, Debug)]
pub struct Settings {
    /// `AMQP_URL`: broker address, credentials and vhost (`amqps://` for
    /// TLS); several, separated by commas, for the nodes of a cluster.
    pub amqp_url: String,
    /// `DATABASE_URL`: `postgres://...` selects PostgreSQL; unset, SQLite files in the run dir.
    pub database_url: Option<String>,
    /// `ORDERFLOW_RUN_DIR`: pids, logs and the default SQLite stores.
    pub run_dir: PathBuf,
    /// `ORDERFLOW_HTTP_ADDR`: the tracker's listen address, where the CLI asks.
    pub http_addr: SocketAddr,
    /// `ORDERFLOW_PREFETCH`: unacknowledged deliveries a node holds at once.
    pub prefetch: u16,
    /// `ORDERFLOW_PICKLIST_BATCH`: orders per picklist.
    pub picklist_batch: usize,
    /// `ORDERFLOW_PICKLIST_FLUSH_MS`: longest wait of a picklist's oldest order.
    pub picklist_flush: Duration,
    /// `ORDERFLOW_MAX_MESSAGE_BYTES`: larger bodies are dead-lettered unread.
    pub max_message_bytes: usize,
    /// `ORDERFLOW_MAX_ATTEMPTS`: tries of a transiently failing message before it is dead-lettered.
    pub max_attempts: u32,
    /// `ORDERFLOW_INSTANCE_ID`: names this process in audit events (default: node-pid).
    pub instance_id: Option<String>,
    /// `ORDERFLOW_CHANGE_RETENTION_S`: how long a node's change book keeps a
    /// change request (decided or not) and a closed order, in seconds.
    pub change_retention: Duration,
    /// `ORDERFLOW_HTTP_HEADER_TIMEOUT_S`: how long the tracker's API waits for
    /// a client to finish sending a request's headers before it closes the
    /// connection (also how long an idle keep-alive connection is kept).
    pub http_header_timeout: Duration,
    /// `ORDERFLOW_USER_PREFIX`: what the stack's per-role broker users are
    /// named with (see `topology::permissions::Role::user`).
    pub user_prefix: String,
    /// `ORDERFLOW_OPERATOR_USER` (default: the user named in `AMQP_URL`,
    /// before `AMQP_USER` replaces it): the administrator whose `orderflow dlq
    /// replay` a node trusts to send a dead letter back.
    pub operator_user: String,
}

#[cfg(test)]
impl Settings {
    /// Settings for a unit test: SQLite stores in `run_dir`, nothing read from the environment.
    pub(crate) fn scratch(run_dir: PathBuf) -> Settings {
        Settings {
            amqp_url: DEFAULT_AMQP_URL.into(),
            database_url: None,
            run_dir,
            http_addr: "127.0.0.1:0".parse().expect("an address"),
            prefetch: 1,
            picklist_batch: 1,
            picklist_flush: Duration::from_millis(1),
            max_message_bytes: 1 << 16,
            max_attempts: 3,
            instance_id: Some("payment-test".into()),
            change_retention: Duration::from_secs(3600),
            http_header_timeout: Duration::from_secs(10),
            user_prefix: "orderflow-".into(),
            operator_user: "guest".into(),
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match var(name) {
        None => Ok(default),
        Some(text) => {
            text.trim().parse().map_err(|_| anyhow::anyhow!("{name}={text:?} is not a valid value"))
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        let url_user = topology::management::amqp_url_parts(
            &var("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string()),
        )?
        .0;
        Ok(Settings {
            amqp_url: amqp_url_from_env()?,
            database_url: var("DATABASE_URL"),
            run_dir: var("ORDERFLOW_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| "run".into()),
            http_addr: parsed("ORDERFLOW_HTTP_ADDR", DEFAULT_HTTP_ADDR.parse()?)?,
            prefetch: parsed("ORDERFLOW_PREFETCH", 64)?,
            picklist_batch: parsed("ORDERFLOW_PICKLIST_BATCH", 25)?,
            picklist_flush: Duration::from_millis(parsed("ORDERFLOW_PICKLIST_FLUSH_MS", 500)?),
            max_message_bytes: parsed("ORDERFLOW_MAX_MESSAGE_BYTES", 64 * 1024)?,
            max_attempts: parsed("ORDERFLOW_MAX_ATTEMPTS", 5)?,
            instance_id: var("ORDERFLOW_INSTANCE_ID"),
            change_retention: Duration::from_secs(parsed("ORDERFLOW_CHANGE_RETENTION_S", 86_400)?),
            http_header_timeout: match parsed("ORDERFLOW_HTTP_HEADER_TIMEOUT_S", 10u64)? {
                0 => anyhow::bail!("ORDERFLOW_HTTP_HEADER_TIMEOUT_S must be at least 1 (seconds)"),
                seconds => Duration::from_secs(seconds),
            },
            user_prefix: var("ORDERFLOW_USER_PREFIX").unwrap_or_else(|| "orderflow-".into()),
            operator_user: var("ORDERFLOW_OPERATOR_USER").unwrap_or(url_user),
        })
    }

    /// `ORDERFLOW_DB_MAX_CONNECTIONS`: the most connections this process opens
    /// to the PostgreSQL server of `DATABASE_URL`, all its stores together
    /// (read by `store::Store::open`; not a field, so that every test's
    /// literal `Settings` need not change).
    pub fn db_max_connections() -> anyhow::Result<u32> {
        match parsed("ORDERFLOW_DB_MAX_CONNECTIONS", 8u32)? {
            0 => anyhow::bail!("ORDERFLOW_DB_MAX_CONNECTIONS must be at least 1"),
            n => Ok(n),
        }
    }

    /// `ORDERFLOW_METRICS_ADDR`: where the process serves its Prometheus
    /// metrics (`GET /metrics`); unset, it serves none.
    pub fn metrics_addr() -> anyhow::Result<Option<SocketAddr>> {
        match var("ORDERFLOW_METRICS_ADDR") {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                anyhow::anyhow!("ORDERFLOW_METRICS_ADDR={text:?} is not an address such as 127.0.0.1:9101")
            }),
        }
    }

    /// `ORDERFLOW_RESULT_RETENTION_S`: how long the tracker keeps a service
    /// result kept for polling after it was first read.
    pub fn result_retention() -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(parsed("ORDERFLOW_RESULT_RETENTION_S", 600u64)?))
    }

    /// `ORDERFLOW_WAREHOUSE_AFTER_S`: the quiet period after an order ended
    /// before the tracker moves its history from the active store to the
    /// warehouse (late duplicates and change records mostly arrive within it).
    pub fn warehouse_after() -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(parsed("ORDERFLOW_WAREHOUSE_AFTER_S", 300u64)?))
    }

    /// `ORDERFLOW_CALL_TIMEOUT_MS`: how long the coordinator waits for a
    /// service's answer before it calls again (same request id).
    pub fn call_timeout() -> anyhow::Result<Duration> {
        match parsed("ORDERFLOW_CALL_TIMEOUT_MS", 5000u64)? {
            0 => anyhow::bail!("ORDERFLOW_CALL_TIMEOUT_MS must be at least 1 (milliseconds)"),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    /// `ORDERFLOW_DELAY_MS_<NODE>`, else `ORDERFLOW_DELAY_MS`: how long a node
    /// instance is busy per element (one element at a time), to slow a stage
    /// down on purpose (demos, tests, benchmarks).
    pub fn delay_for(&self, node: &str) -> anyhow::Result<Option<Duration>> {
        let specific = format!("ORDERFLOW_DELAY_MS_{}", node.to_ascii_uppercase());
        let ms: u64 = match var(&specific) {
            Some(_) => parsed(&specific, 0)?,
            None => parsed("ORDERFLOW_DELAY_MS", 0)?,
        };
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }

    pub fn instance_id(&self, node: &str) -> String {
        self.instance_id.clone().unwrap_or_else(|| format!("{node}-{}", std::process::id()))
    }

    /// The URL of the tracker's HTTP API.
    pub fn tracker_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The broker user this process connects as (what it signs its messages with).
    pub fn broker_user(&self) -> String {
        topology::management::amqp_url_parts(&self.amqp_url).map(|(user, _, _)| user).unwrap_or_default()
    }

    /// The AMQP URL with any password replaced, for logs.
    pub fn amqp_url_redacted(&self) -> String {
        redact_url(&self.amqp_url)
    }
}

/// `AMQP_URL`, with its user and password replaced by `AMQP_USER` and
/// `AMQP_PASSWORD` or the content of `AMQP_PASSWORD_FILE` when those are set.
fn amqp_url_from_env() -> anyhow::Result<String> {
    let url = var("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
    let password = match (var("AMQP_PASSWORD"), var("AMQP_PASSWORD_FILE")) {
        (Some(p), _) => Some(p),
        (None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read AMQP_PASSWORD_FILE {file}: {e}"))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let user = var("AMQP_USER");
    if user.is_none() && password.is_none() {
        return Ok(url);
    }
    let urls = topology::management::amqp_urls(&url);
    Ok(urls
        .iter()
        .map(|u| with_credentials(u, user.as_deref(), password.as_deref()))
        .collect::<Vec<_>>()
        .join(","))
}

/// Sets the user and/or password of an AMQP URL (percent-encoded).
pub fn with_credentials(url: &str, user: Option<&str>, password: Option<&str>) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (old_user, old_password, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (u.to_string(), p.to_string(), host)
        }
        None => (String::new(), String::new(), authority),
    };
    let user = user.map(topology::management::encode).unwrap_or(old_user);
    let password = password.map(topology::management::encode).unwrap_or(old_password);
    format!("{scheme}://{user}:{password}@{host}{path}")
}

/// Replaces the password of a URL (`scheme://user:secret@host`), or of each
/// of a comma-separated list, with `***`.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return topology::management::amqp_urls(url)
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_string() };
    let user = userinfo.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_broker_urls_is_one_stack_on_several_nodes() {
        let list = "amqp://u:secret@n1:5672/shop, amqp://u:secret@n2:5672/shop";
        assert_eq!(topology::management::amqp_urls(list).len(), 2);
        let (user, _, vhost) = topology::management::amqp_url_parts(list).unwrap();
        assert_eq!((user.as_str(), vhost.as_str()), ("u", "shop"));
        assert_eq!(redact_url(list), "amqp://u:***@n1:5672/shop,amqp://u:***@n2:5672/shop");
    }

    #[test]
    fn redaction_hides_the_password() {
        assert_eq!(redact_url("amqp://app:s3cret@host:5672/v"), "amqp://app:***@host:5672/v");
        assert_eq!(redact_url("amqp://host"), "amqp://host");
    }

    #[test]
    fn credentials_replace_those_of_the_url() {
        let url = "amqps://guest:guest@broker:5671/shop";
        assert_eq!(
            with_credentials(url, Some("orderflow-payment"), Some("p@ss/w")),
            "amqps://orderflow-payment:p%40ss%2Fw@broker:5671/shop"
        );
        assert_eq!(with_credentials("amqp://host/%2f", None, Some("x")), "amqp://:x@host/%2f");
    }
}
