//! A whole orderflow for one measurement, started the way `scripts/up.sh`
//! does it: the tracker and every node as separate processes of the built
//! binaries, in a vhost, run directory and tracker port of their own. Every
//! process is stopped and the vhost deleted by [`Stack::shutdown`], or on drop
//! (error, panic, Ctrl-C).

use crate::broker::{BenchVhost, Broker};
use crate::stats::OrderView;
use anyhow::Context;
use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use shared::transport::Publisher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Every long-running process of a stack, the tracker first.
pub const PROCESSES: [&str; 8] =
    ["tracker", "intake", "payment", "inventory", "picklist", "rebin", "shipping", "exceptions"];

/// Checks that the binaries a stack needs are in `bin_dir`.
pub fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for binary in PROCESSES {
        let path = bin_dir.join(binary);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build with `cargo build --release --workspace --bins` or pass --bin-dir",
            path.display()
        );
    }
    Ok(())
}

/// What every stack of a bench run shares.
#[derive(Clone)]
pub struct StackConfig {
    pub broker: Broker,
    pub run_id: String,
    pub bin_dir: PathBuf,
    /// Environment for every process (after the bench's own settings).
    pub env: Vec<(String, String)>,
    /// Environment for the processes of one binary only: (binary, key, value).
    pub binary_env: Vec<(String, String, String)>,
}

pub struct Process {
    pub label: String,
    pub binary: String,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Stack {
    pub run_dir: PathBuf,
    pub http_addr: String,
    pub publisher: Publisher,
    pub processes: Vec<Process>,
    vhost: Option<BenchVhost>,
    connection: lapin::Connection,
    config: StackConfig,
    http: reqwest::Client,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Stack {
    /// Starts the tracker and one instance of every node, and waits until each consumes.
    pub async fn start(config: &StackConfig, tag: &str) -> anyhow::Result<Stack> {
        let vhost = BenchVhost::create(&config.broker, &config.run_id, tag).await?;
        let run_dir = std::env::temp_dir().join(format!("orderflow-bench-{}-{tag}", config.run_id));
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let properties =
            lapin::ConnectionProperties::default().with_connection_name("orderflow-bench".into());
        let connection = lapin::Connection::connect(&vhost.amqp_url, properties)
            .await
            .with_context(|| format!("connecting to the bench vhost {}", vhost.name))?;
        let setup = connection.create_channel().await?;
        topology::declare_all(&setup).await.context("declaring the topology")?;
        let _ = setup.close(200, "declared".into()).await;
        let publisher = Publisher::open(&connection).await?;
        let mut stack = Stack {
            run_dir,
            http_addr: format!("127.0.0.1:{}", free_port()?),
            publisher,
            processes: Vec::new(),
            vhost: Some(vhost),
            connection,
            config: config.clone(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        };
        for binary in PROCESSES {
            stack.spawn(binary, &format!("{binary}-1"))?;
        }
        stack.wait_ready(Duration::from_secs(60)).await?;
        Ok(stack)
    }

    /// Starts one process of `binary` named `label` (also its instance id).
    pub fn spawn(&mut self, binary: &str, label: &str) -> anyhow::Result<()> {
        let log_path = self.run_dir.join(format!("{label}.log"));
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let vhost = self.vhost.as_ref().context("the stack is stopped")?;
        let mut command = Command::new(self.config.bin_dir.join(binary));
        // Only the bench's settings: nothing from the caller's environment leaks in.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().to_string();
            if key.starts_with("ORDERFLOW_") || key == "RUST_LOG" || key == "DATABASE_URL" {
                command.env_remove(&key);
            }
        }
        command
            .env("AMQP_URL", &vhost.amqp_url)
            .env("ORDERFLOW_RUN_DIR", &self.run_dir)
            .env("ORDERFLOW_HTTP_ADDR", &self.http_addr)
            .env("ORDERFLOW_INSTANCE_ID", label)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .envs(self.config.binary_env.iter().filter(|(b, _, _)| b == binary).map(|(_, k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.config.bin_dir.join(binary).display()))?;
        self.processes.push(Process { label: label.to_string(), binary: binary.to_string(), child });
        Ok(())
    }

    /// Runs `instances` instances of `node` in all (starting the missing ones) and waits until each consumes.
    pub async fn scale(&mut self, node: &str, instances: usize) -> anyhow::Result<()> {
        let running = self.processes.iter().filter(|p| p.binary == node).count();
        for i in running + 1..=instances {
            self.spawn(node, &format!("{node}-{i}"))?;
        }
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Fails if a process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                let log = std::fs::read_to_string(self.run_dir.join(format!("{}.log", process.label)))
                    .unwrap_or_default();
                let tail: Vec<&str> =
                    log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
                anyhow::bail!("{} exited ({status}); its log ends:\n{}", process.label, tail.join("\n"));
            }
        }
        Ok(())
    }

    async fn consumers(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(queue.into(), options, FieldTable::default()).await?;
        let _ = channel.close(200, "probed".into()).await;
        Ok(queue.consumer_count())
    }

    /// Waits until the tracker answers and every process consumes its queue.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut expected: BTreeMap<String, u32> = BTreeMap::new();
        for process in &self.processes {
            let queue = match process.binary.as_str() {
                "tracker" => topology::TRACKER_QUEUE.to_string(),
                node => format!("orderflow.{node}"),
            };
            *expected.entry(queue).or_default() += 1;
        }
        loop {
            self.check_alive()?;
            let mut ready =
                self.http.get(self.url("/health")).send().await.is_ok_and(|r| r.status().is_success());
            for (queue, n) in &expected {
                if !ready {
                    break;
                }
                ready = self.consumers(queue).await? >= *n;
            }
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the stack was not consuming within {timeout:?}; logs in {}",
                self.run_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// Orders per state, from the tracker's `GET /stats`.
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let body: serde_json::Value =
            self.http.get(self.url("/stats")).send().await?.error_for_status()?.json().await?;
        Ok(serde_json::from_value(body["by_state"].clone()).unwrap_or_default())
    }

    /// Every order's history (`GET /orders/{id}`), a few requests at a time.
    pub async fn histories(&self, ids: &[Uuid]) -> Vec<Option<OrderView>> {
        let fetches = ids.iter().map(|id| {
            let request = self.http.get(self.url(&format!("/orders/{id}")));
            async move {
                let response = request.send().await.ok()?.error_for_status().ok()?;
                response.json::<OrderView>().await.ok()
            }
        });
        futures::stream::iter(fetches).buffered(8).collect().await
    }

    /// Stops every process (SIGTERM, then SIGKILL after 15 s), deletes the vhost and the run directory.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.connection.close(200, "bench done".into()).await;
        for process in &self.processes {
            let _ = Command::new("kill").args(["-TERM", &process.pid().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut unclean = Vec::new();
        for mut process in std::mem::take(&mut self.processes) {
            loop {
                match process.child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            unclean.push(format!("{} ({status})", process.label));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => {
                        let _ = process.child.kill();
                        let _ = process.child.wait();
                        unclean.push(format!("{} (killed after 15 s)", process.label));
                        break;
                    }
                }
            }
        }
        if let Some(vhost) = self.vhost.take() {
            vhost.delete().await?;
        }
        if unclean.is_empty() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        } else {
            crate::progress::note(&format!(
                "note: not every process stopped cleanly: {}; logs in {}",
                unclean.join(", "),
                self.run_dir.display()
            ));
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.processes.is_empty() && self.vhost.is_none() {
            return;
        }
        for process in &mut self.processes {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
        // The vhost (and its queues) is deleted by its own drop; the logs stay for a look.
        if !self.processes.is_empty() {
            eprintln!("\nnote: stack stopped early; its logs are in {}", self.run_dir.display());
        }
    }
}
