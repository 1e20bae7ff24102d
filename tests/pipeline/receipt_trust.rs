//! `receipt_trust`: receipts bound to what was ordered (issue 30, point 3).
//! From outside (Python's pika, as the receiving station): a receipt from a
//! distributor that does not exist, one for a SKU its distributor does not
//! supply (nobody does), an unsolicited million units, a fake receipt for a
//! backorder waiting on D-04 without its purchase order, one naming a
//! purchase order that does not exist, one bringing more than its purchase
//! order asks and one without a shipment id are each dead-lettered with the
//! reason, and no unit moves. The real purchase order's shipment, scanned
//! twice under two message ids, is counted once and releases its backorder;
//! another shipment against the order received in full is refused.

use serde_json::{json, Value};
use std::time::Duration;
use tests::Stack;
use topology::DomainCopy;
use transport::domain_client::DomainClient;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The simulated distributors never ship within the test: the shipments are the test's.
const NEVER: (&str, &str) = ("ORDERFLOW_DISTRIBUTOR_DELAY_MS", "3600000");

/// Publishes each `(message_id, body)` to the received-items queue with
/// pika, as `role`'s user (vouched for by `user_id`), confirmed.
fn pika_receipts(stack: &Stack, role: &str, receipts: &[(String, String)]) {
    let script = r#"
import json, sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.confirm_delivery()
for message_id, body in json.loads(sys.argv[5]):
    channel.basic_publish(sys.argv[3], sys.argv[4], body,
                          pika.BasicProperties(user_id=sys.argv[2], message_id=message_id,
                                               content_type="application/json", delivery_mode=2))
connection.close()
"#;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &stack.role_url(role),
            &stack.role_user(role),
            topology::RECEIVING_EXCHANGE,
            topology::domains::RECEIVED_ROUTING_KEY,
            &serde_json::to_string(receipts).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "pika: {}", String::from_utf8_lossy(&output.stderr));
}

/// Registers a distributor and what it supplies (as the back office).
async fn put_distributor(stack: &Stack, id: &str, skus: &[&str]) {
    let connection = transport::connect(&stack.role_url("backoffice"), "test-receipts").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    let supplies: Vec<Value> = skus.iter().map(|sku| json!({"sku": sku, "lead_time_days": 1})).collect();
    let record = json!({"distributor_id": id, "name": format!("Distributor {id}"), "supplies": supplies});
    let put = json!({"op": "put", "record": record});
    client.call(DomainCopy::primary("distributor"), &put, Some(&format!("put-{id}")), TIMEOUT).await.unwrap();
    client.close().await;
    let _ = connection.close(200, "done".into()).await;
}

/// Inventory's own record of the stock, read from its store: units on hand
/// per SKU, the receipts counted, and the units received against the purchase orders.
async fn ledger(stack: &Stack) -> (Vec<(String, i64)>, i64, i64) {
    let inventory = stack.store("inventory", "inventory_purchase_orders").await;
    let on_hand: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, qty FROM inventory_bin_items WHERE sku IN ('SKU-0901', 'SKU-0904', 'SKU-0999') ORDER BY sku",
    )
    .fetch_all(&inventory)
    .await
    .unwrap();
    let receipts = tests::count(&inventory, "SELECT COUNT(*) FROM inventory_receipts").await;
    let received = tests::count(
        &inventory,
        "SELECT CAST(COALESCE(SUM(received), 0) AS BIGINT) FROM inventory_purchase_orders",
    )
    .await;
    inventory.close().await;
    (on_hand, receipts, received)
}

async fn purchase_order_of(stack: &Stack, order_id: Uuid) -> String {
    let inventory = stack.store("inventory", "inventory_purchase_orders").await;
    let po: String = sqlx::query_scalar("SELECT po_id FROM inventory_purchase_orders WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_one(&inventory)
        .await
        .unwrap();
    inventory.close().await;
    po
}

fn receipt(message_id: &str, body: Value) -> (String, String) {
    (message_id.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_bound_to_an_existing_supplier_and_an_open_purchase_order() {
    if !std::process::Command::new("python3").args(["-c", "import pika"]).status().is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: Python's pika is not installed (scripts/test.sh installs it)");
        return;
    }
    let mut stack = Stack::start_with_node_users_env("receipt-trust", &[NEVER]).await;
    put_distributor(&stack, "D-01", &["SKU-0901"]).await;
    put_distributor(&stack, "D-04", &["SKU-0904"]).await;
    // 15 of SKU-0904 (10 on hand): the order waits on D-04 for 5.
    let mut order = tests::orders::valid(1, "standard");
    order["items"] = json!([{"sku": "SKU-0904", "qty": 15}]);
    let id = stack.publish(&[order])[0];
    stack.wait_state(&id, "backordered", Duration::from_secs(30)).await;
    let po = purchase_order_of(&stack, id).await;
    let before = ledger(&stack).await;
    let on_hand =
        vec![("SKU-0901".to_string(), 10), ("SKU-0904".to_string(), 0), ("SKU-0999".to_string(), 0)];
    assert_eq!(before, (on_hand.clone(), 0, 0));

    let forged = [
        receipt("m-1", json!({"shipment_id": "F-1", "distributor_id": "D-99", "sku": "SKU-0999", "qty": 50})),
        receipt("m-2", json!({"shipment_id": "F-2", "distributor_id": "D-01", "sku": "SKU-0999", "qty": 50})),
        receipt(
            "m-3",
            json!({"shipment_id": "F-3", "distributor_id": "D-01", "sku": "SKU-0901", "qty": 1_000_000}),
        ),
        receipt("m-4", json!({"shipment_id": "F-4", "distributor_id": "D-04", "sku": "SKU-0904", "qty": 5})),
        receipt(
            "m-5",
            json!({"shipment_id": "F-5", "distributor_id": "D-04", "sku": "SKU-0904", "qty": 5, "po_id": Uuid::new_v4()}),
        ),
        receipt(
            "m-6",
            json!({"shipment_id": "F-6", "distributor_id": "D-04", "sku": "SKU-0904", "qty": 6, "po_id": po}),
        ),
        receipt("m-7", json!({"distributor_id": "D-01", "sku": "SKU-0901", "qty": 5})),
    ];
    pika_receipts(&stack, "receiving", &forged);
    for (text, n) in [
        ("distributor D-99 does not exist", 1),
        ("distributor D-01 does not supply SKU-0999", 1),
        ("unsolicited receipt: shipment F-3 of SKU-0901 x1000000 from D-01", 1),
        ("unsolicited receipt: shipment F-4 of SKU-0904 x5 from D-04", 1),
        ("does not exist", 2),
        ("shipment F-6 brings 6 units; purchase order", 1),
        ("missing field `shipment_id`", 1),
    ] {
        let letters = stack.letters_with(text, n).await;
        assert_eq!(letters.len(), n, "{text}: {letters:?}");
    }
    let unsolicited = stack.letters_with("unsolicited receipt", 2).await;
    assert!(
        unsolicited.iter().all(|l| l["reason"].as_str().unwrap().contains("needs an operator's review")),
        "{unsolicited:?}"
    );
    assert_eq!(ledger(&stack).await, before, "no forged receipt moved a unit");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.order(&id).await.state, "backordered", "no forged receipt released the backorder");

    // D-04's real shipment, scanned twice under two message ids, then another
    // shipment against the purchase order now received in full.
    let real = json!({"shipment_id": "D04-SHP-1", "distributor_id": "D-04", "sku": "SKU-0904", "qty": 5, "po_id": po});
    let late = json!({"shipment_id": "D04-SHP-2", "distributor_id": "D-04", "sku": "SKU-0904", "qty": 1, "po_id": po});
    pika_receipts(
        &stack,
        "receiving",
        &[receipt("m-8", real.clone()), receipt("m-9", real), receipt("m-10", late)],
    );
    stack.wait_state(&id, "shipped", Duration::from_secs(30)).await;
    let letters = stack.letters_with("was received in full", 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let stock = stack.cli_json(&["stock", "SKU-0904", "--json"]);
    assert_eq!((&stock["received"], &stock["backorders"]), (&json!(5), &json!(0)), "{stock}");
    assert_eq!(ledger(&stack).await, (on_hand, 1, 5), "the shipment counted once, all of it to the order");
    let ok = stack.stop_all().await;
    assert!(ok.iter().all(|(_, status)| status.success()), "{ok:?}");
}
