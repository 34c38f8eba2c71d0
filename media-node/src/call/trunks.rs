//! SIP trunks: which source addresses are trusted as which trunk, the outbound dial plan, the
//! per-trunk channel limit, and the trunk's digest credentials: in a pod read from the mounted
//! Secret files when the trunk challenges (so a rotated password needs no restart), standalone
//! held in memory from the file's Secret manifest (never written to disk).
//!
//! A channel is held by a [`ChannelGuard`] for the whole life of a call task; dropping the
//! guard (on any end path, panics included) releases the channel, so the busy count cannot
//! leak.
//!
//! Each trunk measures its traffic over a rolling window ([`TrafficMeter`]): channel time
//! held, calls offered and calls blocked, in one-minute buckets over the last 15 minutes.
//! Trunk sizing (Erlang B) needs the *offered* traffic, and a blocked call is traffic the
//! trunk did not carry, so the offered estimate is
//! `carried erlangs + blocked calls × mean holding time ÷ window` (see
//! [`TrafficFigures::offered_erlangs`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use switchboard_crds::callcenter::{DialPrefix, SipTransport, TrunkSpec};
use switchboard_proto::node_config::{TRUNK_PASSWORD_FILE, TRUNK_USERNAME_FILE, TrunkSecret};
use tracing::warn;

use crate::sip::Transport;

/// The trunk part of the call settings (from the CallCenter spec and the node config).
#[derive(Debug, Clone, Default)]
pub struct TrunkSettings {
    /// `spec.trunks`.
    pub trunks: Vec<TrunkSpec>,
    /// Where the trunks' digest credentials come from.
    pub credentials: TrunkCredentialSource,
}

/// Where trunk credentials come from when a trunk challenges.
#[derive(Debug, Clone)]
pub enum TrunkCredentialSource {
    /// Files read at every challenge, so a rotated Secret takes effect without a restart: in a
    /// pod `<mount_path>/username` and `<mount_path>/password` of each trunk's [`TrunkSecret`]
    /// (`NodeConfig::trunk_secrets`); with `dir`, `<dir>/<trunk>/username` and
    /// `<dir>/<trunk>/password` instead (tests).
    Mounted {
        secrets: Vec<TrunkSecret>,
        dir: Option<PathBuf>,
    },
    /// Values held in memory, by trunk name: standalone mode, from the Secret manifests of the
    /// config file. Nothing is written to disk, so the password exists only in the user's file
    /// and the node's memory.
    Inline(BTreeMap<String, TrunkCredentials>),
}

impl Default for TrunkCredentialSource {
    fn default() -> Self {
        Self::Mounted {
            secrets: Vec::new(),
            dir: None,
        }
    }
}

/// Per-trunk metrics.
#[derive(Clone)]
pub struct TrunkMetrics {
    pub busy: IntGaugeVec,
    pub limit: IntGaugeVec,
    pub blocked: IntCounterVec,
    /// `switchboard_trunk_offered_erlangs`, computed at each scrape.
    pub offered: OfferedTrafficGauge,
}

impl TrunkMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            busy: IntGaugeVec::new(
                Opts::new(
                    "switchboard_trunk_channels_busy",
                    "Trunk channels carrying a call now.",
                ),
                &["trunk"],
            )?,
            limit: IntGaugeVec::new(
                Opts::new(
                    "switchboard_trunk_channel_limit",
                    "Trunk channel limit in force.",
                ),
                &["trunk"],
            )?,
            blocked: IntCounterVec::new(
                Opts::new(
                    "switchboard_trunk_calls_blocked_total",
                    "Trunk calls refused with 503 because every channel was busy.",
                ),
                &["trunk"],
            )?,
            offered: OfferedTrafficGauge::new()?,
        };
        registry.register(Box::new(metrics.busy.clone()))?;
        registry.register(Box::new(metrics.limit.clone()))?;
        registry.register(Box::new(metrics.blocked.clone()))?;
        registry.register(Box::new(metrics.offered.clone()))?;
        Ok(metrics)
    }
}

/// The `switchboard_trunk_offered_erlangs{trunk}` gauge. Offered traffic changes while
/// nothing happens (held channels add time, old minutes leave the window), so the value is
/// computed from the trunks' meters when Prometheus scrapes, not set at call events.
#[derive(Clone)]
pub struct OfferedTrafficGauge {
    gauge: GaugeVec,
    /// The trunks of the newest config, by name.
    trunks: Arc<Mutex<TrackedTrunks>>,
}

/// Trunk names and their channels.
type TrackedTrunks = Vec<(String, Arc<Channels>)>;

impl OfferedTrafficGauge {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            gauge: GaugeVec::new(
                Opts::new(
                    "switchboard_trunk_offered_erlangs",
                    "Traffic offered to the trunk over the last 15 minutes, in erlangs \
                     (carried traffic plus blocked calls at the mean holding time).",
                ),
                &["trunk"],
            )?,
            trunks: Arc::default(),
        })
    }

    /// The trunks to report from now on (a removed trunk's series disappears).
    fn track(&self, trunks: &[Arc<Trunk>]) {
        *self.trunks.lock() = trunks
            .iter()
            .map(|t| (t.spec.name.clone(), Arc::clone(&t.channels)))
            .collect();
    }
}

impl Collector for OfferedTrafficGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        // Held through the whole collection, so concurrent scrapes do not interleave resets.
        let trunks = self.trunks.lock();
        self.gauge.reset();
        for (name, channels) in trunks.iter() {
            let offered = channels.traffic.lock().figures(now).offered_erlangs;
            self.gauge.with_label_values(&[name]).set(offered);
        }
        self.gauge.collect()
    }
}

/// Length of the rolling traffic window.
pub const TRAFFIC_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Width of one bucket of the traffic window.
const BUCKET_MS: u64 = 60_000;
/// Buckets in the window (the current, partly filled minute is one of them).
const WINDOW_BUCKETS: u64 = TRAFFIC_WINDOW.as_secs() * 1000 / BUCKET_MS;

/// One minute of a trunk's traffic.
#[derive(Debug, Clone, Copy, Default)]
struct TrafficBucket {
    /// Channel-milliseconds held in this minute.
    busy_ms: u64,
    /// Attempts to take a channel (blocked ones included).
    offered: u64,
    blocked: u64,
    /// Calls that released their channel in this minute, and how long they held it.
    released: u64,
    held_ms: u64,
}

/// A trunk's traffic over the last [`TRAFFIC_WINDOW`] as seen at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficFigures {
    /// Channel time held ÷ window length.
    pub carried_erlangs: f64,
    /// `carried_erlangs + calls_blocked × mean_holding ÷ window`: the traffic the trunk
    /// would have carried without a channel limit. Blocked calls have no holding time of
    /// their own, so they are counted at the mean holding time of the calls that ended in
    /// the window (or, before any ended, the mean age of the calls in progress, a lower
    /// bound); with neither, they add nothing.
    pub offered_erlangs: f64,
    /// Attempts to take a channel in the window, blocked ones included.
    pub calls_offered: u64,
    /// Attempts refused at the channel limit in the window.
    pub calls_blocked: u64,
    /// The holding-time estimate used for the blocked calls.
    pub mean_holding: Option<Duration>,
    /// The span the figures cover: since the meter started, at most the window. Whole
    /// minutes are kept, so once the meter ran longer than the window this lies between 14
    /// and 15 minutes (the oldest minute is dropped as a new one begins).
    pub window: Duration,
}

/// Measures a trunk's traffic over a rolling window of one-minute buckets (aligned to the
/// meter's start). Pure: every event carries its instant. Memory is bounded by the window's
/// 15 buckets.
#[derive(Debug)]
pub struct TrafficMeter {
    started: Instant,
    /// Milliseconds after `started` up to which held channel time is booked.
    booked_to_ms: u64,
    /// Channels held now.
    busy: u32,
    /// Sum of the take instants (ms after `started`) of the channels held now, for their
    /// mean age.
    taken_sum_ms: u128,
    /// Ordered by bucket number, oldest first.
    buckets: VecDeque<(u64, TrafficBucket)>,
}

impl TrafficMeter {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            booked_to_ms: 0,
            busy: 0,
            taken_sum_ms: 0,
            buckets: VecDeque::new(),
        }
    }

    fn offset_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// The oldest bucket of the window that ends at `now_ms`.
    fn oldest_bucket(now_ms: u64) -> u64 {
        (now_ms / BUCKET_MS).saturating_sub(WINDOW_BUCKETS - 1)
    }

    fn bucket_mut(&mut self, index: u64) -> &mut TrafficBucket {
        let at = self.buckets.partition_point(|(i, _)| *i < index);
        if self.buckets.get(at).is_none_or(|(i, _)| *i != index) {
            self.buckets.insert(at, (index, TrafficBucket::default()));
        }
        &mut self.buckets[at].1
    }

    /// Books the held channel time up to `now` and drops buckets older than the window.
    /// Returns `now` in ms after the start (events that arrive a little late, from another
    /// thread, count at the latest instant already booked).
    fn advance(&mut self, now: Instant) -> u64 {
        let now_ms = self.offset_ms(now).max(self.booked_to_ms);
        let oldest = Self::oldest_bucket(now_ms);
        if self.busy > 0 {
            let mut cursor = self.booked_to_ms.max(oldest * BUCKET_MS);
            while cursor < now_ms {
                let index = cursor / BUCKET_MS;
                let end = ((index + 1) * BUCKET_MS).min(now_ms);
                let busy = u64::from(self.busy);
                let bucket = self.bucket_mut(index);
                bucket.busy_ms = bucket.busy_ms.saturating_add(busy * (end - cursor));
                cursor = end;
            }
        }
        self.booked_to_ms = now_ms;
        while self.buckets.front().is_some_and(|(i, _)| *i < oldest) {
            self.buckets.pop_front();
        }
        now_ms
    }

    /// A call took a channel at `now`.
    pub fn taken(&mut self, now: Instant) {
        let now_ms = self.advance(now);
        self.busy = self.busy.saturating_add(1);
        self.taken_sum_ms = self.taken_sum_ms.saturating_add(u128::from(now_ms));
        self.bucket_mut(now_ms / BUCKET_MS).offered += 1;
    }

    /// A call was refused at the channel limit at `now`.
    pub fn blocked(&mut self, now: Instant) {
        let now_ms = self.advance(now);
        let bucket = self.bucket_mut(now_ms / BUCKET_MS);
        bucket.offered += 1;
        bucket.blocked += 1;
    }

    /// The call that took a channel at `taken_at` released it at `now`.
    pub fn released(&mut self, taken_at: Instant, now: Instant) {
        let now_ms = self.advance(now);
        let taken_ms = self.offset_ms(taken_at).min(now_ms);
        self.busy = self.busy.saturating_sub(1);
        self.taken_sum_ms = self.taken_sum_ms.saturating_sub(u128::from(taken_ms));
        if self.busy == 0 {
            // Nothing is held: no rounding can be left behind.
            self.taken_sum_ms = 0;
        }
        let held_ms = now_ms - taken_ms;
        let bucket = self.bucket_mut(now_ms / BUCKET_MS);
        bucket.released += 1;
        bucket.held_ms = bucket.held_ms.saturating_add(held_ms);
    }

    /// The figures of the window that ends at `now` (books the time held up to `now`).
    pub fn figures(&mut self, now: Instant) -> TrafficFigures {
        let now_ms = self.advance(now);
        let window_ms = now_ms - Self::oldest_bucket(now_ms) * BUCKET_MS;
        let mut sum = TrafficBucket::default();
        for (_, b) in &self.buckets {
            sum.busy_ms = sum.busy_ms.saturating_add(b.busy_ms);
            sum.offered = sum.offered.saturating_add(b.offered);
            sum.blocked = sum.blocked.saturating_add(b.blocked);
            sum.released = sum.released.saturating_add(b.released);
            sum.held_ms = sum.held_ms.saturating_add(b.held_ms);
        }
        let mean_holding_ms = if let Some(mean) = sum.held_ms.checked_div(sum.released) {
            Some(mean)
        } else if self.busy > 0 {
            let now_sum = u128::from(now_ms) * u128::from(self.busy);
            let ages = now_sum - self.taken_sum_ms.min(now_sum);
            Some(u64::try_from(ages / u128::from(self.busy)).unwrap_or(u64::MAX))
        } else {
            None
        };
        // u64 → f64 is exact for any realistic channel time (below 2^53 ms).
        let erlangs = |channel_ms: f64| {
            if window_ms == 0 {
                0.0
            } else {
                channel_ms / window_ms as f64
            }
        };
        let carried = erlangs(sum.busy_ms as f64);
        let blocked_ms = sum.blocked as f64 * mean_holding_ms.unwrap_or(0) as f64;
        TrafficFigures {
            carried_erlangs: carried,
            offered_erlangs: carried + erlangs(blocked_ms),
            calls_offered: sum.offered,
            calls_blocked: sum.blocked,
            mean_holding: mean_holding_ms.map(Duration::from_millis),
            window: Duration::from_millis(window_ms),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`; `None` when malformed.
    pub fn parse(text: &str) -> Option<IpNet> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One trunk at run time.
#[derive(Debug)]
pub struct Trunk {
    pub spec: TrunkSpec,
    allowed: Vec<IpNet>,
    /// Shared with the trunk of the same name in a later config, so calls that hold a channel
    /// across a config change release it where the new config counts.
    channels: Arc<Channels>,
}

/// A trunk's channel counters and traffic meter.
#[derive(Debug)]
struct Channels {
    busy: AtomicU32,
    blocked: AtomicU64,
    limit: AtomicU32,
    traffic: Mutex<TrafficMeter>,
}

impl Channels {
    fn new(now: Instant) -> Self {
        Self {
            busy: AtomicU32::new(0),
            blocked: AtomicU64::new(0),
            limit: AtomicU32::new(0),
            traffic: Mutex::new(TrafficMeter::new(now)),
        }
    }
}

impl Trunk {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn busy(&self) -> u32 {
        self.channels.busy.load(Ordering::SeqCst)
    }
    pub fn blocked(&self) -> u64 {
        self.channels.blocked.load(Ordering::Relaxed)
    }
    pub fn limit(&self) -> u32 {
        self.channels.limit.load(Ordering::Relaxed)
    }

    /// The trunk's traffic over the rolling window that ends at `now`.
    pub fn traffic(&self, now: Instant) -> TrafficFigures {
        self.channels.traffic.lock().figures(now)
    }

    /// The SIP transport towards the peer.
    pub fn transport(&self) -> Transport {
        match self.spec.peer.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        }
    }

    /// The peer's address now (resolved on every call, so DNS changes are followed).
    pub fn peer_address(&self) -> Option<SocketAddr> {
        (self.spec.peer.host.as_str(), self.spec.peer.port)
            .to_socket_addrs()
            .ok()?
            .next()
    }
}

/// A busy channel of a trunk; released when dropped.
#[derive(Debug)]
pub struct ChannelGuard {
    trunk: Arc<Trunk>,
    metrics: Option<TrunkMetrics>,
    taken_at: Instant,
    released: bool,
}

impl ChannelGuard {
    pub fn trunk(&self) -> &Arc<Trunk> {
        &self.trunk
    }

    /// Releases the channel at a given instant (tests on a virtual clock; calls drop the
    /// guard).
    #[cfg(test)]
    fn release_at(mut self, now: Instant) {
        self.release(now);
    }

    fn release(&mut self, now: Instant) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let channels = &self.trunk.channels;
        channels.traffic.lock().released(self.taken_at, now);
        let busy = channels
            .busy
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        if let Some(m) = &self.metrics {
            m.busy
                .with_label_values(&[self.trunk.name()])
                .set(i64::from(busy));
        }
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.release(Instant::now());
    }
}

impl std::fmt::Debug for TrunkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrunkMetrics")
    }
}

/// The trunks of the call center.
#[derive(Debug)]
pub struct Trunks {
    trunks: Vec<Arc<Trunk>>,
    credentials: TrunkCredentialSource,
    metrics: Option<TrunkMetrics>,
}

/// A trunk's digest user name and password (the password never appears in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkCredentials {
    pub username: String,
    pub password: String,
}

impl TrunkCredentials {
    /// From the Secret's two values as stored. A trailing line break is dropped, as it is from
    /// the mounted files, so the same Secret gives the same credentials standalone and in a pod
    /// (`kubectl create secret --from-file` and YAML block scalars keep one).
    pub fn from_secret_values(username: &str, password: &str) -> TrunkCredentials {
        TrunkCredentials {
            username: without_line_break(username).to_string(),
            password: without_line_break(password).to_string(),
        }
    }
}

fn without_line_break(value: &str) -> &str {
    value.trim_end_matches(['\r', '\n'])
}

impl std::fmt::Debug for TrunkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An outbound call's trunk and the number sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRoute {
    pub trunk: String,
    pub number: String,
}

impl Trunks {
    pub fn new(settings: &TrunkSettings, metrics: Option<TrunkMetrics>) -> Trunks {
        Self::build(settings, metrics, &[])
    }

    /// The trunks of a new config. A trunk that keeps its name keeps its channel counters
    /// (busy channels of live calls, calls blocked so far); its limit becomes the new one.
    /// Busy channels above a lowered limit stay until their calls end; new calls wait for
    /// the count to drop below it.
    /// Credentials keep their source; mounted ones take the new config's mount list (a new
    /// trunk's Secret arrives with a new pod template, so with a restart).
    pub fn reconfigured(&self, trunks: &[TrunkSpec], secrets: &[TrunkSecret]) -> Trunks {
        let credentials = match &self.credentials {
            TrunkCredentialSource::Mounted { dir, .. } => TrunkCredentialSource::Mounted {
                secrets: secrets.to_vec(),
                dir: dir.clone(),
            },
            inline @ TrunkCredentialSource::Inline(_) => inline.clone(),
        };
        let settings = TrunkSettings {
            trunks: trunks.to_vec(),
            credentials,
        };
        Self::build(&settings, self.metrics.clone(), &self.trunks)
    }

    fn build(
        settings: &TrunkSettings,
        metrics: Option<TrunkMetrics>,
        previous: &[Arc<Trunk>],
    ) -> Trunks {
        let now = Instant::now();
        let trunks: Vec<Arc<Trunk>> = settings
            .trunks
            .iter()
            .map(|spec| {
                let mut allowed: Vec<IpNet> = spec
                    .allowed_sources
                    .iter()
                    .filter_map(|s| {
                        let net = IpNet::parse(s);
                        if net.is_none() {
                            warn!(trunk = spec.name, source = s, "allowedSources entry ignored: not an IP or CIDR");
                        }
                        net
                    })
                    .collect();
                if spec.allowed_sources.is_empty() {
                    // The peer host's own addresses (an IP literal, or what the name resolves to now).
                    allowed = (spec.peer.host.as_str(), spec.peer.port)
                        .to_socket_addrs()
                        .map(|addrs| {
                            addrs
                                .map(|a| IpNet {
                                    addr: a.ip(),
                                    prefix: if a.is_ipv4() { 32 } else { 128 },
                                })
                                .collect()
                        })
                        .unwrap_or_else(|error| {
                            warn!(trunk = spec.name, host = spec.peer.host, %error, "cannot resolve the trunk peer; no inbound source trusted");
                            Vec::new()
                        });
                }
                let channels = previous
                    .iter()
                    .find(|t| t.spec.name == spec.name)
                    .map(|t| Arc::clone(&t.channels))
                    .unwrap_or_else(|| Arc::new(Channels::new(now)));
                channels.limit.store(spec.channels.limit, Ordering::Relaxed);
                if let Some(m) = &metrics {
                    m.limit
                        .with_label_values(&[&spec.name])
                        .set(i64::from(spec.channels.limit));
                    m.busy
                        .with_label_values(&[&spec.name])
                        .set(i64::from(channels.busy.load(Ordering::SeqCst)));
                    m.blocked.with_label_values(&[&spec.name]);
                }
                Arc::new(Trunk {
                    spec: spec.clone(),
                    allowed,
                    channels,
                })
            })
            .collect();
        if let Some(m) = &metrics {
            m.offered.track(&trunks);
        }
        Trunks {
            trunks,
            credentials: settings.credentials.clone(),
            metrics,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Trunk>> {
        self.trunks.iter().find(|t| t.spec.name == name)
    }

    pub fn all(&self) -> &[Arc<Trunk>] {
        &self.trunks
    }

    /// The trunk a request from this address is trusted as (the first listed that matches).
    pub fn by_source(&self, ip: IpAddr) -> Option<&Arc<Trunk>> {
        self.trunks
            .iter()
            .find(|t| t.allowed.iter().any(|n| n.contains(ip)))
    }

    /// The outbound route for a seat's dialed number: the longest matching dial prefix over
    /// all trunks (the first trunk listed wins a tie), with `strip` and `prepend` applied.
    pub fn outbound(&self, dialed: &str) -> Option<OutboundRoute> {
        let (trunk, rule) = self
            .trunks
            .iter()
            .flat_map(|t| t.spec.dial_prefixes.iter().map(move |r| (t, r)))
            .filter(|(_, r)| !r.prefix.is_empty() && dialed.starts_with(&r.prefix))
            .fold(
                None,
                |best: Option<(&Arc<Trunk>, &DialPrefix)>, (t, r)| match best {
                    Some((_, b)) if b.prefix.len() >= r.prefix.len() => best,
                    _ => Some((t, r)),
                },
            )?;
        let rest: String = dialed.chars().skip(usize::from(rule.strip)).collect();
        let number = format!("{}{rest}", rule.prepend.as_deref().unwrap_or_default());
        (!number.is_empty()).then(|| OutboundRoute {
            trunk: trunk.spec.name.clone(),
            number,
        })
    }

    /// Takes a channel of the trunk, or counts the call as blocked (`None`: answer 503).
    pub fn acquire(&self, trunk: &Arc<Trunk>) -> Option<ChannelGuard> {
        self.acquire_at(trunk, Instant::now())
    }

    /// The channel of a call taken over from the previous active node: the call is up
    /// already, so it is counted even above the limit (its end frees it as usual).
    pub fn take_over(&self, trunk: &Arc<Trunk>) -> ChannelGuard {
        let now = Instant::now();
        let before = trunk.channels.busy.fetch_add(1, Ordering::SeqCst);
        trunk.channels.traffic.lock().taken(now);
        if let Some(m) = &self.metrics {
            m.busy
                .with_label_values(&[trunk.name()])
                .set(i64::from(before + 1));
        }
        ChannelGuard {
            trunk: Arc::clone(trunk),
            metrics: self.metrics.clone(),
            taken_at: now,
            released: false,
        }
    }

    /// As [`Self::acquire`], at a given instant (the traffic meter's clock).
    pub fn acquire_at(&self, trunk: &Arc<Trunk>, now: Instant) -> Option<ChannelGuard> {
        let limit = trunk.limit();
        let taken = trunk
            .channels
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b < limit).then_some(b + 1)
            });
        match taken {
            Ok(before) => {
                trunk.channels.traffic.lock().taken(now);
                if let Some(m) = &self.metrics {
                    m.busy
                        .with_label_values(&[trunk.name()])
                        .set(i64::from(before + 1));
                }
                Some(ChannelGuard {
                    trunk: Arc::clone(trunk),
                    metrics: self.metrics.clone(),
                    taken_at: now,
                    released: false,
                })
            }
            Err(_) => {
                trunk.channels.traffic.lock().blocked(now);
                trunk.channels.blocked.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.blocked.with_label_values(&[trunk.name()]).inc();
                }
                None
            }
        }
    }

    /// The trunk's credentials: held in memory, or read from its Secret files now. `None`
    /// (logged) when the trunk has no credentials or the files cannot be read.
    pub fn credentials(&self, trunk: &str) -> Option<TrunkCredentials> {
        let dir = match &self.credentials {
            TrunkCredentialSource::Inline(values) => {
                let found = values.get(trunk).cloned();
                if found.is_none() {
                    warn!(trunk, "trunk challenged but has no credentials configured");
                }
                return found;
            }
            TrunkCredentialSource::Mounted {
                dir: Some(base), ..
            } => base.join(trunk),
            TrunkCredentialSource::Mounted { secrets, dir: None } => {
                match secrets.iter().find(|s| s.trunk == trunk) {
                    Some(secret) => PathBuf::from(&secret.mount_path),
                    None => {
                        warn!(trunk, "trunk challenged but has no credentials configured");
                        return None;
                    }
                }
            }
        };
        let read = |file: &str| -> Option<String> {
            let path: PathBuf = Path::new(&dir).join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(error) => {
                    warn!(trunk, path = %path.display(), %error, "cannot read trunk credentials");
                    None
                }
            }
        };
        Some(TrunkCredentials::from_secret_values(
            &read(TRUNK_USERNAME_FILE)?,
            &read(TRUNK_PASSWORD_FILE)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, yaml: &str) -> TrunkSpec {
        let mut spec: TrunkSpec = serde_yaml::from_str(yaml).expect("trunk yaml");
        spec.name = name.into();
        spec
    }

    fn trunks() -> Trunks {
        Trunks::new(
            &TrunkSettings {
                trunks: vec![
                    trunk(
                        "pstn",
                        "name: x\npeer: {host: 192.0.2.7}\nallowedSources: [203.0.113.0/24, 2001:db8::1]\n\
                         dialPrefixes: [{prefix: '0', strip: 1}, {prefix: '00', strip: 2, prepend: '+'}]\n\
                         channels: {limit: 2}",
                    ),
                    trunk(
                        "backup",
                        "name: x\npeer: {host: 192.0.2.8, port: 5080, transport: TCP}\n\
                         dialPrefixes: [{prefix: '9', strip: 1, prepend: '+86'}]",
                    ),
                ],
                ..TrunkSettings::default()
            },
            None,
        )
    }

    #[test]
    fn sources_match_cidrs_addresses_and_the_peer_by_default() {
        let t = trunks();
        let name = |ip: &str| {
            t.by_source(ip.parse().unwrap())
                .map(|t| t.name().to_string())
        };
        assert_eq!(name("203.0.113.77").as_deref(), Some("pstn"));
        assert_eq!(name("2001:db8::1").as_deref(), Some("pstn"));
        assert_eq!(name("2001:db8::2"), None);
        assert_eq!(name("192.0.2.8").as_deref(), Some("backup"));
        // pstn lists its sources, so its peer address alone is not trusted.
        assert_eq!(name("192.0.2.7"), None);
        assert_eq!(name("127.0.0.1"), None);
        assert_eq!(name("::ffff:203.0.113.1").as_deref(), Some("pstn"));
    }

    #[test]
    fn cidr_parsing() {
        assert!(
            IpNet::parse("10.0.0.0/8")
                .unwrap()
                .contains("10.9.9.9".parse().unwrap())
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nonsense").is_none());
        assert!(IpNet::parse("10.0.0.1/x").is_none());
    }

    #[test]
    fn longest_prefix_wins_with_strip_and_prepend() {
        let t = trunks();
        let route = |d: &str| t.outbound(d).map(|r| (r.trunk, r.number));
        assert_eq!(route("0301234"), Some(("pstn".into(), "301234".into())));
        assert_eq!(
            route("0049301234"),
            Some(("pstn".into(), "+49301234".into()))
        );
        assert_eq!(
            route("91380000"),
            Some(("backup".into(), "+861380000".into()))
        );
        assert_eq!(route("1002"), None);
        // Nothing left to dial after stripping.
        assert_eq!(route("0"), None);
    }

    #[test]
    fn channels_are_limited_counted_and_released() {
        let t = trunks();
        let pstn = Arc::clone(t.get("pstn").unwrap());
        let a = t.acquire(&pstn).expect("first channel");
        let b = t.acquire(&pstn).expect("second channel");
        assert!(t.acquire(&pstn).is_none(), "limit 2");
        assert_eq!((pstn.busy(), pstn.blocked()), (2, 1));
        drop(a);
        drop(b);
        assert_eq!(pstn.busy(), 0);
        assert!(t.acquire(&pstn).is_some());
        assert_eq!(pstn.busy(), 0, "a dropped guard releases its channel");
    }

    #[test]
    fn a_new_config_keeps_the_channels_of_live_calls_and_takes_the_new_limit() {
        let t = trunks();
        let pstn = Arc::clone(t.get("pstn").unwrap());
        let held = t.acquire(&pstn).expect("a live call");
        assert!(t.acquire(&pstn).is_some_and(|g| {
            drop(g);
            true
        }));
        let mut specs: Vec<TrunkSpec> = t.all().iter().map(|t| t.spec.clone()).collect();
        specs[0].channels.limit = 1;
        specs.remove(1);
        let next = t.reconfigured(&specs, &[]);
        assert!(next.get("backup").is_none(), "a removed trunk is gone");
        let new_pstn = Arc::clone(next.get("pstn").unwrap());
        assert_eq!((new_pstn.limit(), new_pstn.busy()), (1, 1));
        assert!(
            next.acquire(&new_pstn).is_none(),
            "the live call fills limit 1"
        );
        assert_eq!(new_pstn.blocked(), 1);
        // The call that began under the old config ends: its channel is free in the new one.
        drop(held);
        assert_eq!(new_pstn.busy(), 0);
        assert!(next.acquire(&new_pstn).is_some());
    }

    fn minutes(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_steady_load_of_n_channels_is_n_erlangs() {
        let t0 = Instant::now();
        let mut meter = TrafficMeter::new(t0);
        for _ in 0..3 {
            meter.taken(t0);
        }
        // Before the window fills, it covers the time since the start.
        let early = meter.figures(t0 + minutes(5.0));
        assert!(close(early.carried_erlangs, 3.0), "{early:?}");
        assert_eq!(early.window, minutes(5.0));
        assert_eq!((early.calls_offered, early.calls_blocked), (3, 0));
        // Long after: still 3 erlangs over a full window; the takes have rolled off.
        for at in [20.0, 37.25, 60.5] {
            let f = meter.figures(t0 + minutes(at));
            assert!(close(f.carried_erlangs, 3.0), "{at}: {f:?}");
            assert!(close(f.offered_erlangs, 3.0), "nothing blocked: {f:?}");
            assert!(
                f.window >= minutes(14.0) && f.window <= TRAFFIC_WINDOW,
                "{f:?}"
            );
            assert_eq!(f.calls_offered, 0, "the takes left the window");
        }
        // Reads in between do not change the figures (time is booked once).
        let mut other = TrafficMeter::new(t0);
        for _ in 0..3 {
            other.taken(t0);
        }
        assert_eq!(
            other.figures(t0 + minutes(60.5)),
            meter.figures(t0 + minutes(60.5))
        );
    }

    #[test]
    fn half_the_window_busy_is_half_an_erlang() {
        let t0 = Instant::now();
        let mut meter = TrafficMeter::new(t0);
        meter.taken(t0 + minutes(20.0));
        meter.released(t0 + minutes(20.0), t0 + minutes(27.0));
        // At 34:00 the window is 20:00–34:00 (14 whole minutes): 7 of 14 minutes busy.
        let f = meter.figures(t0 + minutes(34.0));
        assert_eq!(f.window, minutes(14.0));
        assert!(close(f.carried_erlangs, 0.5), "{f:?}");
        assert_eq!(f.mean_holding, Some(minutes(7.0)));
    }

    #[test]
    fn blocked_attempts_are_counted_and_offered_at_the_mean_holding_time() {
        let t = trunks();
        // After the meters started, so the window below covers from t0 on.
        let t0 = Instant::now();
        let pstn = Arc::clone(t.get("pstn").unwrap());
        let start = t0 + minutes(1.0);
        let a = t.acquire_at(&pstn, start).expect("first channel");
        let b = t.acquire_at(&pstn, start).expect("second channel");
        assert!(t.acquire_at(&pstn, start).is_none(), "limit 2");
        // While both calls run and none ended, the blocked call counts at their age.
        let during = pstn.traffic(start + minutes(1.0));
        assert_eq!((during.calls_offered, during.calls_blocked), (3, 1));
        assert_eq!(during.mean_holding, Some(minutes(1.0)));
        a.release_at(start + minutes(2.0));
        b.release_at(start + minutes(2.0));
        assert_eq!(pstn.busy(), 0);
        let now = start + minutes(8.0);
        let f = pstn.traffic(now);
        let window = f.window.as_secs_f64();
        assert!(window >= minutes(9.0).as_secs_f64(), "{f:?}");
        assert!(close(f.carried_erlangs, 2.0 * 120.0 / window), "{f:?}");
        assert_eq!(f.mean_holding, Some(minutes(2.0)));
        assert!(
            close(f.offered_erlangs, 3.0 * 120.0 / window),
            "carried + 1 blocked × 2 min: {f:?}"
        );
        assert_eq!((f.calls_offered, f.calls_blocked), (3, 1));
        // Fifteen minutes on, everything has rolled off.
        let later = pstn.traffic(now + minutes(16.0));
        assert_eq!(
            (later.calls_offered, later.calls_blocked, later.mean_holding),
            (0, 0, None)
        );
        assert!(close(later.offered_erlangs, 0.0), "{later:?}");
        assert_eq!(pstn.blocked(), 1, "the running total stays");
    }

    #[test]
    fn the_window_rolls_off_minute_by_minute() {
        let t0 = Instant::now();
        let mut meter = TrafficMeter::new(t0);
        // One blocked attempt a minute for 30 minutes, one channel busy throughout.
        meter.taken(t0);
        for m in 0..30 {
            meter.blocked(t0 + minutes(f64::from(m) + 0.5));
        }
        // 15 buckets, minutes 15 to 29 (the current one three quarters filled): 14.75 minutes
        // with the attempts of minutes 15..=29.
        let f = meter.figures(t0 + minutes(29.75));
        assert_eq!((f.calls_offered, f.calls_blocked), (15, 15));
        assert_eq!(f.window, minutes(14.75));
        assert!(close(f.carried_erlangs, 1.0), "{f:?}");
        // No call ended: each blocked call is offered at the age of the call in progress.
        assert_eq!(f.mean_holding, Some(minutes(29.75)));
        assert!(
            close(f.offered_erlangs, 1.0 + 15.0 * 29.75 / 14.75),
            "{f:?}"
        );
        let g = meter.figures(t0 + minutes(30.75));
        assert_eq!(g.calls_blocked, 14, "minute 15 left the window");
        assert!(
            meter.buckets.len() <= WINDOW_BUCKETS as usize,
            "memory is bounded"
        );
    }

    #[test]
    fn late_events_and_an_empty_window_are_harmless() {
        let t0 = Instant::now();
        let mut meter = TrafficMeter::new(t0);
        let empty = meter.figures(t0);
        assert_eq!(empty.window, Duration::ZERO);
        assert!(close(empty.offered_erlangs, 0.0));
        meter.taken(t0 + minutes(2.0));
        // An event stamped before the last booked instant counts at that instant.
        meter.released(t0 + minutes(2.0), t0 + minutes(1.0));
        let f = meter.figures(t0 + minutes(3.0));
        assert!(close(f.carried_erlangs, 0.0), "{f:?}");
        assert_eq!(f.mean_holding, Some(Duration::ZERO));
    }

    #[test]
    fn offered_erlangs_are_exported_per_trunk_at_scrape_time() {
        let registry = Registry::new();
        let metrics = TrunkMetrics::new(&registry).expect("metrics");
        let settings = TrunkSettings {
            trunks: trunks().all().iter().map(|t| t.spec.clone()).collect(),
            ..TrunkSettings::default()
        };
        let t = Trunks::new(&settings, Some(metrics));
        let pstn = Arc::clone(t.get("pstn").unwrap());
        let guard = t.acquire(&pstn).expect("a channel");
        let text = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .expect("encode")
        };
        let scraped = text();
        assert!(
            scraped.contains("switchboard_trunk_offered_erlangs{trunk=\"pstn\"}"),
            "{scraped}"
        );
        assert!(scraped.contains("switchboard_trunk_offered_erlangs{trunk=\"backup\"} 0"));
        drop(guard);
        let next = t.reconfigured(&settings.trunks[..1], &[]);
        let scraped = text();
        assert!(
            !scraped.contains("trunk_offered_erlangs{trunk=\"backup\"}"),
            "a removed trunk's series disappears: {scraped}"
        );
        // The channel time of the call carries over to the new config's trunk.
        let held = next.get("pstn").unwrap().traffic(Instant::now());
        assert_eq!(held.calls_offered, 1);
    }

    #[test]
    fn credentials_come_from_the_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pstn")).unwrap();
        std::fs::write(dir.path().join("pstn/username"), "acct\n").unwrap();
        std::fs::write(dir.path().join("pstn/password"), "pw").unwrap();
        let t = Trunks::new(
            &TrunkSettings {
                credentials: TrunkCredentialSource::Mounted {
                    secrets: Vec::new(),
                    dir: Some(dir.path().to_path_buf()),
                },
                ..TrunkSettings::default()
            },
            None,
        );
        let c = t.credentials("pstn").expect("read");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("acct", "pw"));
        assert!(t.credentials("other").is_none());
        assert!(!format!("{c:?}").contains("pw"), "no password in logs");
    }

    #[test]
    fn credentials_come_from_the_mount_path_of_the_trunks_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "acct").unwrap();
        std::fs::write(dir.path().join("password"), "pw\r\n").unwrap();
        let secret = |trunk: &str, mount_path: &Path| TrunkSecret {
            trunk: trunk.into(),
            secret_name: "pstn-credentials".into(),
            username_key: "username".into(),
            password_key: "password".into(),
            mount_path: mount_path.display().to_string(),
        };
        let t = Trunks::new(
            &TrunkSettings {
                credentials: TrunkCredentialSource::Mounted {
                    secrets: vec![
                        secret("pstn", dir.path()),
                        secret("backup", &dir.path().join("not-mounted")),
                    ],
                    dir: None,
                },
                ..TrunkSettings::default()
            },
            None,
        );
        assert_eq!(
            t.credentials("pstn"),
            Some(TrunkCredentials::from_secret_values("acct", "pw"))
        );
        // A rotated password is read at the next challenge.
        std::fs::write(dir.path().join("password"), "rotated").unwrap();
        assert_eq!(t.credentials("pstn").unwrap().password, "rotated");
        assert!(t.credentials("backup").is_none(), "files missing");
        assert!(t.credentials("other").is_none(), "no Secret for this trunk");
    }

    #[test]
    fn inline_credentials_are_served_from_memory() {
        let t = Trunks::new(
            &TrunkSettings {
                credentials: TrunkCredentialSource::Inline(BTreeMap::from([(
                    "pstn".to_string(),
                    TrunkCredentials::from_secret_values("acct\n", "s3cret\n"),
                )])),
                ..TrunkSettings::default()
            },
            None,
        );
        let c = t.credentials("pstn").expect("inline");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("acct", "s3cret")
        );
        assert!(t.credentials("backup").is_none());
        assert!(!format!("{t:?}").contains("s3cret"), "no password in logs");
    }
}
