//! The Switchboard media node: SIP signalling, anchored RTP media, recording, and the
//! standalone mode that serves a call center from a YAML file.

pub mod config;
pub mod media;
pub mod recording;
pub mod sdp;
pub mod sip;
