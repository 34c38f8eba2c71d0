//! The Switchboard media node: SIP signalling, anchored RTP media, recording, and the
//! standalone mode that serves a call center from a YAML file.

pub mod call;
pub mod config;
pub mod control;
pub mod http;
pub mod media;
pub mod node;
pub mod recording;
pub mod role;
pub mod sdp;
pub mod sip;
