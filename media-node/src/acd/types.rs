//! The public vocabulary of the ACD core: agents, callers, offers, events and errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchboard_crds::queue::{AgentCounts, NoAgentsAction};
use switchboard_crds::seat::AgentState;

/// Node-local id of a queued caller (chosen by the call session, unique while queued).
pub type CallKey = u64;

/// NotReady reason set when an offered phone could not be reached at all.
pub const UNREACHABLE_REASON: &str = "unreachable";

/// Handle time assumed for a queue before any of its calls has ended (for the estimated
/// wait).
pub const DEFAULT_HANDLE_TIME: Duration = Duration::from_secs(180);

/// One seat as the ACD sees it (from the Seat spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Seat object name: the agent's key everywhere in the ACD.
    pub seat: String,
    /// The seat's extension (SIP user).
    pub extension: String,
    /// Queues served, with the tier (1 = offered first), in the order the seat lists them.
    /// The order of `agents` given to [`super::Acd::configure`] is the queue's membership
    /// order (used by linear and round-robin).
    pub queues: Vec<(String, u8)>,
    /// Skill name to proficiency (1-5).
    pub skills: BTreeMap<String, u8>,
    /// After-call work seconds instead of the queue's.
    pub wrap_up_seconds: Option<u32>,
}

/// The current state of an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentStatus {
    /// The state.
    pub state: AgentState,
    /// Why the agent is NotReady (`no-answer`, `unreachable`, or the agent's reason).
    pub reason: Option<String>,
    /// When the state began.
    pub since: Instant,
    /// Queue calls answered since the last [`super::Acd::reset_daily_counters`].
    pub calls_today: u32,
    /// Talk time of queue calls since the last [`super::Acd::reset_daily_counters`].
    pub talk_time_today: Duration,
}

/// What an agent asks for (feature codes, the agent API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentRequest {
    /// Start taking queue calls: Ready.
    Login,
    /// Stop taking queue calls.
    Logout,
    /// Take queue calls again after a pause.
    Ready,
    /// Pause, with a reason.
    NotReady(String),
}

/// An agent request the ACD refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No seat of that name is configured.
    #[error("seat {0:?} is not configured in the ACD")]
    UnknownSeat(String),
    /// Ready/NotReady need a login first.
    #[error("seat {0:?} is logged out: log in first")]
    NotLoggedIn(String),
}

/// The caller as the ACD needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallerInfo {
    /// Caller number (for the sticky agent); empty when unknown.
    pub number: String,
    /// Extra priority within the queue (from the IVR PIN): higher is served first.
    pub priority_boost: u32,
}

/// Why a caller was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No queue of that name is configured.
    #[error("queue {0:?} is not configured in the ACD")]
    UnknownQueue(String),
    /// The caller key is already waiting in a queue.
    #[error("call {0} is already queued")]
    AlreadyQueued(CallKey),
    /// `maxLength` callers are waiting already.
    #[error("queue {0:?} is full")]
    Full(String),
    /// No agent of the queue is logged in and `whenNoAgents` is not `Wait`.
    #[error("no agent of the queue is logged in ({0:?})")]
    NoAgentsLoggedIn(NoAgentsAction),
}

/// A routing decision: ring these seats for this caller now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The caller.
    pub call: CallKey,
    /// The queue the caller waits in.
    pub queue: String,
    /// Seats to ring now (several only for ring-all); they are Ringing from now on.
    pub agents: Vec<String>,
    /// The queue's ring timeout. [`super::Acd::tick`] also enforces it (see
    /// [`QueueEvent::RingNoAnswer`]).
    pub ring_timeout: Duration,
}

/// Why an offered seat did not take the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferFailure {
    /// Ring timeout, or 408/480 from the phone: the agent becomes NotReady(`no-answer`).
    NoAnswer,
    /// 486/603 from the phone: the agent stays Ready but is not offered this caller again.
    Declined,
    /// The phone could not be reached (transport error, 404, 5xx): the agent becomes
    /// NotReady(`unreachable`) so that callers are not offered to a dead phone.
    Unreachable,
}

/// Something [`super::Acd::tick`] did that the call session must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueEvent {
    /// The seat's after-call work ended (it is Ready again, or what it asked for meanwhile).
    WrapUpEnded {
        /// The seat.
        seat: String,
    },
    /// The seat did not answer within the ring timeout: the session must cancel the ringing
    /// leg; the agent is NotReady(`no-answer`) and the caller goes to the next agent.
    RingNoAnswer {
        /// The caller.
        call: CallKey,
        /// The seat.
        seat: String,
    },
    /// A `RelaxSkills` step lowered the caller's skill minimum (`None`: no requirement).
    SkillsRelaxed {
        /// The caller.
        call: CallKey,
        /// The caller's queue.
        queue: String,
        /// The new minimum proficiency.
        min_proficiency: Option<u8>,
    },
    /// A `Queue` step moved the caller to another queue (keeping their place by wait time).
    Overflowed {
        /// The caller.
        call: CallKey,
        /// The queue left.
        from: String,
        /// The queue joined.
        to: String,
    },
    /// A `Voicemail` step (or the max wait with a last `Voicemail` step): the caller left the
    /// queue and goes to voicemail.
    ToVoicemail {
        /// The caller.
        call: CallKey,
        /// The queue left.
        queue: String,
    },
    /// The caller waited `maxWaitSeconds` and the queue has no last destination step: the
    /// caller left the queue; the session decides what follows (the Queue's documentation
    /// says voicemail).
    MaxWaitReached {
        /// The caller.
        call: CallKey,
        /// The queue left.
        queue: String,
    },
}

/// Live numbers of one queue, for statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSnapshot {
    /// Callers waiting (including those being offered right now).
    pub waiting: u32,
    /// Callers whose offer is ringing now.
    pub offering: u32,
    /// Longest current wait (from the original enqueue time).
    pub longest_wait: Duration,
    /// Member agents by state.
    pub agents: AgentCounts,
    /// Recent average handle time (talk and wrap-up), if any call has ended.
    pub average_handle_time: Option<Duration>,
}
