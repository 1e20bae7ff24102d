//! The command line and the tracker's HTTP API: publish from a file (a bad
//! line stops everything), status as JSON, wait's timeout, and the API's
//! answers to bad and unknown ids.

use serde_json::Value;
use std::time::Duration;
use tests::{orders, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_tracker_api() {
    let stack = Stack::start("cli", &[]).await;

    // A line that is not a JSON object stops the command: nothing is published.
    let file = stack.run_dir.join("bad.jsonl");
    std::fs::write(
        &file,
        format!("{}\n[1, 2]\n{}\n", orders::valid(1, "standard"), orders::valid(1, "express")),
    )
    .unwrap();
    let output = stack.cli(&["publish", "--file", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("not a JSON object"), "{stderr}");
    assert!(output.stdout.is_empty(), "ids were printed for a failed publish");
    let (_, stats) = stack.get("/stats").await;
    assert_eq!(serde_json::from_str::<Value>(&stats).unwrap()["orders"], 0, "something was published");

    // status --json, right after publish returns.
    let ids = stack.publish(&[orders::valid(3, "overnight")]);
    let output = stack.cli(&["status", &ids[0].to_string(), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let view: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(view["order_id"], ids[0].to_string());
    assert!(view["state"].is_string() && view["terminal"].is_boolean());
    let first = &view["history"][0];
    assert_eq!(first["state"], "placed");
    for field in ["state", "node", "at", "detail"] {
        assert!(first.get(field).is_some(), "history entries lack {field}");
    }
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    let output = stack.cli(&["status", &ids[0].to_string()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("shipped (terminal)") && text.contains("rebinned"), "{text}");

    // wait: success prints counts; a never-seen order times out with exit code 3.
    let ids_file = stack.run_dir.join("ids.txt");
    std::fs::write(&ids_file, format!("{}\n", ids[0])).unwrap();
    let output = stack.cli(&["wait", "--ids", ids_file.to_str().unwrap(), "--timeout", "10"]);
    assert!(output.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&output.stdout).unwrap()["shipped"], 1);
    std::fs::write(&ids_file, format!("{}\n", uuid::Uuid::new_v4())).unwrap();
    let output = stack.cli(&["wait", "--ids", ids_file.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(output.status.code(), Some(3), "timed out");

    // The API validates ids.
    assert_eq!(stack.get("/orders/not-a-uuid").await.0, 400);
    assert_eq!(stack.get(&format!("/orders/{}", uuid::Uuid::new_v4())).await.0, 404);
    let output = stack.cli(&["status", "not-a-uuid"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("uuid"));

    // The promised 100,000 ids per status request fit (60,000 used to answer 413 with no body),
    // and more get a reason.
    let many: Vec<uuid::Uuid> = (0..100_000).map(|_| uuid::Uuid::new_v4()).collect();
    let url = format!("http://{}/orders/status", stack.http_addr);
    let client = reqwest::Client::new();
    let answer = client.post(&url).json(&serde_json::json!({ "ids": many })).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let too_many: Vec<uuid::Uuid> = (0..100_001).map(|_| uuid::Uuid::new_v4()).collect();
    let answer = client.post(&url).json(&serde_json::json!({ "ids": too_many })).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    assert!(answer.text().await.unwrap().contains("at most 100000 ids"));
}

/// `orderflow wait` with no tracker listening says so instead of counting
/// every order as "unknown" in silence, and fails (1) rather than time out (3).
#[test]
fn wait_says_when_the_tracker_does_not_answer() {
    let dir = std::env::temp_dir().join(format!("orderflow-wait-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ids = dir.join("ids.txt");
    std::fs::write(&ids, format!("{}\n", uuid::Uuid::new_v4())).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = std::process::Command::new(tests::bin_dir().join("orderflow"))
        .args(["wait", "--ids", ids.to_str().unwrap(), "--timeout", "1"])
        .env("ORDERFLOW_HTTP_ADDR", closed.to_string())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the tracker's last answer") && stderr.contains("not reachable"), "{stderr}");
}

/// 300 clients that open a connection to the tracker's API and never finish
/// their headers (plus 100 that send nothing) are disconnected once the
/// header-read timeout passes, and the API answers everyone else meanwhile.
/// Before the timeout they stayed connected for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_api_drops_clients_that_never_finish_their_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stack = Stack::empty("slowloris", &[("ORDERFLOW_HTTP_HEADER_TIMEOUT_S", "2")]).await;
    stack.spawn("tracker", "tracker-1");
    stack.wait_for_tracker().await;

    let mut stalled = Vec::new();
    for i in 0..400 {
        let mut socket = tokio::net::TcpStream::connect(&stack.http_addr).await.unwrap();
        if i < 300 {
            socket.write_all(b"GET /stats HTTP/1.1\r\nHost: tracker\r\nX-Slow: ").await.unwrap();
        }
        stalled.push(socket);
    }
    // Still answering while they hang.
    assert_eq!(stack.get("/health").await.0, 200);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (i, socket) in stalled.iter_mut().enumerate() {
        let mut buffer = [0u8; 512];
        // The server ends the connection (EOF, or a 408 then EOF, or a reset).
        loop {
            match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
                Err(_) => panic!("client {i} still connected 20 s after a 2 s header timeout"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
            }
        }
    }
    assert_eq!(stack.get("/health").await.0, 200);
    stack.stop_all().await;
}
