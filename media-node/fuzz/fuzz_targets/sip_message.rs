//! A SIP datagram from the network: parse it and read every header the node relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_node::sip::message::{Inbound, NameAddr, Via, parse, split_list};

fuzz_target!(|data: &[u8]| {
    if let Ok(Inbound::Request(request)) = parse(data) {
        let _ = request.missing_mandatory_headers();
        let _ = request.top_via().map(|v| (v.branch().map(str::len), v.sent_by()));
        let _ = request.cseq();
        for name in ["From", "To", "Contact"] {
            if let Some(value) = request.header(name) {
                for part in split_list(value) {
                    let _ = NameAddr::parse(part);
                }
            }
        }
        if let Some(auth) = request.header("Authorization") {
            let _ = media_node::sip::digest::parse_authorization(auth);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Via::parse(text);
        let _ = media_node::sip::digest::parse_authorization(text);
    }
});
