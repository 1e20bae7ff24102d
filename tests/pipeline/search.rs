//! Finding orders (`GET /orders`, `orderflow orders`): with shipping stopped,
//! picked orders wait; they are listed by state, by the node they wait at,
//! by customer and by age, each once across pages; bad parameters are
//! refused (400 with the reason, exit 2).

use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use tests::{orders, Stack};

fn json(output: std::process::Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("orders --json prints JSON")
}

fn ids(page: &Value) -> Vec<String> {
    page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().into())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_found_by_state_node_customer_and_age_a_page_at_a_time() {
    let mut stack = Stack::start("search", &[]).await;
    assert!(stack.stop("shipping-1").await.success());
    let mut batch = Vec::new();
    for i in 0..7 {
        let mut order = orders::valid(1, "express");
        order["customer_id"] = Value::from(if i < 2 { "cust-search-a" } else { "cust-search-b" });
        batch.push(order);
    }
    let published = stack.publish(&batch);
    for id in &published {
        stack.wait_state(id, "picked", Duration::from_secs(30)).await;
    }
    let mut expected: Vec<String> = published.iter().map(|id| id.to_string()).collect();
    expected.sort();

    // Every picked order, once, in order id order, with its customer and time.
    let all = json(stack.cli(&["orders", "--state", "picked", "--json"]));
    assert_eq!(ids(&all), expected);
    assert!(all["next"].is_null(), "{all}");
    let first = &all["orders"][0];
    assert_eq!(first["state"], "picked");
    assert_eq!(first["terminal"], false);
    assert!(first["since"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(first["customer_id"].as_str().unwrap().starts_with("cust-search-"), "{first}");
    // Waiting at shipping is the same set; the text lists one line per order.
    assert_eq!(ids(&json(stack.cli(&["orders", "--at", "shipping", "--json"]))), expected);
    let text = stack.cli(&["orders", "--state", "picked", "--older-than", "0s"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(text.contains("cust-search-b") && text.contains(" ago"), "{text}");

    // Pages of 3 over the API: each order once, then no next page.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..5 {
        let (status, body) = stack.get(&format!("/orders?state=picked&limit=3{after}")).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, expected, "paging lists each order once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    // The CLI walks pages up to --limit and hands on the cursor.
    let two = json(stack.cli(&["orders", "--state", "picked", "--limit", "2", "--json"]));
    assert_eq!(ids(&two), expected[..2]);
    let rest =
        json(stack.cli(&["orders", "--state", "picked", "--after", two["next"].as_str().unwrap(), "--json"]));
    assert_eq!(ids(&rest), expected[2..]);

    // By customer and by age.
    let a = json(stack.cli(&["orders", "--customer", "cust-search-a", "--json"]));
    let mut of_a: Vec<String> = published[..2].iter().map(|id| id.to_string()).collect();
    of_a.sort();
    assert_eq!(ids(&a), of_a);
    assert!(ids(&json(stack.cli(&["orders", "--older-than", "1h", "--json"]))).is_empty());
    assert_eq!(
        ids(&json(stack.cli(&["orders", "--newer-than", "1h", "--state", "picked", "--json"]))),
        expected
    );
    assert!(ids(&json(stack.cli(&["orders", "--state", "shipped", "--json"]))).is_empty());

    // Bad parameters: 400 with the reason from the API, exit 2 from the CLI.
    for (query, reason) in [
        ("state=payment", "not a state"),
        ("older_than=-1", "number of seconds"),
        ("older_than=NaN", "number of seconds"),
        ("limit=0", "from 1 to 1000"),
        ("limit=1001", "from 1 to 1000"),
        ("after=x", "cursor"),
        ("colour=red", "unknown parameter"),
    ] {
        let (status, body) = stack.get(&format!("/orders?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(reason), "{query}: {body}");
    }
    for args in [
        &["orders", "--state", "payment"][..],
        &["orders", "--older-than", "-5m"],
        &["orders", "--older-than", "nan"],
        &["orders", "--limit", "0"],
        &["orders", "--at", "nowhere"],
    ] {
        let output = stack.cli(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}
