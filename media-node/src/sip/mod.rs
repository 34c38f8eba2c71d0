//! SIP over UDP and TCP: transport, non-INVITE server transactions, the seat registrar with
//! digest authentication, and the entry to the B2BUA (`crate::call`) for INVITE, ACK, CANCEL,
//! BYE and responses to the node's own requests.

pub mod digest;
pub mod message;
pub mod registrar;
pub mod server;
pub mod transport;

pub use message::Transport;
pub use registrar::{RegistrarPolicy, SeatAccount};
pub use server::{ServingMode, SipMetrics, SipServer, SipSettings};
pub use transport::{SipListeners, TransportError};
