//! `orderflow`: the user's command line. It publishes orders into the
//! pipeline and asks the tracker where they are; it never touches a node's data.

mod dlq;
mod generate;
mod publish;
mod tracker_client;
mod watch;

use clap::{Parser, Subcommand};
use shared::{settings::Settings, telemetry};
use std::{path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(name = "orderflow", version, about = "Publish orders into the orderflow pipeline and follow them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish generated orders (--count) or orders from a JSON-lines file (--file); prints their ids.
    Publish {
        /// Number of generated valid orders.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        count: Option<usize>,
        /// Orders per second (default: as fast as the broker confirms).
        #[arg(long)]
        rate: Option<f64>,
        /// Mix in declined, out-of-stock and invalid orders, as the demo does.
        #[arg(long, requires = "count")]
        mixed: bool,
        /// One order (JSON object) per line.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print an order's state and history.
    Status {
        id: String,
        /// Print JSON: order_id, state, terminal, history.
        #[arg(long)]
        json: bool,
    },
    /// Show live counts of orders per state (Ctrl-C to stop).
    Watch {
        /// Print the counts once and exit.
        #[arg(long)]
        once: bool,
    },
    /// The dead-letter queue: list what is there and why, or replay it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Wait until every order listed in a file is terminal; print counts per state as JSON.
    Wait {
        /// File with one order id per line (what `publish` prints).
        #[arg(long)]
        ids: PathBuf,
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show every dead-lettered message with its reason, node and original routing key.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send a dead-lettered message (by message id or order id) back to where it failed, once.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead-lettered message.
        #[arg(long)]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let cli = Cli::parse();
    let result = async {
        let settings = Settings::from_env()?;
        match cli.command {
            Command::Publish { count, rate, mixed, file } => {
                let orders = match (count, file) {
                    (Some(n), _) => generate::orders(n, mixed),
                    (None, Some(path)) => publish::read_orders_file(&path, settings.max_message_bytes)?,
                    (None, None) => unreachable!("clap requires --count or --file"),
                };
                publish::publish(&settings, orders, rate).await.map(|_| true)
            }
            Command::Status { id, json } => watch::status(&settings, &id, json).await.map(|_| true),
            Command::Watch { once } => watch::watch(&settings, once).await.map(|_| true),
            Command::Wait { ids, timeout } => watch::wait(&settings, &ids, timeout).await,
            Command::Dlq { command: DlqCommand::List { json } } => {
                dlq::list(&settings, json).await.map(|_| true)
            }
            Command::Dlq { command: DlqCommand::Replay { id, .. } } => dlq::replay(&settings, id).await,
        }
    };
    match result.await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
