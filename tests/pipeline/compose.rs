//! The docker-compose file (no Docker engine runs here): it is valid by the
//! Compose Specification's JSON schema (vendored in tests/fixtures), runs
//! RabbitMQ 4 with the management UI and loaded definitions, does not use
//! the guest account, runs exactly the processes of the workflow definition
//! from one image built once, each process mounting only its own secret,
//! with every image tag pinned.

use serde_yaml::Value;

fn compose() -> (String, Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    let mut compose: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    compose.apply_merge().expect("YAML merge keys resolve");
    (text, compose)
}

#[test]
fn compose_file_is_valid_by_the_compose_spec_schema() {
    let schema_text = include_str!("../fixtures/compose-spec.json");
    let schema: serde_json::Value = serde_json::from_str(schema_text).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the compose-spec schema compiles");
    let (_, compose) = compose();
    let document: serde_json::Value = serde_json::to_value(&compose).expect("YAML as JSON");
    let errors: Vec<String> =
        validator.iter_errors(&document).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "docker-compose.yml breaks the compose spec:\n{}", errors.join("\n"));
    // The schema does catch mistakes: a misspelt key, a port of the wrong type.
    let mut broken = document.clone();
    broken["services"]["tracker"]["enviroment"] = serde_json::json!({});
    assert!(!validator.is_valid(&broken), "a misspelt key passes the schema");
    let mut broken = document;
    broken["services"]["tracker"]["ports"] = serde_json::json!({"8089": 8089});
    assert!(!validator.is_valid(&broken), "ports as a map pass the schema");
}

/// An image reference whose tag is an exact version: `name:1.2.3[-variant]`
/// (or a digest), not `latest`, not a major version alone.
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let Some((_, tag)) = image.rsplit_once(':') else { return false };
    let version = tag.split('-').next().unwrap_or_default();
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() >= 2 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn every_image_is_pinned_and_each_process_mounts_only_its_own_secret() {
    for (image, expected) in [
        ("rabbitmq:4-management", false),
        ("rust:1-bookworm", false),
        ("debian:bookworm-slim", false),
        ("orderflow:latest", false),
        ("rabbitmq", false),
        ("rabbitmq:4.1.0-management", true),
        ("debian:12.11-slim", true),
    ] {
        assert_eq!(pinned(image), expected, "{image}");
    }
    let (_, compose) = compose();
    let services = compose["services"].as_mapping().expect("services");
    let mut built = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or_else(|| panic!("{name} names no image"));
        assert!(pinned(image), "{name}: image {image} is not pinned to a version");
        if service.get("build").is_some() {
            built.push(image.to_string());
        }
    }
    assert_eq!(built.len(), 1, "one service builds the image, the others reuse it: {built:?}");
    let dockerfile = include_str!("../../Dockerfile");
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        assert!(pinned(image), "Dockerfile: {image} is not pinned to a version");
    }
    assert!(dockerfile.contains("--mount=type=cache"), "the Dockerfile caches cargo's dependencies");

    // Each process mounts its own secret volume and no other (nor the definitions with every password).
    let secret_volumes: Vec<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().filter(|k| k.starts_with("secret-")).map(String::from))
        .collect();
    assert_eq!(secret_volumes.len(), topology::all_processes().len(), "{secret_volumes:?}");
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let mounts: Vec<&str> = service["volumes"]
            .as_sequence()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let sources: Vec<&str> = mounts.iter().map(|m| m.split(':').next().unwrap()).collect();
        let secrets: Vec<&&str> = sources.iter().filter(|s| s.starts_with("secret-")).collect();
        match name {
            "definitions" => {
                assert_eq!(secrets.len(), secret_volumes.len(), "definitions writes every secret")
            }
            broker if broker.starts_with("rabbitmq") => {
                assert!(secrets.is_empty(), "the broker mounts no secret: {mounts:?}");
                if broker != "rabbitmq" {
                    // A node of the `cluster` profile: it knows its peers by name.
                    assert_eq!(service["profiles"][0].as_str(), Some("cluster"), "{broker}");
                    let cluster =
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/30-cluster.conf");
                    let peers = std::fs::read_to_string(cluster).expect("the cluster conf");
                    for n in 1..=3 {
                        assert!(peers.contains(&format!("rabbit@rabbitmq-{n}")), "{peers}");
                    }
                    let node = service["environment"]["RABBITMQ_NODENAME"].as_str().unwrap();
                    assert_eq!(node, format!("rabbit@{}", service["hostname"].as_str().unwrap()));
                }
                // The orderflow conf is one file in conf.d, not a volume over the folder.
                let conf = mounts.iter().find(|m| m.contains("/etc/rabbitmq/conf.d")).expect("conf.d mount");
                let (source, target) = (conf.split(':').next().unwrap(), conf.split(':').nth(1).unwrap());
                assert!(source.starts_with("./") && target.ends_with(".conf"), "{conf}");
                let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(source);
                let text = std::fs::read_to_string(&file).expect("the conf file is in the repository");
                let definitions = mounts.iter().find(|m| m.starts_with("definitions:")).expect("definitions");
                let folder = definitions.split(':').nth(1).unwrap();
                assert_eq!(text.trim(), format!("load_definitions = {folder}/definitions.json"));
            }
            process => {
                let own = format!("secret-{process}");
                assert_eq!(secrets, [&own.as_str()], "{process} mounts {mounts:?}");
                assert!(!sources.contains(&"definitions"), "{process} mounts the definitions");
                let mount = mounts.iter().find(|m| m.starts_with(&own)).unwrap();
                let folder = mount.split(':').nth(1).unwrap();
                let file = service["environment"]["AMQP_PASSWORD_FILE"].as_str().expect("a password file");
                assert_eq!(file, format!("{folder}/orderflow-{process}"), "{process} reads another's secret");
            }
        }
    }
}

#[test]
fn compose_file_names_every_service() {
    let (text, compose) = compose();
    let services = compose["services"].as_mapping().expect("services");
    let rabbit = &services[&Value::from("rabbitmq")];
    let image = rabbit["image"].as_str().expect("rabbitmq image");
    assert!(image.starts_with("rabbitmq:4") && image.contains("management"), "{image}");
    assert!(!text.contains("guest"), "the compose stack must not use the guest account");
    // The long-running services are exactly the definition's processes, each running its binary.
    let mut running: Vec<String> = services
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str().unwrap_or_default();
            name != "definitions" && !name.starts_with("rabbitmq")
        })
        .map(|(name, service)| {
            let name = name.as_str().expect("service name").to_string();
            // A domain's replica runs the domain's binary, told its region.
            let (binary, region) = topology::processes::binary_of(&name);
            assert_eq!(service["command"][0].as_str(), Some(binary), "service {name} runs another binary");
            assert_eq!(service["environment"]["ORDERFLOW_REGION"].as_str(), region, "{name}'s region");
            name
        })
        .collect();
    running.sort();
    let mut defined: Vec<String> = topology::all_processes();
    defined.sort();
    assert_eq!(running, defined, "compose services differ from `topology processes`");
    let admin = services[&Value::from("definitions")]["environment"]["ORDERFLOW_AMQP_USER"].as_str();
    for node in topology::all_processes() {
        let node = node.as_str();
        let service = services.get(Value::from(node)).unwrap_or_else(|| panic!("no service {node}"));
        assert_eq!(service["image"], services[&Value::from("definitions")]["image"], "{node}'s image");
        let env = &service["environment"];
        assert!(env["AMQP_URL"].as_str().is_some(), "{node} has no AMQP_URL");
        let user = topology::permissions::Role::from_name(node).unwrap().user("orderflow-", "/");
        assert_eq!(env["AMQP_USER"].as_str(), Some(user.as_str()), "{node} runs as its own user");
        assert_eq!(env["ORDERFLOW_OPERATOR_USER"].as_str(), admin, "{node} trusts the compose administrator");
    }
    let tracker = &services[&Value::from("tracker")];
    let check = tracker["healthcheck"]["test"].as_sequence().expect("the tracker has a healthcheck");
    assert!(check.iter().any(|part| part.as_str().is_some_and(|p| p.contains("/health"))), "{check:?}");
}

/// The definitions the compose broker loads at boot, imported into a real
/// broker: the topology is there and a node's user can use its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_definitions_load_into_a_real_broker() {
    let vhost = format!("orderflow-test-defs-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let prefix = format!("d{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let out = std::env::temp_dir().join(&vhost);
    let output = std::process::Command::new(tests::bin_dir().join("topology"))
        .args([
            "export",
            "--out",
            out.to_str().unwrap(),
            "--vhost",
            &vhost,
            "--user",
            &format!("{prefix}admin"),
        ])
        .args(["--user-prefix", &prefix])
        .args(["--role-secrets", out.join("roles").to_str().unwrap()])
        .env("ORDERFLOW_AMQP_PASSWORD", "not-a-real-secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("definitions.json")).unwrap()).unwrap();
    let management = tests::management();
    management.import_definitions(&document).await.expect("the broker accepts the definitions");

    let user = topology::permissions::Role::Node(topology::Node::Payment).user(&prefix, &vhost);
    let secret = topology::management::secret_file_name(&user);
    // Each role's password in a folder of its own (what each container mounts), none beside the definitions.
    assert!(!out.join("secrets").exists());
    let password = std::fs::read_to_string(out.join("roles").join("payment").join(secret)).unwrap();
    let url = shared::settings::with_credentials(
        &format!("amqp://127.0.0.1:5672/{vhost}"),
        Some(&user),
        Some(password.trim()),
    );
    let result = async {
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        topology::ensure_for(
            &channel,
            &[
                topology::node_queue(topology::Node::Payment),
                topology::changes_queue(topology::Node::Payment),
            ],
        )
        .await?;
        let queue = management.queue(&vhost, "orderflow.tracker").await;
        assert!(queue.is_err(), "no such queue should exist");
        let tracker = management.queue(&vhost, topology::TRACKER_QUEUE).await?;
        assert_eq!(tracker["arguments"]["x-queue-type"], "quorum");
        anyhow::Ok(())
    }
    .await;
    let _ = management.delete_vhost(&vhost).await;
    for role in topology::permissions::Role::all() {
        let _ = management.delete_user(&role.user(&prefix, &vhost)).await;
    }
    let _ = management.delete_user(&format!("{prefix}admin")).await;
    let _ = std::fs::remove_dir_all(&out);
    result.expect("a node's user works on the imported topology");
}

/// The processes that ask the tracker reach it by its service name (the
/// customer primary asks which orders an edit reaches are still in flight;
/// so does a customer replica once promoted).
#[test]
fn the_processes_that_ask_the_tracker_know_where_it_is() {
    let (_, compose) = compose();
    let services = &compose["services"];
    assert_eq!(services["tracker"]["environment"]["ORDERFLOW_HTTP_ADDR"].as_str(), Some("0.0.0.0:8089"));
    let editors = topology::DomainCopy::all().into_iter().filter(|copy| copy.may_forward_edits());
    for copy in editors {
        let service = &services[copy.process().as_str()];
        assert_eq!(
            service["environment"]["ORDERFLOW_HTTP_ADDR"].as_str(),
            Some("tracker:8089"),
            "{}",
            copy.process()
        );
    }
}
