//! The data domains from the command line: `customer`, `catalog`,
//! `distributor` (lookups and writes, each one request to the domain over
//! RabbitMQ, answered on direct reply-to) and `domains status | seed`.
//! Every command prints JSON with `--json`, plain lines otherwise; a
//! refusal (unknown id, bad value, a write to a replica) exits 4, no answer
//! in time 3.

use crate::args::{AddressArgs, CatalogCommand, CustomerCommand, DistributorCommand, DomainsCommand};
use crate::domain_session::{failed, Session};
use crate::exit::Outcome;
use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use shared::domains::{
    AddressInput, CardInput, CopyRequest, CopyStatus, Customer, CustomerRequest, RecordRequest, StockRequest,
};
use shared::settings::Settings;
use shared::text::escaped;
use std::path::Path;
use std::time::Duration;
use topology::DomainCopy;
use transport::domain_client::ClientError;

fn customer_copy(region: Option<&str>) -> DomainCopy {
    DomainCopy::find("customer", region).expect("the region was checked by clap")
}

fn address(args: &AddressArgs) -> AddressInput {
    AddressInput {
        address_id: None,
        line1: args.line1.clone(),
        city: args.city.clone(),
        postal_code: args.postal_code.clone(),
        country: args.country.clone(),
        default: false,
    }
}

fn print_customer(data: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(data)?);
        return Ok(());
    }
    let customer: Customer =
        serde_json::from_value(data.clone()).context("the domain's answer is not a customer")?;
    println!(
        "{}  {} <{}>",
        escaped(&customer.customer_id),
        escaped(&customer.name),
        escaped(&customer.email)
    );
    for a in &customer.addresses {
        let default = if a.default { " (default)" } else { "" };
        println!(
            "  {}{default}: {}, {} {}, {}",
            escaped(&a.address_id),
            escaped(&a.line1),
            escaped(&a.postal_code),
            escaped(&a.city),
            escaped(&a.country)
        );
    }
    if let Some(card) = &customer.card {
        println!("  card on file: {} expires {}", escaped(&card.masked), escaped(&card.expiry));
    }
    Ok(())
}

pub async fn customer(settings: &Settings, command: CustomerCommand) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let outcome = match command {
        CustomerCommand::Get { id, region, json } => {
            match session
                .ask(
                    customer_copy(region.region.as_deref()),
                    CustomerRequest::Get { customer_id: id }.to_json(),
                    None,
                )
                .await
            {
                Ok(data) => print_customer(&data, json).map(|_| Outcome::Done)?,
                Err(error) => failed(error),
            }
        }
        CustomerCommand::List { limit, after, region, json } => {
            let request = CustomerRequest::List { after, limit: Some(usize::from(limit)) }.to_json();
            match session.ask(customer_copy(region.region.as_deref()), request, None).await {
                Ok(data) if json => {
                    println!("{}", serde_json::to_string_pretty(&data["customers"])?);
                    Outcome::Done
                }
                Ok(data) => {
                    for customer in data["customers"].as_array().into_iter().flatten() {
                        let default = customer["addresses"]
                            .as_array()
                            .and_then(|all| all.iter().find(|a| a["default"] == true))
                            .map(|a| {
                                format!(
                                    "{}, {}",
                                    a["city"].as_str().unwrap_or_default(),
                                    a["country"].as_str().unwrap_or_default()
                                )
                            })
                            .unwrap_or_default();
                        println!(
                            "{}  {}  {}",
                            escaped(customer["customer_id"].as_str().unwrap_or_default()),
                            escaped(customer["name"].as_str().unwrap_or_default()),
                            escaped(&default)
                        );
                    }
                    Outcome::Done
                }
                Err(error) => failed(error),
            }
        }
        CustomerCommand::Add { id, name, email, address: at, card_number, card_expiry, request_id, json } => {
            let card =
                card_number.map(|number| CardInput { number, expiry: card_expiry.unwrap_or_default() });
            let first = AddressInput { default: true, ..address(&at) };
            let request =
                CustomerRequest::Add { customer_id: id, name, email, addresses: vec![first], card }.to_json();
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            match session.ask(DomainCopy::primary("customer"), request, Some(&request_id)).await {
                Ok(data) if json => {
                    println!("{}", serde_json::to_string_pretty(&data)?);
                    Outcome::Done
                }
                Ok(data) => {
                    println!("{}", escaped(data["customer_id"].as_str().unwrap_or_default()));
                    Outcome::Done
                }
                Err(error) => failed(error),
            }
        }
        CustomerCommand::SetCard { id, card_file, request_id, json } => {
            let card = crate::change::read_card_file(&card_file)?;
            let card = CardInput { number: card.card_number, expiry: card.expiry };
            let request = CustomerRequest::SetCard { customer_id: id, card }.to_json();
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            match session.ask(DomainCopy::primary("customer"), request, Some(&request_id)).await {
                Ok(data) => print_customer(&data, json).map(|_| Outcome::Done)?,
                Err(error) => failed(error),
            }
        }
        CustomerCommand::SetAddress { id, address: at, address_id, default, request_id, region, json } => {
            let address = AddressInput { address_id, default, ..address(&at) };
            let request = CustomerRequest::SetAddress { customer_id: id, address }.to_json();
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            match session.ask(customer_copy(region.region.as_deref()), request, Some(&request_id)).await {
                Ok(data) => print_customer(&data, json).map(|_| Outcome::Done)?,
                Err(error) => failed(error),
            }
        }
    };
    session.close().await;
    Ok(outcome)
}

pub async fn catalog(settings: &Settings, command: CatalogCommand) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let CatalogCommand::Get { sku, json } = command;
    let outcome = match session
        .ask(DomainCopy::primary("catalog"), RecordRequest::Get { id: sku }.to_json(), None)
        .await
    {
        Ok(item) if json => {
            println!("{}", serde_json::to_string_pretty(&item)?);
            Outcome::Done
        }
        Ok(item) => {
            let price = item["price_cents"].as_i64().unwrap_or_default();
            println!(
                "{}  {}  {}.{:02}  {} g  {}",
                escaped(item["sku"].as_str().unwrap_or_default()),
                escaped(item["title"].as_str().unwrap_or_default()),
                price / 100,
                price % 100,
                item["weight_grams"].as_i64().unwrap_or_default(),
                escaped(item["status"].as_str().unwrap_or_default())
            );
            Outcome::Done
        }
        Err(error) => failed(error),
    };
    session.close().await;
    Ok(outcome)
}

pub async fn distributor(settings: &Settings, command: DistributorCommand) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let DistributorCommand::List { json } = command;
    let mut all: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    let outcome = loop {
        let request =
            RecordRequest::List { after: after.clone(), limit: Some(shared::domains::MAX_PAGE) }.to_json();
        match session.ask(DomainCopy::primary("distributor"), request, None).await {
            Ok(page) => {
                let records = page["records"].as_array().cloned().unwrap_or_default();
                let full = records.len() == shared::domains::MAX_PAGE;
                after = records.last().and_then(|r| r["distributor_id"].as_str()).map(String::from);
                all.extend(records);
                if !full {
                    break Outcome::Done;
                }
            }
            Err(error) => break failed(error),
        }
    };
    if outcome == Outcome::Done {
        if json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            for d in &all {
                let supplies = d["supplies"].as_array().map_or(0, Vec::len);
                println!(
                    "{}  {}  supplies {supplies} SKUs",
                    escaped(d["distributor_id"].as_str().unwrap_or_default()),
                    escaped(d["name"].as_str().unwrap_or_default())
                );
            }
        }
    }
    session.close().await;
    Ok(outcome)
}

pub async fn domains(settings: &Settings, command: DomainsCommand) -> anyhow::Result<Outcome> {
    match command {
        DomainsCommand::Status { json } => status(settings, json).await,
        DomainsCommand::Seed { dir } => seed(settings, &dir).await,
        DomainsCommand::Promote { copy, force, wait_s, json } => {
            crate::promote::promote(settings, &copy, force, Duration::from_secs(wait_s), json).await
        }
    }
}

/// Every copy that is a process of its own, asked for its status; a copy
/// that does not answer is shown as such (and the command exits 3).
async fn status(settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let copies: Vec<DomainCopy> = DomainCopy::all().into_iter().filter(|c| c.own_process()).collect();
    let mut rows: Vec<Value> = Vec::new();
    let mut all_answered = true;
    for copy in copies {
        match session.ask(copy, CopyRequest::Status { after_seq: None }.to_json(), None).await {
            Ok(status) => rows.push(status),
            Err(error) => {
                all_answered = false;
                rows.push(json!({"copy": copy.label(), "error": error.to_string()}));
            }
        }
    }
    session.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<14} {:<8} {:>5} {:>8} {:>8}  lag", "copy", "role", "epoch", "records", "seq");
        for row in &rows {
            let copy = row["copy"].as_str().unwrap_or_default();
            if let Some(error) = row["error"].as_str() {
                println!("{copy:<14} no answer: {}", escaped(error));
                continue;
            }
            let status: CopyStatus = serde_json::from_value(row.clone())?;
            let lag = match &status.lag {
                Some(lag) if lag.primary_reachable => {
                    format!("{} changes, {} ms behind the primary", lag.changes, lag.ms)
                }
                Some(lag) => format!(
                    "{} changes behind at the last answer; the primary does not answer now",
                    lag.changes
                ),
                None if status.role == "replica" => "not measured yet".to_string(),
                None => "-".to_string(),
            };
            println!(
                "{:<14} {:<8} {:>5} {:>8} {:>8}  {lag}",
                status.copy, status.role, status.epoch, status.records, status.seq
            );
        }
    }
    Ok(if all_answered { Outcome::Done } else { Outcome::TimedOut })
}

/// One seed file: its domain copy, the request each line becomes, and the key of a line.
struct SeedFile {
    file: &'static str,
    domain: &'static str,
    request: fn(Value) -> Value,
    key: &'static str,
}

const SEED_FILES: &[SeedFile] = &[
    SeedFile {
        file: "catalog.jsonl",
        domain: "catalog",
        request: |record| RecordRequest::Put { record }.to_json(),
        key: "sku",
    },
    SeedFile {
        file: "distributors.jsonl",
        domain: "distributor",
        request: |record| RecordRequest::Put { record }.to_json(),
        key: "distributor_id",
    },
    SeedFile {
        file: "customers.jsonl",
        domain: "customer",
        request: |mut record| {
            record["op"] = json!("add");
            record
        },
        key: "customer_id",
    },
];

/// Loads the seed files through the domains' own requests, 64 in flight;
/// each line's request id is made from its file and key, so seeding twice
/// changes nothing, and a request with no answer within the timeout (it
/// waited behind the others at a busy domain) is asked again with the same
/// id, up to [`SEED_ATTEMPTS`] times, before the seed gives up.
/// How many times seeding asks a request that gets no answer.
const SEED_ATTEMPTS: u32 = 5;

async fn seed(settings: &Settings, dir: &Path) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let session = &session;
    let mut refused = 0usize;
    for seed in SEED_FILES {
        let path = dir.join(seed.file);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut requests = Vec::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
            let key = record[seed.key].as_str().unwrap_or_default().to_string();
            requests.push((format!("seed-{}-{key}", seed.domain), (seed.request)(record)));
        }
        let total = requests.len();
        let copy = DomainCopy::primary(seed.domain);
        let mut answers = futures::stream::iter(requests)
            .map(|(id, request)| async move {
                let mut attempt = 1;
                loop {
                    match session.ask(copy, request.clone(), Some(&id)).await {
                        Err(ClientError::Unavailable(_)) if attempt < SEED_ATTEMPTS => attempt += 1,
                        answer => return (id, answer),
                    }
                }
            })
            .buffer_unordered(64);
        let mut done = 0usize;
        while let Some((id, answer)) = answers.next().await {
            done += 1;
            match answer {
                Ok(_) => {}
                Err(ClientError::Refused(reason)) => {
                    refused += 1;
                    eprintln!("{id}: refused: {}", escaped(&reason));
                }
                Err(error) => anyhow::bail!("{id}: {error} (seeding again is safe)"),
            }
            if done.is_multiple_of(500) || done == total {
                eprint!("\r{}: {done}/{total}", seed.file);
            }
        }
        eprintln!();
    }
    session.close().await;
    Ok(if refused == 0 { Outcome::Done } else { Outcome::Declined })
}

/// One receipt as `receive` publishes it: its shipment id and body.
pub struct ReceiptLine {
    pub shipment_id: String,
    pub body: Value,
}

pub fn receipt_line(
    shipment_id: String,
    distributor_id: String,
    sku: Option<String>,
    qty: Option<i64>,
    po_id: Option<uuid::Uuid>,
) -> ReceiptLine {
    let mut body =
        json!({"shipment_id": shipment_id, "distributor_id": distributor_id, "sku": sku, "qty": qty});
    if let Some(po_id) = po_id {
        body["po_id"] = json!(po_id);
    }
    ReceiptLine { shipment_id, body }
}

/// Reads receipts, one JSON object per line, each with its `shipment_id`;
/// a bad line publishes nothing.
pub fn read_receipts(path: &Path) -> anyhow::Result<Vec<ReceiptLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let body: Value = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("line {}: not valid JSON ({e}); nothing was published", number + 1)
        })?;
        anyhow::ensure!(body.is_object(), "line {}: not a JSON object; nothing was published", number + 1);
        let shipment_id = match body.get("shipment_id") {
            Some(Value::String(id)) => {
                shared::service::check_id("the shipment id", id)
                    .map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))?;
                id.clone()
            }
            Some(other) => {
                anyhow::bail!("line {}: shipment_id {other} is not text; nothing was published", number + 1)
            }
            None => anyhow::bail!(
                "line {}: no shipment_id (the distributor's shipment id); nothing was published",
                number + 1
            ),
        };
        lines.push(ReceiptLine { shipment_id, body });
    }
    anyhow::ensure!(!lines.is_empty(), "{} holds no receipts; nothing was published", path.display());
    Ok(lines)
}

/// Publishes receipts to the received-items queue, confirmed, in order;
/// prints each shipment id. The stock domain checks them and counts each
/// shipment once (each scan is a message of its own: a new message id).
pub async fn receive(settings: &Settings, receipts: Vec<ReceiptLine>) -> anyhow::Result<Outcome> {
    let connection = transport::connect(&settings.amqp_url, "orderflow-receive")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", settings.amqp_url_redacted()))?;
    let publisher = transport::Publisher::open(&connection, &settings.broker_user()).await?;
    for chunk in receipts.chunks(100) {
        let messages: Vec<transport::Outgoing> = chunk
            .iter()
            .map(|receipt| transport::Outgoing {
                exchange: topology::RECEIVING_EXCHANGE,
                routing_key: topology::domains::RECEIVED_ROUTING_KEY.to_string(),
                body: serde_json::to_vec(&receipt.body).expect("JSON always serializes"),
                properties: lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(uuid::Uuid::new_v4().to_string().into()),
            })
            .collect();
        publisher.publish_all(&messages).await.context("publishing received items")?;
        for receipt in chunk {
            println!("{}", receipt.shipment_id);
        }
    }
    publisher.close().await;
    let _ = connection.close(200, "received".into()).await;
    Ok(Outcome::Done)
}

/// `orderflow stock SKU`.
pub async fn stock(settings: &Settings, sku: &str, json: bool) -> anyhow::Result<Outcome> {
    let session = Session::open(settings).await?;
    let outcome = match session
        .ask(DomainCopy::primary("stock"), StockRequest::Stock { sku: sku.to_string() }.to_json(), None)
        .await
    {
        Ok(data) if json => {
            println!("{}", serde_json::to_string_pretty(&data)?);
            Outcome::Done
        }
        Ok(data) => {
            println!(
                    "{}  in bin {}  on hand {}  reserved {}  received {}  backordered {} (orders waiting {}, units held for them {})",
                    escaped(data["sku"].as_str().unwrap_or_default()),
                    escaped(data["bin"].as_str().unwrap_or("?")),
                    data["on_hand"],
                    data["reserved"],
                    data["received"],
                    data["backordered"],
                    data["backorders"],
                    data["held_for_backorders"]
                );
            Outcome::Done
        }
        Err(error) => failed(error),
    };
    session.close().await;
    Ok(outcome)
}
