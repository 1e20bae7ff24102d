//! The `orderflow` command line: its subcommands, options (each checked by
//! `values`), and the help that teaches them: examples, units, the settings
//! read from the environment and the exit codes.

use crate::values;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

const EXAMPLES: &str = "\
Examples:
  orderflow publish --count 100 > ids.txt      # 100 generated orders; prints one id per line
  orderflow publish --count 1000 --rate 50     # paced: 50 orders per second
  orderflow publish --file orders.jsonl        # one order (JSON object) per line
  orderflow wait --ids ids.txt --timeout 60    # until every order is terminal (60 s at most)
  orderflow status 0f8fad5b-d9cb-469f-a165-70867728950e
  orderflow change ID --shipping-method express --wait
  orderflow cancel ID --sync --timeout 5
  orderflow watch --once
  orderflow orders --state accepted --older-than 5m   # what has waited at payment for 5 minutes
  orderflow dlq list; orderflow dlq replay --all
  orderflow publish --count 10 --directed       # driven by the coordinator through the services
  orderflow call intake --element-file order.json --sync --timeout 5
  orderflow call payment --element-file accepted.json --poll; orderflow call status REQUEST_ID TOKEN";

/// The whole text after the options of `orderflow --help`.
pub fn after_help() -> String {
    format!(
        "{EXAMPLES}\n\n{}\n{}",
        shared::help::environment(&[shared::help::CONNECTION, shared::help::CLI]),
        crate::exit::EXIT_CODES
    )
}

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Publish orders into the orderflow pipeline and follow them",
    long_about = "Publish orders into the orderflow pipeline and follow them: their state and history \
                  (from the tracker), in-flight changes and cancels, the dead-letter queue."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The customer domain: list, get, add, set-address (--region uk|de asks a replica).
    #[command(after_help = "Examples:\n  orderflow customer get C-000001\n  \
                            orderflow customer get C-000001 --region uk --json\n  \
                            orderflow customer add --name Ada --email ada@example.com --line1 '1 Main St' \\\n    \
                            --city Leeds --postal-code LS1 --country GB\n  \
                            orderflow customer set-address C-000001 --line1 '2 High St' --city York \\\n    \
                            --postal-code YO1 --country GB --default\n  \
                            orderflow customer set-card C-000001 --card-file card.json\n\n\
                            Exit codes: 0 done, 4 refused (unknown id, bad value, a write to a replica), \
                            3 no answer in time (the domain is down or slow), 1 the broker unreachable.")]
    Customer {
        #[command(subcommand)]
        command: CustomerCommand,
    },
    /// The catalog domain: catalog get SKU.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// The distributor domain: distributor list.
    Distributor {
        #[command(subcommand)]
        command: DistributorCommand,
    },
    /// Record items arrived from a distributor: published to the received-items queue, taken in order of arrival.
    #[command(group = clap::ArgGroup::new("what").required(true))]
    #[command(
        after_help = "Prints each shipment id. A receipt is the distributor's shipment against one of \
                            inventory's open purchase orders (--po): a shipment scanned twice (same --shipment) is \
                            counted once. A receipt with no purchase order, or from a distributor that does not \
                            supply the SKU, is dead-lettered with the reason (orderflow dlq list).\n\n\
                            Examples:\n  orderflow receive --distributor D-01 --sku SKU-0042 --qty 120 --shipment SHP-88121 --po <po_id>\n  \
                            orderflow receive --file arrivals.jsonl   # {\"shipment_id\", \"distributor_id\", \"sku\", \"qty\", \"po_id\"} per line"
    )]
    Receive {
        #[arg(long, group = "what", requires_all = ["sku", "qty", "shipment"])]
        distributor: Option<String>,
        #[arg(long)]
        sku: Option<String>,
        /// Units arrived (1 to 1,000,000).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=1_000_000), allow_negative_numbers = true)]
        qty: Option<i64>,
        /// The distributor's shipment id (on its delivery note): the receipt's identity.
        #[arg(long, value_parser = values::request_id)]
        shipment: Option<String>,
        /// The purchase order the shipment fulfils (none: an unsolicited receipt, refused).
        #[arg(long, value_parser = values::po_id)]
        po: Option<uuid::Uuid>,
        /// One receipt (JSON object) per line.
        #[arg(long, group = "what")]
        file: Option<PathBuf>,
    },
    /// The stock of a SKU: its bin, on hand, reserved, received, backordered (units waiting orders still need; from the stock domain, answered by inventory).
    Stock {
        sku: String,
        #[arg(long)]
        json: bool,
    },
    /// The data domains as a whole: status (replication lag), seed.
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Publish generated orders (--count) or orders from a JSON-lines file (--file); prints their ids.
    #[command(after_help = "Examples:\n  orderflow publish --count 100 > ids.txt\n  \
                            orderflow publish --count 200 --mixed --rate 20\n  \
                            orderflow publish --file orders.jsonl   # a bad line: nothing is published\n  \
                            orderflow publish --count 20 --wait --timeout 60   # each order's outcome as it ends")]
    Publish {
        /// Number of generated valid orders (1 to 1,000,000).
        #[arg(long, conflicts_with = "file", value_parser = values::count, allow_negative_numbers = true)]
        count: Option<usize>,
        /// Orders per second, 0.001 to 1,000,000 (default: as fast as the broker confirms).
        #[arg(long, value_name = "ORDERS_PER_S", value_parser = values::rate, allow_negative_numbers = true)]
        rate: Option<f64>,
        /// Mix in declined, out-of-stock and invalid orders, and orders of the
        /// other workflows (ship-then-bill, drop-ship), as the demo does.
        #[arg(long, requires = "count")]
        mixed: bool,
        /// One order (JSON object) per line.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Directed mode: the coordinator drives the orders through the nodes' services
        /// (routing key order.coordinator) instead of the autonomous workflow.
        #[arg(long)]
        directed: bool,
        /// Print each order's outcome as it ends (one JSON line: order_id, outcome, node,
        /// detail, at), sent back by the distribution center, instead of the ids; exit 3 if
        /// some have none within --timeout.
        #[arg(long)]
        wait: bool,
        /// With --wait: how long to wait for the last outcome, in seconds.
        #[arg(long, requires = "wait", default_value = "300", value_parser = values::seconds)]
        timeout: std::time::Duration,
    },
    /// Call one node's service with an element (or, at intake, a plain order): --sync, --poll or --callback.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    #[command(after_help = "The result is JSON: request_id, service, status (done or failed), element and \
                            steps when done, error and retryable when failed.\n\n\
                            Exit codes: 0 done, 4 failed, 3 no answer in time (or, with --sync, failed but \
                            worth retrying), 1 the broker or tracker unreachable.\n\n\
                            Examples:\n  orderflow call intake --element-file order.json --sync --timeout 5\n  \
                            orderflow call payment --element-file accepted.json --poll\n  \
                            orderflow call status 5b7c... 9f2e... --wait 10\n  \
                            orderflow call payment --element-file accepted.json --callback my-results")]
    Call {
        #[command(subcommand)]
        status: Option<CallCommand>,
        /// The service: a node of the workflow (`topology workflow` lists them).
        #[arg(value_parser = values::node, value_name = "SERVICE", required = true)]
        service: Option<shared::Node>,
        /// The element (or plain order) to call it with: one JSON object.
        #[arg(long, value_name = "FILE", required = true)]
        element_file: Option<PathBuf>,
        /// Wait for the result (on RabbitMQ's direct reply-to) up to --timeout.
        #[arg(long, group = "how")]
        sync: bool,
        /// Print the request id and a poll token at once; the tracker keeps the result for that token (`orderflow call status`).
        #[arg(long, group = "how")]
        poll: bool,
        /// Have the result sent to orderflow.results with routing key callback.KEY.
        #[arg(long, group = "how", value_name = "KEY", value_parser = values::callback_key)]
        callback: Option<String>,
        /// How long --sync waits, in seconds (0 to 604800).
        #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = values::seconds,
              allow_negative_numbers = true)]
        timeout: Duration,
        /// The request id (default: a new uuid). A repeat gets the first result.
        #[arg(long, value_name = "ID", value_parser = values::request_id)]
        request_id: Option<String>,
    },
    /// Change an order in flight: its ship-to address, its shipping method or its card. Prints the change id.
    #[command(group = clap::ArgGroup::new("what").required(true))]
    #[command(after_help = "Examples:\n  orderflow change ID --shipping-method express\n  \
                            orderflow change ID --ship-to-file address.json --wait --timeout 30\n  \
                            orderflow change ID --card-file card.json --wait\n  \
                            orderflow change ID --ship-to '{\"name\":\"Ada\",\"line1\":\"1 New Road\",\
                            \"city\":\"Bristol\",\"postal_code\":\"BS1 1AA\",\"country\":\"GB\"}' --sync")]
    Change {
        #[arg(value_parser = values::order_id, value_name = "ORDER_ID")]
        id: Uuid,
        /// The new address as JSON: {"name":..,"line1":..,"city":..,"postal_code":..,"country":..}.
        #[arg(long, group = "what")]
        ship_to: Option<String>,
        /// The new address from a JSON file.
        #[arg(long, group = "what")]
        ship_to_file: Option<PathBuf>,
        /// standard, express or overnight.
        #[arg(long, group = "what")]
        shipping_method: Option<String>,
        /// Pay with another card, from a JSON file {"card_number":..,"expiry":"MM/YY"}:
        /// payment's cards service keeps it and the change carries only its token.
        #[arg(long, group = "what")]
        card_file: Option<PathBuf>,
        #[command(flatten)]
        mode: ModeArgs,
    },
    /// Cancel an order in flight. Prints the change id.
    #[command(after_help = "Examples:\n  orderflow cancel ID\n  orderflow cancel ID --wait")]
    Cancel {
        #[arg(value_parser = values::order_id, value_name = "ORDER_ID")]
        id: Uuid,
        #[command(flatten)]
        mode: ModeArgs,
    },
    /// Print an order's state and history.
    #[command(after_help = "Example:\n  orderflow status 0f8fad5b-d9cb-469f-a165-70867728950e --json")]
    Status {
        #[arg(value_parser = values::order_id, value_name = "ORDER_ID")]
        id: Uuid,
        /// Print JSON: order_id, state, terminal, history.
        #[arg(long)]
        json: bool,
    },
    /// Find orders: by state, the node they wait at, customer and age (from the tracker).
    #[command(after_help = "One line per order: id, state, since when (and how long ago), customer.\n\n\
                            Examples:\n  orderflow orders --state accepted --older-than 5m\n  \
                            orderflow orders --at payment --limit 1000 --json\n  \
                            orderflow orders --customer cust-00042")]
    Orders {
        /// Orders in this state (placed, accepted, charged, picked, ...).
        #[arg(long, value_parser = values::state)]
        state: Option<shared::OrderState>,
        /// Orders at this node: in a state the workflow routes to it, or waiting in it (awaiting_payment, backordered).
        #[arg(long, value_name = "NODE", value_parser = values::node)]
        at: Option<shared::Node>,
        /// Orders placed by this customer.
        #[arg(long, value_name = "ID", value_parser = values::customer)]
        customer: Option<String>,
        /// Orders in their state for at least this long: 300 (seconds), 90s, 5m, 2h, 1.5d.
        #[arg(long, value_name = "AGE", value_parser = values::age, allow_negative_numbers = true)]
        older_than: Option<Duration>,
        /// Orders in their state for at most this long.
        #[arg(long, value_name = "AGE", value_parser = values::age, allow_negative_numbers = true)]
        newer_than: Option<Duration>,
        /// List at most this many orders (1 to 1,000,000), in order id order.
        #[arg(long, default_value = "100", value_parser = values::list_limit, allow_negative_numbers = true)]
        limit: usize,
        /// Start after this order id (the `next` of a previous --json answer).
        #[arg(long, value_name = "ORDER_ID", value_parser = values::order_id)]
        after: Option<Uuid>,
        /// Print JSON: {"orders": [{order_id, state, terminal, since, customer_id}], "next"}.
        #[arg(long)]
        json: bool,
    },
    /// Per node: orders handled, throughput, dwell time percentiles, errors, retries and dead
    /// letters; end-to-end latency; changes; the slowest node and the stuck orders.
    #[command(after_help = "Examples:\n  orderflow report --last 10m\n  \
                            orderflow report --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --json\n  \
                            orderflow report --last 1h --stuck-after 30s")]
    Report {
        /// The range: the last this long, up to now (default 10m): 600 (seconds), 90s, 5m, 2h, 1.5d.
        #[arg(long, value_name = "AGE", value_parser = values::age, allow_negative_numbers = true,
              conflicts_with_all = ["from", "to"])]
        last: Option<Duration>,
        /// The range's start, an RFC 3339 time (histories moved to the warehouse count too).
        #[arg(long, value_name = "TIME", value_parser = values::time)]
        from: Option<String>,
        /// The range's end (default: now).
        #[arg(long, value_name = "TIME", value_parser = values::time, requires = "from")]
        to: Option<String>,
        /// An order waiting this long at its node is stuck (default: 5 x the node's p99, at least 2 s;
        /// 60 s for a node that handled nothing in the range).
        #[arg(long, value_name = "AGE", value_parser = values::age, allow_negative_numbers = true)]
        stuck_after: Option<Duration>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show live counts of orders per state (Ctrl-C to stop).
    Watch {
        /// Print the counts once and exit.
        #[arg(long)]
        once: bool,
    },
    /// The dead-letter queue: list what is there and why, replay it, or discard from it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Wait until every order listed in a file is terminal; print counts per state as JSON.
    #[command(after_help = "Exit codes: 0 every order is terminal, 3 some are not when the timeout \
                            passes, 1 the tracker does not answer.\n\n\
                            Example:\n  orderflow publish --count 50 > ids.txt && orderflow wait --ids ids.txt --timeout 60")]
    Wait {
        /// File with one order id per line (what `publish` prints).
        #[arg(long)]
        ids: PathBuf,
        /// How long to wait, in seconds (0 to 604800).
        #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = values::seconds,
              allow_negative_numbers = true)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
pub enum CallCommand {
    /// Print a result kept for polling (GET /calls/ID on the tracker, with the call's poll token).
    Status {
        #[arg(value_parser = values::request_id, value_name = "REQUEST_ID")]
        request_id: String,
        /// The poll token `call --poll` printed after the request id: the result is shown only to it.
        #[arg(value_parser = values::poll_token, value_name = "TOKEN")]
        token: String,
        /// Wait up to this many seconds for the result (0 to 604800).
        #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = values::seconds,
              allow_negative_numbers = true)]
        wait: Duration,
    },
}

#[derive(clap::Args)]
pub struct ModeArgs {
    /// Poll for the outcome (applied or rejected) and print it.
    #[arg(long, conflicts_with = "sync")]
    pub wait: bool,
    /// Immediate feedback: apply within --timeout or not at all; fails clearly when no node answers.
    #[arg(long)]
    pub sync: bool,
    /// How long --wait or --sync waits for the outcome, in seconds (0 to 604800).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = values::seconds,
          allow_negative_numbers = true)]
    pub timeout: Duration,
}

impl ModeArgs {
    pub fn mode(&self) -> crate::change::Mode {
        let timeout = self.timeout.max(Duration::from_millis(100));
        if self.sync {
            crate::change::Mode::Sync(timeout)
        } else if self.wait {
            crate::change::Mode::Wait(timeout)
        } else {
            crate::change::Mode::Queue
        }
    }
}

/// Which copy of the customer domain to ask: the primary (default) or a replica.
#[derive(Args, Clone, Debug)]
pub struct RegionArg {
    /// The copy to ask: primary, uk or de (a replica answers reads and refuses writes).
    #[arg(long, value_name = "REGION", value_parser = values::region)]
    pub region: Option<String>,
}

/// An address as the command line gives it.
#[derive(Args, Clone, Debug)]
pub struct AddressArgs {
    #[arg(long)]
    pub line1: String,
    #[arg(long)]
    pub city: String,
    #[arg(long)]
    pub postal_code: String,
    /// Two-letter country code (GB, DE, US, ...).
    #[arg(long)]
    pub country: String,
}

#[derive(Subcommand)]
pub enum CustomerCommand {
    /// List customers in id order, a page at a time.
    List {
        /// At most this many (1 to 200).
        #[arg(long, default_value = "20", value_parser = clap::value_parser!(u16).range(1..=200))]
        limit: u16,
        /// Start after this customer id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        region: RegionArg,
        #[arg(long)]
        json: bool,
    },
    /// One customer with its addresses and card on file (masked).
    Get {
        id: String,
        #[command(flatten)]
        region: RegionArg,
        #[arg(long)]
        json: bool,
    },
    /// A new customer; prints its id.
    Add {
        /// Its id (default: one made from the request id).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[command(flatten)]
        address: AddressArgs,
        /// A card to keep on file (only its masked number is kept).
        #[arg(long, requires = "card_expiry")]
        card_number: Option<String>,
        /// The card's expiry, MM/YY.
        #[arg(long, requires = "card_number")]
        card_expiry: Option<String>,
        /// The request id (a repeat adds the customer once).
        #[arg(long, value_parser = values::request_id)]
        request_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put a new card on file (its masked number and expiry are kept; the
    /// customer's orders waiting for payment on the old card are retried
    /// with it).
    SetCard {
        id: String,
        /// A JSON file of the card: {"card_number": .., "expiry": "MM/YY"}
        /// (a file, so that the number is in no shell history).
        #[arg(long)]
        card_file: std::path::PathBuf,
        #[arg(long, value_parser = values::request_id)]
        request_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Add an address to a customer, or replace one (--address-id); --default makes it the default.
    SetAddress {
        id: String,
        #[command(flatten)]
        address: AddressArgs,
        #[arg(long)]
        address_id: Option<String>,
        #[arg(long)]
        default: bool,
        #[arg(long, value_parser = values::request_id)]
        request_id: Option<String>,
        #[command(flatten)]
        region: RegionArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// One catalog item: title, price, weight, active or withdrawn.
    Get {
        sku: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DistributorCommand {
    /// Every distributor with the SKUs it supplies and their lead times.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DomainsCommand {
    /// Every domain copy: its records, its position in the change stream,
    /// and for a replica how far it is behind its primary.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make a replica its domain's primary when the primary is gone for
    /// good: refused while the primary answers, and while the replica lacks
    /// changes the primary made (unless --force, which names them: they
    /// are lost). Moves the domain's routing key and grants (the management
    /// API, as an administrator), then tells the copy its new epoch.
    #[command(after_help = "Examples:
  orderflow domains promote customer-uk
                              orderflow domains promote catalog-de --force   # names the changes lost")]
    Promote {
        /// The replica's process name (`customer-uk`) or label (`customer@uk`).
        copy: String,
        /// Promote even though the replica lacks changes the primary made.
        #[arg(long)]
        force: bool,
        /// How long to wait for the replica's feed to drain first.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait_s: u64,
        #[arg(long)]
        json: bool,
    },
    /// Load the seed data (customers, catalog, distributors) through the domains' own requests.
    Seed {
        /// The folder of customers.jsonl, catalog.jsonl and distributors.jsonl.
        #[arg(long, default_value = "data/domains")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Show a count per reason, then every dead-lettered message with its reason, node and original routing key.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send a dead-lettered message (by message id or order id) back to where it failed, once.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead-lettered message (those in the queue when the replay starts).
        #[arg(long)]
        all: bool,
        /// Also send back messages that were replayed before and failed again.
        #[arg(long)]
        force: bool,
    },
    /// Remove dead letters for good: by message id or order id, by reason, or all.
    Discard {
        #[arg(required_unless_present_any = ["reason", "all"], conflicts_with_all = ["reason", "all"])]
        id: Option<String>,
        /// Discard every dead letter whose reason contains this text.
        #[arg(long, conflicts_with = "all")]
        reason: Option<String>,
        /// Discard every dead letter.
        #[arg(long)]
        all: bool,
    },
}
