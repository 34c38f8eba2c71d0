//! SIP over UDP and TCP: transport, transactions, registrar with digest authentication.
