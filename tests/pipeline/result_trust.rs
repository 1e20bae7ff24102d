//! `result_trust`: polled results bound to their caller (issue 30, point 6),
//! tried from outside with the stack's real users and Python's pika: a
//! second caller with the same request id gets its own result, never the
//! first caller's; `GET /calls/{id}` shows nothing without the call's poll
//! token (plain HTTP), and the same "no result" for a wrong token as for a
//! request id never used; a `poll.payment` result forged by the payment user
//! with a full card number in it is kept and served masked.

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tests::Stack;

/// Publishes one message with pika as `user` (signed with `user_id`,
/// confirmed): a poll call (`call`), or a result (`result`, claiming
/// `caller`), with the poll key of `token` (its SHA-256) in its headers.
const PIKA_PUBLISH: &str = r#"
import hashlib, sys, pika
mode, url, user, exchange, key, message_id, token, body, caller = sys.argv[1:10]
headers = {"x-orderflow-poll-key": hashlib.sha256(token.encode()).hexdigest()}
if mode == "call":
    headers["x-orderflow-reply"] = "poll"
    kind = None
else:
    headers.update({"x-orderflow-caller": caller, "schema_version": 1})
    kind = "service_result"
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish(exchange, key, body.encode(), pika.BasicProperties(
    content_type="application/json", message_id=message_id, user_id=user, type=kind, headers=headers),
    mandatory=True)
connection.close()
"#;

struct Publish<'a> {
    mode: &'a str,
    url: &'a str,
    user: &'a str,
    exchange: &'a str,
    key: &'a str,
    message_id: &'a str,
    token: &'a str,
    body: &'a str,
    caller: &'a str,
}

fn pika_publish(p: Publish) {
    let args = [p.mode, p.url, p.user, p.exchange, p.key, p.message_id, p.token, p.body, p.caller];
    let output = Command::new("python3").args(["-c", PIKA_PUBLISH]).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "pika ({} as {}): {}",
        p.mode,
        p.user,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A polled call of intake as `user`, with a plain order of `customer`.
fn call_intake(url: &str, user: &str, request_id: &str, token: &str, customer: &str) {
    let mut order = tests::orders::valid(2, "standard");
    order["customer_id"] = json!(customer);
    let body = order.to_string();
    let (exchange, key) = ("orderflow.services", "service.intake");
    pika_publish(Publish {
        mode: "call",
        url,
        user,
        exchange,
        key,
        message_id: request_id,
        token,
        body: &body,
        caller: "",
    });
}

/// `GET /calls/{id}` over plain HTTP, with `Authorization: Bearer <token>` when given.
async fn get_call(stack: &Stack, request_id: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(stack.url(&format!("/calls/{request_id}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the tracker answers");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// Waits for the first `200` of `GET /calls/{id}` with `token`; its body.
async fn wait_call(stack: &Stack, request_id: &str, token: &str) -> Value {
    harness::until(Duration::from_secs(30), Duration::from_millis(200), || async {
        Ok(match get_call(stack, request_id, Some(token)).await {
            (200, body) => harness::Check::Done(serde_json::from_str::<Value>(&body)?),
            (status, body) => harness::Check::Waiting(format!("{status} {body}")),
        })
    })
    .await
    .unwrap()
}

/// A new poll token (the caller's secret; the calls carry only its SHA-256).
fn token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The longest run of digits in `text`.
fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_results_are_their_callers_alone_and_never_hold_a_card() {
    let probe = Command::new("python3").args(["-c", "import pika"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: Python's pika is not installed (scripts/test.sh installs it)");
        return;
    }
    let stack = Stack::start_with_node_users("result-trust").await;
    let (publisher_url, publisher) = (stack.role_url("publisher"), stack.role_user("publisher"));
    let guest_url = format!("amqp://guest:guest@127.0.0.1:5672/{}", stack.vhost.name);
    // Hyphenated: no run of 13 digits, which a served text would mask as a card's.
    let request_id = format!("shared-{}", uuid::Uuid::new_v4());
    let (first_token, second_token) = (token(), token());

    // The public door calls intake, polled; it reads its result with its token.
    call_intake(&publisher_url, &publisher, &request_id, &first_token, "cust-first");
    let first = wait_call(&stack, &request_id, &first_token).await;
    assert_eq!(first["caller"], publisher.as_str(), "{first}");
    assert_eq!(first["result"]["element"]["order"]["customer_id"], "cust-first", "{first}");

    // A second caller, the same request id: its own result, never the first's.
    call_intake(&guest_url, "guest", &request_id, &second_token, "cust-second");
    let second = wait_call(&stack, &request_id, &second_token).await;
    assert_eq!(second["caller"], "guest", "the second caller reads only its own result: {second}");
    assert_eq!(second["result"]["element"]["order"]["customer_id"], "cust-second", "{second}");
    let again = wait_call(&stack, &request_id, &first_token).await;
    assert_eq!(again["result"]["element"]["order"]["customer_id"], "cust-first", "{again}");

    // Without the token, plain HTTP gets nothing; with a wrong one, the
    // same "no result" as for a request id never used.
    let (status, body) = get_call(&stack, &request_id, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("cust-"), "{body}");
    let guess = token();
    let (status, wrong) = get_call(&stack, &request_id, Some(&guess)).await;
    assert_eq!(status, 404, "{wrong}");
    let (status, never) = get_call(&stack, "never-used", Some(&guess)).await;
    assert_eq!(status, 404, "{never}");
    assert_eq!(
        wrong.replace(&request_id, "ID"),
        never.replace("never-used", "ID"),
        "nothing tells them apart"
    );

    // The payment user forges a poll.payment result carrying a full card
    // number, in every place it can: kept and served masked.
    let card = "4111111111111111";
    let mut element: Value = serde_json::from_str(include_str!("../../examples/accepted.json")).unwrap();
    element["state"] = json!("charged");
    element["order"]["ship_to"]["line1"] = json!(format!("{card} Main St"));
    element["tracking_number"] = json!(card);
    let forged = json!({"request_id": "forged-card", "service": "payment", "status": "done",
                        "element": element, "steps": [{"state": "charged", "detail": format!("card {card}")}],
                        "data": {"card": card, "number": 4111111111111111u64}});
    let forged = forged.to_string();
    assert!(forged.contains(card));
    let forged_token = token();
    let payment_url = stack.role_url("payment");
    pika_publish(Publish {
        mode: "result",
        url: &payment_url,
        user: &stack.role_user("payment"),
        exchange: "orderflow.results",
        key: "poll.payment",
        message_id: "forged-card",
        token: &forged_token,
        body: &forged,
        caller: "guest",
    });
    let kept = wait_call(&stack, "forged-card", &forged_token).await;
    // (The kept result's times, `received_at_ms` and `collected_at_ms`, are 13 digits: not in the result.)
    let served = kept["result"].to_string();
    assert!(longest_digit_run(&served) < 13, "no card number is served: {served}");
    assert!(served.contains("****1111"), "{served}");
    assert_eq!(kept["result"]["element"]["order"]["ship_to"]["line1"], "****1111 Main St", "{served}");
    assert!(!kept.to_string().contains(card), "{kept}");
}
