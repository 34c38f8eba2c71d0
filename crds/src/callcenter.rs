//! The CallCenter kind: one call center and everything its media nodes serve.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    DATE_PATTERN, DIALED_NUMBER_PATTERN, DTMF_DIGIT_PATTERN, E164_PATTERN, HOST_PATTERN,
    NAME_PATTERN, PROMPT_PATTERN, SecretKeyReference, ServiceLevelTarget,
};

/// A call center: SIP and media settings, trunks, entry numbers, voice menus, business hours,
/// recording and the service-level target. The operator runs it as one media node, or two with
/// `highAvailability.mode: HotStandby`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "CallCenter",
    plural = "callcenters",
    singular = "callcenter",
    shortname = "cc",
    category = "switchboard",
    namespaced,
    status = "CallCenterStatus",
    doc = "A call center served by Switchboard media nodes.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.sip.domain"),
    printcolumn(
        name = "HA",
        type_ = "string",
        json_path = ".spec.highAvailability.mode"
    ),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeNode"),
    printcolumn(
        name = "Channels",
        type_ = "integer",
        json_path = ".status.trunkChannels",
        priority = 1,
        description = "Channel limit of the first trunk (the scale subresource's replicas)"
    ),
    printcolumn(
        name = "Seats-Ready",
        type_ = "integer",
        json_path = ".status.seatsReady"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // `kubectl scale callcenter/NAME --replicas=N` sets the first trunk's channel limit.
    scale(
        spec_replicas_path = ".spec.trunkChannels",
        status_replicas_path = ".status.trunkChannels"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CallCenterSpec {
    /// SIP signalling: domain, listening ports and the address phones and trunks are told to use.
    pub sip: SipSpec,
    /// RTP media ports. Every call leg takes two ports (RTP and RTCP) from this range.
    #[serde(default)]
    pub rtp: RtpSpec,
    /// Audio codecs offered, in order of preference. G.711 µ-law (`PCMU`) and A-law (`PCMA`);
    /// the node transcodes between legs that chose different ones.
    #[serde(default = "default_codecs")]
    #[schemars(length(min = 1, max = 2))]
    pub codecs: Vec<Codec>,
    /// High availability: a single node, or an active node with a hot standby that keeps
    /// established calls up when the active one fails.
    #[serde(default)]
    pub high_availability: HighAvailabilitySpec,
    /// SIP trunks to the telephone network (carrier or campus PBX).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub trunks: Vec<TrunkSpec>,
    /// Dialed numbers that enter the call center and where each one goes first.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub entry_points: Vec<EntryPoint>,
    /// Voice menus (IVR) that entry points and other menus can send callers to.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub ivr_menus: Vec<IvrMenu>,
    /// Opening hours. Menus with an `afterHours` route use it outside these hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_hours: Option<BusinessHours>,
    /// Codes agents dial from their own phone to log in and out and to change their agent
    /// state.
    #[serde(default)]
    pub feature_codes: FeatureCodes,
    /// Voicemail for overflow, after hours and unanswered seats.
    #[serde(default)]
    pub voicemail: VoicemailSpec,
    /// Call recording and where recordings are kept.
    #[serde(default)]
    pub recording: RecordingSpec,
    /// Default service-level target of this center's queues (a Queue may set its own).
    #[serde(default)]
    pub service_level: ServiceLevelTarget,
    /// How the media-node pods run: image, scheduling, resources and networking mode.
    #[serde(default)]
    pub nodes: NodesSpec,
    /// Channel limit wanted for the first trunk (`trunks[0]`), the `replicas` of the scale
    /// subresource: `kubectl scale callcenter/NAME --replicas=40` (or an HPA-style controller)
    /// sets it. When set it overrides that trunk's `channels.limit` and its autoscaling, and it
    /// must lie within the trunk's `minChannels`..`maxChannels` (a request outside is refused).
    /// Remove it to hand the trunk back to its `limit` or autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub trunk_channels: Option<u32>,
}

/// SIP signalling settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipSpec {
    /// The SIP domain seats register to (the host part of `sip:1001@domain`).
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub domain: String,
    /// UDP port for SIP.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub udp_port: u16,
    /// TCP port for SIP.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: u16,
    /// Address (IP or host name) written into Contact, Via and SDP so phones and trunks reach
    /// the node, for example a campus LoadBalancer IP. Empty: the node's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(HOST_PATTERN))]
    pub advertised_address: Option<String>,
}

fn default_sip_port() -> u16 {
    5060
}

/// The RTP port range. Ports are used in even/odd pairs (RTP, RTCP), so the range holds
/// `(maxPort - minPort + 1) / 2` call legs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RtpSpec {
    /// Lowest RTP port (inclusive).
    #[serde(default = "default_rtp_min")]
    #[schemars(range(min = 1024, max = 65534))]
    pub min_port: u16,
    /// Highest RTP port (inclusive); must be above `minPort`.
    #[serde(default = "default_rtp_max")]
    #[schemars(range(min = 1025, max = 65535))]
    pub max_port: u16,
}

fn default_rtp_min() -> u16 {
    10000
}
fn default_rtp_max() -> u16 {
    20000
}

impl Default for RtpSpec {
    fn default() -> Self {
        Self {
            min_port: default_rtp_min(),
            max_port: default_rtp_max(),
        }
    }
}

/// An audio codec, by its SDP encoding name.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Codec {
    /// G.711 µ-law (payload type 0).
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law (payload type 8).
    #[serde(rename = "PCMA")]
    Pcma,
}

fn default_codecs() -> Vec<Codec> {
    vec![Codec::Pcmu, Codec::Pcma]
}

/// High-availability settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilitySpec {
    /// `None` runs one media node. `HotStandby` runs an active and a standby node; the
    /// standby follows the active's state and takes over its calls when it fails.
    #[serde(default)]
    pub mode: HaMode,
    /// How long the active node's Lease stays valid without renewal. A standby takes over
    /// (and moves the live calls' media to itself) at most this long after the active stops
    /// renewing; the active stops serving when it could not renew for this long minus one
    /// renew interval. 3 s with 1 s renewals keeps the media gap of a failover under about
    /// 3 s; 2 s with 1 s renewals is the fastest safe setting (one failed renewal fences the
    /// active).
    #[serde(default = "default_lease_duration")]
    #[schemars(range(min = 2, max = 120))]
    pub lease_duration_seconds: u32,
    /// How often the active node renews its Lease; must be below `leaseDurationSeconds`.
    #[serde(default = "default_lease_renew")]
    #[schemars(range(min = 1, max = 60))]
    pub renew_interval_seconds: u32,
    /// On shutdown, how long a node lets established calls finish before it exits.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: u32,
}

fn default_lease_duration() -> u32 {
    3
}
fn default_lease_renew() -> u32 {
    1
}
fn default_drain_timeout() -> u32 {
    600
}

impl Default for HighAvailabilitySpec {
    fn default() -> Self {
        Self {
            mode: HaMode::default(),
            lease_duration_seconds: default_lease_duration(),
            renew_interval_seconds: default_lease_renew(),
            drain_timeout_seconds: default_drain_timeout(),
        }
    }
}

/// High-availability mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum HaMode {
    /// One media node; a node failure drops its calls until Kubernetes restarts it.
    #[default]
    None,
    /// Two media nodes: an active one and a hot standby that takes over live calls.
    HotStandby,
}

/// A SIP trunk to a carrier or PBX.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkSpec {
    /// Name of the trunk, unique within the call center.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// The trunk's SIP peer.
    pub peer: TrunkPeer,
    /// Source addresses or CIDR blocks trusted as this trunk for inbound calls. Empty: the
    /// peer host's own addresses.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(length(min = 2, max = 49), pattern(r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"))
    )]
    pub allowed_sources: Vec<String>,
    /// Digest credentials the node answers with when the trunk challenges an outbound call
    /// (a Secret with `username` and `password` keys, or the keys named here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<TrunkCredentials>,
    /// Numbers (DIDs) this trunk delivers to the call center, in E.164 form.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(pattern(E164_PATTERN)))]
    pub inbound_numbers: Vec<String>,
    /// Outbound dial-plan rules: a seat's dialed number that starts with `prefix` leaves
    /// through this trunk.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub dial_prefixes: Vec<DialPrefix>,
    /// Concurrent call channels (an E1 carries 30) and how they scale with traffic.
    #[serde(default)]
    pub channels: TrunkChannels,
}

/// Where a trunk's SIP peer is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkPeer {
    /// Host name or IP address of the peer.
    #[schemars(length(min = 1, max = 253), pattern(HOST_PATTERN))]
    pub host: String,
    /// SIP port of the peer.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Transport to the peer.
    #[serde(default)]
    pub transport: SipTransport,
}

/// SIP transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SipTransport {
    #[default]
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "TCP")]
    Tcp,
}

/// Digest credentials for a trunk, from a Secret in the call center's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkCredentials {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_string()
}
fn default_password_key() -> String {
    "password".to_string()
}

/// An outbound dial-plan rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DialPrefix {
    /// Leading digits that select this trunk, for example `0` for an outside line.
    #[schemars(length(min = 1, max = 8), pattern(r"^[0-9+]{1,8}$"))]
    pub prefix: String,
    /// How many leading digits to remove before the number is sent to the trunk.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub strip: u8,
    /// Digits to put in front of the number after stripping, for example `+86`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(r"^\+?[0-9]{0,15}$"))]
    pub prepend: Option<String>,
}

/// Channel capacity of a trunk. With `autoscaling`, the operator sizes `limit` from the
/// offered traffic with Erlang B for `targetBlocking`, within `minChannels`..`maxChannels`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkChannels {
    /// Concurrent calls allowed now. A call beyond it is refused with 503 and counted as
    /// blocked.
    #[serde(default = "default_channel_limit")]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: u32,
    /// Lowest limit autoscaling may set.
    #[serde(default = "default_min_channels")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_channels: u32,
    /// Highest limit autoscaling may set (what the carrier contract allows).
    #[serde(default = "default_channel_limit")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_channels: u32,
    /// Let the operator size `limit` from the measured traffic.
    #[serde(default)]
    pub autoscaling: bool,
    /// Target probability that a call finds every channel busy (Erlang B grade of service).
    #[serde(default = "default_target_blocking")]
    #[schemars(range(min = 0.0001, max = 0.5))]
    pub target_blocking: f64,
}

fn default_channel_limit() -> u32 {
    30
}
fn default_min_channels() -> u32 {
    1
}
fn default_target_blocking() -> f64 {
    0.01
}

impl Default for TrunkChannels {
    fn default() -> Self {
        Self {
            limit: default_channel_limit(),
            min_channels: default_min_channels(),
            max_channels: default_channel_limit(),
            autoscaling: false,
            target_blocking: default_target_blocking(),
        }
    }
}

/// A dialed number that enters the call center.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntryPoint {
    /// The dialed number: E.164 as delivered by a trunk, or a short internal number seats dial.
    #[schemars(pattern(DIALED_NUMBER_PATTERN))]
    pub number: String,
    /// Where a call to this number goes.
    pub route: Route,
}

/// Where a call is sent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// What to do with the call.
    pub action: RouteAction,
    /// The menu, Queue or Seat name for `Menu`, `Queue` and `Seat`; for `Voicemail`, the
    /// Seat whose mailbox takes the message (empty: the center's general mailbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub target: Option<String>,
}

/// What a route does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RouteAction {
    /// Play an IVR menu of this call center.
    Menu,
    /// Put the caller in a Queue.
    Queue,
    /// Ring one Seat.
    Seat,
    /// Record a voicemail message.
    Voicemail,
    /// Play nothing more and hang up.
    Hangup,
}

/// A voice menu: a prompt, then one DTMF key chooses where the call goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IvrMenu {
    /// Name of the menu, unique within the call center; routes refer to it.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// Prompt played when the menu starts (an 8 kHz WAV in the prompt store).
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub prompt: String,
    /// The keys callers can press.
    #[serde(default)]
    #[schemars(length(max = 12))]
    pub options: Vec<MenuOption>,
    /// Seconds to wait for a key after the prompt ends.
    #[serde(default = "default_menu_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u32,
    /// How often the menu repeats after an invalid key or a timeout before `onFailure`.
    #[serde(default = "default_menu_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: u32,
    /// Prompt played after a key that is not an option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub invalid_prompt: Option<String>,
    /// Prompt played when no key was pressed in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub timeout_prompt: Option<String>,
    /// Where the call goes when the retries are used up. Empty: hang up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Route>,
    /// Where the call goes outside business hours instead of playing this menu. Empty: the
    /// menu plays at all hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_hours: Option<Route>,
    /// Instead of one key, collect a member PIN ended by `#`. A menu that collects has no
    /// `options`; a wrong PIN counts as an invalid key (the menu repeats, then `onFailure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_pin: Option<PinCollection>,
}

/// A member PIN collected by a menu: a caller who enters a valid PIN is put ahead of other
/// callers when queued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinCollection {
    /// The Secret key holding the valid PINs, one per line (4 to 12 digits each). The node
    /// only ever holds their salted SHA-256 hashes.
    pub pins: SecretKeyReference,
    /// Most digits a PIN has; the caller ends shorter PINs with `#`.
    #[serde(default = "default_pin_digits")]
    #[schemars(range(min = 4, max = 12))]
    pub max_digits: u32,
    /// Added to the caller's priority in every queue after a valid PIN (higher is served
    /// first among callers of the same queue).
    #[serde(default = "default_pin_priority")]
    #[schemars(range(min = 1, max = 100))]
    pub priority_boost: u32,
    /// Where the call goes after a valid PIN.
    pub on_valid: Route,
}

fn default_pin_digits() -> u32 {
    6
}
fn default_pin_priority() -> u32 {
    10
}

/// Feature codes dialed from a seat's own phone. Each code is `*` and one to three digits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureCodes {
    /// Log in: the seat starts taking queue calls (Ready).
    #[serde(default = "default_login_code")]
    #[schemars(pattern(FEATURE_CODE_PATTERN))]
    pub login: String,
    /// Log out: the seat gets no queue calls until it logs in again.
    #[serde(default = "default_logout_code")]
    #[schemars(pattern(FEATURE_CODE_PATTERN))]
    pub logout: String,
    /// Ready: take queue calls again after a pause.
    #[serde(default = "default_ready_code")]
    #[schemars(pattern(FEATURE_CODE_PATTERN))]
    pub ready: String,
    /// Not ready: this code followed by one reason digit (`*24` then `1` dials `*241`).
    #[serde(default = "default_not_ready_code")]
    #[schemars(pattern(FEATURE_CODE_PATTERN))]
    pub not_ready: String,
    /// The reasons an agent can give for NotReady, by digit. `no-answer` is set by the node
    /// itself after an unanswered offer.
    #[serde(default = "default_not_ready_reasons")]
    #[schemars(length(min = 1, max = 10))]
    pub not_ready_reasons: Vec<NotReadyReason>,
}

/// A feature code: `*` and one to three digits.
pub const FEATURE_CODE_PATTERN: &str = r"^\*[0-9]{1,3}$";

/// One NotReady reason an agent can dial.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotReadyReason {
    /// The digit dialed after the NotReady code.
    #[schemars(pattern(r"^[0-9]$"))]
    pub digit: String,
    /// The reason shown in status and statistics, for example `break`.
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z][a-z0-9-]*$"))]
    pub reason: String,
}

fn default_login_code() -> String {
    "*21".to_string()
}
fn default_logout_code() -> String {
    "*22".to_string()
}
fn default_ready_code() -> String {
    "*23".to_string()
}
fn default_not_ready_code() -> String {
    "*24".to_string()
}
fn default_not_ready_reasons() -> Vec<NotReadyReason> {
    [
        ("1", "break"),
        ("2", "meal"),
        ("3", "training"),
        ("4", "meeting"),
        ("5", "coaching"),
    ]
    .into_iter()
    .map(|(digit, reason)| NotReadyReason {
        digit: digit.to_string(),
        reason: reason.to_string(),
    })
    .collect()
}

impl Default for FeatureCodes {
    fn default() -> Self {
        Self {
            login: default_login_code(),
            logout: default_logout_code(),
            ready: default_ready_code(),
            not_ready: default_not_ready_code(),
            not_ready_reasons: default_not_ready_reasons(),
        }
    }
}

/// Voicemail: what callers hear and how long they may speak.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoicemailSpec {
    /// Greeting played before the tone (an 8 kHz WAV in the prompt store).
    #[serde(default = "default_voicemail_greeting")]
    #[schemars(length(min = 5, max = 255), pattern(PROMPT_PATTERN))]
    pub greeting: String,
    /// Longest message in seconds; recording stops there.
    #[serde(default = "default_voicemail_seconds")]
    #[schemars(range(min = 5, max = 600))]
    pub max_message_seconds: u32,
}

fn default_voicemail_greeting() -> String {
    "voicemail/greeting.wav".to_string()
}
fn default_voicemail_seconds() -> u32 {
    120
}

impl Default for VoicemailSpec {
    fn default() -> Self {
        Self {
            greeting: default_voicemail_greeting(),
            max_message_seconds: default_voicemail_seconds(),
        }
    }
}

fn default_menu_timeout() -> u32 {
    5
}
fn default_menu_retries() -> u32 {
    2
}

/// One key of a menu.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MenuOption {
    /// The DTMF key: `0`-`9`, `*` or `#`.
    #[schemars(pattern(DTMF_DIGIT_PATTERN))]
    pub digit: String,
    /// Where the key sends the call.
    pub route: Route,
}

/// Opening hours in one time zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusinessHours {
    /// IANA time zone of the schedule, for example `Asia/Shanghai`.
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z][A-Za-z0-9_+/-]*$"))]
    pub time_zone: String,
    /// Weekly opening hours. A day without an entry is closed.
    #[schemars(length(min = 1, max = 28))]
    pub weekly: Vec<OpeningHours>,
    /// Dates on which the center is closed all day.
    #[serde(default)]
    #[schemars(length(max = 366))]
    pub holidays: Vec<Holiday>,
}

/// Opening hours on some days of the week.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpeningHours {
    /// Days these hours apply to.
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<Weekday>,
    /// Opening time `HH:MM` in the schedule's time zone.
    #[schemars(pattern(crate::common::CLOCK_TIME_PATTERN))]
    pub open: String,
    /// Closing time `HH:MM` (or `24:00`); must be after `open`.
    #[schemars(pattern(crate::common::CLOCK_TIME_PATTERN))]
    pub close: String,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

/// A day the center is closed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Holiday {
    /// The date, `YYYY-MM-DD`, in the schedule's time zone.
    #[schemars(pattern(DATE_PATTERN))]
    pub date: String,
    /// What the day is, for people reading the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub name: Option<String>,
}

/// Call recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSpec {
    /// `Never`, `Always` (every bridged call), or `OnDemand` (only seats whose
    /// `recording` is `Always`).
    #[serde(default)]
    pub mode: RecordingMode,
    /// Size of each media node's recording volume.
    #[serde(default = "default_recording_size")]
    pub storage_size: Quantity,
    /// StorageClass of the recording volume. Empty: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Days a recording (WAV and metadata) is kept before the node deletes it.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: u32,
}

fn default_recording_size() -> Quantity {
    Quantity("10Gi".to_string())
}
fn default_retention_days() -> u32 {
    90
}

impl Default for RecordingSpec {
    fn default() -> Self {
        Self {
            mode: RecordingMode::default(),
            storage_size: default_recording_size(),
            storage_class_name: None,
            retention_days: default_retention_days(),
        }
    }
}

/// Which calls are recorded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RecordingMode {
    #[default]
    Never,
    Always,
    OnDemand,
}

/// How the operator runs this center's media-node pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesSpec {
    /// Media-node container image, for example `registry.campus.edu/switchboard/media-node:0.1.0`.
    /// Empty: the image the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(r"^[^\s]+$"))]
    pub image: Option<String>,
    /// When the kubelet pulls the media-node image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// Run media nodes in the host's network namespace: SIP and every RTP port are opened on
    /// the Kubernetes node's own address, with no Service or NAT in between. This is the
    /// campus-cluster option for phones and trunks outside the cluster that cannot reach pod
    /// IPs. The SIP ports and the metrics port 9090 become host ports, so one host runs at
    /// most one media node using them: with `HotStandby` the two nodes need two hosts, and
    /// centers sharing hosts need distinct SIP ports and RTP ranges, all 1024 or above (the
    /// node runs as non-root). Default: pod networking,
    /// where in-cluster peers reach RTP on the pod IP and SIP through the center's Service.
    #[serde(default)]
    pub host_network: bool,
    /// CPU and memory requests and limits of the media-node container. Empty: none set (the
    /// namespace's defaults apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a media-node pod requires, for example to keep media on the hosts that
    /// have the campus voice VLAN.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the media-node pods tolerate, for example hosts reserved for voice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Extra annotations on the media-node pods (for example for a network plugin). Keys the
    /// operator sets itself win over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// When the kubelet pulls an image (the Kubernetes `imagePullPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the host does not have the image yet.
    #[default]
    IfNotPresent,
    /// Never pull; the image must be on the host already (air-gapped campus clusters).
    Never,
}

impl ImagePullPolicy {
    /// The value of a container's `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Observed state of a call center.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallCenterStatus {
    /// `Ready`, `Available`, `Progressing`, `Degraded` and `StandbyReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pod name of the node that serves calls now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_node: Option<String>,
    /// Pod name of the hot standby, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_node: Option<String>,
    /// Failovers since the call center was created: a standby took over from an active node
    /// that failed (or took over the calls of one that died while it drained). A Lease handed
    /// over on drain, as in a rolling update, is not a failover.
    #[serde(default)]
    pub failover_count: u32,
    /// When the last failover happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<Time>,
    /// The media nodes' Lease `leaseTransitions` when the operator last looked (HotStandby):
    /// every rise is a change of the active node, a failover or a handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_lease_transitions: Option<i32>,
    /// The media nodes' Lease failover count (its `switchboard.dev/failovers` annotation, kept
    /// by the nodes) when the operator last looked (HotStandby): every rise is a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_lease_failovers: Option<u32>,
    /// Generation of the node configuration the operator pushed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<i64>,
    /// Seats with at least one registered phone.
    #[serde(default)]
    pub seats_registered: u32,
    /// Seats logged in and Ready for calls.
    #[serde(default)]
    pub seats_ready: u32,
    /// Channels of each trunk.
    #[serde(default)]
    pub trunks: Vec<TrunkStatus>,
    /// Channel limit in force on the first trunk (`trunks[0].limit`): the `replicas` the
    /// scale subresource reports. Absent without trunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk_channels: Option<u32>,
    /// Each media node and the node configuration it runs.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
}

/// One media node as the operator last reached it over the control API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's pod name.
    pub name: String,
    /// Generation of the node configuration the node said it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<i64>,
    /// Whether the node runs the configuration the operator pushed last.
    pub config: NodeConfigState,
    /// Why, when the node refused the configuration or could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a node stands with the configuration the operator pushed last.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeConfigState {
    /// The node acknowledged the configuration and runs it.
    Current,
    /// The node has no address yet (starting); it reads the ConfigMap when it starts.
    Pending,
    /// The node refused the configuration and keeps running the one it had; `message` says
    /// why.
    Rejected,
    /// The node's control API did not answer; the operator retries with backoff.
    Unreachable,
}

/// Observed channels of one trunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkStatus {
    /// The trunk's name.
    pub name: String,
    /// Channel limit in force: the one the operator gives the nodes (`spec.trunkChannels` for
    /// the first trunk when set, else the autoscaler's with `autoscaling`, else
    /// `channels.limit`), always within `minChannels`..`maxChannels`.
    pub limit: u32,
    /// Channels carrying a call now, as the serving node counts them.
    pub busy: u32,
    /// Calls refused because every channel was busy, since the node started.
    pub blocked: u64,
    /// Offered traffic over the serving node's rolling window, in erlangs; absent until the
    /// node has measured some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_erlangs: Option<f64>,
    /// When `limit` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,
    /// Why `limit` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_reason: Option<String>,
}

/// A channel limit asked for through the scale subresource (`spec.trunkChannels`) that the
/// trunk's bounds do not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleRefused {
    /// The requested limit lies outside `minChannels..=maxChannels`.
    #[error(
        "cannot set the trunk to {requested} channels: the limit must stay within \
         minChannels {min_channels} and maxChannels {max_channels}"
    )]
    OutsideBounds {
        /// The requested limit.
        requested: u32,
        /// `minChannels`.
        min_channels: u32,
        /// `maxChannels`.
        max_channels: u32,
    },
    /// The bounds themselves are unusable.
    #[error(
        "cannot set the trunk to {requested} channels: its bounds are invalid \
         (minChannels {min_channels} must be at least 1 and at most maxChannels {max_channels})"
    )]
    InvalidBounds {
        /// The requested limit.
        requested: u32,
        /// `minChannels`.
        min_channels: u32,
        /// `maxChannels`.
        max_channels: u32,
    },
}

/// Accepts a requested channel limit when it lies within the trunk's bounds. The webhook, the
/// standalone loader and the operator's trunk scaler share it, so a refusal reads the same
/// everywhere.
pub fn check_scale_request(requested: u32, channels: &TrunkChannels) -> Result<u32, ScaleRefused> {
    let (min_channels, max_channels) = (channels.min_channels, channels.max_channels);
    if min_channels == 0 || min_channels > max_channels {
        return Err(ScaleRefused::InvalidBounds {
            requested,
            min_channels,
            max_channels,
        });
    }
    if (min_channels..=max_channels).contains(&requested) {
        Ok(requested)
    } else {
        Err(ScaleRefused::OutsideBounds {
            requested,
            min_channels,
            max_channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_default_to_pod_networking_and_if_not_present() {
        let spec: CallCenterSpec =
            serde_json::from_value(serde_json::json!({"sip": {"domain": "cc.example.edu"}}))
                .expect("minimal spec");
        assert_eq!(spec.nodes, NodesSpec::default());
        assert!(!spec.nodes.host_network);
        assert_eq!(spec.nodes.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert_eq!(spec.nodes.image, None);
        // Empty optional fields stay out of the serialised spec.
        let json = serde_json::to_value(&spec.nodes).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"imagePullPolicy": "IfNotPresent", "hostNetwork": false})
        );
    }

    #[test]
    fn nodes_read_every_field() {
        let nodes: NodesSpec = serde_json::from_value(serde_json::json!({
            "image": "registry.campus.example.edu/media-node:0.1.0",
            "imagePullPolicy": "Never",
            "hostNetwork": true,
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
            "nodeSelector": {"campus.example.edu/voice-vlan": "true"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "voice", "effect": "NoSchedule"}],
            "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "voice-vlan"}
        }))
        .expect("full nodes spec");
        assert_eq!(nodes.image_pull_policy.as_str(), "Never");
        assert!(nodes.host_network);
        assert_eq!(
            nodes
                .resources
                .and_then(|r| r.requests)
                .map(|r| r["cpu"].0.clone()),
            Some("500m".to_string())
        );
        assert_eq!(nodes.node_selector.len(), 1);
        assert_eq!(nodes.tolerations[0].value.as_deref(), Some("voice"));
        assert_eq!(
            nodes.pod_annotations["k8s.v1.cni.cncf.io/networks"],
            "voice-vlan"
        );
    }

    #[test]
    fn an_unknown_pull_policy_is_refused() {
        let r: Result<NodesSpec, _> =
            serde_json::from_value(serde_json::json!({"imagePullPolicy": "Sometimes"}));
        assert!(r.is_err());
    }
}
