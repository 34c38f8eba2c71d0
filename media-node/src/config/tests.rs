use super::*;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_campus_example_is_a_complete_fifty_seat_center() {
    let config = parse(&example("campus.yaml")).expect("campus example loads");
    let node = config.node_config().expect("campus references resolve");
    assert_eq!(node.seats.len(), 52);
    assert_eq!(node.namespace, STANDALONE_NAMESPACE);
    let agents = config
        .seats
        .iter()
        .filter(|s| s.spec.role == switchboard_crds::seat::SeatRole::Agent)
        .count();
    let supervisors = config.seats.len() - agents;
    assert_eq!((agents, supervisors), (50, 2));
    assert_eq!(config.queues.len(), 2);
    let center = config.call_center.expect("a CallCenter");
    assert_eq!(
        center.spec.high_availability.mode,
        switchboard_crds::callcenter::HaMode::HotStandby
    );
    assert_eq!(center.spec.trunks[0].channels.limit, 30);
    assert_eq!(
        center
            .spec
            .business_hours
            .as_ref()
            .map(|b| b.time_zone.as_str()),
        Some("Asia/Shanghai")
    );
}

#[test]
fn the_minimal_example_loads() {
    let config = parse(&example("minimal.yaml")).expect("minimal example loads");
    let node = config.node_config().expect("minimal references resolve");
    assert_eq!((config.queues.len(), config.seats.len()), (1, 2));
    assert_eq!((node.queues.len(), node.seats.len()), (1, 2));
    // The registrar gets the HA1 of "1001:localhost:practice-1001", never the password.
    assert_eq!(
        node.seats[0].ha1,
        switchboard_proto::node_config::digest_ha1("1001", "localhost", b"practice-1001")
    );
    assert!(!node.to_yaml().expect("yaml").contains("practice-1001"));
}

#[test]
fn a_bad_field_names_the_document_and_the_field() {
    let text = example("minimal.yaml").replace("maxPort: 30199", "maxPort: 29000");
    let err = parse(&text).expect_err("inverted range");
    let msg = err.to_string();
    assert!(msg.contains("document 2 (CallCenter \"minimal\")"), "{msg}");
    assert!(msg.contains("spec.rtp.maxPort"), "{msg}");

    let text = example("minimal.yaml").replace("strategy: LongestIdle", "strategy: Loudest");
    let msg = parse(&text).expect_err("bad enum").to_string();
    assert!(
        msg.contains("Queue \"support\"") && msg.contains("spec.strategy"),
        "{msg}"
    );
}

fn reference_error(text: &str) -> String {
    let err = parse(text)
        .expect("parses")
        .node_config()
        .expect_err("a broken reference");
    assert!(matches!(err, ConfigError::References(_)), "{err:?}");
    err.to_string()
}

#[test]
fn broken_references_are_named() {
    let msg = reference_error(
        &example("minimal.yaml").replace("extension: \"1002\"", "extension: \"1001\""),
    );
    assert!(
        msg.contains("Seat \"agent-1002\": spec.extension")
            && msg.contains("used by Seat agent-1001"),
        "{msg}"
    );

    let msg = reference_error(&example("minimal.yaml").replace("target: support", "target: sales"));
    assert!(
        msg.contains("CallCenter \"minimal\": spec.entryPoints[0].route.target")
            && msg.contains("\"sales\""),
        "{msg}"
    );

    let msg = reference_error(&example("minimal.yaml").replace("key: \"1002\"", "key: \"9999\""));
    assert!(
        msg.contains("Seat \"agent-1002\": spec.credentials.key") && msg.contains("\"9999\""),
        "{msg}"
    );

    let msg = reference_error(&example("minimal.yaml").replace(
        "name: minimal-seat-passwords, key: \"1002\"",
        "name: nope, key: \"1002\"",
    ));
    assert!(msg.contains("spec.credentials.name"), "{msg}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = example("minimal.yaml")
        .replace("queues: [{name: support}]", "queues: [{name: night}]")
        .replacen("callCenter: minimal", "callCenter: other", 1);
    let msg = reference_error(&text);
    assert!(
        msg.contains("Queue \"support\": spec.callCenter: \"other\" is not the file's CallCenter"),
        "{msg}"
    );
    assert!(
        msg.contains("Seat \"agent-1001\": spec.queues[0].name"),
        "{msg}"
    );
    assert!(
        msg.contains("Seat \"agent-1002\": spec.queues[0].name"),
        "{msg}"
    );
    // The queue of another center is not this one's, so the route to it is broken too.
    assert!(
        msg.contains("CallCenter \"minimal\": spec.entryPoints[0].route.target"),
        "{msg}"
    );
    assert!(
        msg.starts_with("4 broken reference(s); fix them to serve this file:\n"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 5, "{msg}");
}

#[test]
fn a_second_object_of_the_same_name_is_refused() {
    let text = example("minimal.yaml").replace("name: agent-1002", "name: agent-1001");
    let msg = parse(&text).expect_err("duplicate name").to_string();
    assert_eq!(
        msg,
        "document 5: a second Seat named \"agent-1001\"; names are unique per kind"
    );
}

#[test]
fn a_file_without_a_call_center_is_refused() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n";
    let msg = parse(text)
        .expect("parses")
        .node_config()
        .expect_err("no center")
        .to_string();
    assert_eq!(msg, "the file declares no CallCenter");
}

#[test]
fn secret_data_is_base64_decoded() {
    assert_eq!(
        base64_decode("cHJhY3RpY2UtMTAwMQ==").as_deref(),
        Some(&b"practice-1001"[..])
    );
    assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
    assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
    assert_eq!(base64_decode("!!!!"), None);
    assert_eq!(base64_decode("abc"), None);
}
