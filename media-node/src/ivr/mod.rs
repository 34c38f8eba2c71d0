//! The IVR: menus, DTMF, timeouts, retries and business hours (pure).
