//! The ConfigMap `<cc>-node-config`: the last good node config, so a node that restarts while
//! the operator is away starts with it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{
    BuildError, CONFIG_FILE, CONFIG_GENERATION_ANNOTATION, CONFIG_HASH_ANNOTATION, Center,
};
use switchboard_proto::node_config::{NodeConfig, RenderedNodeConfig};

/// The API server refuses a ConfigMap whose data exceeds 1 MiB.
pub const MAX_CONFIG_MAP_BYTES: usize = 1024 * 1024;

/// The ConfigMap holding `node-config.yaml`, annotated with its hash and generation.
pub fn config_map(
    center: &Center<'_>,
    config: &NodeConfig,
    rendered: &RenderedNodeConfig,
) -> Result<ConfigMap, BuildError> {
    let size = CONFIG_FILE.len() + rendered.yaml.len();
    if size > MAX_CONFIG_MAP_BYTES {
        return Err(BuildError::ConfigMapTooLarge {
            name: center.name.clone(),
            size,
            limit: MAX_CONFIG_MAP_BYTES,
        });
    }
    let mut metadata = center.meta(&center.names.config_map);
    metadata.annotations = Some(BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.to_string(), rendered.hash.clone()),
        (
            CONFIG_GENERATION_ANNOTATION.to_string(),
            config.generation.to_string(),
        ),
    ]));
    Ok(ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            rendered.yaml.clone(),
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::*;
    use switchboard_crds::callcenter::HaMode;

    #[test]
    fn the_config_map_holds_the_serialised_config_with_hash_and_generation() {
        let cc = center("campus", HaMode::None);
        let config = config(&cc);
        let rendered = config.render().expect("renders");
        let cm =
            config_map(&Center::new(&cc).expect("center"), &config, &rendered).expect("builds");
        let data = cm.data.expect("data");
        assert_eq!(data.len(), 1);
        let back: NodeConfig =
            serde_yaml::from_str(&data["node-config.yaml"]).expect("node config YAML");
        assert_eq!(back, config);
        let annotations = cm.metadata.annotations.expect("annotations");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], rendered.hash);
        assert_eq!(annotations[CONFIG_GENERATION_ANNOTATION], "3");
        assert!(!data["node-config.yaml"].contains("hxKKUgrRSND5PN8Z"));
    }

    #[test]
    fn a_config_above_one_mebibyte_is_refused_with_its_size() {
        let cc = center("campus", HaMode::None);
        let config = config(&cc);
        let rendered = RenderedNodeConfig {
            yaml: "x".repeat(MAX_CONFIG_MAP_BYTES),
            hash: "0".repeat(32),
        };
        let err = config_map(&Center::new(&cc).expect("center"), &config, &rendered)
            .expect_err("too large");
        assert_eq!(
            err.to_string(),
            format!(
                "the node config of CallCenter campus is {} bytes, above the ConfigMap limit of 1048576 bytes",
                MAX_CONFIG_MAP_BYTES + CONFIG_FILE.len()
            )
        );
    }
}
