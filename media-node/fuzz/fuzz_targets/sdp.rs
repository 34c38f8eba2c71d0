//! SDP from a peer: parse it, read what the B2BUA reads, and answer it as the node would.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use media_node::sdp::{Direction, LocalMedia, SessionDescription, answer_offer};
use switchboard_crds::callcenter::Codec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(offer) = SessionDescription::parse(text) else { return };
    if let Some(audio) = offer.audio() {
        let _ = offer.direction_of(audio);
        let _ = offer.remote_address(audio);
    }
    let local = LocalMedia {
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        rtp_port: 20000,
        session_id: 1,
        session_version: 1,
        direction: Direction::SendRecv,
    };
    if let Ok((answer, negotiated)) = answer_offer(&offer, &[Codec::Pcma, Codec::Pcmu], &local) {
        let _ = negotiated.is_hold();
        // The answer the node sends must itself be valid SDP.
        assert!(SessionDescription::parse(&answer.to_string()).is_ok());
    }
});
