//! `dashboard` (issue 11): the tracker's live dashboard in a real browser.
//! Headless Chromium, driven through ChromeDriver's WebDriver protocol,
//! loads `/` while orders flow and checks that the counts move without a
//! reload, that the slowest node (inventory, slowed on purpose) is marked in
//! the diagram, that searching an order opens its timeline, and that the
//! panels of the rest of the stack (the coordinator, the domain copies, the
//! backorders, the true queues, the retry and dead-letter queues with their
//! reasons) show the stack's real state as the management API, the CLI and
//! the tracker tell it; it saves a
//! screenshot to `dashboard.png` (and of the rest of the stack to
//! `dashboard-stack.png`) in the build folder (`target/`). Without `chromium` and
//! `chromedriver` (`scripts/test.sh` installs them as root) it says so and
//! checks only what it can without a browser.

use serde_json::{json, Value};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::{orders, Stack};

/// A ChromeDriver process and one headless session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = harness::stack::free_port().ok()?;
        // A process group of its own: dropping the browser kills ChromeDriver and every Chromium process.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]
        }}}});
        let mut browser = Browser { driver, base, session: String::new(), http };
        let answer = harness::until(Duration::from_secs(20), Duration::from_millis(200), || async {
            match browser.http.post(format!("{}/session", browser.base)).json(&capabilities).send().await {
                Ok(response) => Ok(harness::Check::Done(response.json::<Value>().await?)),
                Err(e) => Ok(harness::Check::Waiting(format!("chromedriver: {e}"))),
            }
        })
        .await
        .expect("chromedriver answers");
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Some(browser)
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let request = self.http.request(method, url);
        let request = if body.is_null() { request } else { request.json(&body) };
        let response = request.send().await.expect("chromedriver answers");
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(answer["value"].get("error").is_none(), "{path}: {answer}");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", json!({"url": url})).await;
    }

    /// Runs `script` in the page and returns what it returns.
    async fn run(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "execute/sync", json!({"script": script, "args": []})).await
    }

    async fn text_of(&self, id: &str) -> String {
        let script = format!("const e = document.getElementById({id:?}); return e ? e.textContent : null;");
        self.run(&script).await.as_str().unwrap_or_default().to_string()
    }

    async fn screenshot(&self, path: &std::path::Path) {
        let png = self.command(reqwest::Method::GET, "screenshot", Value::Null).await;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Browser {
    /// Ends the session (ChromeDriver closes Chromium), then ChromeDriver.
    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).timeout(Duration::from_secs(10)).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A script returning the cells' texts of the row with `id`, or null.
fn cells_of(id: &str) -> String {
    format!("const r = document.getElementById({id:?}); return r ? Array.from(r.cells).map(c => c.textContent) : null;")
}

/// Waits (the page updates every second) until the row `id` has `expected` as its cells.
async fn row_shows(browser: &Browser, id: &str, expected: &[String]) {
    harness::until(Duration::from_secs(30), Duration::from_millis(300), || async {
        let cells = browser.run(&cells_of(id)).await;
        let cells: Vec<String> = serde_json::from_value(cells.clone()).unwrap_or_default();
        if cells == expected {
            Ok(harness::Check::Done(()))
        } else {
            Ok(harness::Check::Waiting(format!("row {id} shows {cells:?}, not {expected:?}")))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The panels beyond the workflow, each checked against what the stack is:
/// the management API's consumers and depths, the dead letter `orderflow
/// dlq` lists, the backorder the tracker's history records, and a directed
/// order held in flight by stopping payment.
async fn the_stack_panels_show_its_real_state(stack: &mut Stack, browser: &Browser) {
    let management = tests::management();
    // A queue's messages and consumers once the management API has gathered
    // them (and, with `consumed`, counts a consumer: its figures come every 5 s).
    let vhost = stack.vhost.name.clone();
    let figures = |queue: String, consumed: bool| {
        let (management, vhost) = (&management, &vhost);
        async move {
            harness::until(Duration::from_secs(30), Duration::from_millis(500), || async {
                let answer = management.queue(vhost, &queue).await?;
                match (answer["messages"].as_u64(), answer["consumers"].as_u64()) {
                    (Some(messages), Some(consumers)) if consumers > 0 || !consumed => {
                        Ok(harness::Check::Done((messages.to_string(), consumers)))
                    }
                    _ => Ok(harness::Check::Waiting(format!("no figures for {queue} yet"))),
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
        }
    };
    // The domains' processes are not started yet: nobody answers the customer domain, and the page says so.
    let customer = topology::DomainCopy::primary("customer");
    let (requests, consumers) = figures(customer.queue(), false).await;
    assert_eq!(consumers, 0);
    // Its feed (its edits to forward) waits for it too.
    let feed = match customer.feed_queue() {
        Some(feed) => figures(feed, false).await.0,
        None => "–".to_string(),
    };
    let expected = [customer.label(), customer.process(), requests, "0".into(), feed];
    row_shows(browser, &format!("domain-{}", customer.label()), &expected).await;
    let marked = "return document.getElementById('domain-customer').cells[3].className;";
    assert_eq!(browser.run(marked).await, json!("down"), "no consumer shows red");
    stack.start_domains().await.expect("the domains start");
    for copy in topology::DomainCopy::all() {
        let (_, consumers) = figures(copy.queue(), true).await;
        assert!(consumers >= 1, "{} answers", copy.label());
        // The copy drains what waited for it while the page and the
        // management API (which samples every 5 s) catch up: each look
        // compares the page with the API's latest figures.
        let id = format!("domain-{}", copy.label());
        harness::until(Duration::from_secs(30), Duration::from_millis(500), || async {
            let (requests, consumers) = figures(copy.queue(), true).await;
            let lag = match copy.feed_queue() {
                Some(feed) => figures(feed, true).await.0,
                None => "–".to_string(),
            };
            let expected = [copy.label(), copy.process(), requests, consumers.to_string(), lag];
            let cells: Vec<String> =
                serde_json::from_value(browser.run(&cells_of(&id)).await).unwrap_or_default();
            Ok(if cells == expected {
                harness::Check::Done(())
            } else {
                harness::Check::Waiting(format!("row {id} shows {cells:?}, the management API {expected:?}"))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    for queue in [topology::RECEIVED_ITEMS_QUEUE, topology::DISTRIBUTOR_SHIPMENTS_QUEUE] {
        let (messages, consumers) = figures(queue.to_string(), true).await;
        let label =
            browser.run(&cells_of(&format!("queue-{queue}"))).await[0].as_str().unwrap_or("").to_string();
        row_shows(browser, &format!("queue-{queue}"), &[label, messages, consumers.to_string()]).await;
    }

    // A message no one can read, published by the management API: its dead
    // letter is counted and its reason shown as `orderflow dlq` gives it.
    stack
        .publish_with_management_api(topology::WORKFLOW_EXCHANGE, "order.intake", json!({}), "{\"not\": ")
        .await;
    let letters = stack.wait_dead_letters(1, Duration::from_secs(30)).await;
    let reason = letters[0]["reason"].as_str().unwrap().to_string();
    row_shows(browser, "dead-letters", &["dead-letter queue".into(), "1".into()]).await;
    assert_eq!(browser.text_of("dead-letter-count").await, "1");
    let failures = browser.text_of("failures").await;
    assert!(failures.contains(&format!("intakedead lettered{reason}1")), "{reason:?} in {failures}");

    // An order for more than is on hand, of a SKU a distributor supplies: it waits.
    crate::backorders::supplied_by_d01(stack, &["SKU-0901"]).await;
    let mut order = tests::orders::valid(1, "standard");
    order["items"] = json!([{"sku": "SKU-0901", "qty": 12}]);
    let waiting = stack.publish(&[order])[0];
    stack.wait_state(&waiting, "backordered", Duration::from_secs(30)).await;
    let view = stack.order(&waiting).await;
    let detail = &view.history.iter().find(|h| h.state == "backordered").unwrap().detail;
    let units: i64 = shared::backorder::parse(detail).unwrap().iter().map(|line| line.qty).sum();
    assert!(units > 0, "{detail}");
    row_shows(browser, "backorder-SKU-0901", &["SKU-0901".into(), "1".into(), units.to_string()]).await;

    // A directed order held at payment while payment is away, then let go.
    let in_flight = |n: u64| vec!["directed orders in flight".to_string(), n.to_string()];
    row_shows(browser, "coordinator-in-flight", &in_flight(0)).await;
    assert!(stack.stop("payment-1").await.success());
    let directed = stack.publish_directed(&[tests::orders::valid(1, "standard")]);
    row_shows(browser, "coordinator-in-flight", &in_flight(1)).await;
    stack.spawn("payment", "payment-1");
    stack.wait_terminal(&directed, Duration::from_secs(90)).await;
    row_shows(browser, "coordinator-in-flight", &in_flight(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_moves_live_and_opens_an_orders_timeline() {
    // Purchase orders are never delivered here: a backordered order keeps waiting.
    let env = [("ORDERFLOW_DELAY_MS_INVENTORY", "100"), ("ORDERFLOW_DISTRIBUTOR_DELAY_MS", "3600000")];
    let mut stack = Stack::start("dashboard", &env).await;
    // Without a browser: the page and its data are served, with no outside address in the page.
    let (status, page) = stack.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("EventSource(\"/live\")"), "the page updates itself");
    let fetched_from_elsewhere = ["<script src", "<link", "@import", "url(http", "https://", "fetch(\"http"];
    assert!(fetched_from_elsewhere.iter().all(|s| !page.contains(s)), "nothing is loaded from elsewhere");
    let (status, workflow) = stack.get("/workflow").await;
    assert_eq!(status, 200);
    let workflow: Value = serde_json::from_str(&workflow).unwrap();
    assert_eq!(workflow["nodes"].as_array().unwrap().len(), harness::nodes().len());
    let billed =
        workflow["workflows"].as_array().unwrap().iter().find(|w| w["name"] == "ship-then-bill").cloned();
    assert_eq!(
        billed.as_ref().map(|w| w["path"].as_array().unwrap().last().cloned()),
        Some(Some(json!("payment charged"))),
        "{workflow}"
    );
    let edge = |from: &str, to: &str| {
        workflow["edges"].as_array().unwrap().iter().any(|e| e["from"] == from && e["to"] == to)
    };
    assert!(
        edge("shipping", "payment") && edge("payment", "purchasing") && edge("payment", "inventory"),
        "{workflow}"
    );

    let Some(browser) = Browser::start().await else {
        eprintln!("SKIPPED the browser part of dashboard: no chromium and chromedriver (scripts/test.sh installs them as root)");
        return;
    };
    browser.go(&stack.url("/")).await;
    harness::until(Duration::from_secs(20), Duration::from_millis(300), || async {
        match browser.text_of("connection").await.as_str() {
            "live" => Ok(harness::Check::Done(())),
            other => Ok(harness::Check::Waiting(format!("the page says {other:?}"))),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let before: u64 = browser.text_of("total").await.parse().unwrap();
    assert_eq!(before, 0);

    let ids = stack.publish(&(0..30).map(|i| orders::valid(1 + i % 2, "standard")).collect::<Vec<_>>());
    // The counts move in the page, with no reload.
    harness::until(Duration::from_secs(30), Duration::from_millis(300), || async {
        let total: u64 = browser.text_of("total").await.parse().unwrap_or(0);
        match total {
            30 => Ok(harness::Check::Done(())),
            n => Ok(harness::Check::Waiting(format!("the page shows {n} orders"))),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    let marked = harness::until(Duration::from_secs(20), Duration::from_millis(300), || async {
        let script = "const g = document.querySelector('#diagram .node.slowest'); return g ? g.id : null;";
        let handled = browser.text_of("row-shipping").await;
        match browser.run(script).await.as_str() {
            Some(id) if handled.starts_with("shipping") => {
                Ok(harness::Check::Done((id.to_string(), handled)))
            }
            other => Ok(harness::Check::Waiting(format!("slowest marked: {other:?}"))),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(marked.0, "node-inventory", "the slowest node is marked in the diagram");

    // Search opens the order's timeline.
    let id = ids[3].to_string();
    browser
        .run(&format!(
            "document.getElementById('search').value = {id:?}; document.getElementById('search-form').requestSubmit(); return true;"
        ))
        .await;
    let timeline = harness::until(Duration::from_secs(10), Duration::from_millis(200), || async {
        let timeline = browser.text_of("timeline").await;
        if timeline.contains("shipped") {
            Ok(harness::Check::Done(timeline))
        } else {
            Ok(harness::Check::Waiting(format!("timeline: {timeline:?}")))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for state in ["placed", "accepted", "charged", "reserved", "picked", "shipped"] {
        assert!(timeline.contains(state), "{state} missing from {timeline}");
    }
    assert!(timeline.contains("by inventory") && timeline.contains(" ms"), "{timeline}");
    the_stack_panels_show_its_real_state(&mut stack, &browser).await;
    // Beside the build (CARGO_TARGET_DIR, else the workspace's target/), which may not exist yet.
    let folder = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&folder).unwrap();
    let target = folder.join("dashboard.png");
    browser.screenshot(&target).await;
    browser.run("document.getElementById('stack').scrollIntoView(); return true;").await;
    browser.screenshot(&folder.join("dashboard-stack.png")).await;
    browser.quit().await;
    assert!(std::fs::metadata(&target).unwrap().len() > 10_000, "a screenshot with something in it");
}
