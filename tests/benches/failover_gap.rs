//! Media gap of a failover under load, on the real control plane (`tests/controlplane/up`):
//! two media-node processes of the `minimal` HotStandby center elect through a real Lease.
//! In every round seat 1002 (SIPp) places calls to seat 1001 through the active node and
//! plays audio; seat 1001's phone (SIPp) has this program's socket as its media address, so
//! every RTP packet the nodes relay to it is timed here. Once the standby holds every call,
//! the active process is killed (SIGKILL). Measured per call: the media gap, from the last
//! packet before the kill to the first packet the new active relays; calls lost (a leg never
//! accepted the move, or SIPp's call failed); and the time the restarted node takes to be a
//! ready standby again. The roles alternate (A→B→A…).
//!
//! Run: `tests/controlplane/up`, then
//! `SWITCHBOARD_KUBECONFIG=.cache/controlplane/kubeconfig cargo bench -p switchboard-tests --bench failover_gap`
//! (`SWITCHBOARD_BENCH_ROUNDS`, default 10, kills per Lease setting;
//! `SWITCHBOARD_BENCH_CALLS`, default 10, calls up at each kill).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use switchboard_crds::callcenter::{HaMode, HighAvailabilitySpec};
use switchboard_tests::cluster::free_udp_port;
use switchboard_tests::node_process::{
    NodeProcess, hot_standby_config, minimal_seat_1001, minimal_seat_1002_calls,
    prepare_hot_standby, role_is, sample, start_hot_standby_node, start_hot_standby_pair,
};
use switchboard_tests::{TestNamespace, control_plane, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const PODS: [&str; 2] = ["minimal-media-0", "minimal-media-1"];

/// Arrival times of RTP packets by source, as seat 1001's phone receives them.
#[derive(Default)]
struct Arrivals(Mutex<Vec<(Instant, SocketAddr)>>);

impl Arrivals {
    fn take(&self) -> Vec<(Instant, SocketAddr)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// One kill: each call's media gap, the calls lost, and how long the killed node took to be
/// a ready standby again.
struct Round {
    gaps: Vec<Duration>,
    lost: u32,
    resync: Duration,
    active_after: Duration,
}

async fn metric(node: &NodeProcess, series: &str) -> f64 {
    sample(node, series).await.unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One Lease setting: `rounds` kills with `calls` calls up at each.
async fn run_setting(lease: u32, renew: u32, rounds: u32, calls: u32) -> Result<Vec<Round>> {
    let client = control_plane().await?;
    let ns = TestNamespace::create(&client, "failover-bench").await?;
    let yaml = hot_standby_config(&ns.name, |center, _| {
        center.spec.high_availability = HighAvailabilitySpec {
            mode: HaMode::HotStandby,
            lease_duration_seconds: lease,
            renew_interval_seconds: renew,
            ..HighAvailabilitySpec::default()
        };
    })?;
    prepare_hot_standby(&client, &ns.name).await?;
    let (a, b) = start_hot_standby_pair(&client, &ns.name, &yaml).await?;
    let mut nodes = vec![a, b];
    let mut active = 0;

    // Seat 1001's phone: SIPp for its signalling, this program's socket for its media.
    let loopback = "127.0.0.1".parse()?;
    let phone = free_udp_port(loopback)?.to_string();
    let media = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
    media.set_read_timeout(Some(Duration::from_millis(200)))?;
    let rtp_port = media.local_addr()?.port().to_string();
    let arrivals = Arc::new(Arrivals::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let (media, arrivals, stop) =
            (Arc::clone(&media), Arc::clone(&arrivals), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((_, source)) = media.recv_from(&mut buf)
                    && let Ok(mut v) = arrivals.0.lock()
                {
                    v.push((Instant::now(), source));
                }
            }
        })
    };
    let seat = |node: SocketAddr, scenario: &str| minimal_seat_1001(node, &phone, scenario);
    seat(nodes[active].sip_udp, "seat-register.xml")
        .spawn()
        .await?
        .finish()
        .await?;

    let mut results = Vec::new();
    for round in 0..rounds {
        let standby = 1 - active;
        arrivals.take();
        let sipp_media = free_udp_port(loopback)?.to_string();
        let answering = seat(nodes[active].sip_udp, "takeover-seat-uas.xml")
            .calls(calls)
            .limit(WAIT)
            .key("rtp_port", &rtp_port)
            .args(["-mi", "127.0.0.1", "-mp", sipp_media.as_str()])
            .spawn()
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let caller_media = free_udp_port(loopback)?.to_string();
        let calling = minimal_seat_1002_calls(
            nodes[active].sip_udp,
            "takeover-seat-uac.xml",
            "1001",
            &caller_media,
        )
        .calls(calls)
        .limit(WAIT)
        .args(["-l", &calls.to_string(), "-r", "50", "-d", "1000"])
        .spawn()
        .await?;
        let records = "switchboard_replication_records{kind=\"calls\"}";
        wait_for(WAIT, "every call held by the standby", || async {
            (metric(&nodes[standby], records).await == f64::from(calls)).then_some(())
        })
        .await
        .with_context(|| nodes[active].log())?;
        // Audio flowing, then the kill, at a random moment of the renew interval (the gap
        // depends on how long before the kill the Lease was last renewed).
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % (renew * 1000);
        tokio::time::sleep(Duration::from_millis(300 + u64::from(jitter))).await;
        let resumed_before = metric(
            &nodes[standby],
            "switchboard_calls_taken_over_total{outcome=\"resumed\"}",
        )
        .await;
        let killed = Instant::now();
        nodes[active].kill();
        let active_after = wait_for(WAIT, "the standby active", || async {
            role_is(&nodes[standby], "active")
                .await
                .then(|| killed.elapsed())
        })
        .await?;
        let caller = calling.finish_with_stats().await?;
        let callee = answering.finish_with_stats().await?;
        let resumed = metric(
            &nodes[standby],
            "switchboard_calls_taken_over_total{outcome=\"resumed\"}",
        )
        .await
            - resumed_before;
        let packets = arrivals.take();
        let last_before = packets
            .iter()
            .filter(|(t, _)| *t <= killed)
            .map(|(t, _)| *t)
            .max()
            .context("no RTP reached the phone before the kill")?;
        // Packets the dead node sent just before it died may still arrive just after.
        let after = killed + Duration::from_millis(100);
        let mut first_after: BTreeMap<SocketAddr, Instant> = BTreeMap::new();
        for (t, source) in packets.iter().filter(|(t, _)| *t > after) {
            first_after.entry(*source).or_insert(*t);
        }
        let gaps: Vec<Duration> = first_after
            .values()
            .map(|t| t.saturating_duration_since(last_before))
            .collect();
        let failed = u32::try_from(caller.failed.max(callee.failed)).unwrap_or(u32::MAX);
        let lost = failed.max(calls.saturating_sub(resumed as u32));
        // The killed node comes back as the standby and resynchronises.
        let restarted = Instant::now();
        nodes[active] = start_hot_standby_node(&client, &ns.name, &yaml, PODS[active]).await?;
        let resync = wait_for(WAIT, "the restarted node a ready standby", || async {
            (metric(&nodes[active], "switchboard_standby_ready").await == 1.0)
                .then(|| restarted.elapsed())
        })
        .await?;
        eprintln!(
            "  round {}: {} of {calls} calls moved, gap p50 {:.2} s max {:.2} s, {lost} lost, new active after {:.2} s, resynchronised {:.2} s after restart",
            round + 1,
            gaps.len(),
            percentile(&sorted(&gaps), 0.5).as_secs_f64(),
            percentile(&sorted(&gaps), 1.0).as_secs_f64(),
            active_after.as_secs_f64(),
            resync.as_secs_f64()
        );
        if gaps.len() < calls as usize - lost as usize {
            let mut by_source: BTreeMap<SocketAddr, (usize, usize)> = BTreeMap::new();
            for (t, source) in &packets {
                let seen = by_source.entry(*source).or_default();
                if *t <= killed {
                    seen.0 += 1;
                } else {
                    seen.1 += 1;
                }
            }
            bail!(
                "round {}: only {} calls' media reached the phone after the kill; packets by source (before, after the kill): {by_source:?}",
                round + 1,
                gaps.len()
            );
        }
        results.push(Round {
            gaps,
            lost,
            resync,
            active_after,
        });
        active = standby;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = receiver.join();
    drop(nodes);
    ns.delete().await?;
    Ok(results)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn env_u32(name: &str, default: u32) -> Result<u32> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<()> {
    let rounds = env_u32("SWITCHBOARD_BENCH_ROUNDS", 10)?;
    let calls = env_u32("SWITCHBOARD_BENCH_CALLS", 10)?;
    ensure!(rounds > 0 && calls > 0, "rounds and calls must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The default (3 s, renewed every second) and the fastest setting documented as safe.
    for (lease, renew) in [(3, 1), (2, 1)] {
        println!(
            "failover_gap: Lease {lease} s renewed every {renew} s, {rounds} kills with {calls} calls up"
        );
        let rounds_done = runtime.block_on(run_setting(lease, renew, rounds, calls))?;
        let gaps = sorted(
            &rounds_done
                .iter()
                .flat_map(|r| r.gaps.clone())
                .collect::<Vec<_>>(),
        );
        let resync = sorted(&rounds_done.iter().map(|r| r.resync).collect::<Vec<_>>());
        let active = sorted(
            &rounds_done
                .iter()
                .map(|r| r.active_after)
                .collect::<Vec<_>>(),
        );
        let lost: u32 = rounds_done.iter().map(|r| r.lost).sum();
        println!(
            "failover_gap: lease={lease}s renew={renew}s kills={} calls={} media_gap_p50={:.2}s media_gap_max={:.2}s calls_lost={lost} new_active_p50={:.2}s resync_p50={:.2}s resync_max={:.2}s",
            rounds_done.len(),
            gaps.len(),
            percentile(&gaps, 0.5).as_secs_f64(),
            percentile(&gaps, 1.0).as_secs_f64(),
            percentile(&active, 0.5).as_secs_f64(),
            percentile(&resync, 0.5).as_secs_f64(),
            percentile(&resync, 1.0).as_secs_f64(),
        );
    }
    Ok(())
}
