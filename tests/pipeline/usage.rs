//! The binaries' command lines and logs: every binary answers `--help` and
//! `--version` without connecting anywhere, the `orderflow` command refuses
//! values it cannot use with one line and a usage exit code, and the logs
//! carry a start and a stop line, in JSON when asked, without colour codes
//! when not written to a terminal.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::{bin_dir, Stack};

/// A port nothing listens on.
fn closed_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Runs a binary with the broker and the tracker pointed at closed ports,
/// killing it if it has not ended within `limit`.
fn run_briefly(binary: &str, args: &[&str], limit: Duration) -> Output {
    run_with(binary, args, &[], limit)
}

/// [`run_briefly`] with more settings in the environment.
fn run_with(binary: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let run_dir = std::env::temp_dir().join(format!("orderflow-usage-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(bin_dir().join(binary))
        .args(args)
        .envs(env.iter().copied())
        .env("AMQP_URL", format!("amqp://guest:guest@{}/%2f", closed_port()))
        .env("ORDERFLOW_HTTP_ADDR", closed_port())
        .env("ORDERFLOW_MGMT_URL", format!("http://{}", closed_port()))
        .env("ORDERFLOW_RUN_DIR", &run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} runs: {e}"));
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{binary} {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    child.wait_with_output().unwrap()
}

/// Every setting is read once at start into typed settings: a value a
/// process cannot use stops it before it connects anywhere, exit 1, with one
/// line naming the variable and what a valid value is (the broker is a
/// closed port: a process that went on would retry it until killed).
#[test]
fn a_worker_refuses_a_bad_setting_at_start_naming_it() {
    let cases = [
        ("payment", "ORDERFLOW_PREFETCH", "-1"),
        ("payment", "ORDERFLOW_PREFETCH", "99999999999"),
        ("payment", "ORDERFLOW_MAX_ATTEMPTS", "NaN"),
        ("payment", "ORDERFLOW_DELAY_MS_PAYMENT", "soon"),
        ("payment", "ORDERFLOW_DB_MAX_CONNECTIONS", "0"),
        ("payment", "ORDERFLOW_METRICS_ADDR", "localhost"),
        ("coordinator", "ORDERFLOW_CALL_TIMEOUT_MS", "0"),
        ("tracker", "ORDERFLOW_WAREHOUSE_AFTER_S", "1e99"),
        ("inventory", "ORDERFLOW_BACKORDER_WAIT_S", "NaN"),
        ("inventory", "ORDERFLOW_DOMAIN_TIMEOUT_MS", "\u{7}\u{1b}[31m"),
        ("distributor-sim", "ORDERFLOW_DISTRIBUTOR_DELAY_MS", "86400001"),
    ];
    for (binary, variable, value) in cases {
        let output = run_with(binary, &[], &[(variable, value)], Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{binary} with {variable}={value:?}: {stderr}");
        let line = stderr.lines().find(|l| l.contains(variable));
        let line = line.unwrap_or_else(|| panic!("{binary} with {variable}={value:?} names it: {stderr}"));
        assert!(line.contains("is not valid"), "{line}");
        assert!(!line.contains('\u{1b}'), "the bad value is shown escaped: {line:?}");
    }
}

/// Before: `intake --help` started a worker retrying the broker for ever,
/// `tracker --help` bound its port, `topology --version` was an error.
#[test]
fn every_binary_answers_help_and_version_without_connecting() {
    let processes = topology::all_processes();
    let mut binaries: Vec<&str> = processes.iter().map(|p| topology::processes::binary_of(p).0).collect();
    binaries.dedup();
    assert!(binaries.contains(&"distributor-sim") && binaries.contains(&"customer"), "{binaries:?}");
    binaries.extend(["orderflow", "topology", "orderflow-bench"]);
    for binary in binaries {
        for flag in ["--help", "-h", "--version"] {
            let output = run_briefly(binary, &[flag], Duration::from_secs(5));
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(0), "{binary} {flag}: {stdout}{stderr}");
            assert!(stdout.contains(binary), "{binary} {flag} does not name itself: {stdout}");
            if flag == "--version" {
                assert!(stdout.trim() == format!("{binary} {}", env!("CARGO_PKG_VERSION")), "{stdout}");
            } else if flag == "--help" {
                assert!(stdout.contains("AMQP_URL"), "{binary} {flag} names no setting: {stdout}");
            }
        }
        let output = run_briefly(binary, &["--no-such-option"], Duration::from_secs(5));
        assert_eq!(output.status.code(), Some(2), "{binary} accepted an unknown option");
    }
}

#[test]
fn orderflow_help_teaches_examples_units_and_exit_codes() {
    let help = String::from_utf8_lossy(&run_briefly("orderflow", &["--help"], Duration::from_secs(5)).stdout)
        .to_string();
    for expected in
        ["Examples:", "orderflow publish --count", "ORDERFLOW_HTTP_ADDR", "Exit codes:", "3  timed out"]
    {
        assert!(help.contains(expected), "`orderflow --help` lacks {expected:?}:\n{help}");
    }
    let wait = String::from_utf8_lossy(
        &run_briefly("orderflow", &["wait", "--help"], Duration::from_secs(5)).stdout,
    )
    .to_string();
    assert!(wait.contains("in seconds"), "{wait}");
}

/// The command's exit code and the first line of its standard error.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = run_briefly("orderflow", args, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "orderflow {args:?} panicked: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "orderflow {args:?} printed {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    (output.status.code(), stderr.lines().next().unwrap_or_default().to_string())
}

/// Before: `--rate 0` published unpaced, `--rate 1e-300` and `wait
/// --timeout nan` panicked, a huge `--count` aborted on allocation, and
/// every runtime failure shared exit code 2 with usage errors.
#[test]
fn orderflow_refuses_values_it_cannot_use_with_one_line() {
    let dir = std::env::temp_dir().join(format!("orderflow-values-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (empty, blank_ids) = (dir.join("empty.jsonl"), dir.join("ids.txt"));
    std::fs::write(&empty, "").unwrap();
    std::fs::write(&blank_ids, "\n  \n").unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, i32, &str)> = [
        (vec!["publish"], 2, "--count N"),
        (vec!["publish", "--count", "5", "--rate", "0"], 2, "orders per second"),
        (vec!["publish", "--count", "5", "--rate", "nan"], 2, "orders per second"),
        (vec!["publish", "--count", "5", "--rate", "inf"], 2, "orders per second"),
        (vec!["publish", "--count", "5", "--rate", "-1"], 2, "orders per second"),
        (vec!["publish", "--count", "5", "--rate", "1e-300"], 2, "orders per second"),
        (vec!["publish", "--count", "0"], 2, "publish nothing"),
        (vec!["publish", "--count", "100000000000"], 2, "at most 1000000"),
        (vec!["wait", "--ids", "x", "--timeout", "nan"], 2, "seconds"),
        (vec!["wait", "--ids", "x", "--timeout", "-1"], 2, "seconds"),
        (vec!["wait", "--ids", "x", "--timeout", "inf"], 2, "seconds"),
        (vec!["cancel", "0f8fad5b-d9cb-469f-a165-70867728950e", "--wait", "--timeout", "-5"], 2, "seconds"),
        (vec!["status", "../stats"], 2, "not an order id"),
        (vec!["change", "not-a-uuid", "--shipping-method", "express"], 2, "not an order id"),
        (vec!["publish", "--file", &path(&empty)], 1, "holds no orders; nothing was published"),
        (vec!["wait", "--ids", &path(&blank_ids)], 1, "holds no order ids"),
    ]
    .into_iter()
    .map(|(args, code, said)| (args.into_iter().map(String::from).collect(), code, said))
    .collect();
    for (args, code, said) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (exit, first_line) = refused(&args);
        assert_eq!(exit, Some(*code), "orderflow {args:?}: {first_line}");
        assert!(
            first_line.starts_with("error: ") && first_line.contains(said),
            "orderflow {args:?}: {first_line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before: a worker's log had no start line at the default level, was
/// coloured even in a file, and there was no JSON.
#[test]
fn a_worker_logs_json_lines_with_its_start_and_stop_lines() {
    let run_dir = std::env::temp_dir().join(format!("orderflow-json-{}", uuid::Uuid::new_v4().simple()));
    let child = Command::new(bin_dir().join("intake"))
        .env("AMQP_URL", format!("amqp://guest:s3cret@{}/%2f", closed_port()))
        .env("ORDERFLOW_LOG_FORMAT", "json")
        .env("ORDERFLOW_RUN_DIR", &run_dir)
        .env("ORDERFLOW_INSTANCE_ID", "intake-json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough to log its start and a failed connection or two.
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&run_dir);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line:?}")))
        .collect();
    let start =
        lines.iter().find(|l| l["message"] == "started").unwrap_or_else(|| panic!("no start line: {log}"));
    assert_eq!(start["target"], "orderflow::lifecycle");
    assert_eq!(start["node"], "intake");
    assert_eq!(start["instance"], "intake-json");
    assert_eq!(start["prefetch"], 64);
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert!(start["broker"].as_str().unwrap().contains("guest:***@"), "{start}");
    assert!(!log.contains("s3cret"), "the password is in the log: {log}");
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "no warning about the broker: {log}");
    let stop = lines.last().unwrap();
    assert_eq!((&stop["message"], &stop["outcome"]), (&"stopped".into(), &"shutdown".into()), "{log}");
}

/// A real stack's log file: plain text without colour codes, the start line
/// with the broker's URL, the stop line after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_log_file_has_no_colour_codes_and_its_start_and_stop_lines() {
    let mut stack = Stack::empty("logs", &[]).await;
    stack.spawn("intake", "intake-1");
    let log_path = stack.run_dir.join("intake-1.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("started") {
        assert!(Instant::now() < deadline, "no start line in {}", log_path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stack.stop("intake-1").await.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("\x1b["), "colour codes in a log file: {log:?}");
    let start = log.lines().find(|l| l.contains("started")).unwrap();
    for field in
        ["orderflow::lifecycle", "node=\"intake\"", "instance=\"intake-1\"", "prefetch=64", "broker="]
    {
        assert!(start.contains(field), "the start line lacks {field}: {start}");
    }
    assert!(log.lines().last().unwrap_or_default().contains("stopped"), "{log}");
}
