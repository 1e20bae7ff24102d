//! What the integration tests add to the shared harness (`harness`): every
//! test gets its own stack (vhost, run directory, tracker port, real
//! processes of the binaries built once per run) through [`Stack`], which
//! wraps a harness stack with panicking calls and the tests' own tools: the
//! `orderflow` CLI, the stores, PostgreSQL databases, order builders and the
//! books' checks.

pub mod orders;

use harness::{until, Broker, Check, OrderView, StackConfig, Statuses};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use topology::management::secret_file_name;
use topology::management::Management;
use uuid::Uuid;

/// The local broker's management API.
pub fn management() -> Management {
    Broker::local().management().clone()
}

/// The folder holding the workspace's binaries, built once per test run
/// (or `ORDERFLOW_TEST_BIN_DIR`, taken as built: to run a copied test binary
/// again and again while the workspace is rebuilt, as the flaky-test hunt does).
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("ORDERFLOW_TEST_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--workspace", "--bins", "--quiet"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the worker binaries failed");
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
        })
        .clone()
}

/// A harness call's value; a failure fails the test with its cause chain.
fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|error| panic!("{error:#}"))
}

/// A running orderflow for one test: a harness stack (see [`harness::Stack`],
/// reached through `Deref`) whose calls fail the test instead of returning errors.
pub struct Stack {
    inner: harness::Stack,
    /// Set when every process runs as its own least-privilege user (`<prefix><binary>`).
    pub user_prefix: Option<String>,
    /// A spread PostgreSQL stack's share of the server's connections.
    _pg_share: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// Spread PostgreSQL stacks running at once, whatever the test threads: two
/// of 16 processes with [`PG_CONNECTIONS_PER_PROCESS`] each, plus the tests'
/// own connections, stay within the local server's 100.
static PG_STACKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A share of the PostgreSQL server's connections, for a test that puts a
/// stack of its own on a database (held until dropped; see `PG_STACKS`).
pub async fn pg_share() -> tokio::sync::SemaphorePermit<'static> {
    PG_STACKS.acquire().await.expect("the semaphore is never closed")
}

impl Deref for Stack {
    type Target = harness::Stack;
    fn deref(&self) -> &harness::Stack {
        &self.inner
    }
}

impl DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut harness::Stack {
        &mut self.inner
    }
}

impl Stack {
    /// Starts a stack with one instance of every process; `env` applies to every process.
    pub async fn start(test: &str, env: &[(&str, &str)]) -> Stack {
        let mut stack = Stack::empty(test, env).await;
        ok(stack.inner.start_all().await);
        stack
    }

    /// A stack on the PostgreSQL database `database` spread as over several
    /// hosts: `instances` instances of every node and of the tracker, each
    /// process with a run directory of its own (so they share only the
    /// broker and the database); the trackers past the first listen on ports
    /// of their own. `env` applies to every process. Each process opens at
    /// most [`PG_CONNECTIONS_PER_PROCESS`] connections.
    pub async fn start_spread(
        test: &str,
        database: &PgDatabase,
        instances: usize,
        env: &[(&str, &str)],
    ) -> Stack {
        let mut all = vec![
            ("DATABASE_URL", database.url.as_str()),
            ("ORDERFLOW_DB_MAX_CONNECTIONS", PG_CONNECTIONS_PER_PROCESS),
        ];
        all.extend_from_slice(env);
        let share = PG_STACKS.acquire().await.expect("the semaphore is never closed");
        let mut stack = Stack::empty(test, &all).await;
        stack._pg_share = Some(share);
        stack.config.run_dir_per_process = true;
        for binary in harness::processes().into_iter().chain(harness::supply_processes()) {
            for i in 1..=instances {
                stack.spawn_instance(binary, i);
            }
        }
        ok(stack.inner.wait_ready(harness::stack::READY_TIMEOUT).await);
        stack
    }

    /// Starts instance `i` of `binary` (`<binary>-<i>`); a tracker past the
    /// first gets a port of its own.
    pub fn spawn_instance(&mut self, binary: &str, i: usize) {
        let label = format!("{binary}-{i}");
        if binary == "tracker" && i > 1 {
            let addr = format!("127.0.0.1:{}", ok(harness::stack::free_port()));
            ok(self.inner.spawn_with(binary, &label, &[("ORDERFLOW_HTTP_ADDR", &addr)]));
        } else {
            self.spawn(binary, &label);
        }
    }

    /// A stack with its topology declared and no process started yet.
    pub async fn empty(test: &str, env: &[(&str, &str)]) -> Stack {
        Stack::empty_on(test, Broker::local(), None, env).await
    }

    /// [`Stack::empty`] on another broker (the nodes of a cluster), its
    /// quorum queues of `quorum_size` members.
    pub async fn empty_on(
        test: &str,
        broker: Broker,
        quorum_size: Option<u32>,
        env: &[(&str, &str)],
    ) -> Stack {
        let mut config = StackConfig::new(broker, bin_dir());
        config.quorum_size = quorum_size;
        config.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let name = format!("orderflow-test-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        Stack { inner: ok(harness::Stack::create(&config, &name).await), user_prefix: None, _pg_share: None }
    }

    /// Like [`Stack::start`], but every node and the tracker connect as their
    /// own least-privilege user, created for this test and deleted after it.
    pub async fn start_with_node_users(test: &str) -> Stack {
        Stack::start_with_node_users_env(test, &[]).await
    }

    /// [`Stack::start_with_node_users`] with `env` for every process.
    pub async fn start_with_node_users_env(test: &str, env: &[(&str, &str)]) -> Stack {
        let mut stack = Stack::empty(test, env).await;
        let prefix = format!("t{}-", &Uuid::new_v4().simple().to_string()[..8]);
        let secrets = stack.secrets_dir();
        stack.topology(&[
            "apply",
            "--create-users",
            "--secrets-dir",
            secrets.to_str().unwrap(),
            "--user-prefix",
            &prefix,
        ]);
        for binary in topology::all_processes() {
            let binary = binary.as_str();
            let user = stack.user_of(&prefix, binary);
            let password_file = secrets.join(secret_file_name(&user)).display().to_string();
            let binary_env = &mut stack.config.binary_env;
            binary_env.push((binary.into(), "AMQP_USER".into(), user));
            binary_env.push((binary.into(), "AMQP_PASSWORD_FILE".into(), password_file));
        }
        stack.config.env.push(("ORDERFLOW_USER_PREFIX".into(), prefix.clone()));
        stack.user_prefix = Some(prefix);
        ok(stack.inner.start_all().await);
        stack
    }

    /// Runs the `topology` binary against this stack's vhost (as guest).
    pub fn topology(&self, args: &[&str]) {
        let output = self.command("topology").args(args).output().expect("topology runs");
        assert!(output.status.success(), "topology {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.run_dir.join("secrets")
    }

    /// The broker user of a role (`payment`, `tracker`, `publisher`, `support`, ...) in this stack.
    pub fn user_of(&self, prefix: &str, role: &str) -> String {
        let role = topology::permissions::Role::from_name(role).expect("a role");
        role.user(prefix, &self.vhost.name)
    }

    /// The broker user of a role in this stack with node users.
    pub fn role_user(&self, role: &str) -> String {
        self.user_of(self.user_prefix.as_ref().expect("a stack with node users"), role)
    }

    /// The AMQP URL of a role's user (`payment`, `tracker`, `publisher`, `support`, ...).
    pub fn role_url(&self, role: &str) -> String {
        let user = self.role_user(role);
        let password =
            std::fs::read_to_string(self.secrets_dir().join(secret_file_name(&user))).expect("secret file");
        let url = format!("amqp://127.0.0.1:5672/{}", self.vhost.name);
        shared::settings::with_credentials(&url, Some(&user), Some(password.trim()))
    }

    /// Starts one process of `binary` labelled `label` (also its instance id).
    pub fn spawn(&mut self, binary: &str, label: &str) {
        ok(self.inner.spawn(binary, label));
    }

    /// Sends SIGTERM to the process and waits (up to 20 s) for it to exit.
    pub async fn stop(&mut self, label: &str) -> ExitStatus {
        ok(self.inner.stop(label).await)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, label: &str) {
        ok(self.inner.kill(label));
    }

    /// Freezes the process (SIGSTOP) until [`Stack::resume`].
    pub fn pause(&self, label: &str) {
        ok(self.inner.pause(label));
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self, label: &str) {
        ok(self.inner.resume(label));
    }

    /// Stops every process with SIGTERM; returns each one's exit status.
    pub async fn stop_all(&mut self) -> Vec<(String, ExitStatus)> {
        let stopped = self.inner.stop_all().await;
        stopped
            .into_iter()
            .map(|(label, status)| {
                let status = status.unwrap_or_else(|| panic!("{label} did not stop within 20 s of SIGTERM"));
                (label, status)
            })
            .collect()
    }

    /// Runs the `orderflow` CLI against this stack.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command("orderflow").args(args).output().expect("orderflow runs")
    }

    pub async fn wait_for_tracker(&self) {
        ok(self.inner.wait_for_tracker(Duration::from_secs(30)).await);
    }

    /// Writes orders (JSON objects) to a JSON-lines file in the run directory.
    fn orders_file(&self, orders: &[Value]) -> PathBuf {
        let file = self.run_dir.join(format!("orders-{}.jsonl", Uuid::new_v4().simple()));
        let lines: Vec<String> = orders.iter().map(Value::to_string).collect();
        std::fs::write(&file, lines.join("\n")).expect("write orders");
        file
    }

    /// Publishes orders (JSON objects) through `orderflow publish --file`; returns their ids in order.
    pub fn publish(&self, orders: &[Value]) -> Vec<Uuid> {
        self.publish_with(orders, &[])
    }

    /// [`Stack::publish`] in directed mode (`--directed`: to the coordinator).
    pub fn publish_directed(&self, orders: &[Value]) -> Vec<Uuid> {
        self.publish_with(orders, &["--directed"])
    }

    fn publish_with(&self, orders: &[Value], extra: &[&str]) -> Vec<Uuid> {
        let file = self.orders_file(orders);
        let mut args = vec!["publish", "--file", file.to_str().expect("utf-8 path")];
        args.extend(extra);
        let output = self.cli(&args);
        assert!(output.status.success(), "publish failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .lines()
            .map(|l| Uuid::parse_str(l).expect("publish prints uuids"))
            .collect()
    }

    /// Starts `orderflow publish --file` with extra arguments (e.g. `--rate`) without waiting.
    pub fn publish_in_background(&self, orders: &[Value], extra: &[&str]) -> Child {
        let file = self.orders_file(orders);
        let mut args = vec!["publish", "--file", file.to_str().expect("utf-8 path")];
        args.extend(extra);
        self.command("orderflow")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orderflow runs")
    }

    /// Latest states of the given orders, as the tracker knows them (none while it is down).
    pub async fn statuses(&self, ids: &[Uuid]) -> Statuses {
        self.tracker().statuses(ids).await.unwrap_or_default()
    }

    /// Waits until every order is terminal; fails with the states after `timeout`.
    pub async fn wait_terminal(&self, ids: &[Uuid], timeout: Duration) {
        ok(self.inner.wait_terminal(ids, timeout).await);
    }

    /// Waits until the tracker shows the order in `state` (not necessarily terminal).
    pub async fn wait_state(&self, id: &Uuid, state: &str, timeout: Duration) {
        ok(self.inner.wait_state(id, state, timeout).await);
    }

    /// An order's view from `GET /orders/{id}`.
    pub async fn order(&self, id: &Uuid) -> OrderView {
        self.tracker().order(id).await.unwrap_or_else(|error| panic!("GET /orders/{id}: {error}"))
    }

    /// GET a tracker path, returning status and body text: what is on the wire.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.url(path)).await.expect("tracker answers");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// Opens an AMQP connection to this stack's vhost.
    pub async fn connect(&self) -> lapin::Connection {
        ok(self.inner.connect("orderflow-test").await)
    }

    /// The stack's `DATABASE_URL`, when its stores are in a database server.
    pub fn database_url(&self) -> Option<&str> {
        self.config.env.iter().find(|(key, _)| key == "DATABASE_URL").map(|(_, url)| url.as_str())
    }

    /// Opens the store of `owner` (`processor`, `shipping`, ...): the
    /// stack's PostgreSQL database, or else its SQLite file
    /// ([`Stack::sqlite`]); waits until the owner has created `table`.
    pub async fn store(&self, owner: &str, table: &str) -> sqlx::AnyPool {
        match self.database_url() {
            Some(url) => {
                sqlx::any::install_default_drivers();
                let pool = sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .expect("connect to the stack's database");
                wait_for_table(&pool, owner, table).await;
                pool
            }
            None => self.sqlite(owner, table).await,
        }
    }

    /// Opens one of the stack's SQLite stores (`processor`, `shipping`, ...),
    /// waiting until its owner has created `table`.
    pub async fn sqlite(&self, owner: &str, table: &str) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", self.run_dir.join(format!("{owner}.db")).display());
        let pool = sqlx::AnyPool::connect(&url).await.expect("open the SQLite store");
        sqlx::query("PRAGMA busy_timeout = 10000").execute(&pool).await.expect("pragma");
        wait_for_table(&pool, owner, table).await;
        pool
    }

    /// Publishes `body` through the management API (as guest), as the UI's
    /// "Publish message" does; returns the API's answer (`{"routed": true}`).
    pub async fn publish_with_management_api(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: Value,
        body: &str,
    ) -> Value {
        let url = format!(
            "http://127.0.0.1:15672/api/exchanges/{}/{exchange}/publish",
            topology::management::encode(&self.vhost.name)
        );
        let request = json!({
            "properties": properties, "routing_key": routing_key, "payload": body, "payload_encoding": "string"
        });
        let client = reqwest::Client::new();
        let answer = client.post(url).basic_auth("guest", Some("guest")).json(&request).send().await;
        answer.expect("the management API answers").json().await.expect("a JSON answer")
    }

    /// Runs the CLI and parses its standard output as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let output = self.cli(args);
        assert!(output.status.success(), "orderflow {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

    /// Waits until the dead-letter queue holds `n` messages; returns them.
    pub async fn wait_dead_letters(&self, n: usize, timeout: Duration) -> Vec<Value> {
        ok(until(timeout, Duration::from_millis(200), || async {
            let letters = self.cli_json(&["dlq", "list", "--json"]);
            let letters = letters.as_array().expect("a list").clone();
            Ok(if letters.len() >= n {
                Check::Done(letters)
            } else {
                Check::Waiting(format!("{} of {n} dead letters", letters.len()))
            })
        })
        .await)
    }

    /// The dead letters whose reason contains `text`, once there are `n` of
    /// them or 30 s have passed (the caller checks how many came).
    pub async fn letters_with(&self, text: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.cli_json(&["dlq", "list", "--json"]);
            let found: Vec<Value> = all
                .as_array()
                .expect("a list")
                .iter()
                .filter(|l| l["reason"].as_str().unwrap_or_default().contains(text))
                .cloned()
                .collect();
            if found.len() >= n || std::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Runs `orderflow change|cancel ...`; returns (exit code, change id, rest of stdout, stderr).
    pub fn change_cli(&self, args: &[&str]) -> (i32, String, String, String) {
        let output = self.cli(args);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let mut lines = stdout.lines();
        let change_id = lines.next().unwrap_or_default().to_string();
        let rest: Vec<&str> = lines.collect();
        (
            output.status.code().unwrap_or(-1),
            change_id,
            rest.join("\n"),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    /// Waits until every change of the order has an outcome; returns the view.
    pub async fn wait_change_outcomes(&self, id: &Uuid, changes: usize, timeout: Duration) -> OrderView {
        let outcomes = |view: &OrderView| view.history.iter().filter(|h| h.is_change_outcome()).count();
        ok(self.inner.wait_order(id, timeout, |view| outcomes(view) >= changes).await)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let Some(prefix) = self.user_prefix.clone() else { return };
        let vhost = self.vhost.name.clone();
        // The processes go first, then their users; the harness stack deletes the vhost.
        self.inner.kill_all();
        let _ = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let management = management();
                for role in topology::permissions::Role::all() {
                    let _ = management.delete_user(&role.user(&prefix, &vhost)).await;
                }
            })
        })
        .join();
    }
}

/// Publishes `body` with Python's pika (a client no one here wrote) as
/// `url`'s user (`user` in `user_id`), persistent, JSON, of type `kind`,
/// with publisher confirms; what the broker said when it refused, else `None`.
pub fn pika_publish(
    url: &str,
    user: &str,
    exchange: &str,
    routing_key: &str,
    kind: &str,
    body: &str,
) -> Option<String> {
    let script = r#"
import sys, pika
url, user, exchange, key, kind, body = sys.argv[1:7]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
try:
    channel.basic_publish(exchange, key, body.encode(),
                          pika.BasicProperties(user_id=user, content_type="application/json",
                                               delivery_mode=2, type=kind))
    print("published")
except Exception as error:
    print("refused: " + repr(error))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, url, user, exchange, routing_key, kind, body])
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (!said.starts_with("published")).then_some(said)
}

/// The states of an order's history, in order.
pub fn states(view: &OrderView) -> Vec<String> {
    view.history.iter().map(|h| h.state.clone()).collect()
}

/// The nodes of an order's history, in order.
pub fn nodes(view: &OrderView) -> Vec<String> {
    view.history.iter().map(|h| h.node.clone()).collect()
}

/// `ORDERFLOW_DB_MAX_CONNECTIONS` of the tests' PostgreSQL stacks: two of
/// them side by side (the test threads), 16 processes each, stay well within
/// the local server's 100 connections.
pub const PG_CONNECTIONS_PER_PROCESS: &str = "2";

/// A PostgreSQL database of its own for one test, dropped on drop.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl PgDatabase {
    pub async fn create(test: &str) -> PgDatabase {
        sqlx::any::install_default_drivers();
        let name = format!("orderflow_test_{test}_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let admin =
            sqlx::AnyPool::connect(PG_ADMIN_URL).await.expect("PostgreSQL at 127.0.0.1:5432 (trust auth)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        PgDatabase { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(admin) = sqlx::AnyPool::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            })
        })
        .join();
    }
}

/// Waits until `owner` has created `table` in the store of `pool`.
async fn wait_for_table(pool: &sqlx::AnyPool, owner: &str, table: &str) {
    let probe = format!("SELECT 1 FROM {table} LIMIT 1");
    ok(until(Duration::from_secs(30), Duration::from_millis(50), || async {
        Ok(match sqlx::query(&probe).fetch_optional(pool).await {
            Ok(_) => Check::Done(()),
            Err(_) => Check::Waiting(format!("{owner} never created {table}")),
        })
    })
    .await);
}

/// Reads `read` every 300 ms until it gives the same non-zero value for
/// `quiet` (a count that has stopped growing: the broker's statistics, rows
/// still arriving), or `timeout` passes; returns the last value read.
pub async fn steady<F, Fut>(quiet: Duration, timeout: Duration, mut read: F) -> i64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = std::time::Instant::now() + timeout;
    let (mut value, mut since) = (0, std::time::Instant::now());
    while std::time::Instant::now() < deadline {
        let now = read().await;
        if now != value {
            (value, since) = (now, std::time::Instant::now());
        } else if value != 0 && since.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    value
}

pub async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.expect(sql)
}

/// Waits for a background publish; returns the ids it printed.
pub fn finish_publish(child: Child) -> Vec<Uuid> {
    let output = child.wait_with_output().expect("publish finishes");
    assert!(output.status.success(), "publish failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| Uuid::parse_str(l).expect("uuid"))
        .collect()
}

/// A valid order of random SKUs (SKU-0001..SKU-0020) and quantities (1..3).
pub fn random_valid_order(rng: &mut impl rand::Rng) -> Value {
    let methods = ["standard", "express", "overnight"];
    let mut order = orders::valid(1, methods[rng.gen_range(0..3)]);
    let lines = rng.gen_range(1..=2);
    order["items"] = (0..lines)
        .map(|_| json!({"sku": format!("SKU-{:04}", rng.gen_range(1..=20)), "qty": rng.gen_range(1..=3)}))
        .collect();
    order
}

/// Units per SKU over a set of orders.
pub fn units_per_sku(orders: &[Value]) -> HashMap<String, i64> {
    let mut units = HashMap::new();
    for order in orders {
        for item in order["items"].as_array().expect("items") {
            *units.entry(item["sku"].as_str().expect("sku").to_string()).or_default() +=
                item["qty"].as_i64().expect("qty");
        }
    }
    units
}

/// Checks the books after a run of valid orders that all shipped: one charge,
/// one reservation and one shipment per order, and exactly the ordered units
/// taken from stock (nothing reserved twice). The stores are the stack's
/// SQLite files or its PostgreSQL database ([`Stack::store`]).
pub async fn assert_books_balance(stack: &Stack, orders: &[Value], ids: &[Uuid]) {
    let n = ids.len() as i64;
    let processor = stack.store("processor", "processor_settlements").await;
    assert_eq!(count(&processor, "SELECT COUNT(*) FROM processor_charges").await, n, "charges");
    let shipped: std::collections::BTreeSet<String> = ids.iter().map(Uuid::to_string).collect();
    assert_settled(&processor, &shipped, &Default::default(), &Default::default()).await;
    let inventory = stack.store("inventory", "inventory_reservations").await;
    assert_eq!(count(&inventory, "SELECT COUNT(*) FROM inventory_reservations").await, n, "reservations");
    for (sku, units) in units_per_sku(orders) {
        let on_hand =
            count(&inventory, &format!("SELECT qty FROM inventory_bin_items WHERE sku = '{sku}'")).await;
        assert_eq!(1_000_000 - on_hand, units, "{sku}: stock taken differs from units ordered");
    }
    let shipping = stack.store("shipping", "shipping_shipments").await;
    assert_eq!(count(&shipping, "SELECT COUNT(*) FROM shipping_shipments").await, n, "shipments");
    for id in ids {
        let view = stack.order(id).await;
        let path: Vec<String> = states(&view).into_iter().filter(|s| !s.starts_with("change_")).collect();
        let terminal = path.iter().filter(|s| *s == "shipped").count();
        assert_eq!(terminal, 1, "order {id}: {path:?}");
        assert!(
            path == ["placed", "accepted", "charged", "reserved", "picked", "shipped"]
                || path == ["placed", "accepted", "charged", "reserved", "picked", "rebinned", "shipped"],
            "order {id}: {path:?}"
        );
    }
}

/// Checks the processor's settlement against the histories: exactly the
/// shipped orders' authorizations are captured (waited for, up to 30 s:
/// captures are settled in batches), exactly the voided ones voided and the
/// refunded ones refunded; each capture, void and refund is of its
/// authorization's amount and order, so the books balance (captured =
/// the shipped orders' totals, voided + refunded = the released ones');
/// every capture is in a recorded batch, and the batches count exactly
/// their captures (none made twice).
pub async fn assert_settled(
    processor: &sqlx::AnyPool,
    shipped: &std::collections::BTreeSet<String>,
    voided: &std::collections::BTreeSet<String>,
    refunded: &std::collections::BTreeSet<String>,
) {
    let captures = "SELECT order_id FROM processor_settlements WHERE kind = 'capture'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut captured = id_set(processor, captures).await;
    while &captured != shipped && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        captured = id_set(processor, captures).await;
    }
    assert_eq!(&captured, shipped, "captures: exactly the shipped orders, once");
    let voids = "SELECT order_id FROM processor_settlements WHERE kind = 'void'";
    assert_eq!(&id_set(processor, voids).await, voided, "voids");
    let refunds =
        "SELECT c.order_id FROM processor_refunds r JOIN processor_charges c ON c.charge_id = r.charge_id";
    assert_eq!(&id_set(processor, refunds).await, refunded, "refunds");
    let unbalanced = "SELECT COUNT(*) FROM processor_settlements s LEFT JOIN processor_charges c \
                      ON c.charge_id = s.charge_id WHERE c.charge_id IS NULL OR c.order_id <> s.order_id \
                      OR c.amount_cents <> s.amount_cents";
    assert_eq!(count(processor, unbalanced).await, 0, "a capture or void not of its authorization's amount");
    let refunds_over = "SELECT COUNT(*) FROM processor_refunds r JOIN processor_charges c \
                        ON c.charge_id = r.charge_id WHERE r.amount_cents <> c.amount_cents";
    assert_eq!(count(processor, refunds_over).await, 0, "a refund not of its charge's amount");
    let unbatched = "SELECT COUNT(*) FROM processor_settlements s LEFT JOIN processor_batches b \
                     ON b.batch_id = s.batch_id WHERE s.kind = 'capture' AND b.batch_id IS NULL";
    assert_eq!(count(processor, unbatched).await, 0, "a capture in no recorded batch");
    let batched = "SELECT CAST(COALESCE(SUM(captures), 0) AS BIGINT) FROM processor_batches";
    assert_eq!(count(processor, batched).await, shipped.len() as i64, "the batches count their captures");
    let amounts = "SELECT CAST(COALESCE(SUM(b.amount_cents), 0) AS BIGINT) - \
                   (SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM processor_settlements \
                   WHERE kind = 'capture') FROM processor_batches b";
    assert_eq!(count(processor, amounts).await, 0, "the batches' amounts are their captures'");
}

/// The records of one change in an order's view: (kind, node, detail) in order.
pub fn change_records(view: &OrderView, change_id: &str) -> Vec<(String, String, String)> {
    view.history
        .iter()
        .filter(|h| h.change_id.as_deref() == Some(change_id))
        .map(|h| (h.state.clone(), h.node.clone(), h.detail.clone()))
        .collect()
}

/// The definition an order follows, as its view names it (`standard` v1
/// for an order rejected before it followed one).
pub fn follows(view: &OrderView) -> &'static topology::workflow::Workflow {
    let version = view.workflow_version.and_then(|v| u32::try_from(v).ok()).unwrap_or(1);
    topology::workflow::workflow(view.workflow.as_deref().unwrap_or("standard"), version)
        .unwrap_or(&topology::WORKFLOW)
}

/// The ids of `table`'s rows (its `order_id` column, or `sql` selecting one column).
async fn id_set(pool: &sqlx::AnyPool, sql: &str) -> std::collections::BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await.expect(sql).into_iter().collect()
}

/// Checks the ledgers against the orders' histories after a run of any
/// orders (`orders[i]` published as `ids[i]`, every one terminal), each by
/// its own workflow: each history has one terminal state and no state
/// twice; exactly the orders charged hold a charge, those completed (the
/// state their workflow completes at) a capture, those refunded a refund,
/// those reserved a reservation (released exactly for those whose stock was
/// released), those shipped by shipping a shipment; the stock taken per
/// SKU is what the reserved and not released orders ordered. Returns the
/// count of orders per terminal state.
pub async fn assert_ledgers_match_histories(
    stack: &Stack,
    orders: &[Value],
    ids: &[Uuid],
) -> std::collections::BTreeMap<String, usize> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut with: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut held: Vec<Value> = Vec::new();
    for (order, id) in orders.iter().zip(ids) {
        let view = stack.order(id).await;
        let path: Vec<String> = states(&view).into_iter().filter(|s| !s.starts_with("change_")).collect();
        // What ends an order, and completes it (its capture due), is its workflow's.
        let definition = follows(&view);
        let ends_it = |s: &&String| shared::OrderState::parse(s).is_some_and(|s| definition.is_terminal(s));
        let terminal: Vec<&String> = path.iter().filter(ends_it).collect();
        let told: Vec<String> = view
            .history
            .iter()
            .map(|h| format!("{} {} at {}: {}", h.seq, h.state, h.node, h.detail))
            .collect();
        assert_eq!(terminal.len(), 1, "order {id}: one terminal state in {path:?}: {told:#?}");
        assert_eq!(path.last(), terminal.first().copied(), "order {id}: {path:?}");
        let distinct: BTreeSet<&String> = path.iter().collect();
        assert_eq!(distinct.len(), path.len(), "order {id}: a state twice in {path:?}");
        *ends.entry(terminal[0].clone()).or_default() += 1;
        if path.last().map(String::as_str) == Some(definition.completes_at.as_str()) {
            with.entry("completed").or_default().insert(id.to_string());
        }
        // Shipments and shortages are the nodes' own: shipping's, inventory's
        // (a drop-shipped order is shipped, or short, at purchasing).
        for (state, node) in [("shipped", "shipping"), ("stock_short", "inventory")] {
            if view.history.iter().any(|h| h.state == state && h.node == node) {
                with.entry(state).or_default().insert(id.to_string());
            }
        }
        for state in ["charged", "voided", "refunded", "reserved", "stock_released"] {
            if path.iter().any(|s| s == state) {
                with.entry(state).or_default().insert(id.to_string());
            }
        }
        let reserved = path.iter().any(|s| s == "reserved");
        if reserved && !path.iter().any(|s| s == "stock_released") {
            held.push(order.clone());
        }
    }
    let of = |state: &str| with.get(state).cloned().unwrap_or_default();
    let processor = stack.store("processor", "processor_settlements").await;
    assert_eq!(id_set(&processor, "SELECT order_id FROM processor_charges").await, of("charged"), "charges");
    assert_settled(&processor, &of("completed"), &of("voided"), &of("refunded")).await;
    let inventory = stack.store("inventory", "inventory_shortages").await;
    let reservations = id_set(&inventory, "SELECT order_id FROM inventory_reservations").await;
    assert_eq!(reservations, of("reserved"), "reservations");
    let released = id_set(&inventory, "SELECT order_id FROM inventory_reservations WHERE released = 1").await;
    assert_eq!(released, of("stock_released"), "released reservations");
    assert_eq!(
        id_set(&inventory, "SELECT order_id FROM inventory_shortages").await,
        of("stock_short"),
        "shortages"
    );
    let mut taken = units_per_sku(&held);
    for sku in units_per_sku(orders).keys() {
        let sql = format!("SELECT qty FROM inventory_bin_items WHERE sku = '{sku}'");
        let Some(on_hand) = sqlx::query_scalar::<_, i64>(&sql).fetch_optional(&inventory).await.expect(&sql)
        else {
            continue; // not in the catalog: an invalid order's SKU
        };
        let seeded = if sku == "SKU-0999" { 0 } else { 1_000_000 };
        assert_eq!(seeded - on_hand, taken.remove(sku).unwrap_or(0), "{sku}: stock taken");
    }
    let shipping = stack.store("shipping", "shipping_shipments").await;
    assert_eq!(
        id_set(&shipping, "SELECT order_id FROM shipping_shipments").await,
        of("shipped"),
        "shipments"
    );
    for pool in [processor, inventory, shipping] {
        pool.close().await;
    }
    ends
}
