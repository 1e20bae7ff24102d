//! `services`: every node is also a service (issue 9). Calls through the
//! CLI, synchronous (direct reply-to), polled (kept by the tracker) and with
//! a callback, as the stack's least-privilege users; a repeated request gets
//! its first result and never a second charge; only the coordinator and the
//! operator may call the services after intake; bad requests (malformed,
//! wrong state, unknown service, no reply_to, expired deadline, oversized,
//! no request id) get a reason where there is somewhere to reply and are
//! dead-lettered otherwise, and the service goes on; a Python `pika` client
//! calls a service using only what the README documents.

use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tests::Stack;
use uuid::Uuid;

fn an_order(customer: &str) -> Value {
    let mut order = tests::orders::valid(3, "standard");
    order["customer_id"] = json!(customer);
    order
}

/// Writes `body` to a file in the stack's run directory.
fn file_with(stack: &Stack, body: &Value) -> String {
    let path = stack.run_dir.join(format!("call-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&path, body.to_string()).unwrap();
    path.display().to_string()
}

/// Runs `orderflow call ...` as `url`'s user; (exit code, stdout, stderr).
fn call_as(stack: &Stack, url: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = stack.command("orderflow");
    command.arg("call").args(args);
    if let Some(url) = url {
        command.env("AMQP_URL", url);
    }
    let output = command.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn sync_call(stack: &Stack, url: Option<&str>, service: &str, body: &Value, request_id: &str) -> Value {
    let file = file_with(stack, body);
    let (code, out, err) = call_as(
        stack,
        url,
        &[service, "--element-file", &file, "--sync", "--timeout", "20", "--request-id", request_id],
    );
    assert_eq!(code, 0, "call {service}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("call {service} printed {out}: {e}"))
}

async fn count(stack: &Stack, owner: &str, table: &str, sql: &str) -> i64 {
    let pool = stack.store(owner, table).await;
    let n = tests::count(&pool, sql).await;
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_sync_polled_and_callback_calls_once() {
    let stack = Stack::start_with_node_users("services").await;
    let publisher = stack.role_url("publisher");

    // Intake is the public door: the publisher calls it with a plain order.
    let accepted = sync_call(&stack, Some(&publisher), "intake", &an_order("cust-svc"), "intake-1");
    assert_eq!(accepted["status"], "done", "{accepted}");
    assert_eq!(accepted["element"]["state"], "accepted", "{accepted}");
    assert_eq!(accepted["steps"][0]["state"], "accepted");
    let order_id: Uuid = serde_json::from_value(accepted["element"]["order_id"].clone()).unwrap();
    let card = an_order("x")["payment"]["card_number"].clone();
    assert_ne!(
        accepted["element"]["order"]["payment"]["card_number"], card,
        "results carry no full card number"
    );
    // The caller has the card: it calls payment with it.
    let mut element = accepted["element"].clone();
    element["order"]["payment"]["card_number"] = card;

    // The later services take calls from the operator (and the coordinator), not the publisher.
    let file = file_with(&stack, &element);
    let (code, out, err) = call_as(&stack, Some(&publisher), &["payment", "--element-file", &file, "--sync"]);
    assert_eq!(code, 1, "the broker refuses the publisher's call to payment: {out}{err}");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");

    let charged = sync_call(&stack, None, "payment", &element, "pay-1");
    assert_eq!(charged["element"]["state"], "charged", "{charged}");
    // A repeat of the request gets the first result; a new request id for
    // the same element charges nothing more.
    let again = sync_call(&stack, None, "payment", &element, "pay-1");
    assert_eq!(again, charged, "the first result, again");
    let other = sync_call(&stack, None, "payment", &element, "pay-2");
    assert_eq!(other["element"]["charge"], charged["element"]["charge"], "the same charge");
    let charges = format!("SELECT COUNT(*) FROM processor_charges WHERE order_id = '{order_id}'");
    assert_eq!(count(&stack, "processor", "processor_charges", &charges).await, 1, "charged once");

    // Polled: the request id and a poll token at once, the result from the tracker (to that token).
    let file = file_with(&stack, &charged["element"]);
    let (code, out, err) = call_as(&stack, None, &["inventory", "--element-file", &file, "--poll"]);
    assert_eq!(code, 0, "{err}");
    let (request_id, token) = out.trim().split_once(' ').expect("the request id and the poll token");
    let (code, out, err) = call_as(&stack, None, &["status", request_id, token, "--wait", "20"]);
    assert_eq!(code, 0, "call status: {out}{err}");
    let reserved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reserved["element"]["state"], "reserved", "{reserved}");
    let calls = stack.url(&format!("/calls/{request_id}"));
    let response = reqwest::Client::new().get(&calls).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kept: Value = response.json().await.unwrap();
    assert!(kept["collected_at_ms"].is_i64(), "collected once read: {kept}");
    assert_eq!(kept["caller"], "guest");
    let (status, body) = stack.get(&format!("/calls/{request_id}")).await;
    assert_eq!(status, 401, "not without the token: {body}");
    let (code, _, err) = call_as(&stack, None, &["status", "never-sent-request", token]);
    assert_eq!(code, 3, "nothing kept for an unknown request: {err}");

    // Callback: the result comes to the caller's own queue exactly once, even when the call is repeated.
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("callbacks-{}", Uuid::new_v4().simple());
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            "orderflow.results".into(),
            "callback.my-results".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let file = file_with(&stack, &reserved["element"]);
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "t".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let args = ["picklist", "--element-file", &file, "--callback", "my-results", "--request-id", "pick-1"];
    let (code, out, err) = call_as(&stack, None, &args);
    assert_eq!((code, out.trim()), (0, "pick-1"), "{err}");
    let first = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a callback")
        .unwrap()
        .unwrap();
    let picked: Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(picked["element"]["state"], "picked", "{picked}");
    assert_eq!(first.properties.message_id().as_ref().map(|m| m.to_string()).as_deref(), Some("pick-1"));
    // The call again, once it was answered (a caller's retry): nothing more comes.
    let (code, out, err) = call_as(&stack, None, &args);
    assert_eq!((code, out.trim()), (0, "pick-1"), "{err}");
    let second = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await;
    assert!(second.is_err(), "a repeated call sends its callback once");
    let _ = connection.close(200, "done".into()).await;

    // The steps done through the services are in the order's history, marked so.
    stack.wait_state(&order_id, "picked", Duration::from_secs(20)).await;
    let view = stack.order(&order_id).await;
    let modes: Vec<(String, Option<String>)> =
        view.history.iter().map(|h| (h.state.clone(), h.mode.clone())).collect();
    let service = Some("service".to_string());
    assert_eq!(
        modes,
        [
            ("placed".to_string(), None),
            ("accepted".to_string(), service.clone()),
            ("charged".to_string(), service.clone()),
            ("reserved".to_string(), service.clone()),
            ("picked".to_string(), service.clone()),
        ],
        "one history entry per step, whatever the repeats"
    );
}

/// Publishes a raw call (as guest) and waits for its answer on direct reply-to.
async fn raw_call(
    stack: &Stack,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Option<Value> {
    publish_call(stack, routing_key, body, properties, true).await
}

/// Publishes a call with no reply address at all (as guest).
async fn call_into_the_void(stack: &Stack, routing_key: &str, body: &[u8], properties: BasicProperties) {
    publish_call(stack, routing_key, body, properties, false).await;
}

/// Publishes a call to `orderflow.services` (as guest); with `wait`, on
/// direct reply-to, and returns its answer (if one comes in 20 s).
async fn publish_call(
    stack: &Stack,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    wait: bool,
) -> Option<Value> {
    let connection = stack.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut properties = properties;
    let mut replies = None;
    if wait {
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let reply_to = "amq.rabbitmq.reply-to";
        replies = Some(
            channel.basic_consume(reply_to.into(), "".into(), options, FieldTable::default()).await.unwrap(),
        );
        properties = properties.with_reply_to(reply_to.into());
    }
    let options = BasicPublishOptions::default();
    channel
        .basic_publish("orderflow.services".into(), routing_key.into(), options, body, properties)
        .await
        .unwrap();
    let answer = match replies.as_mut() {
        Some(replies) => tokio::time::timeout(Duration::from_secs(20), replies.next()).await.ok().flatten(),
        None => None,
    };
    let _ = connection.close(200, "done".into()).await;
    answer.map(|delivery| serde_json::from_slice(&delivery.unwrap().data).unwrap())
}

fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties.with_headers(headers)
}

fn id(text: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(text.into()).with_content_type("application/json".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_reason_and_never_stop_a_service() {
    let stack = Stack::start("services-bad", &[]).await;
    let order = an_order("cust-bad").to_string();
    let failed = |answer: Option<Value>, says: &str| {
        let answer = answer.expect("an answer");
        assert_eq!(answer["status"], "failed", "{answer}");
        assert_eq!(answer["retryable"], false, "{answer}");
        let error = answer["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{error:?} should say {says:?}");
    };
    failed(raw_call(&stack, "service.intake", b"{not json", id("bad-1")).await, "");
    failed(raw_call(&stack, "service.payment", b"[1, 2]", id("bad-2")).await, "");
    // A placed order is not something payment takes.
    let placed = json!({"state": "placed", "order_id": Uuid::new_v4(), "order": an_order("c")}).to_string();
    failed(raw_call(&stack, "service.payment", placed.as_bytes(), id("bad-3")).await, "");
    failed(
        raw_call(&stack, "service.teleport", order.as_bytes(), id("bad-4")).await,
        "no service is named \"teleport\"",
    );
    let expired = with_header(id("bad-5"), "x-orderflow-deadline", AMQPValue::LongLongInt(1_000));
    failed(raw_call(&stack, "service.intake", order.as_bytes(), expired).await, "deadline passed");
    let nonsense = with_header(id("bad-6"), "x-orderflow-deadline", AMQPValue::LongString("NaN".into()));
    failed(raw_call(&stack, "service.intake", order.as_bytes(), nonsense).await, "Unix milliseconds");
    let huge = json!({"customer_id": "x".repeat(70 * 1024)}).to_string();
    failed(raw_call(&stack, "service.intake", huge.as_bytes(), id("bad-7")).await, "");
    let control = json!({"customer_id": "\u{7}\u{1b}[31m", "items": [{"sku": "SKU-0001", "qty": f64::MAX}]})
        .to_string();
    failed(raw_call(&stack, "service.intake", control.as_bytes(), id("bad-8")).await, "");

    // Nowhere to answer: dead-lettered with the reason.
    let sync_without_reply_to =
        with_header(id("bad-9"), "x-orderflow-reply", AMQPValue::LongString("sync".into()));
    call_into_the_void(&stack, "service.intake", order.as_bytes(), sync_without_reply_to).await;
    call_into_the_void(&stack, "service.payment", order.as_bytes(), BasicProperties::default()).await;
    call_into_the_void(&stack, "service.nothing", order.as_bytes(), id("bad-10")).await;
    let letters = stack.wait_dead_letters(3, Duration::from_secs(20)).await;
    let reasons: Vec<String> =
        letters.iter().map(|l| l["reason"].as_str().unwrap_or_default().to_string()).collect();
    assert!(reasons.iter().any(|r| r.contains("needs reply_to")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("request id as message_id")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no service is named \"nothing\"")), "{reasons:?}");

    // The services go on.
    let good = raw_call(&stack, "service.intake", order.as_bytes(), id("good-1")).await.expect("an answer");
    assert_eq!(good["element"]["state"], "accepted", "{good}");
}

/// A caller no one here wrote: Python's pika, following the README's
/// "Calling a service" section: a synchronous call on direct reply-to, and
/// a polled one read over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_client_calls_a_service_as_the_readme_says() {
    let probe = Command::new("python3").args(["-c", "import pika"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: Python's pika is not installed (scripts/test.sh installs it)");
        return;
    }
    let stack = Stack::start("services-pika", &[]).await;
    let script = r#"
import hashlib, json, secrets, sys, time, urllib.request, uuid, pika
url, tracker, order = sys.argv[1], sys.argv[2], sys.argv[3]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
answer = {}
def on_reply(ch, method, properties, body):
    answer["result"] = json.loads(body)
channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
request_id = str(uuid.uuid4())
channel.basic_publish("orderflow.services", "service.intake", order.encode(),
    pika.BasicProperties(content_type="application/json", message_id=request_id,
                         correlation_id=request_id, reply_to="amq.rabbitmq.reply-to"))
deadline = time.time() + 20
while "result" not in answer and time.time() < deadline:
    connection.process_data_events(time_limit=1)
print(json.dumps(answer["result"]))
# Polled: no reply_to; the tracker keeps the result for the holder of the token.
polled, token = str(uuid.uuid4()), secrets.token_hex(32)
key = hashlib.sha256(token.encode()).hexdigest()
channel.basic_publish("orderflow.services", "service.intake", order.encode(),
    pika.BasicProperties(content_type="application/json", message_id=polled,
                         headers={"x-orderflow-poll-key": key}))
connection.close()
for _ in range(100):
    try:
        request = urllib.request.Request(f"{tracker}/calls/{polled}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request) as response:
            print(json.dumps(json.load(response)["result"]))
            break
    except urllib.error.HTTPError as error:
        assert error.code == 404, error
        time.sleep(0.2)
"#;
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", stack.vhost.name);
    let tracker = format!("http://{}", stack.http_addr);
    let order = an_order("cust-pika").to_string();
    let output = Command::new("python3").args(["-c", script, &url, &tracker, &order]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pika: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 2, "{stdout}");
    for result in results {
        assert_eq!(result["status"], "done", "{result}");
        assert_eq!(result["element"]["state"], "accepted", "{result}");
        assert!(!result.to_string().contains("4111111111111111"), "the card is masked: {result}");
    }

    // The management API's "publish message" (what the UI does): a polled call, read over HTTP.
    let token = shared::poll::new_token();
    let properties = json!({"content_type": "application/json", "message_id": "from-the-ui",
                            "headers": {"x-orderflow-poll-key": shared::poll::key_of(&token)}});
    let answer =
        stack.publish_with_management_api("orderflow.services", "service.intake", properties, &order).await;
    assert_eq!(answer["routed"], true, "{answer}");
    let client = reqwest::Client::new();
    let kept = harness::until(Duration::from_secs(20), Duration::from_millis(200), || async {
        let response = client.get(stack.url("/calls/from-the-ui")).bearer_auth(&token).send().await?;
        Ok(match (response.status().as_u16(), response.text().await?) {
            (200, body) => harness::Check::Done(serde_json::from_str::<Value>(&body)?),
            (status, body) => harness::Check::Waiting(format!("{status} {body}")),
        })
    })
    .await
    .unwrap();
    assert_eq!(kept["result"]["element"]["state"], "accepted", "{kept}");
}

/// The README's command-line examples of calling a service, run as written
/// (with this build's binaries and this stack's broker and tracker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_call_examples_run_as_written() {
    let stack = Stack::start("services-readme", &[]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Services: calling a node from anywhere").expect("the section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let bin = tests::bin_dir().join("orderflow").display().to_string();
    let script = format!("set -euo pipefail\n{}", block.replace("target/release/orderflow", &bin));
    let work = stack.run_dir.join("readme");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(root.join("examples").canonicalize().unwrap(), work.join("examples")).unwrap();
    let output = Command::new("bash")
        .args(["-c", &script])
        .current_dir(&work)
        .env("AMQP_URL", &stack.vhost.amqp_url)
        .env("ORDERFLOW_HTTP_ADDR", &stack.http_addr)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{script}\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#""state": "accepted""#), "{stdout}");
    // Polled and sync: charged (each result says so of its element and its step).
    assert_eq!(stdout.matches(r#""state": "charged""#).count(), 4, "{stdout}");
    let charges: Vec<&str> = stdout.lines().filter(|l| l.contains("\"charge_id\"")).collect();
    assert_eq!(charges.len(), 2, "{stdout}");
    assert_eq!(charges[0], charges[1], "one charge, whatever the request id");
}

/// Publishes `body` as `url`'s user (its `user_id` set, confirmed);
/// `Err` with the broker's reason when it refuses.
async fn publish_as(url: &str, exchange: &str, routing_key: &str, body: &[u8]) -> Result<(), String> {
    let user = topology::management::amqp_url_parts(url).unwrap().0;
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    // As a careful forger would: every header a real message carries.
    let mut headers = FieldTable::default();
    headers.insert("schema_version".into(), AMQPValue::LongUInt(1));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(Uuid::new_v4().to_string().into())
        .with_user_id(user.into())
        .with_headers(headers);
    let outcome = async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        confirm.await.map(|_| ()).map_err(|e| e.to_string())
    }
    .await;
    let _ = connection.close(200, "done".into()).await;
    outcome
}

/// The stack's own users, used as an attacker would: a node forging a
/// service's answer to the coordinator or a result kept for polling, the
/// publisher writing results at all. Each is refused, by the broker or by
/// the receiver, with the reason; the directed orders go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_and_results_are_refused() {
    let stack = Stack::start_with_node_users("services-forged").await;
    let ids = stack.publish_directed(&[tests::orders::valid(2, "standard")]);
    stack.wait_state(&ids[0], "shipped", Duration::from_secs(60)).await;
    let view = stack.order(&ids[0]).await;
    let (payment, publisher) = (stack.role_url("payment"), stack.role_url("publisher"));

    // Payment answers the coordinator as if it were shipping: refused by the coordinator.
    let mut element: Value = serde_json::from_str(include_str!("../../examples/accepted.json")).unwrap();
    element["order_id"] = json!(view.order_id);
    element["state"] = json!("shipped");
    let forged = json!({"request_id": "whatever", "service": "shipping", "status": "done", "steps": [],
                        "element": element});
    let body = forged.to_string();
    publish_as(&payment, "", "orderflow.coordinator.replies", body.as_bytes()).await.unwrap();
    // Payment keeps a result for polling in shipping's name: refused by the tracker.
    let result = json!({"request_id": "forged-poll", "service": "shipping", "status": "done", "steps": []});
    publish_as(&payment, "orderflow.results", "poll.payment", result.to_string().as_bytes()).await.unwrap();
    // ... or under shipping's routing key: refused by the broker.
    let refused = publish_as(&payment, "orderflow.results", "poll.shipping", b"{}").await.unwrap_err();
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    // The publisher may not write results at all.
    let refused = publish_as(&publisher, "orderflow.results", "callback.x", b"{}").await.unwrap_err();
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");

    let letters = stack.wait_dead_letters(2, Duration::from_secs(30)).await;
    let reasons: Vec<String> =
        letters.iter().map(|l| l["reason"].as_str().unwrap_or_default().to_string()).collect();
    let shipping = stack.role_user("shipping");
    assert!(
        reasons.iter().any(|r| r.contains("an answer of shipping must come from") && r.contains(&shipping)),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("a result of shipping must come from")), "{reasons:?}");
    let any_token = shared::poll::new_token();
    let forged_poll = reqwest::Client::new().get(stack.url("/calls/forged-poll")).bearer_auth(any_token);
    assert_eq!(forged_poll.send().await.unwrap().status(), 404, "the forged result was not kept");
    assert_eq!(stack.order(&ids[0]).await.history, view.history, "the order's history is untouched");

    // And directed orders go on.
    let more = stack.publish_directed(&[tests::orders::valid(1, "express")]);
    stack.wait_terminal(&more, Duration::from_secs(60)).await;
    assert_eq!(stack.order(&more[0]).await.state, "shipped");
}
