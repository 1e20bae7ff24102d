//! `orderflow`: the user's command line. It publishes orders into the
//! pipeline and asks the tracker where they are; it never touches a node's data.

mod change;
mod dlq;
mod publish;
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
    /// Change an order in flight: its ship-to address or its shipping method. Prints the change id.
    Change {
        id: String,
        /// The new address as JSON: {"name":..,"line1":..,"city":..,"postal_code":..,"country":..}.
        #[arg(long, group = "what")]
        ship_to: Option<String>,
        /// The new address from a JSON file.
        #[arg(long, group = "what")]
        ship_to_file: Option<PathBuf>,
        /// standard, express or overnight.
        #[arg(long, group = "what")]
        shipping_method: Option<String>,
        #[command(flatten)]
        mode: ModeArgs,
    },
    /// Cancel an order in flight. Prints the change id.
    Cancel {
        id: String,
        #[command(flatten)]
        mode: ModeArgs,
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
    /// The dead-letter queue: list what is there and why, replay it, or discard from it.
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

#[derive(clap::Args)]
struct ModeArgs {
    /// Poll for the outcome (applied or rejected) and print it.
    #[arg(long, conflicts_with = "sync")]
    wait: bool,
    /// Immediate feedback: apply within --timeout or not at all; fails clearly when no node answers.
    #[arg(long)]
    sync: bool,
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

impl ModeArgs {
    fn mode(&self) -> change::Mode {
        let timeout = std::time::Duration::from_secs_f64(self.timeout.max(0.1));
        if self.sync {
            change::Mode::Sync(timeout)
        } else if self.wait {
            change::Mode::Wait(timeout)
        } else {
            change::Mode::Queue
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
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

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let cli = Cli::parse();
    let result = async {
        let settings = Settings::from_env()?;
        match cli.command {
            Command::Publish { count, rate, mixed, file } => {
                let orders = match (count, file) {
                    (Some(n), _) => shared::generate::orders(n, mixed),
                    (None, Some(path)) => publish::read_orders_file(&path, settings.max_message_bytes)?,
                    (None, None) => unreachable!("clap requires --count or --file"),
                };
                publish::publish(&settings, orders, rate).await.map(|_| true)
            }
            Command::Change { id, ship_to, ship_to_file, shipping_method, mode } => {
                let what = match (ship_to, ship_to_file, shipping_method) {
                    (Some(json), _, _) => {
                        shared::change::Change::ShipTo { ship_to: change::parse_ship_to(&json)? }
                    }
                    (_, Some(file), _) => {
                        let json = std::fs::read_to_string(&file)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                        shared::change::Change::ShipTo { ship_to: change::parse_ship_to(&json)? }
                    }
                    (_, _, Some(method)) => {
                        shared::change::Change::ShippingMethod { shipping_method: method }
                    }
                    _ => anyhow::bail!("say what to change: --ship-to, --ship-to-file or --shipping-method"),
                };
                change::request(&settings, &id, what, mode.mode()).await
            }
            Command::Cancel { id, mode } => {
                change::request(&settings, &id, shared::change::Change::Cancel, mode.mode()).await
            }
            Command::Status { id, json } => watch::status(&settings, &id, json).await.map(|_| true),
            Command::Watch { once } => watch::watch(&settings, once).await.map(|_| true),
            Command::Wait { ids, timeout } => watch::wait(&settings, &ids, timeout).await,
            Command::Dlq { command: DlqCommand::List { json } } => {
                dlq::list(&settings, json).await.map(|_| true)
            }
            Command::Dlq { command: DlqCommand::Replay { id, force, .. } } => {
                dlq::replay(&settings, id, force).await
            }
            Command::Dlq { command: DlqCommand::Discard { id, reason, .. } } => {
                let selection = match (id, reason) {
                    (Some(id), _) => shared::transport::dead_letters::Selection::Id(id),
                    (None, Some(reason)) => shared::transport::dead_letters::Selection::Reason(reason),
                    (None, None) => shared::transport::dead_letters::Selection::All,
                };
                dlq::discard(&settings, selection).await.map(|_| true)
            }
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
