//! Live queue and agent statistics over rolling windows (pure).
