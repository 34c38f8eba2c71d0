//! SDP from a peer: parse, then everything the B2BUA reads from an offer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_node::sdp::SessionDescription;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sdp) = SessionDescription::parse(text) {
        if let Some(audio) = sdp.audio() {
            let _ = sdp.direction_of(audio);
            let _ = sdp.remote_address(audio);
        }
        let _ = sdp.is_hold();
    }
});
