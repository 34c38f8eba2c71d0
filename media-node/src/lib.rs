//! The Switchboard media node: SIP signalling, anchored RTP media, recording, ACD queues and
//! agent states, the IVR, live statistics, and the standalone mode that serves a call center
//! from a YAML file.

pub mod acd;
pub mod call;
pub mod center;
pub mod config;
pub mod control;
pub mod http;
pub mod ivr;
pub mod media;
pub mod node;
pub mod recording;
pub mod replication;
pub mod role;
pub mod sdp;
pub mod sip;
pub mod stats;
