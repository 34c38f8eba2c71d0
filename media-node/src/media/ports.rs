//! RTP port allocation over the CallCenter's `rtp.minPort..=rtp.maxPort` range.
//!
//! Every call leg takes an even RTP port and the odd port above it for RTCP. A pair is held
//! by a [`PortLease`]; dropping the lease returns the pair, so every call end path (BYE,
//! CANCEL, timeout, error) gives its ports back without bookkeeping at each site.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_crds::callcenter::RtpSpec;

/// Why no port pair can be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("RTP port range {min}..={max} holds no even/odd port pair")]
    EmptyRange { min: u16, max: u16 },
    #[error("all {total} RTP port pairs in {min}..={max} are in use")]
    Exhausted { min: u16, max: u16, total: usize },
}

#[derive(Debug)]
struct Pool {
    /// Free RTP ports, oldest-released first: a port is reused as late as possible so stray
    /// packets of an ended call do not reach the next call on the same port.
    free: VecDeque<u16>,
    in_use: usize,
    /// `switchboard_rtp_port_pairs_in_use`, when exported.
    gauge: Option<prometheus::IntGauge>,
}

impl Pool {
    fn set_in_use(&mut self, in_use: usize) {
        self.in_use = in_use;
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(in_use).unwrap_or(i64::MAX));
        }
    }
}

/// Hands out RTP/RTCP port pairs; cheap to clone (all clones share one pool).
#[derive(Debug, Clone)]
pub struct PortAllocator {
    min: u16,
    max: u16,
    total: usize,
    pool: Arc<Mutex<Pool>>,
}

/// An RTP port (even) and its RTCP port (RTP + 1), held until dropped.
#[derive(Debug)]
pub struct PortLease {
    rtp: u16,
    pool: Arc<Mutex<Pool>>,
}

impl PortLease {
    pub fn rtp_port(&self) -> u16 {
        self.rtp
    }
    pub fn rtcp_port(&self) -> u16 {
        self.rtp + 1
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock();
        pool.free.push_back(self.rtp);
        let in_use = pool.in_use - 1;
        pool.set_in_use(in_use);
    }
}

impl PortAllocator {
    /// An allocator over `min..=max`: RTP ports are the even ports `p` with `p + 1 <= max`.
    pub fn new(min: u16, max: u16) -> Result<Self, PortError> {
        let first = u32::from(min) + u32::from(min) % 2;
        let free: VecDeque<u16> = (first..u32::from(max))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        if free.is_empty() {
            return Err(PortError::EmptyRange { min, max });
        }
        Ok(Self {
            min,
            max,
            total: free.len(),
            pool: Arc::new(Mutex::new(Pool {
                free,
                in_use: 0,
                gauge: None,
            })),
        })
    }

    /// An allocator over a CallCenter's RTP range, handing out its pairs from a random one
    /// on: a node that starts (or takes calls over from another at the same address) does
    /// not reuse the ports the previous process used last, where stray RTP of its calls may
    /// still arrive.
    pub fn from_spec(spec: &RtpSpec) -> Result<Self, PortError> {
        let ports = Self::new(spec.min_port, spec.max_port)?;
        let start = rand::random_range(0..ports.total);
        ports.pool.lock().free.rotate_left(start);
        Ok(ports)
    }

    /// Takes a free pair. A caller whose bind fails (port used by another program) keeps
    /// that lease while it tries the next one, so it is not handed out again at once.
    pub fn allocate(&self) -> Result<PortLease, PortError> {
        let mut pool = self.pool.lock();
        match pool.free.pop_front() {
            Some(rtp) => {
                let in_use = pool.in_use + 1;
                pool.set_in_use(in_use);
                Ok(PortLease {
                    rtp,
                    pool: Arc::clone(&self.pool),
                })
            }
            None => Err(PortError::Exhausted {
                min: self.min,
                max: self.max,
                total: self.total,
            }),
        }
    }

    /// Keeps `gauge` at the number of pairs leased (every clone shares it).
    pub fn observe(&self, gauge: prometheus::IntGauge) {
        let mut pool = self.pool.lock();
        gauge.set(i64::try_from(pool.in_use).unwrap_or(i64::MAX));
        pool.gauge = Some(gauge);
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        self.pool.lock().in_use
    }

    /// Pairs available.
    pub fn free(&self) -> usize {
        self.pool.lock().free.len()
    }

    /// All pairs in the range.
    pub fn capacity(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_center_s_allocator_starts_anywhere_and_still_hands_out_every_pair() {
        let spec = RtpSpec {
            min_port: 20000,
            max_port: 20019,
        };
        let ports = PortAllocator::from_spec(&spec).expect("range");
        let leases: Vec<_> = (0..10).map(|_| ports.allocate().expect("a pair")).collect();
        let mut taken: Vec<u16> = leases.iter().map(PortLease::rtp_port).collect();
        taken.sort_unstable();
        assert_eq!(taken, (20000..20020).step_by(2).collect::<Vec<_>>());
        assert!(ports.allocate().is_err(), "all ten pairs are out");
    }

    #[test]
    fn pairs_are_even_rtp_with_rtcp_above() {
        let ports = PortAllocator::new(10000, 10009).unwrap();
        assert_eq!(ports.capacity(), 5);
        let leases: Vec<_> = (0..5).map(|_| ports.allocate().unwrap()).collect();
        let rtp: Vec<u16> = leases.iter().map(PortLease::rtp_port).collect();
        assert_eq!(rtp, vec![10000, 10002, 10004, 10006, 10008]);
        for l in &leases {
            assert_eq!(l.rtcp_port(), l.rtp_port() + 1);
        }
        assert_eq!(ports.in_use(), 5);
        assert_eq!(ports.free(), 0);
    }

    #[test]
    fn odd_bounds_keep_only_whole_pairs() {
        // 10001 is odd: first pair 10002/10003; 10008 has no 10009 inside the range.
        let ports = PortAllocator::new(10001, 10008).unwrap();
        assert_eq!(ports.capacity(), 3);
        let all: Vec<_> = (0..3)
            .map(|_| ports.allocate().unwrap().rtp_port())
            .collect();
        assert_eq!(all, vec![10002, 10004, 10006]);
        // Top of the port space.
        let top = PortAllocator::new(65534, 65535).unwrap();
        let lease = top.allocate().unwrap();
        assert_eq!((lease.rtp_port(), lease.rtcp_port()), (65534, 65535));
    }

    #[test]
    fn empty_ranges_are_rejected() {
        assert_eq!(
            PortAllocator::new(10001, 10002).unwrap_err(),
            PortError::EmptyRange {
                min: 10001,
                max: 10002
            }
        );
        assert!(PortAllocator::new(10000, 10000).is_err());
        assert!(PortAllocator::new(20000, 10000).is_err());
        assert!(PortAllocator::new(65535, 65535).is_err());
        assert!(PortAllocator::new(10000, 10001).is_ok());
    }

    #[test]
    fn exhaustion_is_an_error_and_drop_returns_the_pair() {
        let ports = PortAllocator::new(10000, 10003).unwrap();
        let a = ports.allocate().unwrap();
        let b = ports.allocate().unwrap();
        assert_eq!(
            ports.allocate().unwrap_err(),
            PortError::Exhausted {
                min: 10000,
                max: 10003,
                total: 2
            }
        );
        let freed = a.rtp_port();
        drop(a);
        assert_eq!((ports.in_use(), ports.free()), (1, 1));
        let c = ports.allocate().unwrap();
        assert_eq!(c.rtp_port(), freed);
        assert_ne!(c.rtp_port(), b.rtp_port());
    }

    #[test]
    fn released_ports_are_reused_last() {
        let ports = PortAllocator::new(10000, 10005).unwrap();
        let first = ports.allocate().unwrap();
        assert_eq!(first.rtp_port(), 10000);
        drop(first);
        assert_eq!(ports.allocate().unwrap().rtp_port(), 10002);
    }

    #[test]
    fn default_spec_range() {
        let ports = PortAllocator::from_spec(&RtpSpec::default()).unwrap();
        assert_eq!(ports.capacity(), 5000);
        assert_eq!(ports.free(), 5000);
    }

    #[test]
    fn leases_outlive_and_share_across_clones_and_threads() {
        let ports = PortAllocator::new(10000, 10399).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ports = ports.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| ports.allocate().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let leases: Vec<PortLease> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: BTreeSet<u16> = leases.iter().map(PortLease::rtp_port).collect();
        assert_eq!(distinct.len(), 200);
        assert_eq!(ports.free(), 0);
        drop(leases);
        assert_eq!(ports.free(), 200);
    }

    proptest! {
        /// Random allocate/release sequences never hand out a pair twice, never lose one,
        /// and fail only when every pair is leased.
        #[test]
        fn no_leak_no_double_allocation(
            min in 1024u16..1100,
            width in 1u16..40,
            ops in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 0..200),
        ) {
            let max = min + width;
            let Ok(ports) = PortAllocator::new(min, max) else {
                prop_assert!(width < 2 && min % 2 == 1);
                return Ok(());
            };
            let capacity = ports.capacity();
            let mut held: Vec<PortLease> = Vec::new();
            for (allocate, index) in ops {
                if allocate {
                    match ports.allocate() {
                        Ok(lease) => {
                            let rtp = lease.rtp_port();
                            prop_assert!(rtp % 2 == 0 && rtp >= min && rtp < max);
                            prop_assert!(held.iter().all(|h| h.rtp_port() != rtp));
                            held.push(lease);
                        }
                        Err(PortError::Exhausted { .. }) => prop_assert_eq!(held.len(), capacity),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                } else if !held.is_empty() {
                    held.swap_remove(index.index(held.len()));
                }
                prop_assert_eq!(ports.in_use(), held.len());
                prop_assert_eq!(ports.free() + ports.in_use(), capacity);
            }
            drop(held);
            prop_assert_eq!(ports.free(), capacity);
            prop_assert_eq!(ports.in_use(), 0);
        }
    }
}
