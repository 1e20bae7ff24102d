//! `bench_smoke`: the benchmark's smoke run (`orderflow-bench --smoke`) finishes
//! in seconds, prints every figure of the report, writes it to `--report`, and
//! leaves no vhost or PostgreSQL database behind; a short soak prints its rows; the domains run
//! prints orders by reference beside self-contained ones and the lookup latencies. It checks that the
//! bench runs, never a speed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What every figure line of the report contains.
const FIGURES: [&str; 20] = [
    "relay chains/s",
    "orderflow orders/s, saturated",
    "ratio orderflow / relay",
    "orderflow orders/s at the maximum sustainable rate",
    "orderflow orders/s at half rate",
    "p50",
    "p99",
    "max",
    "p99 outside the picklist's aggregation wait",
    "p99 total",
    "peak RSS",
    "CPU s/1000 orders",
    "| 1 payment instance |",
    "| 2 payment instances |",
    "directed orders/s, saturated",
    "sync service call round trip",
    "| directed |",
    "| idle stack |",
    "stores on PostgreSQL (section 6)",
    "### 6. The stores on PostgreSQL",
];

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `orderflow-bench` with `args` (at most 240 s); its exit status, standard output and error.
async fn run_bench(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let bin_dir = tests::bin_dir();
    let mut child = Command::new(bin_dir.join("orderflow-bench"))
        .args(args)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orderflow-bench starts");
    let (stdout, stderr) = (read_all(child.stdout.take().unwrap()), read_all(child.stderr.take().unwrap()));
    let status = tokio::task::spawn_blocking(move || {
        // Generous: the other tests share the machine. On timeout, SIGTERM lets the bench clean up.
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                std::thread::sleep(Duration::from_secs(20));
                let _ = child.kill();
                panic!("orderflow-bench did not finish within 240 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("waiting for the bench");
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_smoke_run_prints_every_figure() {
    let report =
        std::env::temp_dir().join(format!("orderflow-bench-smoke-{}.md", uuid::Uuid::new_v4().simple()));
    let (status, stdout, stderr) = run_bench(&["--smoke", "--report", report.to_str().unwrap()]).await;
    let written = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    assert!(status.success(), "orderflow-bench --smoke failed ({status}):\n{stderr}\n{stdout}");

    for figure in FIGURES {
        assert!(stdout.contains(figure), "the report lacks {figure:?}:\n{stdout}");
    }
    for process in harness::processes() {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {process} |")));
        let row = row.unwrap_or_else(|| panic!("no peak RSS / CPU row for {process}:\n{stdout}"));
        assert!(row.contains("MiB"), "{process}'s row has no peak RSS: {row}");
    }
    // Every line of the summary carries a number.
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("### Summary"))
        .take_while(|l| !l.starts_with("### 1."))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure"))
        .collect();
    assert!(summary.len() >= 10, "a summary of every figure:\n{stdout}");
    for line in summary {
        assert!(line.chars().any(|c| c.is_ascii_digit()), "a figure without a number: {line}");
    }
    let written = written.expect("the report file is written");
    assert_eq!(written.trim(), stdout.trim(), "--report holds what was printed");

    // Every vhost the bench made is gone (it names its run on stderr).
    let run_id = stderr
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .map(|id| id.trim_end_matches(':').to_string())
        .expect("the bench names its run");
    let vhosts: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/vhosts",
            std::env::var("ORDERFLOW_MGMT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("vhosts");
    let left: Vec<&str> = vhosts
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .filter(|name| name.contains(&format!("orderflow-bench-{run_id}")))
        .collect();
    assert!(left.is_empty(), "the bench left vhosts behind: {left:?}");
    let databases = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-At", "-c", "SELECT datname FROM pg_database"])
        .output()
        .expect("psql");
    let databases = String::from_utf8_lossy(&databases.stdout);
    let prefix = format!("orderflow_bench_{run_id}");
    assert!(
        !databases.lines().any(|d| d.starts_with(&prefix)),
        "the bench left databases behind: {databases}"
    );
}

/// A short soak: one row per interval, with the tracker's store moving
/// ended orders to the warehouse as they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_prints_a_row_per_interval() {
    let args = [
        "--soak",
        "--soak-orders",
        "300",
        "--soak-rate",
        "60",
        "--soak-every",
        "3",
        "--warmup",
        "10",
        "--env",
        "ORDERFLOW_WAREHOUSE_AFTER_S=1",
    ];
    let (status, stdout, stderr) = run_bench(&args).await;
    assert!(status.success(), "orderflow-bench --soak failed ({status}):\n{stderr}\n{stdout}");
    assert!(stdout.contains("## Soak: 300 orders at 60 orders/s"), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert!(rows.len() >= 2, "a row per interval:\n{stdout}");
    let last = rows.last().unwrap();
    assert_eq!(last[2], "300", "every order ended: {last:?}");
    let warehouse: i64 = last[8].parse().unwrap();
    assert!(warehouse > 0, "ended orders moved to the warehouse during the soak: {last:?}");
    assert!(stdout.contains("tracker-1 MiB") && stdout.contains("Peak RSS"), "{stdout}");
}

/// The A/B mode with the same build on both sides: both columns and the ratios printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_comparison_prints_both_builds_and_the_ratios() {
    let bin_dir = tests::bin_dir();
    let other = bin_dir.to_str().unwrap().to_string();
    let args = [
        "--compare-bin-dir",
        &other,
        "--reps",
        "1",
        "--orders",
        "100",
        "--in-flight",
        "100",
        "--warmup",
        "5",
    ];
    let (status, stdout, stderr) = run_bench(&args).await;
    assert!(status.success(), "orderflow-bench --compare-bin-dir failed ({status}):\n{stderr}\n{stdout}");
    let lines = [
        "## A/B",
        "| orders/s (median;",
        "| CPU s per 1,000 orders, orderflow's processes |",
        "| peak RSS, tracker (MiB) |",
        "| peak RSS, payment (MiB) |",
    ];
    for line in lines {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    let ratio = stdout
        .lines()
        .find(|l| l.starts_with("| orders/s"))
        .and_then(|l| l.trim_end_matches(" |").rsplit("| ").next().map(str::to_string));
    let ratio: f64 =
        ratio.and_then(|r| r.trim().parse().ok()).unwrap_or_else(|| panic!("no ratio:\n{stdout}"));
    assert!(ratio > 0.0, "{stdout}");

    // `--directed`: the same comparison with the orders going through the coordinator.
    let directed = [&args[..], &["--directed"]].concat();
    let (status, stdout, stderr) = run_bench(&directed).await;
    assert!(
        status.success(),
        "orderflow-bench --compare-bin-dir --directed failed ({status}):\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("alternating, directed mode (the coordinator through the services)"), "{stdout}");
    let coordinator = stdout.lines().find(|l| l.starts_with("| CPU s per 1,000 orders, coordinator |"));
    let busy = coordinator.and_then(|l| l.split('|').nth(2)).and_then(|a| a.trim().parse::<f64>().ok());
    assert!(busy.is_some_and(|cpu| cpu > 0.0), "the coordinator worked: {coordinator:?}\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domains_run_prints_both_kinds_of_order_and_the_lookups() {
    let seed_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/domains");
    let args = [
        "--smoke",
        "--domains",
        "--seed-dir",
        seed_dir.to_str().unwrap(),
        "--orders",
        "100",
        "--warmup",
        "5",
    ];
    let (status, stdout, stderr) = run_bench(&args).await;
    assert!(status.success(), "orderflow-bench --domains failed ({status}):\n{stderr}\n{stdout}");
    for line in [
        "| pair | self-contained orders/s | by reference orders/s |",
        "| customer@uk (replica) | 50 |",
        "| customer (primary) | 50 |",
        "Median ratio",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
}
