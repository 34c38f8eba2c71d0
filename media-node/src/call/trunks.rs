//! SIP trunks: which source addresses are trusted as which trunk, the outbound dial plan, the
//! per-trunk channel limit, and the trunk's digest credentials: in a pod read from the mounted
//! Secret files when the trunk challenges (so a rotated password needs no restart), standalone
//! held in memory from the file's Secret manifest (never written to disk).
//!
//! A channel is held by a [`ChannelGuard`] for the whole life of a call task; dropping the
//! guard (on any end path, panics included) releases the channel, so the busy count cannot
//! leak.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
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
        };
        registry.register(Box::new(metrics.busy.clone()))?;
        registry.register(Box::new(metrics.limit.clone()))?;
        registry.register(Box::new(metrics.blocked.clone()))?;
        Ok(metrics)
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

/// A trunk's channel counters.
#[derive(Debug, Default)]
struct Channels {
    busy: AtomicU32,
    blocked: AtomicU64,
    limit: AtomicU32,
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
}

impl ChannelGuard {
    pub fn trunk(&self) -> &Arc<Trunk> {
        &self.trunk
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let now = self
            .trunk
            .channels
            .busy
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        if let Some(m) = &self.metrics {
            m.busy
                .with_label_values(&[self.trunk.name()])
                .set(i64::from(now));
        }
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
        let trunks = settings
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
                    .unwrap_or_default();
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
        let limit = trunk.limit();
        let taken = trunk
            .channels
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b < limit).then_some(b + 1)
            });
        match taken {
            Ok(before) => {
                if let Some(m) = &self.metrics {
                    m.busy
                        .with_label_values(&[trunk.name()])
                        .set(i64::from(before + 1));
                }
                Some(ChannelGuard {
                    trunk: Arc::clone(trunk),
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
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
