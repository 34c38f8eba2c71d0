//! Staffing advice for a Queue's status (`agentsRequired`) from what its node measured.

use std::time::Duration;

use switchboard_crds::common::ServiceLevelTarget;

use crate::node_state::QueueView;
use crate::traffic::staffing::advise_for_window;

/// The window of the node's queue figures (`calls_offered_15m`).
pub const QUEUE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Advice beyond this many agents is no advice: a queue that needs more is misreported.
pub const MAX_ADVISED_AGENTS: u32 = 5000;

/// Agents the queue needs to meet `target` at the measured load (Erlang C); `None` without
/// calls, without a handle time, or with figures that make no sense.
pub fn agents_required(queue: &QueueView, target: &ServiceLevelTarget) -> Option<u32> {
    if queue.calls_offered_15m == 0 {
        return None;
    }
    advise_for_window(
        u64::from(queue.calls_offered_15m),
        QUEUE_WINDOW,
        queue.average_handle_seconds?,
        target,
        MAX_ADVISED_AGENTS,
    )
    .map(|advice| advice.agents_required)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(calls: u32, handle: Option<f64>) -> QueueView {
        QueueView {
            calls_offered_15m: calls,
            average_handle_seconds: handle,
            ..QueueView::default()
        }
    }

    #[test]
    fn the_classic_example_needs_fourteen_agents() {
        // 50 calls in 15 minutes (200 an hour) of 180 s: 10 E; 80 % within 20 s needs 14.
        let target = ServiceLevelTarget::default();
        assert_eq!(agents_required(&queue(50, Some(180.0)), &target), Some(14));
        // A stricter target needs more.
        let strict = ServiceLevelTarget {
            target_percent: 95.0,
            threshold_seconds: 10,
        };
        assert!(agents_required(&queue(50, Some(180.0)), &strict) > Some(14));
    }

    #[test]
    fn no_traffic_or_absurd_figures_give_no_advice() {
        let target = ServiceLevelTarget::default();
        assert_eq!(agents_required(&queue(0, Some(180.0)), &target), None);
        assert_eq!(agents_required(&queue(50, None), &target), None);
        for bad in [f64::NAN, f64::INFINITY, -5.0] {
            assert_eq!(agents_required(&queue(50, Some(bad)), &target), None);
        }
        // More than the cap: no advice rather than a huge number.
        assert_eq!(
            agents_required(&queue(u32::MAX, Some(3600.0)), &target),
            None
        );
    }
}
