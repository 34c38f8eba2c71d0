//! Fencing on the real control plane: two media-node processes of a HotStandby center elect
//! through a real Lease. The active one reaches the API server through a TCP proxy this test
//! owns; cutting the proxy cuts it off. It must stop serving (standby, 503 to a REGISTER)
//! before the other node can hold the Lease — two actives never serve at once — and, once the
//! other node took over a caller waiting in a queue, play it no more music on hold (only the
//! new active's is heard). The order is what is checked; the times are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use std::sync::Mutex;
use switchboard_tests::cluster::free_udp_port;
use switchboard_tests::node_process::{
    MINIMAL_LEASE, NodeProcess, create_node_pod, hot_standby_config, minimal_seat_1002_calls,
    prepare_hot_standby, role_is, sample,
};
use switchboard_tests::rtp::RtpEar;
use switchboard_tests::{TestNamespace, control_plane, control_plane_kubeconfig, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// A TCP forwarder to the API server that can be cut: every connection through it ends.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept_tasks = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut tasks) = accept_tasks.lock() {
                    tasks.push(conn);
                }
            }
        });
        tasks
            .lock()
            .map_err(|_| anyhow::anyhow!("proxy tasks poisoned"))?
            .push(accept);
        Ok(Self { port, tasks })
    }

    /// Cuts the node off: no new connection, the open ones end.
    fn cut(&self) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_from_the_api_server_stops_serving_before_the_standby_takes_over()
-> Result<()> {
    let client = control_plane().await?;
    let ns = TestNamespace::create(&client, "fence").await?;
    let yaml = hot_standby_config(&ns.name, |_, _| {})?;
    prepare_hot_standby(&client, &ns.name).await?;

    // The API server's address, and a kubeconfig for node A that goes through the proxy.
    let kubeconfig = control_plane_kubeconfig()?;
    let text = std::fs::read_to_string(&kubeconfig)?;
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .context("no https server in the control plane's kubeconfig")?
        .to_string();
    let proxy = Proxy::start(server.clone()).await?;
    let dir = tempfile::tempdir()?;
    let through_proxy = dir.path().join("kubeconfig");
    let port = server.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    std::fs::write(
        &through_proxy,
        text.replace(
            &format!("server: https://{server}"),
            &format!("server: https://127.0.0.1:{}", proxy.port),
        ),
    )?;
    ensure!(!port.is_empty(), "no port in {server}");

    let env = |kubeconfig: &std::path::Path, pod: &str| -> Vec<(String, String)> {
        vec![
            ("POD_NAMESPACE".into(), ns.name.clone()),
            ("SWITCHBOARD_LEASE_NAME".into(), MINIMAL_LEASE.into()),
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("POD_NAME".into(), pod.into()),
        ]
    };
    // Each node on its own address, as pods are, so the music a caller hears tells them apart.
    let start = |kubeconfig: &std::path::Path, pod: &str| {
        let mut env = env(kubeconfig, pod);
        if pod.ends_with("-1") {
            env.push(("POD_IP".into(), "127.0.0.2".into()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        NodeProcess::start_with_env(&yaml, pod, &env)
    };
    let a = start(&through_proxy, "minimal-media-0")?;
    create_node_pod(
        &client,
        &ns.name,
        "minimal",
        "minimal-media-0",
        a.control.port(),
    )
    .await?;
    wait_for(WAIT, "node A active", || async {
        role_is(&a, "active").await.then_some(())
    })
    .await
    .with_context(|| a.log())?;
    let b = start(&kubeconfig, "minimal-media-1")?;
    create_node_pod(
        &client,
        &ns.name,
        "minimal",
        "minimal-media-1",
        b.control.port(),
    )
    .await?;
    wait_for(WAIT, "node B standing by", || async {
        role_is(&b, "standby").await.then_some(())
    })
    .await?;
    // A caller waits in the queue (the agent is logged out), hearing music on hold from A, and
    // B follows the call.
    let loopback = "127.0.0.1".parse()?;
    let ear = RtpEar::bind(loopback, WAIT * 2).await?;
    let _caller = minimal_seat_1002_calls(
        a.sip_udp,
        "takeover-queued-caller.xml",
        "100",
        &free_udp_port(loopback)?.to_string(),
    )
    .key("rtp_port", &ear.port().to_string())
    .limit(WAIT * 2)
    .spawn()
    .await?;
    wait_for(
        WAIT,
        "the queued caller hearing A, replicated to B",
        || async {
            (ear.heard_from(a.sip_udp.ip()).is_some()
                && sample(&b, "switchboard_replication_records{kind=\"calls\"}").await == Some(1.0))
            .then_some(())
        },
    )
    .await
    .with_context(|| a.log())?;

    // Cut A off from the API server and watch both, until B serves.
    let cut_at = Instant::now();
    proxy.cut();
    let mut a_fenced: Option<Duration> = None;
    let b_active = loop {
        ensure!(
            cut_at.elapsed() < WAIT,
            "B never took over:\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        if a_fenced.is_none() && role_is(&a, "standby").await {
            a_fenced = Some(cut_at.elapsed());
        }
        if role_is(&b, "active").await {
            break cut_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let a_fenced = a_fenced
        .with_context(|| format!("B became active while A still served:\nA:\n{}", a.log()))?;
    ensure!(
        a_fenced < b_active,
        "A stopped serving {a_fenced:?} after the cut, B served from {b_active:?}"
    );
    // Fenced means refusing: a registration at A gets 503.
    let answer = tokio::task::spawn_blocking({
        let sip = a.sip_udp;
        move || register_answer(sip)
    })
    .await??;
    ensure!(
        answer.starts_with("SIP/2.0 503"),
        "A answered a REGISTER with {answer}"
    );
    // B took the caller over and plays the music now; fenced A plays nothing more (the caller
    // would hear both): while B sends a second of music, nothing comes from A.
    let from_b = wait_for(WAIT, "music on hold from B", || async {
        ear.heard_from(b.sip_udp.ip())
            .filter(|h| h.packets >= 10)
            .map(|h| h.packets)
    })
    .await
    .with_context(|| format!("the caller heard {:?}\nB:\n{}", ear.heard(), b.log()))?;
    let from_a = ear.heard_from(a.sip_udp.ip()).map_or(0, |h| h.packets);
    wait_for(WAIT, "a second more of music from B", || async {
        ear.heard_from(b.sip_udp.ip())
            .is_some_and(|h| h.packets >= from_b + 50)
            .then_some(())
    })
    .await?;
    let from_a_after = ear.heard_from(a.sip_udp.ip()).map_or(0, |h| h.packets);
    ensure!(
        from_a_after == from_a,
        "fenced A went on playing music on hold: {from_a} packets, then {from_a_after}"
    );
    eprintln!(
        "fencing: A cut off from the API server; A stopped serving after {:.1} s, B active after {:.1} s (Lease 6 s, renew 2 s)",
        a_fenced.as_secs_f64(),
        b_active.as_secs_f64()
    );
    drop((a, b));
    ns.delete().await?;
    Ok(())
}

/// The first final answer of the node at `sip` to a REGISTER of seat 1001.
fn register_answer(sip: std::net::SocketAddr) -> Result<String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let local = socket.local_addr()?;
    let request = format!(
        "REGISTER sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-fence;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@localhost>;tag=fence\r\n\
         To: <sip:1001@localhost>\r\n\
         Call-ID: fence@127.0.0.1\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:1001@{local}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    socket.send_to(request.as_bytes(), sip)?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket
        .recv_from(&mut buf)
        .context("no answer to the REGISTER")?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}
