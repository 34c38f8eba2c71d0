//! A phone's media port in a test: what a caller hears while it waits (music on hold), told
//! apart by the node that sends it. SIPp can play audio but not check what it receives, so a
//! scenario puts this port in its SDP instead of its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::UdpSocket;

/// The RTP a port heard from one sender.
#[derive(Clone, Copy, Debug)]
pub struct Heard {
    pub packets: u64,
    pub first: Instant,
    pub last: Instant,
}

/// A UDP port that counts the RTP packets it receives, by sender address, until it is
/// dropped or its time limit passes.
pub struct RtpEar {
    port: u16,
    heard: Arc<Mutex<HashMap<IpAddr, Heard>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RtpEar {
    /// Listens on `ip` (a free port) for at most `limit`.
    pub async fn bind(ip: IpAddr, limit: Duration) -> Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("binding a media port on {ip}"))?;
        let port = socket.local_addr()?.port();
        let heard = Arc::new(Mutex::new(HashMap::<IpAddr, Heard>::new()));
        let record = Arc::clone(&heard);
        let until = tokio::time::Instant::now() + limit;
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(Ok((len, from))) =
                tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await
            {
                // RTP version 2 with a whole fixed header; anything else is not audio.
                if len < 12 || buf[0] >> 6 != 2 {
                    continue;
                }
                let now = Instant::now();
                let mut heard = record.lock().unwrap_or_else(PoisonError::into_inner);
                heard
                    .entry(from.ip())
                    .and_modify(|h| {
                        h.packets += 1;
                        h.last = now;
                    })
                    .or_insert(Heard {
                        packets: 1,
                        first: now,
                        last: now,
                    });
            }
        });
        Ok(Self { port, heard, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What was heard from `sender` so far.
    pub fn heard_from(&self, sender: IpAddr) -> Option<Heard> {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sender)
            .copied()
    }

    /// Everything heard so far, by sender.
    pub fn heard(&self) -> HashMap<IpAddr, Heard> {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for RtpEar {
    fn drop(&mut self) {
        self.task.abort();
    }
}
