//! RTP media anchored at the node: ports, G.711, RTP relay, RFC 4733 DTMF, WAV prompts
//! and the prompt store, call-progress tones.

pub mod dtmf;
pub mod g711;
pub mod ports;
pub mod prompts;
pub mod rtp;
pub mod tone;
pub mod wav;
