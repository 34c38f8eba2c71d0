//! SDP (RFC 4566) offers and answers for G.711 audio with RFC 4733 telephone-events.
