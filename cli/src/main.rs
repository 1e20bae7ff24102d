//! `orderflow`: the user's command line. It publishes orders into the
//! pipeline and asks the tracker where they are; it never touches a node's data.

mod args;
mod call;
mod change;
mod dlq;
mod domain_session;
mod domains;
mod exit;
mod orders;
mod promote;
mod publish;
mod report;
mod values;
mod watch;

use args::{CallCommand, Cli, Command, DlqCommand};
use clap::{CommandFactory, FromArgMatches};
use exit::Outcome;
use shared::{settings::Settings, telemetry};
use std::process::ExitCode;

/// What the command logs without `RUST_LOG`: warnings, but not lapin's own
/// reports about a connection it is closing as the command ends.
const LOG_FILTER: &str = "warn,lapin=off";

#[tokio::main]
async fn main() -> ExitCode {
    let mut command = Cli::command().after_long_help(args::after_help());
    let matches = command.get_matches_mut();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.format(&mut command).exit());
    if let Command::Publish { count: None, file: None, .. } = cli.command {
        command
            .find_subcommand_mut("publish")
            .expect("the publish subcommand")
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "say which orders to publish: --count N (generated orders) or --file F (one JSON order per line)",
            )
            .exit();
    }
    telemetry::init_with(LOG_FILTER);
    match run(cli.command).await {
        Ok(outcome) => outcome.code(),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Outcome> {
    let settings = Settings::from_env()?;
    match command {
        Command::Customer { command } => domains::customer(&settings, command).await,
        Command::Catalog { command } => domains::catalog(&settings, command).await,
        Command::Distributor { command } => domains::distributor(&settings, command).await,
        Command::Domains { command } => domains::domains(&settings, command).await,
        Command::Receive { distributor, sku, qty, shipment, po, file } => {
            let receipts = match (distributor, shipment, file) {
                (Some(distributor_id), Some(shipment_id), _) => {
                    vec![domains::receipt_line(shipment_id, distributor_id, sku, qty, po)]
                }
                (None, _, Some(file)) => domains::read_receipts(&file)?,
                _ => unreachable!("clap requires --distributor (with --shipment) or --file"),
            };
            domains::receive(&settings, receipts).await
        }
        Command::Stock { sku, json } => domains::stock(&settings, &sku, json).await,
        Command::Publish { count, rate, mixed, file, directed, wait, timeout } => {
            let orders = match (count, file) {
                (Some(n), _) => shared::generate::orders(n, mixed),
                (None, Some(path)) => publish::read_orders_file(&path, settings.max_message_bytes)?,
                (None, None) => unreachable!("main refuses a publish without --count or --file"),
            };
            let wait = wait.then_some(timeout);
            publish::publish(&settings, orders, publish::Publishing { rate, directed, wait }).await
        }
        Command::Change { id, ship_to, ship_to_file, shipping_method, card_file, mode } => {
            let asked = change::Asked { ship_to, ship_to_file, shipping_method, card_file };
            change::change(&settings, id, asked, mode.mode()).await
        }
        Command::Cancel { id, mode } => {
            change::request(&settings, id, shared::change::Change::Cancel, mode.mode()).await
        }
        Command::Call { status: Some(CallCommand::Status { request_id, token, wait }), .. } => {
            call::status(&settings, &request_id, &token, wait).await
        }
        Command::Call { service, element_file, poll, callback, timeout, request_id, .. } => {
            let (Some(service), Some(file)) = (service, element_file) else {
                unreachable!("clap requires the service and --element-file")
            };
            let body = call::read_element_file(&file, settings.max_message_bytes)?;
            let how = match (poll, callback) {
                (true, _) => call::How::Poll,
                (_, Some(key)) => call::How::Callback(key),
                _ => call::How::Sync(timeout.max(std::time::Duration::from_millis(100))),
            };
            call::call(&settings, service, body, how, request_id).await
        }
        Command::Status { id, json } => watch::status(&settings, &id, json).await.map(|_| Outcome::Done),
        Command::Orders { state, at, customer, older_than, newer_than, limit, after, json } => {
            let search = shared::order_search::OrderSearch {
                state,
                at,
                customer,
                older_than,
                newer_than,
                after,
                ..Default::default()
            };
            orders::list(&settings, search, limit, json).await.map(|_| Outcome::Done)
        }
        Command::Report { last, from, to, stuck_after, json } => {
            let range = match (last, from) {
                (_, Some(from)) => report::Range::Between { from, to },
                (last, None) => report::Range::Last(last.unwrap_or(shared::report::DEFAULT_LAST)),
            };
            report::report(&settings, range, stuck_after, json).await.map(|_| Outcome::Done)
        }
        Command::Watch { once } => watch::watch(&settings, once).await.map(|_| Outcome::Done),
        Command::Wait { ids, timeout } => watch::wait(&settings, &ids, timeout).await,
        Command::Dlq { command: DlqCommand::List { json } } => {
            dlq::list(&settings, json).await.map(|_| Outcome::Done)
        }
        Command::Dlq { command: DlqCommand::Replay { id, force, .. } } => {
            dlq::replay(&settings, id, force).await
        }
        Command::Dlq { command: DlqCommand::Discard { id, reason, .. } } => {
            let selection = match (id, reason) {
                (Some(id), _) => transport::dead_letters::Selection::Id(id),
                (None, Some(reason)) => transport::dead_letters::Selection::Reason(reason),
                (None, None) => transport::dead_letters::Selection::All,
            };
            dlq::discard(&settings, selection).await.map(|_| Outcome::Done)
        }
    }
}
