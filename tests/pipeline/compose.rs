//! The docker-compose file (no Docker engine runs here): it parses, runs
//! RabbitMQ 4 with the management UI and loaded definitions, does not use the
//! guest account, and runs exactly the processes of the workflow definition.

use serde_yaml::Value;

#[test]
fn compose_file_names_every_service() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    let mut compose: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    compose.apply_merge().expect("YAML merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    let rabbit = &services[&Value::from("rabbitmq")];
    let image = rabbit["image"].as_str().expect("rabbitmq image");
    assert!(image.starts_with("rabbitmq:4") && image.contains("management"), "{image}");
    assert!(!text.contains("guest"), "the compose stack must not use the guest account");
    // The long-running services are exactly the definition's processes, each running its binary.
    let mut running: Vec<String> = services
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), Some("rabbitmq" | "definitions")))
        .map(|(name, service)| {
            let name = name.as_str().expect("service name").to_string();
            assert_eq!(
                service["command"][0].as_str(),
                Some(name.as_str()),
                "service {name} runs another binary"
            );
            name
        })
        .collect();
    running.sort();
    let mut defined: Vec<String> = harness::processes().iter().map(|p| p.to_string()).collect();
    defined.sort();
    assert_eq!(running, defined, "compose services differ from `topology processes`");
    for node in harness::processes() {
        let service = services.get(Value::from(node)).unwrap_or_else(|| panic!("no service {node}"));
        assert!(service.get("build").is_some(), "{node} is not built from the workspace");
        let env = &service["environment"];
        assert!(env["AMQP_URL"].as_str().is_some(), "{node} has no AMQP_URL");
        assert_eq!(
            env["AMQP_USER"].as_str(),
            Some(format!("orderflow-{node}").as_str()),
            "{node} runs as its own user"
        );
    }
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
        .env("ORDERFLOW_AMQP_PASSWORD", "not-a-real-secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("definitions.json")).unwrap()).unwrap();
    let management = tests::management();
    management.import_definitions(&document).await.expect("the broker accepts the definitions");

    let user = topology::permissions::Role::Node(topology::Node::Payment).user(&prefix, &vhost);
    let secret = topology::permissions::secret_file_name(&user);
    let password = std::fs::read_to_string(out.join("secrets").join(secret)).unwrap();
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
