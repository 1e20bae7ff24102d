//! `topology apply` declares the whole topology on the broker of `AMQP_URL`;
//! `topology export` writes the definitions JSON (and a rabbitmq.conf that
//! loads it) for the compose broker.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use topology::definitions::{definitions, UserSpec};

#[derive(Parser)]
#[command(about = "Apply or export orderflow's RabbitMQ topology")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Declare every exchange, queue and binding on the broker at AMQP_URL.
    Apply {
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// First create AMQP_URL's vhost (and grant its user full rights) through the management API.
        #[arg(long)]
        create_vhost: bool,
    },
    /// Write definitions.json and rabbitmq.conf into a folder.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Where the broker sees that folder (default: the same path).
        #[arg(long)]
        broker_path: Option<PathBuf>,
        #[arg(long, default_value = "/")]
        vhost: String,
        /// The application user created in the definitions.
        #[arg(long, env = "ORDERFLOW_AMQP_USER", default_value = "orderflow")]
        user: String,
        /// Its password: from the environment or a secret file, never from code.
        #[arg(long, env = "ORDERFLOW_AMQP_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, env = "ORDERFLOW_AMQP_PASSWORD_FILE")]
        password_file: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Apply { amqp_url, create_vhost } => {
            if create_vhost {
                let (user, _, vhost) = topology::management::amqp_url_parts(&amqp_url)?;
                let management = topology::management::Management::from_env(&amqp_url)?;
                management.create_vhost(&vhost).await?;
                management.set_permissions(&vhost, &user, ".*", ".*", ".*").await?;
            }
            let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
                .await
                .context("cannot connect to the broker at AMQP_URL")?;
            let channel = connection.create_channel().await?;
            topology::declare_all(&channel).await.context("declaring the topology")?;
            connection.close(200, "topology applied".into()).await?;
            println!("topology applied");
        }
        Command::Export { out, broker_path, vhost, user, password, password_file } => {
            let password = match (password, password_file) {
                (Some(p), _) => p,
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim()
                    .to_string(),
                (None, None) => anyhow::bail!(
                    "set ORDERFLOW_AMQP_PASSWORD or ORDERFLOW_AMQP_PASSWORD_FILE for the application user"
                ),
            };
            std::fs::create_dir_all(&out)?;
            let users = [UserSpec { name: user, password, tags: "management".into() }];
            let document = definitions(&vhost, &users);
            std::fs::write(out.join("definitions.json"), serde_json::to_vec_pretty(&document)?)?;
            let seen_by_broker = broker_path.unwrap_or_else(|| out.clone());
            std::fs::write(
                out.join("20-orderflow.conf"),
                format!("load_definitions = {}\n", seen_by_broker.join("definitions.json").display()),
            )?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
