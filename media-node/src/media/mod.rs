//! RTP media anchored at the node: ports, G.711, RTP relay, RFC 4733 DTMF, WAV prompts.

pub mod dtmf;
pub mod g711;
pub mod ports;
pub mod rtp;
pub mod wav;
