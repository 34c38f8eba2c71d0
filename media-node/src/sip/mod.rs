//! SIP over UDP and TCP: transport, non-INVITE server transactions, and the seat registrar with
//! digest authentication. Calls (INVITE, the B2BUA) come next.

pub mod digest;
pub mod message;
pub mod registrar;
pub mod server;
pub mod transport;

pub use message::Transport;
pub use registrar::{RegistrarPolicy, SeatAccount};
pub use server::{SipMetrics, SipServer, SipSettings};
pub use transport::{SipListeners, TransportError};
