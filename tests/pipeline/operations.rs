//! Operating a stack with the scripts a user runs (issue 31): `up.sh` says
//! "up" only when every process consumes its queue, and fails naming a
//! process that cannot start (stopping what it started); a second stack with
//! the first one's ports is refused before anything starts, naming the port
//! and the fix; `down.sh --purge` removes a stack (its broker users, its
//! vhost, its run directory) so that `up.sh` sets the same stack up again.
//! Each stack is a vhost and run directory of this test's own, removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tests::{bin_dir, management};

/// A stack as `scripts/up.sh` makes it: its vhost, run directory, tracker
/// port and metrics ports, and the binaries it runs.
struct ScriptStack {
    vhost: String,
    run_dir: PathBuf,
    http_addr: String,
    metrics_base: u16,
    bin: PathBuf,
}

impl ScriptStack {
    fn new(name: &str, metrics_base: u16, bin: &Path) -> ScriptStack {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let vhost = format!("orderflow-test-ops-{name}-{tag}");
        let port = harness::stack::free_port().expect("a free port");
        ScriptStack {
            run_dir: std::env::temp_dir().join(&vhost),
            vhost,
            http_addr: format!("127.0.0.1:{port}"),
            metrics_base,
            bin: bin.to_path_buf(),
        }
    }

    /// Runs `scripts/<script>` for this stack.
    fn run(&self, script: &str, args: &[&str]) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        Command::new("bash")
            .arg(root.join("scripts").join(script))
            .args(args)
            .env("AMQP_URL", format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost))
            .env("ORDERFLOW_RUN_DIR", &self.run_dir)
            .env("ORDERFLOW_HTTP_ADDR", &self.http_addr)
            .env("ORDERFLOW_METRICS_PORT_BASE", self.metrics_base.to_string())
            .env("ORDERFLOW_BIN_DIR", &self.bin)
            .env("ORDERFLOW_SKIP_BUILD", "1")
            .env("ORDERFLOW_START_TIMEOUT_S", "90")
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .output()
            .expect("bash runs")
    }

    /// The pids of this stack's processes that are alive.
    fn alive(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.run_dir.join("pids")) else { return Vec::new() };
        let mut alive = Vec::new();
        for entry in entries.flatten() {
            let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if Path::new(&format!("/proc/{}", pid.trim())).exists() {
                alive.push(entry.file_name().to_string_lossy().to_string());
            }
        }
        alive
    }

    /// Broker users of this stack (named after its vhost).
    async fn users(&self) -> Vec<String> {
        let mut users = Vec::new();
        for role in topology::permissions::Role::all() {
            let user = role.user("orderflow-", &self.vhost);
            if management().user_exists(&user).await.unwrap() {
                users.push(user);
            }
        }
        users
    }

    /// Removes everything of this stack, whatever state it is in.
    fn purge(&self) {
        let _ = self.run("down.sh", &["--purge"]);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A base with its 15 ports (and 100 above) free now.
fn free_metrics_base() -> u16 {
    for _ in 0..200 {
        let base: u16 = 30_000 + rand::random::<u16>() % 2_000;
        let free =
            (base + 1..=base + 16).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of metrics ports between 30000 and 32000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_means_every_process_is_up_and_a_stack_can_be_removed() {
    let base = free_metrics_base();
    let first = ScriptStack::new("first", base, &bin_dir());

    // Up: every process of the table alive and consuming, the tracker answering.
    let up = first.run("up.sh", &[]);
    let said = text(&up);
    assert!(up.status.success(), "{said}");
    let up_line =
        format!("orderflow is up: {} processes, each consuming its queue", topology::all_processes().len());
    assert!(said.contains(&up_line), "{said}");
    assert_eq!(first.alive().len(), topology::all_processes().len(), "{:?}", first.alive());
    assert_eq!(first.users().await.len(), topology::permissions::Role::all().len());

    // A second stack on the same metrics ports is refused before it starts
    // anything, naming the port, the process it was for and the fix.
    let second = ScriptStack::new("second", base, &bin_dir());
    let refused = second.run("up.sh", &[]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains(&format!("port {}, the metrics port of tracker-1", base + 1)), "{said}");
    assert!(said.contains("set ORDERFLOW_METRICS_PORT_BASE"), "{said}");
    assert!(second.alive().is_empty(), "{:?}", second.alive());
    second.purge();

    // A stack one of whose processes cannot start: up.sh names it with its
    // log's last lines, stops what it started and exits 1.
    let broken_bin = std::env::temp_dir().join(format!("{}-bin", first.vhost));
    std::fs::create_dir_all(&broken_bin).unwrap();
    for entry in std::fs::read_dir(bin_dir()).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            let _ = std::os::unix::fs::symlink(&path, broken_bin.join(entry.file_name()));
        }
    }
    let rebin = broken_bin.join("rebin");
    std::fs::remove_file(&rebin).unwrap();
    std::fs::write(&rebin, "#!/bin/sh\necho 'cannot start: a broken rebin for the test' >&2\nexit 1\n")
        .unwrap();
    Command::new("chmod").args(["755"]).arg(&rebin).status().unwrap();
    let broken = ScriptStack::new("broken", free_metrics_base(), &broken_bin);
    let failed = broken.run("up.sh", &[]);
    let said = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("rebin-1 exited at start"), "{said}");
    assert!(said.contains("cannot start: a broken rebin for the test"), "the log's last lines: {said}");
    assert!(said.contains("processes this run started are stopped"), "{said}");
    assert!(broken.alive().is_empty(), "nothing of the failed start runs on: {:?}", broken.alive());
    broken.purge();
    let _ = std::fs::remove_dir_all(&broken_bin);

    // The run directory deleted by hand: up.sh names the way out.
    let down = first.run("down.sh", &[]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(first.alive().is_empty());
    std::fs::remove_dir_all(&first.run_dir).unwrap();
    let orphaned = first.run("up.sh", &[]);
    let said = text(&orphaned);
    assert!(!orphaned.status.success(), "{said}");
    assert!(said.contains("scripts/down.sh --purge"), "{said}");

    // --purge removes the users and the vhost; up.sh then sets the same stack up again.
    let purged = first.run("down.sh", &["--purge"]);
    let said = text(&purged);
    assert!(purged.status.success(), "{said}");
    assert!(first.users().await.is_empty(), "{:?}", first.users().await);
    assert!(!management().vhost_exists(&first.vhost).await.unwrap(), "the vhost is deleted");
    assert!(!first.run_dir.exists());
    let again = first.run("up.sh", &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(first.alive().len(), topology::all_processes().len());
    first.purge();
    assert!(first.users().await.is_empty());
    assert!(!management().vhost_exists(&first.vhost).await.unwrap());
}
