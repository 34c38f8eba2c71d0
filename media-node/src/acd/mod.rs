//! ACD: queues, agents and the routing core (pure: no I/O, the clock is passed in).
