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

/// The minimal example with trunk `pstn` whose `credentials` are `credentials` (flow YAML)
/// and an extra Secret document `secret`.
fn with_trunk(credentials: &str, secret: &str) -> String {
    example("minimal.yaml").replace(
        "  entryPoints:\n",
        &format!(
            "  trunks:\n  - name: pstn\n    peer: {{host: 192.0.2.7}}\n    credentials: {credentials}\n  entryPoints:\n"
        ),
    ) + "---\n"
        + secret
}

#[test]
fn standalone_trunk_credentials_come_from_the_files_secret() {
    // stringData with the default keys; a block scalar's line break is dropped as it is from
    // a mounted file.
    let text = with_trunk(
        "{secretName: pstn-credentials}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pstn-credentials}\n\
         stringData:\n  username: acct\n  password: |\n    s3cret\n",
    );
    let config = parse(&text).expect("parses");
    let node = config.node_config().expect("the trunk's Secret resolves");
    let credentials = config
        .trunk_credentials(&node.trunk_secrets)
        .expect("values");
    let pstn = credentials.get("pstn").expect("pstn");
    assert_eq!(
        (pstn.username.as_str(), pstn.password.as_str()),
        ("acct", "s3cret")
    );
    // The node config itself carries only the reference, never the password.
    assert!(!node.to_yaml().expect("yaml").contains("s3cret"));

    // base64 `data` and keys named in the trunk spec.
    let text = with_trunk(
        "{secretName: carrier, usernameKey: user, passwordKey: pass}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: carrier}\n\
         data: {user: YWNjdA==, pass: czNjcmV0}\n",
    );
    let config = parse(&text).expect("parses");
    let node = config.node_config().expect("resolves");
    let credentials = config
        .trunk_credentials(&node.trunk_secrets)
        .expect("values");
    assert_eq!(
        credentials.get("pstn"),
        Some(&crate::call::trunks::TrunkCredentials::from_secret_values(
            "acct", "s3cret"
        ))
    );
}

#[test]
fn a_trunk_without_its_secret_or_key_is_refused_naming_the_field() {
    let msg = reference_error(&with_trunk(
        "{secretName: pstn-credentials}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: other}\nstringData: {a: b}\n",
    ));
    assert!(
        msg.contains("CallCenter \"minimal\": spec.trunks[0].credentials.secretName")
            && msg.contains("Secret \"pstn-credentials\" not found"),
        "{msg}"
    );

    let msg = reference_error(&with_trunk(
        "{secretName: pstn-credentials}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pstn-credentials}\n\
         stringData: {username: acct}\n",
    ));
    assert!(
        msg.contains("CallCenter \"minimal\": spec.trunks[0].credentials.passwordKey")
            && msg.contains("no key \"password\""),
        "{msg}"
    );

    let msg = reference_error(&with_trunk(
        "{secretName: pstn-credentials, usernameKey: user}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pstn-credentials}\n\
         stringData: {username: acct, password: pw}\n",
    ));
    assert!(
        msg.contains("spec.trunks[0].credentials.usernameKey") && msg.contains("no key \"user\""),
        "{msg}"
    );
}

#[test]
fn credentials_for_a_secret_no_longer_in_the_file_are_an_error() {
    let config = parse(&example("minimal.yaml")).expect("parses");
    let gone = TrunkSecret {
        trunk: "pstn".into(),
        secret_name: "pstn-credentials".into(),
        username_key: "username".into(),
        password_key: "password".into(),
        mount_path: "/nowhere".into(),
    };
    let msg = config
        .trunk_credentials(&[gone])
        .expect_err("no such Secret")
        .to_string();
    assert!(
        msg.contains("Secret \"pstn-credentials\" of trunk pstn has no key \"username\""),
        "{msg}"
    );
    assert!(config.trunk_credentials(&[]).expect("no trunks").is_empty());
}
