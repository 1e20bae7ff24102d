//! The docker-compose file (no Docker engine runs here): it parses, runs
//! RabbitMQ 4 with the management UI and loaded definitions, does not use the
//! guest account, and names every worker and the tracker.

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
    for node in tests::NODES.iter().chain(&["tracker"]) {
        let service = services.get(Value::from(*node)).unwrap_or_else(|| panic!("no service {node}"));
        assert!(service.get("build").is_some(), "{node} is not built from the workspace");
        let env = serde_yaml::to_string(&service["environment"]).unwrap();
        assert!(env.contains("AMQP_URL"), "{node} has no AMQP_URL");
    }
}
