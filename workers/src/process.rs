//! What every worker binary's `main` is: the process's row of the process
//! table (`topology::Process`) gives its command line (`--help` saying what
//! it is, the queues it consumes and the settings it reads, `--version`,
//! nothing else), then logging, settings, the metrics endpoint, running
//! until SIGTERM, the stop line and the exit.
//!
//! A binary hands [`main`] its process's name and its [`Run`], a plain
//! function of this crate that returns the boxed run: the transport and the
//! stage are compiled once, here, rather than once per binary (18 binaries
//! each compiling their own copy made the first release build 4 times longer).

use futures::future::BoxFuture;
use shared::{help, settings::Settings, telemetry};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use topology::Process;

/// A process's whole run: its stage, domain or service on the broker until `shutdown`.
pub type Run = fn(Settings, CancellationToken) -> BoxFuture<'static, anyhow::Result<()>>;

/// The command line of the binary `binary`: `--help`, `--version` and no arguments.
pub fn command(binary: &'static str) -> clap::Command {
    let processes: Vec<Process> = Process::all().into_iter().filter(|p| p.binary() == binary).collect();
    let Some(process) = processes.first().copied() else {
        panic!("{binary} is no process of the stack (topology::Process::all)");
    };
    let queues: Vec<String> = processes.iter().flat_map(|p| topology::consumed_queues(*p)).collect();
    let replicas = if processes.len() > 1 { " (a replica its own request queue and feed)" } else { "" };
    let consumes = format!("It consumes {}{replicas}.", list(&queues));
    let mut groups = vec![help::CONNECTION];
    groups.extend(process.reads().into_iter().map(help::group));
    clap::Command::new(binary)
        .version(env!("CARGO_PKG_VERSION"))
        .about(process.about())
        .long_about(format!(
            "{}\n\n{consumes} It takes no arguments: its settings come from the environment. It runs \
             until SIGTERM or Ctrl-C, reconnecting to the broker when it must, and exits 0 after \
             finishing the messages in hand (1 on an error it cannot recover from).",
            process.about()
        ))
        .after_help(help::environment(&groups))
}

/// `a`, `a and b`, `a, b and c`.
fn list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The whole `main` of a worker binary: its command line (which exits on
/// `--help`, `--version` or any argument before anything starts), logging,
/// settings, the metrics endpoint, `run` until SIGTERM, the stop line, the exit.
pub fn main(binary: &'static str, run: Run) -> ExitCode {
    crate::memory::one_arena();
    command(binary).get_matches();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return telemetry::report_exit(Err(error.into())),
    };
    runtime.block_on(serve(binary, run))
}

async fn serve(binary: &'static str, run: Run) -> ExitCode {
    telemetry::init(binary);
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return telemetry::report_exit(Err(error)),
    };
    let instance = settings.instance_id(binary);
    let shutdown = shared::shutdown::on_signal();
    if let Some(addr) = settings.metrics_addr {
        if let Err(error) = crate::metrics::serve(addr, binary, &instance, shutdown.clone()).await {
            return telemetry::report_exit(Err(error));
        }
    }
    let result = run(settings, shutdown).await;
    telemetry::stopped(binary, &instance, &result);
    telemetry::report_exit(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_the_process_its_queues_and_its_settings() {
        let help = command("picklist").render_long_help().to_string();
        for expected in ["picklist", "orderflow.picklist", "AMQP_URL", "ORDERFLOW_PICKLIST_BATCH", "SIGTERM"]
        {
            assert!(help.contains(expected), "{expected} missing from:\n{help}");
        }
        let customer = command("customer").render_long_help().to_string();
        for expected in ["orderflow.domain.customer", "orderflow.replica.customer.uk", "ORDERFLOW_REGION"] {
            assert!(customer.contains(expected), "{expected} missing from:\n{customer}");
        }
        for process in Process::all() {
            command(process.binary()).debug_assert();
        }
    }
}
