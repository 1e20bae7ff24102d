//! The integration-test harness: every test gets its own vhost on the real
//! local broker and its own stack of real worker processes (own run
//! directory, own tracker port), and waits for conditions instead of sleeping.

pub mod orders;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use topology::management::Management;
use uuid::Uuid;

pub const NODES: [&str; 7] =
    ["intake", "payment", "inventory", "picklist", "rebin", "shipping", "exceptions"];

const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672";

pub fn management() -> Management {
    let base = std::env::var("ORDERFLOW_MGMT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into());
    Management::new(&base, "guest", "guest")
}

/// The folder holding the workspace's binaries, built once per test run.
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
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

/// A vhost of its own for one test, deleted (with all its queues) on drop.
pub struct Vhost {
    pub name: String,
    pub amqp_url: String,
}

impl Vhost {
    pub async fn create(test: &str) -> Vhost {
        let name = format!("orderflow-test-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let management = management();
        management.create_vhost(&name).await.expect("create the test vhost (is the management plugin on?)");
        management.set_permissions(&name, "guest", ".*", ".*", ".*").await.expect("grant guest on the vhost");
        let amqp_url = format!("{BROKER_URL}/{name}");
        Vhost { name, amqp_url }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async { management().delete_vhost(&name).await })
        })
        .join();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running orderflow: the tracker and the seven nodes as real processes.
pub struct Stack {
    pub vhost: Vhost,
    pub run_dir: PathBuf,
    pub http_addr: String,
    env: Vec<(String, String)>,
    processes: Vec<(String, Child)>,
    http: reqwest::Client,
    /// Set when every node runs as its own least-privilege user (`<prefix><node>`).
    pub user_prefix: Option<String>,
}

impl Stack {
    /// Starts a stack with one instance of every node; `env` applies to every process.
    pub async fn start(test: &str, env: &[(&str, &str)]) -> Stack {
        let mut stack = Stack::empty(test, env).await;
        stack.spawn("tracker", "tracker-1", &[]);
        for node in NODES {
            stack.spawn(node, &format!("{node}-1"), &[]);
        }
        stack.wait_for_tracker().await;
        stack
    }

    /// A stack with no process started yet.
    pub async fn empty(test: &str, env: &[(&str, &str)]) -> Stack {
        let vhost = Vhost::create(test).await;
        let run_dir = std::env::temp_dir().join(format!("orderflow-{}", vhost.name));
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let http_addr = format!("127.0.0.1:{}", free_port());
        let mut all_env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), vhost.amqp_url.clone()),
            ("ORDERFLOW_RUN_DIR".into(), run_dir.display().to_string()),
            ("ORDERFLOW_HTTP_ADDR".into(), http_addr.clone()),
        ];
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let stack = Stack {
            vhost,
            run_dir,
            http_addr,
            env: all_env,
            processes: Vec::new(),
            http: reqwest::Client::new(),
            user_prefix: None,
        };
        stack.topology(&["apply"]);
        stack
    }

    /// Runs the `topology` binary against this stack's vhost (as guest).
    pub fn topology(&self, args: &[&str]) {
        let output = self.command("topology").args(args).output().expect("topology runs");
        assert!(output.status.success(), "topology {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Like [`Stack::start`], but every node and the tracker connect as their
    /// own least-privilege user, created for this test and deleted after it.
    pub async fn start_with_node_users(test: &str) -> Stack {
        let mut stack = Stack::empty(test, &[]).await;
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
        stack.user_prefix = Some(prefix);
        stack.spawn("tracker", "tracker-1", &[]);
        for node in NODES {
            stack.spawn(node, &format!("{node}-1"), &[]);
        }
        stack.wait_for_tracker().await;
        stack
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.run_dir.join("secrets")
    }

    /// The AMQP URL of a role's user (`payment`, `tracker`, `publisher`, ...).
    pub fn role_url(&self, role: &str) -> String {
        let prefix = self.user_prefix.as_ref().expect("a stack with node users");
        let user = format!("{prefix}{role}");
        let password = std::fs::read_to_string(self.secrets_dir().join(&user)).expect("secret file");
        format!("amqp://{user}:{}@127.0.0.1:5672/{}", password.trim(), self.vhost.name)
    }

    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin_dir().join(binary));
        command.env_remove("DATABASE_URL");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Starts one process of `binary` labelled `label` (also its instance id).
    pub fn spawn(&mut self, binary: &str, label: &str, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.run_dir.join(format!("{label}.log"))).expect("log file");
        let mut command = self.command(binary);
        command.env("ORDERFLOW_INSTANCE_ID", label).stdout(Stdio::null()).stderr(log);
        if let Some(prefix) = &self.user_prefix {
            let user = format!("{prefix}{binary}");
            command.env("AMQP_USER", &user).env("AMQP_PASSWORD_FILE", self.secrets_dir().join(&user));
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        self.processes.push((label.to_string(), child));
    }

    /// Sends SIGTERM to the process and waits (up to 20 s) for it to exit.
    pub fn stop(&mut self, label: &str) -> ExitStatus {
        let index = self.processes.iter().position(|(l, _)| l == label).expect("known process");
        let (_, mut child) = self.processes.remove(index);
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{label} did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, label: &str) {
        let index = self.processes.iter().position(|(l, _)| l == label).expect("known process");
        let (_, mut child) = self.processes.remove(index);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops every process with SIGTERM; returns each one's exit status.
    pub fn stop_all(&mut self) -> Vec<(String, ExitStatus)> {
        let labels: Vec<String> = self.processes.iter().map(|(l, _)| l.clone()).collect();
        for (_, child) in &self.processes {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        labels.into_iter().map(|l| (l.clone(), self.stop(&l))).collect()
    }

    /// Runs the `orderflow` CLI against this stack.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command("orderflow").args(args).output().expect("orderflow runs")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    pub async fn wait_for_tracker(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.http.get(self.url("/health")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the tracker did not answer within 30 s; see {}", self.run_dir.display());
    }

    /// Publishes orders (JSON objects) through `orderflow publish --file`; returns their ids in order.
    pub fn publish(&self, orders: &[Value]) -> Vec<Uuid> {
        let file = self.run_dir.join(format!("orders-{}.jsonl", Uuid::new_v4().simple()));
        let lines: Vec<String> = orders.iter().map(Value::to_string).collect();
        std::fs::write(&file, lines.join("\n")).expect("write orders");
        let output = self.cli(&["publish", "--file", file.to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "publish failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .lines()
            .map(|l| Uuid::parse_str(l).expect("publish prints uuids"))
            .collect()
    }

    /// Starts `orderflow publish --file` with extra arguments (e.g. `--rate`) without waiting.
    pub fn publish_in_background(&self, orders: &[Value], extra: &[&str]) -> Child {
        let file = self.run_dir.join(format!("orders-{}.jsonl", Uuid::new_v4().simple()));
        let lines: Vec<String> = orders.iter().map(Value::to_string).collect();
        std::fs::write(&file, lines.join("\n")).expect("write orders");
        let mut args = vec!["publish", "--file", file.to_str().expect("utf-8 path")];
        args.extend(extra);
        self.command("orderflow")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orderflow runs")
    }

    /// Latest states of the given orders, as the tracker knows them.
    pub async fn statuses(&self, ids: &[Uuid]) -> HashMap<String, Value> {
        let response = self.http.post(self.url("/orders/status")).json(&json!({ "ids": ids })).send().await;
        match response {
            Ok(r) => r.json::<HashMap<String, Value>>().await.unwrap_or_default(),
            Err(_) => HashMap::new(),
        }
    }

    /// Waits until every order is terminal; panics with the states after `timeout`.
    pub async fn wait_terminal(&self, ids: &[Uuid], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.statuses(ids).await;
            let terminal = found.values().filter(|s| s["terminal"] == true).count();
            if terminal == ids.len() {
                return;
            }
            if Instant::now() > deadline {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for s in found.values() {
                    *counts.entry(s["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                }
                panic!(
                    "{terminal} of {} orders terminal after {timeout:?}: {counts:?}; logs in {}",
                    ids.len(),
                    self.run_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An order's view from `GET /orders/{id}`.
    pub async fn order(&self, id: &Uuid) -> Value {
        let response =
            self.http.get(self.url(&format!("/orders/{id}"))).send().await.expect("tracker answers");
        assert!(response.status().is_success(), "GET /orders/{id}: {}", response.status());
        response.json().await.expect("json")
    }

    /// GET a tracker path, returning status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.http.get(self.url(path)).send().await.expect("tracker answers");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// Opens an AMQP connection to this stack's vhost.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.vhost.amqp_url, lapin::ConnectionProperties::default())
            .await
            .expect("connect to the test vhost")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(prefix) = self.user_prefix.clone() {
            let _ = std::thread::spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    for role in topology::permissions::Role::all() {
                        let _ = management().delete_user(&role.user(&prefix)).await;
                    }
                })
            })
            .join();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// The states of an order's history, in order.
pub fn states(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["state"].as_str().expect("state").to_string())
        .collect()
}

/// The nodes of an order's history, in order.
pub fn nodes(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["node"].as_str().unwrap().to_string())
        .collect()
}

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

impl Stack {
    /// Opens one of the stack's SQLite stores (`processor`, `inventory`, `shipping`, `tracker`),
    /// waiting until its owner has created `table`.
    pub async fn sqlite(&self, owner: &str, table: &str) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", self.run_dir.join(format!("{owner}.db")).display());
        let pool = sqlx::AnyPool::connect(&url).await.expect("open the SQLite store");
        sqlx::query("PRAGMA busy_timeout = 10000").execute(&pool).await.expect("pragma");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 1")).fetch_optional(&pool).await.is_err() {
            assert!(Instant::now() < deadline, "{owner} never created {table}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool
    }

    /// Runs the CLI and parses its standard output as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let output = self.cli(args);
        assert!(output.status.success(), "orderflow {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

    /// Waits until the dead-letter queue holds `n` messages; returns them.
    pub async fn wait_dead_letters(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let letters = self.cli_json(&["dlq", "list", "--json"]);
            let letters = letters.as_array().expect("a list").clone();
            if letters.len() >= n {
                return letters;
            }
            assert!(Instant::now() < deadline, "{} of {n} dead letters after {timeout:?}", letters.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
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
/// taken from stock (nothing reserved twice).
pub async fn assert_books_balance(stack: &Stack, orders: &[Value], ids: &[Uuid]) {
    let n = ids.len() as i64;
    let processor = stack.sqlite("processor", "processor_charges").await;
    assert_eq!(count(&processor, "SELECT COUNT(*) FROM processor_charges").await, n, "charges");
    let inventory = stack.sqlite("inventory", "inventory_reservations").await;
    assert_eq!(count(&inventory, "SELECT COUNT(*) FROM inventory_reservations").await, n, "reservations");
    for (sku, units) in units_per_sku(orders) {
        let on_hand =
            count(&inventory, &format!("SELECT qty FROM inventory_bin_items WHERE sku = '{sku}'")).await;
        assert_eq!(1_000_000 - on_hand, units, "{sku}: stock taken differs from units ordered");
    }
    let shipping = stack.sqlite("shipping", "shipping_shipments").await;
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

/// The records of one change in an order's view: (kind, node, detail) in order.
pub fn change_records(view: &Value, change_id: &str) -> Vec<(String, String, String)> {
    view["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["change_id"] == change_id)
        .map(|h| {
            let text = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (text("state"), text("node"), text("detail"))
        })
        .collect()
}

impl Stack {
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

    /// Waits until the tracker shows the order in `state` (not necessarily terminal).
    pub async fn wait_state(&self, id: &Uuid, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.statuses(std::slice::from_ref(id)).await;
            if found.get(&id.to_string()).map(|s| s["state"] == state) == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "order {id} never reached {state}: {found:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every change of the order has an outcome; returns the view.
    pub async fn wait_change_outcomes(&self, id: &Uuid, changes: usize, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.order(id).await;
            let outcomes = view["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["state"] == "change_applied" || h["state"] == "change_rejected")
                .count();
            if outcomes >= changes {
                return view;
            }
            assert!(Instant::now() < deadline, "order {id}: {outcomes} of {changes} change outcomes: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
