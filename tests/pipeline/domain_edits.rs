//! `domain_edits`: a customer's address edited while orders that copied it
//! travel reaches those orders as a change request from the customer
//! domain (issue 28, part 1). With every node slowed, 100 orders by
//! reference for 10 customers; a new default address for 5 of them while
//! the orders travel, the customer primary (which forwards the edits)
//! killed -9 between the edits: every order of those 5 that took the
//! default and had not shipped ships to the new address with exactly one
//! applied change requested by the customer domain; the others ship to
//! where they were going, without a change applied; orders that named
//! another address, and the other 5 customers' orders, get nothing.
//! A new card on file (`customer set-card`) reaches the orders waiting for
//! payment on the old one, autonomous and directed, as a card change with
//! the processor's token for each order.
//! From outside: a node's user forging what an order copied is refused by
//! the broker (pika), the operator's unsigned copy through the management
//! API is dead-lettered with the reason, the customer domain's user may not
//! cancel an order, only it may have a card on file kept for an order, and
//! careless edits are refused by the domain.

use serde_json::{json, Value};
use shared::change::{Change, ChangeRequest};
use shared::tracker_api::OrderView;
use std::process::Command;
use std::time::Duration;
use tests::Stack;
use topology::DomainCopy;
use transport::domain_client::{ClientError, DomainClient};
use transport::message::change_request_message;
use transport::Publisher;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(20);
const NEW_LINE1: &str = "9 Moved Rd";

fn customer_id(n: usize) -> String {
    format!("E-{n:05}")
}

/// 10 customers with a default address and a second one (`HOME2`), and
/// the item the orders buy.
async fn seed(client: &DomainClient) {
    let primary = DomainCopy::primary("customer");
    for n in 0..10 {
        let add = json!({
            "op": "add", "customer_id": customer_id(n), "name": format!("Edit Customer {n}"),
            "email": format!("e{n}@example.com"),
            "addresses": [
                {"line1": "1 Main St", "city": "Leeds", "postal_code": "LS1", "country": "GB", "default": true},
                {"address_id": "HOME2", "line1": "2 Side St", "city": "York", "postal_code": "YO1", "country": "GB"}
            ],
            "card": {"number": "4111111111111111", "expiry": "12/30"}
        });
        client.call(primary, &add, Some(&format!("add-{n}")), TIMEOUT).await.unwrap();
    }
    let item = json!({"sku": "SKU-0001", "title": "Thing", "price_cents": 1234, "weight_grams": 300, "status": "active"});
    let put = json!({"op": "put", "record": item});
    client.call(DomainCopy::primary("catalog"), &put, Some("sku-1"), TIMEOUT).await.unwrap();
}

/// Whether order `i` names `HOME2`: every fifth order of a customer.
fn names_home2(i: usize) -> bool {
    (i / 10).is_multiple_of(5)
}

/// Order `i`: customer `i % 10`; every fifth order of a customer names `HOME2`.
fn order(i: usize) -> Value {
    let mut order = json!({"customer_id": customer_id(i % 10), "items": [{"sku": "SKU-0001", "qty": 1}],
                           "shipping_method": "standard"});
    if names_home2(i) {
        order["address_id"] = json!("HOME2");
    }
    order
}

/// `orderflow customer set-address C --line1 NEW ... --default`, retried
/// while the primary is away (exit code 3).
async fn new_default(stack: &Stack, customer: &str) {
    for _ in 0..30 {
        let args = ["customer", "set-address", customer, "--line1", NEW_LINE1, "--city", "Hull"];
        let more = ["--postal-code", "HU1", "--country", "GB", "--default"];
        let output = stack.cli(&[&args[..], &more[..]].concat());
        if output.status.success() {
            return;
        }
        assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the customer primary did not take the edit of {customer}");
}

/// The change ids the customer domain requested for an order, and those applied.
fn domain_changes(view: &OrderView) -> (Vec<String>, Vec<String>) {
    let requested: Vec<String> = view
        .history
        .iter()
        .filter(|h| h.state == "change_requested" && h.node == "customer")
        .filter_map(|h| h.change_id.clone())
        .collect();
    let applied = view
        .history
        .iter()
        .filter(|h| {
            h.state == "change_applied" && h.change_id.as_ref().is_some_and(|id| requested.contains(id))
        })
        .filter_map(|h| h.change_id.clone())
        .collect();
    (requested, applied)
}

fn shipped_detail(view: &OrderView) -> String {
    let entry = view.history.iter().find(|h| h.state == "shipped");
    entry.unwrap_or_else(|| panic!("not shipped: {:?}", tests::states(view))).detail.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_edits_reach_the_orders_in_flight_that_copied_them() {
    // Intake runs at full speed, so that every order copies its address before the edits.
    let env = [("ORDERFLOW_DELAY_MS", "40"), ("ORDERFLOW_DELAY_MS_INTAKE", "0")];
    let mut stack = Stack::start_with_node_users_env("domain-edits", &env).await;
    stack.start_domains().await.unwrap();
    let connection = transport::connect(&stack.role_url("backoffice"), "test-edits").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    seed(&client).await;

    let orders: Vec<Value> = (0..100).map(order).collect();
    let ids = stack.publish(&orders);
    // Five new defaults once every order copied its address, while they
    // travel; the primary killed -9 after the second.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stack.statuses(&ids).await.values().filter(|s| s.state != "placed").count() < ids.len() {
        assert!(std::time::Instant::now() < deadline, "intake did not take the orders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..5 {
        new_default(&stack, &customer_id(n)).await;
        if n == 1 {
            stack.kill("customer-1");
            stack.spawn("customer", "customer-1");
        }
    }
    stack.wait_terminal(&ids, Duration::from_secs(180)).await;

    let (mut moved, mut stayed) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        let view = stack.order(id).await;
        assert_eq!(view.state, "shipped", "order {i}: {:?}", tests::states(&view));
        let (requested, applied) = domain_changes(&view);
        let edited = i % 10 < 5;
        let took_default = !names_home2(i);
        if !(edited && took_default) {
            assert!(
                requested.is_empty(),
                "order {i} copied nothing that changed: {:?}",
                tests::states(&view)
            );
            assert!(!shipped_detail(&view).contains(NEW_LINE1), "order {i}");
            continue;
        }
        assert!(requested.len() <= 1, "order {i}: one request per edit, {requested:?}");
        if shipped_detail(&view).contains(NEW_LINE1) {
            assert_eq!(applied.len(), 1, "order {i}: exactly one applied change: {:?}", tests::states(&view));
            let requester = view.history.iter().find(|h| h.state == "change_requested").unwrap();
            assert!(requester.detail.contains("customer domain"), "{}", requester.detail);
            moved += 1;
        } else {
            assert!(applied.is_empty(), "order {i} shipped to the old address: {:?}", tests::states(&view));
            if let Some(change_id) = requested.first() {
                let outcome = view.change_outcome(change_id).expect("a requested change is decided");
                assert!(outcome.detail.contains("already"), "order {i}: {}", outcome.detail);
            }
            stayed += 1;
        }
    }
    eprintln!("edits: {moved} orders moved to the new address, {stayed} had gone too far");
    assert!(moved >= 10, "most of the 40 orders were in flight when their address changed: {moved} moved");
    assert_eq!(moved + stayed, 40);
    connection.close(200, "done".into()).await.ok();
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}

/// Publishes an `accepted` event claiming what an order copied, with pika
/// as `url`'s user; what the broker said when it refused, else `None`.
fn pika_forged_copy(url: &str, user: &str, body: &str) -> Option<String> {
    tests::pika_publish(url, user, "orderflow.audit", "audit.intake.accepted", "audit", body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_intake_says_what_an_order_copied_and_the_domain_moves_only_addresses() {
    let env = [("ORDERFLOW_DELAY_MS_PICKLIST", "3000")];
    let mut stack = Stack::start_with_node_users_env("domain-edits-trust", &env).await;
    stack.start_domains().await.unwrap();
    let connection = transport::connect(&stack.role_url("backoffice"), "test-edits").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    seed(&client).await;

    // A stranger's order, forged as having copied customer 0's default address.
    let forged = json!({
        "schema_version": 1, "event_id": Uuid::new_v4(), "order_id": Uuid::new_v4(), "node": "intake",
        "instance_id": "intake-x", "from_state": "placed", "to_state": "accepted", "terminal": false,
        "at": chrono::Utc::now().to_rfc3339(), "detail": "", "seq": 1, "version": 0,
        "copied": {"customer_id": customer_id(0), "as_of": {"copy": "customer", "seq": 0}, "fingerprint": "0000"}
    })
    .to_string();
    let pika = Command::new("python3").args(["-c", "import pika"]).status().is_ok_and(|s| s.success());
    assert!(pika, "pika is installed (scripts/test.sh installs it)");
    let refused = pika_forged_copy(&stack.role_url("payment"), &stack.role_user("payment"), &forged);
    assert!(refused.as_deref().is_some_and(|said| said.contains("ACCESS_REFUSED")), "{refused:?}");
    // The operator through the management API: no intake user, dead-lettered by the customer primary.
    let properties = json!({"content_type": "application/json", "delivery_mode": 2, "type": "audit"});
    let answer = stack
        .publish_with_management_api("orderflow.audit", "audit.intake.accepted", properties, &forged)
        .await;
    assert_eq!(answer["routed"], true, "{answer}");
    let letters = stack.letters_with("what an order copied is said by intake", 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["queue"], topology::domains::CUSTOMER_EDITS_QUEUE, "{letters:?}");

    // Careless edits: refused by the domain with the reason.
    let primary = DomainCopy::primary("customer");
    for (line1, reason) in [("1 Bell\u{7} St", "control"), (&*"x".repeat(10_000), "longer than")] {
        let edit = json!({"op": "set_address", "customer_id": customer_id(1), "line1": line1, "city": "Leeds",
                          "postal_code": "LS1", "country": "GB", "default": true});
        match client.call(primary, &edit, None, TIMEOUT).await {
            Err(ClientError::Refused(said)) => assert!(said.contains(reason), "{said}"),
            other => panic!("a careless edit was not refused: {other:?}"),
        }
    }

    // The customer domain's user may move an address, never cancel: its cancel is rejected.
    let ids = stack.publish(&[order(1)]);
    stack.wait_state(&ids[0], "reserved", TIMEOUT).await;
    let domain = transport::connect(&stack.role_url("customer"), "test-edits-domain").await.unwrap();
    let as_domain = Publisher::open(&domain, &stack.role_user("customer")).await.unwrap();
    let cancel = ChangeRequest::new(ids[0], Change::Cancel, None);
    as_domain.publish_all(&[change_request_message(&cancel)]).await.unwrap();
    let view = stack.wait_change_outcomes(&ids[0], 1, TIMEOUT).await;
    let outcome = view.change_outcome(&cancel.change_id.to_string()).expect("decided");
    assert_eq!(outcome.state, "change_rejected", "{outcome:?}");
    assert!(outcome.detail.contains("may change only the address or the card"), "{}", outcome.detail);
    stack.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_eq!(stack.order(&ids[0]).await.state, "shipped");
    connection.close(200, "done".into()).await.ok();
    domain.close(200, "done".into()).await.ok();
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}

/// A customer with the card on file `expiry`.
fn customer_with_card(id: &str, expiry: &str) -> Value {
    json!({
        "op": "add", "customer_id": id, "name": format!("Card Customer {id}"), "email": format!("{id}@example.com"),
        "addresses": [{"line1": "1 Main St", "city": "Leeds", "postal_code": "LS1", "country": "GB", "default": true}],
        "card": {"number": "4111111111111111", "expiry": expiry}
    })
}

/// A new card on file reaches the orders waiting for payment on the old
/// one: two customers whose card on file expired, and one whose card pays.
/// `customer set-card` for the first: its orders (three autonomous, one
/// directed) were `awaiting_payment`; each gets one card change requested
/// by the customer domain (the processor's token for that order, never a
/// number), is charged on the new card and ships. The second customer's
/// order waits on; the third's orders, charged already, get no change when
/// its card changes. Payment's cards service keeps a card on file for an
/// order only when the customer domain asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_on_file_pays_for_the_orders_waiting_on_the_old_one() {
    let env = [("ORDERFLOW_PAYMENT_WAIT_S", "120")];
    let mut stack = Stack::start_with_node_users_env("domain-edits-card", &env).await;
    stack.start_domains().await.unwrap();
    let connection = transport::connect(&stack.role_url("backoffice"), "test-edits").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    seed(&client).await;
    let primary = DomainCopy::primary("customer");
    for (id, expiry) in [("K-1", "01/20"), ("K-2", "01/20"), ("K-3", "12/30")] {
        client.call(primary, &customer_with_card(id, expiry), Some(id), TIMEOUT).await.unwrap();
    }
    let by_ref = |customer: &str| json!({"customer_id": customer, "items": [{"sku": "SKU-0001", "qty": 1}], "shipping_method": "standard"});
    let mut renewed = stack.publish(&[by_ref("K-1"), by_ref("K-1"), by_ref("K-1")]);
    renewed.extend(stack.publish_directed(&[by_ref("K-1")]));
    let still_expired = stack.publish(&[by_ref("K-2")]);
    let paid = stack.publish(&[by_ref("K-3"), by_ref("K-3")]);
    for id in renewed.iter().chain(&still_expired) {
        stack.wait_state(id, "awaiting_payment", TIMEOUT).await;
    }
    stack.wait_terminal(&paid, Duration::from_secs(60)).await;

    let card = stack.run_dir.join("new-card.json");
    std::fs::write(&card, json!({"card_number": "5555555555554444", "expiry": "12/31"}).to_string()).unwrap();
    for customer in ["K-1", "K-3"] {
        let set = stack.cli(&["customer", "set-card", customer, "--card-file", card.to_str().unwrap()]);
        assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
        assert!(
            String::from_utf8_lossy(&set.stdout).contains("4444"),
            "{}",
            String::from_utf8_lossy(&set.stdout)
        );
    }
    stack.wait_terminal(&renewed, Duration::from_secs(60)).await;
    for id in &renewed {
        let view = stack.order(id).await;
        assert_eq!(view.state, "shipped", "{:?}", tests::states(&view));
        let (requested, applied) = domain_changes(&view);
        assert_eq!((requested.len(), applied.len()), (1, 1), "{:?}", tests::states(&view));
        let record = view.history.iter().find(|h| h.state == "change_requested").unwrap();
        assert!(
            record.detail.contains("card on file changed") && record.detail.contains("4444"),
            "{}",
            record.detail
        );
        let charged = view.entry("charged").expect("charged");
        assert!(charged.detail.contains("card ending 4444"), "{}", charged.detail);
        let text = serde_json::to_string(&view.history).unwrap();
        assert!(
            !text.contains("tok_") && !text.contains("5555555555554444"),
            "no card on file token, no number: {text}"
        );
    }
    for id in &paid {
        let view = stack.order(id).await;
        assert!(
            domain_changes(&view).0.is_empty(),
            "a charged order gets no card: {:?}",
            tests::states(&view)
        );
    }
    assert_eq!(stack.statuses(&still_expired).await[&still_expired[0].to_string()].state, "awaiting_payment");

    // Only the customer domain may have a card on file kept for an order.
    let on_file =
        json!({"masked": "************4444", "expiry": "12/31", "token": format!("tok_{}", "ab".repeat(16))});
    let ask = json!({"op": "tokenize_on_file", "order_id": still_expired[0], "card": on_file});
    for role in ["support", "publisher", "intake"] {
        let connection = transport::connect(&stack.role_url(role), "test-edits-cards").await.unwrap();
        let client = DomainClient::open(&connection, &stack.role_user(role)).await.unwrap();
        match client.call(DomainCopy::primary("cards"), &ask, None, TIMEOUT).await {
            Err(ClientError::Refused(said)) => {
                assert!(said.contains("only the customer domain"), "{role}: {said}")
            }
            other => panic!("{role} was not refused a card on file: {other:?}"),
        }
        connection.close(200, "done".into()).await.ok();
    }
    connection.close(200, "done".into()).await.ok();
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}
