//! Where a call goes: a pure decision over the dialed number and the registrar's bindings, so
//! every path is unit-tested without sockets.
//!
//! Served now: seat-to-seat calls by extension. A seat's call rings the seat's most recently
//! refreshed contact (no forking yet: one phone per agent is the call-center norm, and the
//! newest binding is the phone the agent last used). Trunk calls (inbound numbers, outbound
//! dial-prefix rules) and entry points (dialed number → IVR or queue) are new [`Destination`]
//! variants decided in [`route`] before the seat lookup; they are not served yet.

use crate::sip::registrar::Binding;

/// What the routing core needs to know about seats.
pub trait SeatDirectory {
    /// Whether a seat with this extension exists in the call center.
    fn seat_exists(&self, extension: &str) -> bool;
    /// The seat's live registered contacts.
    fn contacts(&self, extension: &str) -> Vec<Binding>;
}

/// Where a call is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Ring this registered contact of a seat.
    Seat { extension: String, contact: Binding },
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
}

impl RouteDecision {
    /// The SIP status a call gets when it is not rung.
    pub fn rejection_status(&self) -> Option<u16> {
        match self {
            Self::Ring(_) => None,
            Self::SeatUnavailable { .. } => Some(480),
            Self::SelfCall => Some(486),
            Self::NotFound => Some(404),
        }
    }
}

/// Routes a call from seat `caller` to the dialed number (the Request-URI user part).
pub fn route(caller: &str, dialed: &str, seats: &impl SeatDirectory) -> RouteDecision {
    let dialed = dialed.trim();
    if dialed.is_empty() {
        return RouteDecision::NotFound;
    }
    // Extension point: trunk outbound prefixes and entry points are matched here, first.
    if !seats.seat_exists(dialed) {
        return RouteDecision::NotFound;
    }
    if dialed == caller {
        return RouteDecision::SelfCall;
    }
    let newest = seats
        .contacts(dialed)
        .into_iter()
        .max_by_key(|b| b.refreshed_at);
    match newest {
        Some(contact) => RouteDecision::Ring(Destination::Seat {
            extension: dialed.to_string(),
            contact,
        }),
        None => RouteDecision::SeatUnavailable {
            extension: dialed.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        match route("1001", "1002", &seats()) {
            RouteDecision::Ring(Destination::Seat { extension, contact }) => {
                assert_eq!(extension, "1002");
                assert_eq!(contact.uri, "sip:1002@192.0.2.21");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unregistered_seat_is_unavailable() {
        let decision = route("1001", "1003", &seats());
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
            let decision = route("1001", dialed, &seats());
            assert_eq!(decision, RouteDecision::NotFound, "{dialed:?}");
            assert_eq!(decision.rejection_status(), Some(404));
        }
    }

    #[test]
    fn calling_oneself_is_busy() {
        assert_eq!(
            route("1001", "1001", &seats()).rejection_status(),
            Some(486)
        );
    }
}
