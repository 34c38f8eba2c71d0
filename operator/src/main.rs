//! `switchboard-operator run`: the CallCenter controller (behind a leader Lease), the
//! validating admission webhook, and `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use switchboard_operator::builders::BuildOptions;
use switchboard_operator::controller::{self, Context};
use switchboard_operator::{leader, metrics::Metrics, server};

#[derive(Parser)]
#[command(
    name = "switchboard-operator",
    version,
    about = "The Switchboard call-center operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Address of the HTTPS admission webhook server; needs --webhook-cert and --webhook-key.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate of the webhook server.
    #[arg(long)]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook server.
    #[arg(long)]
    webhook_key: Option<PathBuf>,
    /// Serve only the webhook and metrics; run no controller.
    #[arg(long)]
    webhook_only: bool,
    /// Reconcile only the CallCenters of this namespace (default: all namespaces).
    #[arg(long, env = "SWITCHBOARD_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Media-node image for CallCenters that do not set spec.nodes.image.
    #[arg(long, env = "SWITCHBOARD_MEDIA_NODE_IMAGE", default_value = concat!("switchboard-media-node:", env!("CARGO_PKG_VERSION")))]
    media_node_image: String,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "switchboard-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "switchboard-operator")]
    identity: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Command::Run(args) = Cli::parse().command;
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve_health(args.metrics_listen, metrics.clone()));
    tracing::info!(addr = %args.metrics_listen, "serving /metrics, /healthz, /readyz");
    if let (Some(addr), Some(cert), Some(key)) =
        (args.webhook_listen, args.webhook_cert, args.webhook_key)
    {
        // The client answers `kubectl scale` reviews (they need the CallCenter's bounds).
        let client = match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API access: the webhook refuses scale requests");
                None
            }
        };
        tasks.spawn(server::serve_webhook(
            addr,
            cert,
            key,
            metrics.clone(),
            client,
        ));
        tracing::info!(%addr, "serving the admission webhook");
    }
    let controllers = async {
        if args.webhook_only {
            return std::future::pending::<anyhow::Result<()>>().await;
        }
        let client = kube::Client::try_default().await?;
        let version = client.apiserver_version().await?;
        let server_minor_version = version.minor.trim_end_matches('+').parse().unwrap_or(20);
        let options = BuildOptions {
            default_image: args.media_node_image.clone(),
            server_minor_version,
        };
        let leases = leader::lease_api(client.clone(), &args.lease_namespace);
        let timing = leader::LeaseTiming::default();
        tracing::info!(lease = %args.lease_name, identity = %args.identity, "waiting to lead");
        leader::acquire(&leases, &args.lease_name, &args.identity, &timing).await;
        tracing::info!(lease = %args.lease_name, "leading: starting the CallCenter controller");
        let ctx = Arc::new(Context::new(
            client,
            options,
            metrics.clone(),
            args.watch_namespace.clone(),
        ));
        tokio::select! {
            () = controller::run(ctx) => Ok(()),
            lost = leader::keep(&leases, &args.lease_name, &args.identity, &timing) => {
                anyhow::bail!("stopped leading: {lost}")
            }
        }
    };
    tokio::select! {
        Some(done) = tasks.join_next() => {
            done??;
            Ok(())
        }
        result = controllers => result,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return tokio::signal::ctrl_c().await.unwrap_or(()),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
