//! What every worker binary's `main` shares: its command line (`--help`
//! saying what it is and the settings it reads, `--version`, nothing else),
//! then logging, settings, running until SIGTERM, the stop line and the exit.

use shared::{help, settings::Settings, telemetry};
use std::{future::Future, process::ExitCode};
use tokio_util::sync::CancellationToken;
use topology::Node;

/// A long-running worker process, as its `--help` describes it.
pub struct Process {
    pub name: &'static str,
    pub about: &'static str,
    /// The settings it reads besides the broker's and the logs' (`shared::help`).
    pub reads: &'static [&'static [&'static str]],
}

impl Process {
    /// A workflow node.
    pub const fn node(node: Node, about: &'static str) -> Process {
        Process { name: node.name(), about, reads: &[help::NODE] }
    }

    /// A domain's process.
    pub const fn domain(name: &'static str, about: &'static str) -> Process {
        Process { name, about, reads: &[help::DOMAIN] }
    }

    /// The same process reading more settings than a node's.
    pub const fn reading(self, reads: &'static [&'static [&'static str]]) -> Process {
        Process { reads, ..self }
    }

    /// The command line: `--help`, `--version` and no arguments.
    pub fn command(&self) -> clap::Command {
        let consumes = match Node::from_name(self.name) {
            Some(node) => format!(
                "It consumes {}, {} and its service queue {}.",
                node.queue(),
                node.changes_queue(),
                node.service_queue()
            ),
            None if self.name == "coordinator" => {
                let queues: Vec<String> =
                    topology::coordinator_queues().into_iter().map(|q| q.name).collect();
                format!("It consumes {}.", queues.join(", "))
            }
            None if self.name == topology::DISTRIBUTOR_SIM => {
                format!("It consumes {}.", topology::DISTRIBUTOR_SHIPMENTS_QUEUE)
            }
            None if self.name == "tracker" => {
                format!("It consumes {} and {}.", topology::TRACKER_QUEUE, topology::POLL_RESULTS_QUEUE)
            }
            None => {
                let copies: Vec<String> = topology::DomainCopy::all()
                    .into_iter()
                    .filter(|copy| copy.domain == self.name)
                    .flat_map(topology::domain_queues)
                    .map(|q| q.name)
                    .collect();
                format!("It consumes {} (a replica its own request queue and feed).", copies.join(", "))
            }
        };
        let mut groups = vec![help::CONNECTION];
        groups.extend_from_slice(self.reads);
        clap::Command::new(self.name)
            .version(env!("CARGO_PKG_VERSION"))
            .about(self.about)
            .long_about(format!(
                "{}\n\n{consumes} It takes no arguments: its settings come from the environment. It runs \
                 until SIGTERM or Ctrl-C, reconnecting to the broker when it must, and exits 0 after \
                 finishing the messages in hand (1 on an error it cannot recover from).",
                self.about
            ))
            .after_help(help::environment(&groups))
    }
}

/// The whole `main` of a worker binary: its command line (which exits on
/// `--help`, `--version` or any argument before anything starts), logging,
/// settings, run until SIGTERM, the stop line, report.
pub async fn node_main<F, Fut>(process: Process, run: F) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    process.command().get_matches();
    telemetry::init(process.name);
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return telemetry::report_exit(Err(error)),
    };
    let instance = settings.instance_id(process.name);
    let shutdown = shared::shutdown::on_signal();
    match Settings::metrics_addr() {
        Ok(Some(addr)) => {
            if let Err(error) = crate::metrics::serve(addr, process.name, &instance, shutdown.clone()).await {
                return telemetry::report_exit(Err(error));
            }
        }
        Ok(None) => {}
        Err(error) => return telemetry::report_exit(Err(error)),
    }
    let result = run(settings, shutdown).await;
    telemetry::stopped(process.name, &instance, &result);
    telemetry::report_exit(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_the_process_its_queue_and_its_settings() {
        let help = Process::node(Node::Picklist, "The picklist node.")
            .reading(&[help::NODE, help::PICKLIST])
            .command()
            .render_long_help()
            .to_string();
        for expected in ["picklist", "orderflow.picklist", "AMQP_URL", "ORDERFLOW_PICKLIST_BATCH", "SIGTERM"]
        {
            assert!(help.contains(expected), "{expected} missing from:\n{help}");
        }
        Process::node(Node::Intake, "x").command().debug_assert();
    }
}
