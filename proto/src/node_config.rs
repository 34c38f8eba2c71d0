//! The node configuration (`node-config.yaml`): everything the media nodes of one CallCenter
//! run, computed once per change from the CallCenter, its Queues and Seats and the Secrets they
//! name. The operator builds it; the media node reads it, from the ConfigMap, from a gRPC
//! `ConfigSnapshot`, or built in standalone mode from the user's manifests.
//!
//! [`build_node_config`] is a pure function. It never fails because of one bad Queue or Seat:
//! cross-object problems (a Secret or key that is missing, a duplicate extension, an overflow
//! step or route to a queue that does not exist) are returned as [`Problem`]s that name the
//! object and field, the offending part is left out, and the rest of the center keeps working.
//! Only a CallCenter that cannot be served at all (no name, invalid spec) is an error.
//!
//! Secrets never appear in clear:
//! - a seat's SIP password becomes its digest HA1, `md5(extension:realm:password)` in hex, with
//!   the realm `spec.sip.domain`: enough for the node's registrar to check a digest response,
//!   useless for answering one elsewhere (RFC 2617 §3.2.2.2);
//! - a trunk's password cannot be hashed, because the node must answer the carrier's challenge
//!   with the real password. It stays in its Secret: the config carries only the Secret
//!   reference and the path where the StatefulSet mounts it ([`TrunkSecret`]), and the node
//!   reads the files when a trunk challenges it. The kubelet refreshes mounted Secrets, so a
//!   rotated trunk password reaches the node without a restart.
//!
//! Serialisation is deterministic (queues and seats sorted by name, maps ordered), so the same
//! inputs give byte-identical YAML and the same [`RenderedNodeConfig::hash`], which decides
//! whether anything needs pushing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_crds::callcenter::{NodesSpec, Route, RouteAction};
use switchboard_crds::{CallCenter, CallCenterSpec, Queue, QueueSpec, Seat, SeatSpec, validate};

/// Version of the node-config format, so a node can refuse a format it does not know.
pub const NODE_CONFIG_FORMAT: &str = "switchboard.dev/node-config/v1alpha1";
/// Where the StatefulSet mounts the Secret of trunk `<name>`: `<dir>/<name>/username` and
/// `<dir>/<name>/password`.
pub const TRUNK_SECRETS_DIR: &str = "/etc/switchboard/trunks";
/// File name of a trunk's user name inside its mounted Secret directory.
pub const TRUNK_USERNAME_FILE: &str = "username";
/// File name of a trunk's password inside its mounted Secret directory.
pub const TRUNK_PASSWORD_FILE: &str = "password";

/// The configuration every media node of one CallCenter runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// Always [`NODE_CONFIG_FORMAT`].
    pub format: String,
    /// Config generation: increases with every change pushed, so a node can ignore an older
    /// snapshot and status can show which config each node runs.
    pub generation: i64,
    /// Name of the CallCenter.
    pub call_center: String,
    /// Namespace of the CallCenter.
    pub namespace: String,
    /// The CallCenter spec as served: `nodes` (pod settings, not node config) cleared, trunk
    /// credentials whose Secret is missing removed, and routes to missing queues or seats
    /// removed.
    pub spec: CallCenterSpec,
    /// Trunks that answer challenges with credentials from a mounted Secret, by trunk name.
    pub trunk_secrets: Vec<TrunkSecret>,
    /// The center's usable queues, by name.
    pub queues: Vec<NodeQueue>,
    /// The center's usable seats, by name.
    pub seats: Vec<NodeSeat>,
    /// Member PINs of the menus that collect one (`collectPin`), by menu name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_pins: Vec<MemberPins>,
}

/// The valid member PINs of one menu, as salted SHA-256 hashes ([`pin_hash`]): a node can
/// check a PIN a caller keys in, and a reader of the ConfigMap does not see the PINs. (PINs
/// are short, so the hashes are no defence against someone who may read the ConfigMap and
/// tries every PIN; keep read access to ConfigMaps as narrow as to Secrets.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberPins {
    /// The menu that collects them.
    pub menu: String,
    /// Per center and menu, so equal PINs of two centers hash differently.
    pub salt: String,
    /// `pin_hash(salt, pin)` of every valid PIN, sorted.
    pub hashes: Vec<String>,
}

/// Digits a member PIN has at least and at most.
pub const PIN_DIGITS: std::ops::RangeInclusive<usize> = 4..=12;

/// The hash of a member PIN: lowercase hex of [`pin_digest`].
pub fn pin_hash(salt: &str, pin: &str) -> String {
    hex::encode(pin_digest(salt.as_bytes(), pin))
}

/// SHA-256 of `salt` followed by the PIN's digits.
pub fn pin_digest(salt: &[u8], pin: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(pin.as_bytes());
    h.finalize().into()
}

/// The salt of a menu's PIN hashes, derived from where the menu lives so the config stays
/// deterministic.
pub fn pin_salt(namespace: &str, center: &str, menu: &str) -> String {
    let mut h = Sha256::new();
    for part in ["switchboard member pins", namespace, center, menu] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Where a trunk's digest credentials are: the Secret reference and the mount path the node
/// reads them from. Never the values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrunkSecret {
    /// The trunk's name.
    pub trunk: String,
    /// The Secret, in the CallCenter's namespace.
    pub secret_name: String,
    /// Key of the user name in the Secret (mounted as [`TRUNK_USERNAME_FILE`]).
    pub username_key: String,
    /// Key of the password in the Secret (mounted as [`TRUNK_PASSWORD_FILE`]).
    pub password_key: String,
    /// Directory holding the two files.
    pub mount_path: String,
}

/// One queue of the center.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeQueue {
    /// The Queue's name; routes and overflow steps refer to it.
    pub name: String,
    /// Its spec, with overflow steps to missing queues removed.
    pub spec: QueueSpec,
}

/// One seat of the center.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSeat {
    /// The Seat's name.
    pub name: String,
    /// Its spec, with memberships of missing queues removed. `credentials` is only the Secret
    /// reference.
    pub spec: SeatSpec,
    /// Digest HA1 of the seat's SIP credentials: `md5(extension:realm:password)`, hex.
    pub ha1: String,
}

/// The kind of object a [`Problem`] is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    CallCenter,
    Queue,
    Seat,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CallCenter => "CallCenter",
            Self::Queue => "Queue",
            Self::Seat => "Seat",
        })
    }
}

/// Why something was left out; usable as a condition or Event reason.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemReason {
    /// The object breaks a rule of its own kind (the admission webhook was bypassed).
    Invalid,
    /// A named Secret does not exist.
    SecretNotFound,
    /// The Secret exists but lacks the named key.
    SecretKeyNotFound,
    /// Another seat of the center already has this extension.
    DuplicateExtension,
    /// A named Queue does not exist in the center (or was left out itself).
    QueueNotFound,
    /// A named Seat does not exist in the center (or was left out itself).
    SeatNotFound,
    /// A Secret value is not in the expected form (such as a PIN list line that is not 4 to
    /// 12 digits).
    InvalidSecretValue,
    /// A Queue requires a skill that no seat of its center has.
    UnknownSkill,
}

impl ProblemReason {
    /// The reason as a condition/Event `reason` (CamelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyNotFound => "SecretKeyNotFound",
            Self::DuplicateExtension => "DuplicateExtension",
            Self::QueueNotFound => "QueueNotFound",
            Self::SeatNotFound => "SeatNotFound",
            Self::InvalidSecretValue => "InvalidSecretValue",
            Self::UnknownSkill => "UnknownSkill",
        }
    }
}

/// A cross-object problem, precise enough for a status condition and an Event on `name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Kind of the object at fault.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// The field at fault, such as `spec.credentials.name`.
    pub field: String,
    /// Machine-readable reason.
    pub reason: ProblemReason,
    /// What is wrong and what was left out.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

/// Why no node config could be built at all.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("the CallCenter has no metadata.{0}")]
    MissingMetadata(&'static str),
    #[error("CallCenter {name} is invalid: {errors}")]
    InvalidCallCenter {
        name: String,
        errors: validate::FieldErrors,
    },
    #[error("cannot serialise the node config of CallCenter {name}: {source}")]
    Serialize {
        name: String,
        source: serde_yaml::Error,
    },
}

/// Why a Secret value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMiss {
    /// No Secret of that name.
    NoSecret,
    /// The Secret has no such key.
    NoKey,
}

/// Read access to the Secrets of the CallCenter's namespace. Values are used byte for byte:
/// a trailing newline (as `kubectl create secret --from-file` keeps it) is part of the
/// password, exactly as a phone configured from the same file would send it.
pub trait SecretLookup {
    /// The value of `key` in Secret `secret`.
    fn value(&self, secret: &str, key: &str) -> Result<Vec<u8>, SecretMiss>;
}

/// Secrets as the API serves them, by name (`data`, then `stringData` for objects not yet
/// round-tripped through the API server).
impl SecretLookup for BTreeMap<String, Secret> {
    fn value(&self, secret: &str, key: &str) -> Result<Vec<u8>, SecretMiss> {
        let s = self.get(secret).ok_or(SecretMiss::NoSecret)?;
        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.0.clone());
        }
        s.string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.as_bytes().to_vec())
            .ok_or(SecretMiss::NoKey)
    }
}

/// Secrets as decoded strings, secret name → key → value (the standalone loader's form).
impl SecretLookup for BTreeMap<String, BTreeMap<String, String>> {
    fn value(&self, secret: &str, key: &str) -> Result<Vec<u8>, SecretMiss> {
        let s = self.get(secret).ok_or(SecretMiss::NoSecret)?;
        s.get(key)
            .map(|v| v.as_bytes().to_vec())
            .ok_or(SecretMiss::NoKey)
    }
}

/// The digest HA1 of RFC 2617: `md5(username:realm:password)` in lowercase hex.
pub fn digest_ha1(username: &str, realm: &str, password: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password);
    hex::encode(h.finalize())
}

/// A NodeConfig serialised for the ConfigMap, with its content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedNodeConfig {
    /// The YAML a node reads (`node-config.yaml`).
    pub yaml: String,
    /// md5 hex of the content without the generation: equal hashes mean nothing to push, and a
    /// new generation number alone does not restart pods. md5 is a change detector here, not a
    /// security measure.
    pub hash: String,
}

impl NodeConfig {
    /// Serialises the config deterministically.
    pub fn to_yaml(&self) -> Result<String, NodeConfigError> {
        serde_yaml::to_string(self).map_err(|source| NodeConfigError::Serialize {
            name: self.call_center.clone(),
            source,
        })
    }

    /// The hash of everything but the generation.
    pub fn content_hash(&self) -> Result<String, NodeConfigError> {
        let content = NodeConfig {
            generation: 0,
            ..self.clone()
        };
        Ok(hex::encode(Md5::digest(content.to_yaml()?.as_bytes())))
    }

    /// Which parts of the config a node reads only when it starts, by field, that differ
    /// between `self` and `next`: the SIP listeners and realm, the RTP range, the codecs, the
    /// recording settings, high availability, and the trunks' Secret mounts (a new mount is a
    /// new pod template anyway). Everything else (seats, queues, trunks, entry points, menus,
    /// hours, the service level) a running node takes from `ApplyConfig`.
    pub fn startup_changes(&self, next: &NodeConfig) -> Vec<&'static str> {
        let (a, b) = (&self.spec, &next.spec);
        let mut changed = Vec::new();
        if a.sip != b.sip {
            changed.push("spec.sip");
        }
        if a.rtp != b.rtp {
            changed.push("spec.rtp");
        }
        if a.codecs != b.codecs {
            changed.push("spec.codecs");
        }
        if a.recording != b.recording {
            changed.push("spec.recording");
        }
        if a.high_availability != b.high_availability {
            changed.push("spec.highAvailability");
        }
        if self.trunk_secrets != next.trunk_secrets {
            changed.push("trunkSecrets");
        }
        changed
    }

    /// md5 hex of the parts [`Self::startup_changes`] compares: the media-node pod template
    /// carries it, so only a change a running node cannot take restarts the nodes.
    pub fn startup_hash(&self) -> Result<String, NodeConfigError> {
        #[derive(Serialize)]
        struct Startup<'a> {
            sip: &'a switchboard_crds::callcenter::SipSpec,
            rtp: &'a switchboard_crds::callcenter::RtpSpec,
            codecs: &'a [switchboard_crds::callcenter::Codec],
            recording: &'a switchboard_crds::callcenter::RecordingSpec,
            high_availability: &'a switchboard_crds::callcenter::HighAvailabilitySpec,
            trunk_secrets: &'a [TrunkSecret],
        }
        let startup = Startup {
            sip: &self.spec.sip,
            rtp: &self.spec.rtp,
            codecs: &self.spec.codecs,
            recording: &self.spec.recording,
            high_availability: &self.spec.high_availability,
            trunk_secrets: &self.trunk_secrets,
        };
        let yaml =
            serde_yaml::to_string(&startup).map_err(|source| NodeConfigError::Serialize {
                name: self.call_center.clone(),
                source,
            })?;
        Ok(hex::encode(Md5::digest(yaml.as_bytes())))
    }

    /// YAML and content hash together.
    pub fn render(&self) -> Result<RenderedNodeConfig, NodeConfigError> {
        Ok(RenderedNodeConfig {
            yaml: self.to_yaml()?,
            hash: self.content_hash()?,
        })
    }
}

/// Builds the node config of `center` from the Queues and Seats given (those of other centers
/// or namespaces are ignored), reading seat passwords and checking trunk Secrets through
/// `secrets`. Returns the config and every cross-object problem found, sorted.
pub fn build_node_config(
    center: &CallCenter,
    queues: &[Queue],
    seats: &[Seat],
    secrets: &dyn SecretLookup,
    generation: i64,
) -> Result<(NodeConfig, Vec<Problem>), NodeConfigError> {
    let name = center
        .metadata
        .name
        .clone()
        .ok_or(NodeConfigError::MissingMetadata("name"))?;
    let namespace = center
        .metadata
        .namespace
        .clone()
        .ok_or(NodeConfigError::MissingMetadata("namespace"))?;
    let errors = validate::call_center(&center.spec);
    if !errors.is_empty() {
        return Err(NodeConfigError::InvalidCallCenter { name, errors });
    }
    let mut problems = Vec::new();
    let mine = |ns: Option<&String>, cc: &str| ns == Some(&namespace) && cc == name;

    let mut node_queues = resolve_queues(
        queues
            .iter()
            .filter(|q| mine(q.metadata.namespace.as_ref(), &q.spec.call_center)),
        &mut problems,
    );
    let queue_names: BTreeSet<String> = node_queues.iter().map(|q| q.name.clone()).collect();
    for q in &mut node_queues {
        drop_overflow_to_missing_queues(q, &queue_names, &mut problems);
    }

    let realm = center.spec.sip.domain.clone();
    let mut center_seats: Vec<&Seat> = seats
        .iter()
        .filter(|s| mine(s.metadata.namespace.as_ref(), &s.spec.call_center))
        .collect();
    // The seat created first keeps a contested extension, so adding a Seat can never take the
    // extension away from one that already works; the name breaks ties deterministically.
    center_seats.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, a.name_any())
            .cmp(&(&b.metadata.creation_timestamp, b.name_any()))
    });
    let mut node_seats = resolve_seats(center_seats, &realm, secrets, &mut problems);
    for s in &mut node_seats {
        drop_memberships_of_missing_queues(s, &queue_names, &mut problems);
    }
    node_seats.sort_by(|a, b| a.name.cmp(&b.name));
    let seat_names: BTreeSet<String> = node_seats.iter().map(|s| s.name.clone()).collect();
    report_unknown_skills(&node_queues, &node_seats, &mut problems);

    let mut spec = center.spec.clone();
    // Pod settings change the StatefulSet, not what a node serves.
    spec.nodes = NodesSpec::default();
    let trunk_secrets = resolve_trunk_secrets(&name, &mut spec, secrets, &mut problems);
    resolve_routes(&name, &mut spec, &queue_names, &seat_names, &mut problems);
    let member_pins = resolve_member_pins(&namespace, &name, &spec, secrets, &mut problems);

    problems.sort();
    Ok((
        NodeConfig {
            format: NODE_CONFIG_FORMAT.to_string(),
            generation,
            call_center: name,
            namespace,
            spec,
            trunk_secrets,
            queues: node_queues,
            seats: node_seats,
            member_pins,
        },
        problems,
    ))
}

fn problem(
    kind: ObjectKind,
    name: &str,
    field: impl Into<String>,
    reason: ProblemReason,
    message: impl Into<String>,
) -> Problem {
    Problem {
        kind,
        name: name.to_string(),
        field: field.into(),
        reason,
        message: message.into(),
    }
}

/// Valid queues, sorted by name; an invalid one is left out.
fn resolve_queues<'a>(
    queues: impl Iterator<Item = &'a Queue>,
    problems: &mut Vec<Problem>,
) -> Vec<NodeQueue> {
    let mut out: Vec<NodeQueue> = Vec::new();
    for q in queues {
        let name = q.name_any();
        let errors = validate::queue(&q.spec, &name);
        if errors.is_empty() {
            out.push(NodeQueue {
                name,
                spec: q.spec.clone(),
            });
        } else {
            problems.push(problem(
                ObjectKind::Queue,
                &name,
                "spec",
                ProblemReason::Invalid,
                format!("left out of the call center: {errors}"),
            ));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An overflow step to a missing queue is removed: callers wait until `maxWaitSeconds` instead.
fn drop_overflow_to_missing_queues(
    q: &mut NodeQueue,
    queues: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    let mut index = 0;
    let name = q.name.clone();
    q.spec.overflow.retain(|step| {
        let i = index;
        index += 1;
        match &step.queue {
            Some(target) if !queues.contains(target) => {
                problems.push(problem(
                    ObjectKind::Queue,
                    &name,
                    format!("spec.overflow[{i}].queue"),
                    ProblemReason::QueueNotFound,
                    format!(
                        "Queue {target:?} not found in the call center; this overflow step is skipped"
                    ),
                ));
                false
            }
            _ => true,
        }
    });
}

/// Valid seats whose password resolves and whose extension is free, in the order given.
fn resolve_seats(
    seats: Vec<&Seat>,
    realm: &str,
    secrets: &dyn SecretLookup,
    problems: &mut Vec<Problem>,
) -> Vec<NodeSeat> {
    let mut extensions: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for s in seats {
        let name = s.name_any();
        let errors = validate::seat(&s.spec);
        if !errors.is_empty() {
            problems.push(problem(
                ObjectKind::Seat,
                &name,
                "spec",
                ProblemReason::Invalid,
                format!("left out of the call center: {errors}"),
            ));
            continue;
        }
        let cred = &s.spec.credentials;
        let password = match secrets.value(&cred.name, &cred.key) {
            Ok(p) => p,
            Err(SecretMiss::NoSecret) => {
                problems.push(problem(
                    ObjectKind::Seat,
                    &name,
                    "spec.credentials.name",
                    ProblemReason::SecretNotFound,
                    format!(
                        "Secret {:?} not found; the seat cannot register until it exists",
                        cred.name
                    ),
                ));
                continue;
            }
            Err(SecretMiss::NoKey) => {
                problems.push(problem(
                    ObjectKind::Seat,
                    &name,
                    "spec.credentials.key",
                    ProblemReason::SecretKeyNotFound,
                    format!(
                        "Secret {:?} has no key {:?}; the seat cannot register until it does",
                        cred.name, cred.key
                    ),
                ));
                continue;
            }
        };
        if let Some(holder) = extensions.get(&s.spec.extension) {
            problems.push(problem(
                ObjectKind::Seat,
                &name,
                "spec.extension",
                ProblemReason::DuplicateExtension,
                format!(
                    "extension {} is already used by Seat {holder}; this seat is left out",
                    s.spec.extension
                ),
            ));
            continue;
        }
        extensions.insert(s.spec.extension.clone(), name.clone());
        out.push(NodeSeat {
            ha1: digest_ha1(&s.spec.extension, realm, &password),
            name,
            spec: s.spec.clone(),
        });
    }
    out
}

/// A required skill no seat has is almost always a typo (`mandrin`): the queue stays (a
/// RelaxSkills step may still serve it) but the problem is reported.
fn report_unknown_skills(queues: &[NodeQueue], seats: &[NodeSeat], problems: &mut Vec<Problem>) {
    let known: BTreeSet<&str> = seats
        .iter()
        .flat_map(|s| s.spec.skills.iter().map(|k| k.name.as_str()))
        .collect();
    for q in queues {
        for (i, skill) in q.spec.required_skills.iter().enumerate() {
            if !known.contains(skill.name.as_str()) {
                problems.push(problem(
                    ObjectKind::Queue,
                    &q.name,
                    format!("spec.requiredSkills[{i}].name"),
                    ProblemReason::UnknownSkill,
                    format!(
                        "no seat of the call center has skill {:?}; no agent can take this queue's calls",
                        skill.name
                    ),
                ));
            }
        }
    }
}

/// A membership of a missing queue is removed; the seat keeps its other queues.
fn drop_memberships_of_missing_queues(
    s: &mut NodeSeat,
    queues: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    let mut index = 0;
    let name = s.name.clone();
    s.spec.queues.retain(|m| {
        let i = index;
        index += 1;
        if queues.contains(&m.name) {
            return true;
        }
        problems.push(problem(
            ObjectKind::Seat,
            &name,
            format!("spec.queues[{i}].name"),
            ProblemReason::QueueNotFound,
            format!(
                "Queue {:?} not found in the call center; the seat takes no calls from it",
                m.name
            ),
        ));
        false
    });
}

/// Trunk credentials whose Secret and keys exist become [`TrunkSecret`]s; the others are
/// removed from the trunk, which then still takes inbound calls from its trusted addresses but
/// cannot answer a challenge.
fn resolve_trunk_secrets(
    center: &str,
    spec: &mut CallCenterSpec,
    secrets: &dyn SecretLookup,
    problems: &mut Vec<Problem>,
) -> Vec<TrunkSecret> {
    let mut out = Vec::new();
    for (i, trunk) in spec.trunks.iter_mut().enumerate() {
        let Some(cred) = &trunk.credentials else {
            continue;
        };
        let miss = [
            ("usernameKey", &cred.username_key),
            ("passwordKey", &cred.password_key),
        ]
        .into_iter()
        .find_map(|(field, key)| {
            secrets
                .value(&cred.secret_name, key)
                .err()
                .map(|m| (field, key, m))
        });
        match miss {
            None => out.push(TrunkSecret {
                trunk: trunk.name.clone(),
                secret_name: cred.secret_name.clone(),
                username_key: cred.username_key.clone(),
                password_key: cred.password_key.clone(),
                mount_path: format!("{TRUNK_SECRETS_DIR}/{}", trunk.name),
            }),
            Some((_, _, SecretMiss::NoSecret)) => {
                problems.push(problem(
                    ObjectKind::CallCenter,
                    center,
                    format!("spec.trunks[{i}].credentials.secretName"),
                    ProblemReason::SecretNotFound,
                    format!(
                        "Secret {:?} not found; trunk {} cannot answer authentication challenges",
                        cred.secret_name, trunk.name
                    ),
                ));
                trunk.credentials = None;
            }
            Some((field, key, SecretMiss::NoKey)) => {
                problems.push(problem(
                    ObjectKind::CallCenter,
                    center,
                    format!("spec.trunks[{i}].credentials.{field}"),
                    ProblemReason::SecretKeyNotFound,
                    format!(
                        "Secret {:?} has no key {key:?}; trunk {} cannot answer authentication challenges",
                        cred.secret_name, trunk.name
                    ),
                ));
                trunk.credentials = None;
            }
        }
    }
    out.sort_by(|a, b| a.trunk.cmp(&b.trunk));
    out
}

/// The PIN lists of menus that collect a PIN, hashed. A missing Secret or key leaves the menu
/// with no valid PIN (every caller takes the invalid-PIN path) and is reported; a line that is
/// not a PIN is skipped and reported by line number, never by content.
fn resolve_member_pins(
    namespace: &str,
    center: &str,
    spec: &CallCenterSpec,
    secrets: &dyn SecretLookup,
    problems: &mut Vec<Problem>,
) -> Vec<MemberPins> {
    let mut out = Vec::new();
    for (i, menu) in spec.ivr_menus.iter().enumerate() {
        let Some(collect) = &menu.collect_pin else {
            continue;
        };
        let field = format!("spec.ivrMenus[{i}].collectPin.pins");
        let salt = pin_salt(namespace, center, &menu.name);
        let mut hashes = Vec::new();
        match secrets.value(&collect.pins.name, &collect.pins.key) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                for (n, line) in text.lines().enumerate() {
                    let pin = line.trim();
                    if pin.is_empty() || pin.starts_with('#') {
                        continue;
                    }
                    if PIN_DIGITS.contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) {
                        hashes.push(pin_hash(&salt, pin));
                    } else {
                        problems.push(problem(
                            ObjectKind::CallCenter,
                            center,
                            format!("{field}.key"),
                            ProblemReason::InvalidSecretValue,
                            format!(
                                "line {} of key {:?} in Secret {:?} is not a PIN of 4 to 12 digits; it is ignored",
                                n + 1,
                                collect.pins.key,
                                collect.pins.name
                            ),
                        ));
                    }
                }
            }
            Err(miss) => {
                let (sub, reason, what) = match miss {
                    SecretMiss::NoSecret => (
                        "name",
                        ProblemReason::SecretNotFound,
                        format!("Secret {:?} not found", collect.pins.name),
                    ),
                    SecretMiss::NoKey => (
                        "key",
                        ProblemReason::SecretKeyNotFound,
                        format!(
                            "Secret {:?} has no key {:?}",
                            collect.pins.name, collect.pins.key
                        ),
                    ),
                };
                problems.push(problem(
                    ObjectKind::CallCenter,
                    center,
                    format!("{field}.{sub}"),
                    reason,
                    format!("{what}; menu {} accepts no PIN", menu.name),
                ));
            }
        }
        hashes.sort();
        hashes.dedup();
        out.push(MemberPins {
            menu: menu.name.clone(),
            salt,
            hashes,
        });
    }
    out
}

/// What to do with a route whose target is missing.
enum RouteFix {
    Keep,
    /// Voicemail to a missing seat's mailbox goes to the general mailbox instead.
    GeneralMailbox(Problem),
    Remove(Problem),
}

fn check_route(
    center: &str,
    route: &Route,
    path: &str,
    queues: &BTreeSet<String>,
    seats: &BTreeSet<String>,
) -> RouteFix {
    let Some(target) = &route.target else {
        return RouteFix::Keep;
    };
    let missing = |reason, kind: &str, outcome: &str| {
        problem(
            ObjectKind::CallCenter,
            center,
            format!("{path}.target"),
            reason,
            format!("{kind} {target:?} not found in the call center; {outcome}"),
        )
    };
    match route.action {
        RouteAction::Queue if !queues.contains(target) => RouteFix::Remove(missing(
            ProblemReason::QueueNotFound,
            "Queue",
            "this route is left out",
        )),
        RouteAction::Seat if !seats.contains(target) => RouteFix::Remove(missing(
            ProblemReason::SeatNotFound,
            "Seat",
            "this route is left out",
        )),
        RouteAction::Voicemail if !seats.contains(target) => RouteFix::GeneralMailbox(missing(
            ProblemReason::SeatNotFound,
            "Seat",
            "messages go to the general mailbox",
        )),
        _ => RouteFix::Keep,
    }
}

/// Removes routes to missing queues and seats: an entry point disappears (its number is not
/// served), a menu key becomes an invalid key, a missing `onFailure` hangs up and a missing
/// `afterHours` lets the menu play at all hours, as the API documents for empty fields.
fn resolve_routes(
    center: &str,
    spec: &mut CallCenterSpec,
    queues: &BTreeSet<String>,
    seats: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    // Applies a fix; returns whether the route stays.
    let apply = |route: &mut Route, path: String, problems: &mut Vec<Problem>| match check_route(
        center, route, &path, queues, seats,
    ) {
        RouteFix::Keep => true,
        RouteFix::GeneralMailbox(p) => {
            problems.push(p);
            route.target = None;
            true
        }
        RouteFix::Remove(p) => {
            problems.push(p);
            false
        }
    };
    let mut i = 0;
    spec.entry_points.retain_mut(|e| {
        let keep = apply(
            &mut e.route,
            format!("spec.entryPoints[{i}].route"),
            problems,
        );
        i += 1;
        keep
    });
    for (m, menu) in spec.ivr_menus.iter_mut().enumerate() {
        let mut o = 0;
        menu.options.retain_mut(|opt| {
            let keep = apply(
                &mut opt.route,
                format!("spec.ivrMenus[{m}].options[{o}].route"),
                problems,
            );
            o += 1;
            keep
        });
        for (field, slot) in [
            ("onFailure", &mut menu.on_failure),
            ("afterHours", &mut menu.after_hours),
        ] {
            if let Some(route) = slot
                && !apply(route, format!("spec.ivrMenus[{m}].{field}"), problems)
            {
                *slot = None;
            }
        }
        // A valid PIN must lead somewhere: with its target gone, the menu's failure route.
        if let Some(collect) = &mut menu.collect_pin
            && !apply(
                &mut collect.on_valid,
                format!("spec.ivrMenus[{m}].collectPin.onValid"),
                problems,
            )
        {
            collect.on_valid = menu.on_failure.clone().unwrap_or(Route {
                action: RouteAction::Hangup,
                target: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    pub(crate) fn campus() -> CallCenter {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "CallCenter",
            "metadata": {"name": "campus", "namespace": "college", "uid": "c0ffee00-0000-4000-8000-000000000001"},
            "spec": {
                "sip": {"domain": "callcenter.campus.example.edu"},
                "highAvailability": {"mode": "HotStandby"},
                "trunks": [{
                    "name": "campus-pstn",
                    "peer": {"host": "192.0.2.10"},
                    "credentials": {"secretName": "campus-trunk"},
                    "inboundNumbers": ["+862150000000"]
                }],
                "entryPoints": [
                    {"number": "+862150000000", "route": {"action": "Menu", "target": "main"}},
                    {"number": "8100", "route": {"action": "Queue", "target": "inbound-service"}}
                ],
                "ivrMenus": [{
                    "name": "main",
                    "prompt": "campus/welcome.wav",
                    "options": [
                        {"digit": "1", "route": {"action": "Queue", "target": "inbound-service"}},
                        {"digit": "2", "route": {"action": "Queue", "target": "outbound-sales"}},
                        {"digit": "0", "route": {"action": "Seat", "target": "team-leader-1"}},
                        {"digit": "8", "route": {"action": "Voicemail", "target": "team-leader-1"}}
                    ],
                    "onFailure": {"action": "Queue", "target": "inbound-service"},
                    "afterHours": {"action": "Seat", "target": "team-leader-1"}
                }],
                "businessHours": {
                    "timeZone": "Asia/Shanghai",
                    "weekly": [{"days": ["Monday", "Friday"], "open": "08:30", "close": "17:30"}]
                },
                "nodes": {"hostNetwork": true, "image": "registry.campus.example.edu/media-node:1"}
            }
        }))
        .expect("valid CallCenter")
    }

    pub(crate) fn queue(name: &str, spec: serde_json::Value) -> Queue {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": name, "namespace": "college"},
            "spec": spec
        }))
        .expect("valid Queue")
    }

    pub(crate) fn seat(name: &str, extension: &str, queues: &[&str], created: i64) -> Seat {
        let mut s: Seat = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Seat",
            "metadata": {"name": name, "namespace": "college"},
            "spec": {
                "callCenter": "campus",
                "extension": extension,
                "displayName": format!("Seat {extension}"),
                "credentials": {"name": "campus-seat-passwords", "key": extension},
                "queues": queues.iter().map(|q| json!({"name": q})).collect::<Vec<_>>()
            }
        }))
        .expect("valid Seat");
        s.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(created).expect("valid time")));
        s
    }

    pub(crate) fn queues() -> Vec<Queue> {
        vec![
            queue(
                "outbound-sales",
                json!({"callCenter": "campus", "overflow": [
                    {"afterSeconds": 120, "action": "Queue", "queue": "inbound-service"}
                ]}),
            ),
            queue("inbound-service", json!({"callCenter": "campus"})),
        ]
    }

    pub(crate) fn seats() -> Vec<Seat> {
        vec![
            seat("inbound-02", "2002", &["inbound-service"], 2),
            seat("inbound-01", "2001", &["inbound-service"], 1),
            seat(
                "team-leader-1",
                "8001",
                &["inbound-service", "outbound-sales"],
                3,
            ),
        ]
    }

    pub(crate) fn secrets() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut s = BTreeMap::new();
        s.insert(
            "campus-trunk".to_string(),
            BTreeMap::from([
                ("username".to_string(), "campus-cc".to_string()),
                ("password".to_string(), "TrunkPassw0rd-hxKKUgrR".to_string()),
            ]),
        );
        s.insert(
            "campus-seat-passwords".to_string(),
            BTreeMap::from([
                ("2001".to_string(), "SeatPass-44J34QFs".to_string()),
                ("2002".to_string(), "SeatPass-a7WJWxqC".to_string()),
                ("8001".to_string(), "SeatPass-DygW4JW9".to_string()),
            ]),
        );
        s
    }

    fn build(
        center: &CallCenter,
        queues: &[Queue],
        seats: &[Seat],
        secrets: &dyn SecretLookup,
    ) -> (NodeConfig, Vec<Problem>) {
        build_node_config(center, queues, seats, secrets, 7).expect("config builds")
    }

    fn seat_names(c: &NodeConfig) -> Vec<&str> {
        c.seats.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn ha1_matches_the_rfc_2617_example() {
        assert_eq!(
            digest_ha1("Mufasa", "testrealm@host.com", b"Circle Of Life"),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn a_consistent_center_builds_without_problems() {
        let (c, problems) = build(&campus(), &queues(), &seats(), &secrets());
        assert_eq!(problems, vec![]);
        assert_eq!(c.format, NODE_CONFIG_FORMAT);
        assert_eq!(c.generation, 7);
        assert_eq!(
            (c.call_center.as_str(), c.namespace.as_str()),
            ("campus", "college")
        );
        let queue_names: Vec<_> = c.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(queue_names, ["inbound-service", "outbound-sales"]);
        assert_eq!(
            seat_names(&c),
            ["inbound-01", "inbound-02", "team-leader-1"]
        );
        assert_eq!(
            c.seats[0].ha1,
            digest_ha1(
                "2001",
                "callcenter.campus.example.edu",
                b"SeatPass-44J34QFs"
            )
        );
        assert_eq!(c.spec.entry_points.len(), 2);
        assert_eq!(c.spec.ivr_menus[0].options.len(), 4);
        assert_eq!(
            c.trunk_secrets,
            vec![TrunkSecret {
                trunk: "campus-pstn".into(),
                secret_name: "campus-trunk".into(),
                username_key: "username".into(),
                password_key: "password".into(),
                mount_path: "/etc/switchboard/trunks/campus-pstn".into(),
            }]
        );
        assert!(c.spec.trunks[0].credentials.is_some());
    }

    #[test]
    fn pod_settings_are_not_part_of_the_node_config() {
        let (c, _) = build(&campus(), &queues(), &seats(), &secrets());
        assert_eq!(c.spec.nodes, NodesSpec::default());
        let mut other = campus();
        other.spec.nodes.image = Some("other:2".into());
        other.spec.nodes.host_network = false;
        let (o, _) = build(&other, &queues(), &seats(), &secrets());
        assert_eq!(
            c.content_hash().expect("hash"),
            o.content_hash().expect("hash")
        );
    }

    #[test]
    fn no_password_appears_in_the_serialised_config() {
        let (c, _) = build(&campus(), &queues(), &seats(), &secrets());
        let yaml = c.to_yaml().expect("serialises");
        for values in secrets().values() {
            for (key, value) in values {
                if key != "username" {
                    assert!(!yaml.contains(value.as_str()), "{key} leaked");
                }
            }
        }
        assert!(!yaml.contains("TrunkPassw0rd"));
        assert!(!yaml.contains("SeatPass"));
        assert!(yaml.contains(&c.seats[0].ha1));
    }

    #[test]
    fn a_queue_requiring_a_skill_no_seat_has_is_reported_and_kept() {
        let mut qs = queues();
        qs.push(queue(
            "mandarin-help",
            json!({"callCenter": "campus", "requiredSkills": [{"name": "mandrin", "minProficiency": 2}]}),
        ));
        let mut ss = seats();
        ss[0].spec.skills = vec![
            serde_json::from_value(json!({"name": "mandarin", "proficiency": 5}))
                .expect("valid skill"),
        ];
        let (c, problems) = build(&campus(), &qs, &ss, &secrets());
        assert!(c.queues.iter().any(|q| q.name == "mandarin-help"));
        let unknown: Vec<_> = problems
            .iter()
            .filter(|p| p.reason == ProblemReason::UnknownSkill)
            .collect();
        assert_eq!(unknown.len(), 1, "{problems:?}");
        assert_eq!(unknown[0].name, "mandarin-help");
        assert_eq!(unknown[0].field, "spec.requiredSkills[0].name");
        assert!(unknown[0].message.contains("\"mandrin\""));
    }

    /// The campus center with a second menu that collects member PINs from `member-pins`.
    fn campus_with_pin_menu() -> CallCenter {
        let mut c = campus();
        c.spec.ivr_menus.push(
            serde_json::from_value(json!({
                "name": "members",
                "prompt": "campus/member-pin.wav",
                "collectPin": {
                    "pins": {"name": "member-pins", "key": "pins"},
                    "onValid": {"action": "Queue", "target": "inbound-service"}
                },
                "onFailure": {"action": "Queue", "target": "inbound-service"}
            }))
            .expect("valid menu"),
        );
        c
    }

    #[test]
    fn member_pins_reach_the_node_only_as_salted_hashes() {
        let mut s = secrets();
        s.insert(
            "member-pins".to_string(),
            BTreeMap::from([(
                "pins".to_string(),
                "# members of the alumni association\n482913\n\n  7301 \n12ab\n482913\n"
                    .to_string(),
            )]),
        );
        let (c, problems) = build(&campus_with_pin_menu(), &queues(), &seats(), &s);
        let pins = &c.member_pins[0];
        assert_eq!(pins.menu, "members");
        assert_eq!(pins.salt, pin_salt("college", "campus", "members"));
        let mut expected = vec![pin_hash(&pins.salt, "482913"), pin_hash(&pins.salt, "7301")];
        expected.sort();
        assert_eq!(
            pins.hashes, expected,
            "duplicates collapse, comments and blanks skipped"
        );
        // The bad line is reported by number, never by content.
        let bad: Vec<_> = problems
            .iter()
            .filter(|p| p.reason == ProblemReason::InvalidSecretValue)
            .collect();
        assert_eq!(bad.len(), 1, "{problems:?}");
        assert_eq!(bad[0].field, "spec.ivrMenus[1].collectPin.pins.key");
        assert!(bad[0].message.contains("line 5"), "{}", bad[0].message);
        assert!(!bad[0].message.contains("12ab"));
        let yaml = c.to_yaml().expect("serialises");
        assert!(!yaml.contains("482913") && !yaml.contains("7301"));
        // Another center's salt differs, so its hash of the same PIN does too.
        assert_ne!(pins.salt, pin_salt("college", "other", "members"));
    }

    #[test]
    fn a_missing_pin_secret_leaves_the_menu_accepting_no_pin() {
        let (c, problems) = build(&campus_with_pin_menu(), &queues(), &seats(), &secrets());
        assert!(c.member_pins[0].hashes.is_empty());
        assert!(
            problems
                .iter()
                .any(|p| p.reason == ProblemReason::SecretNotFound
                    && p.field == "spec.ivrMenus[1].collectPin.pins.name"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_pin_menu_whose_queue_is_missing_falls_back_to_its_failure_route() {
        let mut center = campus_with_pin_menu();
        center.spec.ivr_menus[1]
            .collect_pin
            .as_mut()
            .unwrap()
            .on_valid = Route {
            action: RouteAction::Queue,
            target: Some("gone".into()),
        };
        let (c, problems) = build(&center, &queues(), &seats(), &secrets());
        let collect = c.spec.ivr_menus[1].collect_pin.as_ref().unwrap();
        assert_eq!(collect.on_valid.target.as_deref(), Some("inbound-service"));
        assert!(
            problems
                .iter()
                .any(|p| p.field.starts_with("spec.ivrMenus[1].collectPin.onValid"))
        );
    }

    #[test]
    fn the_same_inputs_in_any_order_give_byte_identical_yaml_and_hash() {
        let (a, _) = build(&campus(), &queues(), &seats(), &secrets());
        let mut q = queues();
        q.reverse();
        let mut s = seats();
        s.rotate_left(1);
        let (b, _) = build(&campus(), &q, &s, &secrets());
        let (ra, rb) = (a.render().expect("renders"), b.render().expect("renders"));
        assert_eq!(ra, rb);
        assert_eq!(ra.hash.len(), 32);
        let back: NodeConfig = serde_yaml::from_str(&ra.yaml).expect("reads back");
        assert_eq!(back, a);
    }

    #[test]
    fn the_hash_ignores_the_generation_but_follows_every_change() {
        let (a, _) = build(&campus(), &queues(), &seats(), &secrets());
        let hash = a.content_hash().expect("hash");
        let (next_gen, _) =
            build_node_config(&campus(), &queues(), &seats(), &secrets(), 8).expect("builds");
        assert_eq!(next_gen.content_hash().expect("hash"), hash);
        assert_ne!(
            next_gen.to_yaml().expect("yaml"),
            a.to_yaml().expect("yaml")
        );

        let mut q = queues();
        q[1].spec.wrap_up_seconds = 45;
        let (changed_queue, _) = build(&campus(), &q, &seats(), &secrets());
        assert_ne!(changed_queue.content_hash().expect("hash"), hash);

        let mut rotated = secrets();
        rotated
            .get_mut("campus-seat-passwords")
            .expect("present")
            .insert("2001".into(), "rotated".into());
        let (changed_password, _) = build(&campus(), &queues(), &seats(), &rotated);
        assert_ne!(changed_password.content_hash().expect("hash"), hash);
    }

    #[test]
    fn only_startup_settings_change_the_startup_hash() {
        let (a, _) = build(&campus(), &queues(), &seats(), &secrets());
        let hash = a.startup_hash().expect("hash");
        // Queues, seats (passwords) and trunk limits are taken live.
        let mut q = queues();
        q[1].spec.wrap_up_seconds = 45;
        let mut rotated = secrets();
        rotated
            .get_mut("campus-seat-passwords")
            .expect("present")
            .insert("2001".into(), "rotated".into());
        let mut center = campus();
        center.spec.trunks[0].channels.limit = 12;
        let (live, _) = build(&center, &q, &seats(), &rotated);
        assert_eq!(live.startup_hash().expect("hash"), hash);
        assert!(a.startup_changes(&live).is_empty());
        // The RTP range and the SIP domain are read at start.
        let mut center = campus();
        center.spec.rtp.max_port -= 100;
        center.spec.sip.domain = "cc2.campus.example.edu".into();
        let (restart, _) = build(&center, &queues(), &seats(), &secrets());
        assert_ne!(restart.startup_hash().expect("hash"), hash);
        assert_eq!(a.startup_changes(&restart), ["spec.sip", "spec.rtp"]);
    }

    #[test]
    fn a_seat_whose_secret_is_missing_is_left_out_and_the_rest_works() {
        let mut s = seats();
        s[0].spec.credentials.name = "no-such-secret".into();
        let (c, problems) = build(&campus(), &queues(), &s, &secrets());
        assert_eq!(seat_names(&c), ["inbound-01", "team-leader-1"]);
        assert_eq!(
            problems,
            vec![Problem {
                kind: ObjectKind::Seat,
                name: "inbound-02".into(),
                field: "spec.credentials.name".into(),
                reason: ProblemReason::SecretNotFound,
                message:
                    "Secret \"no-such-secret\" not found; the seat cannot register until it exists"
                        .into(),
            }]
        );
    }

    #[test]
    fn a_seat_whose_secret_lacks_the_key_is_left_out() {
        let mut s = seats();
        s[1].spec.credentials.key = "9999".into();
        let (c, problems) = build(&campus(), &queues(), &s, &secrets());
        assert_eq!(seat_names(&c), ["inbound-02", "team-leader-1"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, ProblemReason::SecretKeyNotFound);
        assert_eq!(problems[0].field, "spec.credentials.key");
        assert_eq!(
            problems[0].to_string(),
            "Seat inbound-01: spec.credentials.key: Secret \"campus-seat-passwords\" has no key \"9999\"; the seat cannot register until it does"
        );
    }

    #[test]
    fn the_older_seat_keeps_a_duplicate_extension() {
        let mut s = seats();
        // Created last, but sorts first by name: creation time decides, not the name.
        s.push(seat("a-newcomer", "2001", &["inbound-service"], 10));
        let (c, problems) = build(&campus(), &queues(), &s, &secrets());
        assert_eq!(
            seat_names(&c),
            ["inbound-01", "inbound-02", "team-leader-1"]
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].name, "a-newcomer");
        assert_eq!(problems[0].reason, ProblemReason::DuplicateExtension);
        assert_eq!(
            problems[0].message,
            "extension 2001 is already used by Seat inbound-01; this seat is left out"
        );
    }

    #[test]
    fn equal_creation_times_break_ties_by_name() {
        let s = vec![seat("zulu", "2001", &[], 5), seat("alpha", "2001", &[], 5)];
        let (c, problems) = build(&campus(), &queues(), &s, &secrets());
        assert_eq!(seat_names(&c), ["alpha"]);
        let duplicates: Vec<_> = problems
            .iter()
            .filter(|p| p.reason == ProblemReason::DuplicateExtension)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(duplicates, ["zulu"]);
    }

    #[test]
    fn an_overflow_step_to_a_missing_queue_is_skipped() {
        let q = vec![queues().remove(0)]; // outbound-sales overflows to inbound-service
        let (c, problems) = build(&campus(), &q, &[], &secrets());
        assert_eq!(c.queues.len(), 1);
        assert!(c.queues[0].spec.overflow.is_empty());
        assert!(problems.contains(&Problem {
            kind: ObjectKind::Queue,
            name: "outbound-sales".into(),
            field: "spec.overflow[0].queue".into(),
            reason: ProblemReason::QueueNotFound,
            message: "Queue \"inbound-service\" not found in the call center; this overflow step is skipped".into(),
        }));
    }

    #[test]
    fn a_membership_of_a_missing_queue_is_dropped_and_the_seat_stays() {
        let s = vec![seat(
            "team-leader-1",
            "8001",
            &["inbound-service", "night-shift", "outbound-sales"],
            1,
        )];
        let (c, problems) = build(&campus(), &queues(), &s, &secrets());
        let members: Vec<_> = c.seats[0]
            .spec
            .queues
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(members, ["inbound-service", "outbound-sales"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.queues[1].name");
        assert_eq!(problems[0].reason, ProblemReason::QueueNotFound);
    }

    #[test]
    fn routes_to_missing_queues_and_seats_are_left_out_and_reported() {
        // No queues and no seats at all: every route target is missing.
        let (c, problems) = build(&campus(), &[], &[], &secrets());
        assert_eq!(c.spec.entry_points.len(), 1, "the menu entry point stays");
        let menu = &c.spec.ivr_menus[0];
        assert_eq!(menu.options.len(), 1, "only the voicemail key stays");
        assert_eq!(menu.options[0].route.action, RouteAction::Voicemail);
        assert_eq!(menu.options[0].route.target, None, "general mailbox");
        assert_eq!(menu.on_failure, None);
        assert_eq!(menu.after_hours, None);
        let fields: Vec<_> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.reason))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "spec.entryPoints[1].route.target",
                    ProblemReason::QueueNotFound
                ),
                (
                    "spec.ivrMenus[0].afterHours.target",
                    ProblemReason::SeatNotFound
                ),
                (
                    "spec.ivrMenus[0].onFailure.target",
                    ProblemReason::QueueNotFound
                ),
                (
                    "spec.ivrMenus[0].options[0].route.target",
                    ProblemReason::QueueNotFound
                ),
                (
                    "spec.ivrMenus[0].options[1].route.target",
                    ProblemReason::QueueNotFound
                ),
                (
                    "spec.ivrMenus[0].options[2].route.target",
                    ProblemReason::SeatNotFound
                ),
                (
                    "spec.ivrMenus[0].options[3].route.target",
                    ProblemReason::SeatNotFound
                ),
            ]
        );
        assert!(problems.iter().all(|p| p.kind == ObjectKind::CallCenter));
    }

    #[test]
    fn an_invalid_queue_is_left_out_and_routes_to_it_are_reported() {
        let mut q = queues();
        // Overflow to itself: the webhook refuses it, but it may predate the webhook.
        q[1].spec.overflow = serde_json::from_value(
            json!([{"afterSeconds": 60, "action": "Queue", "queue": "inbound-service"}]),
        )
        .expect("steps");
        let (c, problems) = build(&campus(), &q, &seats(), &secrets());
        let queue_names: Vec<_> = c.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(queue_names, ["outbound-sales"]);
        let invalid = &problems[0];
        assert_eq!(
            (invalid.kind, invalid.name.as_str(), invalid.reason),
            (
                ObjectKind::CallCenter,
                "campus",
                ProblemReason::QueueNotFound
            )
        );
        assert!(problems.iter().any(|p| p.kind == ObjectKind::Queue
            && p.name == "inbound-service"
            && p.reason == ProblemReason::Invalid
            && p.message.contains("cannot overflow to itself")));
        assert!(problems.iter().any(|p| p.kind == ObjectKind::Seat
            && p.name == "inbound-01"
            && p.reason == ProblemReason::QueueNotFound));
    }

    #[test]
    fn objects_of_other_centers_and_namespaces_are_ignored() {
        let mut q = queues();
        q[0].spec.call_center = "downtown".into();
        let mut s = seats();
        s[0].metadata.namespace = Some("elsewhere".into());
        let (c, problems) = build(&campus(), &q, &s, &secrets());
        let queue_names: Vec<_> = c.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(queue_names, ["inbound-service"]);
        assert_eq!(seat_names(&c), ["inbound-01", "team-leader-1"]);
        // outbound-sales is gone from this center, so its menu key and membership are reported.
        assert!(
            problems
                .iter()
                .all(|p| p.reason == ProblemReason::QueueNotFound)
        );
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn a_trunk_whose_secret_is_missing_loses_only_its_credentials() {
        let mut sec = secrets();
        sec.remove("campus-trunk");
        let (c, problems) = build(&campus(), &queues(), &seats(), &sec);
        assert!(c.trunk_secrets.is_empty());
        assert_eq!(c.spec.trunks.len(), 1);
        assert_eq!(c.spec.trunks[0].credentials, None);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.trunks[0].credentials.secretName");
        assert_eq!(problems[0].reason, ProblemReason::SecretNotFound);
    }

    #[test]
    fn a_trunk_secret_without_the_password_key_is_reported_by_key() {
        let mut sec = secrets();
        sec.get_mut("campus-trunk")
            .expect("present")
            .remove("password");
        let (c, problems) = build(&campus(), &queues(), &seats(), &sec);
        assert!(c.trunk_secrets.is_empty());
        assert_eq!(problems[0].field, "spec.trunks[0].credentials.passwordKey");
        assert_eq!(problems[0].reason, ProblemReason::SecretKeyNotFound);
        assert!(problems[0].message.contains("\"password\""));
    }

    #[test]
    fn an_invalid_center_or_one_without_metadata_is_an_error() {
        let mut bad = campus();
        bad.spec.rtp.min_port = 30000;
        bad.spec.rtp.max_port = 20000;
        let err = build_node_config(&bad, &[], &[], &secrets(), 1).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("CallCenter campus is invalid: spec.rtp.maxPort"),
            "{err}"
        );
        let mut nameless = campus();
        nameless.metadata.namespace = None;
        let err = build_node_config(&nameless, &[], &[], &secrets(), 1).expect_err("no ns");
        assert_eq!(err.to_string(), "the CallCenter has no metadata.namespace");
    }

    #[test]
    fn kubernetes_secrets_are_read_from_data_then_string_data() {
        let mut map = BTreeMap::new();
        map.insert(
            "pw".to_string(),
            Secret {
                data: Some(BTreeMap::from([(
                    "2001".to_string(),
                    ByteString(b"from-data".to_vec()),
                )])),
                string_data: Some(BTreeMap::from([(
                    "2002".to_string(),
                    "from-string-data".to_string(),
                )])),
                ..Secret::default()
            },
        );
        assert_eq!(map.value("pw", "2001"), Ok(b"from-data".to_vec()));
        assert_eq!(map.value("pw", "2002"), Ok(b"from-string-data".to_vec()));
        assert_eq!(map.value("pw", "2003"), Err(SecretMiss::NoKey));
        assert_eq!(map.value("other", "2001"), Err(SecretMiss::NoSecret));
    }

    #[test]
    fn a_thousand_seat_center_fits_in_a_config_map() {
        let mut sec = secrets();
        let passwords = sec.get_mut("campus-seat-passwords").expect("present");
        let mut many = seats();
        for i in 0..1000 {
            let ext = format!("{}", 10000 + i);
            passwords.insert(ext.clone(), format!("pw-{i}"));
            many.push(seat(
                &format!("seat-{ext}"),
                &ext,
                &["inbound-service", "outbound-sales"],
                i,
            ));
        }
        let (c, problems) = build(&campus(), &queues(), &many, &sec);
        assert!(problems.is_empty());
        assert_eq!(c.seats.len(), 1003);
        let size = c.to_yaml().expect("yaml").len();
        assert!(size < 1024 * 1024, "{size} bytes");
    }
}
