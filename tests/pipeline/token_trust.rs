//! `token_trust`: a card on file's processor token pays only for its own
//! customer (issue 30, point 2), tried from outside with Python's pika and
//! the stack's real least-privilege users. Reads of the customer domain
//! (`get`, `list`, at the primary and at a replica) show every role but
//! intake the masked card and its expiry, never the token, and only the
//! domain's own copies take snapshots; an order as the publisher with another
//! customer's token (leaked from the domain's store) is rejected with the
//! reason, charged nothing and shipped nothing, while the owner's own token
//! still pays.

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tests::{count, Stack};
use topology::DomainCopy;
use transport::domain_client::DomainClient;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);
const OWNER: &str = "T-OWNER";
const MALLORY: &str = "T-MALLORY";

fn pika_installed() -> bool {
    let probe = Command::new("python3").args(["-c", "import pika"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: Python's pika is not installed (scripts/test.sh installs it)");
        return false;
    }
    true
}

/// Runs a pika script with `args`; its stdout as one JSON value per line.
fn pika(script: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "pika: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// A client of the domains as the operator (guest), who may write them.
async fn operator(stack: &Stack) -> (lapin::Connection, DomainClient) {
    let connection = stack.connect().await;
    let client = DomainClient::open(&connection, "guest").await.unwrap();
    (connection, client)
}

fn home() -> Value {
    json!({"line1": "1 Owner Row", "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB", "default": true})
}

fn stranger() -> Value {
    json!({"name": "A Stranger", "line1": "99 Drop Lane", "city": "Elsewhere", "postal_code": "EL5 3WH", "country": "GB"})
}

/// The domains running, the owner (with a card on file) and Mallory (none)
/// added at the primary, and the `uk` replica holding the owner.
async fn seeded(test: &str) -> (Stack, lapin::Connection, DomainClient) {
    let mut stack = Stack::start_with_node_users(test).await;
    stack.start_domains().await.unwrap();
    let (connection, client) = operator(&stack).await;
    let owner = json!({"op": "add", "customer_id": OWNER, "name": "Owen Owner", "email": "owen@example.com",
                       "addresses": [home()], "card": {"number": "4111111111111111", "expiry": "12/30"}});
    let mallory = json!({"op": "add", "customer_id": MALLORY, "name": "Mal", "email": "mal@example.com",
                         "addresses": [{"line1": "7 Mal St", "city": "York", "postal_code": "YO1", "country": "GB"}]});
    for (customer, id) in [(owner, "add-owner"), (mallory, "add-mallory")] {
        client.call(DomainCopy::primary("customer"), &customer, Some(id), TIMEOUT).await.unwrap();
    }
    let uk = DomainCopy::find("customer", Some("uk")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.call(uk, &json!({"op": "get", "customer_id": OWNER}), None, TIMEOUT).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the uk replica never got {OWNER}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (stack, connection, client)
}

/// The owner's card token, as an attacker who leaked the domain's store has it.
async fn leaked_token(stack: &Stack, owner: &str) -> String {
    let store = stack.store(owner, &format!("{owner}_records")).await;
    let body: String = sqlx::query_scalar(&format!("SELECT body FROM {owner}_records WHERE key = '{OWNER}'"))
        .fetch_one(&store)
        .await
        .unwrap();
    let record: Value = serde_json::from_str(&body).unwrap();
    record["card"]["token"].as_str().expect("the store keeps the token").to_string()
}

/// Asks the customer domain as each role: every (role, routing key, request)
/// on a channel of its own, answered on direct reply-to; a publish the
/// broker refuses is reported with its code.
const READS: &str = r#"
import json, sys, time, uuid, pika
requests = json.loads(sys.argv[1])
for role, url in json.loads(sys.argv[2]):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    for key, request in requests:
        line = {"role": role, "key": key, "op": request["op"]}
        answer = {}
        def on_reply(ch, method, properties, body):
            answer["result"] = json.loads(body)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
            request_id = str(uuid.uuid4())
            channel.basic_publish("orderflow.domains", key, json.dumps(request).encode(),
                pika.BasicProperties(content_type="application/json", message_id=request_id,
                                     correlation_id=request_id, reply_to="amq.rabbitmq.reply-to"))
            deadline = time.time() + 20
            while "result" not in answer and time.time() < deadline:
                connection.process_data_events(time_limit=1)
            line["answer"] = answer.get("result")
            channel.close()
        except pika.exceptions.ChannelClosedByBroker as error:
            line["refused"] = error.reply_code
        print(json.dumps(line), flush=True)
    connection.close()
"#;

/// Every read of the customer domain, as the publisher, support and a node
/// that is not intake (payment), at the primary and at the uk replica,
/// shows the masked card and its expiry and never a token; a snapshot (every
/// record, tokens included) is refused to them all. The replica's own store
/// still holds the token (the stream carries it, so a replica can answer
/// intake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_reads_show_every_role_but_intake_the_masked_card_and_no_token() {
    if !pika_installed() {
        return;
    }
    let (mut stack, _connection, _client) = seeded("token-reads").await;
    let get = json!({"op": "get", "customer_id": OWNER});
    let list = json!({"op": "list", "limit": 200});
    let requests = json!([
        ["domain.customer", get], ["domain.customer", list],
        ["domain.customer.uk", get], ["domain.customer.uk", list],
        ["domain.customer", {"op": "snapshot", "limit": 200}],
    ]);
    let roles: Vec<(&str, String)> =
        ["publisher", "support", "payment"].into_iter().map(|role| (role, stack.role_url(role))).collect();
    let lines = pika(READS, &[&requests.to_string(), &json!(roles).to_string()]);
    assert_eq!(lines.len(), 15, "{lines:#?}");
    let mut read_at = Vec::new();
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains("tok_"), "a card token was answered: {text}");
        if let Some(code) = line.get("refused") {
            // A role the broker does not let ask the domains reads nothing at all.
            assert_eq!(code, 403, "{text}");
            continue;
        }
        let answer = &line["answer"];
        if line["op"] == "snapshot" {
            assert_eq!(answer["status"], "failed", "{text}");
            assert!(
                answer["error"].as_str().unwrap().contains("only the customer domain's own copies"),
                "{text}"
            );
            continue;
        }
        assert_eq!(answer["status"], "done", "{text}");
        let owner = match line["op"].as_str().unwrap() {
            "get" => answer["data"].clone(),
            _ => answer["data"]["customers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["customer_id"] == OWNER)
                .cloned()
                .unwrap(),
        };
        assert_eq!(owner["card"], json!({"masked": "************1111", "expiry": "12/30"}), "{text}");
        read_at.push((line["op"].as_str().unwrap().to_string(), line["key"].as_str().unwrap().to_string()));
    }
    // Someone did read (support looks customers up): at both copies, both ways.
    for op in ["get", "list"] {
        for key in ["domain.customer", "domain.customer.uk"] {
            assert!(
                read_at.iter().any(|(o, k)| o == op && k == key),
                "no role read {op} at {key}: {lines:#?}"
            );
        }
    }
    // The replication stream is as it was: the replica keeps the token, to answer intake.
    assert!(leaked_token(&stack, "customer_uk").await.starts_with("tok_"));
    let ok = stack.stop_all().await;
    assert!(ok.iter().all(|(_, status)| status.success()), "{ok:?}");
}

/// Publishes orders to intake as a plain client would, confirmed.
const PUBLISH: &str = r#"
import json, sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.confirm_delivery()
for order in json.loads(sys.argv[2]):
    channel.basic_publish("orderflow.workflow", "order.intake", json.dumps(order).encode(),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))
    print(json.dumps({"published": order["order_id"]}), flush=True)
connection.close()
"#;

/// As the publisher (the public door), with the owner's token leaked from
/// the customer store: orders for Mallory, for a customer that does not
/// exist, for no customer, by reference for Mallory, and even for the
/// owner's own id but to a stranger's address, are each rejected with the
/// reason; the processor has no charge for any of them and nothing shipped.
/// The owner's own orders (its token to its address on file, and by
/// reference with the card on file) are charged and shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_token_pays_for_no_one_elses_order_and_the_owners_still_pays() {
    if !pika_installed() {
        return;
    }
    let (mut stack, _connection, client) = seeded("token-orders").await;
    let item = json!({"sku": "SKU-0042", "title": "Thing", "price_cents": 1500, "weight_grams": 300, "status": "active"});
    client
        .call(DomainCopy::primary("catalog"), &json!({"op": "put", "record": item}), Some("sku"), TIMEOUT)
        .await
        .unwrap();
    let token = leaked_token(&stack, "customer").await;
    let order = |customer: Option<&str>, card: &str, ship_to: Option<Value>| {
        let mut order = json!({"order_id": Uuid::new_v4(), "items": [{"sku": "SKU-0042", "qty": 1}],
                               "shipping_method": "standard"});
        if let Some(customer) = customer {
            order["customer_id"] = json!(customer);
        }
        if !card.is_empty() {
            order["payment"] = json!({"card_number": card, "expiry": "12/30"});
        }
        if let Some(ship_to) = ship_to {
            order["ship_to"] = ship_to;
        }
        order
    };
    let mut own_home = home();
    own_home.as_object_mut().unwrap().remove("default");
    own_home["name"] = json!("Owen Owner");
    let stolen = [
        (
            order(Some(MALLORY), &token, Some(stranger())),
            "the card token does not belong to customer T-MALLORY",
        ),
        (
            order(Some("T-NOBODY"), &token, Some(stranger())),
            "the card token does not belong to customer T-NOBODY",
        ),
        (order(None, &token, Some(stranger())), "customer_id is missing"),
        (order(Some(MALLORY), &token, None), "the card token does not belong to customer T-MALLORY"),
        (
            order(Some(OWNER), &token, Some(stranger())),
            "the ship-to address is not one of customer T-OWNER's",
        ),
    ];
    let owners = [order(Some(OWNER), &token, Some(own_home)), order(Some(OWNER), "", None)];
    let orders: Vec<Value> = stolen.iter().map(|(o, _)| o.clone()).chain(owners.iter().cloned()).collect();
    let published = pika(PUBLISH, &[&stack.role_url("publisher"), &json!(orders).to_string()]);
    assert_eq!(published.len(), orders.len(), "{published:?}");
    let ids: Vec<Uuid> =
        orders.iter().map(|o| serde_json::from_value(o["order_id"].clone()).unwrap()).collect();
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;

    let charges = stack.store("processor", "processor_charges").await;
    let shipments = stack.store("shipping", "shipping_shipments").await;
    let charged = |id: &Uuid| format!("SELECT COUNT(*) FROM processor_charges WHERE order_id = '{id}'");
    let shipped = |id: &Uuid| format!("SELECT COUNT(*) FROM shipping_shipments WHERE order_id = '{id}'");
    for (id, (_, reason)) in ids.iter().zip(&stolen) {
        let view = stack.order(id).await;
        let states = tests::states(&view);
        assert_eq!(view.state, "rejected", "{reason}: {states:?}");
        let detail = &view.entry("rejected").unwrap().detail;
        assert!(detail.contains(reason), "{detail} lacks {reason}");
        assert_eq!(count(&charges, &charged(id)).await, 0, "charged: {reason}");
        assert_eq!(count(&shipments, &shipped(id)).await, 0, "shipped: {reason}");
    }
    for id in &ids[stolen.len()..] {
        let view = stack.order(id).await;
        assert_eq!(view.state, "shipped", "{:?}", tests::states(&view));
        let detail = &view.entry("charged").unwrap().detail;
        assert!(detail.contains("card ending 1111"), "{detail}");
        assert_eq!(count(&charges, &charged(id)).await, 1);
        assert_eq!(count(&shipments, &shipped(id)).await, 1);
        assert!(view.entry("shipped").unwrap().detail.contains("1 Owner Row"), "{view:?}");
    }
    for id in &ids {
        let history = serde_json::to_string(&stack.order(id).await.history).unwrap();
        assert!(!history.contains(&token) && !history.contains("tok_"), "a token in the history: {history}");
    }
    let ok = stack.stop_all().await;
    assert!(ok.iter().all(|(_, status)| status.success()), "{ok:?}");
}
