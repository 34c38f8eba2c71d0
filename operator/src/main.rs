//! `switchboard-operator run`: serves health, metrics and the validating admission webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_operator::{metrics::Metrics, server};

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
    Run {
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Run {
        metrics_listen,
        webhook_listen,
        webhook_cert,
        webhook_key,
    } = command;
    let metrics = Metrics::new()?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve_health(metrics_listen, metrics.clone()));
    tracing::info!(%metrics_listen, "serving /metrics, /healthz, /readyz");
    if let (Some(addr), Some(cert), Some(key)) = (webhook_listen, webhook_cert, webhook_key) {
        tasks.spawn(server::serve_webhook(addr, cert, key, metrics.clone()));
        tracing::info!(%addr, "serving the admission webhook");
    }
    tokio::select! {
        Some(done) = tasks.join_next() => {
            done??;
            Ok(())
        }
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
