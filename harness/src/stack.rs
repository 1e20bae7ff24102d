//! A whole orderflow, started the way `scripts/up.sh` does it: the tracker
//! and every node of `topology::workflow::processes()` as separate processes
//! of the built binaries, in a vhost, run directory and tracker port of their
//! own. [`Stack::shutdown`] stops every process with SIGTERM and deletes the
//! vhost; dropping the stack (error, panic, Ctrl-C) kills the processes and
//! deletes the vhost too.

use crate::broker::{Broker, Vhost};
use crate::wait::{until, Check};
use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;
use shared::tracker_api::{OrderView, TrackerClient};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a process has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a started stack has to answer and consume.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What every stack made from it shares.
#[derive(Clone)]
pub struct StackConfig {
    pub broker: Broker,
    /// The folder holding the binaries (tracker, intake, ..., orderflow).
    pub bin_dir: PathBuf,
    /// Environment for every process, after the stack's own settings.
    pub env: Vec<(String, String)>,
    /// Environment for the processes of one process name only (a binary, or
    /// a domain replica such as `customer-uk`): (process, key, value).
    pub binary_env: Vec<(String, String, String)>,
    /// Whether the processes see the caller's `RUST_LOG` (a test's logs for a
    /// look), or log at their default level (the bench measures that).
    pub pass_rust_log: bool,
    /// Whether a stack dropped without [`Stack::shutdown`] keeps its run
    /// directory (logs, stores) for a look; otherwise it keeps it only when the
    /// thread is panicking (a failed test).
    pub keep_run_dir_on_drop: bool,
    /// Members of each quorum queue on a cluster (`x-quorum-initial-group-size`).
    pub quorum_size: Option<u32>,
    /// Whether each process runs as on a host of its own: its
    /// `ORDERFLOW_RUN_DIR` is `<run dir>/<label>`, so instances share nothing
    /// local (no store file, no secret). Meant for a stack whose state is in
    /// a shared database (`DATABASE_URL`); with SQLite every process would
    /// keep stores of its own. Logs stay in `<run dir>/<label>.log`.
    pub run_dir_per_process: bool,
}

impl StackConfig {
    pub fn new(broker: Broker, bin_dir: PathBuf) -> StackConfig {
        StackConfig {
            broker,
            bin_dir,
            env: Vec::new(),
            binary_env: Vec::new(),
            pass_rust_log: true,
            keep_run_dir_on_drop: false,
            quorum_size: None,
            run_dir_per_process: false,
        }
    }
}

/// One running process of a stack.
pub struct Process {
    pub label: String,
    pub binary: String,
    pid: u32,
    child: Mutex<Child>,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.child.lock().map_err(|_| std::io::Error::other("a poisoned lock"))?.try_wait()
    }

    fn kill(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
    }
}

pub struct Stack {
    pub vhost: Vhost,
    pub run_dir: PathBuf,
    pub http_addr: String,
    pub processes: Vec<Process>,
    /// Applies to the processes started from now on.
    pub config: StackConfig,
    tracker: TrackerClient,
}

/// A port nobody listens on now (for a tracker's `ORDERFLOW_HTTP_ADDR`),
/// below Linux's ephemeral range (32768 and up): a port the kernel handed
/// out for `:0` could go to another test's outgoing connection before the
/// tracker binds it (seen once: "Address already in use").
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = 20_000 + u16::try_from(uuid::Uuid::new_v4().as_u128() % 9_000).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between 20000 and 28999")
}

/// The queue a long-running process consumes first (its readiness shows
/// as a consumer there), if it is one of the stack's.
fn queue_of(name: &str) -> Option<String> {
    topology::Process::find(name).and_then(|process| topology::consumed_queues(process).into_iter().next())
}

impl Stack {
    /// A vhost named `name` with the topology declared, a run directory
    /// (`$TMPDIR/<name>`) and a tracker port: nothing runs yet.
    pub async fn create(config: &StackConfig, name: &str) -> anyhow::Result<Stack> {
        let vhost = Vhost::create(&config.broker, name).await?;
        let run_dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let http_addr = format!("127.0.0.1:{}", free_port()?);
        let stack = Stack {
            tracker: TrackerClient::new(&format!("http://{http_addr}")),
            vhost,
            run_dir,
            http_addr,
            processes: Vec::new(),
            config: config.clone(),
        };
        let connection = stack.connect("orderflow-harness").await?;
        let setup = connection.create_channel().await?;
        topology::declare_all_sized(&setup, config.quorum_size).await.context("declaring the topology")?;
        let _ = connection.close(200, "declared".into()).await;
        Ok(stack)
    }

    /// [`Stack::create`], then [`Stack::start_all`].
    pub async fn start(config: &StackConfig, name: &str) -> anyhow::Result<Stack> {
        let mut stack = Stack::create(config, name).await?;
        stack.start_all().await?;
        Ok(stack)
    }

    /// Starts the tracker, one instance of every node (`<binary>-1`), the
    /// distributor domain (inventory asks it who supplies a short item) and
    /// the simulated distributors, and waits until the tracker answers and
    /// each consumes its queue.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for binary in crate::processes().into_iter().chain(crate::supply_processes()) {
            self.spawn(binary, &format!("{binary}-1"))?;
        }
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Starts one instance of every domain process not running yet
    /// (`<process>-1`) and waits until each consumes its requests.
    pub async fn start_domains(&mut self) -> anyhow::Result<()> {
        let domains = topology::Process::all().into_iter().filter(|p| p.domain_copy().is_some());
        for process in domains.map(topology::Process::name) {
            let label = format!("{process}-1");
            if !self.processes.iter().any(|p| p.label == label) {
                self.spawn(process, &label)?;
            }
        }
        self.wait_ready(READY_TIMEOUT).await
    }

    /// A command for one of the binaries, pointed at this stack: its vhost,
    /// run directory, tracker port and management API, plus the configured
    /// environment. Nothing else of the caller's `ORDERFLOW_*` or
    /// `DATABASE_URL` settings leaks in.
    pub fn command(&self, process: &str) -> Command {
        // A domain's replica runs the domain's binary, told its region.
        let (binary, region) = topology::processes::binary_of(process);
        let mut command = Command::new(self.config.bin_dir.join(binary));
        if let Some(region) = region {
            command.env("ORDERFLOW_REGION", region);
        }
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().to_string();
            if key.starts_with("ORDERFLOW_")
                || key == "DATABASE_URL"
                || (key == "RUST_LOG" && !self.config.pass_rust_log)
            {
                command.env_remove(&key);
            }
        }
        command
            .env("AMQP_URL", &self.vhost.amqp_url)
            .env("ORDERFLOW_RUN_DIR", &self.run_dir)
            .env("ORDERFLOW_HTTP_ADDR", &self.http_addr)
            .envs(self.config.broker.management_env())
            // A declined card ends its order at once (the product's default
            // is a day's wait for another card): a test of the wait sets its own.
            .env("ORDERFLOW_PAYMENT_WAIT_S", "0")
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .envs(self.config.binary_env.iter().filter(|(b, _, _)| b == process).map(|(_, k, v)| (k, v)));
        command
    }

    /// Starts one process of `binary` labelled `label` (also its instance id),
    /// its standard error in `<run dir>/<label>.log`.
    pub fn spawn(&mut self, binary: &str, label: &str) -> anyhow::Result<()> {
        self.spawn_with(binary, label, &[])
    }

    /// [`Stack::spawn`] with `env` for this process alone, after everything
    /// else (e.g. a second tracker's own `ORDERFLOW_HTTP_ADDR`).
    pub fn spawn_with(&mut self, binary: &str, label: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let log_path = self.run_dir.join(format!("{label}.log"));
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = self.command(binary);
        if self.config.run_dir_per_process {
            command.env("ORDERFLOW_RUN_DIR", self.run_dir.join(label));
        }
        let child = command
            .env("ORDERFLOW_INSTANCE_ID", label)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.config.bin_dir.join(binary).display()))?;
        self.processes.push(Process {
            label: label.to_string(),
            binary: binary.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
        });
        Ok(())
    }

    /// Runs `instances` instances of `binary` in all (starting the missing
    /// ones, `<binary>-<n>`) and waits until each consumes.
    pub async fn scale(&mut self, binary: &str, instances: usize) -> anyhow::Result<()> {
        let running = self.processes.iter().filter(|p| p.binary == binary).count();
        for i in running + 1..=instances {
            self.spawn(binary, &format!("{binary}-{i}"))?;
        }
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Fails if a process has exited, with the end of its log.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for process in &self.processes {
            if let Some(status) = process.try_wait()? {
                let log = std::fs::read_to_string(self.run_dir.join(format!("{}.log", process.label)))
                    .unwrap_or_default();
                let tail: Vec<&str> =
                    log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
                anyhow::bail!("{} exited ({status}); its log ends:\n{}", process.label, tail.join("\n"));
            }
        }
        Ok(())
    }

    /// Waits until every process is running, the tracker answers and every
    /// process consumes its queue (as many consumers as instances).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut expected: BTreeMap<String, u32> = BTreeMap::new();
        for process in &self.processes {
            if let Some(queue) = queue_of(&process.binary) {
                *expected.entry(queue).or_default() += 1;
            }
        }
        let connection = self.connect("orderflow-harness").await?;
        let (connection, expected) = (&connection, &expected);
        let ready = until(timeout, Duration::from_millis(100), || async move {
            self.check_alive()?;
            if let Err(error) = self.tracker.health().await {
                return Ok(Check::Waiting(format!("{error}")));
            }
            for (queue, n) in expected {
                let consumers = consumers(connection, queue).await?;
                // A queue with a single active consumer counts only the active one.
                let single =
                    topology::queue_arguments(queue).contains(&("x-single-active-consumer", json!(true)));
                let n = if single { (*n).min(1) } else { *n };
                if consumers < n {
                    return Ok(Check::Waiting(format!("{queue} has {consumers} of {n} consumers")));
                }
            }
            Ok(Check::Done(()))
        })
        .await;
        let _ = connection.close(200, "probed".into()).await;
        ready.with_context(|| format!("the stack was not ready; logs in {}", self.run_dir.display()))
    }

    /// Waits until the tracker answers.
    pub async fn wait_for_tracker(&self, timeout: Duration) -> anyhow::Result<()> {
        until(timeout, Duration::from_millis(50), || async {
            Ok(match self.tracker.health().await {
                Ok(()) => Check::Done(()),
                Err(error) => Check::Waiting(format!("{error}; logs in {}", self.run_dir.display())),
            })
        })
        .await
    }

    fn take(&mut self, label: &str) -> anyhow::Result<Process> {
        let index = self
            .processes
            .iter()
            .position(|p| p.label == label)
            .with_context(|| format!("no process {label} is running"))?;
        Ok(self.processes.remove(index))
    }

    /// Sends SIGTERM to the process and waits (up to [`STOP_GRACE`]) for it to
    /// exit; kills it and fails if it does not.
    pub async fn stop(&mut self, label: &str) -> anyhow::Result<ExitStatus> {
        let process = self.take(label)?;
        process.terminate();
        let deadline = Instant::now() + STOP_GRACE;
        exited(&process, deadline)
            .await
            .with_context(|| format!("{label} did not stop within {STOP_GRACE:?} of SIGTERM"))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, label: &str) -> anyhow::Result<()> {
        self.take(label)?.kill();
        Ok(())
    }

    /// Freezes the process (SIGSTOP), as a hung host would: it holds its
    /// connection and answers nothing until [`Stack::resume`].
    pub fn pause(&self, label: &str) -> anyhow::Result<()> {
        self.signal(label, "-STOP")
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self, label: &str) -> anyhow::Result<()> {
        self.signal(label, "-CONT")
    }

    fn signal(&self, label: &str, signal: &str) -> anyhow::Result<()> {
        let process = self
            .processes
            .iter()
            .find(|p| p.label == label)
            .with_context(|| format!("no process {label} in this stack"))?;
        let status = Command::new("kill").args([signal, &process.pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {label} failed: {status}");
        Ok(())
    }

    /// Kills every process at once.
    pub fn kill_all(&mut self) {
        for process in self.processes.drain(..) {
            process.kill();
        }
    }

    /// Sends SIGTERM to every process and waits (up to [`STOP_GRACE`] in all)
    /// for them to exit; kills the rest. Returns each one's label and exit
    /// status (`None`: killed after the grace).
    pub async fn stop_all(&mut self) -> Vec<(String, Option<ExitStatus>)> {
        let processes = std::mem::take(&mut self.processes);
        for process in &processes {
            process.terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut statuses = Vec::new();
        for process in processes {
            let status = exited(&process, deadline).await.ok();
            statuses.push((process.label, status));
        }
        statuses
    }

    /// Stops every process (SIGTERM), deletes the vhost, and the run directory
    /// if every process exited cleanly. Returns the ones that did not (their
    /// logs are kept in [`Stack::run_dir`]).
    pub async fn shutdown(mut self) -> anyhow::Result<Vec<String>> {
        let unclean: Vec<String> = self
            .stop_all()
            .await
            .into_iter()
            .filter_map(|(label, status)| match status {
                Some(status) if status.success() => None,
                Some(status) => Some(format!("{label} ({status})")),
                None => Some(format!("{label} (killed after {STOP_GRACE:?})")),
            })
            .collect();
        self.vhost.delete().await?;
        crate::log_scan::scan_run_dir(&self.run_dir);
        if unclean.is_empty() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        } else {
            self.config.keep_run_dir_on_drop = true;
        }
        Ok(unclean)
    }

    /// The tracker's address, `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// A typed client of this stack's tracker.
    pub fn tracker(&self) -> &TrackerClient {
        &self.tracker
    }

    /// The broker user [`Stack::connect`] connects as (what a publisher on
    /// that connection must sign its messages with).
    pub fn user(&self) -> String {
        topology::management::amqp_url_parts(&self.vhost.amqp_url)
            .map(|(user, _, _)| user)
            .unwrap_or_default()
    }

    /// Opens an AMQP connection (as the broker's user) to this stack's vhost.
    pub async fn connect(&self, name: &str) -> anyhow::Result<lapin::Connection> {
        let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
        let first = topology::management::amqp_urls(&self.vhost.amqp_url)[0];
        lapin::Connection::connect(first, properties)
            .await
            .with_context(|| format!("connecting to the vhost {}", self.vhost.name))
    }

    /// Waits until every order is terminal; fails with the count per state.
    pub async fn wait_terminal(&self, ids: &[Uuid], timeout: Duration) -> anyhow::Result<()> {
        until(timeout, Duration::from_millis(100), || async {
            let found = self.tracker.statuses(ids).await.unwrap_or_default();
            let terminal = found.values().filter(|s| s.terminal).count();
            if terminal == ids.len() {
                return Ok(Check::Done(()));
            }
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for status in found.values() {
                *counts.entry(status.state.as_str()).or_default() += 1;
            }
            Ok(Check::Waiting(format!(
                "{terminal} of {} orders terminal: {counts:?}; logs in {}",
                ids.len(),
                self.run_dir.display()
            )))
        })
        .await
    }

    /// Waits until the tracker shows the order in `state` (terminal or not).
    pub async fn wait_state(&self, id: &Uuid, state: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_order(id, timeout, |view| view.state == state).await.map(|_| ())
    }

    /// Waits until the order's view satisfies `done`; returns that view.
    pub async fn wait_order(
        &self,
        id: &Uuid,
        timeout: Duration,
        done: impl Fn(&OrderView) -> bool,
    ) -> anyhow::Result<OrderView> {
        let done = &done;
        until(timeout, Duration::from_millis(50), || async move {
            Ok(match self.tracker.order(id).await {
                Ok(view) if done(&view) => Check::Done(view),
                Ok(view) => Check::Waiting(format!("order {id} is {}: {view:?}", view.state)),
                Err(error) => Check::Waiting(format!("order {id}: {error}")),
            })
        })
        .await
    }
}

/// Consumers of a queue, by a passive declare on a channel of its own.
async fn consumers(connection: &lapin::Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .with_context(|| format!("the queue {queue} is not declared"))?;
    let _ = channel.close(200, "probed".into()).await;
    Ok(declared.consumer_count())
}

/// Waits until the process has exited or the deadline passed (then kills it and fails).
async fn exited(process: &Process, deadline: Instant) -> anyhow::Result<ExitStatus> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let status = until(timeout, Duration::from_millis(20), || async {
        Ok(match process.try_wait()? {
            Some(status) => Check::Done(status),
            None => Check::Waiting(format!("{} is still running", process.label)),
        })
    })
    .await;
    if status.is_err() {
        process.kill();
    }
    status
}

impl Drop for Stack {
    fn drop(&mut self) {
        let running = !self.processes.is_empty();
        self.kill_all();
        // The vhost (and its queues) is deleted by its own drop.
        if std::thread::panicking() || self.config.keep_run_dir_on_drop {
            if running {
                eprintln!("note: stack stopped early; its logs are in {}", self.run_dir.display());
            }
        } else {
            crate::log_scan::scan_run_dir(&self.run_dir);
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}
