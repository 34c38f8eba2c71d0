//! `media-node --config FILE --check` on both kinds of file: the user's manifests and the
//! operator's node-config.yaml. A file the node cannot serve exits 2 and names what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NODE: &str = env!("CARGO_BIN_EXE_media-node");

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(dir: &tempfile::TempDir, text: &str) -> Output {
    let file: PathBuf = dir.path().join("config.yaml");
    std::fs::write(&file, text).expect("write the file");
    Command::new(NODE)
        .arg("--config")
        .arg(&file)
        .arg("--check")
        .output()
        .expect("run media-node")
}

#[test]
fn both_kinds_of_file_check_and_broken_ones_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");

    let out = check(&dir, &example("minimal.yaml"));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("standalone manifests for CallCenter \"minimal\""),
        "{stdout}"
    );

    // The node config this file becomes, as the operator would write it.
    let config = media_node::node::parse(&example("minimal.yaml"))
        .expect("loads")
        .config
        .to_yaml()
        .expect("yaml");
    let out = check(&dir, &config);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("node config for CallCenter"));

    let broken = example("minimal.yaml").replace("key: \"1002\"", "key: \"9999\"");
    let out = check(&dir, &broken);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Seat \"agent-1002\": spec.credentials.key"),
        "{stderr}"
    );

    let unknown = config.replace(
        "switchboard.dev/node-config/v1alpha1",
        "switchboard.dev/node-config/v2",
    );
    let out = check(&dir, &unknown);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown node-config format \"switchboard.dev/node-config/v2\""),
        "{stderr}"
    );

    let bad_field = example("minimal.yaml").replace("maxPort: 30199", "maxPort: 29000");
    let out = check(&dir, &bad_field);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 2 (CallCenter \"minimal\"): spec.rtp.maxPort"),
        "{stderr}"
    );
}
