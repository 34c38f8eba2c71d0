//! The Seat kind: one agent position.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{EXTENSION_PATTERN, NAME_PATTERN, SKILL_PATTERN, SecretKeyReference};

/// One agent position (坐席): a phone that registers with SIP digest credentials, its
/// extension, the queues it serves and the skills of the agent who sits there.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "Seat",
    plural = "seats",
    singular = "seat",
    shortname = "st",
    category = "switchboard",
    namespaced,
    status = "SeatStatus",
    doc = "An agent or supervisor seat of a Switchboard CallCenter.",
    printcolumn(name = "Center", type_ = "string", json_path = ".spec.callCenter"),
    printcolumn(name = "Extension", type_ = "string", json_path = ".spec.extension"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.agentState"),
    printcolumn(
        name = "Registered",
        type_ = "boolean",
        json_path = ".status.registered"
    ),
    printcolumn(
        name = "Calls",
        type_ = "integer",
        json_path = ".status.callsToday",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SeatSpec {
    /// Name of the CallCenter (same namespace) this seat belongs to.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub call_center: String,
    /// The seat's extension, also its SIP user name: 2-8 digits, not starting with 0.
    /// Unique within the call center.
    #[schemars(pattern(EXTENSION_PATTERN))]
    pub extension: String,
    /// Name shown on phones and to supervisors.
    #[schemars(length(min = 1, max = 64))]
    pub display_name: String,
    /// `Agent`, or `Supervisor` for a team-leader seat (班长席) that may listen in, whisper
    /// and barge on its queues' calls.
    #[serde(default)]
    pub role: SeatRole,
    /// The Secret key that holds the seat's SIP password. The operator sends nodes only the
    /// digest hash (HA1), never the password.
    pub credentials: SecretKeyReference,
    /// Queues this seat takes calls from.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub queues: Vec<QueueMembership>,
    /// The agent's skills with proficiency 1 (basic) to 5 (expert).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub skills: Vec<Skill>,
    /// Recording of this seat's calls: `Inherit` follows the CallCenter's mode.
    #[serde(default)]
    pub recording: SeatRecording,
    /// After-call work seconds for this seat, instead of the queue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1800))]
    pub wrap_up_seconds: Option<u32>,
    /// How many phones may register for this seat at once.
    #[serde(default = "default_max_contacts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_contacts: u32,
}

fn default_max_contacts() -> u32 {
    3
}

/// Role of a seat.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SeatRole {
    #[default]
    Agent,
    Supervisor,
}

/// A seat's membership in a queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueMembership {
    /// Name of the Queue (same namespace).
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// Tier of the seat in this queue: callers are offered to tier 1 before tier 2 and so on
    /// (Asterisk's "penalty").
    #[serde(default = "default_tier")]
    #[schemars(range(min = 1, max = 9))]
    pub tier: u8,
}

fn default_tier() -> u8 {
    1
}

/// A skill and how well the agent has it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Skill {
    /// Skill name, such as `billing` or `mandarin`.
    #[schemars(pattern(SKILL_PATTERN))]
    pub name: String,
    /// 1 (basic) to 5 (expert).
    #[schemars(range(min = 1, max = 5))]
    pub proficiency: u8,
}

/// Recording override of a seat.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SeatRecording {
    #[default]
    Inherit,
    Always,
    Never,
}

/// State of the agent at a seat.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AgentState {
    #[default]
    LoggedOut,
    Ready,
    NotReady,
    Ringing,
    Busy,
    WrapUp,
}

/// Observed state of a seat, reported by the media node (batched).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatStatus {
    /// `Resolved` (its CallCenter, Secret and queues exist, the extension is unique) and
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// At least one phone is registered.
    #[serde(default)]
    pub registered: bool,
    /// Registered phones.
    #[serde(default)]
    pub contacts: Vec<RegisteredContact>,
    /// The agent's state.
    #[serde(default)]
    pub agent_state: AgentState,
    /// Why the agent is NotReady (`no-answer`, `break`, a reason code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// When the current state began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since: Option<Time>,
    /// Calls handled since midnight (the center's time zone).
    #[serde(default)]
    pub calls_today: u32,
    /// Talk time since midnight, seconds.
    #[serde(default)]
    pub talk_time_today_seconds: u64,
}

/// One registered phone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredContact {
    /// The Contact URI.
    pub uri: String,
    /// The phone's User-Agent header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// When the registration expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}
