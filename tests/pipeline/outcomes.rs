//! `outcomes`: the distribution center answers whoever gave it the work
//! (issue 29, part 3). A client no one here wrote (Python's pika) places
//! orders that name where their outcome goes, RabbitMQ's direct reply-to or
//! a callback key, in both modes, while payment is killed -9 and started
//! again: every order's outcome arrives once, where it asked, saying how
//! the order ended. A careless or hostile placer (another queue as
//! `reply_to`, a bad key, both at once) gets its order dead-lettered with
//! the reason; `orderflow publish --wait` prints each outcome as it ends.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::Stack;
use uuid::Uuid;

/// Places the orders of `file` (JSON lines: `{"order": ..., "directed": bool,
/// "via": "reply" | "callback"}`) with pika, then prints every outcome it
/// receives (one JSON line: `via` and the body) until it has `expected`, or
/// `wait_s` passed; a few seconds more show whether any comes twice.
const PIKA_PLACER: &str = r#"
import json, sys, time, pika
url, path, key, expected, wait_s = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
got = []
def take(via):
    def on_message(ch, method, properties, body):
        got.append((via, properties.message_id, body.decode()))
        print(json.dumps({"via": via, "message_id": properties.message_id, "outcome": json.loads(body)}), flush=True)
    return on_message
channel.basic_consume("amq.rabbitmq.reply-to", take("reply"), auto_ack=True)
queue = channel.queue_declare("", exclusive=True).method.queue
channel.queue_bind(queue, "orderflow.results", "callback." + key)
channel.basic_consume(queue, take("callback"), auto_ack=True)
channel.confirm_delivery()
for line in open(path):
    placing = json.loads(line)
    key_ = "order.coordinator" if placing["directed"] else "order.intake"
    if placing["via"] == "reply":
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     reply_to="amq.rabbitmq.reply-to")
    else:
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     headers={"x-orderflow-callback": key})
    channel.basic_publish("orderflow.workflow", key_, json.dumps(placing["order"]).encode(), props)
print(json.dumps({"placed": True}), flush=True)
deadline = time.time() + wait_s
while len(got) < expected and time.time() < deadline:
    connection.process_data_events(time_limit=1)
settle = time.time() + 4
while time.time() < settle:
    connection.process_data_events(time_limit=1)
connection.close()
"#;

fn pika_installed() -> bool {
    Command::new("python3").args(["-c", "import pika"]).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_answers_its_placer_once_where_it_asked_through_a_kill() {
    if !pika_installed() {
        eprintln!("skipped: Python's pika is not installed (pip install pika)");
        return;
    }
    let mut stack = Stack::start("outcomes", &[]).await;
    let mut rng = rand::thread_rng();
    // 100 orders for each way in each mode; every tenth has a card the processor declines.
    let mut asked: BTreeMap<Uuid, (bool, &str)> = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..400 {
        let (directed, via) = (i % 2 == 1, if i % 4 < 2 { "reply" } else { "callback" });
        let id = Uuid::new_v4();
        let mut order = tests::random_valid_order(&mut rng);
        order["order_id"] = json!(id);
        if i % 10 == 0 {
            order["payment"]["card_number"] = json!("4000000000000002");
        }
        asked.insert(id, (directed, via));
        lines.push(json!({"order": order, "directed": directed, "via": via}).to_string());
    }
    let file = stack.run_dir.join("placings.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", stack.vhost.name);
    let key = format!("shop-{}", Uuid::new_v4().simple());
    let placer = Command::new("python3")
        .args(["-c", PIKA_PLACER, &url, file.to_str().unwrap(), &key, "400", "240"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");

    // Payment killed -9 while the orders travel, then started again.
    let ids: Vec<Uuid> = asked.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let charged = stack.statuses(&ids).await.values().filter(|s| s.state != "placed").count();
        if charged >= 60 {
            break;
        }
        assert!(Instant::now() < deadline, "the orders did not start moving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.kill("payment-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.spawn("payment", "payment-1");
    stack.wait_terminal(&ids, Duration::from_secs(240)).await;

    let output = tokio::task::spawn_blocking(move || placer.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "pika: {}", String::from_utf8_lossy(&output.stderr));
    let mut arrived: BTreeMap<Uuid, Vec<Value>> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let said: Value = serde_json::from_str(line).unwrap();
        if said.get("placed").is_some() {
            continue;
        }
        let id: Uuid = serde_json::from_value(said["outcome"]["order_id"].clone()).unwrap();
        assert_eq!(said["message_id"], json!(id.to_string()), "{said}");
        arrived.entry(id).or_default().push(said);
    }
    let statuses = stack.statuses(&ids).await;
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for (id, (directed, via)) in &asked {
        let got = arrived.get(id).unwrap_or_else(|| panic!("no outcome for order {id} ({via})"));
        assert_eq!(got.len(), 1, "order {id}: one outcome, got {got:#?}");
        let outcome = &got[0]["outcome"];
        assert_eq!(got[0]["via"], json!(via), "order {id} (directed {directed}): {outcome}");
        let state = statuses[&id.to_string()].state.clone();
        assert_eq!(outcome["outcome"], json!(state), "order {id}: the outcome is how it ended");
        if state == "shipped" {
            assert!(outcome["detail"].as_str().unwrap().contains("tracking"), "{outcome}");
        }
        *ends.entry(state).or_default() += 1;
    }
    assert_eq!(arrived.len(), asked.len(), "outcomes only for the orders placed");
    assert!(ends.get("shipped").copied().unwrap_or(0) >= 300, "{ends:?}");
    assert!(ends.get("payment_declined").copied().unwrap_or(0) >= 30, "{ends:?}");
    let report = stack.cli_json(&["report", "--last", "30m", "--json"]);
    assert_eq!(report["answers"], json!({"sent": 400, "unroutable": 0, "waiting": 0}), "{report}");
    eprintln!("400 outcomes, each once where it was asked: {ends:?}");
}

/// The management API publishes an order with these properties (its id as `message_id` too).
async fn place_with(stack: &Stack, mut properties: Value) -> Uuid {
    let id = Uuid::new_v4();
    properties["message_id"] = json!(id.to_string());
    let mut order = tests::random_valid_order(&mut rand::thread_rng());
    order["order_id"] = json!(id);
    let answer = stack
        .publish_with_management_api("orderflow.workflow", "order.intake", properties, &order.to_string())
        .await;
    assert_eq!(answer["routed"], true, "{answer}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_careless_answer_address_is_refused_with_the_reason_and_publish_waits_for_outcomes() {
    let stack = Stack::start("outcomes-careless", &[]).await;
    let headers =
        |key: Value| json!({"content_type": "application/json", "headers": {"x-orderflow-callback": key}});
    let careless = [
        (
            json!({"content_type": "application/json", "reply_to": "orderflow.payment"}),
            "not RabbitMQ's direct reply-to",
        ),
        (headers(json!("two words")), "the callback key"),
        (headers(json!("bell\u{7}")), "the callback key"),
        (headers(json!("k".repeat(300))), "the callback key"),
        (headers(json!(42)), "the callback key"),
        (
            json!({"content_type": "application/json", "reply_to": "amq.rabbitmq.reply-to.g1h2AAEu",
                   "headers": {"x-orderflow-callback": "mine"}}),
            "not both",
        ),
    ];
    let mut refused = Vec::new();
    for (properties, reason) in &careless {
        refused.push((place_with(&stack, properties.clone()).await, *reason));
    }
    let letters = stack.wait_dead_letters(refused.len(), Duration::from_secs(60)).await;
    for (id, reason) in &refused {
        let letter = letters.iter().find(|l| l["message_id"] == json!(id.to_string()));
        let letter =
            letter.unwrap_or_else(|| panic!("order {id} was not dead-lettered ({reason}): {letters:#?}"));
        assert!(letter["reason"].as_str().unwrap().contains(reason), "{letter}");
    }

    // `orderflow publish --wait`: each outcome as its order ends, in both modes.
    for extra in [&[][..], &["--directed"][..]] {
        let mut args = vec!["publish", "--count", "12", "--mixed", "--wait", "--timeout", "120"];
        args.extend(extra);
        let output = stack.cli(&args);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{args:?}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
        let outcomes: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let ids: std::collections::BTreeSet<&str> =
            outcomes.iter().map(|o| o["order_id"].as_str().unwrap()).collect();
        assert_eq!((outcomes.len(), ids.len()), (12, 12), "{stdout}");
        for outcome in &outcomes {
            let id: Uuid = outcome["order_id"].as_str().unwrap().parse().unwrap();
            let view = stack.order(&id).await;
            assert_eq!(outcome["outcome"], json!(view.state), "{outcome}");
        }
    }
    // A callback key no queue is bound to: the outcome is dropped, and counted so.
    let nobody = place_with(&stack, headers(json!("nobody-listens"))).await;
    stack.wait_terminal(&[nobody], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = stack.cli_json(&["report", "--last", "30m", "--json"]);
        if report["answers"]["unroutable"] == json!(1) {
            assert_eq!(report["answers"]["sent"], json!(24), "the 24 outcomes of publish --wait: {report}");
            let table = String::from_utf8(stack.cli(&["report", "--last", "30m"]).stdout).unwrap();
            assert!(
                table.contains("answers to placers: 24 outcomes sent, 1 with no queue to go to"),
                "{table}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the unroutable outcome was not counted: {report}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Waiting for what cannot end in time says so (exit 3).
    let output = stack.cli(&["publish", "--count", "3", "--wait", "--timeout", "0"]);
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no outcome within 0 s"));
}
