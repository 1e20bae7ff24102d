//! `trust`: the attacks an outside probe made with the least-privilege users
//! `up.sh` creates, made again with those users' real credentials on the
//! real broker (issue 14). Each forgery is refused (dead-lettered with the
//! reason, or rejected and recorded) and the orders around it go on.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use shared::change::{Change, ChangeRequest};
use shared::order::{Charge, Failure, Order, OrderElement, OrderState, Reservation};
use std::time::Duration;
use tests::{count, orders, states, Stack};
use transport::message::change_request_message;
use uuid::Uuid;

/// Publishes one confirmed message as whoever `connection` logged in as,
/// signed with `user_id` when given (the broker refuses any other than the
/// connection's own).
async fn send(
    connection: &Connection,
    exchange: &str,
    key: &str,
    body: &Value,
    user_id: Option<&str>,
    headers: &[(&str, &str)],
) {
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(Uuid::new_v4().to_string().into())
        .with_headers(table);
    if let Some(user) = user_id {
        properties = properties.with_user_id(user.into());
    }
    if let Some(order_id) = body["order_id"].as_str() {
        properties = properties.with_correlation_id(order_id.into());
    }
    let body = serde_json::to_vec(body).unwrap();
    let confirm = channel
        .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker took the forged message (the attack reaches the node)");
}

async fn connect_as(stack: &Stack, role: &str) -> Connection {
    Connection::connect(&stack.role_url(role), ConnectionProperties::default())
        .await
        .expect("the role's user")
}

/// An element as a node would forward it, claiming whatever the attacker likes.
fn element(state: OrderState) -> OrderElement {
    let order: Order = serde_json::from_value(orders::valid(1, "standard")).unwrap();
    let mut element = OrderElement::placed(order);
    element.state = state;
    element.seq = 4;
    element.order.payment.card_number = "************1111".into();
    element.charge =
        Some(Charge { charge_id: Uuid::new_v4(), amount_cents: 99_999_999, card_last4: "1111".into() });
    element.reservation = Some(Reservation { reservation_id: Uuid::new_v4() });
    element
}

fn as_json(element: &OrderElement) -> Value {
    serde_json::to_value(element).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_by_the_stacks_own_users_are_refused_and_the_orders_go_on() {
    let mut stack = Stack::start_with_node_users("trust").await;
    let before = stack.publish(&[orders::valid(1, "standard"), orders::valid(2, "express")]);
    stack.wait_terminal(&before, Duration::from_secs(60)).await;

    // Refund without a charge: inventory may forward stock_short to
    // exceptions; the element claims a charge of 99,999,999 cents.
    let inventory = connect_as(&stack, "inventory").await;
    let mut short = element(OrderState::StockShort);
    short.failure = Some(Failure { ends_as: OrderState::OutOfStock, reason: "forged".into() });
    let inventory_user = stack.role_user("inventory");
    send(&inventory, "orderflow.workflow", "order.exceptions", &as_json(&short), Some(&inventory_user), &[])
        .await;
    let refused = stack.letters_with("no charge is recorded", 1).await;
    assert_eq!(refused.len(), 1, "the forged refund was not refused");
    assert_eq!(refused[0]["node"], "exceptions");
    let processor = stack.sqlite("processor", "processor_settlements").await;
    assert_eq!(count(&processor, "SELECT COUNT(*) FROM processor_refunds").await, 0, "a refund was paid");
    assert_eq!(count(&processor, "SELECT COUNT(*) FROM processor_settlements").await, 0, "a void was made");

    // Skipping payment, as the administrator (no user_id, or its own):
    // charged to inventory, reserved to picklist, picked to shipping.
    let admin = stack.connect().await;
    let skips = [
        (OrderState::Charged, "order.inventory", None),
        (OrderState::Reserved, "order.picklist", Some("guest")),
        (OrderState::Picked, "order.shipping", None),
    ];
    let mut skipped_ids = Vec::new();
    for (state, key, user) in skips {
        let forged = element(state);
        skipped_ids.push(forged.order_id);
        send(&admin, "orderflow.workflow", key, &as_json(&forged), user, &[]).await;
    }
    let refused = stack.letters_with("takes an element in state", 3).await;
    assert_eq!(refused.len(), 3, "{refused:?}");
    let reservations = stack.sqlite("inventory", "inventory_reservations").await;
    let shipments = stack.sqlite("shipping", "shipping_shipments").await;
    for id in &skipped_ids {
        let reserved = format!("SELECT COUNT(*) FROM inventory_reservations WHERE order_id = '{id}'");
        assert_eq!(count(&reservations, &reserved).await, 0, "{id} reserved without a charge");
        let shipped = format!("SELECT COUNT(*) FROM shipping_shipments WHERE order_id = '{id}'");
        assert_eq!(count(&shipments, &shipped).await, 0, "{id} shipped without a charge");
    }

    // Forged history: the publisher's allowed routing key, a body that says
    // shipping cancelled an order that shipped.
    let publisher = connect_as(&stack, "publisher").await;
    let publisher_user = stack.role_user("publisher");
    let shipped = before[1];
    let forged_event = json!({
        "schema_version": 1, "event_id": Uuid::new_v4(), "order_id": shipped, "node": "shipping",
        "instance_id": "shipping-1", "from_state": "shipped", "to_state": "cancelled", "terminal": true,
        "at": "2026-11-29T00:00:00.000000Z", "detail": "forged", "seq": 99, "version": 0
    });
    send(&publisher, "orderflow.audit", "audit.publisher.placed", &forged_event, Some(&publisher_user), &[])
        .await;
    let refused = stack.letters_with("shipping never records \"cancelled\"", 1).await;
    assert_eq!(refused.len(), 1);
    // And a state shipping does record, for another order: not from the publisher.
    let mut shipped_claim = forged_event.clone();
    shipped_claim["to_state"] = json!("shipped");
    shipped_claim["order_id"] = json!(before[0]);
    send(&publisher, "orderflow.audit", "audit.publisher.placed", &shipped_claim, Some(&publisher_user), &[])
        .await;
    let refused = stack.letters_with("an event of shipping must come from", 1).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["node"], "tracker");
    let first = stack.order(&before[0]).await;
    assert_eq!(first.history.iter().filter(|h| h.state == "shipped").count(), 1, "{:?}", states(&first));
    let view = stack.order(&shipped).await;
    assert_eq!((view.state.as_str(), view.terminal), ("shipped", true));
    assert!(!states(&view).contains(&"cancelled".to_string()), "{:?}", states(&view));

    // Replay steered by a header: exceptions may publish to the dead-letter
    // exchange; its letters claim to come from shipping, or to belong in
    // shipping's queue.
    let exceptions = connect_as(&stack, "exceptions").await;
    let exceptions_user = stack.role_user("exceptions");
    let steer = element(OrderState::Rebinned);
    let claims: [&[(&str, &str)]; 2] = [
        &[
            ("x-orderflow-node", "shipping"),
            ("x-orderflow-queue", "orderflow.shipping"),
            ("x-orderflow-routing-key", "order.shipping"),
            ("x-orderflow-reason", "steered"),
        ],
        &[
            ("x-orderflow-node", "exceptions"),
            ("x-orderflow-queue", "orderflow.shipping"),
            ("x-orderflow-routing-key", "order.shipping"),
            ("x-orderflow-reason", "steered"),
        ],
    ];
    for headers in claims {
        send(
            &exceptions,
            "orderflow.dead-letter",
            "exceptions.order.shipping",
            &as_json(&steer),
            Some(&exceptions_user),
            headers,
        )
        .await;
    }
    stack.letters_with("steered", 2).await;
    let output = stack.cli(&["dlq", "replay", &steer.order_id.to_string()]);
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("says node shipping dead-lettered it, but it was published by"), "{said}");
    assert!(said.contains("exceptions does not consume \"orderflow.shipping\""), "{said}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steered = format!("SELECT COUNT(*) FROM shipping_shipments WHERE order_id = '{}'", steer.order_id);
    assert_eq!(count(&shipments, &steered).await, 0, "the replay shipped it");

    // Who may change an order: hold orders at shipping, then change them.
    stack.stop("shipping-1").await;
    let held = stack.publish(&[orders::valid(1, "standard"), orders::valid(1, "standard")]);
    let own = OrderElement::placed(serde_json::from_value(orders::valid(1, "standard")).unwrap());
    send(&publisher, "orderflow.workflow", "order.intake", &as_json(&own), Some(&publisher_user), &[]).await;
    for id in held.iter().chain([&own.order_id]) {
        stack.wait_state(id, "picked", Duration::from_secs(30)).await;
    }
    let request = |id: Uuid| change_request_message(&ChangeRequest::new(id, Change::Cancel, None));
    // The publisher role did not place `held[0]` (the operator's CLI did): refused.
    let as_publisher = transport::Publisher::open(&publisher, &publisher_user).await.unwrap();
    as_publisher.publish_all(&[request(held[0])]).await.unwrap();
    // Customer support may cancel any order; the publisher may cancel its own.
    let support = connect_as(&stack, "support").await;
    let as_support = transport::Publisher::open(&support, &stack.role_user("support")).await.unwrap();
    as_support.publish_all(&[request(held[1])]).await.unwrap();
    as_publisher.publish_all(&[request(own.order_id)]).await.unwrap();
    // A request without user_id names no requester.
    send(
        &admin,
        "orderflow.changes",
        "",
        &serde_json::to_value(ChangeRequest::new(held[0], Change::Cancel, None)).unwrap(),
        None,
        &[],
    )
    .await;
    let mut all = held.clone();
    all.push(own.order_id);
    // Shipping, holding the orders, hears the requests before it takes them.
    stack.spawn("shipping", "shipping-1");
    stack.wait_terminal(&all, Duration::from_secs(60)).await;
    stack.wait_change_outcomes(&held[0], 2, Duration::from_secs(30)).await;
    let first = stack.order(&held[0]).await;
    assert_eq!(first.state, "shipped", "{:?}", states(&first));
    let reasons: Vec<&str> =
        first.history.iter().filter(|h| h.state == "change_rejected").map(|h| h.detail.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains(&format!("{publisher_user} may not change"))), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("names no requester")), "{reasons:?}");
    assert_eq!(stack.order(&held[1]).await.state, "cancelled");
    assert_eq!(stack.order(&own.order_id).await.state, "cancelled");

    // Nothing else was disturbed: a fresh order still ships.
    let after = stack.publish(&[orders::valid(3, "overnight")]);
    stack.wait_terminal(&after, Duration::from_secs(60)).await;
    assert_eq!(stack.order(&after[0]).await.state, "shipped");
}

/// Every place a dead letter, a log line or a store could keep text, as text.
pub(crate) async fn everything_kept(stack: &Stack, ids: &[Uuid]) -> String {
    let mut kept = String::new();
    for entry in std::fs::read_dir(&stack.run_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // Logs and stores; not the orders file the test itself wrote, nor the
        // card processor's (it stands for the processor's own systems).
        if (name.ends_with(".log") || name.contains(".db")) && !name.starts_with("processor.db") {
            kept.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    let url = format!(
        "http://127.0.0.1:15672/api/queues/{}/{}/get",
        topology::management::encode(&stack.vhost.name),
        topology::DEAD_LETTER_QUEUE
    );
    let body = json!({"count": 1000, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let response =
        reqwest::Client::new().post(url).basic_auth("guest", Some("guest")).json(&body).send().await;
    kept.push_str(&response.unwrap().text().await.unwrap());
    kept.push_str(&stack.cli_json(&["dlq", "list", "--json"]).to_string());
    for id in ids {
        if let Ok(view) = stack.tracker().order(id).await {
            kept.push_str(&serde_json::to_string(&view).unwrap());
        }
    }
    kept
}

/// Careless and hostile input never puts a full card number in a log line,
/// a dead letter (headers or body), a store or the tracker: a card sent as a
/// JSON number, in the wrong field, in an address line, or an order
/// dead-lettered by payment after its retries. The processor's vault is the
/// one place that keeps the number: from intake on the element carries the
/// vault's token, so the order payment dead-lettered is charged when replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_full_card_number_is_kept_anywhere() {
    const CARD: &str = "4242424242424242";
    let stack = Stack::start("cards", &[("ORDERFLOW_MAX_ATTEMPTS", "2"), ("RUST_LOG", "debug")]).await;
    let admin = stack.connect().await;
    let mut order = orders::valid(1, "standard");
    order["payment"]["card_number"] = json!(CARD);
    let placed =
        |order: &Value| as_json(&OrderElement::placed(serde_json::from_value(order.clone()).unwrap()));

    let mut as_number = placed(&order);
    as_number["order"]["payment"]["card_number"] = json!(4242424242424242u64);
    let mut wrong_field = placed(&order);
    wrong_field["order"]["payment"] = json!({"number": CARD, "expiry": "12/30"});
    for body in [&as_number, &wrong_field] {
        send(&admin, "orderflow.workflow", "order.intake", body, None, &[]).await;
    }
    let mut in_address = order.clone();
    in_address["ship_to"]["line1"] = json!("4242 4242 4242 4242 Main St");
    let shipped = stack.publish(&[in_address]);
    stack.wait_terminal(&shipped, Duration::from_secs(30)).await;

    // The card in a field intake does not know is dropped with that field:
    // the order is rejected for its missing card number.
    let dropped: Uuid = serde_json::from_value(wrong_field["order_id"].clone()).unwrap();
    stack.wait_state(&dropped, "rejected", Duration::from_secs(30)).await;

    // Payment's ledger is gone: the order is dead-lettered after two tries.
    let ledger = stack.sqlite("processor", "processor_charges").await;
    sqlx::query("ALTER TABLE processor_charges RENAME TO processor_charges_away")
        .execute(&ledger)
        .await
        .unwrap();
    let stuck = stack.publish(&[order.clone()]);
    let letters = stack.wait_dead_letters(2, Duration::from_secs(60)).await;
    sqlx::query("ALTER TABLE processor_charges_away RENAME TO processor_charges")
        .execute(&ledger)
        .await
        .unwrap();
    assert!(letters.iter().any(|l| l["node"] == "payment"), "{letters:?}");
    for letter in &letters {
        // Intake's letter had a number to mask; payment's element has the token.
        assert_eq!(letter["card_masked"], letter["node"] != "payment", "{letter:?}");
    }
    let output = stack.cli(&["dlq", "replay", &stuck[0].to_string()]);
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{said}");
    stack.wait_state(&stuck[0], "shipped", Duration::from_secs(30)).await;

    let view = stack.order(&shipped[0]).await;
    assert_eq!(view.state, "shipped");
    let kept = everything_kept(&stack, &[shipped[0], stuck[0], dropped]).await;
    assert!(kept.contains("****4242"), "the masked forms are kept (the search itself works)");
    for form in [CARD, "4242 4242 4242 4242"] {
        assert!(!kept.contains(form), "a full card number ({form}) was kept");
    }
    let vault = stack.sqlite("processor", "processor_cards").await;
    let kept_there = format!("SELECT COUNT(*) FROM processor_cards WHERE number = '{CARD}'");
    assert!(count(&vault, &kept_there).await >= 2, "the processor's vault keeps the number");
}

/// A processor's token is bound to the order it was issued for. Placed in
/// another order from outside (the management API's publish, as a careless
/// or hostile client would), a leaked token is rejected at intake with the
/// reason, and so is a token the processor never issued; the orders it
/// belongs to are charged once each. A directed order's card goes to the
/// vault before the coordinator keeps the order: its store never holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_token_pays_for_its_own_order_only() {
    const CARD: &str = "5555555555554444";
    let stack = Stack::start("vault", &[]).await;
    let mut order = orders::valid(1, "standard");
    order["payment"]["card_number"] = json!(CARD);
    let own = stack.publish(&[order.clone()])[0];
    let directed = stack.publish_directed(&[order.clone()])[0];
    stack.wait_terminal(&[own, directed], Duration::from_secs(60)).await;
    for id in [own, directed] {
        assert_eq!(stack.order(&id).await.state, "shipped", "{:?}", states(&stack.order(&id).await));
    }
    let vault = stack.sqlite("processor", "processor_cards").await;
    let token: String = sqlx::query_scalar("SELECT token FROM processor_cards WHERE order_id = $1")
        .bind(own.to_string())
        .fetch_one(&vault)
        .await
        .unwrap();
    let guessed = format!("{}{}", shared::order::PROCESSOR_TOKEN_PREFIX, Uuid::new_v4().simple());
    let mut strangers = Vec::new();
    for (card, reason) in [(token, "issued for another order"), (guessed, "not one the processor issued")] {
        let (mut stranger, id) = (order.clone(), Uuid::new_v4());
        stranger["order_id"] = json!(id);
        stranger["payment"]["card_number"] = json!(card);
        let properties = json!({"delivery_mode": 2, "content_type": "application/json"});
        let routed = stack
            .publish_with_management_api(
                topology::WORKFLOW_EXCHANGE,
                "order.intake",
                properties,
                &stranger.to_string(),
            )
            .await;
        assert_eq!(routed["routed"], true, "{routed}");
        strangers.push((id, reason));
    }
    let ids: Vec<Uuid> = strangers.iter().map(|(id, _)| *id).collect();
    stack.wait_terminal(&ids, Duration::from_secs(30)).await;
    for (id, reason) in strangers {
        let view = stack.order(&id).await;
        assert_eq!(view.state, "rejected", "{:?}", states(&view));
        assert!(view.history.iter().any(|h| h.detail.contains(reason)), "{reason}: {:?}", view.history);
    }
    let ledger = stack.sqlite("processor", "processor_charges").await;
    assert_eq!(
        count(&ledger, "SELECT COUNT(*) FROM processor_charges").await,
        2,
        "the two owners' charges only"
    );
    let kept = everything_kept(&stack, &[own, directed]).await;
    assert!(!kept.contains(CARD), "the card number was kept outside the vault");
    assert!(kept.contains("****4444"), "the masked forms are kept (the search itself works)");
}

/// Users per stack: setting up the same stack from another run directory
/// refuses to change the passwords the running processes use; a process
/// whose password is refused says so and, for the tracker, reports
/// unhealthy; the stack goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stacks_users_are_its_own() {
    let stack = Stack::start_with_node_users("own-users").await;
    let prefix = stack.user_prefix.clone().unwrap();
    let elsewhere = stack.run_dir.join("other-run-dir-secrets");
    let output = stack
        .command("topology")
        .args(["apply", "--create-users", "--user-prefix", &prefix, "--secrets-dir"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("already exists and its password is not in"), "{said}");

    // A tracker started with a wrong password says whose credentials were refused.
    let port = harness::stack::free_port().unwrap();
    let log = stack.run_dir.join("refused-tracker.log");
    let mut refused = stack
        .command("tracker")
        .env("AMQP_USER", stack.role_user("tracker"))
        .env("AMQP_PASSWORD", "not-the-password")
        .env("ORDERFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    let mut status = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(answer) = reqwest::get(&health).await {
            status = Some(answer.status().as_u16());
            if std::fs::read_to_string(&log).unwrap().contains("refused the credentials") {
                break;
            }
        }
    }
    let _ = refused.kill();
    let _ = refused.wait();
    assert_eq!(status, Some(503), "a tracker that cannot log in is not healthy");
    let logged = std::fs::read_to_string(&log).unwrap();
    let expected = format!("the broker refused the credentials of {}", stack.role_user("tracker"));
    assert!(logged.contains(&expected), "{logged}");

    let ids = stack.publish(&[orders::valid(2, "express")]);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_eq!(stack.order(&ids[0]).await.state, "shipped");
}
