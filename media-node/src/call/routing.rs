//! Where a call goes: a pure decision over the caller, the dialed number, the dial plan
//! (entry points, trunk dial prefixes) and the registrar's bindings, so every path is
//! unit-tested without sockets.
//!
//! A seat's call: its own extension space first (a dialed extension rings that seat), then the
//! center's entry points (short numbers), then the trunks' outbound dial prefixes (longest
//! prefix wins). A trunk's call (trusted by source address): the entry points (the dialed
//! number as delivered, E.164 or short), then the seats' extensions; a trunk never reaches
//! another trunk (no toll fraud through the node). Entry points routed to a seat ring it; IVR
//! menus, queues and voicemail are call-center routes the node answers itself
//! ([`RouteDecision::Center`]). A seat's own feature codes (login, logout, ready, not ready
//! with a reason digit) come before everything else. A call to a seat rings the seat's most
//! recently refreshed contact
//! (no forking: one phone per agent is the call-center norm, and the newest binding is the
//! phone the agent last used).

use std::collections::BTreeMap;

use switchboard_crds::callcenter::{EntryPoint, FeatureCodes, RouteAction};

use super::trunks::Trunks;
use crate::acd::AgentRequest;
use crate::sip::registrar::Binding;

/// What the routing core needs to know about seats.
pub trait SeatDirectory {
    /// Whether a seat with this extension exists in the call center.
    fn seat_exists(&self, extension: &str) -> bool;
    /// The seat's live registered contacts.
    fn contacts(&self, extension: &str) -> Vec<Binding>;
}

/// Who places the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A seat, authenticated by digest.
    Seat(&'a str),
    /// A trunk, trusted by its source address.
    Trunk(&'a str),
}

/// The call center's dial plan.
#[derive(Debug, Clone, Copy)]
pub struct DialPlan<'a> {
    pub entry_points: &'a [EntryPoint],
    /// Seat name → extension (entry points name seats).
    pub seat_extensions: &'a BTreeMap<String, String>,
    pub trunks: &'a Trunks,
    /// The seats' feature codes (`spec.featureCodes`).
    pub feature_codes: &'a FeatureCodes,
}

/// Where a call is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Ring this registered contact of a seat.
    Seat { extension: String, contact: Binding },
    /// Out through a trunk, sending `number`.
    Trunk { trunk: String, number: String },
}

/// The routing decision for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    Ring(Destination),
    /// A seat that exists but has no registered phone: 480 Temporarily Unavailable.
    SeatUnavailable {
        extension: String,
    },
    /// Calling one's own extension: 486 Busy Here (the phone placing the call is in use).
    SelfCall,
    /// Nothing answers to this number: 404 Not Found.
    NotFound,
    /// A route the node answers itself: an IVR menu, a queue, voicemail, a feature code.
    Center(CenterRoute),
    /// An entry point routed to `Hangup`: 603 Decline.
    Declined,
}

impl RouteDecision {
    /// The SIP status a call gets when it is not rung.
    pub fn rejection_status(&self) -> Option<u16> {
        match self {
            Self::Ring(_) => None,
            // A node without the call-center runtime cannot serve these.
            Self::SeatUnavailable { .. } | Self::Center(_) => Some(480),
            Self::SelfCall => Some(486),
            Self::NotFound => Some(404),
            Self::Declined => Some(603),
        }
    }

    /// The reason phrase of [`Self::rejection_status`] where the standard one says too little.
    pub fn rejection_reason(&self) -> Option<String> {
        match self {
            Self::Center(route) => Some(format!(
                "Temporarily Unavailable ({} routing is not served by this node)",
                route.label()
            )),
            _ => None,
        }
    }
}

/// A call the node answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CenterRoute {
    /// Play this IVR menu.
    Menu(String),
    /// Queue the caller.
    Queue(String),
    /// Record a message in a seat's mailbox (`None`: the center's general mailbox).
    Voicemail { mailbox: Option<String> },
    /// A feature code dialed by a seat: the agent-state change (`None`: a not-ready code with
    /// a reason digit that is not configured, refused with a prompt).
    FeatureCode(Option<AgentRequest>),
}

impl CenterRoute {
    /// The route as a metric label / log word.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Menu(_) => "menu",
            Self::Queue(_) => "queue",
            Self::Voicemail { .. } => "voicemail",
            Self::FeatureCode(_) => "feature_code",
        }
    }
}

/// The agent request a dialed feature code stands for. `Some(None)`: the not-ready code with
/// a missing or unknown reason digit.
pub fn feature_code(codes: &FeatureCodes, dialed: &str) -> Option<Option<AgentRequest>> {
    let exact = [
        (&codes.login, AgentRequest::Login),
        (&codes.logout, AgentRequest::Logout),
        (&codes.ready, AgentRequest::Ready),
    ];
    if let Some((_, request)) = exact.into_iter().find(|(code, _)| code.as_str() == dialed) {
        return Some(Some(request));
    }
    let digit = dialed.strip_prefix(codes.not_ready.as_str())?;
    Some(
        codes
            .not_ready_reasons
            .iter()
            .find(|r| r.digit == digit)
            .map(|r| AgentRequest::NotReady(r.reason.clone())),
    )
}

/// Routes a call to the dialed number (the Request-URI user part).
pub fn route(
    caller: Caller<'_>,
    dialed: &str,
    plan: &DialPlan<'_>,
    seats: &impl SeatDirectory,
) -> RouteDecision {
    let dialed = dialed.trim();
    if dialed.is_empty() {
        return RouteDecision::NotFound;
    }
    match caller {
        Caller::Seat(seat) => {
            if let Some(request) = feature_code(plan.feature_codes, dialed) {
                return RouteDecision::Center(CenterRoute::FeatureCode(request));
            }
            if seats.seat_exists(dialed) {
                return ring_seat(Some(seat), dialed, seats);
            }
            if let Some(entry) = entry_point(plan, dialed) {
                return route_entry(Some(seat), entry, plan, seats);
            }
            match plan.trunks.outbound(dialed) {
                Some(out) => RouteDecision::Ring(Destination::Trunk {
                    trunk: out.trunk,
                    number: out.number,
                }),
                None => RouteDecision::NotFound,
            }
        }
        Caller::Trunk(_) => {
            if let Some(entry) = entry_point(plan, dialed) {
                return route_entry(None, entry, plan, seats);
            }
            if seats.seat_exists(dialed) {
                return ring_seat(None, dialed, seats);
            }
            // Includes an inbound number (DID) that has no entry point.
            RouteDecision::NotFound
        }
    }
}

/// The entry point for a dialed number; E.164 numbers also match without their `+` (many
/// carriers deliver them that way).
fn entry_point<'p>(plan: &DialPlan<'p>, dialed: &str) -> Option<&'p EntryPoint> {
    let bare = |n: &str| n.strip_prefix('+').unwrap_or(n).to_string();
    plan.entry_points
        .iter()
        .find(|e| e.number == dialed)
        .or_else(|| {
            plan.entry_points
                .iter()
                .find(|e| bare(&e.number) == bare(dialed))
        })
}

fn route_entry(
    seat: Option<&str>,
    entry: &EntryPoint,
    plan: &DialPlan<'_>,
    seats: &impl SeatDirectory,
) -> RouteDecision {
    match entry.route.action {
        RouteAction::Seat => {
            let extension = entry
                .route
                .target
                .as_ref()
                .and_then(|name| plan.seat_extensions.get(name));
            match extension {
                Some(extension) if seats.seat_exists(extension) => {
                    ring_seat(seat, extension, seats)
                }
                _ => RouteDecision::NotFound,
            }
        }
        RouteAction::Hangup => RouteDecision::Declined,
        RouteAction::Menu | RouteAction::Queue => {
            let Some(target) = entry.route.target.clone() else {
                return RouteDecision::NotFound;
            };
            RouteDecision::Center(if entry.route.action == RouteAction::Menu {
                CenterRoute::Menu(target)
            } else {
                CenterRoute::Queue(target)
            })
        }
        RouteAction::Voicemail => RouteDecision::Center(CenterRoute::Voicemail {
            mailbox: entry.route.target.clone(),
        }),
    }
}

fn ring_seat(caller: Option<&str>, extension: &str, seats: &impl SeatDirectory) -> RouteDecision {
    if caller == Some(extension) {
        return RouteDecision::SelfCall;
    }
    let newest = seats
        .contacts(extension)
        .into_iter()
        .max_by_key(|b| b.refreshed_at);
    match newest {
        Some(contact) => RouteDecision::Ring(Destination::Seat {
            extension: extension.to_string(),
            contact,
        }),
        None => RouteDecision::SeatUnavailable {
            extension: extension.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::trunks::TrunkSettings;
    use crate::sip::Transport;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    struct Seats(HashMap<&'static str, Vec<Binding>>);

    impl SeatDirectory for Seats {
        fn seat_exists(&self, extension: &str) -> bool {
            self.0.contains_key(extension)
        }
        fn contacts(&self, extension: &str) -> Vec<Binding> {
            self.0.get(extension).cloned().unwrap_or_default()
        }
    }

    fn binding(uri: &str, refreshed_at: Instant) -> Binding {
        Binding {
            uri: uri.into(),
            expires_at: refreshed_at + Duration::from_secs(120),
            refreshed_at,
            call_id: "c".into(),
            cseq: 1,
            source: "192.0.2.20:5060".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn no_trunks() -> Trunks {
        Trunks::new(&TrunkSettings::default(), None)
    }

    fn route_seat(caller: &str, dialed: &str, seats: &Seats) -> RouteDecision {
        let trunks = no_trunks();
        let names = BTreeMap::new();
        let codes = FeatureCodes::default();
        let plan = DialPlan {
            entry_points: &[],
            seat_extensions: &names,
            trunks: &trunks,
            feature_codes: &codes,
        };
        route(Caller::Seat(caller), dialed, &plan, seats)
    }

    fn seats() -> Seats {
        let t0 = Instant::now();
        Seats(HashMap::from([
            ("1001", vec![binding("sip:1001@192.0.2.10", t0)]),
            (
                "1002",
                vec![
                    binding("sip:1002@192.0.2.20", t0),
                    binding("sip:1002@192.0.2.21", t0 + Duration::from_secs(5)),
                ],
            ),
            ("1003", vec![]),
        ]))
    }

    #[test]
    fn seat_call_rings_the_newest_contact() {
        match route_seat("1001", "1002", &seats()) {
            RouteDecision::Ring(Destination::Seat { extension, contact }) => {
                assert_eq!(extension, "1002");
                assert_eq!(contact.uri, "sip:1002@192.0.2.21");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unregistered_seat_is_unavailable() {
        let decision = route_seat("1001", "1003", &seats());
        assert_eq!(
            decision,
            RouteDecision::SeatUnavailable {
                extension: "1003".into()
            }
        );
        assert_eq!(decision.rejection_status(), Some(480));
    }

    #[test]
    fn unknown_numbers_are_not_found() {
        for dialed in ["9999", "", "  ", "+4930123456"] {
            let decision = route_seat("1001", dialed, &seats());
            assert_eq!(decision, RouteDecision::NotFound, "{dialed:?}");
            assert_eq!(decision.rejection_status(), Some(404));
        }
    }

    #[test]
    fn calling_oneself_is_busy() {
        assert_eq!(
            route_seat("1001", "1001", &seats()).rejection_status(),
            Some(486)
        );
    }

    fn center() -> (Trunks, Vec<EntryPoint>, BTreeMap<String, String>) {
        let trunk: switchboard_crds::callcenter::TrunkSpec = serde_yaml::from_str(
            "name: pstn\npeer: {host: 192.0.2.7}\ninboundNumbers: ['+4930111', '+4930999']\n\
             dialPrefixes: [{prefix: '0', strip: 1}]",
        )
        .unwrap();
        let entries: Vec<EntryPoint> = serde_yaml::from_str(
            "[{number: '+4930111', route: {action: Seat, target: front-desk}},\
              {number: '+4930222', route: {action: Queue, target: sales}},\
              {number: '+4930333', route: {action: Menu, target: main}},\
              {number: '+4930444', route: {action: Voicemail}},\
              {number: '+4930555', route: {action: Hangup}},\
              {number: '+4930666', route: {action: Seat, target: gone}},\
              {number: '500', route: {action: Seat, target: front-desk}}]",
        )
        .unwrap();
        let names = BTreeMap::from([("front-desk".to_string(), "1002".to_string())]);
        (
            Trunks::new(
                &TrunkSettings {
                    trunks: vec![trunk],
                    ..TrunkSettings::default()
                },
                None,
            ),
            entries,
            names,
        )
    }

    #[test]
    fn trunk_calls_follow_entry_points_then_extensions() {
        let (trunks, entries, names) = center();
        let codes = FeatureCodes::default();
        let plan = DialPlan {
            entry_points: &entries,
            seat_extensions: &names,
            trunks: &trunks,
            feature_codes: &codes,
        };
        let from_trunk = |d: &str| route(Caller::Trunk("pstn"), d, &plan, &seats());
        for dialed in ["+4930111", "4930111", "1002"] {
            match from_trunk(dialed) {
                RouteDecision::Ring(Destination::Seat { extension, .. }) => {
                    assert_eq!(extension, "1002", "{dialed}")
                }
                other => panic!("{dialed}: unexpected {other:?}"),
            }
        }
        for (dialed, route) in [
            ("+4930222", CenterRoute::Queue("sales".into())),
            ("4930222", CenterRoute::Queue("sales".into())),
            ("+4930333", CenterRoute::Menu("main".into())),
            ("+4930444", CenterRoute::Voicemail { mailbox: None }),
        ] {
            assert_eq!(from_trunk(dialed), RouteDecision::Center(route), "{dialed}");
        }
        // A trunk cannot use the seats' feature codes.
        assert_eq!(from_trunk("*21"), RouteDecision::NotFound);
        assert_eq!(from_trunk("+4930555").rejection_status(), Some(603));
        // An inbound number without an entry point, a route to a missing seat, a number the
        // center does not have, and a trunk trying to dial out again: 404.
        for dialed in ["+4930999", "+4930666", "+4930777", "0301234"] {
            assert_eq!(from_trunk(dialed), RouteDecision::NotFound, "{dialed}");
        }
        assert_eq!(
            from_trunk("1003"),
            RouteDecision::SeatUnavailable {
                extension: "1003".into()
            }
        );
    }

    #[test]
    fn seat_calls_reach_entry_points_and_trunks() {
        let (trunks, entries, names) = center();
        let codes = FeatureCodes::default();
        let plan = DialPlan {
            entry_points: &entries,
            seat_extensions: &names,
            trunks: &trunks,
            feature_codes: &codes,
        };
        let from_seat = |d: &str| route(Caller::Seat("1001"), d, &plan, &seats());
        assert!(matches!(
            from_seat("500"),
            RouteDecision::Ring(Destination::Seat { extension, .. }) if extension == "1002"
        ));
        assert_eq!(
            from_seat("0301234"),
            RouteDecision::Ring(Destination::Trunk {
                trunk: "pstn".into(),
                number: "301234".into()
            })
        );
        assert_eq!(from_seat("1002").rejection_status(), None);
        assert_eq!(from_seat("4711"), RouteDecision::NotFound);
        let self_call = route(Caller::Seat("1002"), "500", &plan, &seats());
        assert_eq!(self_call, RouteDecision::SelfCall);
        assert_eq!(
            from_seat("+4930222"),
            RouteDecision::Center(CenterRoute::Queue("sales".into()))
        );
    }

    #[test]
    fn feature_codes_change_the_agent_state() {
        let (trunks, entries, names) = center();
        let codes = FeatureCodes::default();
        let plan = DialPlan {
            entry_points: &entries,
            seat_extensions: &names,
            trunks: &trunks,
            feature_codes: &codes,
        };
        let from_seat = |d: &str| route(Caller::Seat("1001"), d, &plan, &seats());
        let code = |r: Option<AgentRequest>| RouteDecision::Center(CenterRoute::FeatureCode(r));
        assert_eq!(from_seat("*21"), code(Some(AgentRequest::Login)));
        assert_eq!(from_seat("*22"), code(Some(AgentRequest::Logout)));
        assert_eq!(from_seat("*23"), code(Some(AgentRequest::Ready)));
        assert_eq!(
            from_seat("*242"),
            code(Some(AgentRequest::NotReady("meal".into())))
        );
        assert_eq!(
            from_seat("*245"),
            code(Some(AgentRequest::NotReady("coaching".into())))
        );
        // The not-ready code needs a configured reason digit.
        assert_eq!(from_seat("*24"), code(None));
        assert_eq!(from_seat("*249"), code(None));
        assert_eq!(from_seat("*2412"), code(None));
        assert_eq!(from_seat("*25"), RouteDecision::NotFound);
        // Configured codes replace the defaults.
        let custom = FeatureCodes {
            login: "*7".into(),
            ..FeatureCodes::default()
        };
        assert_eq!(feature_code(&custom, "*7"), Some(Some(AgentRequest::Login)));
        assert_eq!(feature_code(&custom, "*21"), None);
    }
}
