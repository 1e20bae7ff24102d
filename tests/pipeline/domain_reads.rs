//! `domain_reads`: reads that survive the loss of the customer and catalog
//! primaries (issue 28, part 2). With both primaries killed -9, 500 orders
//! by reference are built from the replicas (none rejected, all shipped,
//! each accepted step naming the customer and catalog replicas that
//! answered and how far behind they may have been); with both catalog
//! replicas frozen (SIGSTOP) as well, orders wait and finish after SIGCONT;
//! with a staleness bound the replicas are past, orders wait (nothing
//! rejected) and go on once the primaries are back (read there, or at a
//! replica within the bound again).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::Stack;
use topology::DomainCopy;
use transport::domain_client::DomainClient;

const TIMEOUT: Duration = Duration::from_secs(20);

/// 10 customers and the item the orders buy; waits until both replicas hold them.
async fn seed(stack: &Stack, client: &DomainClient) {
    for n in 0..10 {
        let add = json!({
            "op": "add", "customer_id": format!("R-{n:05}"), "name": format!("Read Customer {n}"),
            "email": format!("r{n}@example.com"),
            "addresses": [{"line1": "1 Main St", "city": "Leeds", "postal_code": "LS1", "country": "GB", "default": true}],
            "card": {"number": "4111111111111111", "expiry": "12/30"}
        });
        client.call(DomainCopy::primary("customer"), &add, Some(&format!("add-{n}")), TIMEOUT).await.unwrap();
    }
    let item = json!({"sku": "SKU-0001", "title": "Thing", "price_cents": 1234, "weight_grams": 300, "status": "active"});
    let put = json!({"op": "put", "record": item});
    client.call(DomainCopy::primary("catalog"), &put, Some("sku-1"), TIMEOUT).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = stack.cli_json(&["domains", "status", "--json"]);
        let replicas: Vec<&Value> =
            rows.as_array().unwrap().iter().filter(|r| r["role"] == "replica").collect();
        // 10 customers at each customer replica, the one item at each catalog replica.
        let held = |r: &Value| if r["copy"].as_str().unwrap().starts_with("customer") { 10 } else { 1 };
        if replicas.len() == 4 && replicas.iter().all(|r| r["records"] == held(r) && r["lag"]["changes"] == 0)
        {
            return;
        }
        assert!(Instant::now() < deadline, "the replicas did not catch up: {rows}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn by_reference(i: usize) -> Value {
    json!({"customer_id": format!("R-{:05}", i % 10), "items": [{"sku": "SKU-0001", "qty": 1}],
           "shipping_method": "standard"})
}

/// The accepted step's detail of each order (all shipped).
async fn accepted_details(stack: &Stack, ids: &[uuid::Uuid]) -> Vec<String> {
    let mut details = Vec::new();
    for id in ids {
        let view = stack.order(id).await;
        assert_eq!(view.state, "shipped", "{:?}", tests::states(&view));
        details.push(view.entry("accepted").expect("accepted").detail.clone());
    }
    details
}

/// How many details name each of `copies` as the copy that answered.
fn read_at(details: &[String], domain: &str, copies: &[&str]) -> Vec<usize> {
    copies
        .iter()
        .map(|copy| details.iter().filter(|d| d.contains(&format!("the {domain} read at {copy} "))).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_intake_while_the_customer_and_catalog_primaries_are_down() {
    // Intake takes a replica up to 10 minutes behind (the primaries stay
    // down for the whole first part); a primary that does not answer in 1 s
    // is passed over.
    let env = [("ORDERFLOW_DOMAIN_TIMEOUT_MS", "1000"), ("ORDERFLOW_DOMAIN_MAX_STALENESS_MS", "600000")];
    let mut stack = Stack::start_with_node_users_env("domain-reads", &env).await;
    stack.start_domains().await.unwrap();
    let connection = transport::connect(&stack.role_url("backoffice"), "test-reads").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    seed(&stack, &client).await;

    // Both primaries are gone: the replicas answer, each order says which.
    stack.kill("customer-1");
    stack.kill("catalog-1");
    let ids = stack.publish(&(0..500).map(by_reference).collect::<Vec<_>>());
    stack.wait_terminal(&ids, Duration::from_secs(240)).await;
    let details = accepted_details(&stack, &ids).await;
    let customers = read_at(&details, "customer", &["customer@uk", "customer@de"]);
    let catalogs = read_at(&details, "catalog", &["catalog@uk", "catalog@de"]);
    eprintln!("customer read at uk, de: {customers:?}; catalog read at uk, de: {catalogs:?}");
    assert_eq!(customers.iter().sum::<usize>(), 500, "every order names the customer replica that answered");
    assert_eq!(catalogs.iter().sum::<usize>(), 500, "every order names the catalog replica that answered");
    assert!(details.iter().all(|d| d.contains("ms behind its primary")), "{details:?}");

    // The catalog's replicas freeze too (SIGSTOP): nobody can answer for
    // the items, so orders wait at intake, never rejected, and finish once
    // the replicas go on (SIGCONT).
    stack.pause("catalog-uk-1");
    stack.pause("catalog-de-1");
    let frozen = stack.publish(&(0..10).map(by_reference).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let statuses = stack.statuses(&frozen).await;
    assert!(statuses.values().all(|s| s.state == "placed"), "they wait at intake: {statuses:?}");
    stack.resume("catalog-uk-1");
    stack.resume("catalog-de-1");
    stack.wait_terminal(&frozen, Duration::from_secs(120)).await;
    let details = accepted_details(&stack, &frozen).await;
    assert_eq!(read_at(&details, "catalog", &["catalog@uk", "catalog@de"]).iter().sum::<usize>(), 10);

    // An intake that takes no replica more than 1 s behind: the primaries
    // have been gone longer, so orders wait (never rejected), then are read
    // at the primaries once they are back.
    stack.stop("intake-1").await;
    stack.spawn_with("intake", "intake-2", &[("ORDERFLOW_DOMAIN_MAX_STALENESS_MS", "1000")]).unwrap();
    let waiting = stack.publish(&(0..5).map(by_reference).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let statuses = stack.statuses(&waiting).await;
    assert!(statuses.values().all(|s| s.state == "placed"), "they wait at intake: {statuses:?}");
    stack.spawn("customer", "customer-1");
    stack.spawn("catalog", "catalog-1");
    stack.wait_terminal(&waiting, Duration::from_secs(120)).await;
    // Read at a primary, or at a replica fresh again (within 1 s) now that it is back.
    let behind = |detail: &str| -> Vec<i64> {
        detail.split("at most ").skip(1).filter_map(|rest| rest.split(' ').next()?.parse().ok()).collect()
    };
    let details = accepted_details(&stack, &waiting).await;
    assert!(details.iter().all(|d| behind(d).iter().all(|ms| *ms <= 1000)), "{details:?}");
    connection.close(200, "done".into()).await.ok();
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}
