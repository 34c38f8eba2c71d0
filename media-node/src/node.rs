//! What a media node runs: one [`NodeConfig`], read from either of the two files
//! `media-node --config FILE` accepts, and the node's identity from its environment.
//!
//! - The user's manifests (CallCenter, Queues, Seats, Secrets; standalone mode): checked by the
//!   loader in [`crate::config`], then built into a [`NodeConfig`] with the operator's own
//!   `build_node_config`, so both modes serve exactly the same thing.
//! - The operator's `node-config.yaml` (from the call center's ConfigMap), recognised by its
//!   `format` field. The same bytes arrive later over gRPC (`ApplyConfig`), so they are read
//!   and checked by the same [`parse_node_config`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use switchboard_crds::validate;
use switchboard_proto::node_config::{NODE_CONFIG_FORMAT, NodeConfig};

use crate::call::trunks::TrunkCredentials;
use crate::config::{self, ConfigError};
use crate::sip::digest::DEFAULT_NONCE_LIFETIME;
use crate::sip::{RegistrarPolicy, SeatAccount, SipSettings};

/// Where the running config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The user's manifests, built into a node config here.
    Standalone,
    /// A `node-config.yaml` written by the operator.
    Operator,
}

/// A config file, read and checked.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub source: ConfigSource,
    pub config: NodeConfig,
    /// Standalone: each trunk's credentials from the file's own Secret manifests (the node
    /// config holds only references to them). `None` from the operator's file, whose trunk
    /// Secrets are mounted into the pod.
    pub trunk_credentials: Option<BTreeMap<String, TrunkCredentials>>,
}

/// Why a config file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A standalone file with a bad document, field or reference.
    #[error(transparent)]
    Standalone(#[from] ConfigError),
    /// A node config the node cannot use.
    #[error(transparent)]
    NodeConfig(#[from] NodeConfigError),
}

/// Why a node config (file or `ApplyConfig` snapshot) is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeConfigError {
    #[error("the node config is not UTF-8")]
    NotUtf8,
    #[error("the node config is not valid: {0}")]
    Yaml(String),
    #[error(
        "unknown node-config format {found:?}: this media node reads {NODE_CONFIG_FORMAT:?} \
         (is the operator newer than the node image?)"
    )]
    UnknownFormat { found: String },
    #[error("node config, {field}: {message}")]
    Field { field: String, message: String },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> NodeConfigError {
    NodeConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads `path` in whichever of the two forms it is.
pub fn load(path: &Path) -> Result<LoadedConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses a config file's text in whichever of the two forms it is.
pub fn parse(text: &str) -> Result<LoadedConfig, LoadError> {
    if is_node_config(text) {
        return Ok(LoadedConfig {
            source: ConfigSource::Operator,
            config: parse_node_config(text.as_bytes())?,
            trunk_credentials: None,
        });
    }
    let file = config::parse(text)?;
    let config = file.node_config()?;
    // The same checks as for the operator's file: the registrar relies on them.
    check(&config)?;
    let trunk_credentials = file.trunk_credentials(&config.trunk_secrets)?;
    Ok(LoadedConfig {
        source: ConfigSource::Standalone,
        config,
        trunk_credentials: Some(trunk_credentials),
    })
}

/// A node config is one mapping with a `format` field; manifests have `kind` instead. Anything
/// unreadable goes to the manifest loader, whose errors name the document.
fn is_node_config(text: &str) -> bool {
    let Some(first) = serde_yaml::Deserializer::from_str(text).next() else {
        return false;
    };
    match serde_yaml::Value::deserialize(first) {
        Ok(serde_yaml::Value::Mapping(m)) => m.contains_key("format") && !m.contains_key("kind"),
        _ => false,
    }
}

/// Reads and checks a serialised node config (a file or an `ApplyConfig` snapshot).
pub fn parse_node_config(bytes: &[u8]) -> Result<NodeConfig, NodeConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|_| NodeConfigError::NotUtf8)?;
    // The format first, on its own: a future format may not deserialise as this one, and
    // "unknown format" is the useful message then.
    #[derive(Deserialize)]
    struct Format {
        format: Option<String>,
    }
    let format = serde_yaml::from_str::<Format>(text)
        .map_err(|e| NodeConfigError::Yaml(e.to_string()))?
        .format
        .unwrap_or_default();
    if format != NODE_CONFIG_FORMAT {
        return Err(NodeConfigError::UnknownFormat { found: format });
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let config: NodeConfig = serde_path_to_error::deserialize(de)
        .map_err(|e| field_error(e.path().to_string(), e.into_inner().to_string()))?;
    check(&config)?;
    Ok(config)
}

/// The checks a node makes before it serves a config: the API's own rules for every object,
/// and what the registrar relies on (one seat per extension, a usable HA1). The operator only
/// ever writes configs that pass; this guards against a hand-edited ConfigMap or a bug.
pub fn check(config: &NodeConfig) -> Result<(), NodeConfigError> {
    if config.call_center.is_empty() {
        return Err(field_error("callCenter", "must not be empty"));
    }
    if config.generation < 0 {
        return Err(field_error("generation", "must not be negative"));
    }
    if let Some(e) = validate::call_center(&config.spec).0.into_iter().next() {
        return Err(field_error(e.field, e.message));
    }
    let mut queues = BTreeSet::new();
    for (i, q) in config.queues.iter().enumerate() {
        if !queues.insert(q.name.as_str()) {
            return Err(field_error(
                format!("queues[{i}].name"),
                format!("duplicate queue {:?}", q.name),
            ));
        }
        if let Some(e) = validate::queue(&q.spec, &q.name).0.into_iter().next() {
            return Err(field_error(format!("queues[{i}].{}", e.field), e.message));
        }
    }
    let mut names = BTreeSet::new();
    let mut extensions = BTreeSet::new();
    for (i, s) in config.seats.iter().enumerate() {
        if !names.insert(s.name.as_str()) {
            return Err(field_error(
                format!("seats[{i}].name"),
                format!("duplicate seat {:?}", s.name),
            ));
        }
        if let Some(e) = validate::seat(&s.spec).0.into_iter().next() {
            return Err(field_error(format!("seats[{i}].{}", e.field), e.message));
        }
        if !extensions.insert(s.spec.extension.as_str()) {
            return Err(field_error(
                format!("seats[{i}].spec.extension"),
                format!("extension {} belongs to another seat", s.spec.extension),
            ));
        }
        let hex_md5 = s.ha1.len() == 32
            && s.ha1
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_md5 {
            return Err(field_error(
                format!("seats[{i}].ha1"),
                "must be a lowercase hex MD5 (32 digits)",
            ));
        }
    }
    Ok(())
}

/// The registrar's view of a config: the realm and each seat's HA1, exactly as the config
/// carries them (the node never sees a seat's password).
pub fn sip_settings(config: &NodeConfig) -> SipSettings {
    SipSettings {
        realm: config.spec.sip.domain.clone(),
        seats: config
            .seats
            .iter()
            .map(|s| SeatAccount {
                extension: s.spec.extension.clone(),
                ha1: s.ha1.clone(),
                max_contacts: usize::try_from(s.spec.max_contacts).unwrap_or(usize::MAX),
            })
            .collect(),
        policy: RegistrarPolicy::default(),
        nonce_lifetime: DEFAULT_NONCE_LIFETIME,
    }
}

/// Seat name → extension, for entry points that route to a seat.
pub fn seat_extensions(config: &NodeConfig) -> std::collections::BTreeMap<String, String> {
    config
        .seats
        .iter()
        .map(|s| (s.name.clone(), s.spec.extension.clone()))
        .collect()
}

/// What the operator's StatefulSet tells a node about itself (downward API and fixed values).
/// Every field is optional: standalone, none of them is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEnv {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_ip: Option<String>,
    pub node_ip: Option<String>,
    pub call_center: Option<String>,
    pub lease_name: Option<String>,
    pub recordings_dir: Option<String>,
}

impl PodEnv {
    /// Reads the variables through `var` (the process environment in `main`); empty values
    /// count as unset.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        Self {
            pod_name: get("POD_NAME"),
            pod_namespace: get("POD_NAMESPACE"),
            pod_ip: get("POD_IP"),
            node_ip: get("NODE_IP"),
            call_center: get("SWITCHBOARD_CALL_CENTER"),
            lease_name: get("SWITCHBOARD_LEASE_NAME"),
            recordings_dir: get("SWITCHBOARD_RECORDINGS_DIR"),
        }
    }

    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The node's name: the pod name in a cluster, else the host name (standalone).
    pub fn node_name(&self, host_name: Option<String>) -> String {
        self.pod_name
            .clone()
            .or(host_name.filter(|h| !h.trim().is_empty()))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| "standalone".to_string())
    }
}

/// This machine's host name, for the node name outside a cluster.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// Every prompt a config can play: menu prompts, music on hold, surveys, the voicemail
/// greeting, and the node's own announcement set ([`crate::media::prompts::BUILT_IN`]).
pub fn prompts_used(config: &NodeConfig) -> BTreeSet<String> {
    let spec = &config.spec;
    let mut used: BTreeSet<String> = crate::media::prompts::BUILT_IN
        .iter()
        .map(|p| p.to_string())
        .collect();
    used.insert(spec.voicemail.greeting.clone());
    for menu in &spec.ivr_menus {
        used.insert(menu.prompt.clone());
        used.extend(menu.invalid_prompt.iter().cloned());
        used.extend(menu.timeout_prompt.iter().cloned());
    }
    for queue in &config.queues {
        used.insert(queue.spec.music_on_hold.clone());
        if let Some(survey) = &queue.spec.survey {
            used.insert(survey.prompt.clone());
            used.extend(survey.thank_you_prompt.iter().cloned());
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn example(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn minimal() -> NodeConfig {
        parse(&example("minimal.yaml"))
            .expect("minimal loads")
            .config
    }

    #[test]
    fn manifests_become_the_same_node_config_the_operator_writes() {
        let loaded = parse(&example("minimal.yaml")).expect("loads");
        assert_eq!(loaded.source, ConfigSource::Standalone);
        let yaml = loaded.config.to_yaml().expect("yaml");
        let again = parse(&yaml).expect("the rendered config loads");
        assert_eq!(again.source, ConfigSource::Operator);
        assert_eq!(again.config, loaded.config);
    }

    #[test]
    fn an_unknown_format_is_refused_by_name() {
        let yaml = minimal()
            .to_yaml()
            .expect("yaml")
            .replace(NODE_CONFIG_FORMAT, "switchboard.dev/node-config/v9");
        let err = parse(&yaml).expect_err("unknown format").to_string();
        assert!(
            err.contains("unknown node-config format \"switchboard.dev/node-config/v9\"")
                && err.contains(NODE_CONFIG_FORMAT),
            "{err}"
        );
        let err = parse_node_config(b"callCenter: x\n").expect_err("no format");
        assert_eq!(
            err,
            NodeConfigError::UnknownFormat {
                found: String::new()
            }
        );
    }

    #[test]
    fn a_broken_node_config_names_the_field() {
        let yaml = minimal()
            .to_yaml()
            .expect("yaml")
            .replace("generation: 1", "generation: soon");
        let err = parse_node_config(yaml.as_bytes()).expect_err("bad generation");
        assert!(
            matches!(&err, NodeConfigError::Field { field, .. } if field == "generation"),
            "{err}"
        );

        let mut c = minimal();
        c.seats[1].spec.extension = c.seats[0].spec.extension.clone();
        let err = check(&c).expect_err("duplicate extension").to_string();
        assert!(
            err.starts_with("node config, seats[1].spec.extension:"),
            "{err}"
        );

        let mut c = minimal();
        c.seats[0].ha1 = "practice-1001".into();
        let err = check(&c).expect_err("not a hash").to_string();
        assert!(err.contains("seats[0].ha1"), "{err}");

        let mut c = minimal();
        c.spec.rtp.max_port = 1;
        let err = check(&c).expect_err("invalid spec").to_string();
        assert!(err.contains("spec.rtp.maxPort"), "{err}");

        assert_eq!(
            parse_node_config(&[0xff, 0xfe]).expect_err("binary"),
            NodeConfigError::NotUtf8
        );
        assert!(matches!(
            parse_node_config(b"format: [").expect_err("not yaml"),
            NodeConfigError::Yaml(_)
        ));
    }

    #[test]
    fn a_manifest_error_still_names_document_kind_and_field() {
        let text = example("minimal.yaml").replace("maxPort: 30199", "maxPort: 29000");
        let err = parse(&text).expect_err("inverted range").to_string();
        assert!(
            err.contains("document 2 (CallCenter \"minimal\")") && err.contains("spec.rtp.maxPort"),
            "{err}"
        );
    }

    #[test]
    fn the_registrar_gets_the_configs_ha1_values() {
        let c = minimal();
        let settings = sip_settings(&c);
        assert_eq!(settings.realm, "localhost");
        let got: BTreeMap<_, _> = settings
            .seats
            .iter()
            .map(|s| (s.extension.as_str(), s.ha1.as_str()))
            .collect();
        let want: BTreeMap<_, _> = c
            .seats
            .iter()
            .map(|s| (s.spec.extension.as_str(), s.ha1.as_str()))
            .collect();
        assert_eq!(got, want);
        // One HA1 function for both sides: the SIP layer's agrees with the config's.
        assert_eq!(
            got["1001"],
            crate::sip::digest::ha1("1001", "localhost", "practice-1001")
        );
    }

    #[test]
    fn the_pod_name_is_the_node_name_and_empty_values_are_unset() {
        let env = PodEnv::from_lookup(|name| match name {
            "POD_NAME" => Some("campus-media-0".into()),
            "POD_IP" => Some("10.1.2.3".into()),
            "NODE_IP" => Some("".into()),
            _ => None,
        });
        assert_eq!(env.node_name(Some("host".into())), "campus-media-0");
        assert_eq!(env.pod_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(env.node_ip, None);
        let standalone = PodEnv::from_lookup(|_| None);
        assert_eq!(standalone, PodEnv::default());
        assert_eq!(standalone.node_name(Some("laptop\n".into())), "laptop");
        assert_eq!(standalone.node_name(None), "standalone");
    }
}
