//! RTP, RTCP and RFC 4733 payloads from the network.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = media_node::media::rtp::classify(data);
    if let Ok(packet) = media_node::media::rtp::RtpPacket::parse(data) {
        let _ = media_node::media::dtmf::TelephoneEvent::parse(packet.payload());
    }
});
