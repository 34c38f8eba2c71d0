//! `media-node`: the Switchboard data plane. `--config FILE.yaml` serves a call center from the
//! same manifests a user would apply to a cluster, with no Kubernetes at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use media_node::config;

#[derive(Parser)]
#[command(name = "media-node", version, about = "Switchboard media node")]
struct Cli {
    /// A YAML file with one CallCenter and its Queues, Seats and Secrets (standalone mode).
    #[arg(long)]
    config: PathBuf,
    /// Only check the file and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = config::load(&cli.config).and_then(|c| c.check_references().map(|()| c));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("media-node: {}: {e}", cli.config.display());
            return ExitCode::from(2);
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
    eprintln!(
        "media-node: serving calls is not yet available in this version (SIP, media and ACD come next)"
    );
    ExitCode::from(3)
}
