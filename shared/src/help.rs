//! The environment variables the binaries read, as data: each binary's
//! `--help` lists those it reads (with defaults and units) from this one
//! table, which is the README's settings table (a unit test checks both agree).

/// One setting read from the environment.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> Variable {
    Variable { name, default, meaning }
}

/// Every setting, in the README's order.
pub const VARIABLES: &[Variable] = &[
    var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", "broker, credentials and vhost; amqps:// for TLS"),
    var("AMQP_USER", "unset", "replaces the user of AMQP_URL"),
    var("AMQP_PASSWORD", "unset", "replaces the password of AMQP_URL"),
    var("AMQP_PASSWORD_FILE", "unset", "a file holding the password (instead of AMQP_PASSWORD)"),
    var("DATABASE_URL", "unset: SQLite files in the run dir", "postgres://... for PostgreSQL stores"),
    var("ORDERFLOW_DB_MAX_CONNECTIONS", "8", "PostgreSQL connections per process, all its stores together"),
    var("ORDERFLOW_RUN_DIR", "./run", "pids, logs, SQLite stores"),
    var(
        "ORDERFLOW_HTTP_ADDR",
        "127.0.0.1:8089",
        "the tracker's listen address, where the CLI asks",
    ),
    var("ORDERFLOW_PREFETCH", "64", "unacknowledged deliveries per node instance"),
    var("ORDERFLOW_PICKLIST_BATCH", "25", "orders per picklist"),
    var("ORDERFLOW_PICKLIST_FLUSH_MS", "500", "longest wait of a picklist's oldest order, in milliseconds"),
    var("ORDERFLOW_MAX_MESSAGE_BYTES", "65536", "larger messages are dead-lettered unread (bytes)"),
    var("ORDERFLOW_DELAY_MS", "0", "milliseconds each node instance is busy per element (demos, tests)"),
    var("ORDERFLOW_DELAY_MS_<NODE>", "0", "the same for one node (ORDERFLOW_DELAY_MS_PAYMENT=10)"),
    var("ORDERFLOW_MAX_ATTEMPTS", "5", "tries of a transiently failing message before it is dead-lettered"),
    var("ORDERFLOW_INSTANCE_ID", "<node>-<pid>", "names this process in audit events and logs"),
    var(
        "ORDERFLOW_CHANGE_RETENTION_S",
        "86400",
        "seconds a change book keeps a change request and a closed order",
    ),
    var("ORDERFLOW_HTTP_HEADER_TIMEOUT_S", "10", "seconds the tracker API waits for a request's headers"),
    var(
        "ORDERFLOW_RESULT_RETENTION_S",
        "600",
        "seconds the tracker keeps a polled service result after it was first read",
    ),
    var(
        "ORDERFLOW_WAREHOUSE_AFTER_S",
        "300",
        "seconds after an order ended before the tracker moves its history to the warehouse",
    ),
    var(
        "ORDERFLOW_CALL_TIMEOUT_MS",
        "5000",
        "milliseconds the coordinator waits for a service's answer before calling again",
    ),
    var("ORDERFLOW_MGMT_URL", "http://127.0.0.1:15672", "the management API (the dashboard's queue depths)"),
    var("ORDERFLOW_MGMT_USER", "AMQP_URL's user", "management API user (the `monitoring` tag is enough)"),
    var("ORDERFLOW_MGMT_PASSWORD", "AMQP_URL's password", "management API password"),
    var("ORDERFLOW_PUBLISH_PATIENCE_S", "120", "seconds `publish` keeps reconnecting without progress"),
    var(
        "RUST_LOG",
        "warn, and each process's start and stop lines",
        "log detail (info, debug, transport=debug, ...)",
    ),
    var("ORDERFLOW_LOG_FORMAT", "text", "json: one JSON object per log line"),
    var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "unset: no export",
        "an OpenTelemetry collector (OTLP/HTTP) to export each message's span to",
    ),
    var(
        "ORDERFLOW_METRICS_ADDR",
        "unset: no metrics endpoint",
        "where a worker or the tracker serves Prometheus metrics (GET /metrics), e.g. 127.0.0.1:29101",
    ),
    var(
        "ORDERFLOW_REGION",
        "primary",
        "the customer and catalog binaries: which copy it runs (primary, or the replica uk or de)",
    ),
    var(
        "ORDERFLOW_DOMAIN_TIMEOUT_MS",
        "3000",
        "milliseconds the CLI's domain commands, intake and inventory wait for a domain's answer",
    ),
    var(
        "ORDERFLOW_DOMAIN_MAX_STALENESS_MS",
        "60000",
        "milliseconds a domain replica may be behind its primary (since it last knew it held every change) and still answer intake or inventory when the primary does not; a replica further behind makes the order wait",
    ),
    var(
        "ORDERFLOW_WORKFLOWS",
        "",
        "the version of each workflow new orders take at intake, as NAME:VERSION[,...] (standard:2); a workflow not named: version 1. Orders keep the version they started on to their end",
    ),
    var(
        "ORDERFLOW_BACKORDER_WAIT_S",
        "600",
        "seconds a backordered order waits for received items before it ends out_of_stock (its authorization voided)",
    ),
    var(
        "ORDERFLOW_PAYMENT_WAIT_S",
        "86400",
        "seconds an order whose card was declined waits at payment (awaiting_payment) for another card before it ends payment_declined; 0 ends it at once",
    ),
    var("ORDERFLOW_SETTLEMENT_BATCH", "50", "captures per settlement batch (the orderflow.settlement aggregation queue)"),
    var(
        "ORDERFLOW_SETTLEMENT_FLUSH_MS",
        "1000",
        "longest wait of a settlement batch's oldest capture, in milliseconds",
    ),
    var(
        "ORDERFLOW_DISTRIBUTOR_DELAY_MS",
        "2000",
        "distributor-sim: milliseconds between taking a purchase order and shipping it (a lead time, shortened)",
    ),
    var("ORDERFLOW_USER_PREFIX", "orderflow-", "what the stack's per-role broker users are named with"),
    var(
        "ORDERFLOW_OPERATOR_USER",
        "AMQP_URL's user",
        "the administrator trusted to replay dead letters and place and change orders",
    ),
];

/// What every process reads: the broker and the logs.
pub const CONNECTION: &[&str] = &[
    "AMQP_URL",
    "AMQP_USER",
    "AMQP_PASSWORD",
    "AMQP_PASSWORD_FILE",
    "ORDERFLOW_USER_PREFIX",
    "ORDERFLOW_OPERATOR_USER",
    "RUST_LOG",
    "ORDERFLOW_LOG_FORMAT",
];

/// What a workflow node reads besides [`CONNECTION`].
pub const NODE: &[&str] = &[
    "DATABASE_URL",
    "ORDERFLOW_DB_MAX_CONNECTIONS",
    "ORDERFLOW_RUN_DIR",
    "ORDERFLOW_INSTANCE_ID",
    "ORDERFLOW_PREFETCH",
    "ORDERFLOW_MAX_MESSAGE_BYTES",
    "ORDERFLOW_MAX_ATTEMPTS",
    "ORDERFLOW_CHANGE_RETENTION_S",
    "ORDERFLOW_DELAY_MS",
    "ORDERFLOW_DELAY_MS_<NODE>",
    "ORDERFLOW_METRICS_ADDR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What the picklist reads besides [`NODE`].
pub const PICKLIST: &[&str] = &["ORDERFLOW_PICKLIST_BATCH", "ORDERFLOW_PICKLIST_FLUSH_MS"];

/// What the tracker reads besides [`CONNECTION`].
pub const TRACKER: &[&str] = &[
    "DATABASE_URL",
    "ORDERFLOW_DB_MAX_CONNECTIONS",
    "ORDERFLOW_RUN_DIR",
    "ORDERFLOW_INSTANCE_ID",
    "ORDERFLOW_MAX_MESSAGE_BYTES",
    "ORDERFLOW_HTTP_ADDR",
    "ORDERFLOW_HTTP_HEADER_TIMEOUT_S",
    "ORDERFLOW_RESULT_RETENTION_S",
    "ORDERFLOW_CHANGE_RETENTION_S",
    "ORDERFLOW_WAREHOUSE_AFTER_S",
    "ORDERFLOW_MGMT_URL",
    "ORDERFLOW_MGMT_USER",
    "ORDERFLOW_MGMT_PASSWORD",
    "ORDERFLOW_METRICS_ADDR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What the coordinator reads besides [`CONNECTION`].
pub const COORDINATOR: &[&str] = &[
    "DATABASE_URL",
    "ORDERFLOW_DB_MAX_CONNECTIONS",
    "ORDERFLOW_RUN_DIR",
    "ORDERFLOW_INSTANCE_ID",
    "ORDERFLOW_PREFETCH",
    "ORDERFLOW_MAX_MESSAGE_BYTES",
    "ORDERFLOW_MAX_ATTEMPTS",
    "ORDERFLOW_CHANGE_RETENTION_S",
    "ORDERFLOW_CALL_TIMEOUT_MS",
    "ORDERFLOW_METRICS_ADDR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "ORDERFLOW_PAYMENT_WAIT_S",
];

/// What a domain process reads besides [`CONNECTION`].
pub const DOMAIN: &[&str] = &[
    "DATABASE_URL",
    "ORDERFLOW_DB_MAX_CONNECTIONS",
    "ORDERFLOW_RUN_DIR",
    "ORDERFLOW_INSTANCE_ID",
    "ORDERFLOW_PREFETCH",
    "ORDERFLOW_MAX_MESSAGE_BYTES",
    "ORDERFLOW_REGION",
    "ORDERFLOW_METRICS_ADDR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What inventory reads besides a node's settings: its backorders.
pub const INVENTORY: &[&str] =
    &["ORDERFLOW_BACKORDER_WAIT_S", "ORDERFLOW_DOMAIN_TIMEOUT_MS", "ORDERFLOW_DOMAIN_MAX_STALENESS_MS"];

/// What intake reads besides a node's settings: how it reads the domains.
pub const INTAKE: &[&str] =
    &["ORDERFLOW_DOMAIN_TIMEOUT_MS", "ORDERFLOW_DOMAIN_MAX_STALENESS_MS", "ORDERFLOW_WORKFLOWS"];

/// What payment reads besides a node's settings: how long a declined order waits.
pub const PAYMENT: &[&str] =
    &["ORDERFLOW_PAYMENT_WAIT_S", "ORDERFLOW_SETTLEMENT_BATCH", "ORDERFLOW_SETTLEMENT_FLUSH_MS"];

/// What the simulated distributors read besides [`CONNECTION`].
pub const DISTRIBUTOR_SIM: &[&str] =
    &["ORDERFLOW_DISTRIBUTOR_DELAY_MS", "ORDERFLOW_PREFETCH", "ORDERFLOW_INSTANCE_ID"];

/// What the `orderflow` command reads besides [`CONNECTION`].
pub const CLI: &[&str] = &[
    "ORDERFLOW_HTTP_ADDR",
    "ORDERFLOW_MAX_MESSAGE_BYTES",
    "ORDERFLOW_PUBLISH_PATIENCE_S",
    "ORDERFLOW_DOMAIN_TIMEOUT_MS",
];

/// The default of setting `name`, as the settings table writes it: the one
/// place a default is written (`crate::settings` parses it).
pub fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .map_or_else(|| panic!("{name} is not in the settings table"), |v| v.default)
}

/// The variables of a group a process row names (`vocabulary::Reads`).
pub fn group(reads: topology::Reads) -> &'static [&'static str] {
    use topology::Reads;
    match reads {
        Reads::Node => NODE,
        Reads::Intake => INTAKE,
        Reads::Picklist => PICKLIST,
        Reads::Inventory => INVENTORY,
        Reads::Payment => PAYMENT,
        Reads::Tracker => TRACKER,
        Reads::Coordinator => COORDINATOR,
        Reads::Domain => DOMAIN,
        Reads::DistributorSim => DISTRIBUTOR_SIM,
    }
}

/// An "Environment:" section for `--help`: each named variable with its
/// default and meaning.
pub fn environment(groups: &[&[&str]]) -> String {
    let mut text = String::from("Environment (settings; the README's settings table has them all):\n");
    for name in groups.iter().flat_map(|g| g.iter()) {
        let variable = VARIABLES.iter().find(|v| v.name == *name).expect("a documented variable");
        text.push_str(&format!(
            "  {:<32} {} [default: {}]\n",
            variable.name, variable.meaning, variable.default
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_names_documented_variables_and_the_readme_lists_them_all() {
        let all = [CONNECTION, NODE, PICKLIST, TRACKER, COORDINATOR, DOMAIN, CLI, INVENTORY, DISTRIBUTOR_SIM];
        let text = environment(&all);
        assert!(text.contains("AMQP_URL") && text.contains("[default: 64]"), "{text}");
        let readme = include_str!("../../README.md");
        let table = readme.split("## Settings").nth(1).expect("the README has a settings section");
        for variable in VARIABLES {
            assert!(
                table.contains(&format!("`{}`", variable.name)),
                "the README's table lacks {}",
                variable.name
            );
        }
    }
}
