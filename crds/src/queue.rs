//! The Queue kind: one ACD queue of a call center.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{NAME_PATTERN, PROMPT_PATTERN, SKILL_PATTERN, ServiceLevelTarget};

/// A call queue: callers wait here until the automatic call distributor (ACD) offers them to a
/// Ready agent of the queue, chosen by `strategy` among the seats with the required skills.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "Queue",
    plural = "queues",
    singular = "queue",
    shortname = "cq",
    category = "switchboard",
    namespaced,
    status = "QueueStatus",
    doc = "A call queue of a Switchboard CallCenter.",
    printcolumn(name = "Center", type_ = "string", json_path = ".spec.callCenter"),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.strategy",
        priority = 1
    ),
    printcolumn(
        name = "Waiting",
        type_ = "integer",
        json_path = ".status.callsWaiting"
    ),
    printcolumn(
        name = "Longest",
        type_ = "integer",
        json_path = ".status.longestWaitSeconds",
        description = "Longest current wait, seconds"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.agents.ready",
        description = "Agents Ready"
    ),
    printcolumn(
        name = "SL%",
        type_ = "number",
        json_path = ".status.serviceLevelPercent",
        description = "Service level over the last 15 minutes"
    ),
    printcolumn(
        name = "Required",
        type_ = "integer",
        json_path = ".status.agentsRequired",
        priority = 1,
        description = "Agents needed for the target (Erlang C)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Name of the CallCenter (same namespace) this queue belongs to.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub call_center: String,
    /// Name shown to agents and supervisors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub display_name: Option<String>,
    /// How the next agent is chosen among the Ready agents of the queue.
    #[serde(default)]
    pub strategy: Strategy,
    /// Skills an agent needs to be offered this queue's calls.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub required_skills: Vec<SkillRequirement>,
    /// When queues share agents, a free agent takes the caller of the highest-priority queue
    /// first, then the longest-waiting one.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub priority: u32,
    /// Longest a caller waits before the last overflow step (or, without one, voicemail).
    #[serde(default = "default_max_wait")]
    #[schemars(range(min = 10, max = 7200))]
    pub max_wait_seconds: u32,
    /// Most callers waiting at once; the next caller gets the `whenFull` treatment.
    #[serde(default = "default_max_length")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_length: u32,
    /// Time-based overflow, applied in the listed order as the wait grows.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub overflow: Vec<OverflowStep>,
    /// Seconds an offered call rings one agent. An agent who does not answer is set NotReady
    /// with reason `no-answer` and the call goes to the next agent.
    #[serde(default = "default_ring_timeout")]
    #[schemars(range(min = 5, max = 120))]
    pub ring_timeout_seconds: u32,
    /// After-call work: seconds an agent stays in WrapUp before the next offer (a Seat may
    /// override it).
    #[serde(default = "default_wrap_up")]
    #[schemars(range(min = 0, max = 1800))]
    pub wrap_up_seconds: u32,
    /// A repeat caller is offered first to the agent who last served them, if that agent is
    /// Ready and the last call was within this many minutes. 0 turns it off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10080))]
    pub sticky_agent_minutes: u32,
    /// Announcements played to waiting callers.
    #[serde(default)]
    pub announcements: Announcements,
    /// Music played to waiting callers (an 8 kHz WAV in the prompt store).
    #[serde(default = "default_music_on_hold")]
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub music_on_hold: String,
    /// What happens to a new caller when no agent of the queue is logged in.
    #[serde(default)]
    pub when_no_agents: NoAgentsAction,
    /// Service-level target of this queue. Empty: the CallCenter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_level: Option<ServiceLevelTarget>,
    /// A post-call survey: when the agent hangs up first, the caller hears a prompt and
    /// presses 1 to 5; the score goes into the CDR. Empty: no survey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey: Option<Survey>,
}

/// The post-call survey of a queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Survey {
    /// The question, asking for a key from 1 (poor) to 5 (excellent).
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub prompt: String,
    /// Played after a score was given. Empty: hang up at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub thank_you_prompt: Option<String>,
    /// Seconds to wait for the key after the prompt.
    #[serde(default = "default_survey_timeout")]
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: u32,
}

fn default_survey_timeout() -> u32 {
    8
}

fn default_max_wait() -> u32 {
    600
}
fn default_max_length() -> u32 {
    50
}
fn default_ring_timeout() -> u32 {
    20
}
fn default_wrap_up() -> u32 {
    15
}
fn default_music_on_hold() -> String {
    "moh/default.wav".to_string()
}

/// Agent selection strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Strategy {
    /// Ring every Ready agent at once; the first to answer takes the call.
    RingAll,
    /// The agent idle longest since their last call.
    #[default]
    LongestIdle,
    /// Agents in turn, continuing after the one who took the previous call.
    RoundRobin,
    /// The agent with the fewest calls today.
    FewestCalls,
    /// The agent with the least talk time today.
    LeastTalkTime,
    /// A Ready agent at random.
    Random,
    /// Top-down by tier, then by the order seats joined the queue.
    Linear,
    /// The agent with the highest proficiency in the required skills.
    SkillWeighted,
}

/// A skill an agent must have.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillRequirement {
    /// Skill name, as listed in Seats' `skills`.
    #[schemars(pattern(SKILL_PATTERN))]
    pub name: String,
    /// Lowest proficiency (1-5) that qualifies.
    #[serde(default = "default_min_proficiency")]
    #[schemars(range(min = 1, max = 5))]
    pub min_proficiency: u8,
}

fn default_min_proficiency() -> u8 {
    1
}

/// One overflow step, taken when a caller has waited `afterSeconds`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverflowStep {
    /// Seconds of waiting after which this step applies.
    #[schemars(range(min = 1, max = 7200))]
    pub after_seconds: u32,
    /// What the step does.
    pub action: OverflowAction,
    /// For `RelaxSkills`: the lowest proficiency that now qualifies (lower than the
    /// requirement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub min_proficiency: Option<u8>,
    /// For `Queue`: the Queue (same CallCenter) the caller moves to, keeping their wait time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub queue: Option<String>,
}

/// What an overflow step does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OverflowAction {
    /// Lower the required proficiency to `minProficiency` (every skill), or drop the skill
    /// requirement when `minProficiency` is empty.
    RelaxSkills,
    /// Move the caller to another queue.
    Queue,
    /// Send the caller to voicemail.
    Voicemail,
}

/// Announcements to waiting callers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Announcements {
    /// Announce the caller's position in the queue.
    #[serde(default = "yes")]
    pub position: bool,
    /// Announce the estimated wait.
    #[serde(default = "yes")]
    pub estimated_wait: bool,
    /// Seconds between announcements.
    #[serde(default = "default_announce_every")]
    #[schemars(range(min = 10, max = 600))]
    pub every_seconds: u32,
}

fn yes() -> bool {
    true
}
fn default_announce_every() -> u32 {
    45
}

impl Default for Announcements {
    fn default() -> Self {
        Self {
            position: true,
            estimated_wait: true,
            every_seconds: default_announce_every(),
        }
    }
}

/// Treatment of a new caller when no agent is logged in to the queue.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum NoAgentsAction {
    /// Queue the caller anyway (an agent may log in).
    #[default]
    Wait,
    /// Refuse the call (busy).
    Reject,
    /// Send the caller to voicemail.
    Voicemail,
}

/// Live statistics of a queue, reported by the media node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// `Resolved` (its CallCenter and overflow targets exist) and `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Callers waiting now.
    #[serde(default)]
    pub calls_waiting: u32,
    /// Longest current wait in seconds.
    #[serde(default)]
    pub longest_wait_seconds: u32,
    /// Agents of this queue by state.
    #[serde(default)]
    pub agents: AgentCounts,
    /// Share of calls answered within the threshold over the last 15 minutes, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_level_percent: Option<f64>,
    /// Share of offered calls abandoned over the last 15 minutes, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandon_rate_percent: Option<f64>,
    /// Average speed of answer over the last 15 minutes, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_speed_of_answer_seconds: Option<f64>,
    /// Average handle time (talk, hold and wrap-up) over the last 15 minutes, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_handle_time_seconds: Option<f64>,
    /// Agents needed to meet the service-level target at the current load (Erlang C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents_required: Option<u32>,
}

/// Agents by state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    pub logged_in: u32,
    pub ready: u32,
    pub not_ready: u32,
    pub ringing: u32,
    pub busy: u32,
    pub wrap_up: u32,
}
