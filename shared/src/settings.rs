//! Settings from the environment, read once at start by every binary into
//! typed [`Settings`]: each default is written once, in the settings table
//! (`crate::help::VARIABLES`, which is also `--help` and the README's table),
//! and a bad value stops the process at start with the variable's name.
//! Credentials come only from here, never from code. (The log settings,
//! `RUST_LOG`, `ORDERFLOW_LOG_FORMAT` and `OTEL_*`, are read by
//! `telemetry` before these, so that a bad value here is logged.)

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
    /// `ORDERFLOW_DB_MAX_CONNECTIONS`: the most connections this process
    /// opens to the PostgreSQL server of `DATABASE_URL`, all its stores together.
    pub db_max_connections: u32,
    /// `ORDERFLOW_METRICS_ADDR`: where the process serves its Prometheus
    /// metrics (`GET /metrics`); unset, it serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// `ORDERFLOW_DELAY_MS` and every `ORDERFLOW_DELAY_MS_<NODE>`: how long a
    /// node instance is busy per element, to slow a stage down on purpose
    /// (demos, tests, benchmarks); see [`Settings::delay_for`].
    pub delays: Delays,
    /// `ORDERFLOW_RESULT_RETENTION_S`: how long the tracker keeps a service
    /// result kept for polling after it was first read.
    pub result_retention: Duration,
    /// `ORDERFLOW_WAREHOUSE_AFTER_S`: the quiet period after an order ended
    /// before the tracker moves its history from the active store to the
    /// warehouse (late duplicates and change records mostly arrive within it).
    pub warehouse_after: Duration,
    /// `ORDERFLOW_CALL_TIMEOUT_MS`: how long the coordinator waits for a
    /// service's answer before it calls again (same request id).
    pub call_timeout: Duration,
    /// `ORDERFLOW_DOMAIN_TIMEOUT_MS`: how long intake and inventory wait for a domain's answer.
    pub domain_timeout: Duration,
    /// `ORDERFLOW_DOMAIN_MAX_STALENESS_MS`: how far behind its primary a
    /// replica may be to answer a node's read when the primary does not.
    pub domain_max_staleness: Duration,
    /// `ORDERFLOW_WORKFLOWS`: the version of each workflow that new orders
    /// take at intake (`standard:2`; unnamed: version 1).
    pub workflows: topology::workflow::Deployed,
    /// `ORDERFLOW_BACKORDER_WAIT_S`: how long a backordered order waits for
    /// received items before it ends out of stock.
    pub backorder_wait: Duration,
    /// `ORDERFLOW_PAYMENT_WAIT_S`: how long an order whose card was
    /// declined waits for another card (0: it ends `payment_declined` at once).
    pub payment_wait: Duration,
    /// `ORDERFLOW_SETTLEMENT_BATCH`: captures settled with the processor in one batch.
    pub settlement_batch: usize,
    /// `ORDERFLOW_SETTLEMENT_FLUSH_MS`: longest wait of a settlement batch's oldest capture.
    pub settlement_flush: Duration,
    /// `ORDERFLOW_DISTRIBUTOR_DELAY_MS`: how long after taking a purchase
    /// order the simulated distributors ship it.
    pub distributor_delay: Duration,
    /// `ORDERFLOW_REGION`: the customer binary's copy (`None`: the primary;
    /// `uk`, `de`: that replica).
    pub region: Option<String>,
    /// `ORDERFLOW_PUBLISH_PATIENCE_S`: how long `orderflow publish` keeps
    /// reconnecting without progress before it gives up.
    pub publish_patience: Duration,
}

/// The per-element delays of the nodes, as set.
#[derive(Clone, Debug, Default)]
pub struct Delays {
    /// `ORDERFLOW_DELAY_MS`, for every node without one of its own.
    pub every_node: Option<Duration>,
    /// `ORDERFLOW_DELAY_MS_<NODE>` (the node's name in capitals).
    pub per_node: Vec<(String, Option<Duration>)>,
}

impl Settings {
    /// Settings for a unit test (here and in the transport's): SQLite stores
    /// in `run_dir`, nothing read from the environment.
    pub fn scratch(run_dir: PathBuf) -> Settings {
        Settings {
            amqp_url: crate::help::default_of("AMQP_URL").into(),
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
            db_max_connections: 2,
            metrics_addr: None,
            delays: Delays::default(),
            result_retention: Duration::from_secs(600),
            warehouse_after: Duration::from_secs(300),
            call_timeout: Duration::from_secs(5),
            domain_timeout: Duration::from_secs(3),
            domain_max_staleness: Duration::from_secs(60),
            workflows: topology::workflow::Deployed::default(),
            backorder_wait: Duration::from_secs(600),
            payment_wait: Duration::ZERO,
            settlement_batch: 1,
            settlement_flush: Duration::from_millis(1),
            distributor_delay: Duration::from_secs(2),
            region: None,
            publish_patience: Duration::from_secs(120),
        }
    }
}

/// A run directory of a unit test's own (`Settings::scratch` in it),
/// removed when the test ends, passed or failed.
pub struct ScratchRun(PathBuf);

impl ScratchRun {
    /// A fresh directory under the system's temporary one, named for `what`.
    pub fn new(what: &str) -> ScratchRun {
        let dir = std::env::temp_dir().join(format!("orderflow-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ScratchRun(dir)
    }

    pub fn settings(&self) -> Settings {
        Settings::scratch(self.0.clone())
    }
}

impl Drop for ScratchRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The value of setting `name`: the environment's, else its default from
/// the settings table; `what` says what a valid value is when it is not one.
fn setting<T: std::str::FromStr>(name: &str, what: &str) -> anyhow::Result<T> {
    let text = var(name).unwrap_or_else(|| crate::help::default_of(name).to_string());
    text.trim().parse().map_err(|_| anyhow::anyhow!("{name}={text:?} is not valid: {what}"))
}

/// A whole number of `unit`s between `min` and `max`, as a duration.
fn duration(name: &str, unit: Duration, min: u64, max: u64) -> anyhow::Result<Duration> {
    let unit_name = if unit == Duration::from_millis(1) { "milliseconds" } else { "seconds" };
    let what = format!("{unit_name} from {min} to {max}");
    let n: u64 = setting(name, &what)?;
    if !(min..=max).contains(&n) {
        anyhow::bail!("{name}={n} is not valid: {what}");
    }
    Ok(unit * u32::try_from(n).unwrap_or(u32::MAX))
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);
const DAY_S: u64 = 86_400;

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        let url_user = topology::management::amqp_url_parts(
            &var("AMQP_URL").unwrap_or_else(|| crate::help::default_of("AMQP_URL").to_string()),
        )?
        .0;
        let db_max_connections =
            setting("ORDERFLOW_DB_MAX_CONNECTIONS", "a number of connections, at least 1")?;
        if db_max_connections == 0 {
            anyhow::bail!("ORDERFLOW_DB_MAX_CONNECTIONS=0 is not valid: a number of connections, at least 1");
        }
        Ok(Settings {
            amqp_url: amqp_url_from_env()?,
            database_url: var("DATABASE_URL"),
            run_dir: var("ORDERFLOW_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| "run".into()),
            http_addr: setting("ORDERFLOW_HTTP_ADDR", "an address such as 127.0.0.1:8089")?,
            prefetch: setting("ORDERFLOW_PREFETCH", "a number of deliveries, 0 to 65535")?,
            picklist_batch: setting("ORDERFLOW_PICKLIST_BATCH", "a number of orders")?,
            picklist_flush: MS * setting::<u32>("ORDERFLOW_PICKLIST_FLUSH_MS", "milliseconds")?,
            max_message_bytes: setting("ORDERFLOW_MAX_MESSAGE_BYTES", "a number of bytes")?,
            max_attempts: setting("ORDERFLOW_MAX_ATTEMPTS", "a number of tries")?,
            instance_id: var("ORDERFLOW_INSTANCE_ID"),
            change_retention: duration("ORDERFLOW_CHANGE_RETENTION_S", S, 0, 3650 * DAY_S)?,
            http_header_timeout: duration("ORDERFLOW_HTTP_HEADER_TIMEOUT_S", S, 1, DAY_S)?,
            user_prefix: var("ORDERFLOW_USER_PREFIX").unwrap_or_else(|| "orderflow-".into()),
            operator_user: var("ORDERFLOW_OPERATOR_USER").unwrap_or(url_user),
            db_max_connections,
            metrics_addr: match var("ORDERFLOW_METRICS_ADDR") {
                None => None,
                Some(_) => Some(setting("ORDERFLOW_METRICS_ADDR", "an address such as 127.0.0.1:29101")?),
            },
            delays: Delays::from_env()?,
            result_retention: duration("ORDERFLOW_RESULT_RETENTION_S", S, 0, 3650 * DAY_S)?,
            warehouse_after: duration("ORDERFLOW_WAREHOUSE_AFTER_S", S, 0, 3650 * DAY_S)?,
            call_timeout: duration("ORDERFLOW_CALL_TIMEOUT_MS", MS, 1, DAY_S * 1000)?,
            domain_timeout: duration("ORDERFLOW_DOMAIN_TIMEOUT_MS", MS, 1, 600_000)?,
            domain_max_staleness: duration("ORDERFLOW_DOMAIN_MAX_STALENESS_MS", MS, 0, DAY_S * 1000)?,
            workflows: topology::workflow::Deployed::parse(&var("ORDERFLOW_WORKFLOWS").unwrap_or_default())
                .map_err(|reason| anyhow::anyhow!("ORDERFLOW_WORKFLOWS is not valid: {reason}"))?,
            backorder_wait: backorder_wait()?,
            payment_wait: duration("ORDERFLOW_PAYMENT_WAIT_S", S, 0, 365 * DAY_S)?,
            settlement_batch: settlement_batch()?,
            settlement_flush: duration("ORDERFLOW_SETTLEMENT_FLUSH_MS", MS, 1, 600_000)?,
            distributor_delay: duration("ORDERFLOW_DISTRIBUTOR_DELAY_MS", MS, 0, DAY_S * 1000)?,
            region: var("ORDERFLOW_REGION").filter(|region| region != "primary"),
            publish_patience: duration("ORDERFLOW_PUBLISH_PATIENCE_S", S, 0, 3650 * DAY_S)?,
        })
    }

    /// How long `node` is busy per element: `ORDERFLOW_DELAY_MS_<NODE>`,
    /// else `ORDERFLOW_DELAY_MS`; `None` when not at all.
    pub fn delay_for(&self, node: &str) -> Option<Duration> {
        let own = self.delays.per_node.iter().find(|(name, _)| name.eq_ignore_ascii_case(node));
        own.map_or(self.delays.every_node, |(_, delay)| *delay)
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
    let url = var("AMQP_URL").unwrap_or_else(|| crate::help::default_of("AMQP_URL").to_string());
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

impl Delays {
    fn from_env() -> anyhow::Result<Delays> {
        let milliseconds = |name: &str| -> anyhow::Result<Option<Duration>> {
            let delay = duration(name, MS, 0, DAY_S * 1000)?;
            Ok((!delay.is_zero()).then_some(delay))
        };
        let mut per_node = Vec::new();
        for (name, _) in std::env::vars() {
            if let Some(node) = name.strip_prefix("ORDERFLOW_DELAY_MS_").filter(|_| var(&name).is_some()) {
                per_node.push((node.to_ascii_lowercase(), milliseconds(&name)?));
            }
        }
        Ok(Delays { every_node: milliseconds("ORDERFLOW_DELAY_MS")?, per_node })
    }
}

/// `ORDERFLOW_BACKORDER_WAIT_S`: seconds (a fraction allowed), above 0 and at most a year.
fn backorder_wait() -> anyhow::Result<Duration> {
    let what = "seconds, above 0 and at most a year";
    let seconds: f64 = setting("ORDERFLOW_BACKORDER_WAIT_S", what)?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 31_536_000.0) {
        anyhow::bail!("ORDERFLOW_BACKORDER_WAIT_S={seconds} is not valid: {what}");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `ORDERFLOW_SETTLEMENT_BATCH`: 1 to 1,000 captures (the settling
/// process holds a batch and as many again unacknowledged).
fn settlement_batch() -> anyhow::Result<usize> {
    let what = "a number of captures, 1 to 1000";
    let n: usize = setting("ORDERFLOW_SETTLEMENT_BATCH", what)?;
    if !(1..=1000).contains(&n) {
        anyhow::bail!("ORDERFLOW_SETTLEMENT_BATCH={n} is not valid: {what}");
    }
    Ok(n)
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
