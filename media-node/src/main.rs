//! `media-node`: the Switchboard data plane. `--config FILE.yaml` serves a call center from the
//! same manifests a user would apply to a cluster, with no Kubernetes at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use media_node::config::{self, StandaloneConfig};
use media_node::sip::digest::{self, DEFAULT_NONCE_LIFETIME};
use media_node::sip::{
    RegistrarPolicy, SeatAccount, SipListeners, SipMetrics, SipServer, SipSettings,
};
use tracing::info;

#[derive(Parser)]
#[command(name = "media-node", version, about = "Switchboard media node")]
struct Cli {
    /// A YAML file with one CallCenter and its Queues, Seats and Secrets (standalone mode).
    #[arg(long)]
    config: PathBuf,
    /// Only check the file and exit.
    #[arg(long)]
    check: bool,
    /// The address SIP listens on (UDP and TCP).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    sip_listen: IpAddr,
    /// The SIP port for both UDP and TCP, overriding the CallCenter's `spec.sip.udpPort` and
    /// `spec.sip.tcpPort`.
    #[arg(long)]
    sip_port: Option<u16>,
}

/// Exit codes: 2 for a configuration the node cannot serve, 1 for a runtime failure.
const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = config::load(&cli.config).and_then(|c| c.check_references().map(|()| c));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("media-node: {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let center = config
        .call_center
        .as_ref()
        .map(|c| c.name.as_str())
        .unwrap_or_default();
    println!(
        "media-node: {}: CallCenter {center:?} with {} queue(s) and {} seat(s) is valid",
        cli.config.display(),
        config.queues.len(),
        config.seats.len()
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

    let settings = match sip_settings(&config) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("media-node: {}: {message}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
    match runtime.block_on(serve(&cli, &config, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("media-node: {message}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The registrar's view of the call center: realm and each seat's HA1. Passwords are hashed
/// here and dropped; the SIP layer never sees them.
fn sip_settings(config: &StandaloneConfig) -> Result<SipSettings, String> {
    let center = config
        .call_center
        .as_ref()
        .ok_or("the file declares no CallCenter")?;
    let realm = center.spec.sip.domain.clone();
    let mut seats = Vec::with_capacity(config.seats.len());
    for seat in &config.seats {
        let credentials = &seat.spec.credentials;
        let password = config
            .secrets
            .get(&credentials.name)
            .and_then(|keys| keys.get(&credentials.key))
            .ok_or_else(|| {
                format!(
                    "Seat {:?}: spec.credentials: Secret {:?} with key {:?} not found",
                    seat.name, credentials.name, credentials.key
                )
            })?;
        seats.push(SeatAccount {
            extension: seat.spec.extension.clone(),
            ha1: digest::ha1(&seat.spec.extension, &realm, password),
            max_contacts: usize::try_from(seat.spec.max_contacts).unwrap_or(usize::MAX),
        });
    }
    Ok(SipSettings {
        realm,
        seats,
        policy: RegistrarPolicy::default(),
        nonce_lifetime: DEFAULT_NONCE_LIFETIME,
    })
}

async fn serve(cli: &Cli, config: &StandaloneConfig, settings: SipSettings) -> Result<(), String> {
    let sip = config
        .call_center
        .as_ref()
        .map(|c| c.spec.sip.clone())
        .ok_or("the file declares no CallCenter")?;
    let udp = SocketAddr::new(cli.sip_listen, cli.sip_port.unwrap_or(sip.udp_port));
    let tcp = SocketAddr::new(cli.sip_listen, cli.sip_port.unwrap_or(sip.tcp_port));
    // The registry will be served on /metrics by the metrics step; the counters run already.
    let registry = prometheus::Registry::new();
    let metrics =
        SipMetrics::new(&registry).map_err(|e| format!("cannot create SIP metrics: {e}"))?;
    let realm = settings.realm.clone();
    let seats = settings.seats.len();
    let server = Arc::new(SipServer::new(settings, metrics, Instant::now()));
    let listeners = SipListeners::bind(udp, tcp)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "media-node: SIP for domain {realm:?} ({seats} seat(s)) on udp {} and tcp {}; serving REGISTER and OPTIONS, calls (INVITE) are not served yet",
        listeners.udp_addr(),
        listeners.tcp_addr()
    );
    info!(udp = %listeners.udp_addr(), tcp = %listeners.tcp_addr(), "SIP listening");
    tokio::select! {
        () = listeners.serve(server) => Ok(()),
        signal = shutdown_signal() => {
            let name = signal?;
            info!(signal = name, "shutting down");
            Ok(())
        }
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
