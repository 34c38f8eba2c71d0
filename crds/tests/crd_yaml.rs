//! The CRD YAML committed under `charts/switchboard/crds/` is exactly what `crdgen` prints, and
//! the schema has the shape the API server needs.

use std::path::Path;

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/switchboard/crds");
    let files = switchboard_crds::crd_files().expect("CRDs serialise");
    assert_eq!(files.len(), 3);
    for (name, yaml) in files {
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} is stale or missing: run `cargo run -p switchboard-crds --bin crdgen -- --write charts/switchboard/crds`",
            path.display()
        );
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds dir exists")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        vec![
            "callcenters.switchboard.dev.yaml",
            "queues.switchboard.dev.yaml",
            "seats.switchboard.dev.yaml"
        ]
    );
}

#[test]
fn the_api_reference_in_docs_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == switchboard_crds::reference::markdown(),
        "{} is stale: run `cargo run -p switchboard-crds --bin crdgen -- --markdown > docs/api.md`",
        path.display()
    );
}

/// Walks a schema and calls `f` with the path and node of every object schema.
fn walk(path: &str, node: &serde_json::Value, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
}

#[test]
fn every_field_has_a_description_and_the_kinds_share_a_category() {
    for crd in switchboard_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["switchboard".to_string()][..])
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}"
        );
        let columns = version
            .additional_printer_columns
            .as_ref()
            .map(Vec::len)
            .unwrap_or(0);
        assert!(columns >= 4, "{name} has {columns} printer columns");
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("schema serialises");
        let mut missing = Vec::new();
        // Items of a list of scalars are described by the list.
        let scalar_item = |path: &str, node: &serde_json::Value| {
            path.ends_with("[]") && node.get("type").and_then(|t| t.as_str()) != Some("object")
        };
        walk("", &schema["properties"]["spec"], &mut |path, node| {
            if node.get("description").is_none() && !scalar_item(path, node) {
                missing.push(path.to_string());
            }
        });
        walk(
            ".status",
            &schema["properties"]["status"],
            &mut |path, node| {
                // Condition's own fields are described by Kubernetes; ours must be described.
                if node.get("description").is_none()
                    && !path.contains(".conditions[]")
                    && !path.contains(".agents.")
                {
                    missing.push(path.to_string());
                }
            },
        );
        assert!(
            missing.is_empty(),
            "{name}: fields without description: {missing:?}"
        );
    }
}
