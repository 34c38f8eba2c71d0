//! `media-node`: the Switchboard data plane. `--config FILE` is either the user's manifests
//! (standalone mode: serves a call center with no Kubernetes at all) or the `node-config.yaml`
//! the operator writes into the call center's ConfigMap.
//!
//! Listeners: SIP (UDP and TCP, `--sip-listen`/`--sip-port`), metrics and probes (HTTP,
//! `--metrics-listen`, 9090) and the gRPC control API (h2c, `--control-listen`, 9091).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use media_node::call::CallSettings;
use media_node::call::trunks::TrunkCredentialSource;
use media_node::center::{self, CallCenterRuntime};
use media_node::control::{Control, ControlListener};
use media_node::http::{HttpListener, NodeMetrics, Readiness};
use media_node::media::ports::PortAllocator;
use media_node::node::{self, ConfigSource, LoadedConfig, PodEnv};
use media_node::replication::stream::{ReplicationMetrics, ReplicationService};
use media_node::replication::{self, Follower, ReplicationHub};
use media_node::role::{self, Role};
use media_node::sip::{ServingMode, SipListeners, SipMetrics, SipServer};
use switchboard_crds::callcenter::RecordingMode;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "media-node", version, about = "Switchboard media node")]
struct Cli {
    /// The configuration: a YAML file with one CallCenter and its Queues, Seats and Secrets
    /// (standalone mode), or the operator's node-config.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Only check the file and exit.
    #[arg(long)]
    check: bool,
    /// The address SIP listens on (UDP and TCP).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    sip_listen: IpAddr,
    /// The SIP port for both UDP and TCP, overriding the CallCenter's `spec.sip.udpPort` and
    /// `spec.sip.tcpPort` (0: any free port for each).
    #[arg(long)]
    sip_port: Option<u16>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (HTTP) [default: 0.0.0.0:9090;
    /// standalone, a busy default port falls back to a free one, printed at start].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Where the gRPC control API is served: plain HTTP/2 (h2c), for the operator inside the
    /// pod network [default: 0.0.0.0:9091; standalone, a busy default port falls back to a
    /// free one].
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<SocketAddr>,
    /// Where recordings (WAV + JSON sidecar) and the CDR file `cdr.jsonl` are written
    /// [default: $SWITCHBOARD_RECORDINGS_DIR, else ./recordings].
    #[arg(long, value_name = "DIR")]
    recordings_dir: Option<PathBuf>,
    /// Where IVR prompts, music on hold and announcements are read from (the paths the
    /// CallCenter names are relative to it) [default: $SWITCHBOARD_PROMPTS_DIR, else
    /// ./prompts].
    #[arg(long, value_name = "DIR", env = "SWITCHBOARD_PROMPTS_DIR")]
    prompts: Option<PathBuf>,
    /// Run as a standby that follows the live state of the active node whose control API is
    /// at URL (`http://host:9091`), without an election: it serves no calls and never takes
    /// over. For a standby pair outside Kubernetes and for tests; in a HotStandby pod the
    /// Lease decides who is active.
    #[arg(long, value_name = "URL", env = "SWITCHBOARD_FOLLOW")]
    follow: Option<String>,
}

/// The B2BUA's settings from the config: RTP range, codecs, the address in SDP, recording.
fn call_settings(
    cli: &Cli,
    config: &switchboard_proto::node_config::NodeConfig,
    env: &PodEnv,
    node_name: &str,
    trunk_credentials: TrunkCredentialSource,
) -> Result<CallSettings, String> {
    let spec = &config.spec;
    let ports = PortAllocator::from_spec(&spec.rtp).map_err(|e| format!("spec.rtp: {e}"))?;
    // The address peers must send media to: the configured one, else the pod's own address
    // (a wildcard SIP listener says nothing about it).
    let advertised_address = match spec.sip.advertised_address.as_deref() {
        Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
            format!("spec.sip.advertisedAddress: {a:?}: the media node needs an IP address here")
        })?),
        None => env.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
    };
    let dir = cli
        .recordings_dir
        .clone()
        .or_else(|| env.recordings_dir.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("recordings"));
    let record = spec.recording.mode == RecordingMode::Always;
    Ok(CallSettings {
        ports: Some(ports),
        codecs: spec.codecs.clone(),
        advertised_address,
        media_bind: None,
        recording_dir: record.then(|| dir.clone()),
        // Every call gets a CDR line, recorded or not.
        cdr_path: Some(dir.join("cdr.jsonl")),
        node_name: node_name.to_string(),
        trunks: media_node::call::TrunkSettings {
            trunks: spec.trunks.clone(),
            credentials: trunk_credentials,
        },
        entry_points: spec.entry_points.clone(),
        seat_extensions: media_node::node::seat_extensions(config),
        feature_codes: spec.feature_codes.clone(),
        prompts_dir: Some(
            cli.prompts
                .clone()
                .unwrap_or_else(|| PathBuf::from("prompts")),
        ),
        // Messages are kept whatever the recording mode: a caller was told to speak.
        voicemail_dir: Some(dir.join("voicemail")),
        ..CallSettings::default()
    })
}

/// Where the trunks' credentials come from: in a pod the Secrets mounted where each
/// `TrunkSecret` says; standalone the file's own Secret manifests, held in memory (there is
/// no mount, and the node writes no copy of a password to disk).
fn trunk_credentials(loaded: &LoadedConfig) -> TrunkCredentialSource {
    match &loaded.trunk_credentials {
        Some(values) => TrunkCredentialSource::Inline(values.clone()),
        None => TrunkCredentialSource::Mounted {
            secrets: loaded.config.trunk_secrets.clone(),
            dir: None,
        },
    }
}

const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9090);
const DEFAULT_CONTROL_LISTEN: SocketAddr = SocketAddr::new(
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    switchboard_proto::CONTROL_PORT,
);

/// The address to bind and whether a busy port may fall back to a free one. Only a default
/// address in standalone mode may: there the SIP port is what matters, and 9090 is often a
/// local Prometheus. In a pod the probes and the operator need the fixed ports, and an address
/// given on the command line is meant.
fn listen_address(
    given: Option<SocketAddr>,
    default: SocketAddr,
    source: ConfigSource,
) -> (SocketAddr, bool) {
    match given {
        Some(addr) => (addr, false),
        None => (default, source == ConfigSource::Standalone),
    }
}

/// Exit codes: 2 for a configuration the node cannot serve, 1 for a runtime failure.
const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match node::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("media-node: {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let c = &loaded.config;
    let source = match loaded.source {
        ConfigSource::Standalone => "standalone manifests",
        ConfigSource::Operator => "node config",
    };
    println!(
        "media-node: {}: {source} for CallCenter {:?} (generation {}) with {} queue(s) and {} seat(s) is valid",
        cli.config.display(),
        c.call_center,
        c.generation,
        c.queues.len(),
        c.seats.len()
    );
    if cli.check {
        return ExitCode::SUCCESS;
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and test output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("media-node: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(serve(&cli, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("media-node: {message}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn serve(cli: &Cli, loaded: LoadedConfig) -> Result<(), String> {
    let credentials = trunk_credentials(&loaded);
    let (source, config) = (loaded.source, loaded.config);
    let env = PodEnv::from_process();
    let node_name = env.node_name(node::host_name());
    info!(
        node = %node_name,
        namespace = env.pod_namespace.as_deref().unwrap_or("-"),
        pod_ip = env.pod_ip.as_deref().unwrap_or("-"),
        node_ip = env.node_ip.as_deref().unwrap_or("-"),
        lease = env.lease_name.as_deref().unwrap_or("-"),
        recordings_dir = env.recordings_dir.as_deref().unwrap_or("-"),
        "media node starting"
    );
    if let Some(expected) = &env.call_center
        && *expected != config.call_center
    {
        // Not fatal: the ConfigMap is what the node serves; the mismatch is for the operator.
        warn!(
            env = %expected,
            config = %config.call_center,
            "SWITCHBOARD_CALL_CENTER differs from the config's call center"
        );
    }

    // One registry for everything /metrics shows.
    let registry = prometheus::Registry::new();
    let sip_metrics =
        SipMetrics::new(&registry).map_err(|e| format!("cannot create SIP metrics: {e}"))?;
    media_node::recording::register_metrics(&registry)
        .map_err(|e| format!("cannot create recording metrics: {e}"))?;
    let node_metrics =
        NodeMetrics::new(&registry).map_err(|e| format!("cannot create node metrics: {e}"))?;
    let role_metrics = role::RoleMetrics::new(&registry)
        .map_err(|e| format!("cannot create role metrics: {e}"))?;
    let replication_metrics = ReplicationMetrics::new(&registry)
        .map_err(|e| format!("cannot create replication metrics: {e}"))?;
    let center = Arc::new(
        CallCenterRuntime::new(&config, Some(&registry))
            .map_err(|e| format!("cannot create queue and agent metrics: {e}"))?,
    );

    // The probes answer first, so a slow SIP bind shows as "not ready" rather than a refused
    // connection; the config was loaded before the runtime started.
    let readiness = Arc::new(Readiness::default());
    readiness.config_loaded();
    let (addr, may_fall_back) = listen_address(cli.metrics_listen, DEFAULT_METRICS_LISTEN, source);
    let http = match HttpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if may_fall_back && e.is_address_in_use() => {
            warn!(error = %e, "the default metrics port is busy; using a free port instead");
            HttpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    println!(
        "media-node: metrics, /healthz and /readyz on http://{}",
        http.local_addr()
    );
    let http = tokio::spawn(http.serve(registry, Arc::clone(&readiness)));

    let settings = node::sip_settings(&config);
    let realm = settings.realm.clone();
    let seats = settings.seats.len();
    let calls = call_settings(cli, &config, &env, &node_name, credentials)?;
    if let Some(dir) = &calls.cdr_path.as_ref().and_then(|p| p.parent()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let sip = Arc::new(
        SipServer::new(settings, sip_metrics, Instant::now())
            .with_calls(calls)
            .map_err(|e| format!("cannot start calls: {e}"))?,
    );
    if let Some(calls) = sip.calls() {
        calls.attach_center(Arc::clone(&center));
        calls.check_prompts(node::prompts_used(&config));
    }
    let sip_config = &config.spec.sip;
    let udp = SocketAddr::new(cli.sip_listen, cli.sip_port.unwrap_or(sip_config.udp_port));
    let tcp = SocketAddr::new(cli.sip_listen, cli.sip_port.unwrap_or(sip_config.tcp_port));
    let listeners = SipListeners::bind(udp, tcp)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "media-node: SIP for domain {realm:?} ({seats} seat(s)) on udp {} and tcp {}; serving REGISTER, OPTIONS, calls, IVR, queues and voicemail",
        listeners.udp_addr(),
        listeners.tcp_addr()
    );
    info!(udp = %listeners.udp_addr(), tcp = %listeners.tcp_addr(), "SIP listening");

    let (addr, may_fall_back) = listen_address(cli.control_listen, DEFAULT_CONTROL_LISTEN, source);
    let control = match ControlListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if may_fall_back && e.is_address_in_use() => {
            warn!(error = %e, "the default control port is busy; using a free port instead");
            ControlListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    println!(
        "media-node: control API (gRPC, h2c) on {}",
        control.local_addr()
    );
    // With HotStandby in a pod the node serves only while it holds the Lease.
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::Active);
    tokio::spawn(role::export(role_rx.clone(), role_metrics.clone()));
    // Only the active node serves: a standby, or an active that could not renew its Lease
    // (fenced), refuses new calls and registrations and sends no in-dialog request; a
    // draining node takes nothing new but lets its calls finish.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let election = role::election(&env, &config.spec.high_availability);
    {
        let sip = Arc::clone(&sip);
        let (mut role, mut drain) = (role_rx.clone(), drain_rx.clone());
        // A HotStandby node hands over when it drains (another node serves what it leaves).
        let hands_over = election.is_some();
        tokio::spawn(async move {
            loop {
                let mode = if *drain.borrow_and_update() {
                    if hands_over {
                        ServingMode::HandingOver
                    } else {
                        ServingMode::Draining
                    }
                } else if *role.borrow_and_update() == Role::Active {
                    ServingMode::Active
                } else {
                    ServingMode::Standby
                };
                sip.set_mode(mode);
                tokio::select! {
                    r = role.changed() => if r.is_err() { return },
                    r = drain.changed() => if r.is_err() { return },
                }
            }
        });
    }
    // Live state for a standby: registrations and agent states as they change.
    let replication = Arc::new(ReplicationHub::new());
    replication.set_config_generation(config.generation);
    sip.attach_replication(Arc::clone(&replication));
    center.attach_replication(Arc::clone(&replication));
    if let Some(calls) = sip.calls() {
        calls.attach_replication(Arc::clone(&replication));
    }
    // The active node a standby follows: given (`--follow`), or the Lease holder's pod.
    let (active_tx, active_rx) = tokio::sync::watch::channel(cli.follow.clone());
    let drain_timeout = config.spec.high_availability.drain_timeout_seconds;
    let follower = Arc::new(parking_lot::Mutex::new(Follower::new()));
    let (predecessor_tx, _) = tokio::sync::watch::channel(None);
    let stream_lost = Arc::new(tokio::sync::Notify::new());
    let predecessor_died = Arc::new(tokio::sync::Notify::new());
    let lease_handed_over = Arc::new(tokio::sync::Notify::new());
    if let Some(active) = &cli.follow {
        role_tx.send_replace(Role::Standby);
        info!(active, "standby: following the active node (no election)");
    } else if let Some(election) = election.clone() {
        role_tx.send_replace(Role::Standby);
        tokio::spawn(role::run(
            election,
            role_tx,
            role_metrics.clone(),
            Arc::clone(&replication),
            role::Following {
                active: active_tx,
                predecessor: predecessor_tx.clone(),
                in_sync: {
                    let follower = Arc::clone(&follower);
                    Box::new(move || {
                        replication::stream::readiness_now(&follower.lock())
                            == replication::Readiness::Ready
                    })
                },
                stream_lost: Arc::clone(&stream_lost),
                predecessor_died: Arc::clone(&predecessor_died),
                lease_handed_over: Arc::clone(&lease_handed_over),
            },
            take_over(Arc::clone(&follower), Arc::clone(&sip), Arc::clone(&center)),
            drain_rx.clone(),
        ));
    }
    if cli.follow.is_some() || election.is_some() {
        tokio::spawn(replication::stream::follow(
            active_rx,
            node_name.clone(),
            Arc::clone(&follower),
            replication_metrics.clone(),
            role_metrics.standby_ready.clone(),
            {
                let predecessor_lost = on_predecessor_lost(
                    Arc::clone(&follower),
                    Arc::clone(&sip),
                    role_rx.clone(),
                    predecessor_tx,
                    Arc::clone(&replication),
                    role_metrics.failovers.clone(),
                    predecessor_died,
                );
                move || {
                    stream_lost.notify_one();
                    predecessor_lost();
                }
            },
            move || lease_handed_over.notify_one(),
        ));
        let (follower, role) = (Arc::clone(&follower), role_rx.clone());
        readiness.standby_must_follow(move || {
            if *role.borrow() != Role::Standby {
                return None;
            }
            match replication::stream::readiness_now(&follower.lock()) {
                replication::Readiness::Ready => None,
                replication::Readiness::NotReady { reason, detail } => Some(format!(
                    "standing by, not able to take over ({reason}): {detail}"
                )),
            }
        });
    }
    tokio::spawn(center::run(Arc::clone(&center), Arc::clone(&sip)));
    let replication_service = ReplicationService::new(
        replication,
        role_rx.clone(),
        drain_rx.clone(),
        replication_metrics,
    );
    let control = tokio::spawn(
        control.serve(
            Control::new(
                node_name,
                config,
                Arc::clone(&sip),
                node_metrics,
                role_rx,
                center,
            )
            .with_drain(drain_tx.clone())
            .with_follower(follower),
            replication_service,
        ),
    );
    readiness.sip_bound();
    info!("ready");

    // A listener that stops is a failure: exit, so the kubelet restarts the pod. SIP runs as
    // its own task so it keeps serving the calls up while the node drains.
    let sip_task = tokio::spawn(listeners.serve(Arc::clone(&sip)));
    tokio::select! {
        _ = sip_task => Err("the SIP listeners stopped".to_string()),
        r = http => Err(match r {
            Ok(e) => e.to_string(),
            Err(e) => format!("the metrics server task failed: {e}"),
        }),
        r = control => Err(match r {
            Ok(e) => e.to_string(),
            Err(e) => format!("the control server task failed: {e}"),
        }),
        signal = shutdown_signal() => {
            let name = signal?;
            let timeout = Duration::from_secs(u64::from(drain_timeout));
            info!(signal = name, ?timeout, "draining: no new calls; established calls may finish");
            drain_tx.send_replace(true);
            tokio::select! {
                left = drained(sip.calls().cloned(), timeout) => {
                    info!(calls_left = left, "drained; shutting down");
                    // The node that took the Lease over follows this one until it ends: let
                    // the last call's end reach it, or it takes that call for one still up.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(())
                }
                again = shutdown_signal() => {
                    warn!(signal = again?, "second signal: shutting down without waiting");
                    Ok(())
                }
            }
        }
    }
}

/// Waits until no call is up, at most `timeout`; returns the calls still up.
async fn drained(calls: Option<Arc<media_node::call::CallEngine>>, timeout: Duration) -> u64 {
    let Some(calls) = calls else {
        return 0;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let up = calls.calls_up();
        if up == 0 || tokio::time::Instant::now() >= deadline {
            return up;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a node that just took the Lease at a term does with the state it followed: the
/// previous active's registrations and agent states, if that state is of the term just
/// before (older state is dropped: a term in between may have changed it), and, when the
/// previous active failed (`failover`; not a Lease handed over by a draining node, which
/// still serves its calls), its live calls (see [`take_over_calls`]).
fn take_over(
    follower: Arc<parking_lot::Mutex<Follower>>,
    sip: Arc<SipServer>,
    center: Arc<CallCenterRuntime>,
) -> impl Fn(i64, bool) {
    move |term, failover| {
        let Some(state) = follower.lock().takeover(term).cloned() else {
            info!(term, "active without replicated state of the previous term");
            return;
        };
        let clock = replication::WallClock::now();
        let now = std::time::Instant::now();
        // First the key: a phone challenged by the previous active answers that challenge here.
        if let Some(key) = state.nonce_key {
            sip.adopt_nonce_key(key);
        }
        let records: Vec<_> = state.registrations.values().cloned().collect();
        let registrations = sip.restore_registrations(&records, clock, now);
        let agents: Vec<_> = state.agents.values().cloned().collect();
        let agents = center.restore_agents(&replication::takeover::agents(&agents, clock));
        info!(
            term,
            failover,
            registrations,
            agents,
            draining_node_calls = if failover { 0 } else { state.calls.len() },
            "took over the previous active node's registrations and agent states"
        );
        if failover {
            take_over_calls(&state, &sip, term);
        }
    }
}

/// Takes over the live calls of `state` (established calls first, their agents Busy again,
/// then queued callers in the order they entered their first queue).
fn take_over_calls(state: &replication::ReplicatedState, sip: &SipServer, term: i64) {
    let Some(engine) = sip.calls() else {
        return;
    };
    // The serving task follows the role a moment later; the re-INVITEs moving the calls here
    // must not wait for it (nor their first retransmission).
    sip.set_mode(ServingMode::Active);
    let clock = replication::WallClock::now();
    // Many calls at once mean many sockets and recording files (written with fsync): off the
    // async workers, so the Lease renewals never wait for them (a late renewal fences).
    let (calls, lost) = tokio::task::block_in_place(|| {
        let (mut calls, mut lost) = (0, 0);
        for record in replication::takeover::calls_in_order(state.calls.values()) {
            match engine.take_over_call(record, clock) {
                Ok(()) => calls += 1,
                Err(error) => {
                    lost += 1;
                    warn!(call_id = record.id, %error, "call not taken over");
                }
            }
        }
        (calls, lost)
    });
    info!(
        term,
        calls, lost, "took over the previous active node's calls"
    );
}

/// When the stream from the draining node this active took the Lease from ends: its calls
/// still up in the replicated state are taken over (it was killed before they ended, or its
/// drain timed out), which counts as a failover; none are left when it finished them all.
fn on_predecessor_lost(
    follower: Arc<parking_lot::Mutex<Follower>>,
    sip: Arc<SipServer>,
    role: tokio::sync::watch::Receiver<Role>,
    predecessor: tokio::sync::watch::Sender<Option<String>>,
    hub: Arc<ReplicationHub>,
    failovers: prometheus::IntCounter,
    counted_on_the_lease: Arc<tokio::sync::Notify>,
) -> impl Fn() + Send + 'static {
    move || {
        if *role.borrow() != Role::Active || predecessor.borrow().is_none() {
            return;
        }
        predecessor.send_replace(None);
        let term = hub.term();
        let Some(state) = follower.lock().takeover(term).cloned() else {
            return;
        };
        if state.calls.is_empty() {
            return;
        }
        failovers.inc();
        counted_on_the_lease.notify_one();
        warn!(
            calls = state.calls.len(),
            "the draining node's stream ended: taking over its calls still up"
        );
        take_over_calls(&state, &sip, term);
    }
}

/// Waits for SIGINT or SIGTERM; returns which one.
async fn shutdown_signal() -> Result<&'static str, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_default_address_in_standalone_mode_may_fall_back() {
        let given = SocketAddr::from(([127, 0, 0, 1], 9999));
        assert_eq!(
            listen_address(None, DEFAULT_METRICS_LISTEN, ConfigSource::Standalone),
            (DEFAULT_METRICS_LISTEN, true)
        );
        assert_eq!(
            listen_address(None, DEFAULT_CONTROL_LISTEN, ConfigSource::Operator),
            (DEFAULT_CONTROL_LISTEN, false)
        );
        assert_eq!(
            listen_address(
                Some(given),
                DEFAULT_METRICS_LISTEN,
                ConfigSource::Standalone
            ),
            (given, false)
        );
    }

    #[test]
    fn standalone_trunk_credentials_come_from_the_files_secret() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/campus.yaml");
        let loaded = node::load(&path).expect("campus example loads");
        assert_eq!(loaded.source, ConfigSource::Standalone);
        let TrunkCredentialSource::Inline(values) = trunk_credentials(&loaded) else {
            panic!("standalone credentials are held in memory");
        };
        let pstn = values
            .get("campus-pstn")
            .expect("campus-pstn's credentials");
        assert_eq!(
            (pstn.username.as_str(), pstn.password.as_str()),
            ("campus-cc", "hxKKUgrRSND5PN8Z")
        );
        // A pod reads the mounted Secret instead.
        let operator = LoadedConfig {
            source: ConfigSource::Operator,
            trunk_credentials: None,
            ..loaded.clone()
        };
        let TrunkCredentialSource::Mounted { secrets, dir: None } = trunk_credentials(&operator)
        else {
            panic!("a pod reads the mounted Secret files");
        };
        assert_eq!(secrets, loaded.config.trunk_secrets);
    }

    #[test]
    fn the_cli_parses_listen_addresses() {
        let cli = Cli::try_parse_from([
            "media-node",
            "--config",
            "c.yaml",
            "--metrics-listen",
            "127.0.0.1:0",
            "--control-listen",
            "[::1]:9091",
        ])
        .expect("parses");
        assert_eq!(
            cli.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert_eq!(cli.control_listen.map(|a| a.port()), Some(9091));
        assert!(
            Cli::try_parse_from(["media-node", "--config", "c", "--metrics-listen", "x"]).is_err()
        );
    }
}
