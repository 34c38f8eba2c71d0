//! The standalone configuration: the same CallCenter, Queue, Seat and Secret manifests a user
//! would `kubectl apply`, read from one YAML file and checked with the API's own rules.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use switchboard_crds::{CallCenterSpec, QueueSpec, SeatSpec, validate};

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
                config.queues.push(Named { name, spec });
            }
            ("switchboard.dev/v1alpha1", "Seat") => {
                let spec: SeatSpec = spec_of(&value, &field_error)?;
                first_error(validate::seat(&spec), &field_error)?;
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

impl StandaloneConfig {
    /// Checks the references between objects that the API server cannot: one CallCenter, every
    /// Queue and Seat belongs to it, extensions are unique, Secrets and keys exist, and routes
    /// name Queues and Seats that exist.
    pub fn check_references(&self) -> Result<(), ConfigError> {
        let center = self
            .call_center
            .as_ref()
            .ok_or_else(|| ConfigError::Center("the file declares no CallCenter".into()))?;
        let queue_names: std::collections::BTreeSet<&str> =
            self.queues.iter().map(|q| q.name.as_str()).collect();
        let seat_names: std::collections::BTreeSet<&str> =
            self.seats.iter().map(|s| s.name.as_str()).collect();
        for q in &self.queues {
            if q.spec.call_center != center.name {
                return Err(ConfigError::Center(format!(
                    "Queue {:?}: spec.callCenter: {:?} is not the file's CallCenter {:?}",
                    q.name, q.spec.call_center, center.name
                )));
            }
            for (i, step) in q.spec.overflow.iter().enumerate() {
                if let Some(target) = &step.queue
                    && !queue_names.contains(target.as_str())
                {
                    return Err(ConfigError::Center(format!(
                        "Queue {:?}: spec.overflow[{i}].queue: Queue {target:?} not found",
                        q.name
                    )));
                }
            }
        }
        let mut extensions = BTreeMap::new();
        for s in &self.seats {
            if s.spec.call_center != center.name {
                return Err(ConfigError::Center(format!(
                    "Seat {:?}: spec.callCenter: {:?} is not the file's CallCenter {:?}",
                    s.name, s.spec.call_center, center.name
                )));
            }
            if let Some(other) = extensions.insert(s.spec.extension.as_str(), s.name.as_str()) {
                return Err(ConfigError::Center(format!(
                    "Seat {:?}: spec.extension: {:?} is also the extension of Seat {other:?}",
                    s.name, s.spec.extension
                )));
            }
            for (i, m) in s.spec.queues.iter().enumerate() {
                if !queue_names.contains(m.name.as_str()) {
                    return Err(ConfigError::Center(format!(
                        "Seat {:?}: spec.queues[{i}].name: Queue {:?} not found",
                        s.name, m.name
                    )));
                }
            }
            let cred = &s.spec.credentials;
            let has_key = self
                .secrets
                .get(&cred.name)
                .is_some_and(|keys| keys.contains_key(&cred.key));
            if !has_key {
                return Err(ConfigError::Center(format!(
                    "Seat {:?}: spec.credentials: Secret {:?} with key {:?} not found",
                    s.name, cred.name, cred.key
                )));
            }
        }
        let spec = &center.spec;
        let mut routes: Vec<(String, &switchboard_crds::callcenter::Route)> = Vec::new();
        for (i, e) in spec.entry_points.iter().enumerate() {
            routes.push((format!("spec.entryPoints[{i}].route"), &e.route));
        }
        for (i, m) in spec.ivr_menus.iter().enumerate() {
            for (j, o) in m.options.iter().enumerate() {
                routes.push((format!("spec.ivrMenus[{i}].options[{j}].route"), &o.route));
            }
            if let Some(r) = &m.on_failure {
                routes.push((format!("spec.ivrMenus[{i}].onFailure"), r));
            }
            if let Some(r) = &m.after_hours {
                routes.push((format!("spec.ivrMenus[{i}].afterHours"), r));
            }
        }
        use switchboard_crds::callcenter::RouteAction;
        for (path, route) in routes {
            let missing = match (route.action, route.target.as_deref()) {
                (RouteAction::Queue, Some(t)) if !queue_names.contains(t) => Some(("Queue", t)),
                (RouteAction::Seat | RouteAction::Voicemail, Some(t))
                    if !seat_names.contains(t) =>
                {
                    Some(("Seat", t))
                }
                _ => None,
            };
            if let Some((kind, target)) = missing {
                return Err(ConfigError::Center(format!(
                    "CallCenter {:?}: {path}.target: {kind} {target:?} not found",
                    center.name
                )));
            }
        }
        for (i, t) in spec.trunks.iter().enumerate() {
            if let Some(c) = &t.credentials {
                let ok = self.secrets.get(&c.secret_name).is_some_and(|k| {
                    k.contains_key(&c.username_key) && k.contains_key(&c.password_key)
                });
                if !ok {
                    return Err(ConfigError::Center(format!(
                        "CallCenter {:?}: spec.trunks[{i}].credentials: Secret {:?} with keys {:?} and {:?} not found",
                        center.name, c.secret_name, c.username_key, c.password_key
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
