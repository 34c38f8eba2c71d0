//! The standalone configuration: the same CallCenter, Queue, Seat and Secret manifests a user
//! would `kubectl apply`, read from one YAML file and checked with the API's own rules.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use switchboard_crds::{CallCenter, CallCenterSpec, Queue, QueueSpec, Seat, SeatSpec, validate};
use switchboard_proto::node_config::{
    NodeConfig, ObjectKind, Problem, ProblemReason, SecretLookup, TrunkSecret, build_node_config,
};

use crate::call::trunks::TrunkCredentials;

/// Why a configuration file cannot be served, naming the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("document {index}: not YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({kind} {name:?}): {field}: {message}")]
    Field {
        index: usize,
        kind: String,
        name: String,
        field: String,
        message: String,
    },
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
    #[error("{0}")]
    Center(String),
    /// References between objects that do not resolve (a missing Secret, Queue or Seat, a
    /// duplicate extension), all of them.
    #[error("{0}")]
    References(Problems),
    /// A trunk Secret the node config names is not in this file (it changed since it was
    /// checked).
    #[error(
        "Secret {secret:?} of trunk {trunk} has no key {key:?} (was the file changed while the node started?)"
    )]
    TrunkSecret {
        trunk: String,
        secret: String,
        key: String,
    },
}

/// One Kubernetes-style object from the file.
#[derive(Debug, Clone)]
pub struct Named<T> {
    pub name: String,
    pub spec: T,
}

/// Everything the file declares, checked.
#[derive(Debug, Default)]
pub struct StandaloneConfig {
    pub call_center: Option<Named<CallCenterSpec>>,
    pub queues: Vec<Named<QueueSpec>>,
    pub seats: Vec<Named<SeatSpec>>,
    /// Secret name → key → value (`data` decoded, `stringData` as is).
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<StandaloneConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses and checks a multi-document YAML stream.
pub fn parse(text: &str) -> Result<StandaloneConfig, ConfigError> {
    let mut config = StandaloneConfig::default();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = serde_yaml::Value::deserialize(de)
            .map_err(|source| ConfigError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let header: Header =
            serde_yaml::from_value(value.clone()).map_err(|e| ConfigError::Document {
                index,
                message: e.to_string(),
            })?;
        let kind = header.kind.unwrap_or_default();
        let name = header.metadata.name.ok_or_else(|| ConfigError::Document {
            index,
            message: format!("{kind} without metadata.name"),
        })?;
        let api_version = header.api_version.unwrap_or_default();
        let field_error = |field: String, message: String| ConfigError::Field {
            index,
            kind: kind.clone(),
            name: name.clone(),
            field,
            message,
        };
        match (api_version.as_str(), kind.as_str()) {
            ("switchboard.dev/v1alpha1", "CallCenter") => {
                let spec: CallCenterSpec = spec_of(&value, &field_error)?;
                first_error(validate::call_center(&spec), &field_error)?;
                if let Some(other) = &config.call_center {
                    return Err(ConfigError::Document {
                        index,
                        message: format!(
                            "a second CallCenter {name:?}; this file already serves {:?}",
                            other.name
                        ),
                    });
                }
                config.call_center = Some(Named { name, spec });
            }
            ("switchboard.dev/v1alpha1", "Queue") => {
                let spec: QueueSpec = spec_of(&value, &field_error)?;
                first_error(validate::queue(&spec, &name), &field_error)?;
                duplicate(index, "Queue", &name, config.queues.iter().map(|q| &q.name))?;
                config.queues.push(Named { name, spec });
            }
            ("switchboard.dev/v1alpha1", "Seat") => {
                let spec: SeatSpec = spec_of(&value, &field_error)?;
                first_error(validate::seat(&spec), &field_error)?;
                duplicate(index, "Seat", &name, config.seats.iter().map(|s| &s.name))?;
                config.seats.push(Named { name, spec });
            }
            ("v1", "Secret") => {
                config
                    .secrets
                    .insert(name.clone(), secret_values(&value, &field_error)?);
            }
            _ => {
                return Err(ConfigError::Document {
                    index,
                    message: format!(
                        "{api_version} {kind} {name:?} is not a Switchboard kind or a Secret"
                    ),
                });
            }
        }
    }
    Ok(config)
}

/// Names are unique per kind, as in a namespace: a second object of the same name would
/// silently replace the first in a cluster, so a file must not rely on it.
fn duplicate<'a>(
    index: usize,
    kind: &str,
    name: &str,
    mut earlier: impl Iterator<Item = &'a String>,
) -> Result<(), ConfigError> {
    if earlier.any(|n| n == name) {
        return Err(ConfigError::Document {
            index,
            message: format!("a second {kind} named {name:?}; names are unique per kind"),
        });
    }
    Ok(())
}

fn spec_of<T: DeserializeOwned>(
    value: &serde_yaml::Value,
    field_error: &dyn Fn(String, String) -> ConfigError,
) -> Result<T, ConfigError> {
    let spec = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    if spec.is_null() {
        return Err(field_error("spec".into(), "Required value".into()));
    }
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        field_error(field, e.into_inner().to_string())
    })
}

fn first_error(
    errors: validate::FieldErrors,
    field_error: &dyn Fn(String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match errors.0.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(field_error(e.field, e.message)),
    }
}

fn secret_values(
    value: &serde_yaml::Value,
    field_error: &dyn Fn(String, String) -> ConfigError,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    if let Some(data) = value.get("data").and_then(|d| d.as_mapping()) {
        for (k, v) in data {
            let key = k.as_str().unwrap_or_default().to_string();
            let encoded = v.as_str().unwrap_or_default();
            let decoded = base64_decode(encoded)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    field_error(format!("data.{key}"), "not base64-encoded UTF-8".into())
                })?;
            out.insert(key, decoded);
        }
    }
    if let Some(data) = value.get("stringData").and_then(|d| d.as_mapping()) {
        for (k, v) in data {
            let key = k.as_str().unwrap_or_default().to_string();
            let text = match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => {
                    return Err(field_error(
                        format!("stringData.{key}"),
                        "must be a string".into(),
                    ));
                }
            };
            out.insert(key, text);
        }
    }
    Ok(out)
}

/// Standard base64 with padding, as Kubernetes writes Secret data.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// The namespace standalone objects are given: `build_node_config` serves only the objects of
/// the CallCenter's namespace, and a file has no namespaces.
pub const STANDALONE_NAMESPACE: &str = "standalone";

impl StandaloneConfig {
    /// Turns the file into the [`NodeConfig`] the node runs, with the operator's own
    /// [`build_node_config`], so both modes serve the same thing from the same objects.
    ///
    /// In a cluster a broken reference leaves one object out and the rest keeps working; a
    /// file is edited by a person who is about to run it, so here every [`Problem`] is fatal
    /// and all of them are reported at once, naming object and field.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let center = self
            .call_center
            .as_ref()
            .ok_or_else(|| ConfigError::Center("the file declares no CallCenter".into()))?;
        let mut problems = Vec::new();
        // build_node_config ignores objects of other centers (they are another center's
        // business in a cluster); in one file they are a typo.
        let mut foreign = |kind: ObjectKind, name: &str, call_center: &str| {
            if call_center != center.name {
                problems.push(Problem {
                    kind,
                    name: name.to_string(),
                    field: "spec.callCenter".into(),
                    reason: ProblemReason::Invalid,
                    message: format!(
                        "{call_center:?} is not the file's CallCenter {:?}",
                        center.name
                    ),
                });
            }
        };
        for q in &self.queues {
            foreign(ObjectKind::Queue, &q.name, &q.spec.call_center);
        }
        for s in &self.seats {
            foreign(ObjectKind::Seat, &s.name, &s.spec.call_center);
        }
        // Kubernetes objects as the API would hold them, all in one namespace.
        let cc = in_standalone_namespace(CallCenter::new(&center.name, center.spec.clone()));
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|q| in_standalone_namespace(Queue::new(&q.name, q.spec.clone())))
            .collect();
        let seats: Vec<Seat> = self
            .seats
            .iter()
            .map(|s| in_standalone_namespace(Seat::new(&s.name, s.spec.clone())))
            .collect();
        // Generation 1: the first (and, standalone, only) config this node runs.
        let (config, found) = build_node_config(&cc, &queues, &seats, &self.secrets, 1)
            .map_err(|e| ConfigError::Center(e.to_string()))?;
        problems.extend(found);
        if problems.is_empty() {
            Ok(config)
        } else {
            problems.sort();
            Err(ConfigError::References(Problems(problems)))
        }
    }

    /// The credentials of each trunk in `trunk_secrets` (the node config's, whose Secrets and
    /// keys [`Self::node_config`] has checked), from this file's Secret manifests. Standalone
    /// the node keeps them in memory: there is no mounted Secret, and writing the password to
    /// disk would leave a second copy the user does not know about.
    pub fn trunk_credentials(
        &self,
        trunk_secrets: &[TrunkSecret],
    ) -> Result<BTreeMap<String, TrunkCredentials>, ConfigError> {
        trunk_secrets
            .iter()
            .map(|s| {
                let value = |key: &str| {
                    self.secrets
                        .value(&s.secret_name, key)
                        .ok()
                        .and_then(|v| String::from_utf8(v).ok())
                        .ok_or_else(|| ConfigError::TrunkSecret {
                            trunk: s.trunk.clone(),
                            secret: s.secret_name.clone(),
                            key: key.to_string(),
                        })
                };
                let credentials = TrunkCredentials::from_secret_values(
                    &value(&s.username_key)?,
                    &value(&s.password_key)?,
                );
                Ok((s.trunk.clone(), credentials))
            })
            .collect()
    }
}

fn in_standalone_namespace<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().namespace = Some(STANDALONE_NAMESPACE.to_string());
    object
}

/// Every broken reference of a file, one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // In a cluster these parts would be left out; a file must be fixed before it runs.
        write!(
            f,
            "{} broken reference(s); fix them to serve this file:",
            self.0.len()
        )?;
        for p in &self.0 {
            write!(f, "\n  {} {:?}: {}: {}", p.kind, p.name, p.field, p.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
