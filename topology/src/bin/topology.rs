//! `topology apply` declares the whole topology on the broker of `AMQP_URL`;
//! `topology export` writes the definitions JSON (and a rabbitmq.conf that
//! loads it) for the compose broker; `topology processes` lists the binaries
//! a stack runs (for the scripts and the Dockerfile), `topology workflow`
//! prints the workflow definition with what is derived from it, `topology
//! ready` says whether every process of a stack consumes its queue
//! (`up.sh`), and `topology remove` deletes a stack's users and vhost
//! (`down.sh --purge`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use topology::definitions::{definitions_sized, UserSpec};
use topology::management::secret_file_name;
use topology::permissions::{grant, Role};

/// The password kept in `<dir>/<user>` (see [`secret_file_name`]), if any.
fn existing_secret(dir: &std::path::Path, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(secret_file_name(user))).ok()?;
    Some(text.trim().to_string())
}

/// The password kept in `<dir>/<user>`, generated (and written with mode
/// 0600, in a folder of mode 0700) when missing.
fn secret(dir: &std::path::Path, user: &str) -> anyhow::Result<String> {
    let path = dir.join(secret_file_name(user));
    if let Some(existing) = existing_secret(dir, user) {
        return Ok(existing);
    }
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder.create(dir).with_context(|| format!("creating {}", dir.display()))?;
    let password: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..32).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(&path)?
        .write_all(password.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}

const AFTER_HELP: &str = "\
Examples:
  topology processes                        # what a stack runs, one per line
  topology processes --binaries             # the binaries those run (customer-uk runs customer)
  topology workflow                         # the workflow definition and what derives from it
  AMQP_URL=amqp://guest:guest@127.0.0.1:5672/shop topology apply --create-vhost
  topology export --out run/compose --vhost / # definitions.json for the compose broker
  topology ready                            # exit 0 when every process consumes its queue
  AMQP_URL=amqp://guest:guest@127.0.0.1:5672/shop topology remove   # the stack's users and vhost

Environment:
  AMQP_URL                     apply, ready, remove: the broker, credentials and vhost [default: amqp://guest:guest@127.0.0.1:5672/%2f]
  ORDERFLOW_MGMT_URL           apply --create-vhost/--create-users, remove: management API [default: http://127.0.0.1:15672]
  ORDERFLOW_MGMT_USER, ORDERFLOW_MGMT_PASSWORD   its credentials [default: AMQP_URL's]
  ORDERFLOW_SECRETS_DIR, ORDERFLOW_USER_PREFIX   apply --create-users: see the options
  ORDERFLOW_AMQP_USER, ORDERFLOW_AMQP_PASSWORD(_FILE)   export: the application user

Exit codes: 0 done, 1 error (broker or management API unreachable, refused...), 2 usage error.";

#[derive(Parser)]
#[command(
    name = "topology",
    version,
    about = "Apply, export or remove orderflow's RabbitMQ topology; list a stack's processes and whether they are ready; print the workflow",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every long-running process of a stack, one per line (services
    /// first, the domains last).
    #[command(alias = "nodes")]
    Processes {
        /// Print the binaries they run instead (a domain's replicas run its binary).
        #[arg(long)]
        binaries: bool,
    },
    /// Print the workflow definition: per node, the states it accepts and
    /// produces and where it may forward elements; the change cut-offs.
    Workflow,
    /// Declare every exchange, queue and binding on the broker at AMQP_URL.
    Apply(ApplyArgs),
    /// Print the AMQP_USER=... and AMQP_PASSWORD_FILE=... a process of ROLE
    /// (a node, tracker, publisher or support) runs with in the stack of
    /// AMQP_URL, its password in --secrets-dir (what `scripts/up.sh` uses).
    Credentials {
        role: String,
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        #[arg(long, env = "ORDERFLOW_SECRETS_DIR")]
        secrets_dir: PathBuf,
        #[arg(long, env = "ORDERFLOW_USER_PREFIX", default_value = "orderflow-")]
        user_prefix: String,
    },
    /// Exit 0 when every process of AMQP_URL's stack consumes its queue (one
    /// consumer at least on each process's first queue, asked of the broker
    /// now); else print, on stderr, each that does not yet and exit 1
    /// (`scripts/up.sh` waits on it).
    Ready {
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
    },
    /// Remove a stack from the broker: every broker user of AMQP_URL's stack
    /// (one per role, named after its vhost) and the vhost itself, with its
    /// queues and messages (never `/`). Says what it deletes; the processes
    /// must be stopped first (`scripts/down.sh --purge` stops them, runs
    /// this, and removes the run directory).
    Remove {
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        #[arg(long, env = "ORDERFLOW_USER_PREFIX", default_value = "orderflow-")]
        user_prefix: String,
        /// Keep the vhost (its queues and messages); delete only the users.
        #[arg(long)]
        keep_vhost: bool,
    },
    /// Write definitions.json and rabbitmq.conf into a folder.
    Export(ExportArgs),
}

/// `topology apply`'s arguments.
#[derive(clap::Args)]
struct ApplyArgs {
    #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// First create AMQP_URL's vhost (and grant its user full rights) through the management API.
    #[arg(long)]
    create_vhost: bool,
    /// Also create one least-privilege user per node, the tracker and the publisher,
    /// with passwords kept in (or generated into) files of --secrets-dir.
    #[arg(long, requires = "secrets_dir")]
    create_users: bool,
    #[arg(long, env = "ORDERFLOW_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Prefix of those users' names.
    #[arg(long, env = "ORDERFLOW_USER_PREFIX", default_value = "orderflow-")]
    user_prefix: String,
    /// Members of each quorum queue on a cluster (3 survives the loss of a
    /// node); queue arguments are immutable, so choose before the first apply.
    #[arg(long, env = "ORDERFLOW_QUORUM_SIZE")]
    quorum_size: Option<u32>,
}

/// `topology export`'s arguments.
#[derive(clap::Args)]
struct ExportArgs {
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
    /// Prefix of the per-role users' names.
    #[arg(long, env = "ORDERFLOW_USER_PREFIX", default_value = "orderflow-")]
    user_prefix: String,
    /// Keep each role's password in DIR/<role>/<user> instead of <out>/secrets/<user>:
    /// one folder per role, so that each container mounts only its own.
    #[arg(long, value_name = "DIR")]
    role_secrets: Option<PathBuf>,
    /// Members of each quorum queue (3 on a three-node cluster; a single
    /// node makes one whatever is asked).
    #[arg(long, env = "ORDERFLOW_QUORUM_SIZE")]
    quorum_size: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Processes { binaries } => {
            let mut printed: Vec<String> = Vec::new();
            for process in topology::all_processes() {
                let name =
                    if binaries { topology::processes::binary_of(&process).0.to_string() } else { process };
                if !printed.contains(&name) {
                    println!("{name}");
                    printed.push(name);
                }
            }
        }
        Command::Workflow => print_workflow(),
        Command::Apply(args) => apply(args).await?,
        Command::Ready { amqp_url } => {
            if !ready(&amqp_url).await? {
                std::process::exit(1);
            }
        }
        Command::Remove { amqp_url, user_prefix, keep_vhost } => {
            remove(&amqp_url, &user_prefix, keep_vhost).await?
        }
        Command::Credentials { role, amqp_url, secrets_dir, user_prefix } => {
            let role = Role::from_name(&role).with_context(|| {
                let names: Vec<&str> = Role::all().into_iter().map(Role::name).collect();
                format!("no role {role:?} (one of: {})", names.join(", "))
            })?;
            let (_, _, vhost) = topology::management::amqp_url_parts(&amqp_url)?;
            let user = role.user(&user_prefix, &vhost);
            println!("AMQP_USER={user}");
            println!("AMQP_PASSWORD_FILE={}", secrets_dir.join(secret_file_name(&user)).display());
        }
        Command::Export(args) => export(args)?,
    }
    Ok(())
}

/// `topology apply`: the vhost (when asked), the stack's users with their
/// grants (when asked), then every exchange, queue and binding.
async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let ApplyArgs { amqp_url, create_vhost, create_users, secrets_dir, user_prefix, quorum_size } = args;
    let (user, _, vhost) = topology::management::amqp_url_parts(&amqp_url)?;
    let management = topology::management::Management::from_env(&amqp_url)?;
    if create_vhost {
        // A new vhost of an old name has no promotions: forget any record left of them.
        if !management.vhost_exists(&vhost).await? {
            management.delete_global_parameter(&topology::promotion::parameter_name(&vhost)).await?;
        }
        management.create_vhost(&vhost).await?;
        management.set_permissions(&vhost, &user, ".*", ".*", ".*").await?;
    }
    if let (true, Some(dir)) = (create_users, secrets_dir) {
        for role in Role::all() {
            let user = role.user(&user_prefix, &vhost);
            // Never change the password of a user whose processes this run directory did not start.
            if existing_secret(&dir, &user).is_none() && management.user_exists(&user).await? {
                anyhow::bail!(
                    "the broker user {user} already exists and its password is not in {}: another run \
                     directory set this stack up (use its ORDERFLOW_RUN_DIR), or its run directory is \
                     gone: remove the stack's users with `scripts/down.sh --purge` (or `topology remove`) \
                     and run again",
                    dir.display()
                );
            }
            let password = secret(&dir, &user)?;
            management.apply_grant(&vhost, &user, &password, &grant(role)).await?;
        }
    }
    let connection = lapin::Connection::connect(
        topology::management::amqp_urls(&amqp_url)[0],
        lapin::ConnectionProperties::default(),
    )
    .await
    .context("cannot connect to the broker at AMQP_URL")?;
    let channel = connection.create_channel().await?;
    topology::declare_all_sized(&channel, quorum_size).await.context("declaring the topology")?;
    connection.close(200, "topology applied".into()).await?;
    // A replica an operator promoted stays the primary (its routes, its grants).
    match topology::promotion::reapply(&management, &vhost, &user_prefix).await {
        Ok(0) => {}
        Ok(n) => println!("kept {n} promoted primaries (orderflow domains status shows them)"),
        Err(error) => eprintln!(
            "warning: could not read or keep the domains' promotions (an administrator's management \
             credentials are needed: ORDERFLOW_MGMT_USER): {error:#}"
        ),
    }
    println!("topology applied");
    Ok(())
}

/// `topology export`: definitions.json (the administrator, one user per
/// role with its grant, the topology) and the broker's config line loading it.
fn export(args: ExportArgs) -> anyhow::Result<()> {
    let ExportArgs {
        out,
        broker_path,
        vhost,
        user,
        password,
        password_file,
        user_prefix,
        role_secrets,
        quorum_size,
    } = args;
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
    // The administrator: the management UI's user, the operator, and what `up.sh` needs to set up a stack of its own.
    let users = [UserSpec { name: user, password, tags: "administrator".into() }];
    // One least-privilege user per role, its password in <out>/secrets/<user>
    // (or <role-secrets>/<role>/<user>).
    let mut roles = Vec::new();
    for role in Role::all() {
        let name = role.user(&user_prefix, &vhost);
        let folder = match &role_secrets {
            Some(dir) => dir.join(role.name()),
            None => out.join("secrets"),
        };
        let password = secret(&folder, &name)?;
        roles.push((UserSpec { name, password, tags: String::new() }, grant(role)));
    }
    let document = definitions_sized(&vhost, &users, &roles, quorum_size);
    std::fs::write(out.join("definitions.json"), serde_json::to_vec_pretty(&document)?)?;
    let seen_by_broker = broker_path.unwrap_or_else(|| out.clone());
    std::fs::write(
        out.join("20-orderflow.conf"),
        format!("load_definitions = {}\n", seen_by_broker.join("definitions.json").display()),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `topology ready`: whether every process consumes its first queue; says which do not.
async fn ready(amqp_url: &str) -> anyhow::Result<bool> {
    let url = topology::management::amqp_urls(amqp_url)[0];
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("cannot connect to the broker at AMQP_URL")?;
    let channel = connection.create_channel().await?;
    let mut all = true;
    for process in topology::Process::all() {
        let Some(queue) = topology::consumed_queues(process).into_iter().next() else { continue };
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(queue.as_str().into(), passive, Default::default()).await;
        let consumers = declared.map(|q| q.consumer_count()).context("the topology is not applied")?;
        if consumers == 0 {
            eprintln!("{}: no consumer on {queue} yet", process.name());
            all = false;
        }
    }
    let _ = connection.close(200, "probed".into()).await;
    Ok(all)
}

/// `topology remove`: the stack's users, then its vhost (unless `/` or kept).
async fn remove(amqp_url: &str, user_prefix: &str, keep_vhost: bool) -> anyhow::Result<()> {
    let (_, _, vhost) = topology::management::amqp_url_parts(amqp_url)?;
    let management = topology::management::Management::from_env(amqp_url)?;
    let mut removed = 0;
    for role in Role::all() {
        let user = role.user(user_prefix, &vhost);
        if management.user_exists(&user).await? {
            eprintln!("deleting the broker user {user}");
            management.delete_user(&user).await?;
            removed += 1;
        }
    }
    management.delete_global_parameter(&topology::promotion::parameter_name(&vhost)).await?;
    if vhost == "/" || keep_vhost {
        eprintln!("keeping the vhost {vhost:?}");
    } else if management.vhost_exists(&vhost).await? {
        eprintln!("deleting the vhost {vhost:?} with its queues and messages");
        management.delete_vhost(&vhost).await?;
    }
    println!("removed {removed} broker users of the stack on vhost {vhost:?}");
    Ok(())
}

fn print_workflow() {
    // The versions new orders take, as intake reads them (`ORDERFLOW_WORKFLOWS`).
    let deployed = std::env::var("ORDERFLOW_WORKFLOWS").unwrap_or_default();
    let deployed = topology::workflow::Deployed::parse(&deployed).unwrap_or_default();
    for workflow in topology::workflow::WORKFLOWS {
        let taken = deployed.to_start(workflow.name).is_some_and(|w| w.version == workflow.version);
        let taken = if taken { " (new orders naming it take this version)" } else { "" };
        println!("workflow {} version {}{taken}", workflow.name, workflow.version);
        print_definition(workflow);
    }
    let services: Vec<&str> =
        topology::Process::all().into_iter().filter(|p| p.node().is_none()).map(|p| p.name()).collect();
    println!("services: {}", services.join(", "));
}

/// One definition: per node what it accepts, produces and forwards to; its cut-offs.
fn print_definition(workflow: &topology::workflow::Workflow) {
    let names = |items: Vec<String>| if items.is_empty() { "-".to_string() } else { items.join(", ") };
    let unused: Vec<String> =
        workflow.nodes().filter(|n| !workflow.uses(*n)).map(|n| n.to_string()).collect();
    if !unused.is_empty() {
        println!("not used by this version (they serve the others): {}", unused.join(", "));
    }
    println!("{:<11} {:<38} {:<58} forwards to", "node", "accepts", "produces");
    for node in workflow.nodes().filter(|n| workflow.uses(*n)) {
        let accepts = names(workflow.accepts(node).iter().map(|s| s.to_string()).collect());
        let produces = names(workflow.produces(node).iter().map(|s| s.to_string()).collect());
        let forwards = names(workflow.forwards_to(node).iter().map(|n| n.to_string()).collect());
        println!("{:<11} {accepts:<38} {produces:<58} {forwards}", node.name());
    }
    for cut in workflow.cut_offs {
        match cut.change {
            topology::workflow::ChangeType::Cancel => println!("cut-off: no cancel from {} on", cut.from),
            change => println!("cut-off: the {} cannot change from {} on", change.noun(), cut.from),
        }
    }
    let ends: Vec<String> = topology::OrderState::all()
        .into_iter()
        .filter(|s| workflow.is_terminal(*s))
        .map(|s| s.to_string())
        .collect();
    println!("ends in: {}; completed (its capture due) at {}", ends.join(", "), workflow.completes_at);
}
