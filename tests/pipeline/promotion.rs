//! `promotion`: a replica made the primary when the primary is gone for
//! good (`orderflow domains promote`), on the catalog, whose replicas every
//! order reads. The uk replica stops hearing the stream (its binding taken
//! away, as a partition would), the primary acknowledges three more writes
//! and is killed -9: `promote catalog-uk` is refused naming the three
//! changes; `--force` promotes it and names them as lost. Then: writes go
//! to the promoted copy, a request retried from before the promotion is
//! made once, the de replica follows the new primary (and drops the lost
//! changes it had), the old primary restarted refuses a write that a stale
//! route still brings it (Python's pika, as the back office) and rejoins as
//! a replica, and the broker refuses a change on the stream from the old
//! primary's user and from a replica's. (Its stores are on PostgreSQL; the
//! other tests keep SQLite's.) Then: a promoted customer copy forwards the
//! edits to the orders in flight; and a replaced primary restarted while
//! every copy that knows it is away learns it when the promoted copy
//! answers again (it asks every 10 s).

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::Stack;
use topology::{DomainCopy, DOMAINS_EXCHANGE, DOMAIN_CHANGES_EXCHANGE};
use transport::domain_client::{ClientError, DomainClient};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A stack with per-role users and every domain copy running, and the back
/// office's client of the domains (as `orderflow domains`'s writes come).
async fn promote_stack(test: &str, env: &[(&str, &str)]) -> (Stack, Office) {
    let mut stack = Stack::start_with_node_users_env(test, env).await;
    stack.start_domains().await.unwrap();
    let connection = transport::connect(&stack.role_url("backoffice"), "test-promote").await.unwrap();
    let client = DomainClient::open(&connection, &stack.role_user("backoffice")).await.unwrap();
    (stack, Office { connection, client })
}

/// The back office's client, on a connection of its own.
struct Office {
    connection: lapin::Connection,
    client: DomainClient,
}

impl std::ops::Deref for Office {
    type Target = DomainClient;
    fn deref(&self) -> &DomainClient {
        &self.client
    }
}

impl Office {
    async fn close(self) {
        self.client.close().await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn catalog() -> DomainCopy {
    DomainCopy::primary("catalog")
}

fn region(name: &'static str) -> DomainCopy {
    DomainCopy::find("catalog", Some(name)).unwrap()
}

fn item(n: usize, title: &str) -> Value {
    json!({"op": "put", "record": {"sku": sku(n), "title": title, "price_cents": 100 + n, "weight_grams": 10, "status": "active"}})
}

fn sku(n: usize) -> String {
    format!("SKU-P{n:04}")
}

async fn status(client: &DomainClient, copy: DomainCopy) -> Option<Value> {
    client.call(copy, &json!({"op": "status"}), None, Duration::from_secs(3)).await.ok()
}

/// Polls `check` on `copy`'s status until it holds (or panics after 30 s).
async fn wait_status(
    client: &DomainClient,
    copy: DomainCopy,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status(client, copy).await;
        if let Some(status) = now.as_ref().filter(|s| check(s)) {
            return status.clone();
        }
        assert!(Instant::now() < deadline, "{}: {what}: {now:?}", copy.label());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn get(client: &DomainClient, copy: DomainCopy, n: usize) -> Result<Value, ClientError> {
    client.call(copy, &json!({"op": "get", "id": sku(n)}), None, TIMEOUT).await
}

fn text(output: &std::process::Output) -> (i32, String, String) {
    let out = String::from_utf8_lossy(&output.stdout).to_string();
    (output.status.code().unwrap_or(-1), out, String::from_utf8_lossy(&output.stderr).to_string())
}

/// Sends one catalog request with pika as `url`'s user on `routing_key`
/// and prints every answer that arrives within 8 s, one JSON per line.
fn pika_answers(url: &str, user: &str, routing_key: &str, request: &Value) -> Vec<Value> {
    let script = r#"
import json, sys, time, uuid, pika
url, user, key, body = sys.argv[1:5]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
answers = []
channel.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: answers.append(json.loads(b)), auto_ack=True)
request_id = str(uuid.uuid4())
channel.basic_publish("orderflow.domains", key, body.encode(),
    pika.BasicProperties(content_type="application/json", message_id=request_id, user_id=user,
                         correlation_id=request_id, reply_to="amq.rabbitmq.reply-to"))
deadline = time.time() + 8
while time.time() < deadline:
    connection.process_data_events(time_limit=0.5)
for answer in answers:
    print(json.dumps(answer))
connection.close()
"#;
    let output = Command::new("python3")
        .args(["-c", script, url, user, routing_key, &request.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pika: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_promoted_knowingly_and_the_old_primary_is_fenced_then_rejoins() {
    let probe = Command::new("python3").args(["-c", "import pika"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: Python's pika is not installed (scripts/test.sh installs it)");
        return;
    }
    // On PostgreSQL: the copies' stores, logs and epochs in one database server.
    let _share = tests::pg_share().await;
    let database = tests::PgDatabase::create("promote").await;
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("ORDERFLOW_DB_MAX_CONNECTIONS", tests::PG_CONNECTIONS_PER_PROCESS),
    ];
    let (mut stack, office) = promote_stack("domains-promote", &env).await;
    for n in 1..=5 {
        office.call(catalog(), &item(n, "Item"), Some(&format!("put-{n}")), TIMEOUT).await.unwrap();
    }
    for copy in [region("uk"), region("de")] {
        wait_status(&office, copy, "caught up at 5", |s| s["seq"] == 5 && s["lag"]["changes"] == 0).await;
    }

    // The uk replica's feed leaves the stream; the primary acknowledges three more writes.
    let management = tests::management();
    let vhost = stack.vhost.name.clone();
    let uk_feed = region("uk").feed_queue().unwrap();
    management.unbind(&vhost, DOMAIN_CHANGES_EXCHANGE, &uk_feed, "catalog").await.unwrap();
    for n in 6..=8 {
        office.call(catalog(), &item(n, "Item"), Some(&format!("put-{n}")), TIMEOUT).await.unwrap();
    }
    wait_status(&office, region("uk"), "knows it lacks 3", |s| {
        s["lag"]["changes"] == 3 && s["lag"]["missing"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
    wait_status(&office, region("de"), "holds 8", |s| s["seq"] == 8).await;
    // Careless and hostile promotions: a name that is no replica, a primary,
    // a bad wait; a `promote` request from anyone but the operator (Python's
    // pika, as the back office), or with an epoch that is no number.
    for (args, code) in [
        (&["domains", "promote", "catalog-fr"][..], 4),
        (&["domains", "promote", "catalog"][..], 4),
        (&["domains", "promote", "\u{1b}[31m"][..], 4),
        (&["domains", "promote", "catalog-uk", "--wait-s", "-1"][..], 2),
        (&["domains", "promote", "catalog-uk", "--wait-s", "NaN"][..], 2),
    ] {
        let (got, out, err) = text(&stack.cli(args));
        assert_eq!(got, code, "{args:?}: {out}{err}");
    }
    let (got, out, err) = text(&stack.cli(&["domains", "promote", "catalog-uk", "--wait-s", "0"]));
    assert_eq!(got, 4, "refused while the primary answers: {out}{err}");
    assert!(err.contains("catalog answers as the primary"), "{err}");
    for request in [json!({"op": "promote", "epoch": 7}), json!({"op": "promote", "epoch": "NaN"})] {
        let answers = pika_answers(
            &stack.role_url("backoffice"),
            &stack.role_user("backoffice"),
            "domain.catalog.de",
            &request,
        );
        assert_eq!(answers.len(), 1, "{answers:?}");
        let error = answers[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("only the operator promotes") || error.contains("not a request"),
            "{answers:?}"
        );
    }
    wait_status(&office, region("de"), "still a replica at epoch 1", |s| {
        s["epoch"] == 1 && s["role"] == "replica"
    })
    .await;
    stack.kill("catalog-1");

    let (code, out, err) = text(&stack.cli(&["domains", "promote", "catalog-uk", "--wait-s", "1"]));
    assert_eq!(code, 4, "refused while behind: {out}{err}");
    assert!(err.contains("lacks 3") && err.contains("--force"), "{err}");
    for n in 6..=8 {
        assert!(err.contains(&sku(n)), "the refusal names change {n}: {err}");
    }
    let (code, out, err) =
        text(&stack.cli(&["domains", "promote", "catalog-uk", "--force", "--wait-s", "0"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("catalog@uk is the primary of catalog at epoch 2, from change 5"), "{out}");
    assert!(out.contains("lost: 3 changes"), "{out}");
    for n in 6..=8 {
        assert!(out.contains(&sku(n)), "the lost changes are named: {out}");
    }
    let (code, out, err) = text(&stack.cli(&["domains", "promote", "catalog-uk"]));
    assert_eq!(code, 0, "promoting the primary again changes nothing: {out}{err}");
    assert!(out.contains("already the primary"), "{out}");

    // Writes go to the promoted copy; a request made before the promotion is made once.
    let written = office.call(catalog(), &item(9, "After"), Some("put-9"), TIMEOUT).await.unwrap();
    assert_eq!(written["title"], "After");
    let retried = office.call(catalog(), &item(3, "Changed"), Some("put-3"), TIMEOUT).await.unwrap();
    assert_eq!(retried["title"], "Item", "the retry returns the first answer: {retried}");
    let read = get(&office, catalog(), 9).await.unwrap();
    assert_eq!(read["as_of"]["copy"], "catalog@uk", "{read}");
    let lost = get(&office, catalog(), 7).await;
    assert!(matches!(&lost, Err(ClientError::Refused(r)) if r.contains("no catalog record")), "{lost:?}");

    // The de replica follows the new primary and drops the changes it alone had.
    let de = wait_status(&office, region("de"), "follows epoch 2", |s| {
        s["epoch"] == 2 && s["primary"] == "catalog@uk" && s["seq"] == 6
    })
    .await;
    assert_eq!(de["records"], 6, "{de}");
    assert!(get(&office, region("de"), 7).await.is_err(), "de dropped the lost change");
    assert_eq!(get(&office, region("de"), 9).await.unwrap()["title"], "After");

    // The old primary comes back; a stale route still brings it writes: it refuses them.
    stack.spawn("catalog", "catalog-2");
    let old_queue = catalog().queue();
    tokio::time::sleep(Duration::from_secs(3)).await;
    management.bind(&vhost, DOMAINS_EXCHANGE, &old_queue, &catalog().routing_key()).await.unwrap();
    let answers = pika_answers(
        &stack.role_url("backoffice"),
        &stack.role_user("backoffice"),
        &catalog().routing_key(),
        &item(10, "Both"),
    );
    management.unbind(&vhost, DOMAINS_EXCHANGE, &old_queue, &catalog().routing_key()).await.unwrap();
    let by = |service: &str| answers.iter().find(|a| a["service"] == service).cloned();
    let old = by("catalog").unwrap_or_else(|| panic!("the old primary answers: {answers:?}"));
    assert_eq!(old["status"], "failed", "{old}");
    let reason = old["error"].as_str().unwrap();
    assert!(reason.contains("no longer the primary") && reason.contains("catalog@uk"), "{reason}");
    assert_eq!(by("catalog@uk").map(|a| a["status"].clone()), Some(json!("done")), "{answers:?}");

    // It rejoined as a replica: its store holds exactly the new primary's records.
    let pool = stack.store("catalog", "catalog_epoch").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM catalog_records ORDER BY key")
            .fetch_all(&pool)
            .await
            .unwrap();
        let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM catalog_epoch WHERE id = 1")
            .fetch_optional(&pool)
            .await
            .unwrap();
        let expected: Vec<String> = [1, 2, 3, 4, 5, 9, 10].into_iter().map(sku).collect();
        if keys == expected && epoch == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the old primary did not rejoin: {keys:?} at epoch {epoch:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    pool.close().await;

    // The broker refuses a change on the stream from the old primary's user and from a replica's.
    let forged =
        json!({"seq": 99, "at_ms": 0, "key": sku(1), "record": {"sku": sku(1)}, "epoch": 9}).to_string();
    for role in ["catalog", "catalog-de"] {
        let refused = tests::pika_publish(
            &stack.role_url(role),
            &stack.role_user(role),
            DOMAIN_CHANGES_EXCHANGE,
            "catalog",
            "domain_change",
            &forged,
        );
        assert!(
            refused.as_deref().is_some_and(|r| r.contains("403") || r.contains("ACCESS_REFUSED")),
            "{role}: {refused:?}"
        );
    }
    office.close().await;
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}

/// The customer domain's primary gone for good with every change on its
/// replicas: `promote customer-uk` needs no `--force`, and the promoted
/// copy takes the primary's other job too: an address edit made there
/// reaches the orders in flight that copied the old one, as a change the
/// customer domain (now `customer-uk`) requests, applied once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_customer_replica_sends_the_edits_to_the_orders_in_flight() {
    // Intake at full speed (every order copies its address first), the other nodes slowed.
    let env = [("ORDERFLOW_DELAY_MS", "1500"), ("ORDERFLOW_DELAY_MS_INTAKE", "0")];
    let (mut stack, office) = promote_stack("promote-edits", &env).await;
    let customer = json!({
        "op": "add", "customer_id": "P-1", "name": "Promoted Customer", "email": "p1@example.com",
        "addresses": [{"line1": "1 Main St", "city": "Leeds", "postal_code": "LS1", "country": "GB", "default": true}],
        "card": {"number": "4111111111111111", "expiry": "12/30"}
    });
    office.call(DomainCopy::primary("customer"), &customer, Some("add-p1"), TIMEOUT).await.unwrap();
    let thing = json!({"sku": "SKU-0001", "title": "Thing", "price_cents": 500, "weight_grams": 100, "status": "active"});
    office.call(catalog(), &json!({"op": "put", "record": thing}), Some("sku-1"), TIMEOUT).await.unwrap();
    let uk = DomainCopy::find("customer", Some("uk")).unwrap();
    wait_status(&office, uk, "caught up", |s| s["seq"] == 1 && s["lag"]["changes"] == 0).await;
    stack.kill("customer-1");
    let (code, out, err) = text(&stack.cli(&["domains", "promote", "customer-uk"]));
    assert_eq!(code, 0, "nothing is lost, no --force needed: {out}{err}");
    assert!(out.contains("customer@uk is the primary of customer at epoch 2, from change 1"), "{out}");
    assert!(!out.contains("lost"), "{out}");

    let by_ref = json!({"customer_id": "P-1", "items": [{"sku": "SKU-0001", "qty": 1}], "shipping_method": "standard"});
    let ids = stack.publish(&vec![by_ref; 4]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.statuses(&ids).await.values().filter(|s| s.state != "placed").count() < ids.len() {
        assert!(Instant::now() < deadline, "intake did not take the orders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let edit = ["customer", "set-address", "P-1", "--line1", "9 Promoted Rd", "--city", "Hull"];
    let more = ["--postal-code", "HU1", "--country", "GB", "--default"];
    let (code, out, err) = text(&stack.cli(&[&edit[..], &more[..]].concat()));
    assert_eq!(code, 0, "the promoted copy takes the write: {out}{err}");
    stack.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        let view = stack.order(id).await;
        let requested: Vec<_> = view
            .history
            .iter()
            .filter(|h| h.state == "change_requested" && h.node == "customer-uk")
            .collect();
        assert_eq!(requested.len(), 1, "{:?}", tests::states(&view));
        let change_id = requested[0].change_id.clone();
        let applied = view.history.iter().filter(|h| h.state == "change_applied" && h.change_id == change_id);
        assert_eq!(applied.count(), 1, "{:?}", tests::states(&view));
        let shipped = view.entry("shipped").unwrap_or_else(|| panic!("{:?}", tests::states(&view)));
        assert!(shipped.detail.contains("9 Promoted Rd"), "{}", shipped.detail);
    }
    office.close().await;
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
}

/// A primary replaced while it was down, and restarted while the copies
/// that know it are away too: it cannot learn it at its start (nobody
/// answers), so it asks again every 10 s; once the promoted copy is back it
/// follows it and refuses writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_primary_that_starts_alone_follows_the_new_one_when_it_answers() {
    let (mut stack, office) = promote_stack("domains-promote-late", &[]).await;
    office.call(catalog(), &item(1, "Item"), Some("put-1"), TIMEOUT).await.unwrap();
    for copy in [region("uk"), region("de")] {
        wait_status(&office, copy, "caught up", |s| s["seq"] == 1 && s["lag"]["changes"] == 0).await;
    }
    stack.kill("catalog-1");
    let (code, out, err) = text(&stack.cli(&["domains", "promote", "catalog-uk"]));
    assert_eq!(code, 0, "{out}{err}");
    wait_status(&office, region("de"), "follows", |s| s["epoch"] == 2).await;
    // Every copy that knows of the promotion is away when the old primary starts.
    stack.kill("catalog-uk-1");
    stack.kill("catalog-de-1");
    stack.spawn("catalog", "catalog-2");
    let pool = stack.store("catalog", "catalog_epoch").await;
    let epoch = || async {
        sqlx::query_scalar::<_, i64>("SELECT epoch FROM catalog_epoch WHERE id = 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_ne!(epoch().await, Some(2), "nobody could tell it yet");
    stack.spawn("catalog-uk", "catalog-uk-2");
    let started = Instant::now();
    while epoch().await != Some(2) {
        assert!(started.elapsed() < Duration::from_secs(40), "the old primary never learned of epoch 2");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "the old primary followed epoch 2 {} ms after the promoted copy restarted",
        started.elapsed().as_millis()
    );
    pool.close().await;
    office.close().await;
    let stopped = stack.stop_all().await;
    assert!(stopped.iter().all(|(_, status)| status.success()), "{stopped:?}");
    // The broker-wide record of the promotion goes with the vhost.
    let management = tests::management();
    let record = topology::promotion::parameter_name(&stack.vhost.name);
    assert!(management.global_parameter(&record).await.unwrap().is_some(), "the promotion is kept");
    management.delete_vhost(&stack.vhost.name).await.unwrap();
    assert_eq!(management.global_parameter(&record).await.unwrap(), None, "nothing outlives the vhost");
}
