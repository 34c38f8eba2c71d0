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
    config
        .check_references()
        .expect("campus references resolve");
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
    config
        .check_references()
        .expect("minimal references resolve");
    assert_eq!((config.queues.len(), config.seats.len()), (1, 2));
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

#[test]
fn broken_references_are_named() {
    let text = example("minimal.yaml").replace("extension: \"1002\"", "extension: \"1001\"");
    let msg = parse(&text)
        .expect("parses")
        .check_references()
        .expect_err("dup")
        .to_string();
    assert!(
        msg.contains("spec.extension") && msg.contains("agent-1001"),
        "{msg}"
    );

    let text = example("minimal.yaml").replace("target: support", "target: sales");
    let msg = parse(&text)
        .expect("parses")
        .check_references()
        .expect_err("missing queue")
        .to_string();
    assert!(
        msg.contains("spec.entryPoints[0].route.target") && msg.contains("\"sales\""),
        "{msg}"
    );
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
