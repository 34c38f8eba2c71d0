//! RTP media anchored at the node: ports, G.711, RTP relay, RFC 4733 DTMF, WAV prompts.
